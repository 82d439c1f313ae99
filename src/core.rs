//! The scheduler: every decision the orchestrator makes, as a pure state
//! machine. No tokio, no sockets, no clock reads (quinn-proto style).
//!
//! Inputs are `handle_*(now, …)`; outputs are drained with [`Scheduler::poll_action`]
//! and the next instant something is due with [`Scheduler::poll_timeout`], at
//! which point the shell calls [`Scheduler::handle_timeout`].
//!
//! Queueing: one ordered set per *class* (the set of worker types a task may
//! run on). A task's key is `created_at − priority × aging_step`, so a higher
//! priority jumps ahead by `aging_step` per level, ties are FIFO, and a task
//! waiting long enough overtakes any newer one whatever its priority: nothing
//! starves. Dispatch takes, across classes, the smallest key that has an
//! eligible worker, and gives it to the least-loaded eligible worker.
//!
//! Exactly-once: every dispatch carries an attempt number; a result is accepted
//! only from the worker holding the task's current attempt. Anything else is a
//! late result, dropped and counted.

mod offers;
mod routing;
#[cfg(test)]
mod tests;

pub use routing::{RouteError, Routing};

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use crate::task::{
    Capabilities, ErrorKind, FinishedTask, Millis, Outcome, ProviderCooldown, Route, TaskId,
    TaskSpec, TaskStatus, Tier, WorkerId,
};
use offers::{Choice, OfferState};

/// Scheduler tuning. Every field has a LAN default in [`SchedulerConfig::lan`].
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// A worker silent this long is Suspect: no new tasks.
    pub suspect_after_ms: u64,
    /// A worker silent this long is Dead: its tasks are re-queued.
    pub dead_after_ms: u64,
    /// Priority levels are worth this much waiting time (aging).
    pub aging_step_ms: u64,
    /// Worker losses (crash, disconnect, drain hand-back) a task survives
    /// before it fails: losses are not the task's fault, but a task that
    /// takes every worker down with it must not circulate forever.
    pub max_worker_losses: u32,
    /// Tasks at least this urgent skip the cheapest-tier-first order and go
    /// to the fastest provider measured so far.
    pub urgent_priority: u8,
    /// Pause before a task that failed an attempt (5xx, timeout, connection)
    /// is eligible again; doubles with each failure, up to 30 s.
    pub retry_backoff_ms: u64,
    /// Cooldown for a provider that answered rate-limited or unavailable when
    /// its worker reported no cooldown of its own: bounds retries of one key.
    pub min_cooldown_ms: u64,
    /// Task type routing.
    pub routing: Routing,
}

impl SchedulerConfig {
    /// LAN defaults: workers heartbeat every 500 ms; two missed beats make a
    /// worker Suspect, 3 s of silence make it Dead, so its tasks are running
    /// elsewhere well within 5 s (the original project waited 60 s). A priority
    /// level is worth 30 s of waiting.
    pub fn lan() -> Self {
        SchedulerConfig {
            suspect_after_ms: 1_500,
            dead_after_ms: 3_000,
            aging_step_ms: 30_000,
            max_worker_losses: 10,
            urgent_priority: 8,
            retry_backoff_ms: 500,
            min_cooldown_ms: 1_000,
            routing: Routing::default(),
        }
    }
}

/// What the shell must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Send `spec` as attempt `attempt` of `task` to `worker`.
    Dispatch {
        /// The task.
        task: TaskId,
        /// Attempt number (1-based), echoed back with the result.
        attempt: u32,
        /// Target.
        worker: WorkerId,
        /// What to run.
        spec: Arc<TaskSpec>,
        /// Which of the worker's providers to use.
        route: Route,
    },
    /// Stop attempt `attempt` of `task` on `worker` (cancelled or timed out).
    Abort {
        /// The task.
        task: TaskId,
        /// Attempt to stop.
        attempt: u32,
        /// Where it runs.
        worker: WorkerId,
    },
    /// The task reached a final state: persist, notify waiters. The core has
    /// forgotten it.
    Finished(FinishedTask),
    /// The worker was declared dead: close its connection if still open.
    DisconnectWorker(WorkerId),
}

/// Result of [`Scheduler::handle_result`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResultDisposition {
    /// Recorded: the task finished.
    Finished,
    /// Recorded: the task goes back to the queue.
    Requeued,
    /// Dropped: not the current attempt (late or duplicate).
    Late,
}

/// Result of [`Scheduler::handle_cancel`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelResult {
    /// Cancelled (it was pending or running).
    Cancelled,
    /// The core does not hold it (finished or unknown; the shell knows which).
    NotLive,
}

/// Worker health from heartbeats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// Heard from recently.
    Alive,
    /// Missed heartbeats; no new work.
    Suspect,
}

/// Counters since the store was created (seeded by the shell at start).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Tasks completed.
    pub completed: u64,
    /// Tasks failed.
    pub failed: u64,
    /// Tasks cancelled.
    pub cancelled: u64,
    /// Results dropped because their attempt was superseded.
    pub late_results: u64,
    /// Attempts re-queued (worker loss, timeout, transient error, rate limit).
    pub requeued: u64,
}

/// A snapshot of one worker for stats and the API.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerView {
    /// Id.
    pub id: WorkerId,
    /// Capabilities from Hello.
    pub caps: Capabilities,
    /// Health.
    pub liveness: Liveness,
    /// Draining: finishing work, taking none.
    pub draining: bool,
    /// Tasks running there now.
    pub active: u32,
    /// Tasks it completed since it connected.
    pub completed: u64,
    /// When it connected.
    pub connected_at: Millis,
    /// When it was last heard from.
    pub last_seen: Millis,
    /// No new tasks before this instant: every provider cools down (rate
    /// limited or out of quota). `None` when some provider is ready or
    /// every one cooling down is disabled.
    pub cooldown_until: Option<Millis>,
    /// Providers and models cooling down, time left as of the snapshot.
    pub cooldowns: Vec<ProviderCooldown>,
    /// Smoothed time from dispatch to result per provider, ms.
    pub latency_ms: BTreeMap<String, u64>,
}

/// A snapshot of one live task.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskView {
    /// Pending or Assigned.
    pub status: TaskStatus,
    /// The spec.
    pub spec: Arc<TaskSpec>,
    /// Current worker, when assigned.
    pub worker: Option<WorkerId>,
    /// Attempts dispatched so far.
    pub attempts: u32,
    /// Submission time.
    pub created_at: Millis,
}

/// Aggregate figures for `/api/workers/stats`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stats {
    /// Connected workers.
    pub workers_total: usize,
    /// Workers Alive and not draining.
    pub workers_online: usize,
    /// Workers with at least one task.
    pub workers_busy: usize,
    /// Worker count per worker type.
    pub by_type: BTreeMap<String, usize>,
    /// Tasks waiting.
    pub pending: usize,
    /// Tasks running.
    pub assigned: usize,
    /// Tasks waiting, per priority (index 1-10; 0 unused).
    pub pending_by_priority: [usize; 11],
    /// Counters.
    pub counters: Counters,
}

/// A priority's index in per-priority counts (1-10; out-of-range values,
/// which the HTTP layer refuses, are clamped rather than trusted).
fn band(priority: u8) -> usize {
    usize::from(priority.clamp(1, 10))
}

/// Longest pause between attempts of a failing task.
const MAX_RETRY_BACKOFF_MS: u64 = 30_000;

/// Order in a class queue: `(created_at − priority × aging_step, id)`.
type QueueKey = (i128, TaskId);
/// What a worker must offer to run a task: one of the worker types its
/// routing rule allows (`None` = any), the model it names, the provider it
/// names. Tasks with equal requirements share one queue.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct ClassKey {
    worker_types: Option<Vec<String>>,
    model: Option<String>,
    provider: Option<String>,
    max_tier: Option<Tier>,
    /// An embeddings task: only offers with embedding models serve it.
    embed: bool,
}

impl ClassKey {
    fn of(routing: &Routing, spec: &TaskSpec) -> ClassKey {
        // "auto" (and an empty name) mean: whatever the worker runs by default.
        let named = |s: &Option<String>| {
            s.as_ref()
                .map(|m| m.trim())
                .filter(|m| !m.is_empty() && *m != "auto")
                .map(str::to_owned)
        };
        ClassKey {
            worker_types: routing.allowed(&spec.task_type).map(<[String]>::to_vec),
            model: named(&spec.request.model),
            provider: named(&spec.provider),
            max_tier: spec.max_tier,
            embed: spec.request.embed.is_some(),
        }
    }
}

#[derive(Debug)]
enum State {
    Pending,
    /// Failed an attempt; back in its queue at `until`.
    Backoff {
        until: Millis,
    },
    Assigned {
        worker: WorkerId,
        expires: Millis,
        since: Millis,
        provider: String,
    },
}

#[derive(Debug)]
struct TaskEntry {
    spec: Arc<TaskSpec>,
    created_at: Millis,
    key: QueueKey,
    class: ClassKey,
    state: State,
    /// Dispatches so far; the current attempt's number when assigned.
    attempt: u32,
    /// Attempts that failed in a way that counts against `max_attempts`.
    failures: u32,
    /// Attempts that ended with the worker lost.
    losses: u32,
    last_error: Option<String>,
    last_worker: Option<WorkerId>,
    /// The worker of the last failed attempt: the retry goes elsewhere when
    /// another worker can take it.
    failed_on: Option<WorkerId>,
}

#[derive(Debug)]
struct WorkerEntry {
    caps: Capabilities,
    active: BTreeSet<TaskId>,
    last_seen: Millis,
    connected_at: Millis,
    liveness: Liveness,
    draining: bool,
    offers: OfferState,
    dispatched: u64,
    completed: u64,
}

impl WorkerEntry {
    /// The best offer for a `class` task if this worker can take it now.
    fn can_take(&self, class: &ClassKey, urgent: bool, now: Millis) -> Option<Choice> {
        let able = self.liveness == Liveness::Alive
            && !self.draining
            && (self.active.len() as u64) < u64::from(self.caps.slots)
            && class
                .worker_types
                .as_ref()
                .is_none_or(|types| types.contains(&self.caps.worker_type));
        if !able {
            return None;
        }
        self.offers.choose(&self.caps.offers, class, urgent, now)
    }

    /// When the worker can take work again if every provider cools down.
    fn cooldown_until(&self, now: Millis) -> Option<Millis> {
        let open = ClassKey {
            worker_types: None,
            model: None,
            provider: None,
            max_tier: None,
            embed: false,
        };
        if self.caps.offers.is_empty()
            || self
                .offers
                .choose(&self.caps.offers, &open, false, now)
                .is_some()
        {
            return None;
        }
        self.offers.next_expiry().filter(|t| *t > now)
    }
}

/// Timer entries; validated lazily when they fire.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    AttemptExpiry(TaskId, u32),
    Deadline(TaskId),
    Retry(TaskId),
}

/// The scheduler state machine.
#[derive(Debug)]
pub struct Scheduler {
    cfg: SchedulerConfig,
    /// Boxed: a hash table keeps up to half its slots empty, and an empty
    /// slot of a boxed entry costs 8 bytes instead of a whole entry.
    tasks: HashMap<TaskId, Box<TaskEntry>>,
    queues: BTreeMap<ClassKey, BTreeSet<QueueKey>>,
    workers: BTreeMap<WorkerId, WorkerEntry>,
    timers: BTreeSet<(Millis, Timer)>,
    actions: VecDeque<Action>,
    counters: Counters,
    assigned: usize,
    /// Unfinished tasks per priority (index 1-10).
    unfinished_by_priority: [usize; 11],
    /// Running tasks per priority.
    assigned_by_priority: [usize; 11],
    /// No new assignments (the store cannot record results).
    paused: bool,
}

impl Scheduler {
    /// An empty scheduler; `counters` carries totals over from the store.
    pub fn new(cfg: SchedulerConfig, counters: Counters) -> Self {
        Scheduler {
            cfg,
            tasks: HashMap::new(),
            queues: BTreeMap::new(),
            workers: BTreeMap::new(),
            timers: BTreeSet::new(),
            actions: VecDeque::new(),
            counters,
            assigned: 0,
            unfinished_by_priority: [0; 11],
            assigned_by_priority: [0; 11],
            paused: false,
        }
    }

    /// Stops or resumes assigning tasks. The shell pauses while the store
    /// cannot record results (a full disk): work that runs meanwhile could
    /// finish without its result being kept. Running tasks go on; resuming
    /// assigns at once.
    pub fn set_paused(&mut self, now: Millis, paused: bool) {
        self.paused = paused;
        if !paused {
            self.schedule(now);
        }
    }

    /// Whether assignments are paused.
    pub fn paused(&self) -> bool {
        self.paused
    }

    /// Accepts a task (new, or reloaded from the store after a restart with
    /// its original `created_at`). A duplicate id is ignored: the first wins.
    pub fn handle_submit(
        &mut self,
        now: Millis,
        id: TaskId,
        spec: Arc<TaskSpec>,
        created_at: Millis,
    ) {
        if self.tasks.contains_key(&id) {
            return;
        }
        let priority = i128::from(spec.priority.clamp(1, 10));
        let key = (
            i128::from(created_at.0) - priority * i128::from(self.cfg.aging_step_ms),
            id,
        );
        let class = ClassKey::of(&self.cfg.routing, &spec);
        if let Some(deadline) = spec.deadline {
            self.timers.insert((deadline, Timer::Deadline(id)));
        }
        self.queues.entry(class.clone()).or_default().insert(key);
        self.unfinished_by_priority[band(spec.priority)] += 1;
        self.tasks.insert(
            id,
            Box::new(TaskEntry {
                spec,
                created_at,
                key,
                class,
                state: State::Pending,
                attempt: 0,
                failures: 0,
                losses: 0,
                last_error: None,
                last_worker: None,
                failed_on: None,
            }),
        );
        if self.tasks[&id].spec.deadline.is_some_and(|d| d <= now) {
            self.handle_timeout(now);
        }
        self.schedule(now);
    }

    /// A worker connected (or reconnected: its old session's tasks are re-queued).
    pub fn handle_worker_up(&mut self, now: Millis, id: WorkerId, caps: Capabilities) {
        if self.workers.contains_key(&id) {
            self.remove_worker(now, &id);
        }
        self.workers.insert(
            id,
            WorkerEntry {
                caps,
                active: BTreeSet::new(),
                last_seen: now,
                connected_at: now,
                liveness: Liveness::Alive,
                draining: false,
                offers: OfferState::default(),
                dispatched: 0,
                completed: 0,
            },
        );
        self.schedule(now);
    }

    /// A heartbeat (or any frame) from a worker.
    pub fn handle_heartbeat(&mut self, now: Millis, id: &WorkerId) {
        if let Some(w) = self.workers.get_mut(id) {
            w.last_seen = now;
            if w.liveness != Liveness::Alive {
                w.liveness = Liveness::Alive;
                self.schedule(now);
            }
        }
    }

    /// The worker's report of its providers cooling down (with a heartbeat or a
    /// result); replaces the previous one.
    pub fn handle_cooldowns(&mut self, now: Millis, id: &WorkerId, report: &[ProviderCooldown]) {
        if let Some(w) = self.workers.get_mut(id)
            && w.offers.set_report(now, report)
        {
            self.schedule(now);
        }
    }

    /// The worker asked to drain: it keeps its tasks but gets no new ones.
    pub fn handle_drain(&mut self, now: Millis, id: &WorkerId) {
        if let Some(w) = self.workers.get_mut(id) {
            w.draining = true;
            w.last_seen = now;
        }
    }

    /// The worker's connection is gone: its tasks go back to the queue without
    /// consuming an attempt.
    pub fn handle_worker_down(&mut self, now: Millis, id: &WorkerId) {
        if self.workers.contains_key(id) {
            self.remove_worker(now, id);
            self.schedule(now);
        }
    }

    /// Counts `task` as no longer running (its state is changed by the caller).
    fn unassign(&mut self, task: TaskId) {
        self.assigned -= 1;
        if let Some(t) = self.tasks.get(&task) {
            self.assigned_by_priority[band(t.spec.priority)] -= 1;
        }
    }

    fn remove_worker(&mut self, now: Millis, id: &WorkerId) {
        let Some(w) = self.workers.remove(id) else {
            return;
        };
        for task in w.active {
            self.unassign(task);
            self.lose(now, task, "worker lost".to_owned());
        }
    }

    /// An attempt ended with its worker gone: re-queue without consuming an
    /// attempt, unless the task has now lost too many workers.
    fn lose(&mut self, now: Millis, task: TaskId, why: String) -> ResultDisposition {
        let Some(t) = self.tasks.get_mut(&task) else {
            return ResultDisposition::Late;
        };
        t.losses += 1;
        if t.losses > self.cfg.max_worker_losses {
            let msg = format!("lost {} workers while running it (last: {why})", t.losses);
            self.finish(now, task, TaskStatus::Failed, None, Some(msg));
            ResultDisposition::Finished
        } else {
            self.counters.requeued += 1;
            self.requeue(now, task, Some(why));
            ResultDisposition::Requeued
        }
    }

    /// Puts an assigned task (already removed from its worker) back in its queue.
    fn requeue(&mut self, _now: Millis, id: TaskId, why: Option<String>) {
        if let Some(t) = self.tasks.get_mut(&id) {
            if let State::Assigned { expires, .. } = t.state {
                self.timers
                    .remove(&(expires, Timer::AttemptExpiry(id, t.attempt)));
            }
            t.state = State::Pending;
            if why.is_some() {
                t.last_error = why;
            }
            self.queues
                .entry(t.class.clone())
                .or_default()
                .insert(t.key);
        }
    }

    /// A result for attempt `attempt` of `task`, from `worker`.
    pub fn handle_result(
        &mut self,
        now: Millis,
        worker: &WorkerId,
        task: TaskId,
        attempt: u32,
        outcome: Outcome,
    ) -> ResultDisposition {
        let route = self.tasks.get_mut(&task).and_then(|t| match &mut t.state {
            State::Assigned {
                worker: w,
                since,
                provider,
                ..
            } if t.attempt == attempt && w == worker => Some((*since, std::mem::take(provider))),
            _ => None,
        });
        let Some((since, provider)) = route else {
            self.counters.late_results += 1;
            return ResultDisposition::Late;
        };
        self.unassign(task);
        if let Some(w) = self.workers.get_mut(worker) {
            w.active.remove(&task);
            w.last_seen = now;
        }
        let disposition = match outcome {
            Outcome::Ok(output) => {
                if let Some(w) = self.workers.get_mut(worker) {
                    w.completed += 1;
                    w.offers.record_latency(&output.provider, now.since(since));
                }
                self.finish(now, task, TaskStatus::Completed, Some(output), None);
                ResultDisposition::Finished
            }
            Outcome::Err(err) => match err.kind {
                ErrorKind::Permanent => {
                    self.finish(now, task, TaskStatus::Failed, None, Some(err.message));
                    ResultDisposition::Finished
                }
                ErrorKind::RateLimited { .. } | ErrorKind::Unavailable => {
                    let cooldown = match err.kind {
                        ErrorKind::RateLimited { retry_after_ms } => retry_after_ms,
                        _ => 0,
                    }
                    .max(self.cfg.min_cooldown_ms);
                    if let Some(w) = self.workers.get_mut(worker) {
                        w.offers
                            .cool_down_unless_reported(now, &provider, now.plus(cooldown));
                    }
                    self.counters.requeued += 1;
                    self.requeue(now, task, Some(err.message));
                    ResultDisposition::Requeued
                }
                ErrorKind::WorkerLost => self.lose(now, task, err.message),
                ErrorKind::Transient | ErrorKind::Timeout => {
                    self.fail_attempt(now, task, err.message)
                }
            },
        };
        self.schedule(now);
        disposition
    }

    /// Counts a failed attempt; re-queues or fails the task.
    fn fail_attempt(&mut self, now: Millis, task: TaskId, message: String) -> ResultDisposition {
        let Some(t) = self.tasks.get_mut(&task) else {
            return ResultDisposition::Late;
        };
        t.failures += 1;
        t.failed_on = t.last_worker.clone();
        if t.failures >= t.spec.max_attempts.max(1) {
            let msg = format!("failed after {} attempts: {message}", t.failures);
            self.finish(now, task, TaskStatus::Failed, None, Some(msg));
            ResultDisposition::Finished
        } else {
            self.counters.requeued += 1;
            let shift = (t.failures - 1).min(16);
            let delay = self
                .cfg
                .retry_backoff_ms
                .saturating_mul(1 << shift)
                .min(MAX_RETRY_BACKOFF_MS);
            if delay == 0 {
                self.requeue(now, task, Some(message));
            } else {
                if let State::Assigned { expires, .. } = t.state {
                    self.timers
                        .remove(&(expires, Timer::AttemptExpiry(task, t.attempt)));
                }
                let until = now.plus(delay);
                t.state = State::Backoff { until };
                t.last_error = Some(message);
                self.timers.insert((until, Timer::Retry(task)));
            }
            ResultDisposition::Requeued
        }
    }

    /// Cancels a live task.
    pub fn handle_cancel(&mut self, now: Millis, task: TaskId) -> CancelResult {
        if !self.tasks.contains_key(&task) {
            return CancelResult::NotLive;
        }
        self.unassign_or_dequeue(task, true);
        self.finish(
            now,
            task,
            TaskStatus::Cancelled,
            None,
            Some("cancelled".to_owned()),
        );
        self.schedule(now);
        CancelResult::Cancelled
    }

    /// Takes a task out of its queue or off its worker (emitting Abort when
    /// `abort` and it was running).
    fn unassign_or_dequeue(&mut self, task: TaskId, abort: bool) {
        let Some(t) = self.tasks.get_mut(&task) else {
            return;
        };
        match std::mem::replace(&mut t.state, State::Pending) {
            State::Pending => {
                if let Some(q) = self.queues.get_mut(&t.class) {
                    q.remove(&t.key);
                }
            }
            State::Backoff { until } => {
                self.timers.remove(&(until, Timer::Retry(task)));
            }
            State::Assigned {
                worker, expires, ..
            } => {
                self.assigned -= 1;
                self.assigned_by_priority[band(t.spec.priority)] -= 1;
                self.timers
                    .remove(&(expires, Timer::AttemptExpiry(task, t.attempt)));
                if let Some(w) = self.workers.get_mut(&worker) {
                    w.active.remove(&task);
                }
                if abort {
                    self.actions.push_back(Action::Abort {
                        task,
                        attempt: t.attempt,
                        worker,
                    });
                }
            }
        }
    }

    /// Removes the task from the core and emits `Finished`. The caller has
    /// already taken it out of queues and workers.
    fn finish(
        &mut self,
        now: Millis,
        task: TaskId,
        status: TaskStatus,
        output: Option<crate::task::TaskOutput>,
        error: Option<String>,
    ) {
        let Some(t) = self.tasks.remove(&task) else {
            return;
        };
        self.unfinished_by_priority[band(t.spec.priority)] -= 1;
        // Timers die with the task, so they never outnumber live tasks.
        match t.state {
            State::Assigned { expires, .. } => {
                self.timers
                    .remove(&(expires, Timer::AttemptExpiry(task, t.attempt)));
            }
            State::Backoff { until } => {
                self.timers.remove(&(until, Timer::Retry(task)));
            }
            State::Pending => {}
        }
        if let Some(deadline) = t.spec.deadline {
            self.timers.remove(&(deadline, Timer::Deadline(task)));
        }
        match status {
            TaskStatus::Completed => self.counters.completed += 1,
            TaskStatus::Failed => self.counters.failed += 1,
            TaskStatus::Cancelled => self.counters.cancelled += 1,
            TaskStatus::Pending | TaskStatus::Assigned => {}
        }
        self.actions.push_back(Action::Finished(FinishedTask {
            id: task,
            status,
            task_type: t.spec.task_type.clone(),
            priority: t.spec.priority,
            output,
            error: error.or(if status == TaskStatus::Failed {
                t.last_error
            } else {
                None
            }),
            worker: t.last_worker,
            agent_id: t.spec.agent_id.clone(),
            attempts: t.attempt,
            created_at: t.created_at,
            completed_at: now,
        }));
    }

    /// Fires everything due at `now`: liveness, attempt timeouts, deadlines,
    /// cooldown ends.
    pub fn handle_timeout(&mut self, now: Millis) {
        let mut dead = Vec::new();
        for (id, w) in &mut self.workers {
            let silent = now.since(w.last_seen);
            if silent >= self.cfg.dead_after_ms {
                dead.push(id.clone());
            } else if silent >= self.cfg.suspect_after_ms {
                w.liveness = Liveness::Suspect;
            }
            w.offers.expire(now);
        }
        for id in dead {
            self.remove_worker(now, &id);
            self.actions.push_back(Action::DisconnectWorker(id));
        }
        while let Some((at, timer)) = self.timers.first().cloned() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            match timer {
                Timer::AttemptExpiry(task, attempt) => {
                    let due = self.tasks.get(&task).is_some_and(|t| {
                        t.attempt == attempt
                            && matches!(t.state, State::Assigned { expires, .. } if expires <= now)
                    });
                    if due {
                        self.unassign_or_dequeue(task, true);
                        self.fail_attempt(now, task, format!("attempt {attempt} timed out"));
                    }
                }
                Timer::Retry(task) => {
                    if let Some(t) = self.tasks.get_mut(&task)
                        && matches!(t.state, State::Backoff { until } if until <= now)
                    {
                        t.state = State::Pending;
                        self.queues
                            .entry(t.class.clone())
                            .or_default()
                            .insert(t.key);
                    }
                }
                Timer::Deadline(task) => {
                    if self.tasks.contains_key(&task) {
                        self.unassign_or_dequeue(task, true);
                        self.finish(
                            now,
                            task,
                            TaskStatus::Failed,
                            None,
                            Some("deadline exceeded".to_owned()),
                        );
                    }
                }
            }
        }
        self.schedule(now);
    }

    /// The next instant [`Scheduler::handle_timeout`] has work to do.
    pub fn poll_timeout(&self) -> Option<Millis> {
        let timers = self.timers.first().map(|(at, _)| *at);
        let workers = self
            .workers
            .values()
            .flat_map(|w| {
                let liveness = match w.liveness {
                    Liveness::Alive => w.last_seen.plus(self.cfg.suspect_after_ms),
                    Liveness::Suspect => w.last_seen.plus(self.cfg.dead_after_ms),
                };
                [Some(liveness), w.offers.next_expiry()]
            })
            .flatten()
            .min();
        timers.into_iter().chain(workers).min()
    }

    /// The next thing the shell must do.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// Assigns queued tasks while some eligible worker has a free slot.
    fn schedule(&mut self, now: Millis) {
        if self.paused {
            return;
        }
        loop {
            let mut best: Option<(QueueKey, ClassKey, WorkerId, Route)> = None;
            for (class, queue) in &self.queues {
                let Some(head) = queue.first() else { continue };
                if best.as_ref().is_some_and(|(k, ..)| k <= head) {
                    continue;
                }
                let head_task = self.tasks.get(&head.1);
                let urgent = head_task.is_some_and(|t| t.spec.priority >= self.cfg.urgent_priority);
                let avoid = head_task.and_then(|t| t.failed_on.as_ref());
                if let Some((worker, route)) = self.pick_worker(class, urgent, avoid, now) {
                    best = Some((*head, class.clone(), worker, route));
                }
            }
            let Some((key, class, worker, route)) = best else {
                break;
            };
            if let Some(q) = self.queues.get_mut(&class) {
                q.remove(&key);
            }
            self.assign(now, key.1, worker, route);
        }
        self.queues.retain(|_, q| !q.is_empty());
    }

    /// The eligible worker with the best offer, never `avoid` (where the task
    /// just failed) while another can take it: for an urgent task the
    /// fastest measured provider, otherwise the cheapest tier; then least
    /// loaded (lowest active/slots, then most free slots), then fewest
    /// dispatches so far (spreads ties), then id.
    fn pick_worker(
        &self,
        class: &ClassKey,
        urgent: bool,
        avoid: Option<&WorkerId>,
        now: Millis,
    ) -> Option<(WorkerId, Route)> {
        self.workers
            .iter()
            .filter_map(|(id, w)| w.can_take(class, urgent, now).map(|c| (id, w, c)))
            .min_by(|(ia, a, ca), (ib, b, cb)| {
                let la = a.active.len() as u64 * u64::from(b.caps.slots);
                let lb = b.active.len() as u64 * u64::from(a.caps.slots);
                let free_a = u64::from(a.caps.slots) - a.active.len() as u64;
                let free_b = u64::from(b.caps.slots) - b.active.len() as u64;
                (Some(*ia) == avoid, ca.speed, ca.tier)
                    .cmp(&(Some(*ib) == avoid, cb.speed, cb.tier))
                    .then(la.cmp(&lb))
                    .then(free_b.cmp(&free_a))
                    .then(a.dispatched.cmp(&b.dispatched))
                    .then(ia.cmp(ib))
            })
            .map(|(id, w, choice)| {
                let route = OfferState::route(&w.caps.offers, choice, class, urgent);
                (id.clone(), route)
            })
    }

    fn assign(&mut self, now: Millis, task: TaskId, worker: WorkerId, route: Route) {
        let (Some(t), Some(w)) = (self.tasks.get_mut(&task), self.workers.get_mut(&worker)) else {
            return;
        };
        t.attempt += 1;
        let expires = now.plus(t.spec.attempt_timeout_ms.max(1));
        t.state = State::Assigned {
            worker: worker.clone(),
            expires,
            since: now,
            provider: route.prefer.clone(),
        };
        t.last_worker = Some(worker.clone());
        w.active.insert(task);
        w.dispatched += 1;
        self.assigned += 1;
        self.assigned_by_priority[band(t.spec.priority)] += 1;
        self.timers
            .insert((expires, Timer::AttemptExpiry(task, t.attempt)));
        self.actions.push_back(Action::Dispatch {
            task,
            attempt: t.attempt,
            worker,
            spec: t.spec.clone(),
            route,
        });
    }

    /// A live task, if the core holds it.
    pub fn task(&self, id: TaskId) -> Option<TaskView> {
        self.tasks.get(&id).map(|t| TaskView {
            status: match t.state {
                State::Pending | State::Backoff { .. } => TaskStatus::Pending,
                State::Assigned { .. } => TaskStatus::Assigned,
            },
            spec: t.spec.clone(),
            worker: match &t.state {
                State::Assigned { worker, .. } => Some(worker.clone()),
                State::Pending | State::Backoff { .. } => None,
            },
            attempts: t.attempt,
            created_at: t.created_at,
        })
    }

    /// When a live task was accepted.
    pub fn created_at(&self, id: TaskId) -> Option<Millis> {
        self.tasks.get(&id).map(|t| t.created_at)
    }

    /// Counts a task that completed without running here (answered from
    /// the result cache), so the counters match the store's totals.
    pub fn handle_completed_elsewhere(&mut self) {
        self.counters.completed += 1;
    }

    /// Every live task (waiting or running), in no particular order.
    pub fn live_tasks(&self) -> Vec<(TaskId, TaskView)> {
        self.tasks
            .keys()
            .filter_map(|id| Some((*id, self.task(*id)?)))
            .collect()
    }

    /// All connected workers, cooldowns as of `now`.
    pub fn workers(&self, now: Millis) -> Vec<WorkerView> {
        self.workers
            .iter()
            .map(|(id, w)| WorkerView {
                id: id.clone(),
                caps: w.caps.clone(),
                liveness: w.liveness,
                draining: w.draining,
                active: w.active.len() as u32,
                completed: w.completed,
                connected_at: w.connected_at,
                last_seen: w.last_seen,
                cooldown_until: w.cooldown_until(now),
                cooldowns: w.offers.report(now),
                latency_ms: w.offers.latency_ms.clone(),
            })
            .collect()
    }

    /// True when `id` is connected.
    pub fn has_worker(&self, id: &WorkerId) -> bool {
        self.workers.contains_key(id)
    }

    /// Aggregate figures.
    pub fn stats(&self) -> Stats {
        let mut by_type = BTreeMap::new();
        for w in self.workers.values() {
            *by_type.entry(w.caps.worker_type.clone()).or_insert(0) += 1;
        }
        Stats {
            workers_total: self.workers.len(),
            workers_online: self
                .workers
                .values()
                .filter(|w| w.liveness == Liveness::Alive && !w.draining)
                .count(),
            workers_busy: self
                .workers
                .values()
                .filter(|w| !w.active.is_empty())
                .count(),
            by_type,
            pending: self.tasks.len() - self.assigned,
            assigned: self.assigned,
            pending_by_priority: std::array::from_fn(|p| {
                self.unfinished_by_priority[p] - self.assigned_by_priority[p]
            }),
            counters: self.counters,
        }
    }

    /// Checks internal invariants; used by tests after every step.
    #[cfg(test)]
    fn check_invariants(&self) {
        let mut assigned = 0;
        let mut backing_off = 0;
        for (id, t) in &self.tasks {
            match &t.state {
                State::Pending => {
                    assert!(
                        self.queues
                            .get(&t.class)
                            .is_some_and(|q| q.contains(&t.key)),
                        "pending task {id} not queued"
                    );
                }
                State::Backoff { until } => {
                    backing_off += 1;
                    assert!(self.timers.contains(&(*until, Timer::Retry(*id))));
                }
                State::Assigned { worker, .. } => {
                    assigned += 1;
                    let w = self
                        .workers
                        .get(worker)
                        .expect("assigned to a known worker");
                    assert!(w.active.contains(id));
                }
            }
        }
        assert_eq!(assigned, self.assigned);
        let (mut unfinished, mut running) = ([0usize; 11], [0usize; 11]);
        for t in self.tasks.values() {
            unfinished[band(t.spec.priority)] += 1;
            if matches!(t.state, State::Assigned { .. }) {
                running[band(t.spec.priority)] += 1;
            }
        }
        assert_eq!(
            unfinished, self.unfinished_by_priority,
            "unfinished by priority"
        );
        assert_eq!(running, self.assigned_by_priority, "running by priority");
        let queued: usize = self.queues.values().map(BTreeSet::len).sum();
        assert_eq!(queued + assigned + backing_off, self.tasks.len());
        for w in self.workers.values() {
            assert!(w.active.len() as u64 <= u64::from(w.caps.slots));
        }
        let with_deadline = self
            .tasks
            .values()
            .filter(|t| t.spec.deadline.is_some())
            .count();
        assert_eq!(
            self.timers.len(),
            assigned + with_deadline + backing_off,
            "no stale timers"
        );
    }
}
