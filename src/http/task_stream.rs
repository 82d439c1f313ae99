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
use tokio::sync::{broadcast, oneshot};

use super::body::Segment;
use super::tasks::{parse_task_id, task_json};
use super::{ApiError, AppState};
use crate::node::Cluster;
use crate::node::actor::TaskState;
use crate::node::cluster::Watch;
use crate::node::live_output::{Chunk, LiveOutput, Next};
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

/// Where one subscription is.
struct Follow {
    id: TaskId,
    output: LiveOutput,
    first: Option<Chunk>,
    rx: Option<broadcast::Receiver<Chunk>>,
    done: Option<oneshot::Receiver<TaskState>>,
    cluster: Arc<Cluster>,
}

impl Follow {
    async fn next(mut self) -> Option<(Result<Event, Infallible>, Follow)> {
        if let Some(c) = self.first.take() {
            return Some((Ok(chunk_event("chunk", &c)), self));
        }
        loop {
            let done = self.done.as_mut()?;
            let (output, id, rx) = (&self.output, self.id, &mut self.rx);
            let next = async {
                match rx.as_mut() {
                    Some(rx) => output.next(id, rx).await,
                    // The output ended: only `done` is left.
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                next = next => match next {
                    Next::Chunk(c) => return Some((Ok(chunk_event("chunk", &c)), self)),
                    Next::Reset(c) => return Some((Ok(chunk_event("reset", &c)), self)),
                    Next::Closed => self.rx = None,
                },
                state = done => {
                    self.done = None;
                    let state = match state {
                        Ok(s) => s,
                        Err(_) => self.cluster.task(self.id, None).await.ok()?,
                    };
                    return Some((Ok(done_event(&state)), self));
                }
            }
        }
    }
}

impl Drop for Follow {
    fn drop(&mut self) {
        // Unsubscribe first, so the entry counts no listener.
        self.rx = None;
        self.output.release(self.id);
    }
}

pub(super) async fn stream(
    State(cluster): AppState,
    Segment(id): Segment,
) -> Result<Response, ApiError> {
    let id = parse_task_id(&id)?;
    let output = cluster.live_output().clone();
    // Subscribe before asking, so nothing produced in between is missed.
    // `follow` owns the subscription from here: however this handler ends
    // (error, finished task, client gone mid-await), dropping it releases
    // the entry.
    let (first, rx) = output.subscribe(id).map_err(|e| {
        ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "too_many_subscribers",
            e.to_string(),
        )
    })?;
    let mut follow = Follow {
        id,
        output,
        first,
        rx: Some(rx),
        done: None,
        cluster: cluster.clone(),
    };
    match cluster.watch(id).await? {
        Watch::Live(done) => follow.done = Some(done),
        Watch::Finished(state) => {
            drop(follow);
            let once = futures_util::stream::iter([Ok::<_, Infallible>(done_event(&state))]);
            return Ok(Sse::new(once).into_response());
        }
    };
    let events = futures_util::stream::unfold(follow, Follow::next);
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}
