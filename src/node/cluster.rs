//! [`Cluster`]: the orchestrator's one service facade. The HTTP API, the
//! enrollment handler and the worker connections talk to it, never to the
//! store, the registry or the scheduler actor directly.
//!
//! It owns the protocols that span two of those systems, each written once:
//! - the durable submit (allocate ids, queue the insert, schedule, wait for
//!   the fsync, cancel back on failure);
//! - the task lookup order (the scheduler's live tasks, then finished tasks
//!   not yet persisted, then the store);
//! - join-token rotation (at start when the token on disk is unusable, and
//!   for `POST /api/tokens/rotate`).
//!
//! A `Cluster` needs no socket: [`Cluster::open`] over the in-memory store
//! is what the HTTP layer's `oneshot` tests run on.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use d8_certs::tls::Revocations;
use d8_certs::{ClusterCa, JoinToken, fingerprint};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::actor::{Actor, Gone, QueryReply, SchedHandle, SchedMsg, TaskState};
use super::cache::Cache;
use super::files::{self, FileError};
use super::live_output::LiveOutput;
use super::logs::LogRing;
use super::models::{self, Capacity, Catalog, ModelEntry, Target};
use super::now_millis;
use super::registry::{Registry, TokenInfo};
use super::usage::{Accounts, PriceBook};
use super::vitals::{Part, Vitals};
use crate::config::OrchestratorConfig;
use crate::core::{CancelResult, Counters, Liveness, Scheduler, Stats, WorkerView};
use crate::store::{
    AgentDef, Backend, Op, PendingTask, Store, StoreError, TokenKind, TokenRecord, WorkerRecord,
};
use crate::store::{UsageKey, UsageTotals};
use crate::task::{FinishedTask, TaskId, TaskOutput, TaskSpec, TaskStatus, WorkerId};
use crate::wire::{EnrollRequest, EnrollResponse, PROTOCOL_VERSION};

/// Most agent definitions kept (each in memory; see the HTTP layer's
/// prompt bound).
pub const MAX_AGENTS: usize = 1_000;

/// Why a cluster operation did not happen. The HTTP layer maps each variant
/// to a status code; the messages are written for the person who asked.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// No such task, agent, token or worker.
    #[error("{0}")]
    NotFound(String),
    /// The task had already finished (cancel).
    #[error("task {id} already {status}")]
    AlreadyFinished {
        /// The task.
        id: TaskId,
        /// Its final status.
        status: &'static str,
    },
    /// The scheduler actor has stopped: the orchestrator is shutting down.
    #[error(transparent)]
    ShuttingDown(#[from] Gone),
    /// The store refused a write.
    #[error("could not store the request: {0}")]
    Store(#[from] StoreError),
    /// Store writes fail (a full disk): no new work until they succeed.
    #[error("the orchestrator cannot store new work now ({0}); retry later")]
    Degraded(String),
    /// A new agent past [`MAX_AGENTS`].
    #[error("there are already {max} agents, the most one orchestrator keeps; replace one instead")]
    TooManyAgents {
        /// The bound.
        max: usize,
    },
    /// Accepting these tasks would pass `--max-queued`.
    #[error(
        "the queue is full: {queued} tasks accepted and not finished, at most {max} (--max-queued); retry when some have finished"
    )]
    QueueFull {
        /// Tasks accepted and not finished now.
        queued: u64,
        /// The bound.
        max: u64,
    },
    /// The new join token is in the store but its file could not be written.
    #[error("token rotated but not saved: {0}")]
    TokenFile(#[source] FileError),
}

/// Why the cluster could not open its state.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Data directory problem.
    #[error("data directory: {0}")]
    Files(#[from] FileError),
    /// Store problem.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The prices file cannot be used.
    #[error(transparent)]
    Prices(#[from] super::usage::PricesError),
}

/// An enrolled worker as the API lists it: its record, and its live view
/// while connected.
#[derive(Debug, Clone)]
pub struct WorkerEntry {
    /// The enrollment record.
    pub record: WorkerRecord,
    /// The scheduler's view while connected.
    pub live: Option<WorkerView>,
    /// `revoked`, `offline`, `draining`, `suspect`, `busy` or `online`.
    pub status: &'static str,
}

/// How a caller follows a task to its end.
#[derive(Debug)]
pub enum Watch {
    /// It has already finished.
    Finished(Box<TaskState>),
    /// Still live; the receiver fires with the final state.
    Live(oneshot::Receiver<TaskState>),
}

/// Which tasks `GET /api/tasks` lists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskFilter {
    /// Only this status (`pending`, `assigned`, `completed`, …).
    pub status: Option<String>,
    /// Only this task type.
    pub task_type: Option<String>,
    /// Only this agent's.
    pub agent: Option<String>,
    /// Only ids below this one (the next page).
    pub before: Option<TaskId>,
}

impl TaskFilter {
    fn keeps(&self, s: &TaskState) -> bool {
        self.status.as_deref().is_none_or(|st| s.status == st)
            && self.task_type.as_deref().is_none_or(|t| s.task_type == t)
            && self
                .agent
                .as_deref()
                .is_none_or(|a| s.agent_id.as_deref() == Some(a))
            && self.before.is_none_or(|b| s.task_id < b)
    }
}

/// Finished records read from the store for one page at most, whatever the
/// filter keeps: a page costs bounded work; `next_before` goes on.
const MAX_SCAN: usize = 5_000;

/// Defaults applied to tasks that do not set their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskDefaults {
    /// Failed attempts before a task fails.
    pub max_attempts: u32,
    /// Time one attempt may take, ms.
    pub attempt_timeout_ms: u64,
}

/// The orchestrator's state and the operations on it. Cheap to share
/// (`Arc<Cluster>`); every method takes `&self`.
pub struct Cluster {
    cfg: OrchestratorConfig,
    ca: ClusterCa,
    registry: Mutex<Registry>,
    store: Store,
    sched: SchedHandle,
    api_key: String,
    join_token: Mutex<JoinToken>,
    agents: Mutex<BTreeMap<String, AgentDef>>,
    /// Which long-lived parts are running.
    vitals: Arc<Vitals>,
    /// Models offered, kept a while after their workers leave.
    catalog: Mutex<Catalog>,
    /// Answers kept for identical requests.
    cache: Arc<Cache>,
    /// Recent log lines, the orchestrator's and its workers'.
    logs: Arc<LogRing>,
    /// Usage and cost accounting.
    accounts: Arc<Accounts>,
    /// When it opened.
    started_at: crate::task::Millis,
    /// How it shows itself, once the orchestrator has started.
    node: std::sync::OnceLock<NodeInfo>,
}

/// How the orchestrator shows itself (the dashboard's header, join command).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// The name announced over mDNS.
    pub name: String,
    /// QUIC port workers connect to.
    pub quic_port: u16,
    /// Whether it advertises over mDNS (workers need no address).
    pub mdns: bool,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("data_dir", &self.cfg.data_dir)
            .finish_non_exhaustive()
    }
}

/// Locks, recovering from a panicked holder: every guarded value here is
/// left consistent between statements.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn generate_api_key() -> String {
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut bytes = [0u8; 32];
    rand::fill(&mut bytes);
    let body: String = bytes
        .iter()
        .map(|b| char::from(ALPHABET[usize::from(b & 31)]))
        .collect();
    format!("d8k_{body}")
}

impl Cluster {
    /// Opens the cluster's state on `backend`: registry (filling
    /// `revocations`, which the TLS verifier shares), standing join token
    /// (reused from the data dir while valid), API key, and the scheduler
    /// actor (spawned; it stops when `shutdown` fires). Tasks accepted before
    /// a restart are queued again. Returns the actor's task too. Call it
    /// last, once nothing else can fail: the actor then runs until
    /// `shutdown`.
    pub async fn open(
        cfg: OrchestratorConfig,
        ca: ClusterCa,
        revocations: Revocations,
        backend: Arc<dyn Backend>,
        shutdown: CancellationToken,
    ) -> Result<(Arc<Cluster>, tokio::task::JoinHandle<()>), OpenError> {
        let dir = cfg.data_dir.clone();
        // Listen from the start, so the ring has what opening says.
        let logs = Arc::new(LogRing::default());
        if let Some(tap) = &cfg.logs {
            tokio::spawn(super::logs::keep_own(
                logs.clone(),
                tap.subscribe(),
                shutdown.clone(),
            ));
        }
        files::ensure_dir(&dir)?;
        let book = match &cfg.prices {
            Some(path) => PriceBook::load(path, true)?,
            None => PriceBook::load(&dir.join(files::PRICES), false)?,
        };
        let accounts = Arc::new(Accounts::new(book));
        let vitals = Arc::new(Vitals::default());
        let (store, mut snapshot) = Store::open_watched(backend, vitals.alive(Part::Store))?;
        let registry = Registry::new(snapshot.tokens, snapshot.workers, revocations);
        let on_disk = files::read_optional(&dir.join(files::JOIN_TOKEN))?
            .and_then(|s| JoinToken::parse(&s).ok())
            .filter(|t| t.ca_digest() == ca.digest() && registry.default_token_valid(t.secret()));
        let registry = Mutex::new(registry);
        let join_token = match on_disk {
            Some(t) => t,
            None => rotate(&registry, &ca, &store, &dir)
                .await
                .map_err(|e| match e {
                    RotateError::Store(e) => OpenError::Store(e),
                    RotateError::File(e) => OpenError::Files(e),
                })?,
        };
        let api_key = match files::read_optional(&dir.join(files::API_KEY))? {
            Some(k) if !k.trim().is_empty() => k.trim().to_owned(),
            _ => {
                let k = generate_api_key();
                files::write_file(&dir.join(files::API_KEY), format!("{k}\n").as_bytes(), true)?;
                k
            }
        };
        let cache = Arc::new(Cache::new(
            store.clone(),
            cfg.cache_max_bytes,
            std::mem::take(&mut snapshot.cache),
            now_millis(),
        ));
        let t = snapshot.totals;
        let core = Scheduler::new(
            cfg.scheduler.clone(),
            Counters {
                completed: t.completed,
                failed: t.failed,
                cancelled: t.cancelled,
                ..Counters::default()
            },
        );
        let (actor, sched) = Actor::new(core, store.clone(), accounts.clone(), shutdown);
        // Tasks accepted before a restart count against the bound again.
        sched
            .unfinished
            .store(snapshot.pending.len() as u64, Ordering::Relaxed);
        let alive = vitals.alive(Part::Scheduler);
        let actor = tokio::spawn(async move {
            let _alive = alive;
            actor.run().await;
        });
        if !snapshot.pending.is_empty() {
            tracing::info!(
                tasks = snapshot.pending.len(),
                "re-queued tasks accepted before the restart"
            );
            let _ = sched.send(SchedMsg::Submit(snapshot.pending)).await;
        }
        let cluster = Arc::new(Cluster {
            cfg,
            ca,
            registry,
            store,
            sched,
            api_key,
            join_token: Mutex::new(join_token),
            agents: Mutex::new(snapshot.agents),
            vitals,
            catalog: Mutex::default(),
            cache,
            logs,
            accounts,
            started_at: now_millis(),
            node: std::sync::OnceLock::new(),
        });
        Ok((cluster, actor))
    }

    /// The validated configuration it runs with.
    pub fn config(&self) -> &OrchestratorConfig {
        &self.cfg
    }

    /// The cluster CA.
    pub fn ca(&self) -> &ClusterCa {
        &self.ca
    }

    /// Which long-lived parts are running; the orchestrator registers its
    /// QUIC accept loop and HTTP server here too.
    pub fn vitals(&self) -> &Arc<Vitals> {
        &self.vitals
    }

    /// The HTTP API's bearer key.
    pub fn api_key(&self) -> &str {
        &self.api_key
    }

    /// The standing join token.
    pub fn join_token(&self) -> JoinToken {
        lock(&self.join_token).clone()
    }

    /// Streamed output of running tasks.
    pub(crate) fn live_output(&self) -> &LiveOutput {
        &self.sched.live_output
    }

    /// The scheduler actor, for the worker connections of this node.
    pub(crate) fn sched(&self) -> &SchedHandle {
        &self.sched
    }

    /// The store (shutdown flush, retention sweeps).
    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    /// Defaults for tasks that set no attempt limit or timeout.
    pub fn task_defaults(&self) -> TaskDefaults {
        TaskDefaults {
            max_attempts: self.cfg.max_attempts,
            attempt_timeout_ms: u64::try_from(self.cfg.attempt_timeout.as_millis())
                .unwrap_or(u64::MAX),
        }
    }

    // ---- tasks ----

    /// Makes the tasks durable and schedules them; returns once they are
    /// durable. Scheduling overlaps the fsync: the insert is queued in the
    /// store first, so any later write about these tasks (their results)
    /// commits after it. If the commit fails the tasks are cancelled again.
    pub async fn submit(&self, specs: Vec<TaskSpec>) -> Result<Vec<TaskId>, ClusterError> {
        let n = specs.len() as u64;
        // Refused before anything happens: the write would fail anyway, and
        // the answer says why.
        if let Some(why) = self.store.degraded() {
            return Err(ClusterError::Degraded(why));
        }
        // All or nothing: a batch that does not fit is refused whole.
        let max = self.cfg.max_queued;
        self.sched
            .unfinished
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                (q.saturating_add(n) <= max).then_some(q + n)
            })
            .map_err(|queued| ClusterError::QueueFull { queued, max })?;
        let first = self.store.allocate_ids(n);
        let now = now_millis();
        let pending: Vec<PendingTask> = specs
            .into_iter()
            .zip(first..)
            .map(|(spec, id)| PendingTask {
                id: TaskId(id),
                spec,
                created_at: now,
            })
            .collect();
        let ids: Vec<TaskId> = pending.iter().map(|p| p.id).collect();
        // Until the scheduler has them, a failure takes them out of the
        // count again (after that, the scheduler finishing them does).
        let unreserve = || self.sched.unfinished.fetch_sub(n, Ordering::AcqRel);
        let durable = match self
            .store
            .begin_commit(pending.iter().cloned().map(Op::InsertTask).collect())
        {
            Ok(d) => d,
            Err(e) => {
                unreserve();
                return Err(e.into());
            }
        };
        for p in &pending {
            self.sched.telemetry.submitted.inc(&[&p.spec.task_type]);
        }
        if let Err(e) = self.sched.send(SchedMsg::Submit(pending)).await {
            unreserve();
            return Err(e.into());
        }
        if let Err(e) = durable.wait().await {
            for id in &ids {
                let _ = self.sched.cancel(*id).await;
            }
            return Err(e.into());
        }
        Ok(ids)
    }

    /// Recent tasks, newest first: the live ones (from the scheduler) and
    /// finished ones (from the store), `limit` at most, and the id to pass
    /// as `before` for the next page (`None` at the end).
    pub async fn list_tasks(
        &self,
        filter: &TaskFilter,
        limit: usize,
    ) -> Result<(Vec<TaskState>, Option<TaskId>), ClusterError> {
        let mut list: Vec<TaskState> = self
            .sched
            .live()
            .await?
            .into_iter()
            .filter(|s| filter.keeps(s))
            .collect();
        let stored = self.store.recent_results(filter.before, MAX_SCAN)?;
        let scanned_to = (stored.len() == MAX_SCAN)
            .then(|| stored.last().map(|f| f.id))
            .flatten();
        let live: std::collections::HashSet<TaskId> = list.iter().map(|s| s.task_id).collect();
        list.extend(
            stored
                .iter()
                .filter(|f| !live.contains(&f.id))
                .map(TaskState::from)
                .filter(|s| filter.keeps(s)),
        );
        list.sort_by_key(|s| std::cmp::Reverse(s.task_id));
        // A scan that stopped short covers ids down to where it stopped;
        // older live tasks belong to the next page (listing them here too
        // would repeat them there).
        if let Some(edge) = scanned_to {
            list.retain(|s| s.task_id >= edge);
        }
        if list.len() > limit {
            list.truncate(limit);
            let next = list.last().map(|s| s.task_id);
            return Ok((list, next));
        }
        // Fewer than a page: the end, unless the scan stopped short.
        Ok((list, scanned_to))
    }

    /// Records a task answered from the result cache: accepted and completed
    /// in one durable commit, without running (no worker, no attempt), so
    /// it reads like any other task at `/api/tasks/{id}`.
    pub async fn record_cached(
        &self,
        spec: TaskSpec,
        output: TaskOutput,
    ) -> Result<TaskId, ClusterError> {
        if let Some(why) = self.store.degraded() {
            return Err(ClusterError::Degraded(why));
        }
        let id = TaskId(self.store.allocate_ids(1));
        self.sched.telemetry.submitted.inc(&[&spec.task_type]);
        let now = now_millis();
        let finished = FinishedTask {
            id,
            status: TaskStatus::Completed,
            task_type: spec.task_type.clone(),
            priority: spec.priority,
            output: Some(output),
            error: None,
            worker: None,
            agent_id: spec.agent_id.clone(),
            attempts: 0,
            created_at: now,
            completed_at: now,
        };
        let state = TaskState::from(&finished);
        // The insert keeps the id counter durable; the finish takes the
        // task out of the queue again in the same transaction.
        self.store
            .commit(vec![
                Op::InsertTask(PendingTask {
                    id,
                    spec,
                    created_at: now,
                }),
                Op::Finish(finished),
            ])
            .await?;
        // Counted and announced like any completion.
        let _ = self
            .sched
            .send(SchedMsg::CompletedElsewhere(Box::new(state)))
            .await;
        Ok(id)
    }

    /// A task's state now, or after waiting up to `wait` for it to finish.
    /// Looks in the scheduler (live tasks and results not yet persisted)
    /// first, then in the store.
    pub async fn task(
        &self,
        id: TaskId,
        wait: Option<Duration>,
    ) -> Result<TaskState, ClusterError> {
        let Some(wait) = wait.filter(|w| !w.is_zero()) else {
            return self.lookup(id).await;
        };
        match self.sched.query(id, true).await? {
            QueryReply::Waiting(current, rx) => match tokio::time::timeout(wait, rx).await {
                Ok(Ok(done)) => Ok(done),
                _ => Ok(self.lookup(id).await.unwrap_or(current)),
            },
            QueryReply::State(s) => Ok(s),
            QueryReply::NotLive => self.stored_task(id),
        }
    }

    /// The one lookup order: the scheduler (live tasks and results not yet
    /// persisted), then the store.
    async fn lookup(&self, id: TaskId) -> Result<TaskState, ClusterError> {
        match self.sched.query(id, false).await? {
            QueryReply::State(s) | QueryReply::Waiting(s, _) => Ok(s),
            QueryReply::NotLive => self.stored_task(id),
        }
    }

    fn stored_task(&self, id: TaskId) -> Result<TaskState, ClusterError> {
        match self.store.result(id)? {
            Some(f) => Ok(TaskState::from(&f)),
            None => Err(ClusterError::NotFound(format!("no task {id}"))),
        }
    }

    /// Follows a task to its end: its final state if it has one, otherwise a
    /// receiver for it. Subscribe to `Cluster::live_output` first, so no
    /// output produced in between is missed.
    pub async fn watch(&self, id: TaskId) -> Result<Watch, ClusterError> {
        match self.sched.query(id, true).await? {
            QueryReply::Waiting(_, done) => Ok(Watch::Live(done)),
            QueryReply::State(s) => Ok(Watch::Finished(Box::new(s))),
            QueryReply::NotLive => self.stored_task(id).map(|s| Watch::Finished(Box::new(s))),
        }
    }

    /// Cancels a live task.
    pub async fn cancel(&self, id: TaskId) -> Result<(), ClusterError> {
        match self.sched.cancel(id).await? {
            CancelResult::Cancelled => {
                // Answer once the cancellation is durable, like any other
                // end of a task: a client that reads the task next sees it
                // cancelled. A failing store does not hold the answer back
                // for long.
                let _ = self.task(id, Some(Duration::from_secs(5))).await;
                Ok(())
            }
            CancelResult::NotLive => {
                let state = self.lookup(id).await?;
                Err(ClusterError::AlreadyFinished {
                    id,
                    status: state.status,
                })
            }
        }
    }

    /// Scheduler totals and gauges.
    pub async fn stats(&self) -> Result<Stats, ClusterError> {
        Ok(self.sched.stats().await?)
    }

    // ---- agents ----

    /// Stores (or replaces) an agent definition.
    pub async fn put_agent(&self, id: &str, def: AgentDef) -> Result<(), ClusterError> {
        {
            let agents = lock(&self.agents);
            if agents.len() >= MAX_AGENTS && !agents.contains_key(id) {
                return Err(ClusterError::TooManyAgents { max: MAX_AGENTS });
            }
        }
        self.store
            .commit(vec![Op::PutAgent(id.to_owned(), def.clone())])
            .await?;
        lock(&self.agents).insert(id.to_owned(), def);
        Ok(())
    }

    /// Writes a consistent copy of the store into the data directory and
    /// returns its path; the caller sends it and removes it. The copy needs
    /// as much free space as the store.
    pub async fn backup(&self) -> Result<std::path::PathBuf, ClusterError> {
        let to = self.cfg.data_dir.join(format!(
            "{}{:016x}.redb",
            files::BACKUP_PREFIX,
            rand::random::<u64>()
        ));
        let store = self.store.clone();
        let path = to.clone();
        let done = tokio::task::spawn_blocking(move || store.backup(&path))
            .await
            .unwrap_or_else(|e| Err(StoreError::Backend(format!("backup task failed: {e}"))));
        if let Err(e) = done {
            let _ = std::fs::remove_file(&to);
            return Err(e.into());
        }
        Ok(to)
    }

    /// An agent's definition, if one was stored.
    pub fn agent(&self, id: &str) -> Option<AgentDef> {
        lock(&self.agents).get(id).cloned()
    }

    // ---- workers ----

    /// Every enrolled worker with its live state, in id order.
    pub async fn workers(&self) -> Result<Vec<WorkerEntry>, ClusterError> {
        let mut live = self.sched.workers().await?;
        let enrolled: Vec<WorkerRecord> = lock(&self.registry).workers().cloned().collect();
        Ok(enrolled
            .into_iter()
            .map(|record| {
                let live = live
                    .iter()
                    .position(|w| w.id.0 == record.id)
                    .map(|i| live.swap_remove(i));
                let status = match &live {
                    _ if record.revoked => "revoked",
                    None => "offline",
                    Some(w) if w.draining => "draining",
                    Some(w) if w.liveness == Liveness::Suspect => "suspect",
                    Some(w) if w.active > 0 => "busy",
                    Some(_) => "online",
                };
                WorkerEntry {
                    record,
                    live,
                    status,
                }
            })
            .collect())
    }

    /// The scheduler's view of the connected workers.
    pub async fn live_workers(&self) -> Result<Vec<WorkerView>, ClusterError> {
        Ok(self.sched.workers().await?)
    }

    /// Every model offered now or within [`models::MODEL_RETENTION_MS`],
    /// sorted by name and provider.
    pub async fn models(&self) -> Result<Vec<ModelEntry>, ClusterError> {
        let workers = self.live_workers().await?;
        Ok(self.models_of(&workers))
    }

    /// [`Cluster::models`] from a snapshot of the workers already taken.
    pub fn models_of(&self, workers: &[WorkerView]) -> Vec<ModelEntry> {
        lock(&self.catalog).update(now_millis(), workers)
    }

    /// Worker and task changes, for live listeners.
    pub fn events(&self) -> &super::events::EventBus {
        &self.sched.events
    }

    /// The result cache.
    pub fn cache(&self) -> &Arc<Cache> {
        &self.cache
    }

    /// Recent log lines, the orchestrator's and its workers'.
    pub fn logs(&self) -> &Arc<LogRing> {
        &self.logs
    }

    /// Latencies and counts for `/metrics`.
    pub fn telemetry(&self) -> &crate::telemetry::Telemetry {
        &self.sched.telemetry
    }

    /// When this orchestrator opened.
    pub fn started_at(&self) -> crate::task::Millis {
        self.started_at
    }

    /// How the orchestrator shows itself; `None` until it has started.
    pub fn node_info(&self) -> Option<&NodeInfo> {
        self.node.get()
    }

    /// Records how the orchestrator shows itself (once).
    pub fn set_node_info(&self, info: NodeInfo) {
        let _ = self.node.set(info);
    }

    /// Usage and cost accounting.
    pub fn accounts(&self) -> &Arc<Accounts> {
        &self.accounts
    }

    /// Usage rows of the UTC days `from..=to`.
    pub fn usage(&self, from: u32, to: u32) -> Result<Vec<(UsageKey, UsageTotals)>, ClusterError> {
        Ok(self.store.usage(from, to)?)
    }

    /// A worker connected with these offers: list its models.
    pub(crate) fn note_offers(&self, offers: &[crate::task::Offer]) {
        lock(&self.catalog).record(now_millis(), offers);
    }

    /// Whether a request constrained to `target` can be served now.
    pub async fn capacity(&self, target: &Target) -> Result<Capacity, ClusterError> {
        Ok(models::capacity(&self.live_workers().await?, target))
    }

    /// Revokes a worker: its certificate stops working at the next handshake
    /// and its current connection is closed.
    pub async fn revoke_worker(&self, id: &str) -> Result<WorkerRecord, ClusterError> {
        let rec = lock(&self.registry)
            .revoke_worker(id)
            .ok_or_else(|| ClusterError::NotFound(format!("no enrolled worker {id:?}")))?;
        self.store.commit(vec![Op::PutWorker(rec.clone())]).await?;
        self.sched
            .send(SchedMsg::Revoked {
                id: WorkerId(id.to_owned()),
                reason: "this worker was revoked",
            })
            .await?;
        tracing::warn!(worker = %id, "worker revoked");
        Ok(rec)
    }

    /// The enrolled, unrevoked worker holding the certificate with this
    /// fingerprint.
    pub fn authorized_worker(&self, fingerprint: &[u8; 32]) -> Option<WorkerRecord> {
        lock(&self.registry)
            .worker_for(fingerprint)
            .filter(|r| !r.revoked)
            .cloned()
    }

    /// Answers an enrollment request: checks the protocol version and the
    /// token, signs the CSR, records the worker durably. `Err` when the
    /// store cannot record it now (nothing is kept; the worker should retry).
    pub async fn enroll(&self, req: EnrollRequest) -> Result<EnrollResponse, ClusterError> {
        if let Some(why) = self.store.degraded() {
            return Err(ClusterError::Degraded(why));
        }
        let EnrollRequest::Enroll {
            proto,
            secret,
            csr_der,
            wanted_id,
        } = req;
        let refuse = |reason: String| Ok(EnrollResponse::Refused { reason });
        if proto != PROTOCOL_VERSION {
            return refuse(format!(
                "incompatible protocol version {proto}: this orchestrator speaks {PROTOCOL_VERSION}; install the same d8 version on both machines"
            ));
        }
        let now = now_millis();
        let (worker_id, cert, token_id, ops) = {
            let mut reg = lock(&self.registry);
            let (worker_id, token) = match reg.admit(now, &secret, &wanted_id) {
                Ok(x) => x,
                Err(e) => return refuse(e.to_string()),
            };
            let cert = match self.ca.sign_worker_csr(&csr_der, &worker_id) {
                Ok(c) => c,
                Err(e) => return refuse(format!("bad certificate request: {e}")),
            };
            let rec = WorkerRecord {
                id: worker_id.clone(),
                fingerprint: hex::encode(fingerprint(&cert)),
                enrolled_at: now,
                token_id: token.id.clone(),
                revoked: false,
            };
            reg.record_worker(rec.clone());
            let token_id = token.id.clone();
            (
                worker_id,
                cert,
                token_id,
                vec![Op::PutToken(token), Op::PutWorker(rec)],
            )
        };
        if let Err(e) = self.store.commit(ops).await {
            lock(&self.registry).undo_enrollment(&worker_id, &token_id);
            return Err(e.into());
        }
        tracing::info!(worker = %worker_id, "worker enrolled");
        Ok(EnrollResponse::Enrolled {
            worker_id,
            cert_der: cert.to_vec(),
            ca_der: self.ca.cert_der().to_vec(),
        })
    }

    // ---- join tokens ----

    /// Every token (ids only; secrets are never stored).
    pub fn tokens(&self) -> Vec<TokenInfo> {
        lock(&self.registry).tokens(now_millis())
    }

    /// Creates an extra join token, limited by lifetime and use count.
    pub async fn create_token(
        &self,
        ttl: Option<Duration>,
        max_uses: Option<u32>,
    ) -> Result<(JoinToken, TokenRecord), ClusterError> {
        let (token, rec) = lock(&self.registry).create_token(
            now_millis(),
            self.ca.digest(),
            TokenKind::Extra,
            ttl.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            max_uses,
        );
        self.store.commit(vec![Op::PutToken(rec.clone())]).await?;
        Ok((token, rec))
    }

    /// Revokes a token by id or unique id prefix.
    pub async fn revoke_token(&self, id: &str) -> Result<TokenRecord, ClusterError> {
        let rec = lock(&self.registry).revoke_token(id).ok_or_else(|| {
            ClusterError::NotFound(format!("no token with id (or unique prefix) {id:?}"))
        })?;
        self.store.commit(vec![Op::PutToken(rec.clone())]).await?;
        Ok(rec)
    }

    /// Replaces the standing join token: the old one stops enrolling, the
    /// new one is stored and written to the data dir's `join-token` file.
    pub async fn rotate_join_token(&self) -> Result<JoinToken, ClusterError> {
        let token = rotate(&self.registry, &self.ca, &self.store, &self.cfg.data_dir)
            .await
            .map_err(|e| match e {
                RotateError::Store(e) => ClusterError::Store(e),
                RotateError::File(e) => ClusterError::TokenFile(e),
            })?;
        *lock(&self.join_token) = token.clone();
        tracing::warn!("join token rotated; the previous one no longer enrolls workers");
        Ok(token)
    }
}

enum RotateError {
    Store(StoreError),
    File(FileError),
}

/// The one implementation of rotation: revoke every default token, create
/// a new one, make it durable, then write its file.
async fn rotate(
    registry: &Mutex<Registry>,
    ca: &ClusterCa,
    store: &Store,
    dir: &Path,
) -> Result<JoinToken, RotateError> {
    let (token, ops) = {
        let mut reg = lock(registry);
        let mut ops: Vec<Op> = reg
            .revoke_default_tokens()
            .into_iter()
            .map(Op::PutToken)
            .collect();
        let (token, rec) =
            reg.create_token(now_millis(), ca.digest(), TokenKind::Default, None, None);
        ops.push(Op::PutToken(rec));
        (token, ops)
    };
    store.commit(ops).await.map_err(RotateError::Store)?;
    files::write_file(
        &dir.join(files::JOIN_TOKEN),
        format!("{token}\n").as_bytes(),
        true,
    )
    .map_err(RotateError::File)?;
    Ok(token)
}
