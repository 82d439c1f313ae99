//! In-memory twin of the redb store, for tests: same semantics, no disk.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::{Backend, CacheKey, Op, Snapshot, StoreError, UsageKey, UsageTotals};
use crate::task::{FinishedTask, TaskId};

/// A [`Backend`] in memory. [`MemBackend::set_failing`] makes every commit
/// fail, to test error paths.
#[derive(Debug, Default)]
pub struct MemBackend {
    state: Mutex<(Snapshot, BTreeMap<TaskId, FinishedTask>)>,
    cache: Mutex<BTreeMap<CacheKey, Vec<u8>>>,
    usage: Mutex<BTreeMap<UsageKey, UsageTotals>>,
    /// When true, commits fail with a backend error.
    fail_commits: std::sync::atomic::AtomicBool,
}

impl MemBackend {
    /// Makes every later commit fail (`true`) or work again (`false`), as a
    /// full or recovered disk would.
    pub fn set_failing(&self, on: bool) {
        self.fail_commits
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Backend for MemBackend {
    fn load(&self) -> Result<Snapshot, StoreError> {
        let guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut snap = guard.0.clone();
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        snap.cache = cache
            .iter()
            .filter_map(|(k, v)| {
                let r = super::cache_record(v).ok()?;
                Some((*k, r.expires_at, v.len()))
            })
            .collect();
        snap.next_task_id = snap
            .next_task_id
            .max(snap.pending.last().map_or(0, |p| p.id.0 + 1))
            .max(1);
        Ok(snap)
    }

    fn commit(&self, ops: &[Op]) -> Result<(), StoreError> {
        if self.fail_commits.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(StoreError::Backend("injected failure".into()));
        }
        let mut guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (snap, results) = &mut *guard;
        for op in ops {
            match op {
                Op::InsertTask(p) => {
                    snap.next_task_id = snap.next_task_id.max(p.id.0 + 1);
                    snap.pending.push(p.clone());
                    snap.pending.sort_by_key(|p| p.id);
                }
                Op::Finish(f) => {
                    snap.pending.retain(|p| p.id != f.id);
                    snap.totals.count(f.status);
                    results.insert(f.id, f.clone());
                }
                Op::PutToken(t) => {
                    snap.tokens.insert(t.id.clone(), t.clone());
                }
                Op::PutWorker(w) => {
                    snap.workers.insert(w.id.clone(), w.clone());
                }
                Op::PutAgent(id, a) => {
                    snap.agents.insert(id.clone(), a.clone());
                }
                Op::PurgeResults { before } => results.retain(|_, f| f.completed_at >= *before),
                Op::CachePut(k, v) => {
                    self.cache
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(*k, v.clone());
                }
                Op::CacheRemove(keys) => {
                    let mut c = self.cache.lock().unwrap_or_else(|p| p.into_inner());
                    for k in keys {
                        c.remove(k);
                    }
                }
                Op::CacheClear => self.cache.lock().unwrap_or_else(|p| p.into_inner()).clear(),
                Op::AddUsage(k, add) => self
                    .usage
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(k.clone())
                    .or_default()
                    .add(add),
            }
        }
        Ok(())
    }

    fn result(&self, id: TaskId) -> Result<Option<FinishedTask>, StoreError> {
        let guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        Ok(guard.1.get(&id).cloned())
    }

    fn recent_results(
        &self,
        before: Option<TaskId>,
        n: usize,
    ) -> Result<Vec<FinishedTask>, StoreError> {
        let guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let below = before.map_or(u64::MAX, |b| b.0);
        Ok(guard
            .1
            .range(..TaskId(below))
            .rev()
            .take(n)
            .map(|(_, f)| f.clone())
            .collect())
    }

    fn usage(&self, from: u32, to: u32) -> Result<Vec<(UsageKey, UsageTotals)>, StoreError> {
        let usage = self.usage.lock().unwrap_or_else(|p| p.into_inner());
        Ok(usage
            .iter()
            .filter(|(k, _)| (from..=to).contains(&k.day))
            .map(|(k, t)| (k.clone(), *t))
            .collect())
    }

    fn cache_get(&self, key: &CacheKey) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned())
    }
}
