//! The scheduler actor: the only owner of the [`Scheduler`] core.
//!
//! Everything that changes scheduling state arrives as a [`SchedMsg`]; the
//! actor feeds it to the core with the current time, then carries out the
//! core's actions: opening a QUIC stream per dispatched attempt, aborting
//! streams, closing dead workers' connections, persisting finished tasks and
//! waking long-polling clients.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use quinn::Connection;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::events::{Event, EventBus};
use super::live_output::LiveOutput;
use super::now_millis;
use super::usage::Accounts;
use crate::core::{Action, CancelResult, Scheduler, Stats, WorkerView};
use crate::store::{Op, PendingTask, Store, StoreError};
use crate::task::{Capabilities, ErrorKind, Outcome, TaskError, TaskId, TaskSpec, WorkerId};
use crate::telemetry::Telemetry;
use crate::transport::{self, STREAM_ABORTED, close};
use crate::wire::{ProviderCooldown, Route, TaskAssignRef, TaskReply};

pub use super::task_state::TaskState;

/// Answer to a query.
#[derive(Debug)]
pub enum QueryReply {
    /// Known to the actor (live, or finished and not yet persisted).
    State(TaskState),
    /// Ask the store.
    NotLive,
    /// Live; the receiver fires when it finishes.
    Waiting(TaskState, oneshot::Receiver<TaskState>),
}

/// Messages to the actor.
pub(crate) enum SchedMsg {
    Submit(Vec<PendingTask>),
    Result {
        worker: WorkerId,
        task: TaskId,
        attempt: u32,
        outcome: Outcome,
        /// The worker's providers cooling down, when the worker said.
        cooldowns: Option<Vec<ProviderCooldown>>,
    },
    WorkerUp {
        id: WorkerId,
        caps: Capabilities,
        conn: Connection,
    },
    WorkerDown {
        id: WorkerId,
        conn_id: usize,
    },
    Heartbeat(WorkerId, Vec<ProviderCooldown>),
    Drain(WorkerId),
    Query {
        id: TaskId,
        wait: bool,
        reply: oneshot::Sender<QueryReply>,
    },
    Cancel {
        id: TaskId,
        reply: oneshot::Sender<CancelResult>,
    },
    Stats(oneshot::Sender<Stats>),
    /// Every task not yet durably finished, as clients see it.
    Live(oneshot::Sender<Vec<TaskState>>),
    Workers(oneshot::Sender<Vec<WorkerView>>),
    /// The worker was revoked: close its connection, re-queue its tasks.
    Revoked {
        id: WorkerId,
        reason: &'static str,
    },
    Persisted(Vec<TaskId>),
    /// A task was recorded as completed without running (a cache hit).
    CompletedElsewhere(Box<TaskState>),
}

/// A cloneable handle to the actor.
#[derive(Clone)]
pub(crate) struct SchedHandle {
    tx: mpsc::Sender<SchedMsg>,
    /// Streamed output of running tasks (published by attempt runners).
    pub(crate) live_output: LiveOutput,
    /// Tasks accepted and not yet finished: raised by the cluster when it
    /// accepts, lowered here when a task finishes (the queue bound).
    pub(crate) unfinished: Arc<AtomicU64>,
    /// Changes, for live listeners.
    pub(crate) events: EventBus,
    /// Latencies and counts for `/metrics`.
    pub(crate) telemetry: Arc<Telemetry>,
}

/// The actor is gone (orchestrator shutting down).
#[derive(Debug, thiserror::Error)]
#[error("orchestrator is shutting down")]
pub struct Gone;

impl SchedHandle {
    pub(crate) async fn send(&self, msg: SchedMsg) -> Result<(), Gone> {
        self.tx.send(msg).await.map_err(|_| Gone)
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> SchedMsg) -> Result<T, Gone> {
        let (tx, rx) = oneshot::channel();
        self.send(make(tx)).await?;
        rx.await.map_err(|_| Gone)
    }

    pub(crate) async fn live(&self) -> Result<Vec<TaskState>, Gone> {
        self.ask(SchedMsg::Live).await
    }

    pub(crate) async fn query(&self, id: TaskId, wait: bool) -> Result<QueryReply, Gone> {
        self.ask(|reply| SchedMsg::Query { id, wait, reply }).await
    }

    pub(crate) async fn cancel(&self, id: TaskId) -> Result<CancelResult, Gone> {
        self.ask(|reply| SchedMsg::Cancel { id, reply }).await
    }

    pub(crate) async fn stats(&self) -> Result<Stats, Gone> {
        self.ask(SchedMsg::Stats).await
    }

    pub(crate) async fn workers(&self) -> Result<Vec<WorkerView>, Gone> {
        self.ask(SchedMsg::Workers).await
    }
}

/// A live task as clients see it.
fn live_state(id: TaskId, view: crate::core::TaskView) -> TaskState {
    TaskState {
        task_id: id,
        status: view.status.as_str(),
        task_type: view.spec.task_type.clone(),
        priority: view.spec.priority,
        result: None,
        error: None,
        worker_id: view.worker,
        agent_id: view.spec.agent_id.clone(),
        attempts: view.attempts,
        created_at: view.created_at.0,
        completed_at: None,
    }
}

/// What clients see of a finished task whose record is not yet durable: the
/// task as not finished. A completion is visible only once a crash can no
/// longer lose it, so no task whose result a client has seen runs again
/// after a restart; waiters get the final state when the store has it.
fn not_yet_durable(done: &TaskState) -> TaskState {
    TaskState {
        // It was running, or (cancelled before it ran) waiting.
        status: if done.worker_id.is_some() {
            "assigned"
        } else {
            "pending"
        },
        result: None,
        error: None,
        completed_at: None,
        ..done.clone()
    }
}

pub(crate) struct Actor {
    core: Scheduler,
    rx: mpsc::Receiver<SchedMsg>,
    handle: SchedHandle,
    store: Store,
    conns: HashMap<WorkerId, Connection>,
    running: HashMap<(TaskId, u32), CancellationToken>,
    /// Final states of tasks on their way to the store (see
    /// [`not_yet_durable`]).
    finished: HashMap<TaskId, TaskState>,
    waiters: HashMap<TaskId, Vec<oneshot::Sender<TaskState>>>,
    to_persist: Vec<Op>,
    /// Charges completed tasks' usage (with their result, atomically).
    accounts: Arc<Accounts>,
    /// Each worker's last published rests (which, and why), while anyone listens.
    rests: HashMap<WorkerId, Vec<RestShape>>,
    shutdown: CancellationToken,
}

/// What identifies one rest for listeners: provider, model, disabled, reason
/// (not the time left).
type RestShape = (String, Option<String>, bool, crate::task::RestReason);

/// Messages taken per wake-up before actions are carried out.
const BATCH: usize = 512;

impl Actor {
    pub(crate) fn new(
        core: Scheduler,
        store: Store,
        accounts: Arc<Accounts>,
        shutdown: CancellationToken,
    ) -> (Actor, SchedHandle) {
        let (tx, rx) = mpsc::channel(65_536);
        let handle = SchedHandle {
            tx,
            live_output: LiveOutput::default(),
            unfinished: Arc::default(),
            events: EventBus::default(),
            telemetry: Arc::default(),
        };
        (
            Actor {
                core,
                rx,
                handle: handle.clone(),
                store,
                conns: HashMap::new(),
                running: HashMap::new(),
                finished: HashMap::new(),
                waiters: HashMap::new(),
                to_persist: Vec::new(),
                accounts,
                rests: HashMap::new(),
                shutdown,
            },
            handle,
        )
    }

    pub(crate) async fn run(mut self) {
        loop {
            let sleep = self
                .core
                .poll_timeout()
                .map_or(Duration::from_secs(3_600), |at| {
                    Duration::from_millis(at.since(now_millis()))
                });
            tokio::select! {
                msg = self.rx.recv() => {
                    let Some(msg) = msg else { break };
                    // Actions are carried out after every message, so a query
                    // never sees a task the core has finished but the actor
                    // has not yet recorded; only store writes are batched.
                    self.handle(msg);
                    self.act();
                    for _ in 0..BATCH {
                        match self.rx.try_recv() {
                            Ok(msg) => {
                                self.handle(msg);
                                self.act();
                            }
                            Err(_) => break,
                        }
                    }
                }
                () = tokio::time::sleep(sleep) => {
                    self.core.handle_timeout(now_millis());
                    self.act();
                }
                () = self.shutdown.cancelled() => break,
            }
            self.flush_persist();
        }
        for (_, conn) in self.conns.drain() {
            conn.close(close::NORMAL, b"orchestrator shutting down");
        }
        self.flush_persist();
        if let Err(e) = self.store.flush().await {
            tracing::error!(error = %e, "final store flush failed");
        }
    }

    fn handle(&mut self, msg: SchedMsg) {
        let now = now_millis();
        // No new work while results could not be recorded; resumed as soon
        // as the store works (it probes every second; heartbeats bring the
        // next message within half a second).
        let failing = self.store.degraded().is_some();
        if failing != self.core.paused() {
            tracing::debug!(paused = failing, "dispatch follows the store's state");
            self.core.set_paused(now, failing);
        }
        match msg {
            SchedMsg::Submit(tasks) => {
                for t in tasks {
                    // Accepted: the scheduler may dispatch it at once, so
                    // the event is made before it does.
                    self.handle.events.publish(|| {
                        Event::Task(Box::new(TaskState {
                            task_id: t.id,
                            status: "pending",
                            task_type: t.spec.task_type.clone(),
                            priority: t.spec.priority,
                            result: None,
                            error: None,
                            worker_id: None,
                            agent_id: t.spec.agent_id.clone(),
                            attempts: 0,
                            created_at: t.created_at.0,
                            completed_at: None,
                        }))
                    });
                    self.core
                        .handle_submit(now, t.id, Arc::new(t.spec), t.created_at);
                }
            }
            SchedMsg::Result {
                worker,
                task,
                attempt,
                outcome,
                cooldowns,
            } => {
                self.running.remove(&(task, attempt));
                if let Some(report) = cooldowns {
                    self.core.handle_cooldowns(now, &worker, &report);
                    self.publish_rests(&worker, &report);
                }
                self.core
                    .handle_result(now, &worker, task, attempt, outcome);
            }
            SchedMsg::WorkerUp { id, caps, conn } => {
                tracing::info!(worker = %id, worker_type = %caps.worker_type, slots = caps.slots, addr = %conn.remote_address(), "worker connected");
                if let Some(old) = self.conns.insert(id.clone(), conn) {
                    old.close(close::REPLACED, b"replaced by a newer connection");
                }
                self.publish_worker(&id, "connected");
                self.core.handle_worker_up(now, id, caps);
            }
            SchedMsg::WorkerDown { id, conn_id } => {
                if self
                    .conns
                    .get(&id)
                    .is_some_and(|c| c.stable_id() == conn_id)
                {
                    self.conns.remove(&id);
                    tracing::info!(worker = %id, "worker disconnected");
                    self.core.handle_worker_down(now, &id);
                    self.publish_worker(&id, "disconnected");
                }
            }
            SchedMsg::Heartbeat(id, cooldowns) => {
                self.core.handle_heartbeat(now, &id);
                self.core.handle_cooldowns(now, &id, &cooldowns);
                self.publish_rests(&id, &cooldowns);
            }
            SchedMsg::Drain(id) => {
                tracing::info!(worker = %id, "worker draining");
                self.core.handle_drain(now, &id);
                self.publish_worker(&id, "draining");
            }
            SchedMsg::Live(reply) => {
                let mut list: Vec<TaskState> = self
                    .core
                    .live_tasks()
                    .into_iter()
                    .map(|(id, view)| live_state(id, view))
                    .collect();
                list.extend(self.finished.values().map(not_yet_durable));
                let _ = reply.send(list);
            }
            SchedMsg::Query { id, wait, reply } => {
                let answer = if let Some(view) = self.core.task(id) {
                    let state = live_state(id, view);
                    if wait {
                        let (tx, rx) = oneshot::channel();
                        let list = self.waiters.entry(id).or_default();
                        list.retain(|w| !w.is_closed());
                        list.push(tx);
                        QueryReply::Waiting(state, rx)
                    } else {
                        QueryReply::State(state)
                    }
                } else if let Some(done) = self.finished.get(&id) {
                    let shown = not_yet_durable(done);
                    if wait {
                        let (tx, rx) = oneshot::channel();
                        self.waiters.entry(id).or_default().push(tx);
                        QueryReply::Waiting(shown, rx)
                    } else {
                        QueryReply::State(shown)
                    }
                } else {
                    QueryReply::NotLive
                };
                let _ = reply.send(answer);
            }
            SchedMsg::Cancel { id, reply } => {
                let _ = reply.send(self.core.handle_cancel(now, id));
            }
            SchedMsg::Stats(reply) => {
                let _ = reply.send(self.core.stats());
            }
            SchedMsg::Workers(reply) => {
                let _ = reply.send(self.core.workers(now));
            }
            SchedMsg::Revoked { id, reason } => {
                if let Some(conn) = self.conns.remove(&id) {
                    conn.close(close::UNAUTHORIZED, reason.as_bytes());
                }
                self.core.handle_worker_down(now, &id);
                self.publish_worker(&id, "revoked");
            }
            SchedMsg::CompletedElsewhere(state) => {
                self.core.handle_completed_elsewhere();
                self.handle.events.publish(|| Event::Task(state));
            }
            SchedMsg::Persisted(ids) => {
                // Durable now: the completion becomes visible.
                for id in ids {
                    let Some(done) = self.finished.remove(&id) else {
                        continue;
                    };
                    self.handle
                        .events
                        .publish(|| Event::Task(Box::new(done.clone())));
                    for w in self.waiters.remove(&id).unwrap_or_default() {
                        let _ = w.send(done.clone());
                    }
                }
            }
        }
    }

    fn publish_worker(&self, id: &WorkerId, state: &'static str) {
        self.handle.events.publish(|| Event::Worker {
            worker_id: id.0.clone(),
            state,
        });
    }

    /// Publishes a worker's rests when which providers rest, or why, changed
    /// (not their countdowns, which listeners run themselves).
    fn publish_rests(&mut self, id: &WorkerId, report: &[ProviderCooldown]) {
        if !self.handle.events.listened() {
            self.rests.clear();
            return;
        }
        let shape: Vec<RestShape> = report
            .iter()
            .map(|c| (c.provider.clone(), c.model.clone(), c.disabled, c.reason))
            .collect();
        if self.rests.get(id) == Some(&shape) {
            return;
        }
        self.rests.insert(id.clone(), shape);
        let rests = report.to_vec();
        self.handle.events.publish(|| Event::Rests {
            worker_id: id.0.clone(),
            rests,
        });
    }

    /// Publishes a live task's state (accepted, dispatched).
    fn publish_task(&self, id: TaskId) {
        if self.handle.events.listened()
            && let Some(view) = self.core.task(id)
        {
            let state = live_state(id, view);
            self.handle.events.publish(|| Event::Task(Box::new(state)));
        }
    }

    fn act(&mut self) {
        while let Some(action) = self.core.poll_action() {
            match action {
                Action::Dispatch {
                    task,
                    attempt,
                    worker,
                    spec,
                    route,
                } => {
                    if attempt == 1
                        && let Some(created_at) = self.core.created_at(task)
                    {
                        let waited = now_millis().since(created_at);
                        self.handle.telemetry.queue_wait.observe_ms(waited);
                    }
                    self.dispatch(task, attempt, worker, spec, route);
                    self.publish_task(task);
                }
                Action::Abort { task, attempt, .. } => {
                    if let Some(token) = self.running.remove(&(task, attempt)) {
                        token.cancel();
                    }
                }
                Action::Finished(f) => {
                    let _ = self.handle.unfinished.fetch_update(
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                        |n| Some(n.saturating_sub(1)),
                    );
                    self.handle.live_output.finish(f.id);
                    let t = &self.handle.telemetry;
                    t.finished.inc(&[&f.task_type, f.status.as_str()]);
                    if f.status == crate::task::TaskStatus::Completed {
                        t.task_duration
                            .observe_ms(f.completed_at.since(f.created_at));
                    }
                    // Waiters hear of it once it is durable (Persisted).
                    self.finished.insert(f.id, TaskState::from(&f));
                    if let Some((key, add)) = self.accounts.charge(&f) {
                        self.to_persist.push(Op::AddUsage(key, add));
                    }
                    self.to_persist.push(Op::Finish(f));
                }
                Action::DisconnectWorker(id) => {
                    tracing::warn!(worker = %id, "worker missed its heartbeats; re-queued its tasks");
                    self.publish_worker(&id, "dead");
                    if let Some(conn) = self.conns.remove(&id) {
                        conn.close(close::DEAD, b"missed heartbeats");
                    }
                }
            }
        }
    }

    /// Hands finished tasks to the store as one batch; they leave the
    /// in-memory `finished` map once durable.
    fn flush_persist(&mut self) {
        if self.to_persist.is_empty() {
            return;
        }
        let ops = merge_usage(std::mem::take(&mut self.to_persist));
        let ids: Vec<TaskId> = ops
            .iter()
            .filter_map(|op| match op {
                Op::Finish(f) => Some(f.id),
                _ => None,
            })
            .collect();
        let store = self.store.clone();
        let handle = self.handle.clone();
        tokio::spawn(async move {
            // Until durable the results stay in the actor's memory (clients
            // still see them); a failing store is retried with backoff.
            let mut ops = ops;
            let mut delay = Duration::from_millis(100);
            loop {
                match store.commit_or_return(ops).await {
                    Ok(()) => {
                        let _ = handle.send(SchedMsg::Persisted(ids)).await;
                        return;
                    }
                    Err((StoreError::Closed, _)) => return,
                    Err((e, back)) => {
                        // The store logs when writes start and stop failing.
                        tracing::debug!(error = %e, retry_in_ms = delay.as_millis() as u64, "could not persist finished tasks yet");
                        ops = back;
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(5));
                    }
                }
            }
        });
    }

    fn dispatch(
        &mut self,
        task: TaskId,
        attempt: u32,
        worker: WorkerId,
        spec: Arc<TaskSpec>,
        route: Route,
    ) {
        let Some(conn) = self.conns.get(&worker).cloned() else {
            // The core believes the worker is up but its connection is gone:
            // report the loss so the task is re-queued at once.
            let handle = self.handle.clone();
            tokio::spawn(async move {
                let _ = handle
                    .send(SchedMsg::Result {
                        worker,
                        task,
                        attempt,
                        outcome: lost("worker connection gone"),
                        cooldowns: None,
                    })
                    .await;
            });
            return;
        };
        if spec.request.stream {
            self.handle.live_output.open(task);
        }
        let abort = CancellationToken::new();
        self.running.insert((task, attempt), abort.clone());
        let handle = self.handle.clone();
        tokio::spawn(async move {
            if let Some((outcome, cooldowns)) =
                run_attempt(&conn, task, attempt, &spec, &route, &abort, &handle).await
            {
                let (provider, how) = match &outcome {
                    Outcome::Ok(out) => (super::usage::label(&out.provider), "ok"),
                    Outcome::Err(e) => (route.prefer.clone(), e.kind.as_str()),
                };
                handle.telemetry.attempts.inc(&[&provider, how]);
                let _ = handle
                    .send(SchedMsg::Result {
                        worker,
                        task,
                        attempt,
                        outcome,
                        cooldowns,
                    })
                    .await;
            }
        });
    }
}

/// Folds the usage rows of one batch into one op per row: they add up, and
/// a busy cluster finishes many tasks of the same provider, model, worker
/// and agent at once (one store read and write instead of one per task).
fn merge_usage(ops: Vec<Op>) -> Vec<Op> {
    let mut rows: HashMap<crate::store::UsageKey, crate::store::UsageTotals> = HashMap::new();
    let mut out = Vec::with_capacity(ops.len());
    for op in ops {
        match op {
            Op::AddUsage(k, t) => rows.entry(k).or_default().add(&t),
            other => out.push(other),
        }
    }
    out.extend(rows.into_iter().map(|(k, t)| Op::AddUsage(k, t)));
    out
}

fn lost(message: &str) -> Outcome {
    Outcome::Err(TaskError {
        kind: ErrorKind::WorkerLost,
        message: message.to_owned(),
    })
}

/// One attempt on its own stream: its outcome and, when the worker sent
/// them, its providers cooling down. `None` when aborted (the core already knows).
async fn run_attempt(
    conn: &Connection,
    task: TaskId,
    attempt: u32,
    spec: &TaskSpec,
    route: &Route,
    abort: &CancellationToken,
    handle: &SchedHandle,
) -> Option<(Outcome, Option<Vec<ProviderCooldown>>)> {
    let started = std::time::Instant::now();
    let mut first_piece = true;
    let failed = |what: &str, e: &dyn std::fmt::Display| {
        if conn.close_reason().is_some() {
            lost(&format!("worker connection lost ({what})"))
        } else {
            Outcome::Err(TaskError {
                kind: ErrorKind::Transient,
                message: format!("task stream {what}: {e}"),
            })
        }
    };
    let (mut send, mut recv) = tokio::select! {
        r = conn.open_bi() => match r {
            Ok(s) => s,
            Err(e) => return Some((failed("open", &e), None)),
        },
        () = abort.cancelled() => return None,
    };
    let assign = TaskAssignRef {
        id: task,
        attempt,
        spec,
        route,
    };
    if let Err(e) = transport::write_frame(&mut send, &assign).await {
        return Some((failed("write", &e), None));
    }
    let _ = send.finish();
    loop {
        let frame = tokio::select! {
            f = transport::read_frame::<TaskReply>(&mut recv) => f,
            () = abort.cancelled() => {
                let _ = recv.stop(STREAM_ABORTED);
                return None;
            }
        };
        match frame {
            Ok(TaskReply::Chunk { text }) => {
                if first_piece {
                    first_piece = false;
                    handle.telemetry.first_token.observe(started.elapsed());
                }
                handle.live_output.publish(task, attempt, &text);
            }
            Ok(TaskReply::Done { outcome, cooldowns }) => return Some((outcome, Some(cooldowns))),
            Err(e) => return Some((failed("read", &e), None)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::SchedulerConfig;
    use crate::store::MemBackend;
    use crate::task::Millis;

    fn spec() -> TaskSpec {
        crate::task::test_spec("agent_action", 5)
    }

    #[test]
    fn usage_rows_of_a_batch_are_merged_and_other_ops_kept_in_order() {
        use crate::store::{UsageKey, UsageTotals};
        let key = |agent: &str| UsageKey {
            day: 1,
            provider: "p".into(),
            model: "m".into(),
            worker: "w".into(),
            agent: agent.into(),
        };
        let one = UsageTotals {
            tasks: 1,
            prompt_tokens: 10,
            ..UsageTotals::default()
        };
        let ops = vec![
            Op::AddUsage(key("a"), one),
            Op::CacheClear,
            Op::AddUsage(key("a"), one),
            Op::AddUsage(key("b"), one),
            Op::PurgeResults { before: Millis(5) },
        ];
        let out = merge_usage(ops);
        assert_eq!(out[0], Op::CacheClear);
        assert_eq!(out[1], Op::PurgeResults { before: Millis(5) });
        let mut rows: Vec<(String, u64)> = out[2..]
            .iter()
            .map(|op| match op {
                Op::AddUsage(k, t) => (k.agent.clone(), t.prompt_tokens),
                other => panic!("{other:?}"),
            })
            .collect();
        rows.sort();
        assert_eq!(rows, [("a".to_owned(), 20), ("b".to_owned(), 10)]);
    }

    /// A query handled in the same batch as the message that finished the
    /// task must see the task, not "unknown" (which the HTTP layer would
    /// turn into a 404 while the result is not yet in the store); and it
    /// sees it as not finished until the store has its record.
    #[tokio::test]
    async fn query_in_the_same_batch_sees_a_just_finished_task() {
        let (store, _) = Store::open(Arc::new(MemBackend::default())).expect("store");
        let core = Scheduler::new(SchedulerConfig::lan(), crate::core::Counters::default());
        let shutdown = CancellationToken::new();
        let (actor, handle) = Actor::new(core, store, Arc::default(), shutdown.clone());
        // Queue everything before the actor runs, so it lands in one batch.
        handle
            .send(SchedMsg::Submit(vec![PendingTask {
                id: TaskId(1),
                spec: spec(),
                created_at: Millis(0),
            }]))
            .await
            .expect("send");
        let (cancel_tx, cancel_rx) = oneshot::channel();
        handle
            .send(SchedMsg::Cancel {
                id: TaskId(1),
                reply: cancel_tx,
            })
            .await
            .expect("send");
        let (query_tx, query_rx) = oneshot::channel();
        handle
            .send(SchedMsg::Query {
                id: TaskId(1),
                wait: false,
                reply: query_tx,
            })
            .await
            .expect("send");
        let running = tokio::spawn(actor.run());
        assert_eq!(cancel_rx.await.expect("reply"), CancelResult::Cancelled);
        match query_rx.await.expect("reply") {
            QueryReply::State(s) => assert_eq!(s.status, "pending", "not final before durable"),
            other => panic!("expected the task's state, got {other:?}"),
        }
        // Once durable, the final state.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            match handle.query(TaskId(1), false).await.expect("query") {
                QueryReply::State(s) if s.status == "pending" => {}
                QueryReply::NotLive => break,
                other => panic!("unexpected {other:?}"),
            }
            assert!(std::time::Instant::now() < deadline, "never persisted");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        shutdown.cancel();
        running.await.expect("actor");
    }
}
