//! `d8 join`: the worker. Provider keys stay in this process.
//!
//! Who owns what:
//! - this file: [`run`], the reconnect loop (locate the orchestrator, try
//!   each address, back off), what this machine offers, and the errors.
//! - `enroll`: the identity in the data dir (`worker.key` 0600,
//!   `worker.crt`, `ca.crt`, `worker-id`), and enrollment with a join token
//!   when there is none (or the token is for another cluster).
//! - `session`: one mutually authenticated QUIC connection: the control
//!   stream (Hello, heartbeats, Drain) and the task streams the
//!   orchestrator opens.
//! - `task`: one task: the provider call, streamed chunks, Done.
//! - `logs`: this worker's log lines, rate-limited and batched for the
//!   orchestrator's log ring.
//! - `status`: `<data-dir>/status.json`, the worker's state for its own
//!   machine (the desktop app), kept current while it runs.

mod enroll;
mod logs;
mod session;
mod status;
mod task;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32};
use std::time::Duration;

use d8_certs::fingerprint;
use d8_certs::tls::{self, TlsError};
use tokio_util::sync::CancellationToken;

use self::session::{Session, SessionEnd};
use super::files::FileError;
use crate::config::WorkerConfig;
use crate::discovery::{self, DiscoveryError};
use crate::task::Capabilities;
use crate::transport::{self, EndpointError, FrameError};
use crate::wire::PROTOCOL_VERSION;

/// Why a worker stopped for good.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// Data directory problem.
    #[error("data directory: {0}")]
    Files(#[from] FileError),
    /// Not enrolled and no token given.
    #[error(
        "this worker is not enrolled yet: pass --token <TOKEN> (printed by `d8 serve`, also in the orchestrator's <data-dir>/join-token)"
    )]
    NeedToken,
    /// The orchestrator refused enrollment; its reason.
    #[error("enrollment refused: {0}")]
    Refused(String),
    /// The orchestrator refused this worker for good (revoked,
    /// incompatible); what it or the handshake said.
    #[error("{0}")]
    Rejected(String),
    /// Enrollment failed for a reason retrying cannot fix.
    #[error("enrollment failed: {0}")]
    Enroll(#[from] EnrollError),
    /// The orchestrator could not be reached (retried internally).
    #[error("orchestrator unreachable: {0}")]
    Unreachable(String),
    /// Stored or generated identity is unusable.
    #[error("stored identity: {0}")]
    Identity(#[from] IdentityError),
    /// No provider configured.
    #[error("no provider configured: pass --provider (e.g. --provider echo)")]
    NoProvider,
    /// Another worker runs with this data dir (same identity, same status
    /// file): a second one would take over its connection and its file.
    #[error(
        "another d8 worker is already running with the data directory {0} (stop it first, or give this one its own --data-dir)"
    )]
    DataDirBusy(std::path::PathBuf),
}

/// Why enrollment failed for good.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    /// The enrollment TLS configuration.
    #[error(transparent)]
    Tls(TlsError),
    /// The QUIC endpoint.
    #[error(transparent)]
    Endpoint(EndpointError),
    /// The connection could not even start.
    #[error(transparent)]
    Connect(#[from] quinn::ConnectError),
    /// The handshake was refused (wrong CA, …).
    #[error("{explanation}")]
    Handshake {
        /// What the refusal means, and the address.
        explanation: String,
        /// quinn's error.
        #[source]
        source: quinn::ConnectionError,
    },
    /// The connection failed while enrolling.
    #[error(transparent)]
    Connection(#[from] quinn::ConnectionError),
    /// A frame could not be sent or read.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// No answer in time.
    #[error("orchestrator did not answer within 15 s")]
    Timeout,
    /// The orchestrator is not the one the token pins.
    #[error("orchestrator sent a CA that does not match the token")]
    CaMismatch,
}

/// Why the worker's identity cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// A key, certificate or CSR.
    #[error(transparent)]
    Cert(d8_certs::CertError),
    /// The mTLS configuration built from them.
    #[error(transparent)]
    Tls(TlsError),
    /// The QUIC client configuration.
    #[error(transparent)]
    Endpoint(EndpointError),
}

/// Why no orchestrator address is known yet (retried).
#[derive(Debug, thiserror::Error)]
pub(crate) enum LocateError {
    /// Neither an address nor discovery.
    #[error("no orchestrator address given and discovery is off")]
    NoWayToFind,
    /// Discovery itself failed.
    #[error(transparent)]
    Discovery(#[from] DiscoveryError),
    /// Nobody of this cluster answered.
    #[error(
        "no orchestrator of cluster {cluster} answered over mDNS within {}s (run `d8 doctor`, or give the address: d8 join HOST[:PORT])",
        waited.as_secs()
    )]
    NoAnswer {
        /// The cluster id looked for.
        cluster: String,
        /// How long discovery listened.
        waited: Duration,
    },
}

/// What this machine offers.
fn capabilities(cfg: &WorkerConfig) -> Capabilities {
    let memory_mb = sysinfo::System::new_with_specifics(
        sysinfo::RefreshKind::nothing()
            .with_memory(sysinfo::MemoryRefreshKind::nothing().with_ram()),
    )
    .map_or(0, |s| s.total_memory() / (1024 * 1024));
    let kinds = cfg.providers.kinds();
    Capabilities {
        worker_type: cfg
            .worker_type
            .clone()
            .or_else(|| kinds.first().map(|k| default_worker_type(k).to_owned()))
            .unwrap_or_default(),
        offers: cfg.providers.offers(),
        slots: cfg.slots,
        os: std::env::consts::OS.to_owned(),
        arch: std::env::consts::ARCH.to_owned(),
        cpus: std::thread::available_parallelism()
            .map_or(1, |n| u32::try_from(n.get()).unwrap_or(1)),
        memory_mb,
        version: env!("CARGO_PKG_VERSION").to_owned(),
    }
}

/// The original project's worker type for a provider kind (vendor table),
/// so the default routing (evolution and code generation on `deepseek_gpu`,
/// `claude` or `gemini` workers) works without setting `WORKER_TYPE`.
fn default_worker_type(kind: &str) -> &str {
    crate::providers::vendor::find(kind).map_or(kind, |v| v.worker_type)
}

/// How long one discovery round listens before reporting that nothing answered.
const DISCOVERY_WAIT: Duration = Duration::from_secs(3);
/// How long one address may take to complete a QUIC handshake.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Where to connect: the configured address, or what discovery finds now
/// for this cluster, best address first.
async fn locate(cfg: &WorkerConfig, cluster: &str) -> Result<Vec<SocketAddr>, LocateError> {
    if let Some(addr) = cfg.orchestrator {
        return Ok(vec![addr]);
    }
    let Some(d) = &cfg.discovery else {
        return Err(LocateError::NoWayToFind);
    };
    let t0 = std::time::Instant::now();
    let adverts = d.discover(Some(cluster), DISCOVERY_WAIT).await?;
    let local = discovery::local_addrs(&[]);
    let mut out = Vec::new();
    for a in &adverts {
        if a.proto != PROTOCOL_VERSION {
            tracing::warn!(orchestrator = %a.name, proto = a.proto, "orchestrator speaks another protocol version; trying anyway");
        }
        out.extend(
            discovery::order_addrs(&a.addrs, &local)
                .into_iter()
                .map(|ip| SocketAddr::new(ip, a.quic_port)),
        );
    }
    if out.is_empty() {
        return Err(LocateError::NoAnswer {
            cluster: cluster.to_owned(),
            waited: DISCOVERY_WAIT,
        });
    }
    tracing::info!(
        cluster,
        found_in_ms = t0.elapsed().as_millis() as u64,
        addrs = ?out,
        "found the orchestrator over mDNS"
    );
    Ok(out)
}

/// Shared between the session loop and task handlers.
#[derive(Default)]
pub(super) struct Load {
    pub(super) active: AtomicU32,
    pub(super) draining: AtomicBool,
    /// Tasks this run finished with a result, and without one.
    pub(super) completed: std::sync::atomic::AtomicU64,
    pub(super) failed: std::sync::atomic::AtomicU64,
    /// Tasks given back to run elsewhere, through no fault of theirs (a
    /// rate limit, a key out of quota): not failures.
    pub(super) handed_back: std::sync::atomic::AtomicU64,
}

/// Runs the worker until `shutdown` fires (then drains) or a fatal error,
/// keeping `<data-dir>/status.json` current all along.
pub async fn run(cfg: WorkerConfig, shutdown: CancellationToken) -> Result<(), WorkerError> {
    if cfg.providers.kinds().is_empty() {
        return Err(WorkerError::NoProvider);
    }
    super::files::ensure_dir(&cfg.data_dir)?;
    // Held until this run ends; before anything here touches the data dir's
    // files, so a second worker leaves the first one's alone.
    let _lock =
        super::files::lock_dir(&cfg.data_dir, super::files::WORKER_LOCK).map_err(|e| match e {
            super::files::LockError::Busy => WorkerError::DataDirBusy(cfg.data_dir.clone()),
            super::files::LockError::File(e) => WorkerError::Files(e),
        })?;
    // A request left from before this run is not for it.
    let _ = std::fs::remove_file(cfg.data_dir.join(super::files::DRAIN_REQUEST));
    let board = Arc::new(status::Board::new(&cfg.data_dir));
    let load = Arc::new(Load::default());
    let stop = CancellationToken::new();
    let writer = tokio::spawn(status::keep_written(
        board.clone(),
        load.clone(),
        cfg.providers.clone(),
        stop.clone(),
        shutdown.clone(),
    ));
    let result = serve(cfg, &shutdown, &board, &load).await;
    match &result {
        Ok(()) => board.set("stopped"),
        Err(e) => {
            board.error(&e.to_string());
            board.set("failed");
        }
    }
    stop.cancel();
    let _ = writer.await;
    result
}

/// [`run`] without the status file's start and end.
async fn serve(
    cfg: WorkerConfig,
    shutdown: &CancellationToken,
    board: &status::Board,
    load: &Arc<Load>,
) -> Result<(), WorkerError> {
    // Listen from the start: what enrolling and connecting say reaches the
    // orchestrator once connected.
    let forward = logs::Forwarder::new(cfg.logs.as_ref());
    cfg.providers
        .keep_spend_in(&cfg.data_dir.join(super::files::SPEND));
    for o in cfg.providers.offers() {
        tracing::info!(
            provider = %o.provider,
            tier = %o.tier,
            models = %o.models.join(","),
            reasoning_model = o.reasoning_model.as_deref().unwrap_or("-"),
            "provider ready (its key stays on this machine)"
        );
    }
    let stored = enroll::load_identity(&cfg.data_dir)?;
    let enroll_with = match (&stored, &cfg.token) {
        // A token for another cluster means: join that cluster instead.
        (Some(id), Some(t)) if fingerprint(&id.ca) != t.ca_digest() => {
            tracing::info!(
                "token is for a different cluster than the stored identity; enrolling again"
            );
            Some(t)
        }
        (Some(_), _) => None,
        (None, Some(t)) => Some(t),
        (None, None) => return Err(WorkerError::NeedToken),
    };
    let ident = match (stored, enroll_with) {
        (_, Some(t)) => {
            board.set("enrolling");
            match enroll::enroll_until_done(&cfg, t, shutdown).await? {
                Some(id) => id,
                None => return Ok(()),
            }
        }
        (Some(id), None) => id,
        (None, None) => return Err(WorkerError::NeedToken),
    };
    let tls = tls::cluster_client_config(
        ident.ca.clone(),
        vec![ident.cert.clone()],
        Some(ident.key.private_key_der()),
    )
    .map_err(IdentityError::Tls)?;
    let client =
        transport::client_config(tls, cfg.idle_timeout).map_err(IdentityError::Endpoint)?;
    let caps = capabilities(&cfg);
    let forward = tokio::sync::Mutex::new(forward);
    let session = Session {
        cfg: &cfg,
        worker_id: &ident.worker_id,
        client: &client,
        caps: &caps,
        load,
        shutdown,
        board,
        forward: &forward,
    };
    let cluster = discovery::cluster_id(&fingerprint(&ident.ca));
    let mut backoff = Duration::from_millis(100);
    loop {
        let started = std::time::Instant::now();
        board.set("connecting");
        let reason = match tokio::select! {
            r = locate(&cfg, &cluster) => r,
            () = shutdown.cancelled() => return Ok(()),
        } {
            Err(e) => e.to_string(),
            Ok(addrs) => {
                let mut reason = String::new();
                for addr in addrs {
                    match session.run(addr).await {
                        SessionEnd::Drained => return Ok(()),
                        SessionEnd::Fatal(r) => return Err(WorkerError::Rejected(r)),
                        // Try the next address.
                        SessionEnd::Unreachable(r) => reason = r,
                        SessionEnd::Lost(r) => {
                            reason = r;
                            break;
                        }
                    }
                }
                reason
            }
        };
        if shutdown.is_cancelled() {
            return Ok(());
        }
        board.error(&reason);
        // A session that lasted resets the backoff.
        if started.elapsed() > Duration::from_secs(10) {
            backoff = Duration::from_millis(100);
        }
        let jitter = Duration::from_millis(u64::from(rand::random::<u8>()) % 100);
        tracing::warn!(reason = %reason, retry_in_ms = (backoff + jitter).as_millis() as u64, "not connected to the orchestrator");
        tokio::select! {
            () = tokio::time::sleep(backoff + jitter) => {}
            () = shutdown.cancelled() => return Ok(()),
        }
        backoff = (backoff * 2).min(cfg.max_backoff);
    }
}

#[cfg(test)]
mod tests {
    use super::default_worker_type;

    #[test]
    fn provider_kinds_map_to_the_original_worker_types() {
        assert_eq!(default_worker_type("anthropic"), "claude");
        assert_eq!(default_worker_type("ollama"), "deepseek_gpu");
        assert_eq!(default_worker_type("gemini"), "gemini");
        assert_eq!(default_worker_type("groq"), "groq");
    }
}
