//! `GET /api/events`: one Server-Sent Events stream per client with what
//! the dashboard shows, kept current.
//!
//! Events, in order:
//! - `snapshot` `{"stats", "workers", "tasks"}`: the stats as
//!   `GET /api/workers/stats?include=cooldowns,cache,queue`, the workers as
//!   `GET /api/workers`, the 50 most recent tasks as `GET /api/tasks`.
//!   First, and again whenever the client fell too far behind (its missed
//!   changes are dropped, not queued: a slow client costs bounded memory).
//! - `worker` `{"worker_id", "state"}`: connected, disconnected, draining,
//!   dead, revoked.
//! - `task`: a task as `GET /api/tasks/{id}` shows it, when accepted,
//!   dispatched, and finished (once durable).
//! - `rests` `{"worker_id", "rests": [...]}`: which of a worker's providers
//!   rest, or why, changed (as in `provider_cooldowns` of `GET /api/workers`).
//! - `stats`: the stats again, at most once a second, after changes.
//! - `log`: a line of the log ring as `GET /api/logs` shows it; the
//!   snapshot carries the newest [`SNAPSHOT_LOGS`] as `logs`.
//!
//! Browsers cannot send a bearer header with `EventSource`: read it with
//! `fetch` and a stream reader (the dashboard does).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event as Sse, KeepAlive};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::admin::{Include, stats_json, workers_json};
use super::tasks::task_json;
use super::{ApiError, AppState};
use crate::node::Cluster;
use crate::node::cluster::TaskFilter;
use crate::node::events::Event;
use crate::node::logs::{Entry, LogQuery};

/// Tasks in a snapshot.
const SNAPSHOT_TASKS: usize = 50;
/// Log lines in a snapshot (and most caught up after falling behind).
const SNAPSHOT_LOGS: usize = 100;
/// Shortest time between two `stats` events.
const STATS_EVERY: Duration = Duration::from_secs(1);

/// The snapshot event, and the sequence number of the newest log line.
async fn snapshot(cluster: &Cluster) -> Result<(Sse, u64), ApiError> {
    let (tasks, _) = cluster
        .list_tasks(&TaskFilter::default(), SNAPSHOT_TASKS)
        .await?;
    let (logs, newest) = cluster.logs().query(&LogQuery {
        limit: SNAPSHOT_LOGS,
        ..LogQuery::default()
    });
    let body = json!({
        "stats": stats_json(cluster, Include::ALL).await?,
        "workers": workers_json(cluster).await?,
        "tasks": tasks.iter().map(task_json).collect::<Vec<Value>>(),
        "logs": logs.iter().map(|e| e.json()).collect::<Vec<Value>>(),
    });
    Ok((
        Sse::default().event("snapshot").data(body.to_string()),
        newest,
    ))
}

fn log_event(e: &Entry) -> Sse {
    Sse::default().event("log").data(e.json().to_string())
}

/// One client's place in the stream.
struct Follow {
    cluster: Arc<Cluster>,
    rx: broadcast::Receiver<Event>,
    logs: broadcast::Receiver<Arc<Entry>>,
    /// The newest log line sent (or in the snapshot).
    log_last: u64,
    ready: VecDeque<Sse>,
    /// Something changed since the last `stats`.
    dirty: bool,
    tick: tokio::time::Interval,
}

impl Follow {
    async fn next(mut self) -> Option<(Result<Sse, Infallible>, Follow)> {
        loop {
            if let Some(e) = self.ready.pop_front() {
                return Some((Ok(e), self));
            }
            tokio::select! {
                ev = self.rx.recv() => match ev {
                    Ok(Event::Worker { worker_id, state }) => {
                        self.dirty = true;
                        let data = json!({"worker_id": worker_id, "state": state});
                        self.ready.push_back(Sse::default().event("worker").data(data.to_string()));
                    }
                    Ok(Event::Rests { worker_id, rests }) => {
                        self.dirty = true;
                        let data = json!({"worker_id": worker_id, "rests": rests});
                        self.ready.push_back(Sse::default().event("rests").data(data.to_string()));
                    }
                    Ok(Event::Task(t)) => {
                        self.dirty = true;
                        self.ready.push_back(Sse::default().event("task").data(task_json(&t).to_string()));
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        // Fell behind: start again from the present.
                        self.rx = self.rx.resubscribe();
                        self.logs = self.logs.resubscribe();
                        self.dirty = false;
                        let (snap, newest) = snapshot(&self.cluster).await.ok()?;
                        self.log_last = newest;
                        self.ready.push_back(snap);
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
                line = self.logs.recv() => match line {
                    Ok(e) => {
                        if e.seq > self.log_last {
                            self.log_last = e.seq;
                            self.ready.push_back(log_event(&e));
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        // Fell behind on logs: the newest the ring holds
                        // since the last sent, then on from the present.
                        self.logs = self.logs.resubscribe();
                        let (lines, newest) = self.cluster.logs().query(&LogQuery {
                            after: Some(self.log_last),
                            limit: SNAPSHOT_LOGS,
                            ..LogQuery::default()
                        });
                        self.ready.extend(lines.iter().map(|e| log_event(e)));
                        self.log_last = self.log_last.max(newest);
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
                _ = self.tick.tick(), if self.dirty => {
                    self.dirty = false;
                    let stats = stats_json(&self.cluster, Include::ALL).await.ok()?;
                    self.ready.push_back(Sse::default().event("stats").data(stats.to_string()));
                }
            }
        }
    }
}

/// `GET /api/events`.
pub(super) async fn events(State(cluster): AppState) -> Result<Response, ApiError> {
    // Listen first, so nothing between the snapshot and the first change
    // is lost (a change may then arrive twice: snapshot and event).
    let rx = cluster.events().subscribe();
    let logs = cluster.logs().subscribe();
    let (first, log_last) = snapshot(&cluster).await?;
    let mut tick = tokio::time::interval(STATS_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let follow = Follow {
        cluster: cluster.clone(),
        rx,
        logs,
        log_last,
        ready: VecDeque::from([first]),
        dirty: false,
        tick,
    };
    let stream = futures_util::stream::unfold(follow, Follow::next);
    Ok(axum::response::sse::Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}
