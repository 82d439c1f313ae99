//! Scheduler tests, driven with a fake clock.

use super::*;
use crate::task::{TaskError, TaskOutput};
use proptest::prelude::*;
use std::collections::HashSet;

fn spec(task_type: &str, priority: u8) -> Arc<TaskSpec> {
    Arc::new(crate::task::test_spec(task_type, priority))
}

fn caps(worker_type: &str, slots: u32) -> Capabilities {
    Capabilities {
        worker_type: worker_type.to_owned(),
        offers: vec![offer("echo", Tier::Local, &["echo"])],
        slots,
        ..Capabilities::default()
    }
}

fn offer(provider: &str, tier: Tier, models: &[&str]) -> crate::task::Offer {
    crate::task::Offer {
        provider: provider.to_owned(),
        tier,
        models: models.iter().map(|m| (*m).to_owned()).collect(),
        reasoning_model: None,
        embedding_models: Vec::new(),
        prices: vec![],
    }
}

fn ok() -> Outcome {
    Outcome::Ok(TaskOutput::text("x", "echo", "echo"))
}

fn err(kind: ErrorKind) -> Outcome {
    Outcome::Err(TaskError {
        kind,
        message: "boom".into(),
    })
}

fn w(s: &str) -> WorkerId {
    WorkerId(s.to_owned())
}

fn drain(s: &mut Scheduler) -> Vec<Action> {
    std::iter::from_fn(|| s.poll_action()).collect()
}

fn dispatches(actions: &[Action]) -> Vec<(TaskId, u32, WorkerId)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Dispatch {
                task,
                attempt,
                worker,
                ..
            } => Some((*task, *attempt, worker.clone())),
            _ => None,
        })
        .collect()
}

fn finished(actions: &[Action]) -> Vec<FinishedTask> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Finished(f) => Some(f.clone()),
            _ => None,
        })
        .collect()
}

fn sched() -> Scheduler {
    Scheduler::new(SchedulerConfig::lan(), Counters::default())
}

#[test]
fn happy_path_dispatches_and_finishes_once() {
    let mut s = sched();
    let t0 = Millis(1_000);
    s.handle_worker_up(t0, w("a"), caps("echo", 1));
    s.handle_submit(t0, TaskId(1), spec("agent_action", 5), t0);
    let d = dispatches(&drain(&mut s));
    assert_eq!(d, vec![(TaskId(1), 1, w("a"))]);
    assert_eq!(
        s.task(TaskId(1)).expect("live").status,
        TaskStatus::Assigned
    );
    assert_eq!(
        s.handle_result(Millis(1_010), &w("a"), TaskId(1), 1, ok()),
        ResultDisposition::Finished
    );
    let f = finished(&drain(&mut s));
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].status, TaskStatus::Completed);
    assert_eq!(f[0].worker, Some(w("a")));
    assert_eq!(f[0].attempts, 1);
    // A duplicate result is late and counted.
    assert_eq!(
        s.handle_result(Millis(1_020), &w("a"), TaskId(1), 1, ok()),
        ResultDisposition::Late
    );
    assert_eq!(s.stats().counters.late_results, 1);
    assert_eq!(s.stats().counters.completed, 1);
    s.check_invariants();
}

#[test]
fn priority_order_then_fifo() {
    let mut s = sched();
    let t0 = Millis(1_000_000);
    for (id, p) in [(1, 1), (2, 10), (3, 5), (4, 10), (5, 5)] {
        s.handle_submit(t0, TaskId(id), spec("agent_action", p), t0.plus(id));
    }
    s.handle_worker_up(t0, w("a"), caps("echo", 1));
    let mut order = Vec::new();
    let mut now = t0;
    for _ in 0..5 {
        let d = dispatches(&drain(&mut s));
        assert_eq!(d.len(), 1);
        order.push(d[0].0.0);
        now = now.plus(1);
        s.handle_result(now, &w("a"), d[0].0, d[0].1, ok());
    }
    assert_eq!(order, vec![2, 4, 3, 5, 1]);
}

#[test]
fn aging_lets_an_old_low_priority_task_overtake() {
    let mut s = sched();
    let step = SchedulerConfig::lan().aging_step_ms;
    let t0 = Millis(10_000_000);
    s.handle_submit(t0, TaskId(1), spec("agent_action", 1), t0);
    // Nine levels of priority difference = 9 aging steps of waiting.
    let later = t0.plus(9 * step + 1);
    s.handle_submit(later, TaskId(2), spec("agent_action", 10), later);
    s.handle_worker_up(later, w("a"), caps("echo", 1));
    let d = dispatches(&drain(&mut s));
    assert_eq!(d[0].0, TaskId(1), "the starving task goes first");
}

#[test]
fn routing_keeps_heavy_tasks_off_light_workers_without_blocking_others() {
    let mut s = sched();
    let t0 = Millis(0);
    s.handle_worker_up(t0, w("light"), caps("groq", 4));
    s.handle_submit(t0, TaskId(1), spec("code_generation", 10), t0);
    s.handle_submit(t0, TaskId(2), spec("agent_action", 1), t0);
    let d = dispatches(&drain(&mut s));
    assert_eq!(d, vec![(TaskId(2), 1, w("light"))]);
    s.handle_worker_up(t0, w("gpu"), caps("deepseek_gpu", 1));
    let d = dispatches(&drain(&mut s));
    assert_eq!(d, vec![(TaskId(1), 1, w("gpu"))]);
    s.check_invariants();
}

#[test]
fn least_loaded_worker_wins() {
    let mut s = sched();
    let t0 = Millis(0);
    s.handle_worker_up(t0, w("a"), caps("echo", 2));
    s.handle_worker_up(t0, w("b"), caps("echo", 2));
    for i in 1..=4 {
        s.handle_submit(t0, TaskId(i), spec("agent_action", 5), t0);
    }
    let d = dispatches(&drain(&mut s));
    let on_a = d.iter().filter(|x| x.2 == w("a")).count();
    assert_eq!((d.len(), on_a), (4, 2));
    s.handle_submit(t0, TaskId(5), spec("agent_action", 5), t0);
    assert!(
        dispatches(&drain(&mut s)).is_empty(),
        "no free slot anywhere"
    );
    assert_eq!(s.stats().pending, 1);
    s.check_invariants();
}

#[test]
fn dead_worker_tasks_move_elsewhere_without_consuming_attempts() {
    let mut s = sched();
    let t0 = Millis(0);
    s.handle_worker_up(t0, w("a"), caps("echo", 1));
    s.handle_submit(t0, TaskId(1), spec("agent_action", 5), t0);
    assert_eq!(dispatches(&drain(&mut s))[0].2, w("a"));
    s.handle_worker_up(t0, w("b"), caps("echo", 1));
    // b keeps heartbeating; a goes silent.
    let mut now = t0;
    let mut moved = None;
    while now.0 < 10_000 {
        now = s
            .poll_timeout()
            .expect("timer")
            .max(now.plus(1))
            .min(now.plus(500));
        s.handle_heartbeat(now, &w("b"));
        s.handle_timeout(now);
        let acts = drain(&mut s);
        if let Some(d) = dispatches(&acts).first() {
            assert!(acts.contains(&Action::DisconnectWorker(w("a"))));
            moved = Some((now, d.clone()));
            break;
        }
    }
    let (at, d) = moved.expect("re-dispatched");
    assert!(at.0 <= 5_000, "dead worker noticed in {} ms", at.0);
    assert_eq!(d, (TaskId(1), 2, w("b")));
    // The dead worker's late result is ignored.
    assert_eq!(
        s.handle_result(now, &w("a"), TaskId(1), 1, ok()),
        ResultDisposition::Late
    );
    assert_eq!(
        s.handle_result(now, &w("b"), TaskId(1), 2, ok()),
        ResultDisposition::Finished
    );
    s.check_invariants();
}

#[test]
fn suspect_worker_gets_no_new_tasks() {
    let mut s = sched();
    s.handle_worker_up(Millis(0), w("a"), caps("echo", 4));
    s.handle_timeout(Millis(2_000));
    assert_eq!(s.workers(Millis(2_000))[0].liveness, Liveness::Suspect);
    s.handle_submit(
        Millis(2_000),
        TaskId(1),
        spec("agent_action", 5),
        Millis(2_000),
    );
    assert!(dispatches(&drain(&mut s)).is_empty());
    s.handle_heartbeat(Millis(2_100), &w("a"));
    assert_eq!(dispatches(&drain(&mut s)).len(), 1);
}

#[test]
fn transient_errors_consume_attempts_then_fail() {
    let mut s = sched();
    s.handle_worker_up(Millis(0), w("a"), caps("echo", 1));
    s.handle_submit(Millis(0), TaskId(1), spec("agent_action", 5), Millis(0));
    let backoff = SchedulerConfig::lan().retry_backoff_ms;
    let mut now = Millis(0);
    for attempt in 1..=3 {
        let d = dispatches(&drain(&mut s));
        assert_eq!(d, vec![(TaskId(1), attempt, w("a"))]);
        s.handle_result(now, &w("a"), TaskId(1), attempt, err(ErrorKind::Transient));
        s.check_invariants();
        if attempt < 3 {
            // Backs off: 0.5 s after the first failure, 1 s after the second.
            let pause = backoff << (attempt - 1);
            assert_eq!(s.poll_timeout(), Some(now.plus(pause)), "attempt {attempt}");
            s.handle_timeout(now.plus(pause - 1));
            assert!(
                dispatches(&drain(&mut s)).is_empty(),
                "not before the pause"
            );
            assert_eq!(
                s.task(TaskId(1)).map(|t| t.status),
                Some(TaskStatus::Pending)
            );
            now = now.plus(pause);
            s.handle_heartbeat(now, &w("a"));
            s.handle_timeout(now);
        }
    }
    let f = finished(&drain(&mut s));
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].status, TaskStatus::Failed);
    assert!(
        f[0].error
            .as_deref()
            .unwrap_or_default()
            .contains("3 attempts")
    );
}

#[test]
fn permanent_error_fails_at_once_and_rate_limit_does_not_count() {
    let mut s = sched();
    s.handle_worker_up(Millis(0), w("a"), caps("echo", 1));
    s.handle_submit(Millis(0), TaskId(1), spec("agent_action", 5), Millis(0));
    for attempt in 1..=5 {
        drain(&mut s);
        let at = u64::from(attempt) * 10_000;
        s.handle_result(
            Millis(at),
            &w("a"),
            TaskId(1),
            attempt,
            err(ErrorKind::RateLimited {
                retry_after_ms: 1_500,
            }),
        );
        // Cooling down: nothing dispatched until the cooldown ends.
        assert!(dispatches(&drain(&mut s)).is_empty());
        assert_eq!(s.poll_timeout(), Some(Millis(at + 1_500)));
        s.handle_heartbeat(Millis(at + 1_500), &w("a"));
        s.handle_timeout(Millis(at + 1_500));
    }
    let d = dispatches(&drain(&mut s));
    assert_eq!(d, vec![(TaskId(1), 6, w("a"))]);
    s.handle_result(
        Millis(60_000),
        &w("a"),
        TaskId(1),
        6,
        err(ErrorKind::Permanent),
    );
    let f = finished(&drain(&mut s));
    assert_eq!(
        (f[0].status, f[0].error.as_deref()),
        (TaskStatus::Failed, Some("boom"))
    );
}

#[test]
fn attempt_timeout_aborts_and_retries() {
    let mut s = sched();
    let mut sp = (*spec("agent_action", 5)).clone();
    sp.attempt_timeout_ms = 1_000;
    s.handle_worker_up(Millis(0), w("a"), caps("echo", 1));
    s.handle_submit(Millis(0), TaskId(1), Arc::new(sp), Millis(0));
    drain(&mut s);
    s.handle_heartbeat(Millis(1_000), &w("a"));
    s.handle_timeout(Millis(1_000));
    let acts = drain(&mut s);
    assert!(acts.contains(&Action::Abort {
        task: TaskId(1),
        attempt: 1,
        worker: w("a")
    }));
    let backoff = SchedulerConfig::lan().retry_backoff_ms;
    s.handle_heartbeat(Millis(1_000 + backoff), &w("a"));
    s.handle_timeout(Millis(1_000 + backoff));
    assert_eq!(dispatches(&drain(&mut s)), vec![(TaskId(1), 2, w("a"))]);
}

#[test]
fn deadline_fails_a_pending_task() {
    let mut s = sched();
    let mut sp = (*spec("agent_action", 5)).clone();
    sp.deadline = Some(Millis(500));
    s.handle_submit(Millis(0), TaskId(1), Arc::new(sp), Millis(0));
    assert_eq!(s.poll_timeout(), Some(Millis(500)));
    s.handle_timeout(Millis(500));
    let f = finished(&drain(&mut s));
    assert_eq!(
        (f[0].status, f[0].error.as_deref()),
        (TaskStatus::Failed, Some("deadline exceeded"))
    );
    s.check_invariants();
}

#[test]
fn cancel_pending_and_running() {
    let mut s = sched();
    s.handle_worker_up(Millis(0), w("a"), caps("echo", 1));
    s.handle_submit(Millis(0), TaskId(1), spec("agent_action", 5), Millis(0));
    s.handle_submit(Millis(0), TaskId(2), spec("agent_action", 5), Millis(0));
    drain(&mut s);
    assert_eq!(
        s.handle_cancel(Millis(1), TaskId(2)),
        CancelResult::Cancelled
    );
    assert_eq!(
        s.handle_cancel(Millis(1), TaskId(1)),
        CancelResult::Cancelled
    );
    let acts = drain(&mut s);
    assert!(acts.contains(&Action::Abort {
        task: TaskId(1),
        attempt: 1,
        worker: w("a")
    }));
    assert_eq!(finished(&acts).len(), 2);
    assert_eq!(s.handle_cancel(Millis(1), TaskId(1)), CancelResult::NotLive);
    assert_eq!(
        s.handle_result(Millis(2), &w("a"), TaskId(1), 1, ok()),
        ResultDisposition::Late
    );
    s.check_invariants();
}

#[test]
fn draining_worker_keeps_its_task_but_gets_no_more() {
    let mut s = sched();
    s.handle_worker_up(Millis(0), w("a"), caps("echo", 2));
    s.handle_submit(Millis(0), TaskId(1), spec("agent_action", 5), Millis(0));
    drain(&mut s);
    s.handle_drain(Millis(1), &w("a"));
    s.handle_submit(Millis(1), TaskId(2), spec("agent_action", 5), Millis(1));
    assert!(dispatches(&drain(&mut s)).is_empty());
    assert_eq!(
        s.handle_result(Millis(2), &w("a"), TaskId(1), 1, ok()),
        ResultDisposition::Finished
    );
    assert_eq!(s.stats().workers_online, 0);
}

#[derive(Debug, Clone)]
enum Op {
    Submit(u8, bool),
    WorkerUp(u8, u8),
    WorkerDown(u8),
    Heartbeat(u8),
    ResultCurrent(usize, u8),
    ResultStale(usize),
    Cancel(usize),
    Tick(u16),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (1u8..=10, any::<bool>()).prop_map(|(p, heavy)| Op::Submit(p, heavy)),
        1 => (0u8..4, 1u8..4).prop_map(|(w, s)| Op::WorkerUp(w, s)),
        1 => (0u8..4).prop_map(Op::WorkerDown),
        2 => (0u8..4).prop_map(Op::Heartbeat),
        4 => (any::<usize>(), 0u8..4).prop_map(|(i, k)| Op::ResultCurrent(i, k)),
        1 => any::<usize>().prop_map(Op::ResultStale),
        1 => any::<usize>().prop_map(Op::Cancel),
        2 => (1u16..4_000).prop_map(Op::Tick),
    ]
}

proptest! {
    // Failing cases are saved beside this file (tests.proptest-regressions)
    // and replayed first on every run.
    #![proptest_config(ProptestConfig {
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::WithSource("proptest-regressions"),
        )),
        ..ProptestConfig::with_cases(300)
    })]

    /// Under any interleaving, no task is lost or finished twice, and once
    /// workers stay healthy every remaining task finishes.
    #[test]
    fn no_task_lost_or_duplicated(ops in proptest::collection::vec(op(), 1..200)) {
        let mut s = sched();
        let mut now = Millis(1_000);
        let mut next_id = 1u64;
        let mut submitted = HashSet::new();
        let mut done: HashSet<TaskId> = HashSet::new();
        // (task, attempt, worker) of dispatches not yet answered.
        let mut running: Vec<(TaskId, u32, WorkerId)> = Vec::new();
        let mut stale: Vec<(TaskId, u32, WorkerId)> = Vec::new();
        let kinds = ["echo", "gemini"];

        let absorb = |s: &mut Scheduler, running: &mut Vec<(TaskId, u32, WorkerId)>, stale: &mut Vec<(TaskId, u32, WorkerId)>, done: &mut HashSet<TaskId>| {
            for a in drain(s) {
                match a {
                    Action::Dispatch { task, attempt, worker, .. } => running.push((task, attempt, worker)),
                    Action::Finished(f) => {
                        prop_assert!(done.insert(f.id), "task {} finished twice", f.id);
                        running.retain(|r| r.0 != f.id);
                    }
                    Action::Abort { task, attempt, .. } => {
                        if let Some(pos) = running.iter().position(|r| r.0 == task && r.1 == attempt) {
                            stale.push(running.remove(pos));
                        }
                    }
                    Action::DisconnectWorker(w) => {
                        let (gone, keep): (Vec<_>, Vec<_>) = running.drain(..).partition(|r| r.2 == w);
                        *running = keep;
                        stale.extend(gone);
                    }
                }
            }
            Ok(())
        };

        for op in ops {
            match op {
                Op::Submit(p, heavy) => {
                    let id = TaskId(next_id);
                    next_id += 1;
                    submitted.insert(id);
                    let t = if heavy { "code_generation" } else { "agent_action" };
                    s.handle_submit(now, id, spec(t, p), now);
                }
                Op::WorkerUp(i, slots) => {
                    let id = w(&format!("w{i}"));
                    let (gone, keep): (Vec<_>, Vec<_>) = running.drain(..).partition(|r| r.2 == id);
                    running = keep;
                    stale.extend(gone);
                    s.handle_worker_up(now, id, caps(kinds[usize::from(i) % 2], u32::from(slots)));
                }
                Op::WorkerDown(i) => {
                    let id = w(&format!("w{i}"));
                    let (gone, keep): (Vec<_>, Vec<_>) = running.drain(..).partition(|r| r.2 == id);
                    running = keep;
                    stale.extend(gone);
                    s.handle_worker_down(now, &id);
                }
                Op::Heartbeat(i) => s.handle_heartbeat(now, &w(&format!("w{i}"))),
                Op::ResultCurrent(i, k) => {
                    if !running.is_empty() {
                        let (task, attempt, worker) = running.remove(i % running.len());
                        let outcome = match k {
                            0 => err(ErrorKind::Transient),
                            1 => err(ErrorKind::WorkerLost),
                            2 => err(ErrorKind::RateLimited { retry_after_ms: 50 }),
                            _ => ok(),
                        };
                        let d = s.handle_result(now, &worker, task, attempt, outcome);
                        prop_assert_ne!(d, ResultDisposition::Late);
                    }
                }
                Op::ResultStale(i) => {
                    if !stale.is_empty() {
                        let (task, attempt, worker) = stale[i % stale.len()].clone();
                        prop_assert_eq!(s.handle_result(now, &worker, task, attempt, ok()), ResultDisposition::Late);
                    }
                }
                Op::Cancel(i) => {
                    if next_id > 1 {
                        let id = TaskId(1 + (i as u64 % (next_id - 1)));
                        let r = s.handle_cancel(now, id);
                        prop_assert_eq!(r == CancelResult::Cancelled, !done.contains(&id));
                    }
                }
                Op::Tick(ms) => {
                    now = now.plus(u64::from(ms));
                    s.handle_timeout(now);
                }
            }
            absorb(&mut s, &mut running, &mut stale, &mut done)?;
            s.check_invariants();
        }

        // Settle: two healthy workers of each kind answer everything.
        for i in 10..12u8 {
            for k in kinds {
                s.handle_worker_up(now, w(&format!("{k}{i}")), caps(k, 2));
            }
        }
        for _ in 0..10_000 {
            absorb(&mut s, &mut running, &mut stale, &mut done)?;
            if let Some((task, attempt, worker)) = running.pop() {
                s.handle_result(now, &worker, task, attempt, ok());
            } else {
                now = now.plus(100);
                for id in s.workers(now).into_iter().map(|v| v.id) {
                    s.handle_heartbeat(now, &id);
                }
                s.handle_timeout(now);
                absorb(&mut s, &mut running, &mut stale, &mut done)?;
                // Tasks backing off after a failure come back by themselves.
                if running.is_empty() && s.stats().pending == 0 {
                    break;
                }
            }
        }
        s.check_invariants();
        prop_assert_eq!(done, submitted, "every task finished exactly once");
        prop_assert_eq!(s.stats().pending + s.stats().assigned, 0);
    }
}

#[test]
fn named_models_and_providers_only_reach_workers_that_offer_them() {
    let mut s = sched();
    let t0 = Millis(0);
    let with = |kind: &str, models: &[&str]| Capabilities {
        worker_type: kind.into(),
        offers: vec![offer(kind, Tier::Free, models)],
        slots: 4,
        ..Capabilities::default()
    };
    s.handle_worker_up(t0, w("groq-box"), with("groq", &["llama-3.1-8b-instant"]));
    s.handle_worker_up(t0, w("gpu-box"), with("ollama", &["deepseek-r1:8b"]));
    let named = |id: u64, model: Option<&str>, provider: Option<&str>| {
        let mut sp = crate::task::test_spec("agent_action", 5);
        sp.request.model = model.map(str::to_owned);
        sp.provider = provider.map(str::to_owned);
        (TaskId(id), Arc::new(sp))
    };
    for (id, sp) in [
        named(1, Some("deepseek-r1:8b"), None),
        named(2, None, Some("groq")),
        named(3, Some("auto"), None),
        named(4, Some("gpt-4o"), None),
        named(5, Some("llama-3.1-8b-instant"), Some("ollama")),
    ] {
        s.handle_submit(t0, id, sp, t0);
    }
    let d = dispatches(&drain(&mut s));
    let on = |id: u64| d.iter().find(|x| x.0 == TaskId(id)).map(|x| x.2.0.clone());
    assert_eq!(on(1).as_deref(), Some("gpu-box"));
    assert_eq!(on(2).as_deref(), Some("groq-box"));
    assert!(on(3).is_some(), "auto runs anywhere");
    assert_eq!(on(4), None, "nobody serves gpt-4o: it waits");
    assert_eq!(on(5), None, "no ollama worker serves that model");
    s.check_invariants();
    // A worker that serves it arrives: the waiting task runs there.
    s.handle_worker_up(t0, w("openai-box"), with("openai", &["gpt-4o"]));
    assert_eq!(
        dispatches(&drain(&mut s)),
        vec![(TaskId(4), 1, w("openai-box"))]
    );
}

#[test]
fn a_task_that_keeps_losing_workers_eventually_fails() {
    let mut s = sched();
    let limit = SchedulerConfig::lan().max_worker_losses;
    s.handle_submit(Millis(0), TaskId(1), spec("agent_action", 5), Millis(0));
    for round in 0..=limit {
        let id = w(&format!("w{round}"));
        s.handle_worker_up(Millis(0), id.clone(), caps("echo", 1));
        assert_eq!(dispatches(&drain(&mut s)).len(), 1, "round {round}");
        s.handle_worker_down(Millis(0), &id);
        s.check_invariants();
    }
    let f = finished(&drain(&mut s));
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].status, TaskStatus::Failed);
    assert!(
        f[0].error
            .as_deref()
            .unwrap_or_default()
            .contains("lost 11 workers"),
        "{:?}",
        f[0].error
    );
}

/// Dispatches with their routes.
fn routes(actions: &[Action]) -> Vec<(TaskId, WorkerId, Route)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Dispatch {
                task,
                worker,
                route,
                ..
            } => Some((*task, worker.clone(), route.clone())),
            _ => None,
        })
        .collect()
}

fn ok_from(provider: &str) -> Outcome {
    Outcome::Ok(TaskOutput::text("x", provider, "m"))
}

fn route(prefer: &str, max_tier: Tier) -> Route {
    Route {
        prefer: prefer.to_owned(),
        max_tier,
    }
}

fn with_offers(slots: u32, offers: Vec<crate::task::Offer>) -> Capabilities {
    Capabilities {
        worker_type: "pc".into(),
        offers,
        slots,
        ..Capabilities::default()
    }
}

#[test]
fn cheapest_tier_first_then_dearer_when_it_is_full_or_cooling_down() {
    let mut s = sched();
    let t0 = Millis(0);
    // Registered dearest first: the order must come from tiers.
    s.handle_worker_up(
        t0,
        w("paid"),
        with_offers(1, vec![offer("openai", Tier::Paid, &["gpt"])]),
    );
    s.handle_worker_up(
        t0,
        w("free"),
        with_offers(1, vec![offer("groq", Tier::Free, &["llama"])]),
    );
    s.handle_worker_up(
        t0,
        w("gpu"),
        with_offers(1, vec![offer("ollama", Tier::Local, &["r1"])]),
    );
    for id in 1..=4 {
        s.handle_submit(t0, TaskId(id), spec("agent_action", 5), t0);
    }
    assert_eq!(
        routes(&drain(&mut s)),
        vec![
            (TaskId(1), w("gpu"), route("ollama", Tier::Local)),
            (TaskId(2), w("free"), route("groq", Tier::Free)),
            (TaskId(3), w("paid"), route("openai", Tier::Paid)),
        ],
        "each tier fills before the next one is used"
    );
    // The free key is rate limited for 10 s: its slot frees but it is not
    // used; the local one is preferred again as soon as it is free.
    s.handle_cooldowns(
        Millis(10),
        &w("free"),
        &[ProviderCooldown {
            provider: "groq".into(),
            model: None,
            remaining_ms: 10_000,
            disabled: false,
            reason: crate::task::RestReason::default(),
        }],
    );
    s.handle_result(
        Millis(10),
        &w("free"),
        TaskId(2),
        1,
        err(ErrorKind::RateLimited {
            retry_after_ms: 10_000,
        }),
    );
    assert!(
        routes(&drain(&mut s)).is_empty(),
        "every usable slot is busy"
    );
    s.handle_result(Millis(20), &w("gpu"), TaskId(1), 1, ok_from("ollama"));
    let next = routes(&drain(&mut s));
    assert_eq!(next.len(), 1);
    assert_eq!(
        (next[0].1.clone(), next[0].2.max_tier),
        (w("gpu"), Tier::Local)
    );
    s.check_invariants();
    // A task capped at the free tier never reaches the paid worker.
    let mut capped = crate::task::test_spec("agent_action", 5);
    capped.max_tier = Some(Tier::Free);
    s.handle_result(Millis(30), &w("paid"), TaskId(3), 1, ok_from("openai"));
    s.handle_submit(Millis(30), TaskId(9), Arc::new(capped), Millis(30));
    let d = routes(&drain(&mut s));
    assert!(
        d.iter()
            .all(|(t, wk, _)| *t != TaskId(9) || *wk != w("paid")),
        "{d:?}"
    );
    s.check_invariants();
}

#[test]
fn one_worker_with_several_tiers_is_routed_to_its_cheapest_usable_one() {
    let mut s = sched();
    let t0 = Millis(0);
    s.handle_worker_up(
        t0,
        w("pc"),
        with_offers(
            4,
            vec![
                offer("anthropic", Tier::Paid, &["claude"]),
                offer("gemini", Tier::Free, &["flash"]),
            ],
        ),
    );
    s.handle_submit(t0, TaskId(1), spec("agent_action", 5), t0);
    assert_eq!(
        routes(&drain(&mut s)),
        vec![(TaskId(1), w("pc"), route("gemini", Tier::Free))]
    );
    // Gemini 429s with its cooldown reported: the retry goes to the paid key.
    s.handle_cooldowns(
        Millis(5),
        &w("pc"),
        &[ProviderCooldown {
            provider: "gemini".into(),
            model: Some("flash".into()),
            remaining_ms: 30_000,
            disabled: false,
            reason: crate::task::RestReason::default(),
        }],
    );
    s.handle_result(
        Millis(5),
        &w("pc"),
        TaskId(1),
        1,
        err(ErrorKind::RateLimited {
            retry_after_ms: 30_000,
        }),
    );
    assert_eq!(
        routes(&drain(&mut s)),
        vec![(TaskId(1), w("pc"), route("anthropic", Tier::Paid))]
    );
    let view = &s.workers(Millis(5))[0];
    assert_eq!(view.cooldowns.len(), 1);
    assert_eq!(view.cooldown_until, None, "anthropic is still usable");
    // A task naming the resting model waits instead.
    let mut named = crate::task::test_spec("agent_action", 5);
    named.request.model = Some("flash".into());
    s.handle_submit(Millis(6), TaskId(2), Arc::new(named), Millis(6));
    assert!(routes(&drain(&mut s)).is_empty());
    // The cooldown ends: it runs.
    s.handle_heartbeat(Millis(30_005), &w("pc"));
    s.handle_timeout(Millis(30_005));
    assert_eq!(
        routes(&drain(&mut s)),
        vec![(TaskId(2), w("pc"), route("gemini", Tier::Free))]
    );
    s.check_invariants();
}

#[test]
fn a_rate_limit_without_a_report_still_cools_down_the_provider() {
    let mut s = sched();
    s.handle_worker_up(Millis(0), w("a"), caps("echo", 1));
    s.handle_submit(Millis(0), TaskId(1), spec("agent_action", 5), Millis(0));
    drain(&mut s);
    // retry_after 0 must not make the worker hammer its vendor.
    s.handle_result(
        Millis(0),
        &w("a"),
        TaskId(1),
        1,
        err(ErrorKind::RateLimited { retry_after_ms: 0 }),
    );
    assert!(dispatches(&drain(&mut s)).is_empty());
    let min = SchedulerConfig::lan().min_cooldown_ms;
    assert_eq!(s.poll_timeout(), Some(Millis(min)));
    assert_eq!(s.workers(Millis(0))[0].cooldown_until, Some(Millis(min)));
    // Unavailable (rejected key) reported as disabled: never picked again.
    s.handle_heartbeat(Millis(min), &w("a"));
    s.handle_timeout(Millis(min));
    assert_eq!(dispatches(&drain(&mut s)).len(), 1);
    s.handle_cooldowns(
        Millis(min),
        &w("a"),
        &[ProviderCooldown {
            provider: "echo".into(),
            model: None,
            remaining_ms: 0,
            disabled: true,
            reason: crate::task::RestReason::default(),
        }],
    );
    s.handle_result(
        Millis(min),
        &w("a"),
        TaskId(1),
        2,
        err(ErrorKind::Unavailable),
    );
    s.handle_heartbeat(Millis(min * 100), &w("a"));
    s.handle_timeout(Millis(min * 100));
    assert!(dispatches(&drain(&mut s)).is_empty());
    let t = s.task(TaskId(1)).expect("still queued");
    assert_eq!(t.status, TaskStatus::Pending, "no attempt was consumed");
    s.check_invariants();
}

#[test]
fn urgent_tasks_go_to_the_fastest_measured_provider() {
    let mut s = sched();
    let t0 = Millis(0);
    s.handle_worker_up(
        t0,
        w("gpu"),
        with_offers(4, vec![offer("ollama", Tier::Local, &["r1"])]),
    );
    s.handle_worker_up(
        t0,
        w("groq"),
        with_offers(4, vec![offer("groq", Tier::Free, &["llama"])]),
    );
    // Measure: the local model takes 4 s, Groq 300 ms.
    for (id, provider) in [(1, "ollama"), (2, "groq")] {
        let mut sp = crate::task::test_spec("agent_action", 5);
        sp.provider = Some(provider.into());
        s.handle_submit(t0, TaskId(id), Arc::new(sp), t0);
    }
    let first = routes(&drain(&mut s));
    assert_eq!(first.len(), 2);
    for (task, worker, r) in first {
        let took = if r.prefer == "ollama" { 4_000 } else { 300 };
        s.handle_result(Millis(took), &worker, task, 1, ok_from(&r.prefer));
    }
    let view = s.workers(Millis(5_000));
    assert_eq!(
        view.iter()
            .find(|v| v.id == w("groq"))
            .map(|v| v.latency_ms["groq"]),
        Some(300)
    );
    // Normal priority: cheapest first (local). Priority ≥ 8: fastest (Groq),
    // with any tier allowed.
    s.handle_submit(
        Millis(5_000),
        TaskId(3),
        spec("agent_action", 5),
        Millis(5_000),
    );
    s.handle_submit(
        Millis(5_000),
        TaskId(4),
        spec("agent_action", 8),
        Millis(5_000),
    );
    let mut d = routes(&drain(&mut s));
    d.sort_by_key(|x| x.0);
    assert_eq!(
        d,
        vec![
            (TaskId(3), w("gpu"), route("ollama", Tier::Local)),
            (TaskId(4), w("groq"), route("groq", Tier::Paid)),
        ]
    );
    s.check_invariants();
}

#[test]
fn a_cooldown_lifted_early_by_the_worker_frees_it_at_once() {
    let mut s = sched();
    s.handle_worker_up(Millis(0), w("a"), caps("echo", 1));
    let cooldown = |ms: u64| ProviderCooldown {
        provider: "echo".into(),
        model: None,
        remaining_ms: ms,
        disabled: false,
        reason: crate::task::RestReason::default(),
    };
    s.handle_cooldowns(Millis(0), &w("a"), &[cooldown(60_000)]);
    s.handle_submit(Millis(0), TaskId(1), spec("agent_action", 5), Millis(0));
    assert!(dispatches(&drain(&mut s)).is_empty(), "cooling down");
    // The same cooldown reported again a heartbeat later changes nothing.
    s.handle_cooldowns(Millis(500), &w("a"), &[cooldown(59_500)]);
    assert!(dispatches(&drain(&mut s)).is_empty());
    // The worker's cooldown is over early (its own limiter freed a slot): the
    // task goes at once, without waiting for the old end.
    s.handle_cooldowns(Millis(1_000), &w("a"), &[]);
    assert_eq!(dispatches(&drain(&mut s)), vec![(TaskId(1), 1, w("a"))]);
    s.check_invariants();
}

#[test]
fn a_failed_attempt_is_retried_on_another_worker_when_one_can_take_it() {
    let mut s = sched();
    // Same tier, "a" sorts first: only the failure moves the retry.
    s.handle_worker_up(Millis(0), w("a"), caps("echo", 4));
    s.handle_worker_up(Millis(0), w("b"), caps("echo", 4));
    s.handle_submit(Millis(0), TaskId(1), spec("agent_action", 5), Millis(0));
    assert_eq!(dispatches(&drain(&mut s)), vec![(TaskId(1), 1, w("a"))]);
    s.handle_result(Millis(10), &w("a"), TaskId(1), 1, err(ErrorKind::Transient));
    let at = Millis(10).plus(SchedulerConfig::lan().retry_backoff_ms);
    for id in ["a", "b"] {
        s.handle_heartbeat(at, &w(id));
    }
    s.handle_timeout(at);
    assert_eq!(dispatches(&drain(&mut s)), vec![(TaskId(1), 2, w("b"))]);
    // Cancelling a task that is backing off leaves no timer behind.
    s.handle_result(at, &w("b"), TaskId(1), 2, err(ErrorKind::Transient));
    assert_eq!(s.handle_cancel(at, TaskId(1)), CancelResult::Cancelled);
    // (check_invariants counts timers: a stale retry timer would fail it.)
    s.check_invariants();
}

#[test]
fn a_paused_scheduler_assigns_nothing_until_resumed() {
    let mut s = sched();
    let t0 = Millis(1_000);
    s.handle_worker_up(t0, w("a"), caps("echo", 2));
    s.handle_submit(t0, TaskId(1), spec("agent_action", 5), t0);
    assert_eq!(
        dispatches(&drain(&mut s)).len(),
        1,
        "running before the pause"
    );
    s.set_paused(t0, true);
    s.handle_submit(t0, TaskId(2), spec("agent_action", 5), t0);
    s.handle_worker_up(t0, w("b"), caps("echo", 2));
    assert!(
        dispatches(&drain(&mut s)).is_empty(),
        "nothing new while paused"
    );
    // A running task finishes normally meanwhile.
    assert_eq!(
        s.handle_result(Millis(1_010), &w("a"), TaskId(1), 1, ok()),
        ResultDisposition::Finished
    );
    assert!(dispatches(&drain(&mut s)).is_empty(), "still paused");
    s.set_paused(Millis(1_020), false);
    assert_eq!(
        dispatches(&drain(&mut s))
            .iter()
            .map(|d| d.0)
            .collect::<Vec<_>>(),
        [TaskId(2)],
        "resumed at once"
    );
}

#[test]
fn embeddings_go_only_to_offers_that_embed_that_model() {
    let mut s = sched();
    let t0 = Millis(1_000);
    // "chat" serves chats only; "emb" embeds with "e1".
    s.handle_worker_up(t0, w("chat"), caps("echo", 4));
    let mut embedding = offer("openai", Tier::Paid, &["gpt"]);
    embedding.embedding_models = vec!["e1".into()];
    s.handle_worker_up(
        t0,
        w("emb"),
        Capabilities {
            offers: vec![embedding],
            slots: 4,
            ..Capabilities::default()
        },
    );
    let embed = |model: Option<&str>| {
        let mut spec = crate::task::test_spec("embeddings", 5);
        spec.request.model = model.map(str::to_owned);
        spec.request.embed = Some(crate::task::EmbedRequest {
            input: vec!["x".into()],
            dimensions: None,
        });
        Arc::new(spec)
    };
    // The chat worker is cheaper (local) and idle, yet never gets them.
    s.handle_submit(t0, TaskId(1), embed(Some("e1")), t0);
    s.handle_submit(t0, TaskId(2), embed(None), t0);
    let d = dispatches(&drain(&mut s));
    assert_eq!(d, vec![(TaskId(1), 1, w("emb")), (TaskId(2), 1, w("emb"))]);
    // A model nobody embeds with waits.
    s.handle_submit(t0, TaskId(3), embed(Some("e2")), t0);
    assert!(dispatches(&drain(&mut s)).is_empty());
    s.check_invariants();
}
