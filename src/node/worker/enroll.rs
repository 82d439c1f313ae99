//! The worker's identity: loading it from the data dir, or enrolling with
//! a join token (CSR in, certificate out) and storing it.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use d8_certs::tls;
use d8_certs::{JoinToken, ORCHESTRATOR_NAME, WorkerKey, der_to_pem, fingerprint, pem_to_der};
use rustls::pki_types::CertificateDer;
use tokio_util::sync::CancellationToken;

use super::{CONNECT_TIMEOUT, EnrollError, IdentityError, WorkerError, locate};
use crate::config::WorkerConfig;
use crate::discovery;
use crate::node::files::{
    self, CA_CERT as CA_FILE, WORKER_CERT as CERT_FILE, WORKER_ID as ID_FILE,
    WORKER_KEY as KEY_FILE,
};
use crate::transport::{self, close};
use crate::wire::{EnrollRequest, EnrollResponse, PROTOCOL_VERSION};

/// A worker's enrolled identity.
pub(super) struct Identity {
    pub(super) worker_id: String,
    pub(super) cert: CertificateDer<'static>,
    pub(super) key: WorkerKey,
    pub(super) ca: CertificateDer<'static>,
}

pub(super) fn load_identity(dir: &Path) -> Result<Option<Identity>, WorkerError> {
    let (Some(id), Some(cert), Some(key), Some(ca)) = (
        files::read_optional(&dir.join(ID_FILE))?,
        files::read_optional(&dir.join(CERT_FILE))?,
        files::read_optional(&dir.join(KEY_FILE))?,
        files::read_optional(&dir.join(CA_FILE))?,
    ) else {
        return Ok(None);
    };
    let bad = |e: d8_certs::CertError| WorkerError::Identity(IdentityError::Cert(e));
    Ok(Some(Identity {
        worker_id: id.trim().to_owned(),
        cert: pem_to_der(&cert, "worker certificate").map_err(bad)?,
        key: WorkerKey::from_pem(&key).map_err(bad)?,
        ca: pem_to_der(&ca, "CA certificate").map_err(bad)?,
    }))
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
pub(super) async fn enroll_until_done(
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
            Err(e) => e.to_string(),
        };
        tracing::warn!(%reason, retry_in_ms = backoff.as_millis() as u64, "cannot reach the orchestrator to enroll");
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = shutdown.cancelled() => return Ok(None),
        }
        backoff = (backoff * 2).min(cfg.max_backoff);
    }
}

/// Enrolls with `token`, stores the identity, returns it.
async fn enroll(
    cfg: &WorkerConfig,
    token: &JoinToken,
    addr: SocketAddr,
) -> Result<Identity, WorkerError> {
    let key = WorkerKey::generate().map_err(IdentityError::Cert)?;
    let wanted = wanted_id(cfg);
    let csr = key.csr_der(&wanted).map_err(IdentityError::Cert)?;
    let tls = tls::enroll_client_config(token.ca_digest()).map_err(EnrollError::Tls)?;
    let client = transport::client_config(tls, cfg.idle_timeout).map_err(EnrollError::Endpoint)?;
    let endpoint = transport::client_endpoint(addr).map_err(EnrollError::Endpoint)?;
    let connecting = endpoint
        .connect_with(client, addr, ORCHESTRATOR_NAME)
        .map_err(EnrollError::Connect)?;
    let conn = match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Err(_) => return Err(WorkerError::Unreachable(format!("no answer from {addr}"))),
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            let why = format!("{} ({addr})", transport::explain(&e));
            return Err(match e {
                // TLS said no (wrong CA, …): final.
                quinn::ConnectionError::TransportError(_) => EnrollError::Handshake {
                    explanation: why,
                    source: e,
                }
                .into(),
                _ => WorkerError::Unreachable(why),
            });
        }
    };
    let reply = async {
        let (mut send, mut recv) = conn.open_bi().await?;
        transport::write_frame(
            &mut send,
            &EnrollRequest::Enroll {
                proto: PROTOCOL_VERSION,
                secret: token.secret().to_owned(),
                csr_der: csr,
                wanted_id: wanted,
            },
        )
        .await?;
        let _ = send.finish();
        Ok::<_, EnrollError>(transport::read_frame::<EnrollResponse>(&mut recv).await?)
    };
    let reply = tokio::time::timeout(Duration::from_secs(15), reply)
        .await
        .map_err(|_| EnrollError::Timeout)?
        .map_err(|e| match conn.close_reason() {
            // The orchestrator cannot record enrollments now (its disk is
            // full): not final, try again with backoff.
            Some(quinn::ConnectionError::ApplicationClosed(c)) if c.error_code == close::BUSY => {
                WorkerError::Unreachable(format!(
                    "the orchestrator cannot enroll workers right now: {}",
                    String::from_utf8_lossy(&c.reason)
                ))
            }
            _ => WorkerError::Enroll(e),
        });
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
                return Err(EnrollError::CaMismatch.into());
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
