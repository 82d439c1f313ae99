//! Validated configuration for the orchestrator and the worker, with named
//! presets (`lan`, and `local` for tests). Raw input (flags, environment,
//! `.env`) is parsed by clap in `cli`; `from_args` here turns it, with the
//! worker's TOML file and provider variables, into these. Everything in a
//! built config has been checked; building one starts nothing.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use d8_certs::{JoinToken, TokenError};

pub use crate::cli::DEFAULT_PORT;
use crate::cli::{JoinArgs, ServeArgs};
use crate::core::{RouteError, SchedulerConfig};
use crate::node::files::default_data_dir;
use crate::providers::file::{WorkerFile, WorkerFileError};
use crate::providers::{self, BuildError, Provider, ProviderSet};

/// Why flags, environment or files do not make a usable configuration.
/// Each message names the flag, variable or file to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `--dead-after` too short for the heartbeat.
    #[error("--dead-after ({dead_after:?}) must be at least twice --heartbeat ({heartbeat:?})")]
    Liveness {
        /// `--dead-after`.
        dead_after: Duration,
        /// `--heartbeat`.
        heartbeat: Duration,
    },
    /// `--attempt-timeout 0`.
    #[error("--attempt-timeout must be positive")]
    AttemptTimeout,
    /// A `--route` rule.
    #[error(transparent)]
    Route(#[from] RouteError),
    /// `--max-body-bytes` below 1 KiB.
    #[error("--max-body-bytes must be at least 1024")]
    BodyLimit,
    /// `--name` unusable as an mDNS instance name.
    #[error("--name must be 1-63 characters without dots")]
    Name,
    /// The orchestrator address.
    #[error(transparent)]
    Address(#[from] AddrError),
    /// The join token.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The worker's TOML file.
    #[error(transparent)]
    WorkerFile(#[from] WorkerFileError),
    /// A provider's variables.
    #[error(transparent)]
    Provider(#[from] BuildError),
    /// `--worker-type` longer than the orchestrator accepts.
    #[error("--worker-type must be at most {} bytes", crate::task::MAX_NAME)]
    WorkerType,
    /// A worker without any provider.
    #[error(
        "no provider: pass --provider ({}), --config FILE, or set WORKER_TYPE",
        providers::vendor::kinds()
    )]
    NoProvider,
}

/// An orchestrator address that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AddrError {
    /// Nothing that looks like a host.
    #[error("invalid orchestrator address {0:?}")]
    Invalid(String),
    /// The name did not resolve.
    #[error("cannot resolve orchestrator address {addr:?}: {source}")]
    Resolve {
        /// As given.
        addr: String,
        /// The resolver's answer.
        #[source]
        source: std::io::Error,
    },
    /// The name resolved to no address.
    #[error("orchestrator address {0:?} resolved to nothing")]
    Empty(String),
}

/// The HTTP server's bounds (tests shorten them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Connections at once.
    pub max_connections: usize,
    /// Connections at once from one address.
    pub max_per_address: usize,
    /// Time for a request head to arrive, and for an idle keep-alive
    /// connection to send its next one.
    pub head_timeout: Duration,
    /// Time for a request body to arrive whole.
    pub body_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_connections: 1_024,
            max_per_address: 256,
            head_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
        }
    }
}

/// Orchestrator settings.
#[derive(Debug, Clone)]
pub struct OrchestratorConfig {
    /// Where the CA, keys, tokens and the database live.
    pub data_dir: PathBuf,
    /// QUIC listen address (UDP).
    pub quic_addr: SocketAddr,
    /// HTTP listen address (TCP).
    pub http_addr: SocketAddr,
    /// Scheduler tuning (liveness, aging, routing).
    pub scheduler: SchedulerConfig,
    /// Heartbeat interval workers are told to use.
    pub heartbeat: Duration,
    /// QUIC idle timeout (keep-alives are sent at a quarter of it).
    pub idle_timeout: Duration,
    /// How long finished task results are kept.
    pub result_retention: Duration,
    /// Largest accepted HTTP request body.
    pub max_body_bytes: usize,
    /// Most tasks accepted and not yet finished.
    pub max_queued: u64,
    /// HTTP connection bounds and timeouts.
    pub http: HttpLimits,
    /// Attempts a task may fail before it fails, unless it says otherwise.
    pub max_attempts: u32,
    /// Time one attempt may take, unless the task says otherwise.
    pub attempt_timeout: Duration,
    /// Longest `?wait=` a client may ask for.
    pub max_wait: Duration,
    /// How long an OpenAI-compatible request may wait in the queue while no
    /// online worker can serve it before it is answered 503 (a worker that
    /// is restarting or waking up gets this long to come back).
    pub queue_timeout: Duration,
    /// How long a cached answer is served when a request turns the cache
    /// on without saying.
    pub cache_ttl: Duration,
    /// Most bytes of cached answers kept; past it the least recently used go.
    pub cache_max_bytes: usize,
    /// Serve `/metrics` without the bearer key (default false).
    pub metrics_no_auth: bool,
    /// Require the bearer API key on `/api/*` (default true).
    pub require_api_key: bool,
    /// Advertise over mDNS: `None` off, `Some([])` on every non-loopback
    /// interface, `Some(names)` only on those.
    pub mdns: Option<Vec<String>>,
    /// Name announced over mDNS (default: `d8-<hostname>`).
    pub name: Option<String>,
    /// This process's log events, kept in the log ring with the workers'
    /// (`None`: only the workers' lines are kept, as in tests).
    pub logs: Option<crate::logging::LogTap>,
    /// Prices for usage accounting (`--prices`); default: the data dir's
    /// `prices.toml` when there is one.
    pub prices: Option<PathBuf>,
    /// Host names the API answers without a key besides addresses,
    /// `localhost` and this machine's names (`--allow-host`).
    pub allowed_hosts: Vec<String>,
}

/// `n` MiB in bytes, saturating on 32-bit targets.
fn mib(n: u64) -> usize {
    usize::try_from(n.saturating_mul(1024 * 1024)).unwrap_or(usize::MAX)
}

impl OrchestratorConfig {
    /// LAN defaults: listen on all interfaces on port 5000; a dead worker is
    /// noticed after 3 s of silence (heartbeat every 500 ms); results kept 7 days.
    pub fn lan(data_dir: PathBuf) -> Self {
        let any = std::net::Ipv4Addr::UNSPECIFIED;
        OrchestratorConfig {
            data_dir,
            quic_addr: (any, DEFAULT_PORT).into(),
            http_addr: (any, DEFAULT_PORT).into(),
            scheduler: SchedulerConfig::lan(),
            heartbeat: Duration::from_millis(500),
            idle_timeout: Duration::from_secs(10),
            result_retention: Duration::from_secs(7 * 24 * 3600),
            // Chats with long contexts fit; a runaway client does not.
            max_body_bytes: 4 * 1024 * 1024,
            max_queued: crate::cli::DEFAULT_MAX_QUEUED,
            http: HttpLimits::default(),
            max_attempts: 3,
            // Generous: slow local models on CPU can take minutes.
            attempt_timeout: Duration::from_secs(300),
            max_wait: Duration::from_secs(300),
            queue_timeout: Duration::from_secs(crate::cli::DEFAULT_QUEUE_TIMEOUT_SECS),
            cache_ttl: Duration::from_secs(crate::cli::DEFAULT_CACHE_TTL_SECS),
            cache_max_bytes: mib(crate::cli::DEFAULT_CACHE_MAX_MB),
            metrics_no_auth: false,
            require_api_key: true,
            mdns: Some(Vec::new()),
            name: None,
            logs: None,
            prices: None,
            allowed_hosts: Vec::new(),
        }
    }

    /// Fast settings for tests: loopback, ephemeral ports, quick liveness.
    pub fn local(data_dir: PathBuf) -> Self {
        let lo = std::net::Ipv4Addr::LOCALHOST;
        let mut cfg = Self::lan(data_dir);
        cfg.quic_addr = (lo, 0).into();
        cfg.http_addr = (lo, 0).into();
        cfg.heartbeat = Duration::from_millis(100);
        cfg.scheduler.suspect_after_ms = 400;
        cfg.scheduler.dead_after_ms = 800;
        cfg.idle_timeout = Duration::from_secs(4);
        // Tests outside a network namespace must never multicast on the
        // machine's real interfaces.
        cfg.mdns = None;
        cfg
    }
}

/// Worker settings.
#[derive(Clone)]
pub struct WorkerConfig {
    /// Where the worker's key, certificate and id live.
    pub data_dir: PathBuf,
    /// Orchestrator QUIC address; `None` to find it with `discovery`.
    pub orchestrator: Option<SocketAddr>,
    /// How to find the orchestrator when no address is given.
    pub discovery: Option<std::sync::Arc<dyn crate::discovery::Discovery>>,
    /// Join token; needed only until the worker is enrolled.
    pub token: Option<JoinToken>,
    /// Preferred worker id (default: the hostname).
    pub worker_id: Option<String>,
    /// The original project's worker type (default: the first provider's kind).
    pub worker_type: Option<String>,
    /// Tasks run at once.
    pub slots: u32,
    /// Providers with this machine's keys.
    pub providers: ProviderSet,
    /// QUIC idle timeout.
    pub idle_timeout: Duration,
    /// Longest wait between reconnection attempts.
    pub max_backoff: Duration,
    /// On Ctrl-C, how long to wait for in-flight tasks.
    pub drain_timeout: Duration,
    /// This process's log events, forwarded to the orchestrator (`None`:
    /// nothing is forwarded, as in tests that publish their own).
    pub logs: Option<crate::logging::LogTap>,
}

impl WorkerConfig {
    /// LAN defaults: 4 slots, reconnect backoff up to 5 s, 60 s to drain.
    pub fn lan(data_dir: PathBuf, orchestrator: SocketAddr, providers: ProviderSet) -> Self {
        WorkerConfig {
            data_dir,
            orchestrator: Some(orchestrator),
            discovery: None,
            token: None,
            worker_id: None,
            worker_type: None,
            slots: 4,
            providers,
            idle_timeout: Duration::from_secs(10),
            max_backoff: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(60),
            logs: None,
        }
    }

    /// Fast settings for tests.
    pub fn local(data_dir: PathBuf, orchestrator: SocketAddr, providers: ProviderSet) -> Self {
        let mut cfg = Self::lan(data_dir, orchestrator, providers);
        cfg.idle_timeout = Duration::from_secs(4);
        cfg.max_backoff = Duration::from_millis(300);
        cfg.drain_timeout = Duration::from_secs(10);
        cfg
    }
}

impl std::fmt::Debug for WorkerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerConfig")
            .field("data_dir", &self.data_dir)
            .field("orchestrator", &self.orchestrator)
            .field("discovery", &self.discovery.is_some())
            .field("token", &self.token)
            .field("worker_id", &self.worker_id)
            .field("slots", &self.slots)
            .field("providers", &self.providers)
            .finish_non_exhaustive()
    }
}

impl OrchestratorConfig {
    /// The validated configuration for `d8 serve`: LAN defaults changed by
    /// the flags (and their environment variables).
    pub fn from_args(args: &ServeArgs) -> Result<Self, ConfigError> {
        let dir = args
            .data_dir
            .clone()
            .unwrap_or_else(|| default_data_dir("orchestrator"));
        let mut cfg = OrchestratorConfig::lan(dir);
        cfg.quic_addr = (args.bind, args.quic_port.unwrap_or(args.port)).into();
        cfg.http_addr = (args.bind, args.http_port.unwrap_or(args.port)).into();
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        if args.heartbeat.is_zero() || args.dead_after < args.heartbeat * 2 {
            return Err(ConfigError::Liveness {
                dead_after: args.dead_after,
                heartbeat: args.heartbeat,
            });
        }
        cfg.heartbeat = args.heartbeat;
        cfg.scheduler.dead_after_ms = ms(args.dead_after);
        // Suspect (no new work) after three missed beats, or halfway to dead.
        cfg.scheduler.suspect_after_ms =
            (ms(args.heartbeat) * 3).min(ms(args.dead_after) / 2).max(1);
        cfg.result_retention = args.result_retention;
        cfg.max_attempts = args.max_attempts;
        if args.attempt_timeout.is_zero() {
            return Err(ConfigError::AttemptTimeout);
        }
        cfg.attempt_timeout = args.attempt_timeout;
        cfg.scheduler.retry_backoff_ms = ms(args.retry_backoff);
        for r in &args.routes {
            cfg.scheduler.routing.parse_rules(r)?;
        }
        if args.max_body_bytes < 1024 {
            return Err(ConfigError::BodyLimit);
        }
        cfg.max_body_bytes = args.max_body_bytes;
        cfg.max_queued = args.max_queued;
        cfg.queue_timeout = Duration::from_secs(args.queue_timeout_secs);
        cfg.cache_ttl = Duration::from_secs(args.cache_ttl_secs);
        cfg.cache_max_bytes = mib(args.cache_max_mb);
        cfg.require_api_key = !args.no_auth;
        cfg.metrics_no_auth = args.metrics_no_auth;
        cfg.prices = args.prices.clone();
        cfg.allowed_hosts = args.allow_host.clone();
        cfg.mdns = (!args.no_mdns).then(|| args.mdns.interfaces.clone());
        if let Some(n) = &args.name
            && (n.is_empty() || n.len() > 63 || n.contains('.'))
        {
            return Err(ConfigError::Name);
        }
        cfg.name = args.name.clone();
        Ok(cfg)
    }
}

impl WorkerConfig {
    /// The validated configuration for `d8 join`: its providers are built
    /// from the worker file (in its order), then from `--provider` names the
    /// file does not list, each with its variables. With no orchestrator
    /// address, `discovery` is left for the caller to start (mDNS on
    /// `args.mdns.interfaces`): building a config starts nothing.
    pub fn from_args(args: &JoinArgs) -> Result<Self, ConfigError> {
        let orchestrator = args
            .addr
            .as_deref()
            .map(|a| parse_orchestrator_addr(a, args.port))
            .transpose()?;
        if args.poll_interval.is_some() {
            tracing::info!("POLL_INTERVAL is ignored: the orchestrator pushes tasks to workers");
        }
        // The original project's WORKER_TYPE names the provider when no
        // --provider is given; its API_KEY is that provider's key.
        let legacy = args
            .worker_type
            .as_deref()
            .map(|t| providers::vendor::by_worker_type(t).map_or(t, |v| v.kind));
        let names: Vec<String> = if args.providers.is_empty() {
            legacy.map(|l| vec![l.to_owned()]).unwrap_or_default()
        } else {
            args.providers
                .iter()
                .map(|p| p.trim().to_owned())
                .filter(|p| !p.is_empty())
                .collect()
        };
        let mut over = HashMap::new();
        if let Some(u) = args
            .ollama_url
            .clone()
            .or_else(|| args.deepseek_base_url.clone())
        {
            over.insert("OLLAMA_HOST".to_owned(), u);
        }
        if let Some(ms) = args.echo_word_delay_ms {
            over.insert("ECHO_WORD_DELAY_MS".to_owned(), ms.to_string());
        }
        let env = providers::Overlay {
            base: &providers::ProcessEnv,
            over,
        };
        let delay = Duration::from_millis(args.echo_delay_ms);
        let legacy_key = |kind: &str| args.api_key.as_deref().filter(|_| legacy == Some(kind));
        let mut built: Vec<Arc<dyn Provider>> = Vec::new();
        let mut settings = Vec::new();
        // One HTTP client for every provider: one pool, one TLS session cache.
        // Both bounds are range-checked by clap and fit a 64-bit usize.
        let limits = providers::ReadLimits {
            body_bytes: usize::try_from(args.max_vendor_body_bytes).unwrap_or(usize::MAX),
            output_bytes: usize::try_from(args.max_output_bytes).unwrap_or(usize::MAX),
        };
        let client = providers::VendorClient::new(limits)?;
        let file = args
            .config
            .as_deref()
            .map(WorkerFile::load)
            .transpose()?
            .unwrap_or_default();
        for entry in &file.providers {
            built.push(providers::build(
                &entry.kind,
                &entry.overlay(&env),
                legacy_key(&entry.kind),
                delay,
                &client,
            )?);
            settings.push(entry.settings());
        }
        for name in names
            .iter()
            .filter(|n| !file.providers.iter().any(|e| e.kind == **n))
        {
            built.push(providers::build(
                name,
                &env,
                legacy_key(name),
                delay,
                &client,
            )?);
            settings.push(providers::env_settings(name, &env)?);
        }
        if built.is_empty() {
            return Err(ConfigError::NoProvider);
        }
        let dir = args
            .data_dir
            .clone()
            .unwrap_or_else(|| default_data_dir("worker"));
        let placeholder = (std::net::Ipv4Addr::UNSPECIFIED, DEFAULT_PORT).into();
        let mut cfg = WorkerConfig::lan(
            dir,
            placeholder,
            ProviderSet::with_settings(built, &settings),
        );
        cfg.orchestrator = orchestrator;
        cfg.token = args.token.as_deref().map(JoinToken::parse).transpose()?;
        cfg.worker_id = args.worker_id.clone();
        if args
            .worker_type
            .as_ref()
            .is_some_and(|t| t.len() > crate::task::MAX_NAME)
        {
            return Err(ConfigError::WorkerType);
        }
        cfg.worker_type = args.worker_type.clone();
        cfg.slots = args.slots;
        cfg.drain_timeout = args.drain_timeout;
        Ok(cfg)
    }
}

/// Parses an orchestrator address: `host`, `host:port`, `[v6]:port`, or a URL
/// such as the original project's `ORCHESTRATOR_URL=http://192.168.1.10:5000`.
/// Host names are resolved. The port defaults to `default_port`.
pub fn parse_orchestrator_addr(s: &str, default_port: u16) -> Result<SocketAddr, AddrError> {
    let raw = s.trim();
    let rest = raw
        .strip_prefix("http://")
        .or_else(|| raw.strip_prefix("https://"))
        .or_else(|| raw.strip_prefix("quic://"))
        .unwrap_or(raw);
    let hostport = rest.split('/').next().unwrap_or_default();
    if hostport.is_empty() {
        return Err(AddrError::Invalid(s.to_owned()));
    }
    if let Ok(addr) = hostport.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if let Ok(ip) = hostport
        .trim_matches(['[', ']'])
        .parse::<std::net::IpAddr>()
    {
        return Ok((ip, default_port).into());
    }
    let with_port = if hostport
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        hostport.to_owned()
    } else {
        format!("{hostport}:{default_port}")
    };
    use std::net::ToSocketAddrs;
    with_port
        .to_socket_addrs()
        .map_err(|source| AddrError::Resolve {
            addr: s.to_owned(),
            source,
        })?
        .next()
        .ok_or_else(|| AddrError::Empty(s.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orchestrator_addresses() {
        let want: SocketAddr = "127.0.0.1:5000".parse().expect("addr");
        assert_eq!(
            parse_orchestrator_addr("127.0.0.1", DEFAULT_PORT).ok(),
            Some(want)
        );
        assert_eq!(
            parse_orchestrator_addr("127.0.0.1:5000", DEFAULT_PORT).ok(),
            Some(want)
        );
        assert_eq!(
            parse_orchestrator_addr("http://127.0.0.1:5000/api", DEFAULT_PORT).ok(),
            Some(want)
        );
        assert_eq!(
            parse_orchestrator_addr("[::1]:7000", DEFAULT_PORT).ok(),
            Some("[::1]:7000".parse().expect("addr"))
        );
        assert_eq!(
            parse_orchestrator_addr("localhost:6000", DEFAULT_PORT)
                .ok()
                .map(|a| a.port()),
            Some(6000)
        );
        assert!(parse_orchestrator_addr("", DEFAULT_PORT).is_err());
        assert!(parse_orchestrator_addr("http://", DEFAULT_PORT).is_err());
    }

    fn parse(args: &[&str]) -> Result<crate::cli::Cli, clap::Error> {
        use clap::Parser;
        crate::cli::Cli::try_parse_from(std::iter::once("d8").chain(args.iter().copied()))
    }

    fn serve_args(args: &[&str]) -> ServeArgs {
        match parse(args).expect("parse").command {
            crate::cli::Command::Serve(s) => s,
            other => panic!("expected serve, got {other:?}"),
        }
    }

    fn join_args(args: &[&str]) -> JoinArgs {
        match parse(args).expect("parse").command {
            crate::cli::Command::Join(j) => j,
            other => panic!("expected join, got {other:?}"),
        }
    }

    #[test]
    fn serve_defaults_and_validation() {
        let s = serve_args(&["serve", "--data-dir", "/tmp/x"]);
        let cfg = OrchestratorConfig::from_args(&s).expect("config");
        assert_eq!(cfg.quic_addr.port(), 5000);
        assert_eq!(cfg.http_addr.port(), 5000);
        assert_eq!(cfg.scheduler.dead_after_ms, 3_000);
        assert_eq!(cfg.scheduler.retry_backoff_ms, 500);
        let s = serve_args(&["serve", "--heartbeat", "2s", "--dead-after", "3s"]);
        assert!(OrchestratorConfig::from_args(&s).is_err());
        assert!(parse(&["serve", "--max-attempts", "0"]).is_err());
        let s = serve_args(&["serve", "--route", "nonsense"]);
        assert!(OrchestratorConfig::from_args(&s).is_err());
    }

    #[test]
    fn vendor_read_limits_have_sane_bounds() {
        let j = join_args(&["join", "--provider", "echo"]);
        assert_eq!(
            (j.max_output_bytes, j.max_vendor_body_bytes),
            (4 * 1024 * 1024, 64 * 1024 * 1024)
        );
        let j = join_args(&["join", "--max-output-bytes", "8192"]);
        assert_eq!(j.max_output_bytes, 8192);
        assert!(parse(&["join", "--max-output-bytes", "100"]).is_err());
        // A result must fit one wire frame.
        let over = (crate::cli::MAX_OUTPUT_BYTES + 1).to_string();
        assert!(parse(&["join", "--max-output-bytes", &over]).is_err());
        assert!(parse(&["join", "--max-vendor-body-bytes", "0"]).is_err());
    }

    #[test]
    fn an_overlong_worker_type_is_refused_at_start() {
        let long = "t".repeat(129);
        let j = join_args(&[
            "join",
            "127.0.0.1",
            "--provider",
            "echo",
            "--worker-type",
            &long,
        ]);
        let e = WorkerConfig::from_args(&j)
            .expect_err("too long")
            .to_string();
        assert!(e.contains("--worker-type must be at most 128 bytes"), "{e}");
    }

    #[test]
    fn join_validation() {
        let j = join_args(&["join", "127.0.0.1:5000", "--provider", "echo"]);
        let cfg = WorkerConfig::from_args(&j).expect("config");
        assert_eq!(cfg.orchestrator.map(|a| a.port()), Some(5000));
        assert!(cfg.token.is_none());
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("worker.toml");
        std::fs::write(
            &file,
            "[[providers]]\nkind = \"echo\"\nrequests_per_minute = 5\ntier = \"paid\"\nreasoning_model = \"deep\"\n",
        )
        .expect("write");
        let j = join_args(&[
            "join",
            "127.0.0.1",
            "--config",
            file.to_str().expect("utf8"),
        ]);
        let cfg = WorkerConfig::from_args(&j).expect("config from file");
        assert_eq!(cfg.providers.kinds(), ["echo"]);
        // The file's tier and reasoning model are what the worker advertises.
        let offer = &cfg.providers.offers()[0];
        assert_eq!(offer.tier, crate::task::Tier::Paid);
        assert_eq!(offer.reasoning_model.as_deref(), Some("deep"));
        assert_eq!(offer.models, ["echo", "deep"]);
        std::fs::write(&file, "[[providers]]\nkind = \"echo\"\nsecret = 1\n").expect("write");
        let e = WorkerConfig::from_args(&j)
            .expect_err("bad file")
            .to_string();
        assert!(
            e.contains("worker.toml") && e.contains("unknown field"),
            "{e}"
        );
        let j = join_args(&["join", "127.0.0.1", "--provider", "mistral"]);
        assert!(
            WorkerConfig::from_args(&j)
                .expect_err("unknown provider")
                .to_string()
                .contains("not available")
        );
        let j = join_args(&["join", "127.0.0.1", "--provider", "echo", "--token", "bad"]);
        assert!(
            WorkerConfig::from_args(&j)
                .expect_err("bad token")
                .to_string()
                .contains("malformed join token")
        );
    }
}
