//! The exact-match result cache: answers kept in the store by a hash of
//! everything that shapes them, served again instead of calling a vendor.
//!
//! - Keys: SHA-256 of a canonical JSON text ([`canonical`]: object keys
//!   sorted explicitly, whatever the JSON library's map type) of what the
//!   caller says shapes the answer.
//! - Entries live in the store (they survive restarts) with their expiry;
//!   the index of keys, sizes and recency is in memory, rebuilt at start.
//!   Past `max_bytes`, the least recently used go first. Recency is kept in
//!   memory only (a hit costs no write), so after a restart the oldest
//!   entries go first.
//! - Single flight: while one request computes an answer, identical ones
//!   wait for it ([`Lookup::Follow`]) instead of calling a vendor too. Only
//!   successful answers are stored; a leader that fails or is dropped lets
//!   its followers try for themselves.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use crate::store::{CacheKey, CacheRecord, Op, Store};
use crate::task::{Millis, TaskOutput};

/// The key for `value` (what shapes an answer) under `scope` (which API).
pub fn key(scope: &str, value: &Value) -> CacheKey {
    let mut text = String::with_capacity(256);
    text.push_str(scope);
    text.push('\n');
    canonical(value, &mut text);
    Sha256::digest(text.as_bytes()).into()
}

/// Writes `v` as JSON with object keys sorted, no whitespace: the same text
/// for the same value, whatever order its keys arrived in.
pub fn canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                canonical(&map[k], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// Counters for `GET /api/workers/stats?include=cache`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Answers served from the cache.
    pub hits: u64,
    /// Lookups that found nothing.
    pub misses: u64,
    /// Entries now.
    pub entries: usize,
    /// Their stored size.
    pub bytes: usize,
    /// The size limit.
    pub max_bytes: usize,
    /// Entries dropped to stay under the limit.
    pub evictions: u64,
}

struct Meta {
    expires_at: Millis,
    size: usize,
    used: u64,
}

/// What a leader's followers hear: nothing yet, then the answer (or `None`:
/// try yourself).
type Flight = watch::Sender<Option<Option<TaskOutput>>>;

#[derive(Default)]
struct State {
    entries: HashMap<CacheKey, Meta>,
    /// Recency: tick → key, oldest first.
    lru: BTreeMap<u64, CacheKey>,
    tick: u64,
    bytes: usize,
    inflight: HashMap<CacheKey, Flight>,
    stats: CacheStats,
}

impl State {
    fn forget(&mut self, key: &CacheKey) {
        if let Some(m) = self.entries.remove(key) {
            self.lru.remove(&m.used);
            self.bytes -= m.size;
        }
    }

    fn touch(&mut self, key: &CacheKey) {
        self.tick += 1;
        let tick = self.tick;
        if let Some(m) = self.entries.get_mut(key) {
            self.lru.remove(&m.used);
            m.used = tick;
            self.lru.insert(tick, *key);
        }
    }
}

/// The result cache of one orchestrator.
pub struct Cache {
    store: Store,
    max_bytes: usize,
    state: Mutex<State>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("max_bytes", &self.max_bytes)
            .finish_non_exhaustive()
    }
}

/// What a lookup found.
pub enum Lookup {
    /// A stored answer.
    Hit(TaskOutput),
    /// Nothing: compute it and [`Lead::finish`] (dropping it without lets
    /// followers try for themselves).
    Lead(Lead),
    /// An identical request is computing it: wait with [`follow`].
    Follow(watch::Receiver<Option<Option<TaskOutput>>>),
}

/// The right and duty to compute an answer for a key.
pub struct Lead {
    cache: Arc<Cache>,
    key: CacheKey,
    done: bool,
}

impl Lead {
    /// Stores `output` for `ttl_ms` and hands it to the followers; returns
    /// once it is stored (so the next identical request finds it).
    pub async fn finish(mut self, now: Millis, ttl_ms: u64, output: &TaskOutput) {
        self.done = true;
        let written = self.cache.insert(self.key, now.plus(ttl_ms), output);
        let flight = self.cache.lock().inflight.remove(&self.key);
        if let Some(f) = flight {
            f.send_replace(Some(Some(output.clone())));
        }
        if let Some(w) = written {
            // A failed write shows up later as a miss; nothing to do here.
            let _ = w.wait().await;
        }
    }
}

impl Drop for Lead {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let flight = self.cache.lock().inflight.remove(&self.key);
        if let Some(f) = flight {
            f.send_replace(Some(None));
        }
    }
}

/// Waits for the leader: its answer, or `None` when it failed.
pub async fn follow(mut rx: watch::Receiver<Option<Option<TaskOutput>>>) -> Option<TaskOutput> {
    match rx.wait_for(Option::is_some).await {
        Ok(v) => v.clone().flatten(),
        // The leader vanished without a word (cannot happen: its drop speaks).
        Err(_) => None,
    }
}

impl Cache {
    /// The cache over `store`, indexing `entries` (from the store's
    /// snapshot); expired ones are dropped now.
    pub fn new(
        store: Store,
        max_bytes: usize,
        entries: Vec<(CacheKey, Millis, usize)>,
        now: Millis,
    ) -> Cache {
        let mut state = State::default();
        let mut expired = Vec::new();
        for (key, expires_at, size) in entries {
            if expires_at <= now {
                expired.push(key);
                continue;
            }
            state.tick += 1;
            state.bytes += size;
            state.lru.insert(state.tick, key);
            state.entries.insert(
                key,
                Meta {
                    expires_at,
                    size,
                    used: state.tick,
                },
            );
        }
        let cache = Cache {
            store,
            max_bytes,
            state: Mutex::new(state),
        };
        if !expired.is_empty() {
            let _ = cache.store.begin_commit(vec![Op::CacheRemove(expired)]);
        }
        cache
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Finds `key`'s answer, or makes the caller its computer (or a follower
    /// of the request computing it).
    pub fn lookup(self: &Arc<Self>, key: CacheKey, now: Millis) -> Lookup {
        let fresh = {
            let mut s = self.lock();
            match s.entries.get(&key).map(|m| m.expires_at) {
                Some(t) if t > now => true,
                Some(_) => {
                    s.forget(&key);
                    drop(s);
                    let _ = self.store.begin_commit(vec![Op::CacheRemove(vec![key])]);
                    false
                }
                None => false,
            }
        };
        if fresh {
            match self.store.cache_get(&key) {
                Ok(Some(r)) if r.expires_at > now => {
                    let mut s = self.lock();
                    s.touch(&key);
                    s.stats.hits += 1;
                    return Lookup::Hit(r.output);
                }
                // Gone from the store (a failed write) or unreadable: a miss.
                _ => self.lock().forget(&key),
            }
        }
        let mut s = self.lock();
        s.stats.misses += 1;
        if let Some(f) = s.inflight.get(&key) {
            return Lookup::Follow(f.subscribe());
        }
        s.inflight.insert(key, watch::channel(None).0);
        drop(s);
        Lookup::Lead(Lead {
            cache: self.clone(),
            key,
            done: false,
        })
    }

    fn insert(
        &self,
        key: CacheKey,
        expires_at: Millis,
        output: &TaskOutput,
    ) -> Option<crate::store::PendingCommit> {
        let record = CacheRecord {
            expires_at,
            output: output.clone(),
        };
        let bytes = crate::store::cache_bytes(&record).ok()?;
        let size = bytes.len();
        if size > self.max_bytes {
            return None;
        }
        let mut evicted = Vec::new();
        {
            let mut s = self.lock();
            s.forget(&key);
            while s.bytes + size > self.max_bytes {
                let Some((_, oldest)) = s.lru.pop_first() else {
                    break;
                };
                if let Some(m) = s.entries.remove(&oldest) {
                    s.bytes -= m.size;
                }
                s.stats.evictions += 1;
                evicted.push(oldest);
            }
            s.tick += 1;
            let tick = s.tick;
            s.bytes += size;
            s.lru.insert(tick, key);
            s.entries.insert(
                key,
                Meta {
                    expires_at,
                    size,
                    used: tick,
                },
            );
        }
        let mut ops = Vec::with_capacity(2);
        if !evicted.is_empty() {
            ops.push(Op::CacheRemove(evicted));
        }
        ops.push(Op::CachePut(key, bytes));
        self.store.begin_commit(ops).ok()
    }

    /// Drops every entry; how many there were.
    pub async fn clear(&self) -> Result<usize, crate::store::StoreError> {
        let n = {
            let mut s = self.lock();
            let n = s.entries.len();
            s.entries.clear();
            s.lru.clear();
            s.bytes = 0;
            n
        };
        self.store.commit(vec![Op::CacheClear]).await?;
        Ok(n)
    }

    /// Counters and sizes now.
    pub fn stats(&self) -> CacheStats {
        let s = self.lock();
        CacheStats {
            entries: s.entries.len(),
            bytes: s.bytes,
            max_bytes: self.max_bytes,
            ..s.stats
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::store::MemBackend;

    #[test]
    fn keys_ignore_key_order_and_see_every_value() {
        let a = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "seed": 1});
        let b: Value = serde_json::from_str(
            r#"{"seed":1,"messages":[{"content":"hi","role":"user"}],"model":"m"}"#,
        )
        .expect("json");
        assert_eq!(key("chat", &a), key("chat", &b));
        assert_ne!(key("chat", &a), key("embeddings", &a));
        let mut c = a.clone();
        c["seed"] = json!(2);
        assert_ne!(key("chat", &a), key("chat", &c));
        let mut s = String::new();
        canonical(&b, &mut s);
        assert_eq!(
            s,
            r#"{"messages":[{"content":"hi","role":"user"}],"model":"m","seed":1}"#
        );
    }

    fn cache(max_bytes: usize) -> Arc<Cache> {
        let (store, _) = Store::open(Arc::new(MemBackend::default())).expect("store");
        Arc::new(Cache::new(store, max_bytes, Vec::new(), Millis(0)))
    }

    fn answer(text: &str) -> TaskOutput {
        TaskOutput::text(text, "echo", "echo")
    }

    fn lead(c: &Arc<Cache>, key: CacheKey, now: Millis) -> Lead {
        match c.lookup(key, now) {
            Lookup::Lead(l) => l,
            _ => panic!("expected a miss"),
        }
    }

    #[tokio::test]
    async fn hits_expire_and_the_least_recently_used_go_first() {
        let c = cache(1_000_000);
        lead(&c, [1; 32], Millis(0))
            .finish(Millis(0), 1_000, &answer("one"))
            .await;
        // The write is queued; give the writer a moment.
        c.store.flush().await.expect("flush");
        match c.lookup([1; 32], Millis(500)) {
            Lookup::Hit(out) => assert_eq!(out.content, "one"),
            _ => panic!("expected a hit"),
        }
        // Past its TTL it is a miss, and gone.
        drop(lead(&c, [1; 32], Millis(1_000)));
        assert_eq!(c.stats().entries, 0);
        let s = c.stats();
        assert_eq!((s.hits, s.misses), (1, 2));

        // Room for two entries of this size.
        let size = crate::store::cache_bytes(&CacheRecord {
            expires_at: Millis(0),
            output: answer("x"),
        })
        .expect("bytes")
        .len();
        let c = cache(size * 2 + size / 2);
        for k in 1..=2u8 {
            lead(&c, [k; 32], Millis(0))
                .finish(Millis(0), 60_000, &answer("x"))
                .await;
        }
        c.store.flush().await.expect("flush");
        // Using 1 makes 2 the least recent: a third entry evicts 2.
        assert!(matches!(c.lookup([1; 32], Millis(1)), Lookup::Hit(_)));
        lead(&c, [3; 32], Millis(2))
            .finish(Millis(2), 60_000, &answer("x"))
            .await;
        c.store.flush().await.expect("flush");
        assert!(matches!(c.lookup([1; 32], Millis(3)), Lookup::Hit(_)));
        assert!(matches!(c.lookup([3; 32], Millis(3)), Lookup::Hit(_)));
        assert!(matches!(c.lookup([2; 32], Millis(3)), Lookup::Lead(_)));
        assert_eq!(c.stats().evictions, 1);
        assert_eq!(c.clear().await.expect("clear"), 2);
        assert_eq!(c.stats().bytes, 0);
    }

    #[tokio::test]
    async fn identical_misses_wait_for_the_first() {
        let c = cache(1_000_000);
        let first = lead(&c, [7; 32], Millis(0));
        let Lookup::Follow(rx) = c.lookup([7; 32], Millis(0)) else {
            panic!("expected to follow");
        };
        let waiter = tokio::spawn(follow(rx));
        first.finish(Millis(0), 60_000, &answer("shared")).await;
        let out = waiter.await.expect("joined").expect("the leader's answer");
        assert_eq!(out.content, "shared");
        // A leader that fails releases its followers empty-handed.
        let failing = lead(&c, [8; 32], Millis(0));
        let Lookup::Follow(rx) = c.lookup([8; 32], Millis(0)) else {
            panic!("expected to follow");
        };
        drop(failing);
        assert!(follow(rx).await.is_none());
        // And the next request leads again.
        assert!(matches!(c.lookup([8; 32], Millis(0)), Lookup::Lead(_)));
    }
}
