//! Validated configuration for the orchestrator and the worker, with named
//! presets. Raw input (flags, environment, `.env`) is parsed in `cli` and
//! turned into these; everything here is already checked.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use d8_certs::JoinToken;

use crate::core::SchedulerConfig;
use crate::providers::ProviderSet;

/// Default port for both QUIC (UDP) and HTTP (TCP), as in the original project.
pub const DEFAULT_PORT: u16 = 5000;

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
    /// Attempts a task may fail before it fails, unless it says otherwise.
    pub max_attempts: u32,
    /// Time one attempt may take, unless the task says otherwise.
    pub attempt_timeout: Duration,
    /// Longest `?wait=` a client may ask for.
    pub max_wait: Duration,
    /// Require the bearer API key on `/api/*` (default true).
    pub require_api_key: bool,
    /// Advertise over mDNS: `None` off, `Some([])` on every non-loopback
    /// interface, `Some(names)` only on those.
    pub mdns: Option<Vec<String>>,
    /// Name announced over mDNS (default: `d8-<hostname>`).
    pub name: Option<String>,
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
            max_attempts: 3,
            // Generous: slow local models on CPU can take minutes.
            attempt_timeout: Duration::from_secs(300),
            max_wait: Duration::from_secs(300),
            require_api_key: true,
            mdns: Some(Vec::new()),
            name: None,
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

/// Parses durations such as `500ms`, `30s`, `5m`, `2h`, `7d` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected e.g. 500ms, 30s, 5m, 2h, 7d"))?;
    let ms = match unit.trim() {
        "ms" => Some(n),
        "" | "s" => n.checked_mul(1_000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        "d" => n.checked_mul(86_400_000),
        other => {
            return Err(format!(
                "invalid duration unit {other:?} in {s:?}: use ms, s, m, h or d"
            ));
        }
    };
    ms.map(Duration::from_millis)
        .ok_or_else(|| format!("duration {s:?} is too large"))
}

/// Parses an orchestrator address: `host`, `host:port`, `[v6]:port`, or a URL
/// such as the original project's `ORCHESTRATOR_URL=http://192.168.1.10:5000`.
/// Host names are resolved. The port defaults to `default_port`.
pub fn parse_orchestrator_addr(s: &str, default_port: u16) -> Result<SocketAddr, String> {
    let raw = s.trim();
    let rest = raw
        .strip_prefix("http://")
        .or_else(|| raw.strip_prefix("https://"))
        .or_else(|| raw.strip_prefix("quic://"))
        .unwrap_or(raw);
    let hostport = rest.split('/').next().unwrap_or_default();
    if hostport.is_empty() {
        return Err(format!("invalid orchestrator address {s:?}"));
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
        .map_err(|e| format!("cannot resolve orchestrator address {s:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("orchestrator address {s:?} resolved to nothing"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
    }

    #[test]
    fn orchestrator_addresses() {
        let want: SocketAddr = "127.0.0.1:5000".parse().expect("addr");
        assert_eq!(parse_orchestrator_addr("127.0.0.1", DEFAULT_PORT), Ok(want));
        assert_eq!(
            parse_orchestrator_addr("127.0.0.1:5000", DEFAULT_PORT),
            Ok(want)
        );
        assert_eq!(
            parse_orchestrator_addr("http://127.0.0.1:5000/api", DEFAULT_PORT),
            Ok(want)
        );
        assert_eq!(
            parse_orchestrator_addr("[::1]:7000", DEFAULT_PORT),
            Ok("[::1]:7000".parse().expect("addr"))
        );
        assert_eq!(
            parse_orchestrator_addr("localhost:6000", DEFAULT_PORT).map(|a| a.port()),
            Ok(6000)
        );
        assert!(parse_orchestrator_addr("", DEFAULT_PORT).is_err());
        assert!(parse_orchestrator_addr("http://", DEFAULT_PORT).is_err());
    }
}
