//! Join tokens: `D8-1-<64 hex: sha256 of the CA certificate>-<secret>`.

use sha2::{Digest, Sha256};

const PREFIX: &str = "D8-1-";
/// Secret length in characters (base32: 5 bits each → 160 bits).
const SECRET_LEN: usize = 32;
const SECRET_ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// Why a token string was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not of the form `D8-1-<ca digest>-<secret>`.
    #[error(
        "malformed join token: expected D8-1-<64 hex digits>-<secret> (copy it from `d8 serve` output or <data-dir>/join-token)"
    )]
    Malformed,
    /// A token of another format version.
    #[error("join token has unsupported version {0:?} (this d8 understands D8-1 tokens)")]
    UnsupportedVersion(String),
}

/// A parsed join token. `Debug` never prints the secret; `Display` prints the
/// whole token (only ever shown to the operator who asked for it).
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    ca_digest: [u8; 32],
    secret: String,
}

impl std::fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "JoinToken(ca={}, secret=<redacted>)",
            &hex::encode(self.ca_digest)[..12]
        )
    }
}

impl std::fmt::Display for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{PREFIX}{}-{}", hex::encode(self.ca_digest), self.secret)
    }
}

impl JoinToken {
    /// A new token for the CA with digest `ca_digest`, with a fresh random secret.
    pub fn generate(ca_digest: [u8; 32]) -> Self {
        let mut bytes = [0u8; SECRET_LEN];
        rand::fill(&mut bytes);
        let secret = bytes
            .iter()
            .map(|b| char::from(SECRET_ALPHABET[usize::from(b & 31)]))
            .collect();
        Self { ca_digest, secret }
    }

    /// Parses a token; surrounding whitespace is ignored (tokens get pasted).
    pub fn parse(s: &str) -> Result<Self, TokenError> {
        let s = s.trim();
        let Some(rest) = s.strip_prefix(PREFIX) else {
            if let Some(v) = s.strip_prefix("D8-").and_then(|r| r.split('-').next())
                && !v.is_empty()
                && v.bytes().all(|b| b.is_ascii_digit())
            {
                return Err(TokenError::UnsupportedVersion(format!("D8-{v}")));
            }
            return Err(TokenError::Malformed);
        };
        let (digest_hex, secret) = rest.split_once('-').ok_or(TokenError::Malformed)?;
        let mut ca_digest = [0u8; 32];
        hex::decode_to_slice(digest_hex, &mut ca_digest).map_err(|_| TokenError::Malformed)?;
        if secret.len() < 16
            || secret.len() > 128
            || !secret.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            return Err(TokenError::Malformed);
        }
        Ok(Self {
            ca_digest,
            secret: secret.to_owned(),
        })
    }

    /// The pinned CA digest.
    pub fn ca_digest(&self) -> [u8; 32] {
        self.ca_digest
    }

    /// The enrollment secret (sent to the orchestrator over the pinned TLS session).
    pub fn secret(&self) -> &str {
        &self.secret
    }
}

/// What the orchestrator stores instead of a secret: hex SHA-256. Secrets are
/// 160-bit random, so a plain hash is enough (no password stretching needed).
pub fn secret_hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_redaction() {
        let t = JoinToken::generate([7; 32]);
        let s = t.to_string();
        assert!(s.starts_with("D8-1-0707"));
        let p = JoinToken::parse(&format!("  {s}\n")).expect("parse");
        assert_eq!(p, t);
        assert!(!format!("{t:?}").contains(t.secret()));
        assert_eq!(t.secret().len(), SECRET_LEN);
        assert_ne!(JoinToken::generate([7; 32]).secret(), t.secret());
    }

    #[test]
    fn rejects_malformed() {
        let good_digest = "ab".repeat(32);
        for bad in [
            "",
            "D8-1-",
            "hello",
            &format!("D8-1-{good_digest}"),
            &format!("D8-1-{}-abcdefghabcdefgh", "zz".repeat(32)),
            &format!("D8-1-{}-abcdefghabcdefgh", "ab".repeat(31)),
            &format!("D8-1-{good_digest}-short"),
            &format!("D8-1-{good_digest}-has space inside!!"),
        ] {
            assert_eq!(JoinToken::parse(bad), Err(TokenError::Malformed), "{bad:?}");
        }
        assert_eq!(
            JoinToken::parse(&format!("D8-2-{good_digest}-abcdefghabcdefgh")),
            Err(TokenError::UnsupportedVersion("D8-2".into()))
        );
    }

    #[test]
    fn hash_is_stable_and_hides_secret() {
        assert_eq!(secret_hash("abc"), secret_hash("abc"));
        assert_ne!(secret_hash("abc"), secret_hash("abd"));
        assert!(!secret_hash("abc").contains("abc"));
    }
}
