//! `d8 serve`: identity setup, the QUIC accept loop, per-worker connection
//! tasks, the HTTP server and housekeeping. Scheduling itself is in the `actor` module.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use d8_certs::tls::{self, ALPN_CLUSTER, ALPN_ENROLL, Revocations};
use d8_certs::{CertError, ClusterCa, JoinToken, fingerprint, pem_to_der, pem_to_key};
use quinn::Connection;
use rustls::pki_types::CertificateDer;
use tokio_util::sync::CancellationToken;

use super::actor::SchedMsg;
use super::cluster::{Cluster, OpenError};
use super::files::{self, FileError};
use super::gate::{self, Gate};
use super::now_millis;
use super::vitals::Part;
use crate::config::OrchestratorConfig;
use crate::store::{Backend, Op, RedbBackend, StoreError};
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
    /// The cluster's state could not be opened.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// CA or certificate problem.
    #[error("cluster identity: {0}")]
    Cert(#[from] CertError),
    /// TLS configuration problem.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// QUIC endpoint problem.
    #[error(transparent)]
    Endpoint(#[from] transport::EndpointError),
    /// The data dir holds a cluster, but its store is gone or empty.
    #[error(
        "{path} is {what}, but {dir} holds a cluster (its CA); starting would make a new, empty cluster and refuse every enrolled worker. Restore the file from a backup (`d8 backup`), or move the data directory away to start a new cluster"
    )]
    StoreLost {
        /// The database file.
        path: String,
        /// `missing` or `empty`.
        what: &'static str,
        /// The data directory.
        dir: String,
    },
    /// HTTP port problem.
    #[error("cannot listen for HTTP on {addr}: {source}")]
    HttpBind {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
}

/// A running orchestrator.
pub struct Orchestrator {
    cluster: Arc<Cluster>,
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

/// A first start is a data dir without a cluster CA; after it, the store
/// must exist and not be empty. An empty file is what a crash while a copy
/// was being written, or a bad restore, leaves: opening it would silently
/// create a new store (a new join token, no workers, no tasks).
fn check_store_file(dir: &Path, db: &Path) -> Result<(), StartError> {
    if !dir.join(files::CA_CERT).exists() {
        return Ok(());
    }
    let what = match std::fs::metadata(db) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => "missing",
        Ok(m) if m.len() == 0 => "empty",
        _ => return Ok(()),
    };
    Err(StartError::StoreLost {
        path: db.display().to_string(),
        what,
        dir: dir.display().to_string(),
    })
}

/// Loads the cluster CA and orchestrator certificate, creating them on first start.
fn load_identity(dir: &Path) -> Result<(ClusterCa, String, String), StartError> {
    let ca = match (
        files::read_optional(&dir.join(files::CA_CERT))?,
        files::read_optional(&dir.join(files::CA_KEY))?,
    ) {
        (Some(cert), Some(key)) => ClusterCa::from_pem(&cert, &key)?,
        _ => {
            let ca = ClusterCa::generate()?;
            let pem = ca.to_pem();
            files::write_file(&dir.join(files::CA_KEY), pem.key_pem.as_bytes(), true)?;
            files::write_file(&dir.join(files::CA_CERT), pem.cert_pem.as_bytes(), false)?;
            // A new CA invalidates any old server certificate.
            let _ = std::fs::remove_file(dir.join(files::ORCHESTRATOR_CERT));
            ca
        }
    };
    let (cert, key) = match (
        files::read_optional(&dir.join(files::ORCHESTRATOR_CERT))?,
        files::read_optional(&dir.join(files::ORCHESTRATOR_KEY))?,
    ) {
        (Some(c), Some(k)) => (c, k),
        _ => {
            let issued = ca.issue_orchestrator()?;
            files::write_file(
                &dir.join(files::ORCHESTRATOR_KEY),
                issued.key_pem.as_bytes(),
                true,
            )?;
            files::write_file(
                &dir.join(files::ORCHESTRATOR_CERT),
                issued.cert_pem.as_bytes(),
                false,
            )?;
            (issued.cert_pem, issued.key_pem)
        }
    };
    Ok((ca, cert, key))
}

impl Orchestrator {
    /// Starts everything on the redb store in the data dir; returns once both
    /// listeners are bound.
    pub async fn start(cfg: OrchestratorConfig) -> Result<Orchestrator, StartError> {
        files::ensure_dir(&cfg.data_dir)?;
        let db = cfg.data_dir.join(files::DATABASE);
        check_store_file(&cfg.data_dir, &db)?;
        files::remove_stale_backups(&cfg.data_dir);
        let backend = Arc::new(RedbBackend::open(&db)?);
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
        // Both listeners are bound before the cluster opens, so a start that
        // fails leaves no actor holding the store.
        let revocations = Revocations::default();
        let chain = vec![
            pem_to_der(&cert_pem, "orchestrator certificate")?,
            ca.cert_der().clone(),
        ];
        let key = pem_to_key(&key_pem, "orchestrator key")?;
        let server_tls =
            tls::server_config(chain, key, ca.cert_der().clone(), revocations.clone())?;
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
        let (cluster, actor) =
            Cluster::open(cfg, ca, revocations, backend, shutdown.clone()).await?;

        let mut tasks = vec![actor];
        let alive = cluster.vitals().alive(Part::Workers);
        let accept = accept_loop(endpoint.clone(), cluster.clone(), shutdown.clone());
        tasks.push(tokio::spawn(async move {
            let _alive = alive;
            accept.await;
        }));
        let router = crate::http::router(cluster.clone());
        let http_limits = cluster.config().http;
        let http_shutdown = shutdown.clone();
        let alive = cluster.vitals().alive(Part::Http);
        tasks.push(tokio::spawn(async move {
            let _alive = alive;
            crate::http::serve::serve(listener, router, http_limits, http_shutdown).await;
        }));
        tasks.push(tokio::spawn(retention_loop(
            cluster.clone(),
            shutdown.clone(),
        )));
        let cfg = cluster.config();
        let name = cfg.name.clone().unwrap_or_else(|| {
            let host = sysinfo::System::host_name().unwrap_or_default();
            let cid = crate::discovery::cluster_id(&cluster.ca().digest());
            // Unique per cluster even where hosts share a hostname (containers,
            // network namespaces).
            format!("d8-{}-{}", d8_certs::sanitize_worker_id(&host), &cid[..6])
        });
        let advertiser = cfg.mdns.as_ref().and_then(|interfaces| {
            let spec = crate::discovery::AdvertSpec {
                name: name.clone(),
                cluster_id: crate::discovery::cluster_id(&cluster.ca().digest()),
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
        cluster.set_node_info(super::cluster::NodeInfo {
            name: name.clone(),
            quic_port: quic_addr.port(),
            mdns: advertiser.is_some(),
        });
        tracing::info!(%quic_addr, %http_addr, data_dir = %cfg.data_dir.display(), "orchestrator up");
        Ok(Orchestrator {
            cluster,
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
        self.cluster.join_token()
    }

    /// The HTTP API key.
    pub fn api_key(&self) -> &str {
        self.cluster.api_key()
    }

    /// SHA-256 of the cluster CA certificate.
    pub fn ca_digest(&self) -> [u8; 32] {
        self.cluster.ca().digest()
    }

    /// The cluster facade this node serves.
    pub fn cluster(&self) -> &Arc<Cluster> {
        &self.cluster
    }

    /// The name announced over mDNS.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// True while advertising over mDNS.
    pub fn advertising(&self) -> bool {
        self.advertiser.is_some()
    }

    /// Resolves when a long-lived part has stopped although no shutdown was
    /// asked for: the orchestrator cannot go on, and its process should
    /// exit for the service manager to restart it.
    pub async fn failed(&self) -> Part {
        loop {
            if !self.shutdown.is_cancelled()
                && let Some(part) = self.cluster.vitals().down().first()
            {
                return *part;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
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
        self.cluster.store().close().await;
    }
}

/// Drops results older than the retention. Sweeps at half the retention
/// (so nothing outlives it by more than half), at most every 10 minutes.
async fn retention_loop(cluster: Arc<Cluster>, shutdown: CancellationToken) {
    let retention = cluster.config().result_retention;
    let every = (retention / 2).clamp(Duration::from_millis(100), Duration::from_secs(600));
    let retention_ms = u64::try_from(retention.as_millis()).unwrap_or(u64::MAX);
    loop {
        let before = crate::task::Millis(now_millis().0.saturating_sub(retention_ms));
        cluster.store().enqueue(vec![Op::PurgeResults { before }]);
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

async fn accept_loop(
    endpoint: quinn::Endpoint,
    cluster: Arc<Cluster>,
    shutdown: CancellationToken,
) {
    let gate = Arc::new(Gate::default());
    let mut summary = tokio::time::interval(gate::SUMMARY_EVERY);
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => match i {
                Some(i) => i,
                None => return,
            },
            _ = summary.tick() => {
                gate.summarise(std::time::Instant::now());
                continue;
            }
            () = shutdown.cancelled() => return,
        };
        let remote = incoming.remote_address();
        // Refused before the handshake: a flood costs no crypto and no
        // connection state.
        let Ok(permit) = gate.admit(remote.ip(), std::time::Instant::now()) else {
            incoming.refuse();
            continue;
        };
        let cluster = cluster.clone();
        let gate = gate.clone();
        tokio::spawn(async move {
            let conn = match incoming.await {
                Ok(c) => c,
                Err(e) => {
                    gate.note_failure();
                    tracing::debug!(%remote, reason = %e, "refused a QUIC handshake");
                    return;
                }
            };
            let alpn = conn
                .handshake_data()
                .and_then(|h| h.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
                .and_then(|h| h.protocol);
            match alpn.as_deref() {
                Some(p) if p == ALPN_ENROLL => {
                    if !enroll(conn, &cluster).await {
                        gate.note_failure();
                    }
                }
                Some(p) if p == ALPN_CLUSTER => serve_worker(conn, &cluster, permit).await,
                _ => conn.close(close::PROTOCOL, b"unknown application protocol"),
            }
        });
    }
}

/// Largest enrollment request read. A real one (token, CSR, a few names)
/// is under 2 KB; the frame cap of authenticated connections (8 MiB) is
/// not for strangers.
const MAX_ENROLL_FRAME: usize = 16 * 1024;

/// Why an enrollment connection ends without an answer.
enum NoAnswer {
    /// The request was bad or the stream failed.
    Bad(String),
    /// The orchestrator cannot record an enrollment now; the worker retries.
    Busy(String),
}

/// Handles one enrollment: token check, CSR signing, records, reply.
/// False when it failed (bad request, refused, timed out); the caller counts
/// those for the log summary instead of logging each.
async fn enroll(conn: Connection, cluster: &Cluster) -> bool {
    let remote = conn.remote_address();
    let result = tokio::time::timeout(Duration::from_secs(10), async {
        let (mut send, mut recv) = match conn.accept_bi().await {
            Ok(s) => s,
            // `d8 doctor` probes reachability this way: handshake, then close.
            Err(quinn::ConnectionError::ApplicationClosed(_)) => {
                tracing::debug!(%remote, "probe connection closed before enrolling");
                return Ok(true);
            }
            Err(e) => return Err(NoAnswer::Bad(e.to_string())),
        };
        let req: EnrollRequest = transport::read_frame_within(&mut recv, MAX_ENROLL_FRAME)
            .await
            .map_err(|e| NoAnswer::Bad(e.to_string()))?;
        let reply = cluster
            .enroll(req)
            .await
            .map_err(|e| NoAnswer::Busy(e.to_string()))?;
        let accepted = match &reply {
            EnrollResponse::Refused { reason } => {
                tracing::debug!(%remote, %reason, "enrollment refused");
                false
            }
            EnrollResponse::Enrolled { .. } => true,
        };
        transport::write_frame(&mut send, &reply)
            .await
            .map_err(|e| NoAnswer::Bad(e.to_string()))?;
        let _ = send.finish();
        Ok(accepted)
    })
    .await;
    match result {
        Ok(Ok(accepted)) => {
            // Let the worker read the reply and close first.
            let _ = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await;
            accepted
        }
        Ok(Err(NoAnswer::Bad(e))) => {
            tracing::debug!(%remote, error = %e, "enrollment failed");
            conn.close(close::PROTOCOL, b"bad enrollment request");
            false
        }
        Ok(Err(NoAnswer::Busy(e))) => {
            tracing::debug!(%remote, error = %e, "enrollment deferred");
            conn.close(close::BUSY, e.as_bytes());
            false
        }
        Err(_) => {
            conn.close(close::PROTOCOL, b"enrollment timed out");
            false
        }
    }
}

/// `permit` is the connection's place among the unauthenticated ones; it is
/// given back once the certificate is known.
async fn serve_worker(
    conn: Connection,
    cluster: &Cluster,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
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
    let Some(record) = cluster.authorized_worker(&fingerprint(&cert)) else {
        tracing::warn!(%remote, "refused an unknown or revoked worker certificate");
        conn.close(
            close::UNAUTHORIZED,
            b"this worker certificate is unknown or revoked",
        );
        return;
    };
    let id = WorkerId(record.id);
    drop(permit);

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
    if let Some((what, len)) = hello.caps.oversized_name() {
        let reason = format!(
            "hello refused: its {what} is {len} bytes, at most {}",
            crate::task::MAX_NAME
        );
        tracing::warn!(worker = %id, %reason, "refused worker");
        conn.close(close::PROTOCOL, reason.as_bytes());
        return;
    }
    let welcome = OrchMsg::Welcome {
        proto: PROTOCOL_VERSION,
        heartbeat_ms: u32::try_from(cluster.config().heartbeat.as_millis()).unwrap_or(u32::MAX),
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
    cluster.note_offers(&caps.offers);
    cluster.accounts().note_offers(&id.0, &caps.offers);
    if cluster
        .sched()
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
                if cluster
                    .sched()
                    .send(SchedMsg::Heartbeat(id.clone(), cooldowns))
                    .await
                    .is_err()
                {
                    break;
                }
            }
            Ok(WorkerMsg::Drain) => {
                let _ = cluster.sched().send(SchedMsg::Drain(id.clone())).await;
            }
            Ok(WorkerMsg::Logs { mut lines, dropped }) => {
                // The sender is the certificate's worker, whatever the
                // lines say; a batch over the limit is cut, and counted.
                let over = lines.len().saturating_sub(wire::MAX_LOG_BATCH);
                lines.truncate(wire::MAX_LOG_BATCH);
                let ring = cluster.logs();
                for line in lines {
                    ring.push(Some(&id.0), line);
                }
                ring.note_dropped(Some(&id.0), dropped.saturating_add(over as u64));
            }
            Ok(WorkerMsg::Hello(_)) => {
                conn.close(close::PROTOCOL, b"unexpected second hello");
                break;
            }
            Err(e @ (FrameError::Wire(_) | FrameError::TooLarge { .. })) => {
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
    let _ = cluster
        .sched()
        .send(SchedMsg::WorkerDown {
            id,
            conn_id: conn.stable_id(),
        })
        .await;
}
