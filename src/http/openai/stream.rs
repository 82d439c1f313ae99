//! Streamed chat completions: `data:` lines only, as OpenAI sends them.
//!
//! Nothing is sent until the task's first text (or its end): a failed
//! attempt before that is retried on another worker without the client
//! seeing it, and a failure then is an ordinary error status. After it the
//! stream is: a role chunk, content deltas, the tool calls (each with its
//! `index`, whole: workers send them with the result), a finish chunk, a
//! usage chunk with `choices: []` when `stream_options.include_usage`, and
//! `data: [DONE]`. If the attempt that was streaming fails, the text
//! already sent cannot be taken back: the stream ends with an in-band
//! `data: {"error": …}` and `[DONE]`, and the task is cancelled. A client
//! that goes away cancels its task.
//!
//! Every chunk carries the same `id`, `created` and `model`; the model is
//! the one asked for (the one that served is known only at the end, and is
//! in the task at `/api/tasks/{id}`).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::request::Chat;
use super::{
    Submitted, completion_id, finished_output, set_request_id, tool_calls_json, usage_json,
};
use crate::http::ApiError;
use crate::node::actor::TaskState;
use crate::node::cluster::Watch;
use crate::node::live_output::{Chunk, Followed, TaskFollower};
use crate::task::TaskOutput;

/// A comment line sent when nothing else was for this long, so proxies and
/// clients do not take a slow model for a dead connection (SSE comments
/// are skipped by the SDKs' parsers).
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// What happened next to the task being streamed.
enum Event {
    Text(Chunk),
    Reset(Chunk),
    Done(Box<TaskState>),
}

/// The task's live output and its end.
struct Follow {
    sub: Submitted,
    follower: TaskFollower,
}

impl Follow {
    async fn next(&mut self) -> Event {
        // Finished before we subscribed: nothing more will be said.
        if self.sub.finished.is_none() {
            loop {
                match self.follower.next().await {
                    Followed::Chunk(c) if c.text.is_empty() => {}
                    Followed::Chunk(c) => return Event::Text(c),
                    Followed::Reset(c) => return Event::Reset(c),
                    Followed::Done(state) => {
                        self.sub.finished = state.map(|s| *s);
                        break;
                    }
                }
            }
        }
        Event::Done(Box::new(self.sub.end().await))
    }
}

/// The fixed part of every chunk.
struct Frame {
    id: String,
    created: u64,
    model: String,
}

impl Frame {
    fn chunk(&self, delta: Value, finish: Option<&str>) -> Bytes {
        self.data(&json!({
            "id": self.id, "object": "chat.completion.chunk", "created": self.created,
            "model": self.model, "system_fingerprint": null,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        }))
    }

    fn usage(&self, out: &TaskOutput) -> Bytes {
        self.data(&json!({
            "id": self.id, "object": "chat.completion.chunk", "created": self.created,
            "model": self.model, "system_fingerprint": null,
            "choices": [], "usage": usage_json(out.usage),
        }))
    }

    fn data(&self, v: &Value) -> Bytes {
        Bytes::from(format!("data: {v}\n\n"))
    }
}

const DONE: &str = "data: [DONE]\n\n";

/// A stored answer as a stream (a cache hit).
pub(super) fn replay(chat: &Chat, id: String, created: u64, out: TaskOutput) -> Response {
    let frame = Frame {
        id,
        created,
        model: chat.model.clone(),
    };
    let (tx, body) = mpsc::channel::<Result<Bytes, Infallible>>(16);
    let include_usage = chat.include_usage;
    tokio::spawn(async move {
        let mut w = Writer { tx, frame };
        if w.start(&out.content).await.is_ok() {
            let _ = w.finish(&out, include_usage).await;
        }
    });
    sse_response(body)
}

fn sse_response(body: mpsc::Receiver<Result<Bytes, Infallible>>) -> Response {
    let frames =
        futures_util::stream::unfold(
            body,
            |mut rx| async move { rx.recv().await.map(|b| (b, rx)) },
        );
    let mut resp = Response::new(Body::from_stream(frames));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

/// Answers a streamed request for the submitted task; a complete answer is
/// stored through `lead` (an interrupted one never is).
pub(super) async fn respond(
    sub: Submitted,
    chat: &Chat,
    lead: Option<crate::node::cache::Lead>,
) -> Result<Response, ApiError> {
    let cluster: Arc<crate::node::Cluster> = sub.abandon.cluster.clone();
    let id = sub.id();
    let mut follower = TaskFollower::subscribe(cluster.live_output(), id).map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_subscribers",
            e.to_string(),
        )
        .with_retry_after(1)
    })?;
    let mut sub = sub;
    match cluster.watch(id).await? {
        Watch::Live(rx) => follower.until(rx),
        Watch::Finished(s) => sub.finished = Some(*s),
    }
    let mut follow = Follow { sub, follower };
    // Wait for the first text or the end, at most the queue timeout while
    // nobody can serve the task.
    let queue_timeout = cluster.config().queue_timeout;
    let first = match tokio::time::timeout(queue_timeout, follow.next()).await {
        Ok(e) => e,
        Err(_) => {
            follow.sub.check_queue().await?;
            follow.next().await
        }
    };
    let frame = Frame {
        id: completion_id(id),
        created: follow.sub.created,
        model: chat.model.clone(),
    };
    let (tx, body) = mpsc::channel::<Result<Bytes, Infallible>>(16);
    let include_usage = chat.include_usage;
    let ttl_ms = u64::try_from(cluster.config().cache_ttl.as_millis()).unwrap_or(u64::MAX);
    match first {
        Event::Done(state) => {
            // Finished before any text: a failure is a plain error; a
            // success (tool calls only, or a provider that does not
            // stream) is sent as one stream.
            let out = finished_output(&state)?.clone();
            if let Some(lead) = lead {
                lead.finish(crate::node::now_millis(), ttl_ms, &out).await;
            }
            tokio::spawn(async move {
                let mut w = Writer { tx, frame };
                let _ = w.start(&out.content).await;
                let _ = w.finish(&out, include_usage).await;
            });
        }
        Event::Text(c) | Event::Reset(c) => {
            tokio::spawn(async move {
                let mut w = Writer { tx, frame };
                if w.start(&c.text).await.is_ok() {
                    follow_to_end(&mut w, &mut follow, c, include_usage, lead, ttl_ms).await;
                }
                // Dropping `follow` here cancels the task unless it ended.
            });
        }
    }
    let mut resp = sse_response(body);
    set_request_id(&mut resp, id);
    Ok(resp)
}

/// Writes frames to the client; an error means it went away.
struct Writer {
    tx: mpsc::Sender<Result<Bytes, Infallible>>,
    frame: Frame,
}

struct Gone;

impl Writer {
    async fn send(&mut self, b: Bytes) -> Result<(), Gone> {
        self.tx.send(Ok(b)).await.map_err(|_| Gone)
    }

    /// The role chunk, then the first text.
    async fn start(&mut self, text: &str) -> Result<(), Gone> {
        let role = self
            .frame
            .chunk(json!({"role": "assistant", "content": ""}), None);
        self.send(role).await?;
        self.text(text).await
    }

    async fn text(&mut self, text: &str) -> Result<(), Gone> {
        if text.is_empty() {
            return Ok(());
        }
        let b = self.frame.chunk(json!({"content": text}), None);
        self.send(b).await
    }

    /// Tool calls, the finish chunk, usage, `[DONE]`.
    async fn finish(&mut self, out: &TaskOutput, include_usage: bool) -> Result<(), Gone> {
        if !out.tool_calls.is_empty() {
            let b = self
                .frame
                .chunk(json!({"tool_calls": tool_calls_json(out)}), None);
            self.send(b).await?;
        }
        let b = self
            .frame
            .chunk(json!({}), Some(out.finish_reason.as_str()));
        self.send(b).await?;
        if include_usage {
            let b = self.frame.usage(out);
            self.send(b).await?;
        }
        self.send(Bytes::from_static(DONE.as_bytes())).await
    }

    /// The stream breaks: an in-band error, then `[DONE]`.
    async fn fail(&mut self, e: &ApiError) {
        let b = self.frame.data(&e.body());
        if self.send(b).await.is_ok() {
            let _ = self.send(Bytes::from_static(DONE.as_bytes())).await;
        }
    }
}

async fn follow_to_end(
    w: &mut Writer,
    follow: &mut Follow,
    first: Chunk,
    include_usage: bool,
    lead: Option<crate::node::cache::Lead>,
    ttl_ms: u64,
) {
    let attempt = first.attempt;
    let mut sent = first.text.len();
    loop {
        let event = tokio::select! {
            e = follow.next() => e,
            () = w.tx.closed() => return,
            () = tokio::time::sleep(KEEP_ALIVE) => {
                if w.send(Bytes::from_static(b": keep-alive\n\n")).await.is_err() {
                    return;
                }
                continue;
            }
        };
        let step = match event {
            Event::Text(c) | Event::Reset(c) if c.attempt != attempt => {
                // The attempt that was streaming failed and another began:
                // what was sent cannot be taken back.
                let e = ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    "stream_interrupted",
                    format!(
                        "the worker answering task {} failed mid-answer; d8 does not restart an answer it has begun to send (the request may be sent again)",
                        follow.sub.id()
                    ),
                );
                w.fail(&e).await;
                return;
            }
            Event::Text(c) => {
                sent += c.text.len();
                w.text(&c.text).await
            }
            Event::Reset(c) => {
                // Fell behind: the whole text so far; send what is new.
                let rest = c.text.get(sent..).unwrap_or_default().to_owned();
                sent = sent.max(c.text.len());
                w.text(&rest).await
            }
            Event::Done(state) => {
                match finished_output(&state) {
                    Ok(out) => {
                        // Complete: worth keeping even if this client
                        // leaves now.
                        if let Some(lead) = lead {
                            lead.finish(crate::node::now_millis(), ttl_ms, out).await;
                        }
                        // Text the live output dropped (over its cap) is
                        // in the result.
                        let rest = out.content.get(sent..).unwrap_or_default();
                        if w.text(rest).await.is_ok() {
                            let _ = w.finish(out, include_usage).await;
                        }
                    }
                    Err(e) => w.fail(&e).await,
                }
                return;
            }
        };
        if step.is_err() {
            return;
        }
    }
}
