//! Command-line interface: clap definitions only (raw input). `config`
//! turns these into validated configuration. Every flag can also come from
//! an environment variable, and `main` loads a `.env` file from the working
//! directory first (without overriding variables already set). The original
//! project's worker variables are accepted under their old names.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// Default port for both QUIC (UDP) and HTTP (TCP), as in the original project.
pub const DEFAULT_PORT: u16 = 5000;

/// Default bound on tasks accepted and not finished. Measured (release
/// build, no worker): 50,000 queued small tasks took `d8 serve` from 9.9 to
/// 57.0 MiB resident, about 1 KiB each plus the prompt itself; comfortable
/// on a 1 GiB Pi 4. Large prompts cost more: lower `--max-queued` for those.
pub const DEFAULT_MAX_QUEUED: u64 = 50_000;

/// `--queue-timeout-secs`: long enough for a worker to restart or a laptop
/// to wake, short enough that an agent learns soon that nothing can serve it.
pub const DEFAULT_QUEUE_TIMEOUT_SECS: u64 = 30;

/// `--cache-ttl-secs`: an hour, for requests that turn the cache on.
pub const DEFAULT_CACHE_TTL_SECS: u64 = 3_600;

/// `--cache-max-mb`: a small share of a 1 GiB Pi's SD card and page cache.
pub const DEFAULT_CACHE_MAX_MB: u64 = 64;

/// Largest `--max-output-bytes`: a result must fit one wire frame, with room
/// for the rest of the reply (model, usage, cooldowns).
pub const MAX_OUTPUT_BYTES: u64 = (crate::wire::MAX_FRAME - 64 * 1024) as u64;
/// Largest `--max-vendor-body-bytes` (4 GiB).
pub const MAX_VENDOR_BODY_BYTES: u64 = 4 * 1024 * 1024 * 1024;

/// d8: turn the machines you own into one cluster for LLM agent work.
#[derive(Debug, Parser)]
#[command(name = "d8", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// Log filter (tracing syntax), e.g. `info`, `d8=debug`.
    #[arg(long, global = true, env = "D8_LOG", default_value = "info")]
    pub log: String,
    /// How log lines on stderr look: `text` for people, `json` (one object
    /// per line: ts, level, target, message, fields) for log collectors.
    #[arg(long, global = true, env = "D8_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// `d8 join --check-keys[=text|json]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CheckFormat {
    /// A line per provider, for people.
    Text,
    /// One JSON object per provider and line.
    Json,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines (coloured on a terminal).
    Text,
    /// One JSON object per line.
    Json,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the orchestrator (queue, scheduler, HTTP API).
    Serve(ServeArgs),
    /// Run a worker that executes tasks with this machine's providers.
    Join(JoinArgs),
    /// Show the cluster: workers and task counts.
    Status(ClientArgs),
    /// Manage join tokens.
    Token {
        /// Token action.
        #[command(subcommand)]
        action: TokenAction,
        /// Where the orchestrator is.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Manage enrolled workers.
    Workers {
        /// Worker action.
        #[command(subcommand)]
        action: WorkersAction,
        /// Where the orchestrator is.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Save a consistent copy of the orchestrator's store while it serves.
    Backup {
        /// File to write (a `d8.redb`; restore by putting it in place of
        /// `<data-dir>/d8.redb` while `d8 serve` is stopped).
        out: PathBuf,
        /// Where the orchestrator is.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show the cluster's recent log lines (the orchestrator's and its
    /// workers'), or follow them.
    Logs(LogsArgs),
    /// Show tokens and estimated cost per provider, model, worker, agent or day.
    Usage(UsageArgs),
    /// Measure throughput and latency on this machine (starts its own cluster).
    Bench(BenchArgs),
    /// Explain why a worker cannot find or reach its orchestrator.
    Doctor(DoctorArgs),
    /// List the d8 clusters that announce themselves on this LAN (mDNS).
    Find(FindArgs),
    /// Start the worker or the orchestrator at boot or login with this
    /// OS's service manager (systemd, launchd, Windows services).
    Service {
        /// Service action.
        #[command(subcommand)]
        action: ServiceAction,
    },
}

/// `d8 service …`.
#[derive(Debug, Subcommand)]
pub enum ServiceAction {
    /// Register and start the service. Settings come from this command's
    /// environment (the variables `d8 join` / `d8 serve` read, vendor keys,
    /// and those a worker file names with `key_env`) and go to the
    /// service's env file, never to its command line.
    Install {
        /// Which service, and whose.
        #[command(flatten)]
        target: ServiceTarget,
        /// Register it to start at the next boot or login, but not now.
        #[arg(long)]
        no_start: bool,
    },
    /// Stop and remove the service (its data dir and settings stay).
    Uninstall {
        /// Which service, and whose.
        #[command(flatten)]
        target: ServiceTarget,
    },
    /// Say whether the service is installed and running. Exit status 0
    /// when it runs, 3 when installed but not running, 4 when not installed
    /// (without a role: both are shown, the status is the installed ones').
    Status {
        /// Which service, and whose.
        #[command(flatten)]
        target: ServiceTarget,
    },
    /// What the service manager runs (reads the env file, then runs the role).
    #[command(hide = true)]
    Run {
        /// Which service, and whose.
        #[command(flatten)]
        target: ServiceTarget,
        /// Windows: the folder holding the env file and the data dir, as
        /// `install` found it (a service's environment may name
        /// `%ProgramData%` differently than the installer's did).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

/// `--worker | --orchestrator`, `--system | --user`.
#[derive(Debug, Args, Clone, Copy)]
pub struct ServiceTarget {
    /// The worker (`d8 join`); the default.
    #[arg(long, conflicts_with = "orchestrator")]
    pub worker: bool,
    /// The orchestrator (`d8 serve`).
    #[arg(long)]
    pub orchestrator: bool,
    /// At boot, for the machine (default for root, and on Windows).
    #[arg(long, conflicts_with = "user")]
    pub system: bool,
    /// At this user's login (default for other users on Linux and macOS).
    #[arg(long)]
    pub user: bool,
}

/// `d8 serve` flags.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Data directory (CA, keys, tokens, database). Default: the OS data dir + `d8/orchestrator`.
    #[arg(long, env = "D8_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address to listen on (QUIC and HTTP).
    #[arg(long, env = "D8_BIND", default_value = "0.0.0.0")]
    pub bind: IpAddr,
    /// Port for both QUIC (UDP) and HTTP (TCP).
    #[arg(long, env = "ORCHESTRATOR_PORT", default_value_t = DEFAULT_PORT)]
    pub port: u16,
    /// QUIC port, if different from --port.
    #[arg(long, env = "D8_QUIC_PORT")]
    pub quic_port: Option<u16>,
    /// HTTP port, if different from --port.
    #[arg(long, env = "D8_HTTP_PORT")]
    pub http_port: Option<u16>,
    /// Heartbeat interval workers use.
    #[arg(long, env = "D8_HEARTBEAT", default_value = "500ms", value_parser = parse_duration)]
    pub heartbeat: Duration,
    /// Silence after which a worker is dead and its tasks move elsewhere.
    #[arg(long, env = "D8_DEAD_AFTER", default_value = "3s", value_parser = parse_duration)]
    pub dead_after: Duration,
    /// How long finished results are kept.
    #[arg(long, env = "D8_RESULT_RETENTION", default_value = "7d", value_parser = parse_duration)]
    pub result_retention: Duration,
    /// Failed attempts before a task fails (worker loss and rate limits do not count).
    #[arg(long, env = "D8_MAX_ATTEMPTS", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub max_attempts: u32,
    /// Time one attempt may take before it is retried elsewhere.
    #[arg(long, env = "D8_ATTEMPT_TIMEOUT", default_value = "5m", value_parser = parse_duration)]
    pub attempt_timeout: Duration,
    /// Pause before retrying a failed attempt (5xx, timeout, connection
    /// error); doubles with each failure up to 30 s. `0s` retries at once.
    #[arg(long, env = "D8_RETRY_BACKOFF", default_value = "500ms", value_parser = parse_duration)]
    pub retry_backoff: Duration,
    /// Routing override, `TASK_TYPE=WORKER_TYPE|WORKER_TYPE` (`*` = any); repeatable or comma-separated.
    #[arg(long = "route", env = "D8_ROUTE", value_delimiter = ',')]
    pub routes: Vec<String>,
    /// Largest HTTP request body, bytes.
    #[arg(long, env = "D8_MAX_BODY_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Most tasks accepted and not yet finished; past it, submissions
    /// answer 503 with Retry-After until the queue drains.
    #[arg(long, env = "D8_MAX_QUEUED", default_value_t = DEFAULT_MAX_QUEUED,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_queued: u64,
    /// Seconds an OpenAI-compatible request waits while no online worker can
    /// serve it, before it is answered 503 with Retry-After.
    #[arg(long, env = "D8_QUEUE_TIMEOUT_SECS", default_value_t = DEFAULT_QUEUE_TIMEOUT_SECS,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub queue_timeout_secs: u64,
    /// Seconds a cached answer is served, for requests that turn the cache
    /// on (`d8.cache`, `x-d8-cache: on`).
    #[arg(long, env = "D8_CACHE_TTL_SECS", default_value_t = DEFAULT_CACHE_TTL_SECS,
          value_parser = clap::value_parser!(u64).range(1..=31_536_000))]
    pub cache_ttl_secs: u64,
    /// Most MiB of cached answers kept in the store; past it the least
    /// recently used go.
    #[arg(long, env = "D8_CACHE_MAX_MB", default_value_t = DEFAULT_CACHE_MAX_MB,
          value_parser = clap::value_parser!(u64).range(1..=1_048_576))]
    pub cache_max_mb: u64,
    /// Serve `GET /metrics` without the bearer key, for a Prometheus on a
    /// trusted network (the rest of the API keeps it).
    #[arg(long, env = "D8_METRICS_NO_AUTH")]
    pub metrics_no_auth: bool,
    /// Prices for usage accounting (TOML: `[provider]` then
    /// `"model" = { input = 0.59, output = 0.79 }` in US$ per million
    /// tokens, `"*"` for any model); default: `<data-dir>/prices.toml` if
    /// present. They win over the prices workers advertise.
    #[arg(long, env = "D8_PRICES")]
    pub prices: Option<PathBuf>,
    /// With --no-auth, also answer requests that name this host (besides
    /// IP addresses, `localhost` and this machine's names); repeatable.
    /// Other names are refused so a web page elsewhere cannot reach the API
    /// through the browser (DNS rebinding).
    #[arg(long = "allow-host", env = "D8_ALLOW_HOST", value_delimiter = ',')]
    pub allow_host: Vec<String>,
    /// Serve the HTTP API without the bearer key (trusted networks only).
    #[arg(long, env = "D8_NO_AUTH")]
    pub no_auth: bool,
    /// Do not advertise over mDNS (workers then need the address).
    #[arg(long, env = "D8_NO_MDNS")]
    pub no_mdns: bool,
    /// mDNS interfaces.
    #[command(flatten)]
    pub mdns: MdnsInterfaces,
    /// Name announced over mDNS (default: d8-HOSTNAME-CLUSTERID).
    #[arg(long, env = "D8_NAME")]
    pub name: Option<String>,
}

/// `d8 join` flags.
#[derive(Debug, Args)]
pub struct JoinArgs {
    /// Orchestrator address: HOST, HOST:PORT or http://HOST:PORT (the original ORCHESTRATOR_URL).
    #[arg(env = "ORCHESTRATOR_URL")]
    pub addr: Option<String>,
    /// Do not join: make one tiny call per configured provider and say
    /// whether its key works (ok, rate_limited, rejected, unreachable,
    /// error); `json` prints one object per provider. Exit status 1 when a
    /// key cannot be used.
    #[arg(long, value_enum, num_args = 0..=1, default_missing_value = "text")]
    pub check_keys: Option<CheckFormat>,
    /// Port when ADDR names none.
    #[arg(long, env = "ORCHESTRATOR_PORT", default_value_t = DEFAULT_PORT)]
    pub port: u16,
    /// Join token (needed only the first time; printed by `d8 serve`).
    #[arg(long, env = "D8_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Data directory (key, certificate). Default: the OS data dir + `d8/worker`.
    #[arg(long, env = "D8_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Preferred worker id (default: hostname).
    #[arg(long, env = "WORKER_ID")]
    pub worker_id: Option<String>,
    /// Worker type for routing: groq, gemini, claude, deepseek_gpu, … (default: first provider).
    #[arg(long, env = "WORKER_TYPE")]
    pub worker_type: Option<String>,
    /// Provider to run tasks with; repeatable: echo, ollama, anthropic, gemini, openai, groq, deepseek, openrouter.
    #[arg(long = "provider", env = "D8_PROVIDERS", value_delimiter = ',')]
    pub providers: Vec<String>,
    /// Artificial latency of the echo provider, ms.
    #[arg(long, env = "D8_ECHO_DELAY_MS", default_value_t = 0)]
    pub echo_delay_ms: u64,
    /// Make echo stream its answer a word at a time, this many ms apart
    /// (to watch tokens arrive; default: all at once).
    #[arg(long, env = "ECHO_WORD_DELAY_MS", value_parser = clap::value_parser!(u64).range(0..=60_000))]
    pub echo_word_delay_ms: Option<u64>,
    /// Tasks run at once.
    #[arg(long, env = "D8_SLOTS", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub slots: u32,
    /// On Ctrl-C, how long to wait for in-flight tasks.
    #[arg(long, env = "D8_DRAIN_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// Largest answer text one task may produce, in bytes; a longer answer
    /// is cut and the task fails (at most the wire frame less 64 KiB).
    #[arg(long, env = "D8_MAX_OUTPUT_BYTES", default_value_t = crate::providers::ReadLimits::DEFAULT.output_bytes as u64,
          value_parser = clap::value_parser!(u64).range(1024..=MAX_OUTPUT_BYTES))]
    pub max_output_bytes: u64,
    /// Largest body read from a vendor for one call (a whole answer, or all
    /// of a stream), in bytes; past it the call is cut and the task fails.
    #[arg(long, env = "D8_MAX_VENDOR_BODY_BYTES", default_value_t = crate::providers::ReadLimits::DEFAULT.body_bytes as u64,
          value_parser = clap::value_parser!(u64).range(1024..=MAX_VENDOR_BODY_BYTES))]
    pub max_vendor_body_bytes: u64,
    /// Provider API key (original project's variable; used by vendor providers).
    #[arg(long, env = "API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Ollama base URL for deepseek_gpu workers (original project's variable).
    #[arg(long, env = "DEEPSEEK_BASE_URL")]
    pub deepseek_base_url: Option<String>,
    /// TOML file with providers, models, base URLs, key variables and per-minute limits.
    #[arg(long, env = "D8_CONFIG")]
    pub config: Option<PathBuf>,
    /// Ollama URL (default http://localhost:11434); wins over DEEPSEEK_BASE_URL.
    #[arg(long, env = "OLLAMA_HOST")]
    pub ollama_url: Option<String>,
    /// Accepted for compatibility and ignored: tasks are pushed, nothing polls.
    #[arg(long, env = "POLL_INTERVAL", hide = true)]
    pub poll_interval: Option<String>,
    /// mDNS interfaces.
    #[command(flatten)]
    pub mdns: MdnsInterfaces,
}

/// `--mdns-interface`, shared by `serve` (where to advertise), `join` and
/// `doctor` (where to look).
#[derive(Debug, Args, Clone, Default)]
pub struct MdnsInterfaces {
    /// Use mDNS only on these interfaces (default: all but loopback);
    /// repeatable or comma-separated.
    #[arg(
        long = "mdns-interface",
        env = "D8_MDNS_INTERFACE",
        value_name = "INTERFACE",
        value_delimiter = ','
    )]
    pub interfaces: Vec<String>,
}

/// Flags of commands that talk to a running orchestrator over HTTP.
#[derive(Debug, Args, Clone)]
pub struct ClientArgs {
    /// Orchestrator HTTP URL.
    #[arg(
        long,
        env = "D8_URL",
        default_value = "http://127.0.0.1:5000",
        global = true
    )]
    pub url: String,
    /// HTTP API key (default: read from the orchestrator's data dir).
    #[arg(long, env = "D8_API_KEY", hide_env_values = true, global = true)]
    pub api_key: Option<String>,
    /// Orchestrator data dir to read the API key from.
    #[arg(long, env = "D8_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,
}

/// `d8 logs`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Keep printing new lines as they arrive (Ctrl-C to stop).
    #[arg(short, long)]
    pub follow: bool,
    /// Only this worker's lines.
    #[arg(long, conflicts_with = "orchestrator")]
    pub worker: Option<String>,
    /// Only the orchestrator's own lines.
    #[arg(long)]
    pub orchestrator: bool,
    /// This level or more severe: error, warn, info, debug, trace.
    #[arg(long)]
    pub level: Option<String>,
    /// Lines since an RFC 3339 time or an age (`90s`, `15m`, `2h`, `1d`).
    #[arg(long)]
    pub since: Option<String>,
    /// The newest this many lines (1-10000; default 1000, or 100 with --follow).
    #[arg(short = 'n', long)]
    pub limit: Option<usize>,
    /// Print each line as the API's JSON object.
    #[arg(long)]
    pub json: bool,
    /// Where the orchestrator is.
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `d8 find`.
#[derive(Debug, Args)]
pub struct FindArgs {
    /// How long to listen for mDNS answers.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub wait: Duration,
    /// One JSON object per orchestrator and line.
    #[arg(long)]
    pub json: bool,
    /// Where to look.
    #[command(flatten)]
    pub mdns: MdnsInterfaces,
}

/// `d8 usage`.
#[derive(Debug, Args)]
pub struct UsageArgs {
    /// Group by: provider, model, worker, agent or day.
    #[arg(long, default_value = "provider")]
    pub by: String,
    /// First UTC day (YYYY-MM-DD; default: 29 days before --to).
    #[arg(long)]
    pub from: Option<String>,
    /// Last UTC day (YYYY-MM-DD; default: today).
    #[arg(long)]
    pub to: Option<String>,
    /// Print the API's JSON answer.
    #[arg(long)]
    pub json: bool,
    /// Where the orchestrator is.
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `d8 token …`.
#[derive(Debug, Subcommand)]
pub enum TokenAction {
    /// Create an extra join token.
    Create {
        /// Lifetime, e.g. `1h`, `7d` (default: no expiry).
        #[arg(long, value_parser = parse_duration)]
        ttl: Option<Duration>,
        /// Enrollments allowed (default: unlimited).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        max_uses: Option<u32>,
    },
    /// List tokens (ids only; secrets are never stored).
    List,
    /// Revoke a token by id or unique id prefix.
    Revoke {
        /// Token id.
        id: String,
    },
    /// Replace the standing join token; the old one stops working.
    Rotate,
}

/// `d8 workers …`.
#[derive(Debug, Subcommand)]
pub enum WorkersAction {
    /// List enrolled workers and their state.
    List,
    /// Revoke a worker: its certificate stops working and it is disconnected.
    Revoke {
        /// Worker id.
        id: String,
    },
}

/// `d8 doctor` flags.
#[derive(Debug, Args, Clone)]
pub struct DoctorArgs {
    /// Check this orchestrator address instead of looking over mDNS.
    #[arg(env = "ORCHESTRATOR_URL")]
    pub addr: Option<String>,
    /// Join token to check against (default: the worker's stored cluster, if enrolled).
    #[arg(long, env = "D8_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Worker data dir to read the enrolled cluster from.
    #[arg(long, env = "D8_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// mDNS interfaces.
    #[command(flatten)]
    pub mdns: MdnsInterfaces,
    /// How long to listen for mDNS answers.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub wait: Duration,
}

/// `d8 bench` flags.
#[derive(Debug, Args, Clone)]
pub struct BenchArgs {
    /// Worker counts to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    pub workers: Vec<usize>,
    /// Tasks per throughput run.
    #[arg(long, default_value_t = 10_000)]
    pub tasks: usize,
    /// Tasks per batch request.
    #[arg(long, default_value_t = 250)]
    pub batch: usize,
    /// Concurrent HTTP clients submitting batches.
    #[arg(long, default_value_t = 4)]
    pub clients: usize,
    /// Where the workers run: `inprocess` or `process`.
    #[arg(long, default_value = "inprocess", value_parser = ["inprocess", "process"])]
    pub worker_mode: String,
    /// What the clients call: `tasks` submits to `POST /api/tasks/batch`
    /// (`--batch` tasks a request) and counts results; `openai` sends one
    /// non-streamed `POST /v1/chat/completions` at a time per client and
    /// waits for its answer (`--batch` is ignored).
    #[arg(long, default_value = "tasks", value_parser = ["tasks", "openai"])]
    pub endpoint: String,
    /// Slots per worker.
    #[arg(long, default_value_t = 64)]
    pub slots: u32,
    /// Sequential latency samples on the idle cluster.
    #[arg(long, default_value_t = 300)]
    pub samples: usize,
    /// Repetitions per worker count; the table shows medians (peak RSS: the maximum).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub runs: u32,
    /// Scratch directory (default: a new temp dir, removed afterwards).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// A duration flag that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Not a number followed by a unit.
    #[error("invalid duration {0:?}: expected e.g. 500ms, 30s, 5m, 2h, 7d")]
    Invalid(String),
    /// An unknown unit.
    #[error("invalid duration unit {unit:?} in {value:?}: use ms, s, m, h or d")]
    Unit {
        /// The unit given.
        unit: String,
        /// The whole value.
        value: String,
    },
    /// Does not fit in 64-bit milliseconds.
    #[error("duration {0:?} is too large")]
    TooLarge(String),
}

/// Parses durations such as `500ms`, `30s`, `5m`, `2h`, `7d` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| DurationError::Invalid(s.to_owned()))?;
    let ms = match unit.trim() {
        "ms" => Some(n),
        "" | "s" => n.checked_mul(1_000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        "d" => n.checked_mul(86_400_000),
        other => {
            return Err(DurationError::Unit {
                unit: other.to_owned(),
                value: s.to_owned(),
            });
        }
    };
    ms.map(Duration::from_millis)
        .ok_or_else(|| DurationError::TooLarge(s.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
    }
}
