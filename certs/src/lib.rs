//! Cluster identity for d8.
//!
//! Who owns what:
//! - [`ClusterCa`]: the orchestrator's certificate authority. It issues the
//!   orchestrator's own server certificate and signs workers' CSRs.
//! - [`JoinToken`]: `D8-1-<sha256 of CA cert>-<secret>`; pins the CA for a new
//!   worker and carries the enrollment secret. Only [`secret_hash`]es are stored.
//! - [`WorkerKey`]: a worker's key pair and CSR.
//! - [`tls`]: TLS 1.3-only rustls configurations for the three handshakes
//!   (enrollment client pinned to a CA digest, cluster client, orchestrator server).
//!
//! Certificates are valid from 1975 to 4096 on purpose: a Raspberry Pi has no
//! real-time clock and may boot with a wildly wrong date, and d8 revokes by
//! fingerprint rather than by expiry, so validity windows would only add a
//! failure mode.

pub mod tls;
mod token;

pub use token::{JoinToken, TokenError, secret_hash};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use rustls_pki_types::{
    CertificateDer, CertificateSigningRequestDer, PrivateKeyDer, PrivatePkcs8KeyDer,
};
use sha2::{Digest, Sha256};

/// The DNS name in the orchestrator certificate. Workers always connect with
/// this name, so the address found by discovery never has to be in the cert.
pub const ORCHESTRATOR_NAME: &str = "d8-orchestrator";

/// Suffix of the DNS name in worker certificates: `<worker-id>.d8-worker`.
pub const WORKER_NAME_SUFFIX: &str = "d8-worker";

/// Errors from certificate generation, parsing and signing.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// rcgen could not build, parse or sign a certificate or CSR.
    #[error("certificate error: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// A PEM or DER blob could not be parsed.
    #[error("malformed {what}")]
    Malformed {
        /// What was being parsed.
        what: &'static str,
    },
    /// The requested worker id is not a valid DNS label.
    #[error("invalid worker id {0:?}: use 1-63 characters from a-z, 0-9 and '-'")]
    InvalidWorkerId(String),
}

/// SHA-256 of a DER certificate: the CA digest in tokens and the fingerprint
/// used to map a client certificate to a worker and to revoke it.
pub fn fingerprint(der: &[u8]) -> [u8; 32] {
    Sha256::digest(der).into()
}

/// True when `id` can name a worker: a DNS label of lowercase letters, digits and
/// '-', not starting or ending with '-'.
pub fn is_valid_worker_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 63
        && !id.starts_with('-')
        && !id.ends_with('-')
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Turns a hostname into a usable worker id (lowercase, invalid characters become
/// '-', truncated); falls back to `worker` when nothing usable is left.
pub fn sanitize_worker_id(raw: &str) -> String {
    let mut out: String = raw
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(48)
        .collect();
    while out.starts_with('-') {
        out.remove(0);
    }
    while out.ends_with('-') {
        out.pop();
    }
    if out.is_empty() {
        "worker".to_owned()
    } else {
        out
    }
}

/// A certificate and its private key, as stored on disk (PEM).
#[derive(Clone)]
pub struct CertifiedKeyPem {
    /// Certificate, PEM.
    pub cert_pem: String,
    /// PKCS#8 private key, PEM. Secret: write with mode 0600.
    pub key_pem: String,
}

impl std::fmt::Debug for CertifiedKeyPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertifiedKeyPem")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// The cluster certificate authority held by the orchestrator.
pub struct ClusterCa {
    issuer: Issuer<'static, KeyPair>,
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    key_pem: String,
}

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCa")
            .field("digest", &hex::encode(self.digest()))
            .finish_non_exhaustive()
    }
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "d8 cluster CA");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

impl ClusterCa {
    /// Creates a fresh CA with a new ECDSA P-256 key.
    pub fn generate() -> Result<Self, CertError> {
        let key = KeyPair::generate()?;
        let params = ca_params();
        let cert = params.self_signed(&key)?;
        let cert_pem = cert.pem();
        let key_pem = key.serialize_pem();
        Ok(Self {
            cert_der: cert.der().clone(),
            cert_pem,
            key_pem,
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads a CA previously saved with [`ClusterCa::to_pem`].
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, CertError> {
        let key = KeyPair::from_pem(key_pem)?;
        let cert_der = pem_to_der(cert_pem, "CA certificate")?;
        let issuer = Issuer::from_ca_cert_der(&cert_der, key)?;
        Ok(Self {
            issuer,
            cert_der,
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
        })
    }

    /// The CA certificate and key as PEM, for saving.
    pub fn to_pem(&self) -> CertifiedKeyPem {
        CertifiedKeyPem {
            cert_pem: self.cert_pem.clone(),
            key_pem: self.key_pem.clone(),
        }
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// SHA-256 of the CA certificate: what join tokens pin.
    pub fn digest(&self) -> [u8; 32] {
        fingerprint(&self.cert_der)
    }

    /// Issues the orchestrator's server certificate (new key, DNS name
    /// [`ORCHESTRATOR_NAME`]).
    pub fn issue_orchestrator(&self) -> Result<CertifiedKeyPem, CertError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec![ORCHESTRATOR_NAME.to_owned()])?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, ORCHESTRATOR_NAME);
        params.distinguished_name = dn;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(CertifiedKeyPem {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Signs a worker's CSR. Only the CSR's public key is used: the subject,
    /// names and usages are set here, so a worker cannot ask for more than a
    /// client certificate for `worker_id`. Returns the certificate, DER.
    pub fn sign_worker_csr(
        &self,
        csr_der: &[u8],
        worker_id: &str,
    ) -> Result<CertificateDer<'static>, CertError> {
        if !is_valid_worker_id(worker_id) {
            return Err(CertError::InvalidWorkerId(worker_id.to_owned()));
        }
        let csr = CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(
            csr_der,
        ))?;
        let mut params = CertificateParams::new(vec![format!("{worker_id}.{WORKER_NAME_SUFFIX}")])?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, worker_id);
        params.distinguished_name = dn;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&csr.public_key, &self.issuer)?;
        Ok(cert.der().clone())
    }
}

/// A worker's private key and the CSR it sends at enrollment.
pub struct WorkerKey {
    key: KeyPair,
}

impl std::fmt::Debug for WorkerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WorkerKey(<redacted>)")
    }
}

impl WorkerKey {
    /// A new ECDSA P-256 key.
    pub fn generate() -> Result<Self, CertError> {
        Ok(Self {
            key: KeyPair::generate()?,
        })
    }

    /// Loads a key saved with [`WorkerKey::to_pem`].
    pub fn from_pem(pem: &str) -> Result<Self, CertError> {
        Ok(Self {
            key: KeyPair::from_pem(pem)?,
        })
    }

    /// The private key, PKCS#8 PEM. Secret: write with mode 0600.
    pub fn to_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// A CSR for this key, DER. The subject is informational; the CA decides the name.
    pub fn csr_der(&self, worker_id: &str) -> Result<Vec<u8>, CertError> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, sanitize_worker_id(worker_id));
        params.distinguished_name = dn;
        let csr = params.serialize_request(&self.key)?;
        Ok(csr.der().to_vec())
    }

    /// The private key in the form rustls wants.
    pub fn private_key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.serialize_der()))
    }
}

/// Parses the first `CERTIFICATE` block of a PEM string.
pub fn pem_to_der(pem: &str, what: &'static str) -> Result<CertificateDer<'static>, CertError> {
    use rustls_pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|_| CertError::Malformed { what })
}

/// Encodes a DER certificate as PEM.
pub fn der_to_pem(der: &[u8]) -> String {
    use base64_lite::encode;
    let b64 = encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// Parses a PKCS#8 private key PEM.
pub fn pem_to_key(pem: &str, what: &'static str) -> Result<PrivateKeyDer<'static>, CertError> {
    use rustls_pki_types::pem::PemObject;
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|_| CertError::Malformed { what })
}

mod base64_lite {
    //! Standard base64 for PEM output; tiny enough not to warrant a dependency.
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    pub fn encode(input: &[u8]) -> String {
        let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
        for chunk in input.chunks(3) {
            let b = [
                chunk[0],
                chunk.get(1).copied().unwrap_or(0),
                chunk.get(2).copied().unwrap_or(0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for (i, shift) in [18u32, 12, 6, 0].iter().enumerate() {
                if i <= chunk.len() {
                    out.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
                } else {
                    out.push('=');
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_round_trips_through_pem_and_keeps_its_digest() {
        let ca = ClusterCa::generate().expect("generate");
        let pem = ca.to_pem();
        let again = ClusterCa::from_pem(&pem.cert_pem, &pem.key_pem).expect("load");
        assert_eq!(ca.digest(), again.digest());
        assert!(format!("{ca:?}").contains(&hex::encode(ca.digest())));
        assert!(!format!("{pem:?}").contains("PRIVATE KEY"));
    }

    #[test]
    fn signs_worker_csr_and_ignores_requested_subject() {
        let ca = ClusterCa::generate().expect("generate");
        let wk = WorkerKey::generate().expect("key");
        let csr = wk.csr_der("Evil Name!").expect("csr");
        let cert = ca.sign_worker_csr(&csr, "pc-1").expect("sign");
        // Issued by a reloaded CA too (the orchestrator restarts).
        let pem = ca.to_pem();
        let again = ClusterCa::from_pem(&pem.cert_pem, &pem.key_pem).expect("load");
        let cert2 = again.sign_worker_csr(&csr, "pc-1").expect("sign again");
        assert_ne!(fingerprint(&cert), fingerprint(&cert2));
        let text = String::from_utf8_lossy(&cert);
        assert!(text.contains("pc-1"));
        assert!(!text.contains("Evil"));
    }

    #[test]
    fn refuses_garbage_csr_and_bad_ids() {
        let ca = ClusterCa::generate().expect("generate");
        assert!(ca.sign_worker_csr(b"not a csr", "pc-1").is_err());
        let wk = WorkerKey::generate().expect("key");
        let csr = wk.csr_der("x").expect("csr");
        for bad in ["", "UPPER", "-lead", "trail-", "a b", &"x".repeat(64)] {
            assert!(
                matches!(
                    ca.sign_worker_csr(&csr, bad),
                    Err(CertError::InvalidWorkerId(_))
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn sanitizes_hostnames() {
        assert_eq!(sanitize_worker_id("My-PC.local"), "my-pc-local");
        assert_eq!(sanitize_worker_id("--"), "worker");
        assert!(is_valid_worker_id(&sanitize_worker_id(&"Ä".repeat(100))));
    }

    #[test]
    fn pem_round_trip() {
        let ca = ClusterCa::generate().expect("generate");
        let pem = der_to_pem(ca.cert_der());
        assert_eq!(
            pem_to_der(&pem, "x").expect("parse").as_ref(),
            ca.cert_der().as_ref()
        );
        assert!(pem_to_der("garbage", "x").is_err());
    }
}
