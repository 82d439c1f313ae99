//! Join tokens, enrolled workers and revocations: who may join and who has.
//! Pure bookkeeping; the orchestrator persists the records it returns.

use std::collections::{BTreeMap, HashMap};

use d8_certs::tls::Revocations;
use d8_certs::{JoinToken, is_valid_worker_id, sanitize_worker_id, secret_hash};

use crate::store::{TokenKind, TokenRecord, WorkerRecord};
use crate::task::Millis;

/// Why an enrollment was refused. The text goes back to the worker.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No token with this secret.
    #[error("unknown join token (wrong secret, or the token was rotated)")]
    UnknownToken,
    /// Revoked.
    #[error("join token {0} was revoked")]
    Revoked(String),
    /// Past its TTL.
    #[error("join token {0} has expired")]
    Expired(String),
    /// Use count reached.
    #[error("join token {0} has been used its maximum number of times")]
    UsedUp(String),
}

/// A token as the API lists it (no hash, no secret).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TokenInfo {
    /// Id.
    pub id: String,
    /// `default` or `extra`.
    pub kind: &'static str,
    /// Creation time, ms since epoch.
    pub created_at: u64,
    /// Expiry, ms since epoch.
    pub expires_at: Option<u64>,
    /// Use limit.
    pub max_uses: Option<u32>,
    /// Uses so far.
    pub uses: u32,
    /// Revoked.
    pub revoked: bool,
}

/// Tokens, workers and the live revocation set.
#[derive(Debug, Default)]
pub struct Registry {
    tokens: BTreeMap<String, TokenRecord>,
    by_hash: HashMap<String, String>,
    workers: BTreeMap<String, WorkerRecord>,
    by_fingerprint: HashMap<String, String>,
    revocations: Revocations,
}

fn token_id(hash: &str) -> String {
    hash[..12].to_owned()
}

impl Registry {
    /// Builds the registry from stored records; fills `revocations`.
    pub fn new(
        tokens: BTreeMap<String, TokenRecord>,
        workers: BTreeMap<String, WorkerRecord>,
        revocations: Revocations,
    ) -> Self {
        let by_hash = tokens
            .values()
            .map(|t| (t.hash.clone(), t.id.clone()))
            .collect();
        let mut by_fingerprint = HashMap::new();
        for w in workers.values() {
            by_fingerprint.insert(w.fingerprint.clone(), w.id.clone());
            if w.revoked
                && let Ok(fp) = hex_fp(&w.fingerprint)
            {
                revocations.insert(fp);
            }
        }
        Registry {
            tokens,
            by_hash,
            workers,
            by_fingerprint,
            revocations,
        }
    }

    /// The live revocation set (shared with the TLS verifier).
    pub fn revocations(&self) -> &Revocations {
        &self.revocations
    }

    /// Creates a token. `ttl_ms`/`max_uses` limit extra tokens; the default
    /// token has neither. Returns the full token (shown once) and its record.
    pub fn create_token(
        &mut self,
        now: Millis,
        ca_digest: [u8; 32],
        kind: TokenKind,
        ttl_ms: Option<u64>,
        max_uses: Option<u32>,
    ) -> (JoinToken, TokenRecord) {
        let token = JoinToken::generate(ca_digest);
        let hash = secret_hash(token.secret());
        let rec = TokenRecord {
            id: token_id(&hash),
            hash: hash.clone(),
            kind,
            created_at: now,
            expires_at: ttl_ms.map(|t| now.plus(t)),
            max_uses,
            uses: 0,
            revoked: false,
        };
        self.by_hash.insert(hash, rec.id.clone());
        self.tokens.insert(rec.id.clone(), rec.clone());
        (token, rec)
    }

    /// The record of a token secret, if it is known and not revoked.
    pub fn default_token_valid(&self, secret: &str) -> bool {
        self.by_hash
            .get(&secret_hash(secret))
            .and_then(|id| self.tokens.get(id))
            .is_some_and(|t| t.kind == TokenKind::Default && !t.revoked)
    }

    /// Revokes every default token (before issuing a new one) and returns the changed records.
    pub fn revoke_default_tokens(&mut self) -> Vec<TokenRecord> {
        let mut changed = Vec::new();
        for t in self.tokens.values_mut() {
            if t.kind == TokenKind::Default && !t.revoked {
                t.revoked = true;
                changed.push(t.clone());
            }
        }
        changed
    }

    /// Revokes a token by id (or unique id prefix).
    pub fn revoke_token(&mut self, id: &str) -> Option<TokenRecord> {
        let key = self.resolve(self.tokens.keys(), id)?;
        let t = self.tokens.get_mut(&key)?;
        t.revoked = true;
        Some(t.clone())
    }

    fn resolve<'a>(&self, keys: impl Iterator<Item = &'a String>, id: &str) -> Option<String> {
        let matches: Vec<&String> = keys.filter(|k| k.starts_with(id)).collect();
        match matches.as_slice() {
            [one] if !id.is_empty() => Some((*one).clone()),
            _ => None,
        }
    }

    /// All tokens, for listing.
    pub fn tokens(&self, now: Millis) -> Vec<TokenInfo> {
        let _ = now;
        self.tokens
            .values()
            .map(|t| TokenInfo {
                id: t.id.clone(),
                kind: match t.kind {
                    TokenKind::Default => "default",
                    TokenKind::Extra => "extra",
                },
                created_at: t.created_at.0,
                expires_at: t.expires_at.map(|m| m.0),
                max_uses: t.max_uses,
                uses: t.uses,
                revoked: t.revoked,
            })
            .collect()
    }

    /// Checks a secret and, when valid, counts one use and picks a free worker
    /// id close to `wanted`. The caller signs the CSR and then calls
    /// [`Registry::record_worker`].
    pub fn admit(
        &mut self,
        now: Millis,
        secret: &str,
        wanted: &str,
    ) -> Result<(String, TokenRecord), Refusal> {
        let id = self
            .by_hash
            .get(&secret_hash(secret))
            .cloned()
            .ok_or(Refusal::UnknownToken)?;
        let t = self.tokens.get_mut(&id).ok_or(Refusal::UnknownToken)?;
        if t.revoked {
            return Err(Refusal::Revoked(t.id.clone()));
        }
        if t.expires_at.is_some_and(|e| e <= now) {
            return Err(Refusal::Expired(t.id.clone()));
        }
        if t.max_uses.is_some_and(|m| t.uses >= m) {
            return Err(Refusal::UsedUp(t.id.clone()));
        }
        t.uses += 1;
        let token = t.clone();
        let base = if is_valid_worker_id(wanted) {
            wanted.to_owned()
        } else {
            sanitize_worker_id(wanted)
        };
        let mut worker_id = base.clone();
        let mut n = 2u32;
        while self.workers.contains_key(&worker_id) {
            let suffix = format!("-{n}");
            let keep = base.len().min(63 - suffix.len());
            worker_id = format!("{}{suffix}", base[..keep].trim_end_matches('-'));
            n += 1;
        }
        Ok((worker_id, token))
    }

    /// Takes back an [`Registry::admit`] and [`Registry::record_worker`]
    /// whose record could not be stored: the token use and the worker.
    pub fn undo_enrollment(&mut self, worker_id: &str, token_id: &str) {
        if let Some(w) = self.workers.remove(worker_id) {
            self.by_fingerprint.remove(&w.fingerprint);
        }
        if let Some(t) = self.tokens.get_mut(token_id) {
            t.uses = t.uses.saturating_sub(1);
        }
    }

    /// Records an enrolled worker and its certificate fingerprint.
    pub fn record_worker(&mut self, rec: WorkerRecord) {
        self.by_fingerprint
            .insert(rec.fingerprint.clone(), rec.id.clone());
        self.workers.insert(rec.id.clone(), rec);
    }

    /// The worker a certificate belongs to, and whether it is revoked.
    pub fn worker_for(&self, fingerprint: &[u8; 32]) -> Option<&WorkerRecord> {
        self.by_fingerprint
            .get(&hex::encode(fingerprint))
            .and_then(|id| self.workers.get(id))
    }

    /// Revokes a worker: its certificate fails every later handshake.
    pub fn revoke_worker(&mut self, id: &str) -> Option<WorkerRecord> {
        let w = self.workers.get_mut(id)?;
        w.revoked = true;
        if let Ok(fp) = hex_fp(&w.fingerprint) {
            self.revocations.insert(fp);
        }
        Some(w.clone())
    }

    /// Enrolled workers.
    pub fn workers(&self) -> impl Iterator<Item = &WorkerRecord> {
        self.workers.values()
    }
}

fn hex_fp(s: &str) -> Result<[u8; 32], hex::FromHexError> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg() -> Registry {
        Registry::new(BTreeMap::new(), BTreeMap::new(), Revocations::default())
    }

    #[test]
    fn admits_valid_tokens_and_refuses_the_rest() {
        let mut r = reg();
        let now = Millis(1_000);
        let (def, _) = r.create_token(now, [1; 32], TokenKind::Default, None, None);
        let (ttl, _) = r.create_token(now, [1; 32], TokenKind::Extra, Some(100), None);
        let (once, _) = r.create_token(now, [1; 32], TokenKind::Extra, None, Some(1));
        assert!(r.admit(now, def.secret(), "pc").is_ok());
        assert_eq!(
            r.admit(now, "nope", "pc").unwrap_err(),
            Refusal::UnknownToken
        );
        assert!(r.admit(now.plus(99), ttl.secret(), "pc").is_ok());
        assert!(matches!(
            r.admit(now.plus(100), ttl.secret(), "pc"),
            Err(Refusal::Expired(_))
        ));
        assert!(r.admit(now, once.secret(), "pc").is_ok());
        assert!(matches!(
            r.admit(now, once.secret(), "pc"),
            Err(Refusal::UsedUp(_))
        ));
        let revoked = r.revoke_default_tokens();
        assert_eq!(revoked.len(), 1);
        assert!(matches!(
            r.admit(now, def.secret(), "pc"),
            Err(Refusal::Revoked(_))
        ));
        assert!(!r.default_token_valid(def.secret()));
    }

    #[test]
    fn worker_ids_are_unique_and_valid() {
        let mut r = reg();
        let (t, _) = r.create_token(Millis(0), [1; 32], TokenKind::Default, None, None);
        let mut ids = Vec::new();
        for i in 0..3u8 {
            let (id, tok) = r.admit(Millis(0), t.secret(), "My PC").expect("admit");
            r.record_worker(WorkerRecord {
                id: id.clone(),
                fingerprint: hex::encode([i; 32]),
                enrolled_at: Millis(0),
                token_id: tok.id,
                revoked: false,
            });
            ids.push(id);
        }
        assert_eq!(ids, ["my-pc", "my-pc-2", "my-pc-3"]);
        let long = "x".repeat(63);
        r.record_worker(WorkerRecord {
            id: long.clone(),
            fingerprint: hex::encode([9; 32]),
            enrolled_at: Millis(0),
            token_id: String::new(),
            revoked: false,
        });
        let (id, _) = r.admit(Millis(0), t.secret(), &long).expect("admit");
        assert!(is_valid_worker_id(&id), "{id}");
        assert_ne!(id, long);
    }

    #[test]
    fn revoking_a_worker_feeds_the_tls_revocation_set() {
        let mut r = reg();
        r.record_worker(WorkerRecord {
            id: "pc".into(),
            fingerprint: hex::encode([3; 32]),
            enrolled_at: Millis(0),
            token_id: String::new(),
            revoked: false,
        });
        assert_eq!(r.worker_for(&[3; 32]).map(|w| w.id.as_str()), Some("pc"));
        assert!(!r.revocations().contains(&[3; 32]));
        r.revoke_worker("pc").expect("known");
        assert!(r.revocations().contains(&[3; 32]));
        assert!(r.revoke_worker("unknown").is_none());
        // Reloading from records keeps the revocation.
        let again = Registry::new(
            BTreeMap::new(),
            r.workers().map(|w| (w.id.clone(), w.clone())).collect(),
            Revocations::default(),
        );
        assert!(again.revocations().contains(&[3; 32]));
    }
}
