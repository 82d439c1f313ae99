//! `GET /api/tasks/{id}/stream`: a task's output as Server-Sent Events.
//!
//! Events, in order:
//! - `chunk` `{"attempt": n, "text": "…"}`: generated text. The first event
//!   of a subscription carries everything the current attempt produced so
//!   far. A chunk with a higher `attempt` than the previous one means the
//!   earlier attempt failed and its text is void: start over.
//! - `reset` `{"attempt": n, "text": "…"}`: the subscriber fell behind; the
//!   text is the attempt's whole output so far and replaces what it has.
//! - `done`: the final task, exactly as `GET /api/tasks/{id}` returns it.
//!
//! Only tasks submitted with `"stream": true` produce chunks; any other task
//! gets just `done` when it finishes, which makes this a push alternative to
//! long-polling.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::body::Segment;
use super::tasks::{parse_task_id, task_json};
use super::{ApiError, AppState};
use crate::node::Cluster;
use crate::node::actor::TaskState;
use crate::node::cluster::Watch;
use crate::node::live_output::{Chunk, Followed, TaskFollower};
use crate::task::TaskId;

fn chunk_event(kind: &'static str, c: &Chunk) -> Event {
    Event::default()
        .event(kind)
        .data(json!({"attempt": c.attempt, "text": &*c.text}).to_string())
}

fn done_event(s: &TaskState) -> Event {
    Event::default()
        .event("done")
        .data(task_json(s).to_string())
}

/// Where one subscription is; `None` once `done` was sent.
struct Follow {
    follower: Option<TaskFollower>,
    id: TaskId,
    cluster: Arc<Cluster>,
}

impl Follow {
    async fn next(mut self) -> Option<(Result<Event, Infallible>, Follow)> {
        let event = match self.follower.as_mut()?.next().await {
            Followed::Chunk(c) => chunk_event("chunk", &c),
            Followed::Reset(c) => chunk_event("reset", &c),
            Followed::Done(state) => {
                // Unsubscribe now: nothing follows `done`.
                self.follower = None;
                let state = match state {
                    Some(s) => *s,
                    None => self.cluster.task(self.id, None).await.ok()?,
                };
                done_event(&state)
            }
        };
        Some((Ok(event), self))
    }
}

pub(super) async fn stream(
    State(cluster): AppState,
    Segment(id): Segment,
) -> Result<Response, ApiError> {
    let id = parse_task_id(&id)?;
    // Subscribe before asking, so nothing produced in between is missed.
    // The follower owns the subscription from here: however this handler
    // ends (error, finished task, client gone mid-await), dropping it
    // releases the entry.
    let mut follower = TaskFollower::subscribe(cluster.live_output(), id).map_err(|e| {
        ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "too_many_subscribers",
            e.to_string(),
        )
    })?;
    match cluster.watch(id).await? {
        Watch::Live(done) => follower.until(done),
        Watch::Finished(state) => {
            drop(follower);
            let once = futures_util::stream::iter([Ok::<_, Infallible>(done_event(&state))]);
            return Ok(Sse::new(once).into_response());
        }
    };
    let follow = Follow {
        follower: Some(follower),
        id,
        cluster: cluster.clone(),
    };
    let events = futures_util::stream::unfold(follow, Follow::next);
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}
