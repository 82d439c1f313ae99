//! Command-line interface (clap). Every flag can also come from an
//! environment variable, and `main` loads a `.env` file from the working
//! directory first (without overriding variables already set). The original
//! project's worker variables are accepted under their old names.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use d8_certs::JoinToken;

use crate::config::{
    DEFAULT_PORT, OrchestratorConfig, WorkerConfig, parse_duration, parse_orchestrator_addr,
};
use crate::node::files::default_data_dir;
use crate::providers::{Provider, ProviderSet};

/// d8: turn the machines you own into one cluster for LLM agent work.
#[derive(Debug, Parser)]
#[command(name = "d8", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// Log filter (tracing syntax), e.g. `info`, `d8=debug`.
    #[arg(long, global = true, env = "D8_LOG", default_value = "info")]
    pub log: String,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
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
    /// Measure throughput and latency on this machine (starts its own cluster).
    Bench(crate::bench::BenchArgs),
    /// Explain why a worker cannot find or reach its orchestrator.
    Doctor(crate::doctor::DoctorArgs),
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
    /// Serve the HTTP API without the bearer key (trusted networks only).
    #[arg(long, env = "D8_NO_AUTH")]
    pub no_auth: bool,
    /// Do not advertise over mDNS (workers then need the address).
    #[arg(long, env = "D8_NO_MDNS")]
    pub no_mdns: bool,
    /// Advertise over mDNS only on these interfaces; repeatable or comma-separated.
    #[arg(
        long = "mdns-interface",
        env = "D8_MDNS_INTERFACE",
        value_delimiter = ','
    )]
    pub mdns_interfaces: Vec<String>,
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
    /// Tasks run at once.
    #[arg(long, env = "D8_SLOTS", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub slots: u32,
    /// On Ctrl-C, how long to wait for in-flight tasks.
    #[arg(long, env = "D8_DRAIN_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
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
    /// Look for the orchestrator over mDNS only on these interfaces; repeatable or comma-separated.
    #[arg(
        long = "mdns-interface",
        env = "D8_MDNS_INTERFACE",
        value_delimiter = ','
    )]
    pub mdns_interfaces: Vec<String>,
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

impl ServeArgs {
    /// Validated orchestrator configuration.
    pub fn to_config(&self) -> Result<OrchestratorConfig, String> {
        let dir = self
            .data_dir
            .clone()
            .unwrap_or_else(|| default_data_dir("orchestrator"));
        let mut cfg = OrchestratorConfig::lan(dir);
        cfg.quic_addr = (self.bind, self.quic_port.unwrap_or(self.port)).into();
        cfg.http_addr = (self.bind, self.http_port.unwrap_or(self.port)).into();
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        if self.heartbeat.is_zero() || self.dead_after < self.heartbeat * 2 {
            return Err(format!(
                "--dead-after ({:?}) must be at least twice --heartbeat ({:?})",
                self.dead_after, self.heartbeat
            ));
        }
        cfg.heartbeat = self.heartbeat;
        cfg.scheduler.dead_after_ms = ms(self.dead_after);
        // Suspect (no new work) after three missed beats, or halfway to dead.
        cfg.scheduler.suspect_after_ms =
            (ms(self.heartbeat) * 3).min(ms(self.dead_after) / 2).max(1);
        cfg.result_retention = self.result_retention;
        cfg.max_attempts = self.max_attempts;
        if self.attempt_timeout.is_zero() {
            return Err("--attempt-timeout must be positive".into());
        }
        cfg.attempt_timeout = self.attempt_timeout;
        cfg.scheduler.retry_backoff_ms = ms(self.retry_backoff);
        for r in &self.routes {
            cfg.scheduler.routing.parse_rules(r)?;
        }
        if self.max_body_bytes < 1024 {
            return Err("--max-body-bytes must be at least 1024".into());
        }
        cfg.max_body_bytes = self.max_body_bytes;
        cfg.require_api_key = !self.no_auth;
        cfg.mdns = (!self.no_mdns).then(|| self.mdns_interfaces.clone());
        if let Some(n) = &self.name
            && (n.is_empty() || n.len() > 63 || n.contains('.'))
        {
            return Err("--name must be 1-63 characters without dots".into());
        }
        cfg.name = self.name.clone();
        Ok(cfg)
    }
}

impl JoinArgs {
    /// Validated worker configuration.
    pub fn to_config(&self) -> Result<WorkerConfig, String> {
        let orchestrator = self
            .addr
            .as_deref()
            .map(|a| parse_orchestrator_addr(a, self.port))
            .transpose()?;
        if self.poll_interval.is_some() {
            tracing::info!("POLL_INTERVAL is ignored: the orchestrator pushes tasks to workers");
        }
        // The original project's WORKER_TYPE names the provider when no
        // --provider is given; its API_KEY is that provider's key.
        let legacy = match self.worker_type.as_deref() {
            Some("claude") => Some("anthropic"),
            Some("deepseek_gpu") => Some("ollama"),
            other => other,
        };
        let names: Vec<String> = if self.providers.is_empty() {
            legacy.map(|l| vec![l.to_owned()]).unwrap_or_default()
        } else {
            self.providers
                .iter()
                .map(|p| p.trim().to_owned())
                .filter(|p| !p.is_empty())
                .collect()
        };
        let mut over = std::collections::HashMap::new();
        if let Some(u) = self
            .ollama_url
            .clone()
            .or_else(|| self.deepseek_base_url.clone())
        {
            over.insert("OLLAMA_HOST".to_owned(), u);
        }
        let env = crate::providers::Overlay {
            base: &crate::providers::ProcessEnv,
            over,
        };
        let delay = Duration::from_millis(self.echo_delay_ms);
        let mut providers: Vec<Arc<dyn Provider>> = Vec::new();
        let mut settings = Vec::new();
        // One HTTP client for every provider: one pool, one TLS session cache.
        let client = crate::providers::http_client()?;
        // The file's providers first (in its order), then flags it does not name.
        let file = self
            .config
            .as_deref()
            .map(crate::providers::file::WorkerFile::load)
            .transpose()?
            .unwrap_or_default();
        for entry in &file.providers {
            let legacy_key = self
                .api_key
                .as_deref()
                .filter(|_| legacy == Some(entry.kind.as_str()));
            let p = crate::providers::build(
                &entry.kind,
                &entry.overlay(&env),
                legacy_key,
                delay,
                &client,
            )?;
            providers.push(p);
            settings.push(entry.settings());
        }
        for name in names
            .iter()
            .filter(|n| !file.providers.iter().any(|e| e.kind == **n))
        {
            let legacy_key = self
                .api_key
                .as_deref()
                .filter(|_| legacy == Some(name.as_str()));
            providers.push(crate::providers::build(
                name, &env, legacy_key, delay, &client,
            )?);
            settings.push(crate::providers::env_settings(name, &env)?);
        }
        if providers.is_empty() {
            return Err("no provider: pass --provider (echo, ollama, anthropic, gemini, openai, groq, deepseek, openrouter), --config FILE, or set WORKER_TYPE".into());
        }
        let dir = self
            .data_dir
            .clone()
            .unwrap_or_else(|| default_data_dir("worker"));
        let placeholder = (std::net::Ipv4Addr::UNSPECIFIED, DEFAULT_PORT).into();
        let mut cfg = WorkerConfig::lan(
            dir,
            placeholder,
            ProviderSet::with_settings(providers, &settings),
        );
        cfg.orchestrator = orchestrator;
        cfg.token = self
            .token
            .as_deref()
            .map(JoinToken::parse)
            .transpose()
            .map_err(|e| e.to_string())?;
        cfg.worker_id = self.worker_id.clone();
        cfg.worker_type = self.worker_type.clone();
        cfg.slots = self.slots;
        cfg.drain_timeout = self.drain_timeout;
        if orchestrator.is_none() {
            // No address: find the orchestrator of our cluster over mDNS.
            let mdns =
                crate::discovery::MdnsDiscovery::new(&self.mdns_interfaces).map_err(|e| {
                    format!(
                        "cannot start mDNS discovery ({e}); give the orchestrator's address instead"
                    )
                })?;
            cfg.discovery = Some(Arc::new(mdns));
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("d8").chain(args.iter().copied()))
    }

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn serve_defaults_and_validation() {
        let Command::Serve(s) = parse(&["serve", "--data-dir", "/tmp/x"])
            .expect("parse")
            .command
        else {
            panic!("serve");
        };
        let cfg = s.to_config().expect("config");
        assert_eq!(cfg.quic_addr.port(), 5000);
        assert_eq!(cfg.http_addr.port(), 5000);
        assert_eq!(cfg.scheduler.dead_after_ms, 3_000);
        assert_eq!(cfg.scheduler.retry_backoff_ms, 500);
        let Command::Serve(s) = parse(&["serve", "--heartbeat", "2s", "--dead-after", "3s"])
            .expect("parse")
            .command
        else {
            panic!("serve");
        };
        assert!(s.to_config().is_err());
        assert!(parse(&["serve", "--max-attempts", "0"]).is_err());
        let Command::Serve(s) = parse(&["serve", "--route", "nonsense"])
            .expect("parse")
            .command
        else {
            panic!("serve");
        };
        assert!(s.to_config().is_err());
    }

    #[test]
    fn join_validation() {
        let Command::Join(j) = parse(&["join", "127.0.0.1:5000", "--provider", "echo"])
            .expect("parse")
            .command
        else {
            panic!("join");
        };
        let cfg = j.to_config().expect("config");
        assert_eq!(cfg.orchestrator.map(|a| a.port()), Some(5000));
        assert!(cfg.token.is_none());
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("worker.toml");
        std::fs::write(
            &file,
            "[[providers]]\nkind = \"echo\"\nrequests_per_minute = 5\ntier = \"paid\"\nreasoning_model = \"deep\"\n",
        )
        .expect("write");
        let Command::Join(j) = parse(&[
            "join",
            "127.0.0.1",
            "--config",
            file.to_str().expect("utf8"),
        ])
        .expect("parse")
        .command
        else {
            panic!("join");
        };
        let cfg = j.to_config().expect("config from file");
        assert_eq!(cfg.providers.kinds(), ["echo"]);
        // The file's tier and reasoning model are what the worker advertises.
        let offer = &cfg.providers.offers()[0];
        assert_eq!(offer.tier, crate::task::Tier::Paid);
        assert_eq!(offer.reasoning_model.as_deref(), Some("deep"));
        assert_eq!(offer.models, ["echo", "deep"]);
        std::fs::write(&file, "[[providers]]\nkind = \"echo\"\nsecret = 1\n").expect("write");
        let e = j.to_config().expect_err("bad file");
        assert!(
            e.contains("worker.toml") && e.contains("unknown field"),
            "{e}"
        );
        let Command::Join(j) = parse(&["join", "127.0.0.1", "--provider", "mistral"])
            .expect("parse")
            .command
        else {
            panic!("join");
        };
        assert!(j.to_config().unwrap_err().contains("not available"));
        let Command::Join(j) =
            parse(&["join", "127.0.0.1", "--provider", "echo", "--token", "bad"])
                .expect("parse")
                .command
        else {
            panic!("join");
        };
        assert!(j.to_config().unwrap_err().contains("malformed join token"));
    }
}
