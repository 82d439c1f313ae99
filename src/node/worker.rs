//! `d8 join`: enrollment, the session loop that reconnects forever, task
//! execution and drain.
//!
//! A worker keeps `worker.key` (0600), `worker.crt`, `ca.crt` and `worker-id`
//! in its data dir. Without them (or with a token for a different cluster) it
//! enrolls first. Then it holds one mutually authenticated QUIC connection:
//! it opens the control stream (Hello, heartbeats, Drain) and answers each task
//! stream the orchestrator opens. Provider keys stay in this process.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use d8_certs::tls::{self, ALPN_CLUSTER};
use d8_certs::{JoinToken, ORCHESTRATOR_NAME, WorkerKey, der_to_pem, fingerprint, pem_to_der};
use quinn::{Connection, RecvStream, SendStream};
use rustls::pki_types::CertificateDer;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::files::{self, FileError};
use crate::config::WorkerConfig;
use crate::discovery;
use crate::providers::{ChunkSink, Job, ProviderSet};
use crate::task::{Capabilities, ErrorKind, Outcome, TaskError};
use crate::transport::{self, close};
use crate::wire::{
    EnrollRequest, EnrollResponse, Hello, OrchMsg, PROTOCOL_VERSION, TaskAssign, TaskReply,
    WorkerMsg,
};

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
    /// The orchestrator refused enrollment.
    #[error("enrollment refused: {0}")]
    Refused(String),
    /// The orchestrator refused this worker for good (revoked, incompatible).
    #[error("{0}")]
    Rejected(String),
    /// Enrollment failed for a reason retrying cannot fix.
    #[error("enrollment failed: {0}")]
    Enroll(String),
    /// The orchestrator could not be reached (retried internally).
    #[error("orchestrator unreachable: {0}")]
    Unreachable(String),
    /// Stored identity is unusable.
    #[error("stored identity: {0}")]
    Identity(String),
    /// No provider configured.
    #[error("no provider configured: pass --provider (e.g. --provider echo)")]
    NoProvider,
}

use files::{
    CA_CERT as CA_FILE, WORKER_CERT as CERT_FILE, WORKER_ID as ID_FILE, WORKER_KEY as KEY_FILE,
};

/// A worker's enrolled identity.
struct Identity {
    worker_id: String,
    cert: CertificateDer<'static>,
    key: WorkerKey,
    ca: CertificateDer<'static>,
}

fn load_identity(dir: &Path) -> Result<Option<Identity>, WorkerError> {
    let (Some(id), Some(cert), Some(key), Some(ca)) = (
        files::read_optional(&dir.join(ID_FILE))?,
        files::read_optional(&dir.join(CERT_FILE))?,
        files::read_optional(&dir.join(KEY_FILE))?,
        files::read_optional(&dir.join(CA_FILE))?,
    ) else {
        return Ok(None);
    };
    let bad = |e: d8_certs::CertError| WorkerError::Identity(e.to_string());
    Ok(Some(Identity {
        worker_id: id.trim().to_owned(),
        cert: pem_to_der(&cert, "worker certificate").map_err(bad)?,
        key: WorkerKey::from_pem(&key).map_err(bad)?,
        ca: pem_to_der(&ca, "CA certificate").map_err(bad)?,
    }))
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

/// The id this machine asks for: `--worker-id`/`WORKER_ID`, else the hostname.
fn wanted_id(cfg: &WorkerConfig) -> String {
    cfg.worker_id
        .clone()
        .or_else(|| sysinfo::System::host_name().ok())
        .unwrap_or_else(|| "worker".to_owned())
}

/// Enrolls, retrying with backoff while the orchestrator cannot be found or
/// reached (it may simply not be up yet); refusals and CA mismatches are final.
async fn enroll_until_done(
    cfg: &WorkerConfig,
    token: &JoinToken,
    shutdown: &CancellationToken,
) -> Result<Option<Identity>, WorkerError> {
    let cluster = discovery::cluster_id(&token.ca_digest());
    let mut backoff = Duration::from_millis(200);
    loop {
        let reason = match tokio::select! {
            r = locate(cfg, &cluster) => r,
            () = shutdown.cancelled() => return Ok(None),
        } {
            Ok(addrs) => {
                let mut last = String::new();
                for addr in addrs {
                    match enroll(cfg, token, addr).await {
                        Err(WorkerError::Unreachable(reason)) => last = reason,
                        other => return other.map(Some),
                    }
                }
                last
            }
            Err(reason) => reason,
        };
        tracing::warn!(%reason, retry_in_ms = backoff.as_millis() as u64, "cannot reach the orchestrator to enroll");
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = shutdown.cancelled() => return Ok(None),
        }
        backoff = (backoff * 2).min(cfg.max_backoff);
    }
}

/// How long one discovery round listens before reporting that nothing answered.
const DISCOVERY_WAIT: Duration = Duration::from_secs(3);
/// How long one address may take to complete a QUIC handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Where to connect: the configured address, or what discovery finds now
/// for this cluster, best address first.
async fn locate(cfg: &WorkerConfig, cluster: &str) -> Result<Vec<SocketAddr>, String> {
    if let Some(addr) = cfg.orchestrator {
        return Ok(vec![addr]);
    }
    let Some(d) = &cfg.discovery else {
        return Err("no orchestrator address given and discovery is off".into());
    };
    let t0 = std::time::Instant::now();
    let adverts = d
        .discover(Some(cluster), DISCOVERY_WAIT)
        .await
        .map_err(|e| e.to_string())?;
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
        return Err(format!(
            "no orchestrator of cluster {cluster} answered over mDNS within {}s (run `d8 doctor`, or give the address: d8 join HOST[:PORT])",
            DISCOVERY_WAIT.as_secs()
        ));
    }
    tracing::info!(
        cluster,
        found_in_ms = t0.elapsed().as_millis() as u64,
        addrs = ?out,
        "found the orchestrator over mDNS"
    );
    Ok(out)
}

/// Enrolls with `token`, stores the identity, returns it.
async fn enroll(
    cfg: &WorkerConfig,
    token: &JoinToken,
    addr: SocketAddr,
) -> Result<Identity, WorkerError> {
    let key = WorkerKey::generate().map_err(|e| WorkerError::Identity(e.to_string()))?;
    let wanted = wanted_id(cfg);
    let csr = key
        .csr_der(&wanted)
        .map_err(|e| WorkerError::Identity(e.to_string()))?;
    let tls = tls::enroll_client_config(token.ca_digest())
        .map_err(|e| WorkerError::Enroll(e.to_string()))?;
    let client = transport::client_config(tls, cfg.idle_timeout)
        .map_err(|e| WorkerError::Enroll(e.to_string()))?;
    let endpoint =
        transport::client_endpoint(addr).map_err(|e| WorkerError::Enroll(e.to_string()))?;
    let connecting = endpoint
        .connect_with(client, addr, ORCHESTRATOR_NAME)
        .map_err(|e| WorkerError::Enroll(e.to_string()))?;
    let conn = match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Err(_) => return Err(WorkerError::Unreachable(format!("no answer from {addr}"))),
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            let why = format!("{} ({addr})", transport::explain(&e));
            return Err(match e {
                // TLS said no (wrong CA, …): final.
                quinn::ConnectionError::TransportError(_) => WorkerError::Enroll(why),
                _ => WorkerError::Unreachable(why),
            });
        }
    };
    let reply = async {
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        transport::write_frame(
            &mut send,
            &EnrollRequest::Enroll {
                proto: PROTOCOL_VERSION,
                secret: token.secret().to_owned(),
                csr_der: csr,
                wanted_id: wanted,
            },
        )
        .await
        .map_err(|e| e.to_string())?;
        let _ = send.finish();
        transport::read_frame::<EnrollResponse>(&mut recv)
            .await
            .map_err(|e| e.to_string())
    };
    let reply = tokio::time::timeout(Duration::from_secs(15), reply)
        .await
        .map_err(|_| WorkerError::Enroll("orchestrator did not answer within 15 s".into()))?
        .map_err(WorkerError::Enroll);
    conn.close(close::NORMAL, b"enrolled");
    // Long enough for the close to leave; not worth waiting for its ack.
    let _ = tokio::time::timeout(Duration::from_millis(50), endpoint.wait_idle()).await;
    match reply? {
        EnrollResponse::Refused { reason } => Err(WorkerError::Refused(reason)),
        EnrollResponse::Enrolled {
            worker_id,
            cert_der,
            ca_der,
        } => {
            if fingerprint(&ca_der) != token.ca_digest() {
                return Err(WorkerError::Enroll(
                    "orchestrator sent a CA that does not match the token".into(),
                ));
            }
            let dir = &cfg.data_dir;
            files::ensure_dir(dir)?;
            files::write_file(&dir.join(KEY_FILE), key.to_pem().as_bytes(), true)?;
            files::write_file(
                &dir.join(CERT_FILE),
                der_to_pem(&cert_der).as_bytes(),
                false,
            )?;
            files::write_file(&dir.join(CA_FILE), der_to_pem(&ca_der).as_bytes(), false)?;
            files::write_file(
                &dir.join(ID_FILE),
                format!("{worker_id}\n").as_bytes(),
                false,
            )?;
            tracing::info!(worker = %worker_id, "enrolled");
            Ok(Identity {
                worker_id,
                cert: CertificateDer::from(cert_der),
                key,
                ca: CertificateDer::from(ca_der),
            })
        }
    }
}

/// Shared between the session loop and task handlers.
#[derive(Default)]
struct Load {
    active: AtomicU32,
    draining: AtomicBool,
}

/// Runs the worker until `shutdown` fires (then drains) or a fatal error.
pub async fn run(cfg: WorkerConfig, shutdown: CancellationToken) -> Result<(), WorkerError> {
    if cfg.providers.kinds().is_empty() {
        return Err(WorkerError::NoProvider);
    }
    for o in cfg.providers.offers() {
        tracing::info!(
            provider = %o.provider,
            tier = %o.tier,
            models = %o.models.join(","),
            reasoning_model = o.reasoning_model.as_deref().unwrap_or("-"),
            "provider ready (its key stays on this machine)"
        );
    }
    let stored = load_identity(&cfg.data_dir)?;
    let ident = match (stored, &cfg.token) {
        // A token for another cluster means: join that cluster instead.
        (Some(id), Some(t)) if fingerprint(&id.ca) != t.ca_digest() => {
            tracing::info!(
                "token is for a different cluster than the stored identity; enrolling again"
            );
            match enroll_until_done(&cfg, t, &shutdown).await? {
                Some(id) => id,
                None => return Ok(()),
            }
        }
        (Some(id), _) => id,
        (None, Some(t)) => match enroll_until_done(&cfg, t, &shutdown).await? {
            Some(id) => id,
            None => return Ok(()),
        },
        (None, None) => return Err(WorkerError::NeedToken),
    };
    let tls = tls::cluster_client_config(
        ident.ca.clone(),
        vec![ident.cert.clone()],
        Some(ident.key.private_key_der()),
    )
    .map_err(|e| WorkerError::Identity(e.to_string()))?;
    let client = transport::client_config(tls, cfg.idle_timeout)
        .map_err(|e| WorkerError::Identity(e.to_string()))?;
    let caps = capabilities(&cfg);
    let load = Arc::new(Load::default());
    let cluster = discovery::cluster_id(&fingerprint(&ident.ca));
    let mut backoff = Duration::from_millis(100);
    loop {
        let started = std::time::Instant::now();
        let reason = match tokio::select! {
            r = locate(&cfg, &cluster) => r,
            () = shutdown.cancelled() => return Ok(()),
        } {
            Err(reason) => reason,
            Ok(addrs) => {
                let mut reason = String::new();
                for addr in addrs {
                    match session(
                        &cfg,
                        addr,
                        &ident.worker_id,
                        &client,
                        &caps,
                        &load,
                        &shutdown,
                    )
                    .await
                    {
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

enum SessionEnd {
    /// Shut down on request.
    Drained,
    /// This address did not answer: try the next one.
    Unreachable(String),
    /// Was connected, or was refused in a way worth retrying later.
    Lost(String),
    /// Retrying cannot help.
    Fatal(String),
}

#[allow(clippy::too_many_arguments)]
async fn session(
    cfg: &WorkerConfig,
    addr: SocketAddr,
    worker_id: &str,
    client: &quinn::ClientConfig,
    caps: &Capabilities,
    load: &Arc<Load>,
    shutdown: &CancellationToken,
) -> SessionEnd {
    let endpoint = match transport::client_endpoint(addr) {
        Ok(e) => e,
        Err(e) => return SessionEnd::Unreachable(e.to_string()),
    };
    let connecting = match endpoint.connect_with(client.clone(), addr, ORCHESTRATOR_NAME) {
        Ok(c) => c,
        Err(e) => return SessionEnd::Unreachable(format!("{addr}: {e}")),
    };
    let conn = tokio::select! {
        c = tokio::time::timeout(CONNECT_TIMEOUT, connecting) => match c {
            Ok(Ok(c)) => c,
            Ok(Err(e)) if transport::is_unauthorized(&e) => return SessionEnd::Fatal(transport::explain(&e)),
            Ok(Err(e)) => return SessionEnd::Unreachable(format!("{} ({addr})", transport::explain(&e))),
            Err(_) => return SessionEnd::Unreachable(format!("no answer from {addr}")),
        },
        () = shutdown.cancelled() => return SessionEnd::Drained,
    };
    debug_assert_eq!(
        conn.handshake_data()
            .and_then(|h| h.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
            .and_then(|h| h.protocol)
            .as_deref(),
        Some(ALPN_CLUSTER)
    );
    let end = run_session(
        &conn,
        cfg.discovery.as_deref(),
        worker_id,
        caps,
        &cfg.providers,
        load,
        shutdown,
        cfg.drain_timeout,
    )
    .await;
    if let SessionEnd::Drained = end {
        conn.close(close::NORMAL, b"worker drained");
        let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
    }
    end
}

fn lost(e: &quinn::ConnectionError) -> SessionEnd {
    if transport::is_unauthorized(e) {
        SessionEnd::Fatal(transport::explain(e))
    } else {
        SessionEnd::Lost(transport::explain(e))
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_session(
    conn: &Connection,
    discovery: Option<&dyn discovery::Discovery>,
    worker_id: &str,
    caps: &Capabilities,
    providers: &ProviderSet,
    load: &Arc<Load>,
    shutdown: &CancellationToken,
    drain_timeout: Duration,
) -> SessionEnd {
    let (mut control, mut control_recv) = match conn.open_bi().await {
        Ok(s) => s,
        Err(e) => return lost(&e),
    };
    let hello = WorkerMsg::Hello(Hello {
        proto: PROTOCOL_VERSION,
        worker_id: worker_id.to_owned(),
        caps: caps.clone(),
    });
    if let Err(e) = transport::write_frame(&mut control, &hello).await {
        return SessionEnd::Lost(e.to_string());
    }
    let heartbeat = match transport::read_frame::<OrchMsg>(&mut control_recv).await {
        Ok(OrchMsg::Welcome { heartbeat_ms, .. }) => {
            Duration::from_millis(u64::from(heartbeat_ms.clamp(50, 60_000)))
        }
        Ok(OrchMsg::Rejected { reason, .. }) => {
            return SessionEnd::Fatal(format!("orchestrator rejected this worker: {reason}"));
        }
        Err(_) => {
            return match conn.close_reason() {
                Some(e) => lost(&e),
                None => SessionEnd::Lost("orchestrator did not answer hello".into()),
            };
        }
    };
    tracing::info!(worker = %worker_id, addr = %conn.remote_address(), "connected to the orchestrator");
    if let Some(d) = discovery {
        d.idle();
    }
    load.draining.store(false, Ordering::Relaxed);
    let mut tick = tokio::time::interval(heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut drain_deadline: Option<tokio::time::Instant> = None;
    loop {
        if let Some(deadline) = drain_deadline {
            if load.active.load(Ordering::Relaxed) == 0 {
                tracing::info!("drained: no task in flight");
                return SessionEnd::Drained;
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(
                    active = load.active.load(Ordering::Relaxed),
                    "drain timeout; leaving tasks to be re-queued"
                );
                return SessionEnd::Drained;
            }
        }
        tokio::select! {
            stream = conn.accept_bi() => match stream {
                Ok((send, recv)) => {
                    let load = load.clone();
                    let providers = providers.clone();
                    tokio::spawn(async move { handle_task(send, recv, providers, load).await });
                }
                Err(e) => return lost(&e),
            },
            _ = tick.tick() => {
                let beat = WorkerMsg::Heartbeat {
                    active: load.active.load(Ordering::Relaxed),
                    cooldowns: providers.cooldowns(),
                };
                if let Err(e) = transport::write_frame(&mut control, &beat).await {
                    return match conn.close_reason() {
                        Some(e) => lost(&e),
                        None => SessionEnd::Lost(e.to_string()),
                    };
                }
            }
            () = shutdown.cancelled(), if drain_deadline.is_none() => {
                tracing::info!(active = load.active.load(Ordering::Relaxed), "draining: finishing in-flight tasks, accepting no more (Ctrl-C again to force)");
                load.draining.store(true, Ordering::Relaxed);
                let _ = transport::write_frame(&mut control, &WorkerMsg::Drain).await;
                drain_deadline = Some(tokio::time::Instant::now() + drain_timeout);
            }
        }
    }
}

/// Decrements the active count however the task ends.
struct ActiveGuard(Arc<Load>);
impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Runs one task stream: read the assignment, call the provider, forward
/// chunks when asked, answer Done. A stop from the orchestrator (cancel or
/// timeout) drops the provider call.
async fn handle_task(
    mut send: SendStream,
    mut recv: RecvStream,
    providers: ProviderSet,
    load: Arc<Load>,
) {
    load.active.fetch_add(1, Ordering::Relaxed);
    let _guard = ActiveGuard(load.clone());
    let assign: TaskAssign = match transport::read_frame(&mut recv).await {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(error = %e, "bad task frame; dropping the stream");
            let _ = send.reset(transport::STREAM_ABORTED);
            return;
        }
    };
    let outcome = if load.draining.load(Ordering::Relaxed) {
        // Arrived after Drain was sent: hand it straight back, no attempt used.
        Outcome::Err(TaskError {
            kind: ErrorKind::WorkerLost,
            message: "worker is draining".into(),
        })
    } else {
        let stopped = send.stopped();
        let (tx, mut rx) = mpsc::channel::<String>(64);
        let sink = if assign.spec.request.stream {
            ChunkSink::new(tx)
        } else {
            ChunkSink::none()
        };
        let job = Job {
            req: &assign.spec.request,
            task_type: &assign.spec.task_type,
            provider: assign.spec.provider.as_deref(),
            route: Some(&assign.route),
        };
        let call = providers.run(job, sink, report);
        tokio::pin!(call);
        tokio::pin!(stopped);
        loop {
            tokio::select! {
                r = &mut call => {
                    // Chunks pushed just before the call returned are still
                    // queued: they go out before Done.
                    while let Ok(text) = rx.try_recv() {
                        if transport::write_frame(&mut send, &TaskReply::Chunk { text }).await.is_err() {
                            return;
                        }
                    }
                    break match r {
                        Ok(out) => Outcome::Ok(out),
                        Err(e) => Outcome::Err(e.into()),
                    };
                }
                Some(text) = rx.recv() => {
                    if transport::write_frame(&mut send, &TaskReply::Chunk { text }).await.is_err() {
                        return;
                    }
                }
                _ = &mut stopped => {
                    tracing::debug!(task = %assign.id, attempt = assign.attempt, "task stopped by the orchestrator");
                    return;
                }
            }
        }
    };
    let done = TaskReply::Done {
        outcome,
        cooldowns: providers.cooldowns(),
    };
    if transport::write_frame(&mut send, &done).await.is_ok() {
        let _ = send.finish();
    }
}

/// Logs a provider failure at the level it deserves: a rejected key is the
/// operator's to fix, so it is loud; rate limits are routine.
fn report(provider: &str, e: &crate::providers::ProviderError) {
    use crate::providers::ProviderErrorKind as K;
    match e.kind {
        K::Auth => {
            tracing::error!(provider, error = %e, "the provider rejected this worker's key; fix the key (tasks go to other workers meanwhile)")
        }
        K::QuotaExhausted { retry_after_ms } => {
            tracing::warn!(provider, retry_after_ms, error = %e, "provider quota or budget exhausted; resting")
        }
        K::RateLimited { retry_after_ms } => tracing::info!(
            provider,
            retry_after_ms,
            "rate limited; resting and handing the task back"
        ),
        K::Transient => {
            tracing::warn!(provider, error = %e, "provider failed; the task will be retried")
        }
        K::Invalid => tracing::info!(provider, error = %e, "provider rejected the request"),
        K::Unavailable => {
            tracing::info!(provider, error = %e, "no provider can serve the task here; handing it back")
        }
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
