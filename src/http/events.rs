//! `GET /api/events`: one Server-Sent Events stream per client with what
//! the dashboard shows, kept current.
//!
//! Events, in order:
//! - `snapshot` `{"stats", "workers", "tasks"}`: the stats as
//!   `GET /api/workers/stats?include=cooldowns,cache`, the workers as
//!   `GET /api/workers`, the 50 most recent tasks as `GET /api/tasks`.
//!   First, and again whenever the client fell too far behind (its missed
//!   changes are dropped, not queued: a slow client costs bounded memory).
//! - `worker` `{"worker_id", "state"}`: connected, disconnected, draining,
//!   dead, revoked.
//! - `task`: a task as `GET /api/tasks/{id}` shows it, when accepted,
//!   dispatched, and finished (once durable).
//! - `stats`: the stats again, at most once a second, after changes.
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

use super::admin::{stats_json, workers_json};
use super::tasks::task_json;
use super::{ApiError, AppState};
use crate::node::Cluster;
use crate::node::cluster::TaskFilter;
use crate::node::events::Event;

/// Tasks in a snapshot.
const SNAPSHOT_TASKS: usize = 50;
/// Shortest time between two `stats` events.
const STATS_EVERY: Duration = Duration::from_secs(1);

async fn snapshot(cluster: &Cluster) -> Result<Sse, ApiError> {
    let (tasks, _) = cluster
        .list_tasks(&TaskFilter::default(), SNAPSHOT_TASKS)
        .await?;
    let body = json!({
        "stats": stats_json(cluster, true, true).await?,
        "workers": workers_json(cluster).await?,
        "tasks": tasks.iter().map(task_json).collect::<Vec<Value>>(),
    });
    Ok(Sse::default().event("snapshot").data(body.to_string()))
}

/// One client's place in the stream.
struct Follow {
    cluster: Arc<Cluster>,
    rx: broadcast::Receiver<Event>,
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
                    Ok(Event::Task(t)) => {
                        self.dirty = true;
                        self.ready.push_back(Sse::default().event("task").data(task_json(&t).to_string()));
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        // Fell behind: start again from the present.
                        self.rx = self.rx.resubscribe();
                        self.dirty = false;
                        self.ready.push_back(snapshot(&self.cluster).await.ok()?);
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
                _ = self.tick.tick(), if self.dirty => {
                    self.dirty = false;
                    let stats = stats_json(&self.cluster, true, true).await.ok()?;
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
    let first = snapshot(&cluster).await?;
    let mut tick = tokio::time::interval(STATS_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let follow = Follow {
        cluster: cluster.clone(),
        rx,
        ready: VecDeque::from([first]),
        dirty: false,
        tick,
    };
    let stream = futures_util::stream::unfold(follow, Follow::next);
    Ok(axum::response::sse::Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}
