//! The on-disk store: one redb file, `<data-dir>/d8.redb`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use super::{
    AgentDef, Backend, CacheKey, Op, PendingTask, Snapshot, StoreError, TokenRecord, Totals,
    UsageKey, UsageTotals, WorkerRecord, from_bytes, to_bytes,
};
use crate::task::{FinishedTask, TaskId};

const TASKS: TableDefinition<u64, &[u8]> = TableDefinition::new("tasks");
const RESULTS: TableDefinition<u64, &[u8]> = TableDefinition::new("results");
/// (completed_at ms, task id) → (): retention order.
const RESULTS_BY_TIME: TableDefinition<(u64, u64), ()> = TableDefinition::new("results_by_time");
const TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("tokens");
const WORKERS: TableDefinition<&str, &[u8]> = TableDefinition::new("workers");
const AGENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("agents");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Result cache: key → a `CacheRecord`.
const CACHE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("cache");
/// Usage: (UTC day, provider␟model␟worker␟agent) → `UsageTotals`. A table
/// added without a format change: older files get it empty.
const USAGE: TableDefinition<(u32, &str), &[u8]> = TableDefinition::new("usage");

const NEXT_ID: &str = "next_task_id";
/// Meta key holding the record layout version.
const FORMAT: &str = "format";
/// Record layout version written and understood by this build.
/// 2: chat requests gained stop sequences and JSON mode, tasks a tier cap.
/// 3: chats gained tools and sampling controls, results tool calls, a
/// finish reason and optional usage (as protocol 3).
pub const FORMAT_VERSION: u64 = 3;
const COMPLETED: &str = "completed";
const FAILED: &str = "failed";
const CANCELLED: &str = "cancelled";

fn be<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// redb-backed [`Backend`].
#[derive(Debug)]
pub struct RedbBackend {
    /// `None` once closed; the lock makes close deterministic (the file is
    /// released before `close` returns) while reads stay concurrent.
    db: std::sync::RwLock<Option<Database>>,
    /// The file, for reopening.
    path: PathBuf,
    /// A commit failed: reopen before the next one.
    broken: AtomicBool,
    /// Closed on purpose ([`Backend::close`]).
    closed: AtomicBool,
}

impl RedbBackend {
    /// Opens (or creates) the database file. Fails clearly if another process has it.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = open_db(path, true)?;
        Ok(RedbBackend {
            path: path.to_owned(),
            db: std::sync::RwLock::new(Some(db)),
            broken: AtomicBool::new(false),
            closed: AtomicBool::new(false),
        })
    }

    /// Replaces the handle with a new one on the same file. After an I/O
    /// error (a full disk) redb refuses every later write until the
    /// database is opened again; its crash recovery brings the file back to
    /// the last commit. No integrity check here: the file was not altered
    /// outside redb, and this may run every second while the disk is full.
    fn reopen(&self) -> Result<(), StoreError> {
        let mut guard = self.db.write().unwrap_or_else(|p| p.into_inner());
        if self.closed.load(Ordering::Acquire) {
            return Err(StoreError::Closed);
        }
        // redb allows one handle per file: the old one goes first. If the
        // new one fails too (the disk is still full), there is no handle
        // until the next commit tries again; reads say so meanwhile.
        guard.take();
        *guard = Some(open_db(&self.path, false)?);
        self.broken.store(false, Ordering::Release);
        tracing::info!(path = %self.path.display(), "store reopened after a write error");
        Ok(())
    }
}

/// Opens the file; `check` verifies every page first (at start).
fn open_db(path: &Path, check: bool) -> Result<Database, StoreError> {
    // redb's default cache may grow to 1 GiB; the Pi has 1-8 GiB and the
    // orchestrator targets tens of MB. Hot data (pending tasks) lives in
    // the scheduler anyway.
    let unreadable = |detail: String| StoreError::Unreadable {
        path: path.display().to_string(),
        detail,
    };
    // At start every page's checksum is verified: a file altered outside
    // redb is refused instead of trusted (a plain open may even panic on
    // one). redb's own crash recovery still applies. Should a damaged file
    // still make redb panic, the panic is caught and reported the same way.
    let opened = std::panic::catch_unwind(|| {
        Database::builder()
            .set_cache_size(1024 * 1024)
            .set_check_integrity_on_open(check)
            .create(path)
    });
    let db = match opened {
        Ok(Ok(db)) => db,
        Ok(Err(redb::DatabaseError::DatabaseAlreadyOpen)) => {
            return Err(StoreError::Locked(path.display().to_string()));
        }
        Ok(Err(e)) => return Err(unreadable(e.to_string())),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "the storage library failed".to_owned());
            return Err(unreadable(what));
        }
    };
    // Create every table so reads never meet a missing one.
    let txn = db.begin_write().map_err(be)?;
    {
        txn.open_table(TASKS).map_err(be)?;
        txn.open_table(RESULTS).map_err(be)?;
        txn.open_table(RESULTS_BY_TIME).map_err(be)?;
        txn.open_table(TOKENS).map_err(be)?;
        txn.open_table(WORKERS).map_err(be)?;
        txn.open_table(AGENTS).map_err(be)?;
        txn.open_table(CACHE).map_err(be)?;
        txn.open_table(USAGE).map_err(be)?;
        let mut meta = txn.open_table(META).map_err(be)?;
        // Records are bincode: a file written by another layout must be
        // refused whole rather than misread. A new file gets our format.
        let found = meta.get(FORMAT).map_err(be)?.map(|g| g.value());
        match found {
            Some(FORMAT_VERSION) => {}
            None if meta.is_empty().map_err(be)? => {
                meta.insert(FORMAT, FORMAT_VERSION).map_err(be)?;
            }
            other => {
                return Err(StoreError::Incompatible {
                    path: path.display().to_string(),
                    found: other.unwrap_or(0),
                    supported: FORMAT_VERSION,
                });
            }
        }
    }
    txn.commit().map_err(be)?;
    Ok(db)
}

fn load_map<T: serde::de::DeserializeOwned>(
    txn: &redb::ReadTransaction,
    def: TableDefinition<&str, &[u8]>,
    name: &'static str,
) -> Result<std::collections::BTreeMap<String, T>, StoreError> {
    let table = txn.open_table(def).map_err(be)?;
    let mut out = std::collections::BTreeMap::new();
    for row in table.iter().map_err(be)? {
        let (k, v) = row.map_err(be)?;
        out.insert(k.value().to_owned(), from_bytes(name, v.value())?);
    }
    Ok(out)
}

impl RedbBackend {
    fn with_db<T>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let guard = self.db.read().unwrap_or_else(|p| p.into_inner());
        match guard.as_ref() {
            Some(db) => f(db),
            None if self.closed.load(Ordering::Acquire) => Err(StoreError::Closed),
            None => Err(StoreError::Backend(
                "the store is being reopened after a write error".into(),
            )),
        }
    }
}

/// Copies every row of `def` from a snapshot into a new file's transaction.
fn copy_table<K, V>(
    from: &redb::ReadTransaction,
    to: &redb::WriteTransaction,
    def: TableDefinition<K, V>,
) -> Result<(), StoreError>
where
    K: redb::Key + 'static,
    V: redb::Value + 'static,
    for<'a> K::SelfType<'a>: std::borrow::Borrow<K::SelfType<'a>>,
{
    let src = from.open_table(def).map_err(be)?;
    let mut dst = to.open_table(def).map_err(be)?;
    for row in src.iter().map_err(be)? {
        let (k, v) = row.map_err(be)?;
        dst.insert(k.value(), v.value()).map_err(be)?;
    }
    Ok(())
}

impl Backend for RedbBackend {
    fn backup(&self, to: &Path) -> Result<(), StoreError> {
        self.with_db(|db| {
            let snapshot = db.begin_read().map_err(be)?;
            let copy = Database::builder()
                .set_cache_size(1024 * 1024)
                .create(to)
                .map_err(be)?;
            let txn = copy.begin_write().map_err(be)?;
            copy_table(&snapshot, &txn, TASKS)?;
            copy_table(&snapshot, &txn, RESULTS)?;
            copy_table(&snapshot, &txn, RESULTS_BY_TIME)?;
            copy_table(&snapshot, &txn, TOKENS)?;
            copy_table(&snapshot, &txn, WORKERS)?;
            copy_table(&snapshot, &txn, AGENTS)?;
            copy_table(&snapshot, &txn, META)?;
            copy_table(&snapshot, &txn, CACHE)?;
            copy_table(&snapshot, &txn, USAGE)?;
            txn.commit().map_err(be)?;
            Ok(())
        })
    }

    fn close(&self) {
        let mut guard = self.db.write().unwrap_or_else(|p| p.into_inner());
        self.closed.store(true, Ordering::Release);
        guard.take();
    }

    fn load(&self) -> Result<Snapshot, StoreError> {
        self.with_db(load)
    }

    fn commit(&self, ops: &[Op]) -> Result<(), StoreError> {
        if self.broken.load(Ordering::Acquire) {
            self.reopen()?;
        }
        let r = self.with_db(|db| commit(db, ops));
        if r.is_err() {
            self.broken.store(true, Ordering::Release);
        }
        r
    }

    fn result(&self, id: TaskId) -> Result<Option<FinishedTask>, StoreError> {
        self.with_db(|db| {
            let txn = db.begin_read().map_err(be)?;
            let table = txn.open_table(RESULTS).map_err(be)?;
            match table.get(id.0).map_err(be)? {
                Some(v) => Ok(Some(from_bytes("results", v.value())?)),
                None => Ok(None),
            }
        })
    }

    fn recent_results(
        &self,
        before: Option<TaskId>,
        n: usize,
    ) -> Result<Vec<FinishedTask>, StoreError> {
        self.with_db(|db| {
            let txn = db.begin_read().map_err(be)?;
            let table = txn.open_table(RESULTS).map_err(be)?;
            let below = before.map_or(u64::MAX, |b| b.0);
            let mut out = Vec::new();
            for row in table.range(..below).map_err(be)?.rev().take(n) {
                let (_, v) = row.map_err(be)?;
                out.push(from_bytes("results", v.value())?);
            }
            Ok(out)
        })
    }

    fn usage(&self, from: u32, to: u32) -> Result<Vec<(UsageKey, UsageTotals)>, StoreError> {
        self.with_db(|db| {
            let txn = db.begin_read().map_err(be)?;
            let table = txn.open_table(USAGE).map_err(be)?;
            let mut out = Vec::new();
            if from > to {
                return Ok(out);
            }
            let end = to.checked_add(1);
            let rows = match end {
                Some(end) => table.range((from, "")..(end, "")).map_err(be)?,
                None => table.range((from, "")..).map_err(be)?,
            };
            for row in rows {
                let (k, v) = row.map_err(be)?;
                let (day, names) = k.value();
                if let (Some(key), Ok(t)) = (
                    UsageKey::from_names(day, names),
                    super::usage_totals(v.value()),
                ) {
                    out.push((key, t));
                }
            }
            Ok(out)
        })
    }

    fn cache_get(&self, key: &CacheKey) -> Result<Option<Vec<u8>>, StoreError> {
        self.with_db(|db| {
            let txn = db.begin_read().map_err(be)?;
            let table = txn.open_table(CACHE).map_err(be)?;
            Ok(table
                .get(key.as_slice())
                .map_err(be)?
                .map(|v| v.value().to_vec()))
        })
    }
}

fn load(db: &Database) -> Result<Snapshot, StoreError> {
    let txn = db.begin_read().map_err(be)?;
    let mut pending = Vec::new();
    {
        let table = txn.open_table(TASKS).map_err(be)?;
        for row in table.iter().map_err(be)? {
            let (_, v) = row.map_err(be)?;
            pending.push(from_bytes::<PendingTask>("tasks", v.value())?);
        }
    }
    let mut cache = Vec::new();
    {
        let table = txn.open_table(CACHE).map_err(be)?;
        for row in table.iter().map_err(be)? {
            let (k, v) = row.map_err(be)?;
            let Ok(key) = CacheKey::try_from(k.value()) else {
                continue;
            };
            // An entry this build cannot read is as good as absent.
            if let Ok(r) = super::cache_record(v.value()) {
                cache.push((key, r.expires_at, v.value().len()));
            }
        }
    }
    let meta = txn.open_table(META).map_err(be)?;
    let get = |k: &str| -> Result<u64, StoreError> {
        Ok(meta.get(k).map_err(be)?.map(|g| g.value()).unwrap_or(0))
    };
    let next_task_id = get(NEXT_ID)?
        .max(pending.last().map_or(0, |p| p.id.0 + 1))
        .max(1);
    Ok(Snapshot {
        pending,
        tokens: load_map::<TokenRecord>(&txn, TOKENS, "tokens")?,
        workers: load_map::<WorkerRecord>(&txn, WORKERS, "workers")?,
        agents: load_map::<AgentDef>(&txn, AGENTS, "agents")?,
        totals: Totals {
            completed: get(COMPLETED)?,
            failed: get(FAILED)?,
            cancelled: get(CANCELLED)?,
        },
        next_task_id,
        cache,
    })
}

fn commit(db: &Database, ops: &[Op]) -> Result<(), StoreError> {
    let txn = db.begin_write().map_err(be)?;
    {
        let mut tasks = txn.open_table(TASKS).map_err(be)?;
        let mut results = txn.open_table(RESULTS).map_err(be)?;
        let mut by_time = txn.open_table(RESULTS_BY_TIME).map_err(be)?;
        let mut tokens = txn.open_table(TOKENS).map_err(be)?;
        let mut workers = txn.open_table(WORKERS).map_err(be)?;
        let mut agents = txn.open_table(AGENTS).map_err(be)?;
        let mut meta = txn.open_table(META).map_err(be)?;
        let mut cache = txn.open_table(CACHE).map_err(be)?;
        let mut usage = txn.open_table(USAGE).map_err(be)?;
        let mut totals = Totals::default();
        let mut max_id = None;
        for op in ops {
            match op {
                Op::InsertTask(p) => {
                    tasks.insert(p.id.0, to_bytes(p)?.as_slice()).map_err(be)?;
                    max_id = max_id.max(Some(p.id.0));
                }
                Op::Finish(f) => {
                    tasks.remove(f.id.0).map_err(be)?;
                    results
                        .insert(f.id.0, to_bytes(f)?.as_slice())
                        .map_err(be)?;
                    by_time.insert((f.completed_at.0, f.id.0), ()).map_err(be)?;
                    totals.count(f.status);
                }
                Op::PutToken(t) => {
                    tokens
                        .insert(t.id.as_str(), to_bytes(t)?.as_slice())
                        .map_err(be)?;
                }
                Op::PutWorker(w) => {
                    workers
                        .insert(w.id.as_str(), to_bytes(w)?.as_slice())
                        .map_err(be)?;
                }
                Op::PutAgent(id, a) => {
                    agents
                        .insert(id.as_str(), to_bytes(a)?.as_slice())
                        .map_err(be)?;
                }
                Op::PurgeResults { before } => {
                    let old: Vec<(u64, u64)> = by_time
                        .range(..(before.0, 0))
                        .map_err(be)?
                        .map(|r| r.map(|(k, _)| k.value()))
                        .collect::<Result<_, _>>()
                        .map_err(be)?;
                    for key in old {
                        by_time.remove(key).map_err(be)?;
                        results.remove(key.1).map_err(be)?;
                    }
                }
                Op::CachePut(k, v) => {
                    cache.insert(k.as_slice(), v.as_slice()).map_err(be)?;
                }
                Op::CacheRemove(keys) => {
                    for k in keys {
                        cache.remove(k.as_slice()).map_err(be)?;
                    }
                }
                Op::CacheClear => {
                    cache.retain(|_, _| false).map_err(be)?;
                }
                Op::AddUsage(k, add) => {
                    let names = k.names();
                    let mut row = match usage.get((k.day, names.as_str())).map_err(be)? {
                        // A row this build cannot read starts over.
                        Some(v) => super::usage_totals(v.value()).unwrap_or_default(),
                        None => UsageTotals::default(),
                    };
                    row.add(add);
                    usage
                        .insert(
                            (k.day, names.as_str()),
                            super::usage_bytes(&row)?.as_slice(),
                        )
                        .map_err(be)?;
                }
            }
        }
        let mut bump = |k: &str, n: u64| -> Result<(), StoreError> {
            if n > 0 {
                let cur = meta.get(k).map_err(be)?.map(|g| g.value()).unwrap_or(0);
                meta.insert(k, cur + n).map_err(be)?;
            }
            Ok(())
        };
        bump(COMPLETED, totals.completed)?;
        bump(FAILED, totals.failed)?;
        bump(CANCELLED, totals.cancelled)?;
        if let Some(max) = max_id {
            let cur = meta
                .get(NEXT_ID)
                .map_err(be)?
                .map(|g| g.value())
                .unwrap_or(0);
            if max + 1 > cur {
                meta.insert(NEXT_ID, max + 1).map_err(be)?;
            }
        }
    }
    txn.commit().map_err(be)
}
