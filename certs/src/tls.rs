//! rustls configurations for d8's three kinds of handshake. All are TLS 1.3
//! only (QUIC requires it; a TLS 1.2-capable config makes quinn panic later) and
//! use the ring provider explicitly, so they never depend on a process default.
//!
//! - Orchestrator server ([`server_config`]): one config for both ALPNs.
//!   Client certificates are *optional* at the TLS layer because enrollment
//!   clients have none; the orchestrator refuses a cluster-ALPN connection
//!   without one right after the handshake. A presented certificate must chain
//!   to the cluster CA and must not be revoked ([`Revocations`]), otherwise the
//!   handshake itself fails.
//! - Enrollment client ([`enroll_client_config`]): trusts exactly the CA whose
//!   SHA-256 is in the join token; the orchestrator sends that CA in its chain.
//! - Cluster client ([`cluster_client_config`]): trusts the stored CA and
//!   presents the worker certificate.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, OtherError,
    RootCertStore, ServerConfig, SignatureScheme,
};

use crate::fingerprint;

/// ALPN of the enrollment handshake (no client certificate).
pub const ALPN_ENROLL: &[u8] = b"d8-enroll/1";
/// ALPN of the cluster protocol (mutual TLS). The `/1` names the framing
/// generation; message versions are negotiated in `Hello`.
pub const ALPN_CLUSTER: &[u8] = b"d8/1";

/// Errors building TLS configurations.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// rustls refused the configuration (bad key, bad certificate…).
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client verifier could not be built.
    #[error("TLS client verifier: {0}")]
    Verifier(String),
}

/// The ring crypto provider, shared by every config d8 builds.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Fingerprints of revoked worker certificates, shared between the store and
/// the live TLS verifier so a revocation takes effect at the next handshake.
#[derive(Debug, Clone, Default)]
pub struct Revocations(Arc<RwLock<HashSet<[u8; 32]>>>);

impl Revocations {
    /// Marks a certificate fingerprint revoked.
    pub fn insert(&self, fp: [u8; 32]) {
        self.0.write().unwrap_or_else(|p| p.into_inner()).insert(fp);
    }
    /// True when the fingerprint was revoked.
    pub fn contains(&self, fp: &[u8; 32]) -> bool {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(fp)
    }
}

#[derive(Debug)]
struct RevocationAwareVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    revoked: Revocations,
}

impl ClientCertVerifier for RevocationAwareVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }
    fn client_auth_mandatory(&self) -> bool {
        false
    }
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let ok = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        if self.revoked.contains(&fingerprint(end_entity)) {
            return Err(rustls::Error::InvalidCertificate(CertificateError::Revoked));
        }
        Ok(ok)
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The orchestrator's server config. `chain` is `[orchestrator cert, CA cert]`:
/// the CA is sent so enrolling workers can check it against their token.
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    ca: CertificateDer<'static>,
    revoked: Revocations,
) -> Result<ServerConfig, TlsError> {
    let provider = provider();
    let mut roots = RootCertStore::empty();
    roots.add(ca)?;
    let inner = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let verifier = Arc::new(RevocationAwareVerifier { inner, revoked });
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    cfg.alpn_protocols = vec![ALPN_CLUSTER.to_vec(), ALPN_ENROLL.to_vec()];
    // 0-RTT would let a replayed first flight reach the orchestrator; never.
    cfg.max_early_data_size = 0;
    Ok(cfg)
}

/// Error text a worker sees when the orchestrator's CA is not the one its token pins.
struct CaMismatch;
const CA_MISMATCH: &str = "the orchestrator's CA does not match the join token (token from another cluster, or not a d8 orchestrator)";
impl std::fmt::Display for CaMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(CA_MISMATCH)
    }
}
// rustls renders `OtherError` with `Debug`; make that the sentence too, so the
// operator reads the reason rather than a type name.
impl std::fmt::Debug for CaMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(CA_MISMATCH)
    }
}
impl std::error::Error for CaMismatch {}

/// A client-side certificate policy: what differs between d8's server
/// verifiers. [`Verifier`] adds the handshake signature checks they share.
trait ServerPolicy: std::fmt::Debug + Send + Sync {
    /// Accepts or refuses what the server presented.
    fn check(
        &self,
        provider: &Arc<CryptoProvider>,
        server: Presented<'_>,
    ) -> Result<ServerCertVerified, rustls::Error>;
}

/// What a server presented in its handshake.
struct Presented<'a> {
    end_entity: &'a CertificateDer<'a>,
    intermediates: &'a [CertificateDer<'a>],
    server_name: &'a ServerName<'a>,
    ocsp_response: &'a [u8],
    now: UnixTime,
}

/// A server verifier: `policy` for the chain, the ring provider's algorithms
/// for handshake signatures.
#[derive(Debug)]
struct Verifier<P> {
    policy: P,
    provider: Arc<CryptoProvider>,
}

impl<P: ServerPolicy> ServerCertVerifier for Verifier<P> {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let server = Presented {
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        };
        self.policy.check(&self.provider, server)
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Trusts only the CA whose SHA-256 is pinned (from the join token), and
/// then verifies the chain against it as usual.
#[derive(Debug)]
struct PinnedCa([u8; 32]);

impl ServerPolicy for PinnedCa {
    fn check(
        &self,
        provider: &Arc<CryptoProvider>,
        server: Presented<'_>,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = server
            .intermediates
            .iter()
            .find(|c| fingerprint(c) == self.0)
            .ok_or_else(|| {
                rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(
                    CaMismatch,
                ))))
            })?;
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        webpki.verify_server_cert(
            server.end_entity,
            &[],
            server.server_name,
            server.ocsp_response,
            server.now,
        )
    }
}

/// Client config for enrollment: trusts only the CA with SHA-256 `ca_digest`.
pub fn enroll_client_config(ca_digest: [u8; 32]) -> Result<ClientConfig, TlsError> {
    let provider = provider();
    let mut cfg = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Verifier {
            policy: PinnedCa(ca_digest),
            provider,
        }))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![ALPN_ENROLL.to_vec()];
    Ok(cfg)
}

/// Client config for the cluster protocol: trusts `ca`, presents `chain`/`key`.
/// `chain` may be empty to test the server's refusal of certificate-less clients.
pub fn cluster_client_config(
    ca: CertificateDer<'static>,
    chain: Vec<CertificateDer<'static>>,
    key: Option<PrivateKeyDer<'static>>,
) -> Result<ClientConfig, TlsError> {
    let provider = provider();
    let mut roots = RootCertStore::empty();
    roots.add(ca)?;
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots);
    let mut cfg = match key {
        Some(key) => builder.with_client_auth_cert(chain, key)?,
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![ALPN_CLUSTER.to_vec()];
    Ok(cfg)
}

/// What a probe handshake saw: the SHA-256 of every certificate the server
/// presented (the last is its CA for a d8 orchestrator).
#[derive(Debug, Clone, Default)]
pub struct ProbeSeen(Arc<std::sync::Mutex<Vec<[u8; 32]>>>);

impl ProbeSeen {
    /// Fingerprints of the presented chain, leaf first.
    pub fn chain(&self) -> Vec<[u8; 32]> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Trusts anything and records the chain presented.
#[derive(Debug)]
struct Probe(ProbeSeen);

impl ServerPolicy for Probe {
    fn check(
        &self,
        _provider: &Arc<CryptoProvider>,
        server: Presented<'_>,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mut seen = self.0.0.lock().unwrap_or_else(|p| p.into_inner());
        seen.clear();
        seen.push(fingerprint(server.end_entity));
        seen.extend(server.intermediates.iter().map(|c| fingerprint(c)));
        Ok(ServerCertVerified::assertion())
    }
}

/// A client config for `d8 doctor`'s reachability probe: it trusts nothing
/// and sends nothing secret, it only records which certificates the server
/// presented (so the doctor can compare the CA with a token) and completes the
/// handshake on the enrollment ALPN.
pub fn probe_client_config(seen: ProbeSeen) -> Result<ClientConfig, TlsError> {
    let provider = provider();
    let mut cfg = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Verifier {
            policy: Probe(seen),
            provider,
        }))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![ALPN_ENROLL.to_vec()];
    Ok(cfg)
}
