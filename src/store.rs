//! Durable state: pending tasks, results, tokens, enrolled workers, agents.
//!
//! Who owns what:
//! - [`Backend`]: a synchronous store; [`RedbBackend`] on disk and
//!   [`MemBackend`], its in-memory twin for tests.
//! - [`Store`]: the async handle the orchestrator uses. Writes go to one
//!   writer thread that batches every request waiting in its queue into a
//!   single transaction (group commit), so many concurrent submits share one
//!   fsync and durability does not cap throughput. Reads go straight to the
//!   backend (redb reads run concurrently with the writer).

mod mem;
mod redb_backend;

pub use mem::MemBackend;
pub use redb_backend::RedbBackend;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::task::{FinishedTask, Millis, TaskId, TaskSpec, TaskStatus};

/// Store failures. The message is safe to show (no secrets are stored in clear).
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// Another process holds the database.
    #[error("the data directory is in use by another d8 process ({0})")]
    Locked(String),
    /// The database failed.
    #[error("store error: {0}")]
    Backend(String),
    /// A record could not be decoded (corruption or a newer format).
    #[error("corrupt record in table {table}: {detail}")]
    Corrupt {
        /// Table name.
        table: &'static str,
        /// Decoder message.
        detail: String,
    },
    /// The writer thread has stopped.
    #[error("store is shut down")]
    Closed,
    /// The database file is damaged (altered outside d8, a bad copy, a
    /// failing disk).
    #[error(
        "{path} cannot be read as a d8 store ({detail}); restore it from a backup (`d8 backup`), or move the data directory away to start a new cluster"
    )]
    Unreadable {
        /// The database file.
        path: String,
        /// What the storage library said.
        detail: String,
    },
    /// The database was written by a d8 with another record layout.
    #[error(
        "{path} holds data in format {found}, this d8 understands format {supported}: use the matching d8 version or start with a new --data-dir"
    )]
    Incompatible {
        /// The database file.
        path: String,
        /// Format found (0 = unmarked, from a pre-release build).
        found: u64,
        /// Format this build reads.
        supported: u64,
    },
}

/// A task accepted but not finished.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingTask {
    /// Id.
    pub id: TaskId,
    /// What to run.
    pub spec: TaskSpec,
    /// Submission time (kept across restarts so queue order is kept).
    pub created_at: Millis,
}

/// Kind of join token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TokenKind {
    /// The cluster's standing token printed by `d8 serve`; replaced by rotate.
    Default,
    /// Created by `d8 token create`, optionally with a TTL and a use limit.
    Extra,
}

/// A join token as stored: the secret only as its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Short public id (prefix of the hash), for list and revoke.
    pub id: String,
    /// SHA-256 of the secret, hex.
    pub hash: String,
    /// Default or extra.
    pub kind: TokenKind,
    /// Creation time.
    pub created_at: Millis,
    /// Expiry, if any.
    pub expires_at: Option<Millis>,
    /// Enrollments allowed, if limited.
    pub max_uses: Option<u32>,
    /// Enrollments so far.
    pub uses: u32,
    /// Revoked tokens enroll nobody.
    pub revoked: bool,
}

/// An enrolled worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerRecord {
    /// Worker id (in its certificate).
    pub id: String,
    /// SHA-256 of its current certificate, hex.
    pub fingerprint: String,
    /// Enrollment time.
    pub enrolled_at: Millis,
    /// Token id it enrolled with.
    pub token_id: String,
    /// Revoked workers cannot connect.
    pub revoked: bool,
}

/// An agent's definition (`PUT /api/agents/{id}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentDef {
    /// System prompt for its actions.
    pub system_prompt: String,
    /// Model to ask for.
    pub model: Option<String>,
    /// Temperature.
    pub temperature: Option<f32>,
    /// Task type of its actions (default `agent_action`).
    pub task_type: Option<String>,
    /// Serve identical actions from the result cache for this many seconds.
    pub cache_ttl_secs: Option<u64>,
}

/// Totals kept across restarts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    /// Completed tasks.
    pub completed: u64,
    /// Failed tasks.
    pub failed: u64,
    /// Cancelled tasks.
    pub cancelled: u64,
}

impl Totals {
    fn count(&mut self, status: TaskStatus) {
        match status {
            TaskStatus::Completed => self.completed += 1,
            TaskStatus::Failed => self.failed += 1,
            TaskStatus::Cancelled => self.cancelled += 1,
            TaskStatus::Pending | TaskStatus::Assigned => {}
        }
    }
}

/// Everything loaded at start.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Tasks to re-queue, in id order.
    pub pending: Vec<PendingTask>,
    /// Join tokens by id.
    pub tokens: BTreeMap<String, TokenRecord>,
    /// Enrolled workers by id.
    pub workers: BTreeMap<String, WorkerRecord>,
    /// Agents by id.
    pub agents: BTreeMap<String, AgentDef>,
    /// Totals.
    pub totals: Totals,
    /// First id not yet used.
    pub next_task_id: u64,
    /// The result cache's entries: key, expiry, stored size in bytes.
    pub cache: Vec<(CacheKey, Millis, usize)>,
}

/// A result cache key: SHA-256 of what shapes the answer.
pub type CacheKey = [u8; 32];

/// One row of usage accounting: a UTC day and who used what.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UsageKey {
    /// Days since the Unix epoch (UTC).
    pub day: u32,
    /// Provider kind.
    pub provider: String,
    /// Model.
    pub model: String,
    /// Worker id.
    pub worker: String,
    /// Agent id (empty when the task had none).
    pub agent: String,
}

/// Separates a [`UsageKey`]'s names in the store (no name contains it:
/// names are bounded printable text).
const UNIT_SEP: char = '\u{1f}';

impl UsageKey {
    /// The names, joined for the store's key.
    pub fn names(&self) -> String {
        [
            self.provider.as_str(),
            &self.model,
            &self.worker,
            &self.agent,
        ]
        .join(&UNIT_SEP.to_string())
    }

    /// Back from the store's key; `None` for a key this build did not write.
    pub fn from_names(day: u32, names: &str) -> Option<UsageKey> {
        let mut it = names.split(UNIT_SEP);
        let key = UsageKey {
            day,
            provider: it.next()?.to_owned(),
            model: it.next()?.to_owned(),
            worker: it.next()?.to_owned(),
            agent: it.next()?.to_owned(),
        };
        it.next().is_none().then_some(key)
    }
}

/// What a [`UsageKey`] used: sums, so rows add up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageTotals {
    /// Completed tasks.
    pub tasks: u64,
    /// Prompt tokens (of tasks whose usage the vendor reported).
    pub prompt_tokens: u64,
    /// Completion tokens (likewise).
    pub completion_tokens: u64,
    /// Estimated cost, nano-dollars (of tasks with a known price).
    pub cost_nanos: u64,
    /// Tasks whose vendor reported no usage (counted, tokens unknown).
    pub tasks_without_usage: u64,
    /// Tasks on a billed key without a known price (tokens counted, cost unknown).
    pub tasks_unpriced: u64,
}

impl UsageTotals {
    /// Adds `other` (saturating).
    pub fn add(&mut self, other: &UsageTotals) {
        self.tasks = self.tasks.saturating_add(other.tasks);
        self.prompt_tokens = self.prompt_tokens.saturating_add(other.prompt_tokens);
        self.completion_tokens = self
            .completion_tokens
            .saturating_add(other.completion_tokens);
        self.cost_nanos = self.cost_nanos.saturating_add(other.cost_nanos);
        self.tasks_without_usage = self
            .tasks_without_usage
            .saturating_add(other.tasks_without_usage);
        self.tasks_unpriced = self.tasks_unpriced.saturating_add(other.tasks_unpriced);
    }
}

/// Encodes usage totals for the store.
pub fn usage_bytes(t: &UsageTotals) -> Result<Vec<u8>, StoreError> {
    to_bytes(t)
}

/// Decodes stored usage totals.
pub fn usage_totals(bytes: &[u8]) -> Result<UsageTotals, StoreError> {
    from_bytes("usage", bytes)
}

/// One cached answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CacheRecord {
    /// When it stops being served.
    pub expires_at: Millis,
    /// The answer.
    pub output: crate::task::TaskOutput,
}

/// One change; a commit applies a batch of them atomically.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// Accept a task.
    InsertTask(PendingTask),
    /// A task finished: drop it from pending, keep its result, count it.
    Finish(FinishedTask),
    /// Create or update a token.
    PutToken(TokenRecord),
    /// Create or update a worker.
    PutWorker(WorkerRecord),
    /// Create or replace an agent.
    PutAgent(String, AgentDef),
    /// Drop results that finished before this instant.
    PurgeResults {
        /// Cut-off.
        before: Millis,
    },
    /// Store a cached answer (its bytes, encoded once by the caller, who
    /// also counts them).
    CachePut(CacheKey, Vec<u8>),
    /// Drop cached answers.
    CacheRemove(Vec<CacheKey>),
    /// Drop every cached answer.
    CacheClear,
    /// Add to a usage row (created at zero).
    AddUsage(UsageKey, UsageTotals),
}

/// A synchronous store.
pub trait Backend: Send + Sync + 'static {
    /// Reads everything needed at start.
    fn load(&self) -> Result<Snapshot, StoreError>;
    /// Applies `ops` in one atomic, durable transaction.
    fn commit(&self, ops: &[Op]) -> Result<(), StoreError>;
    /// A finished task's record.
    fn result(&self, id: TaskId) -> Result<Option<FinishedTask>, StoreError>;
    /// Up to `n` finished tasks with ids below `before` (all when `None`),
    /// newest first.
    fn recent_results(
        &self,
        before: Option<TaskId>,
        n: usize,
    ) -> Result<Vec<FinishedTask>, StoreError>;
    /// A cached answer's bytes (a [`CacheRecord`]).
    fn cache_get(&self, key: &CacheKey) -> Result<Option<Vec<u8>>, StoreError>;
    /// Usage rows of the UTC days `from..=to`.
    fn usage(&self, from: u32, to: u32) -> Result<Vec<(UsageKey, UsageTotals)>, StoreError>;
    /// Releases the underlying storage; later calls fail with `Closed`.
    fn close(&self) {}
    /// Writes a consistent copy of everything stored to a new file at `to`
    /// (one snapshot, while writes go on).
    fn backup(&self, to: &std::path::Path) -> Result<(), StoreError> {
        let _ = to;
        Err(StoreError::Backend(
            "this store cannot be backed up (in memory)".into(),
        ))
    }
}

/// Encodes a cache record for [`Op::CachePut`].
pub fn cache_bytes(r: &CacheRecord) -> Result<Vec<u8>, StoreError> {
    to_bytes(r)
}

/// Decodes what [`Backend::cache_get`] returned.
pub fn cache_record(bytes: &[u8]) -> Result<CacheRecord, StoreError> {
    from_bytes("cache", bytes)
}

/// Encodes a record (bincode, the same config as the wire).
fn to_bytes<T: Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    bincode::serde::encode_to_vec(v, bincode::config::standard())
        .map_err(|e| StoreError::Backend(e.to_string()))
}

fn from_bytes<T: serde::de::DeserializeOwned>(
    table: &'static str,
    b: &[u8],
) -> Result<T, StoreError> {
    bincode::serde::decode_from_slice(b, bincode::config::standard())
        .map(|(v, _)| v)
        .map_err(|e| StoreError::Corrupt {
            table,
            detail: e.to_string(),
        })
}

struct Request {
    ops: Vec<Op>,
    reply: Reply,
}

/// How the writer answers a request.
enum Reply {
    /// Fire and forget.
    None,
    /// Success or the error.
    Done(oneshot::Sender<Result<(), StoreError>>),
    /// Success, or the error with the ops handed back for a retry.
    GiveBack(oneshot::Sender<Result<(), (StoreError, Vec<Op>)>>),
}

/// Largest number of ops folded into one transaction.
const MAX_BATCH_OPS: usize = 8_192;

/// The orchestrator's handle on the store.
#[derive(Clone)]
pub struct Store {
    backend: Arc<dyn Backend>,
    /// Why writes fail now, if they do.
    degraded: Arc<Mutex<Health>>,
    tx: mpsc::Sender<Request>,
    next_id: Arc<AtomicU64>,
    commits: Arc<AtomicU64>,
    /// How long each transaction took to become durable.
    commit_time: Arc<crate::telemetry::Histogram>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("next_id", &self.next_id)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Starts the writer thread over `backend`; returns the handle and what was stored.
    pub fn open(backend: Arc<dyn Backend>) -> Result<(Store, Snapshot), StoreError> {
        Self::open_watched(backend, ())
    }

    /// [`Store::open`], with `watch` moved into the writer thread: it is
    /// dropped when the thread ends, however it ends (a panic included), so
    /// its `Drop` can tell the owner.
    pub fn open_watched(
        backend: Arc<dyn Backend>,
        watch: impl Send + 'static,
    ) -> Result<(Store, Snapshot), StoreError> {
        let snapshot = backend.load()?;
        let (tx, rx) = mpsc::channel::<Request>();
        let commits = Arc::new(AtomicU64::new(0));
        let writer_backend = backend.clone();
        let writer_commits = commits.clone();
        let commit_time = Arc::new(crate::telemetry::Histogram::new(
            crate::telemetry::COMMIT_BUCKETS,
        ));
        let writer_time = commit_time.clone();
        let degraded = Arc::new(Mutex::new(Health::default()));
        let writer_degraded = degraded.clone();
        std::thread::Builder::new()
            .name("d8-store".into())
            .spawn(move || {
                let _watch = watch;
                writer(
                    writer_backend.as_ref(),
                    &rx,
                    &writer_commits,
                    &writer_time,
                    &writer_degraded,
                );
            })
            .map_err(|e| StoreError::Backend(format!("cannot start store thread: {e}")))?;
        let store = Store {
            backend,
            degraded,
            tx,
            next_id: Arc::new(AtomicU64::new(snapshot.next_task_id.max(1))),
            commits,
            commit_time,
        };
        Ok((store, snapshot))
    }

    /// How long commits take (for `/metrics`).
    pub fn commit_time(&self) -> &crate::telemetry::Histogram {
        &self.commit_time
    }

    /// Reserves `n` consecutive task ids.
    pub fn allocate_ids(&self, n: u64) -> u64 {
        self.next_id.fetch_add(n, Ordering::Relaxed)
    }

    /// Applies `ops` durably; returns once they are on disk.
    pub async fn commit(&self, ops: Vec<Op>) -> Result<(), StoreError> {
        self.begin_commit(ops)?.wait().await
    }

    /// Queues `ops` now (so anything queued later commits after them) and
    /// returns a handle to await their durability. Lets the caller overlap
    /// other work with the fsync.
    pub fn begin_commit(&self, ops: Vec<Op>) -> Result<PendingCommit, StoreError> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Request {
                ops,
                reply: Reply::Done(done),
            })
            .map_err(|_| StoreError::Closed)?;
        Ok(PendingCommit(wait))
    }

    /// Like [`Store::commit`], but a failed commit hands the ops back so the
    /// caller can retry them without having kept a copy.
    pub async fn commit_or_return(&self, ops: Vec<Op>) -> Result<(), (StoreError, Vec<Op>)> {
        let (done, wait) = oneshot::channel();
        if let Err(mpsc::SendError(r)) = self.tx.send(Request {
            ops,
            reply: Reply::GiveBack(done),
        }) {
            return Err((StoreError::Closed, r.ops));
        }
        wait.await.unwrap_or(Err((StoreError::Closed, Vec::new())))
    }

    /// Queues `ops` without waiting (they are committed in order with the rest).
    pub fn enqueue(&self, ops: Vec<Op>) {
        if self
            .tx
            .send(Request {
                ops,
                reply: Reply::None,
            })
            .is_err()
        {
            tracing::error!("store is shut down; dropped a write");
        }
    }

    /// Waits until everything queued so far is committed.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.commit(Vec::new()).await
    }

    /// Writes a consistent copy of the store to a new file at `to`
    /// (blocking: call it off the async threads).
    pub fn backup(&self, to: &std::path::Path) -> Result<(), StoreError> {
        self.backend.backup(to)
    }

    /// A finished task's record.
    pub fn result(&self, id: TaskId) -> Result<Option<FinishedTask>, StoreError> {
        self.backend.result(id)
    }

    /// Up to `n` finished tasks below `before`, newest first (read directly).
    pub fn recent_results(
        &self,
        before: Option<TaskId>,
        n: usize,
    ) -> Result<Vec<FinishedTask>, StoreError> {
        self.backend.recent_results(before, n)
    }

    /// Usage rows of the UTC days `from..=to` (read directly).
    pub fn usage(&self, from: u32, to: u32) -> Result<Vec<(UsageKey, UsageTotals)>, StoreError> {
        self.backend.usage(from, to)
    }

    /// A cached answer, read directly (reads do not queue behind writes).
    pub fn cache_get(&self, key: &CacheKey) -> Result<Option<CacheRecord>, StoreError> {
        self.backend
            .cache_get(key)?
            .map(|b| cache_record(&b))
            .transpose()
    }

    /// Commits everything queued, then releases the database (the data dir
    /// can be opened again as soon as this returns).
    pub async fn close(&self) {
        let _ = self.flush().await;
        self.backend.close();
    }

    /// Why writes fail, while they do (a full disk, a failing device); `None`
    /// when the last write succeeded. While failing, the writer tries an
    /// empty write every [`PROBE_EVERY`] and so notices the disk's recovery
    /// by itself.
    pub fn degraded(&self) -> Option<String> {
        self.degraded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .failing
            .clone()
    }

    /// Transactions committed so far (for the group-commit benchmark figure).
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }
}

/// A queued commit; [`PendingCommit::wait`] resolves when it is on disk.
#[derive(Debug)]
pub struct PendingCommit(oneshot::Receiver<Result<(), StoreError>>);

impl PendingCommit {
    /// Waits for the commit.
    pub async fn wait(self) -> Result<(), StoreError> {
        self.0.await.map_err(|_| StoreError::Closed)?
    }
}

/// While writes fail, how often the writer tries an empty one to see whether
/// the store works again.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);

/// A failure is logged at most this often; the recovery that follows a
/// logged failure is always logged (so the log never ends on a failure that
/// is over). A nearly full disk lets small writes through and fails larger
/// ones: the changes in between go to `debug`.
const LOG_FAILURES_EVERY: Duration = Duration::from_secs(30);

/// Why writes fail, shared with [`Store::degraded`], and what the log said
/// last.
#[derive(Debug, Default)]
struct Health {
    failing: Option<String>,
    /// When the last failure line was logged.
    logged: Option<std::time::Instant>,
    /// The log's last word was "failing".
    said_failing: bool,
}

/// Records the outcome of a write; logs only the changes between working
/// and failing, at most about two lines per 30 s (a full disk must not also
/// fill the log).
fn note(health: &Mutex<Health>, result: &Result<(), StoreError>) {
    let mut h = health.lock().unwrap_or_else(|p| p.into_inner());
    match result {
        Ok(()) => {
            h.failing = None;
            if h.said_failing {
                tracing::info!("store writes succeed again; accepting work");
                h.said_failing = false;
            }
        }
        Err(e) => {
            let now = std::time::Instant::now();
            let may_log = h
                .logged
                .is_none_or(|t| now.duration_since(t) >= LOG_FAILURES_EVERY);
            if !h.said_failing && may_log {
                tracing::error!(error = %e, "store writes fail; refusing new work until they succeed again (retrying every second)");
                h.said_failing = true;
                h.logged = Some(now);
            } else {
                tracing::debug!(error = %e, "store write failed");
            }
            h.failing = Some(e.to_string());
        }
    }
}

fn writer(
    backend: &dyn Backend,
    rx: &mpsc::Receiver<Request>,
    commits: &AtomicU64,
    commit_time: &crate::telemetry::Histogram,
    degraded: &Mutex<Health>,
) {
    loop {
        let failing = degraded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .failing
            .is_some();
        let first = if failing {
            match rx.recv_timeout(PROBE_EVERY) {
                Ok(r) => r,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    note(degraded, &backend.commit(&[]));
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        } else {
            match rx.recv() {
                Ok(r) => r,
                Err(_) => break,
            }
        };
        let mut batch = vec![first];
        let mut n = batch[0].ops.len();
        while n < MAX_BATCH_OPS {
            match rx.try_recv() {
                Ok(r) => {
                    n += r.ops.len();
                    batch.push(r);
                }
                Err(_) => break,
            }
        }
        let lens: Vec<usize> = batch.iter().map(|r| r.ops.len()).collect();
        let mut ops: Vec<Op> = batch.iter_mut().flat_map(|r| r.ops.drain(..)).collect();
        let result = if ops.is_empty() {
            Ok(())
        } else {
            let started = std::time::Instant::now();
            let r = backend.commit(&ops);
            commit_time.observe(started.elapsed());
            commits.fetch_add(1, Ordering::Relaxed);
            note(degraded, &r);
            r
        };
        for (r, len) in batch.into_iter().zip(lens) {
            // Each request's ops are the next `len` of the batch.
            let rest = ops.split_off(len.min(ops.len()));
            let mine = std::mem::replace(&mut ops, rest);
            match r.reply {
                Reply::None => {}
                Reply::Done(tx) => {
                    let _ = tx.send(result.clone());
                }
                Reply::GiveBack(tx) => {
                    let _ = tx.send(result.clone().map_err(|e| (e, mine)));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
