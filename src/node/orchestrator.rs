//! `d8 serve`: identity setup, the QUIC accept loop, per-worker connection
//! tasks, the HTTP server and housekeeping. Scheduling itself is in the `actor` module.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use d8_certs::tls::{self, ALPN_CLUSTER, ALPN_ENROLL, Revocations};
use d8_certs::{CertError, ClusterCa, JoinToken, fingerprint, pem_to_der, pem_to_key};
use quinn::Connection;
use rustls::pki_types::CertificateDer;
use tokio_util::sync::CancellationToken;

use super::actor::{Actor, SchedHandle, SchedMsg};
use super::files::{self, FileError};
use super::now_millis;
use super::registry::Registry;
use crate::config::OrchestratorConfig;
use crate::core::{Counters, Scheduler};
use crate::store::{Backend, Op, RedbBackend, Store, StoreError, TokenKind, WorkerRecord};
use crate::task::WorkerId;
use crate::transport::{self, FrameError, close};
use crate::wire::{self, EnrollRequest, EnrollResponse, OrchMsg, PROTOCOL_VERSION, WorkerMsg};

/// Why the orchestrator could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Data directory problem.
    #[error("data directory: {0}")]
    Files(#[from] FileError),
    /// Store problem.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// CA or certificate problem.
    #[error("cluster identity: {0}")]
    Cert(#[from] CertError),
    /// TLS configuration problem.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// QUIC endpoint problem.
    #[error(transparent)]
    Endpoint(#[from] transport::EndpointError),
    /// HTTP port problem.
    #[error("cannot listen for HTTP on {addr}: {source}")]
    HttpBind {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
}

/// Shared by connection handlers and HTTP handlers.
pub(crate) struct Shared {
    pub(crate) cfg: OrchestratorConfig,
    pub(crate) ca: ClusterCa,
    pub(crate) registry: Mutex<Registry>,
    pub(crate) store: Store,
    pub(crate) sched: SchedHandle,
    pub(crate) api_key: String,
    pub(crate) join_token: Mutex<JoinToken>,
    pub(crate) agents: Mutex<std::collections::BTreeMap<String, crate::store::AgentDef>>,
}

impl Shared {
    pub(crate) fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A running orchestrator.
pub struct Orchestrator {
    shared: Arc<Shared>,
    quic_addr: SocketAddr,
    http_addr: SocketAddr,
    shutdown: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    endpoint: quinn::Endpoint,
    advertiser: Option<crate::discovery::Advertiser>,
    name: String,
}

impl std::fmt::Debug for Orchestrator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Orchestrator")
            .field("quic_addr", &self.quic_addr)
            .field("http_addr", &self.http_addr)
            .finish_non_exhaustive()
    }
}

const CA_CERT: &str = "ca.crt";
const CA_KEY: &str = "ca.key";
const ORCH_CERT: &str = "orchestrator.crt";
const ORCH_KEY: &str = "orchestrator.key";
/// File with the standing join token (0600), for scripts.
pub const JOIN_TOKEN_FILE: &str = "join-token";
/// File with the HTTP API key (0600), for scripts and `d8 status`.
pub const API_KEY_FILE: &str = "api-key";
const DB_FILE: &str = "d8.redb";

/// Loads the cluster CA and orchestrator certificate, creating them on first start.
fn load_identity(dir: &Path) -> Result<(ClusterCa, String, String), StartError> {
    let ca = match (
        files::read_optional(&dir.join(CA_CERT))?,
        files::read_optional(&dir.join(CA_KEY))?,
    ) {
        (Some(cert), Some(key)) => ClusterCa::from_pem(&cert, &key)?,
        _ => {
            let ca = ClusterCa::generate()?;
            let pem = ca.to_pem();
            files::write_file(&dir.join(CA_KEY), pem.key_pem.as_bytes(), true)?;
            files::write_file(&dir.join(CA_CERT), pem.cert_pem.as_bytes(), false)?;
            // A new CA invalidates any old server certificate.
            let _ = std::fs::remove_file(dir.join(ORCH_CERT));
            ca
        }
    };
    let (cert, key) = match (
        files::read_optional(&dir.join(ORCH_CERT))?,
        files::read_optional(&dir.join(ORCH_KEY))?,
    ) {
        (Some(c), Some(k)) => (c, k),
        _ => {
            let issued = ca.issue_orchestrator()?;
            files::write_file(&dir.join(ORCH_KEY), issued.key_pem.as_bytes(), true)?;
            files::write_file(&dir.join(ORCH_CERT), issued.cert_pem.as_bytes(), false)?;
            (issued.cert_pem, issued.key_pem)
        }
    };
    Ok((ca, cert, key))
}

fn generate_api_key() -> String {
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut bytes = [0u8; 32];
    rand::fill(&mut bytes);
    let body: String = bytes
        .iter()
        .map(|b| char::from(ALPHABET[usize::from(b & 31)]))
        .collect();
    format!("d8k_{body}")
}

impl Orchestrator {
    /// Starts everything on the redb store in the data dir; returns once both
    /// listeners are bound.
    pub async fn start(cfg: OrchestratorConfig) -> Result<Orchestrator, StartError> {
        files::ensure_dir(&cfg.data_dir)?;
        let backend = Arc::new(RedbBackend::open(&cfg.data_dir.join(DB_FILE))?);
        Self::start_with_backend(cfg, backend).await
    }

    /// Starts on a given store backend (tests use the in-memory twin to
    /// inject store failures).
    pub async fn start_with_backend(
        cfg: OrchestratorConfig,
        backend: Arc<dyn Backend>,
    ) -> Result<Orchestrator, StartError> {
        let dir = cfg.data_dir.clone();
        files::ensure_dir(&dir)?;
        let (ca, cert_pem, key_pem) = load_identity(&dir)?;
        let (store, snapshot) = Store::open(backend)?;
        let revocations = Revocations::default();
        let mut registry = Registry::new(snapshot.tokens, snapshot.workers, revocations.clone());

        // The standing join token: reuse the one on disk while it is valid.
        let now = now_millis();
        let on_disk = files::read_optional(&dir.join(JOIN_TOKEN_FILE))?
            .and_then(|s| JoinToken::parse(&s).ok())
            .filter(|t| t.ca_digest() == ca.digest() && registry.default_token_valid(t.secret()));
        let join_token = match on_disk {
            Some(t) => t,
            None => {
                let mut ops: Vec<Op> = registry
                    .revoke_default_tokens()
                    .into_iter()
                    .map(Op::PutToken)
                    .collect();
                let (token, rec) =
                    registry.create_token(now, ca.digest(), TokenKind::Default, None, None);
                ops.push(Op::PutToken(rec));
                store.commit(ops).await?;
                files::write_file(
                    &dir.join(JOIN_TOKEN_FILE),
                    format!("{token}\n").as_bytes(),
                    true,
                )?;
                token
            }
        };
        let api_key = match files::read_optional(&dir.join(API_KEY_FILE))? {
            Some(k) if !k.trim().is_empty() => k.trim().to_owned(),
            _ => {
                let k = generate_api_key();
                files::write_file(&dir.join(API_KEY_FILE), format!("{k}\n").as_bytes(), true)?;
                k
            }
        };

        let chain = vec![
            pem_to_der(&cert_pem, "orchestrator certificate")?,
            ca.cert_der().clone(),
        ];
        let key = pem_to_key(&key_pem, "orchestrator key")?;
        let server_tls = tls::server_config(chain, key, ca.cert_der().clone(), revocations)?;
        let endpoint = transport::server_endpoint(cfg.quic_addr, server_tls, cfg.idle_timeout)?;
        let quic_addr = endpoint
            .local_addr()
            .map_err(|source| StartError::HttpBind {
                addr: cfg.quic_addr,
                source,
            })?;
        let listener = tokio::net::TcpListener::bind(cfg.http_addr)
            .await
            .map_err(|source| StartError::HttpBind {
                addr: cfg.http_addr,
                source,
            })?;
        let http_addr = listener
            .local_addr()
            .map_err(|source| StartError::HttpBind {
                addr: cfg.http_addr,
                source,
            })?;

        let shutdown = CancellationToken::new();
        let t = snapshot.totals;
        let core = Scheduler::new(
            cfg.scheduler.clone(),
            Counters {
                completed: t.completed,
                failed: t.failed,
                cancelled: t.cancelled,
                ..Counters::default()
            },
        );
        let (actor, sched) = Actor::new(core, store.clone(), shutdown.clone());
        let mut tasks = vec![tokio::spawn(actor.run())];
        if !snapshot.pending.is_empty() {
            tracing::info!(
                tasks = snapshot.pending.len(),
                "re-queued tasks accepted before the restart"
            );
            let _ = sched.send(SchedMsg::Submit(snapshot.pending)).await;
        }

        let shared = Arc::new(Shared {
            cfg,
            ca,
            registry: Mutex::new(registry),
            store,
            sched,
            api_key,
            join_token: Mutex::new(join_token),
            agents: Mutex::new(snapshot.agents),
        });

        tasks.push(tokio::spawn(accept_loop(
            endpoint.clone(),
            shared.clone(),
            shutdown.clone(),
        )));
        let router = crate::http::router(shared.clone());
        let http_shutdown = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            use axum::serve::ListenerExt;
            // Small request/response exchanges: never wait for Nagle.
            let listener = listener.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
            let serve = axum::serve(listener, router)
                .with_graceful_shutdown(async move { http_shutdown.cancelled().await });
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "HTTP server failed");
            }
        }));
        tasks.push(tokio::spawn(retention_loop(
            shared.clone(),
            shutdown.clone(),
        )));
        let name = shared.cfg.name.clone().unwrap_or_else(|| {
            let host = sysinfo::System::host_name().unwrap_or_default();
            let cid = crate::discovery::cluster_id(&shared.ca.digest());
            // Unique per cluster even where hosts share a hostname (containers,
            // network namespaces).
            format!("d8-{}-{}", d8_certs::sanitize_worker_id(&host), &cid[..6])
        });
        let advertiser = shared.cfg.mdns.as_ref().and_then(|interfaces| {
            let spec = crate::discovery::AdvertSpec {
                name: name.clone(),
                cluster_id: crate::discovery::cluster_id(&shared.ca.digest()),
                quic_port: quic_addr.port(),
                http_port: http_addr.port(),
            };
            match crate::discovery::Advertiser::start(interfaces, &spec) {
                Ok(a) => {
                    tracing::info!(name = %name, interfaces = ?interfaces, "advertising over mDNS");
                    Some(a)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "mDNS advertising failed; workers need this machine's address");
                    None
                }
            }
        });
        tracing::info!(%quic_addr, %http_addr, data_dir = %shared.cfg.data_dir.display(), "orchestrator up");
        Ok(Orchestrator {
            shared,
            quic_addr,
            http_addr,
            shutdown,
            tasks,
            endpoint,
            advertiser,
            name,
        })
    }

    /// The bound QUIC address.
    pub fn quic_addr(&self) -> SocketAddr {
        self.quic_addr
    }

    /// The bound HTTP address.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The standing join token.
    pub fn join_token(&self) -> JoinToken {
        self.shared
            .join_token
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The HTTP API key.
    pub fn api_key(&self) -> &str {
        &self.shared.api_key
    }

    /// SHA-256 of the cluster CA certificate.
    pub fn ca_digest(&self) -> [u8; 32] {
        self.shared.ca.digest()
    }

    /// The name announced over mDNS.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// True while advertising over mDNS.
    pub fn advertising(&self) -> bool {
        self.advertiser.is_some()
    }

    /// Stops cleanly: withdraws the mDNS advert, closes worker connections,
    /// stops HTTP, flushes the store.
    pub async fn shutdown(mut self) {
        if let Some(a) = self.advertiser.take() {
            // Sends the mDNS goodbye; blocking for at most half a second.
            let _ = tokio::task::spawn_blocking(move || a.stop()).await;
        }
        self.shutdown.cancel();
        self.endpoint
            .close(close::NORMAL, b"orchestrator shutting down");
        for t in self.tasks {
            let _ = t.await;
        }
        // Give close frames a moment to leave.
        let _ = tokio::time::timeout(Duration::from_millis(500), self.endpoint.wait_idle()).await;
        self.shared.store.close().await;
    }
}

/// Drops results older than the retention. Sweeps at half the retention
/// (so nothing outlives it by more than half), at most every 10 minutes.
async fn retention_loop(shared: Arc<Shared>, shutdown: CancellationToken) {
    let retention = shared.cfg.result_retention;
    let every = (retention / 2).clamp(Duration::from_millis(100), Duration::from_secs(600));
    let retention_ms = u64::try_from(retention.as_millis()).unwrap_or(u64::MAX);
    loop {
        let before = crate::task::Millis(now_millis().0.saturating_sub(retention_ms));
        shared.store.enqueue(vec![Op::PurgeResults { before }]);
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

async fn accept_loop(endpoint: quinn::Endpoint, shared: Arc<Shared>, shutdown: CancellationToken) {
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => match i {
                Some(i) => i,
                None => return,
            },
            () = shutdown.cancelled() => return,
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            let conn = match incoming.await {
                Ok(c) => c,
                Err(e) => {
                    tracing::info!(%remote, reason = %e, "refused a QUIC handshake");
                    return;
                }
            };
            let alpn = conn
                .handshake_data()
                .and_then(|h| h.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
                .and_then(|h| h.protocol);
            match alpn.as_deref() {
                Some(p) if p == ALPN_ENROLL => enroll(conn, &shared).await,
                Some(p) if p == ALPN_CLUSTER => serve_worker(conn, &shared).await,
                _ => conn.close(close::PROTOCOL, b"unknown application protocol"),
            }
        });
    }
}

/// Handles one enrollment: token check, CSR signing, records, reply.
async fn enroll(conn: Connection, shared: &Shared) {
    let remote = conn.remote_address();
    let result = tokio::time::timeout(Duration::from_secs(10), async {
        let (mut send, mut recv) = match conn.accept_bi().await {
            Ok(s) => s,
            // `d8 doctor` probes reachability this way: handshake, then close.
            Err(quinn::ConnectionError::ApplicationClosed(_)) => {
                tracing::debug!(%remote, "probe connection closed before enrolling");
                return Ok(());
            }
            Err(e) => return Err(e.to_string()),
        };
        let req: EnrollRequest = transport::read_frame(&mut recv)
            .await
            .map_err(|e| e.to_string())?;
        let reply = enroll_reply(shared, req).await;
        if let EnrollResponse::Refused { reason } = &reply {
            tracing::warn!(%remote, %reason, "enrollment refused");
        }
        transport::write_frame(&mut send, &reply)
            .await
            .map_err(|e| e.to_string())?;
        let _ = send.finish();
        Ok::<(), String>(())
    })
    .await;
    match result {
        Ok(Ok(())) => {
            // Let the worker read the reply and close first.
            let _ = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await;
        }
        Ok(Err(e)) => {
            tracing::warn!(%remote, error = %e, "enrollment failed");
            conn.close(close::PROTOCOL, b"bad enrollment request");
        }
        Err(_) => conn.close(close::PROTOCOL, b"enrollment timed out"),
    }
}

async fn enroll_reply(shared: &Shared, req: EnrollRequest) -> EnrollResponse {
    let EnrollRequest::Enroll {
        proto,
        secret,
        csr_der,
        wanted_id,
    } = req;
    let refuse = |reason: String| EnrollResponse::Refused { reason };
    if proto != PROTOCOL_VERSION {
        return refuse(format!(
            "incompatible protocol version {proto}: this orchestrator speaks {PROTOCOL_VERSION}; install the same d8 version on both machines"
        ));
    }
    let now = now_millis();
    let (worker_id, cert, ops) = {
        let mut reg = shared.registry();
        let (worker_id, token) = match reg.admit(now, &secret, &wanted_id) {
            Ok(x) => x,
            Err(e) => return refuse(e.to_string()),
        };
        let cert = match shared.ca.sign_worker_csr(&csr_der, &worker_id) {
            Ok(c) => c,
            Err(e) => return refuse(format!("bad certificate request: {e}")),
        };
        let rec = WorkerRecord {
            id: worker_id.clone(),
            fingerprint: hex::encode(fingerprint(&cert)),
            enrolled_at: now,
            token_id: token.id.clone(),
            revoked: false,
        };
        reg.record_worker(rec.clone());
        (
            worker_id,
            cert,
            vec![Op::PutToken(token), Op::PutWorker(rec)],
        )
    };
    if let Err(e) = shared.store.commit(ops).await {
        return refuse(format!("orchestrator could not record the enrollment: {e}"));
    }
    tracing::info!(worker = %worker_id, "worker enrolled");
    EnrollResponse::Enrolled {
        worker_id,
        cert_der: cert.to_vec(),
        ca_der: shared.ca.cert_der().to_vec(),
    }
}

/// Serves one mutually authenticated worker connection until it ends.
async fn serve_worker(conn: Connection, shared: &Shared) {
    let remote = conn.remote_address();
    let cert = conn
        .peer_identity()
        .and_then(|p| p.downcast::<Vec<CertificateDer<'static>>>().ok())
        .and_then(|certs| certs.first().cloned());
    let Some(cert) = cert else {
        tracing::warn!(%remote, "refused a cluster connection without a client certificate");
        conn.close(
            close::UNAUTHORIZED,
            b"client certificate required: enroll first with `d8 join --token <TOKEN>`",
        );
        return;
    };
    let record = shared.registry().worker_for(&fingerprint(&cert)).cloned();
    let Some(record) = record.filter(|r| !r.revoked) else {
        tracing::warn!(%remote, "refused an unknown or revoked worker certificate");
        conn.close(
            close::UNAUTHORIZED,
            b"this worker certificate is unknown or revoked",
        );
        return;
    };
    let id = WorkerId(record.id);

    let (mut send, mut recv) =
        match tokio::time::timeout(Duration::from_secs(10), conn.accept_bi()).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::debug!(worker = %id, error = %e, "connection ended before hello");
                return;
            }
            Err(_) => {
                conn.close(close::PROTOCOL, b"no hello within 10 s");
                return;
            }
        };
    let payload = match transport::read_payload(&mut recv).await {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(worker = %id, error = %e, "bad hello frame");
            conn.close(close::PROTOCOL, b"bad hello frame");
            return;
        }
    };
    match wire::peek_hello_version(&payload) {
        Some(PROTOCOL_VERSION) => {}
        Some(v) => {
            let reason = format!(
                "incompatible protocol version {v}: this orchestrator speaks {PROTOCOL_VERSION}; install the same d8 version on both machines"
            );
            tracing::warn!(worker = %id, %reason, "refused worker");
            let _ = transport::write_frame(
                &mut send,
                &OrchMsg::Rejected {
                    reason: reason.clone(),
                    supported: PROTOCOL_VERSION,
                },
            )
            .await;
            let _ = send.finish();
            let _ = tokio::time::timeout(Duration::from_secs(2), conn.closed()).await;
            conn.close(close::VERSION, reason.as_bytes());
            return;
        }
        None => {
            conn.close(close::PROTOCOL, b"expected hello");
            return;
        }
    }
    let hello = match wire::decode::<WorkerMsg>(&payload) {
        Ok(WorkerMsg::Hello(h)) => h,
        Ok(_) | Err(_) => {
            conn.close(close::PROTOCOL, b"malformed hello");
            return;
        }
    };
    if hello.worker_id != id.0 {
        tracing::warn!(worker = %id, claimed = %hello.worker_id, "hello names another worker");
        conn.close(
            close::UNAUTHORIZED,
            b"hello names a worker other than the certificate's",
        );
        return;
    }
    let welcome = OrchMsg::Welcome {
        proto: PROTOCOL_VERSION,
        heartbeat_ms: u32::try_from(shared.cfg.heartbeat.as_millis()).unwrap_or(u32::MAX),
    };
    if transport::write_frame(&mut send, &welcome).await.is_err() {
        return;
    }
    let mut caps = hello.caps;
    caps.slots = caps.slots.clamp(1, 1_024);
    // The scheduler scans offers for every dispatch: keep a worker's list
    // to what any real machine has.
    caps.offers.truncate(64);
    for o in &mut caps.offers {
        o.models.truncate(256);
    }
    if shared
        .sched
        .send(SchedMsg::WorkerUp {
            id: id.clone(),
            caps,
            conn: conn.clone(),
        })
        .await
        .is_err()
    {
        return;
    }
    loop {
        match transport::read_frame::<WorkerMsg>(&mut recv).await {
            Ok(WorkerMsg::Heartbeat { cooldowns, .. }) => {
                if shared
                    .sched
                    .send(SchedMsg::Heartbeat(id.clone(), cooldowns))
                    .await
                    .is_err()
                {
                    break;
                }
            }
            Ok(WorkerMsg::Drain) => {
                let _ = shared.sched.send(SchedMsg::Drain(id.clone())).await;
            }
            Ok(WorkerMsg::Hello(_)) => {
                conn.close(close::PROTOCOL, b"unexpected second hello");
                break;
            }
            Err(FrameError::Wire(e)) => {
                tracing::warn!(worker = %id, error = %e, "closing connection after a bad control frame");
                conn.close(
                    close::PROTOCOL,
                    format!("bad control frame: {e}").as_bytes(),
                );
                break;
            }
            Err(FrameError::Eof | FrameError::Io(_)) => break,
        }
    }
    let _ = shared
        .sched
        .send(SchedMsg::WorkerDown {
            id,
            conn_id: conn.stable_id(),
        })
        .await;
}
