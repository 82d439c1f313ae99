//! `/v1/*`: the OpenAI-compatible API, for agent frameworks written against
//! the `openai` SDKs. Every request becomes a cluster task (visible in
//! `/api/tasks/{id}`; its id is in `x-request-id`), queued, routed and
//! retried like any other.
//!
//! - `POST /v1/chat/completions` (also `/chat/completions`): [`chat`].
//! - `POST /v1/embeddings`: `embeddings`.
//! - `GET /v1/models`, `GET /v1/models/{id}` (ids may contain `/`).
//!
//! Models: a name some worker offers; `<provider>/<model>` to pin a d8
//! provider kind (tried after exact names, since OpenRouter's ids contain
//! `/` too); or `d8/auto`, `d8/local`, `d8/free` to route by tier.
//!
//! Status codes follow what the SDKs map: 400 (with `param`), 401, 404
//! `model_not_found`, 413, 429 with `Retry-After` when every capable
//! provider is cooling down, 503 with `Retry-After` when no online worker
//! could serve the request within `--queue-timeout-secs`, 502 when the task
//! failed after d8's own retries. Failures d8 already retried carry
//! `x-should-retry: false`, so the SDKs do not multiply attempts.

mod embeddings;
mod request;
mod stream;

pub(super) use embeddings::embeddings;

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::oneshot;

use super::body::{Segment, parse};
use super::{ApiError, AppState};
use crate::node::actor::TaskState;
use crate::node::cluster::Watch;
use crate::node::models::{Capacity, ModelEntry, Target};
use crate::node::{Cluster, cache};
use crate::task::{ChatRequest, TaskId, TaskOutput, TaskSpec, Tier, Usage};

/// Task type of `/v1` chats (routing rules may name it).
pub const TASK_TYPE: &str = "chat_completion";

/// The virtual models and the tier each caps.
const VIRTUAL: [(&str, Option<Tier>, &str); 3] = [
    ("d8/auto", None, "any worker, cheapest tier first"),
    ("d8/local", Some(Tier::Local), "hardware you own only"),
    ("d8/free", Some(Tier::Free), "local and free-tier keys only"),
];

fn model_not_found(model: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "model_not_found",
        format!(
            "the model {model:?} is not offered by any worker (GET /v1/models lists what is; d8/auto takes any)"
        ),
    )
    .with_param("model")
}

/// Where a chat for `model` may run.
fn resolve(
    model: &str,
    knobs: &request::Knobs,
    catalog: &[ModelEntry],
) -> Result<Target, ApiError> {
    resolve_for(model, knobs, catalog, false)
}

/// Where a request for `model` may run: a chat, or embeddings (`embed`),
/// which must name their model: vectors of different models cannot be
/// compared, so the virtual ids would hand back incomparable vectors.
fn resolve_for(
    model: &str,
    knobs: &request::Knobs,
    catalog: &[ModelEntry],
    embed: bool,
) -> Result<Target, ApiError> {
    let catalog: Vec<&ModelEntry> = catalog.iter().filter(|e| e.embedding == embed).collect();
    let mut target = Target {
        model: None,
        provider: knobs.provider.clone(),
        max_tier: knobs.max_tier,
        embed,
    };
    if embed && VIRTUAL.iter().any(|(id, ..)| *id == model) {
        return Err(ApiError::bad_request(
            "invalid_request",
            format!(
                "embeddings need a named embedding model, not {model:?}: vectors from different models cannot be compared (GET /v1/models lists them)"
            ),
        )
        .with_param("model"));
    }
    if let Some((_, cap, _)) = VIRTUAL.iter().find(|(id, ..)| *id == model) {
        target.max_tier = match (target.max_tier, *cap) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        return Ok(target);
    }
    if catalog.iter().any(|e| e.id == model) {
        target.model = Some(model.to_owned());
        return Ok(target);
    }
    if let Some((provider, name)) = model.split_once('/')
        && catalog
            .iter()
            .any(|e| e.provider == provider && e.id == name)
    {
        if target.provider.as_deref().is_some_and(|p| p != provider) {
            return Err(ApiError::bad_request(
                "invalid_request",
                format!(
                    "model {model:?} pins provider {provider:?} but d8.provider says otherwise"
                ),
            )
            .with_param("d8.provider"));
        }
        target.provider = Some(provider.to_owned());
        target.model = Some(name.to_owned());
        return Ok(target);
    }
    Err(model_not_found(model))
}

/// `GET /v1/models`: every model offered now or within the last hour, then
/// the virtual ids. `owned_by` is the provider; `d8` says whether a worker
/// offers it now.
pub(super) async fn models(State(cluster): AppState) -> Result<Response, ApiError> {
    let catalog = cluster.models().await?;
    let data: Vec<Value> = list(&catalog);
    Ok(Json(json!({"object": "list", "data": data})).into_response())
}

/// `GET /v1/models/{id}`.
pub(super) async fn model(
    State(cluster): AppState,
    Segment(id): Segment,
) -> Result<Response, ApiError> {
    let catalog = cluster.models().await?;
    list(&catalog)
        .into_iter()
        .find(|m| m["id"] == id.as_str())
        .map(|m| Json(m).into_response())
        .ok_or_else(|| model_not_found(&id))
}

fn list(catalog: &[ModelEntry]) -> Vec<Value> {
    let mut ids: Vec<Value> = Vec::new();
    for e in catalog {
        // A name two providers serve is listed once by name (any of them
        // serves it) and once per provider as `<provider>/<name>`.
        let shared = catalog.iter().filter(|o| o.id == e.id).count() > 1;
        let entry = |id: String| {
            json!({
                "id": id, "object": "model", "created": e.last_seen.0 / 1000,
                "owned_by": e.provider,
                "d8": {"provider": e.provider, "tier": e.tier, "online": e.online,
                       "embedding": e.embedding,
                       "last_seen": crate::task::rfc3339(e.last_seen.0)}
            })
        };
        if !shared || !ids.iter().any(|v| v["id"] == e.id.as_str()) {
            ids.push(entry(e.id.clone()));
        }
        if shared {
            ids.push(entry(format!("{}/{}", e.provider, e.id)));
        }
    }
    let online = catalog.iter().any(|e| e.online);
    for (id, tier, what) in VIRTUAL {
        ids.push(json!({
            "id": id, "object": "model", "created": 0, "owned_by": "d8",
            "d8": {"routes": what, "max_tier": tier, "online": online}
        }));
    }
    ids
}

/// Cancels the task when dropped armed: the client went away (or gave up)
/// before the answer, which nobody will read.
struct Abandon {
    cluster: Arc<Cluster>,
    id: TaskId,
    armed: bool,
}

impl Drop for Abandon {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (cluster, id) = (self.cluster.clone(), self.id);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if cluster.cancel(id).await.is_ok() {
                    tracing::debug!(task = %id, "client gone: task cancelled");
                }
            });
        }
    }
}

/// A submission in flight. Hyper drops a handler whose client hung up,
/// possibly while `submit` waits for the store, when the task is already
/// scheduled but its id not yet known here: the submission runs on its own
/// task, and if this is dropped before it ends, the task is cancelled as
/// soon as its id is.
struct Submitting {
    cluster: Arc<Cluster>,
    handle: Option<tokio::task::JoinHandle<Result<Vec<TaskId>, crate::node::ClusterError>>>,
}

impl Submitting {
    fn start(cluster: &Arc<Cluster>, spec: TaskSpec) -> Submitting {
        let c = cluster.clone();
        Submitting {
            cluster: cluster.clone(),
            handle: Some(tokio::spawn(async move { c.submit(vec![spec]).await })),
        }
    }

    async fn wait(mut self) -> Result<TaskId, ApiError> {
        let Some(handle) = self.handle.as_mut() else {
            return Err(ApiError::unavailable("submission lost"));
        };
        let r = handle.await;
        self.handle = None;
        match r {
            Ok(Ok(ids)) => ids
                .first()
                .copied()
                .ok_or_else(|| ApiError::unavailable("submission lost")),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(ApiError::unavailable("the submission failed; try again")),
        }
    }
}

impl Drop for Submitting {
    fn drop(&mut self) {
        let Some(handle) = self.handle.take() else {
            return;
        };
        let cluster = self.cluster.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Ok(Ok(ids)) = handle.await {
                    for id in ids {
                        let _ = cluster.cancel(id).await;
                    }
                }
            });
        }
    }
}

/// A submitted chat, followed to its end.
struct Submitted {
    abandon: Abandon,
    done: Option<oneshot::Receiver<TaskState>>,
    finished: Option<TaskState>,
    target: Target,
    created: u64,
}

impl Submitted {
    fn id(&self) -> TaskId {
        self.abandon.id
    }

    /// The final state.
    async fn end(&mut self) -> TaskState {
        if let Some(s) = self.finished.take() {
            self.abandon.armed = false;
            return s;
        }
        let state = match self.done.as_mut() {
            Some(rx) => rx.await.ok(),
            None => None,
        };
        let state = match state {
            Some(s) => s,
            // The actor stopped: the stored state is the truth.
            None => match self.abandon.cluster.task(self.id(), None).await {
                Ok(s) => s,
                Err(e) => failed_state(self.id(), &e.to_string()),
            },
        };
        self.abandon.armed = false;
        state
    }

    /// Called at the queue timeout: a task still waiting while no online
    /// worker can serve it is cancelled and answered 503.
    async fn check_queue(&mut self) -> Result<(), ApiError> {
        let cluster = self.abandon.cluster.clone();
        let state = cluster.task(self.id(), None).await?;
        if state.status == "pending" && cluster.capacity(&self.target).await? == Capacity::Nobody {
            self.abandon.armed = false;
            let _ = cluster.cancel(self.id()).await;
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "no_capable_worker",
                format!(
                    "no online worker can serve this request (waited {} s; see GET /v1/models and /api/workers)",
                    cluster.config().queue_timeout.as_secs()
                ),
            )
            .with_retry_after(5));
        }
        Ok(())
    }
}

fn failed_state(id: TaskId, error: &str) -> TaskState {
    TaskState {
        task_id: id,
        status: "failed",
        task_type: TASK_TYPE.to_owned(),
        priority: 0,
        result: None,
        error: Some(error.to_owned()),
        worker_id: None,
        agent_id: None,
        attempts: 0,
        created_at: 0,
        completed_at: None,
    }
}

/// `POST /v1/chat/completions`.
pub(super) async fn chat(
    State(cluster): AppState,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match chat_inner(cluster, &headers, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn chat_inner(
    cluster: Arc<Cluster>,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body: Value = parse(body, cluster.config().max_body_bytes)?;
    let chat = request::parse(&body)?;
    // One snapshot of the workers for both questions (each costs a round
    // trip to the scheduler).
    let workers = cluster.live_workers().await?;
    let target = resolve(&chat.model, &chat.knobs, &cluster.models_of(&workers))?;
    let key = cache::key(
        "chat",
        &shaping(&body, &["stream", "stream_options", "user", "metadata"]),
    );
    let lead = match cached(&cluster, headers, &chat.knobs, key).await {
        Cached::Hit(out) => {
            let id = format!("chatcmpl-c{}", hex(&key[..8]));
            let created = crate::node::now_millis().0 / 1000;
            let mut resp = if chat.stream {
                stream::replay(&chat, id, created, out)
            } else {
                Json(completion(&id, created, &out)).into_response()
            };
            set_cache_header(&mut resp, "hit");
            return Ok(resp);
        }
        Cached::Miss(lead) => Some(lead),
        Cached::Bypass => None,
    };
    check_resting(&workers, &target, &chat.model)?;
    let mut req = chat.request.clone();
    req.model.clone_from(&target.model);
    let sub = submit(&cluster, req, chat.knobs.priority, target).await?;
    let label = if lead.is_some() { "miss" } else { "bypass" };
    if chat.stream {
        let mut resp = stream::respond(sub, &chat, lead).await?;
        set_cache_header(&mut resp, label);
        return Ok(resp);
    }
    let (id, created) = (sub.id(), sub.created);
    let state = follow_to_end(sub).await?;
    let out = finished_output(&state)?;
    if let Some(lead) = lead {
        lead.finish(crate::node::now_millis(), cache_ttl_ms(&cluster), out)
            .await;
    }
    let mut resp = Json(completion(&completion_id(id), created, out)).into_response();
    set_request_id(&mut resp, id);
    set_cache_header(&mut resp, label);
    Ok(resp)
}

/// What the cache says about a request.
enum Cached {
    /// A stored answer (or the one an identical request just computed).
    Hit(TaskOutput),
    /// Not stored: compute it and store it through the lead.
    Miss(cache::Lead),
    /// The cache is not used for this request.
    Bypass,
}

/// Whether the request turns the cache on: `d8.cache` or `x-d8-cache: on`;
/// `x-d8-cache: off`, `d8.cache: false` and `Cache-Control: no-store` win.
fn cache_wanted(headers: &HeaderMap, knobs: &request::Knobs) -> bool {
    let header = headers
        .get("x-d8-cache")
        .and_then(|v| v.to_str().ok())
        .map(str::trim);
    let no_store = headers
        .get_all(axum::http::header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',')
                .any(|d| d.trim().eq_ignore_ascii_case("no-store"))
        });
    if no_store
        || header.is_some_and(|h| h.eq_ignore_ascii_case("off"))
        || knobs.cache == Some(false)
    {
        return false;
    }
    header.is_some_and(|h| h.eq_ignore_ascii_case("on")) || knobs.cache == Some(true)
}

/// Looks `key` up when the request wants the cache; waits for an identical
/// request in flight (once: if it fails, this one goes on uncached).
async fn cached(
    cluster: &Arc<Cluster>,
    headers: &HeaderMap,
    knobs: &request::Knobs,
    key: crate::store::CacheKey,
) -> Cached {
    if !cache_wanted(headers, knobs) {
        return Cached::Bypass;
    }
    match cluster.cache().lookup(key, crate::node::now_millis()) {
        cache::Lookup::Hit(out) => Cached::Hit(out),
        cache::Lookup::Lead(lead) => Cached::Miss(lead),
        cache::Lookup::Follow(rx) => match cache::follow(rx).await {
            Some(out) => Cached::Hit(out),
            None => Cached::Bypass,
        },
    }
}

/// The request body without what does not shape the answer: `drop`, and
/// the cache control and priority in the `d8` object.
fn shaping(body: &Value, drop: &[&str]) -> Value {
    let mut v = body.clone();
    if let Some(o) = v.as_object_mut() {
        for k in drop {
            o.remove(*k);
        }
        if let Some(d8) = o.get_mut("d8").and_then(Value::as_object_mut) {
            d8.remove("cache");
            d8.remove("priority");
            if d8.is_empty() {
                o.remove("d8");
            }
        }
    }
    v
}

fn cache_ttl_ms(cluster: &Cluster) -> u64 {
    u64::try_from(cluster.config().cache_ttl.as_millis()).unwrap_or(u64::MAX)
}

fn set_cache_header(resp: &mut Response, label: &'static str) {
    resp.headers_mut()
        .insert("x-d8-cache", HeaderValue::from_static(label));
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// 429 when every provider that could serve `target` is cooling down.
fn check_resting(
    workers: &[crate::core::WorkerView],
    target: &Target,
    model: &str,
) -> Result<(), ApiError> {
    match crate::node::models::capacity(workers, target) {
        Capacity::Resting(ms) => Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_exceeded",
            format!(
                "every provider that can serve {model:?} is cooling down after rate limits; the first is free again in {:.1} s",
                ms as f64 / 1000.0
            ),
        )
        .with_retry_after(ms.div_ceil(1000))),
        _ => Ok(()),
    }
}

/// Submits `req` as a `/v1` task bound for `target`; cancelled if the
/// client goes away from here on.
async fn submit(
    cluster: &Arc<Cluster>,
    req: ChatRequest,
    priority: u8,
    target: Target,
) -> Result<Submitted, ApiError> {
    let defaults = cluster.task_defaults();
    let spec = TaskSpec {
        task_type: TASK_TYPE.to_owned(),
        priority,
        request: req,
        max_attempts: defaults.max_attempts,
        attempt_timeout_ms: defaults.attempt_timeout_ms,
        deadline: None,
        agent_id: None,
        provider: target.provider.clone(),
        max_tier: target.max_tier,
    };
    // Subscribe before submitting is impossible (no id yet); the live
    // output keeps the attempt's text so far for a late subscriber.
    let id = Submitting::start(cluster, spec).wait().await?;
    Ok(Submitted {
        abandon: Abandon {
            cluster: cluster.clone(),
            id,
            armed: true,
        },
        done: None,
        finished: None,
        target,
        created: crate::node::now_millis().0 / 1000,
    })
}

/// Waits for a submitted task's final state; 503 if it is still waiting
/// at the queue timeout while no online worker can serve it.
async fn follow_to_end(mut sub: Submitted) -> Result<TaskState, ApiError> {
    let cluster = sub.abandon.cluster.clone();
    match cluster.watch(sub.id()).await? {
        Watch::Live(rx) => sub.done = Some(rx),
        Watch::Finished(s) => sub.finished = Some(*s),
    }
    let queue_timeout = cluster.config().queue_timeout;
    Ok(match tokio::time::timeout(queue_timeout, sub.end()).await {
        Ok(s) => s,
        Err(_) => {
            sub.check_queue().await?;
            sub.end().await
        }
    })
}

/// The output of a finished task, or the error to answer.
fn finished_output(state: &TaskState) -> Result<&TaskOutput, ApiError> {
    match (state.status, &state.result) {
        ("completed", Some(out)) => Ok(out),
        ("cancelled", _) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "cancelled",
            format!("task {} was cancelled", state.task_id),
        )
        .retried()),
        _ => Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            "upstream_failed",
            format!(
                "task {} failed after {} attempt(s): {}",
                state.task_id,
                state.attempts,
                state.error.as_deref().unwrap_or("no reason recorded")
            ),
        )
        .retried()),
    }
}

fn set_request_id(resp: &mut Response, id: TaskId) {
    resp.headers_mut()
        .insert("x-request-id", HeaderValue::from(id.0));
}

/// `chatcmpl-<task id>`.
fn completion_id(id: TaskId) -> String {
    format!("chatcmpl-{id}")
}

fn usage_json(u: Option<Usage>) -> Value {
    u.map_or(Value::Null, |u| {
        json!({
            "prompt_tokens": u.prompt_tokens,
            "completion_tokens": u.completion_tokens,
            "total_tokens": u64::from(u.prompt_tokens) + u64::from(u.completion_tokens),
        })
    })
}

fn tool_calls_json(out: &TaskOutput) -> Vec<Value> {
    out.tool_calls
        .iter()
        .enumerate()
        .map(|(i, c)| {
            json!({"index": i, "id": c.id, "type": "function",
                   "function": {"name": c.name, "arguments": c.arguments}})
        })
        .collect()
}

/// The whole answer: OpenAI's `chat.completion` object.
fn completion(id: &str, created: u64, out: &TaskOutput) -> Value {
    let mut message = json!({"role": "assistant", "content": out.content, "refusal": null});
    if !out.tool_calls.is_empty() {
        if out.content.is_empty() {
            message["content"] = Value::Null;
        }
        // `index` belongs to stream deltas only.
        let calls: Vec<Value> = tool_calls_json(out)
            .into_iter()
            .map(|mut c| {
                if let Some(o) = c.as_object_mut() {
                    o.remove("index");
                }
                c
            })
            .collect();
        message["tool_calls"] = json!(calls);
    }
    json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": out.model,
        "system_fingerprint": null,
        "choices": [{"index": 0, "message": message, "logprobs": null,
                     "finish_reason": out.finish_reason.as_str()}],
        "usage": usage_json(out.usage),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::Millis;

    fn entry(id: &str, provider: &str) -> ModelEntry {
        ModelEntry {
            id: id.into(),
            provider: provider.into(),
            tier: Tier::Free,
            online: true,
            last_seen: Millis(5_000),
            embedding: false,
        }
    }

    fn knobs() -> request::Knobs {
        request::Knobs {
            priority: 5,
            max_tier: None,
            provider: None,
            cache: None,
        }
    }

    #[test]
    fn model_names_resolve_exact_then_provider_then_virtual() {
        let catalog = [
            entry("meta-llama/llama-3.1-8b", "openrouter"),
            entry("llama", "groq"),
            entry("llama", "ollama"),
        ];
        let t = resolve("meta-llama/llama-3.1-8b", &knobs(), &catalog).expect("exact");
        assert_eq!(t.model.as_deref(), Some("meta-llama/llama-3.1-8b"));
        assert_eq!(t.provider, None);
        let t = resolve("groq/llama", &knobs(), &catalog).expect("pinned");
        assert_eq!(
            (t.provider.as_deref(), t.model.as_deref()),
            (Some("groq"), Some("llama"))
        );
        let t = resolve("d8/free", &knobs(), &catalog).expect("virtual");
        assert_eq!((t.model, t.max_tier), (None, Some(Tier::Free)));
        let e = resolve("gpt-5", &knobs(), &catalog).expect_err("unknown");
        assert_eq!((e.status.as_u16(), e.code), (404, "model_not_found"));
        assert_eq!(e.param.as_deref(), Some("model"));
        // A provider prefix that is not a provider of that model is unknown.
        assert!(resolve("gemini/llama", &knobs(), &catalog).is_err());
    }

    #[test]
    fn shared_names_are_listed_once_and_per_provider() {
        let catalog = [
            entry("llama", "groq"),
            entry("llama", "ollama"),
            entry("solo", "groq"),
        ];
        let ids: Vec<String> = list(&catalog)
            .iter()
            .map(|m| m["id"].as_str().unwrap_or_default().to_owned())
            .collect();
        assert_eq!(
            ids,
            [
                "llama",
                "groq/llama",
                "ollama/llama",
                "solo",
                "d8/auto",
                "d8/local",
                "d8/free"
            ]
        );
    }
}
