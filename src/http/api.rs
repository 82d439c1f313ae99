//! Handlers. Each validates its input completely before anything is stored.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::ApiError;
use crate::core::{CancelResult, Liveness};
use crate::node::actor::{QueryReply, SchedMsg, TaskState};
use crate::node::now_millis;
use crate::node::orchestrator::{JOIN_TOKEN_FILE, Shared};
use crate::store::{AgentDef, Op, PendingTask, TokenKind};
use crate::task::{
    ChatMessage, ChatRequest, DEFAULT_PRIORITY, Millis, PRIORITY_RANGE, TaskId, TaskSpec,
};

type ApiResult = Result<Response, ApiError>;

/// Parses a JSON body whatever its content type; maps size and syntax errors.
fn parse<T: DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
    limit: usize,
) -> Result<T, ApiError> {
    let bytes = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large(limit)
        } else {
            ApiError::bad_request(
                "invalid_body",
                format!("could not read the request body: {e}"),
            )
        }
    })?;
    if bytes.is_empty() {
        return Err(ApiError::bad_request(
            "invalid_json",
            "request body is empty; send a JSON object",
        ));
    }
    serde_json::from_slice(&bytes).map_err(|e| {
        let code = if e.is_syntax() || e.is_eof() {
            "invalid_json"
        } else {
            "invalid_request"
        };
        ApiError::bad_request(code, format!("invalid request body: {e}"))
    })
}

/// Formats ms since the epoch as RFC 3339 UTC (`2026-11-25T17:47:08.123Z`).
pub fn rfc3339(ms: u64) -> String {
    let secs = ms / 1_000;
    let days = i64::try_from(secs / 86_400).unwrap_or(i64::MAX);
    let rem = secs % 86_400;
    // Civil-from-days (proleptic Gregorian), after Howard Hinnant's algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60,
        ms % 1_000
    )
}

pub(crate) fn task_json(s: &TaskState) -> Value {
    json!({
        "task_id": s.task_id.to_string(),
        "status": s.status,
        "type": s.task_type,
        "priority": s.priority,
        "result": s.result,
        "error": s.error,
        "worker_id": s.worker_id.as_ref().map(|w| w.0.clone()),
        "attempts": s.attempts,
        "created_at": rfc3339(s.created_at),
        "completed_at": s.completed_at.map(rfc3339),
    })
}

fn check_priority(p: Option<i64>) -> Result<u8, ApiError> {
    match p {
        None => Ok(DEFAULT_PRIORITY),
        Some(p) => u8::try_from(p)
            .ok()
            .filter(|p| PRIORITY_RANGE.contains(p))
            .ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_priority",
                    format!("priority {p} is out of range: use 1 (lowest) to 10 (most urgent)"),
                )
            }),
    }
}

fn check_task_type(t: &str) -> Result<(), ApiError> {
    let ok = !t.is_empty()
        && t.len() <= 64
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "invalid_type",
            "task type must be 1-64 characters from letters, digits, '_', '-' and '.'",
        ))
    }
}

pub(crate) async fn health() -> Response {
    // `time` lets `d8 doctor` measure clock skew between machines.
    Json(json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "time": now_millis().0,
    }))
    .into_response()
}

pub(crate) async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint")
}

pub(crate) async fn method_not_allowed() -> ApiError {
    ApiError {
        status: StatusCode::METHOD_NOT_ALLOWED,
        code: "method_not_allowed",
        message: "method not allowed on this endpoint".into(),
    }
}

/// Makes the tasks durable and schedules them; answers only once they are
/// durable. Scheduling overlaps the fsync: the insert is queued in the store
/// first, so any later write about these tasks (their results) commits after
/// it. If the commit fails the tasks are cancelled and the client told so.
async fn submit(shared: &Shared, specs: Vec<TaskSpec>) -> Result<Vec<TaskId>, ApiError> {
    let n = specs.len() as u64;
    let first = shared.store.allocate_ids(n);
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
    let durable = shared
        .store
        .begin_commit(pending.iter().cloned().map(Op::InsertTask).collect())?;
    shared.sched.send(SchedMsg::Submit(pending)).await?;
    if let Err(e) = durable.wait().await {
        for id in &ids {
            let _ = shared.sched.cancel(*id).await;
        }
        return Err(e.into());
    }
    Ok(ids)
}

fn accepted(id: TaskId) -> Response {
    (
        StatusCode::CREATED,
        Json(json!({ "task_id": id.to_string(), "status": "pending" })),
    )
        .into_response()
}

#[derive(Deserialize)]
struct ActRequest {
    action_type: String,
    #[serde(default)]
    input_data: Value,
    priority: Option<i64>,
}

const DEFAULT_AGENT_PROMPT: &str = "You are an autonomous AI agent. Carry out the requested action using the input provided and reply with the result only.";

pub(crate) async fn agent_act(
    State(shared): State<Arc<Shared>>,
    Path(agent_id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let req: ActRequest = parse(body, shared.cfg.max_body_bytes)?;
    check_agent_id(&agent_id)?;
    if req.action_type.trim().is_empty() || req.action_type.len() > 128 {
        return Err(ApiError::bad_request(
            "invalid_action_type",
            "action_type must be 1-128 characters",
        ));
    }
    let priority = check_priority(req.priority)?;
    let agent = shared
        .agents
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&agent_id)
        .cloned();
    let (system, model, temperature, task_type) = match agent {
        Some(a) => (
            a.system_prompt,
            a.model,
            a.temperature,
            a.task_type.unwrap_or_else(|| "agent_action".into()),
        ),
        None => (
            format!("{DEFAULT_AGENT_PROMPT} Your agent id is {agent_id}."),
            None,
            None,
            "agent_action".into(),
        ),
    };
    let input = match &req.input_data {
        Value::Null => "(none)".to_owned(),
        Value::String(s) => s.clone(),
        other => serde_json::to_string_pretty(other).unwrap_or_default(),
    };
    let user = format!("Action: {}\n\nInput:\n{input}", req.action_type);
    let spec = TaskSpec {
        task_type,
        priority,
        request: ChatRequest {
            messages: vec![
                ChatMessage::new("system", system),
                ChatMessage::new("user", user),
            ],
            model,
            temperature,
            ..ChatRequest::default()
        },
        max_attempts: shared.cfg.max_attempts,
        attempt_timeout_ms: u64::try_from(shared.cfg.attempt_timeout.as_millis())
            .unwrap_or(u64::MAX),
        deadline: None,
        agent_id: Some(agent_id),
        provider: None,
        max_tier: None,
    };
    let ids = submit(&shared, vec![spec]).await?;
    Ok(accepted(ids[0]))
}

fn check_agent_id(id: &str) -> Result<(), ApiError> {
    if id.is_empty() || id.len() > 128 || id.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "invalid_agent_id",
            "agent id must be 1-128 printable characters",
        ));
    }
    Ok(())
}

#[derive(Deserialize)]
struct AgentRequest {
    system_prompt: String,
    model: Option<String>,
    temperature: Option<f32>,
    task_type: Option<String>,
}

pub(crate) async fn put_agent(
    State(shared): State<Arc<Shared>>,
    Path(agent_id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let req: AgentRequest = parse(body, shared.cfg.max_body_bytes)?;
    check_agent_id(&agent_id)?;
    if let Some(t) = &req.task_type {
        check_task_type(t)?;
    }
    check_temperature(req.temperature)?;
    let def = AgentDef {
        system_prompt: req.system_prompt,
        model: req.model,
        temperature: req.temperature,
        task_type: req.task_type,
    };
    shared
        .store
        .commit(vec![Op::PutAgent(agent_id.clone(), def.clone())])
        .await?;
    shared
        .agents
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(agent_id.clone(), def.clone());
    Ok(Json(agent_json(&agent_id, &def)).into_response())
}

fn agent_json(id: &str, a: &AgentDef) -> Value {
    json!({
        "agent_id": id,
        "system_prompt": a.system_prompt,
        "model": a.model,
        "temperature": a.temperature,
        "task_type": a.task_type.as_deref().unwrap_or("agent_action"),
    })
}

pub(crate) async fn get_agent(
    State(shared): State<Arc<Shared>>,
    Path(agent_id): Path<String>,
) -> ApiResult {
    let agents = shared.agents.lock().unwrap_or_else(|p| p.into_inner());
    let a = agents.get(&agent_id).ok_or_else(|| {
        ApiError::not_found(format!(
            "no agent {agent_id:?} (it would get the default prompt)"
        ))
    })?;
    Ok(Json(agent_json(&agent_id, a)).into_response())
}

fn check_temperature(t: Option<f32>) -> Result<(), ApiError> {
    if t.is_some_and(|t| !(0.0..=2.0).contains(&t)) {
        return Err(ApiError::bad_request(
            "invalid_temperature",
            "temperature must be between 0 and 2",
        ));
    }
    Ok(())
}

#[derive(Deserialize)]
struct TaskRequest {
    #[serde(rename = "type")]
    task_type: String,
    data: TaskData,
    priority: Option<i64>,
    max_attempts: Option<u32>,
    timeout_secs: Option<u64>,
    deadline_secs: Option<u64>,
}

#[derive(Deserialize)]
struct TaskData {
    messages: Vec<ChatMessage>,
    model: Option<String>,
    /// Run only on workers with this provider (`groq`, `ollama`, …).
    provider: Option<String>,
    /// The dearest tier allowed: `local`, `free` or `paid` (default).
    max_tier: Option<String>,
    temperature: Option<f32>,
    max_tokens: Option<u32>,
    /// One stop sequence or a list of up to four.
    stop: Option<Stop>,
    /// `{"type": "json_object"}` asks for JSON; `{"type": "text"}` is the default.
    response_format: Option<ResponseFormat>,
    /// Forward tokens as they are generated (`GET /api/tasks/{id}/stream`).
    #[serde(default)]
    stream: bool,
}

/// OpenAI's `stop`: a string or an array of strings.
#[derive(Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct ResponseFormat {
    #[serde(rename = "type")]
    kind: String,
}

/// Validates `stop` and `response_format`; returns (stop sequences, JSON mode).
fn check_output_controls(
    stop: Option<Stop>,
    format: Option<ResponseFormat>,
) -> Result<(Vec<String>, bool), ApiError> {
    let stop = match stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s],
        Some(Stop::Many(v)) => v,
    };
    if stop.len() > 4 || stop.iter().any(|s| s.is_empty() || s.len() > 256) {
        return Err(ApiError::bad_request(
            "invalid_stop",
            "stop must be a non-empty string or a list of at most 4 of them, each at most 256 bytes",
        ));
    }
    let json = match format.as_ref().map(|f| f.kind.as_str()) {
        None | Some("text") => false,
        Some("json_object") => true,
        Some(other) => {
            return Err(ApiError::bad_request(
                "invalid_response_format",
                format!(
                    "response_format type {other:?} is not supported (use \"json_object\" or \"text\")"
                ),
            ));
        }
    };
    Ok((stop, json))
}

fn task_spec(shared: &Shared, req: TaskRequest) -> Result<TaskSpec, ApiError> {
    check_task_type(&req.task_type)?;
    let priority = check_priority(req.priority)?;
    if req.data.messages.is_empty() {
        return Err(ApiError::bad_request(
            "invalid_messages",
            "data.messages must hold at least one message",
        ));
    }
    if let Some(m) = req
        .data
        .messages
        .iter()
        .find(|m| !matches!(m.role.as_str(), "system" | "user" | "assistant"))
    {
        return Err(ApiError::bad_request(
            "invalid_messages",
            format!(
                "message role {:?} is not one of system, user, assistant",
                m.role
            ),
        ));
    }
    check_temperature(req.data.temperature)?;
    let (stop, json) = check_output_controls(req.data.stop, req.data.response_format)?;
    let max_tier = req
        .data
        .max_tier
        .as_deref()
        .map(str::parse::<crate::task::Tier>)
        .transpose()
        .map_err(|e| ApiError::bad_request("invalid_max_tier", format!("data.max_tier: {e}")))?;
    for (what, v) in [("model", &req.data.model), ("provider", &req.data.provider)] {
        if v.as_ref()
            .is_some_and(|s| s.len() > 128 || s.chars().any(char::is_control))
        {
            return Err(ApiError::bad_request(
                "invalid_request",
                format!("data.{what} must be at most 128 printable characters"),
            ));
        }
    }
    if req.max_attempts.is_some_and(|a| !(1..=20).contains(&a)) {
        return Err(ApiError::bad_request(
            "invalid_max_attempts",
            "max_attempts must be 1-20",
        ));
    }
    if req.timeout_secs.is_some_and(|t| t == 0 || t > 86_400) {
        return Err(ApiError::bad_request(
            "invalid_timeout",
            "timeout_secs must be 1-86400",
        ));
    }
    let now = now_millis();
    Ok(TaskSpec {
        task_type: req.task_type,
        priority,
        request: ChatRequest {
            messages: req.data.messages,
            model: req.data.model,
            temperature: req.data.temperature,
            max_tokens: req.data.max_tokens,
            stop,
            json,
            stream: req.data.stream,
        },
        max_attempts: req.max_attempts.unwrap_or(shared.cfg.max_attempts),
        attempt_timeout_ms: req.timeout_secs.map_or_else(
            || u64::try_from(shared.cfg.attempt_timeout.as_millis()).unwrap_or(u64::MAX),
            |s| s * 1_000,
        ),
        deadline: req
            .deadline_secs
            .map(|s| Millis(now.0.saturating_add(s.saturating_mul(1_000)))),
        agent_id: None,
        provider: req.data.provider,
        max_tier,
    })
}

pub(crate) async fn submit_task(
    State(shared): State<Arc<Shared>>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let req: TaskRequest = parse(body, shared.cfg.max_body_bytes)?;
    let spec = task_spec(&shared, req)?;
    let ids = submit(&shared, vec![spec]).await?;
    Ok(accepted(ids[0]))
}

/// Most tasks accepted in one batch request.
const MAX_BATCH: usize = 10_000;

pub(crate) async fn submit_batch(
    State(shared): State<Arc<Shared>>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let reqs: Vec<TaskRequest> = parse(body, shared.cfg.max_body_bytes)?;
    if reqs.is_empty() || reqs.len() > MAX_BATCH {
        return Err(ApiError::bad_request(
            "invalid_batch",
            format!("a batch holds 1-{MAX_BATCH} tasks"),
        ));
    }
    let specs = reqs
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            task_spec(&shared, r).map_err(|mut e| {
                e.message = format!("task {i}: {}", e.message);
                e
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let ids = submit(&shared, specs).await?;
    let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
    Ok((StatusCode::CREATED, Json(ids)).into_response())
}

pub(crate) fn parse_task_id(s: &str) -> Result<TaskId, ApiError> {
    s.parse::<u64>()
        .map(TaskId)
        .map_err(|_| ApiError::not_found(format!("no task {s:?}")))
}

#[derive(Deserialize)]
pub(crate) struct WaitQuery {
    wait: Option<String>,
}

pub(crate) async fn task_state(shared: &Shared, id: TaskId) -> Result<TaskState, ApiError> {
    match shared.sched.query(id, false).await? {
        QueryReply::State(s) | QueryReply::Waiting(s, _) => Ok(s),
        QueryReply::NotLive => match shared.store.result(id)? {
            Some(f) => Ok(TaskState::from(&f)),
            None => Err(ApiError::not_found(format!("no task {id}"))),
        },
    }
}

pub(crate) async fn get_task(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    Query(q): Query<WaitQuery>,
) -> ApiResult {
    let id = parse_task_id(&id)?;
    let wait = match q.wait.as_deref() {
        None => None,
        Some(w) => {
            let secs: f64 = w
                .parse()
                .ok()
                .filter(|s: &f64| s.is_finite() && *s >= 0.0)
                .ok_or_else(|| {
                    ApiError::bad_request("invalid_wait", "wait must be a number of seconds")
                })?;
            Some(Duration::from_secs_f64(
                secs.min(shared.cfg.max_wait.as_secs_f64()),
            ))
        }
    };
    let state = match wait {
        Some(wait) if !wait.is_zero() => match shared.sched.query(id, true).await? {
            QueryReply::Waiting(current, rx) => match tokio::time::timeout(wait, rx).await {
                Ok(Ok(done)) => done,
                _ => task_state(&shared, id).await.unwrap_or(current),
            },
            QueryReply::State(s) => s,
            QueryReply::NotLive => task_state(&shared, id).await?,
        },
        _ => task_state(&shared, id).await?,
    };
    Ok(Json(task_json(&state)).into_response())
}

pub(crate) async fn cancel_task(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> ApiResult {
    let id = parse_task_id(&id)?;
    match shared.sched.cancel(id).await? {
        CancelResult::Cancelled => {
            Ok(Json(json!({ "task_id": id.to_string(), "status": "cancelled" })).into_response())
        }
        CancelResult::NotLive => {
            let state = task_state(&shared, id).await?;
            Err(ApiError::conflict(
                "already_finished",
                format!("task {id} already {}", state.status),
            ))
        }
    }
}

#[derive(Deserialize)]
pub(crate) struct StatsQuery {
    include: Option<String>,
}

/// `GET /api/workers/stats`: exactly the original project's shape, so its
/// clients keep working. `?include=cooldowns` adds `cooldowns`: every
/// resting provider in the cluster (`worker_id`, `provider`, `model`,
/// `remaining_ms`, `disabled`).
pub(crate) async fn worker_stats(
    State(shared): State<Arc<Shared>>,
    Query(q): Query<StatsQuery>,
) -> ApiResult {
    let with_cooldowns = match q.include.as_deref() {
        None | Some("") => false,
        Some("cooldowns") => true,
        Some(other) => {
            return Err(ApiError::bad_request(
                "invalid_include",
                format!("include={other:?} is not known (use include=cooldowns)"),
            ));
        }
    };
    let s = shared.sched.stats().await?;
    let done = s.counters.completed + s.counters.failed;
    // Percent, two decimals; 0 before anything finished.
    let rate = if done == 0 {
        0.0
    } else {
        (s.counters.completed as f64 * 10_000.0 / done as f64).round() / 100.0
    };
    let mut body = json!({
        "workers": {
            "total": s.workers_total,
            "online": s.workers_online,
            "busy": s.workers_busy,
            "by_type": s.by_type,
        },
        "tasks": {
            "pending": s.pending,
            "assigned": s.assigned,
            "completed": s.counters.completed,
            "failed": s.counters.failed,
        },
        "performance": {
            "total_completed": s.counters.completed,
            "total_failed": s.counters.failed,
            "success_rate": rate,
        },
    });
    if with_cooldowns {
        let mut list = Vec::new();
        for w in shared.sched.workers().await? {
            for r in w.rests {
                list.push(json!({
                    "worker_id": w.id.0,
                    "provider": r.provider,
                    "model": r.model,
                    "remaining_ms": r.remaining_ms,
                    "disabled": r.disabled,
                }));
            }
        }
        body["cooldowns"] = Value::Array(list);
    }
    Ok(Json(body).into_response())
}

pub(crate) async fn list_workers(State(shared): State<Arc<Shared>>) -> ApiResult {
    let live = shared.sched.workers().await?;
    let enrolled: Vec<_> = shared.registry().workers().cloned().collect();
    let now = now_millis();
    let mut out = Vec::new();
    for rec in enrolled {
        let l = live.iter().find(|w| w.id.0 == rec.id);
        let status = match l {
            _ if rec.revoked => "revoked",
            None => "offline",
            Some(w) if w.draining => "draining",
            Some(w) if w.liveness == Liveness::Suspect => "suspect",
            Some(w) if w.active > 0 => "busy",
            Some(_) => "online",
        };
        out.push(json!({
            "worker_id": rec.id,
            "status": status,
            "enrolled_at": rfc3339(rec.enrolled_at.0),
            "worker_type": l.map(|w| w.caps.worker_type.clone()),
            "providers": l.map(|w| w.caps.providers()),
            "models": l.map(|w| w.caps.models()),
            "offers": l.map(|w| w.caps.offers.iter().map(|o| json!({
                "provider": o.provider,
                "tier": o.tier.as_str(),
                "models": o.models,
                "reasoning_model": o.reasoning_model,
                "latency_ms": w.latency_ms.get(&o.provider),
            })).collect::<Vec<_>>()),
            "slots": l.map(|w| w.caps.slots),
            "active_tasks": l.map(|w| w.active),
            "completed_tasks": l.map(|w| w.completed),
            "os": l.map(|w| w.caps.os.clone()),
            "arch": l.map(|w| w.caps.arch.clone()),
            "cpus": l.map(|w| w.caps.cpus),
            "memory_mb": l.map(|w| w.caps.memory_mb),
            "version": l.map(|w| w.caps.version.clone()),
            "connected_at": l.map(|w| rfc3339(w.connected_at.0)),
            "last_seen_ms_ago": l.map(|w| now.since(w.last_seen)),
            "cooldown_ms": l.and_then(|w| w.cooldown_until).map(|c| c.since(now)),
            "provider_cooldowns": l.map(|w| w.rests.clone()).unwrap_or_default(),
        }));
    }
    Ok(Json(out).into_response())
}

pub(crate) async fn revoke_worker(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> ApiResult {
    let rec = shared
        .registry()
        .revoke_worker(&id)
        .ok_or_else(|| ApiError::not_found(format!("no enrolled worker {id:?}")))?;
    shared.store.commit(vec![Op::PutWorker(rec)]).await?;
    shared
        .sched
        .send(SchedMsg::Disconnect {
            id: crate::task::WorkerId(id.clone()),
            reason: "this worker was revoked",
        })
        .await?;
    tracing::warn!(worker = %id, "worker revoked");
    Ok(Json(json!({ "worker_id": id, "status": "revoked" })).into_response())
}

pub(crate) async fn list_tokens(State(shared): State<Arc<Shared>>) -> ApiResult {
    let tokens = shared.registry().tokens(now_millis());
    Ok(Json(tokens).into_response())
}

#[derive(Deserialize, Default)]
struct CreateToken {
    ttl_secs: Option<u64>,
    max_uses: Option<u32>,
}

pub(crate) async fn create_token(
    State(shared): State<Arc<Shared>>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let req: CreateToken = match &body {
        Ok(b) if b.is_empty() => CreateToken::default(),
        _ => parse(body, shared.cfg.max_body_bytes)?,
    };
    if req.max_uses == Some(0) || req.ttl_secs == Some(0) {
        return Err(ApiError::bad_request(
            "invalid_token_limits",
            "ttl_secs and max_uses must be positive",
        ));
    }
    let (token, rec) = shared.registry().create_token(
        now_millis(),
        shared.ca.digest(),
        TokenKind::Extra,
        req.ttl_secs.map(|s| s.saturating_mul(1_000)),
        req.max_uses,
    );
    shared.store.commit(vec![Op::PutToken(rec.clone())]).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "id": rec.id,
            "token": token.to_string(),
            "expires_at": rec.expires_at.map(|m| rfc3339(m.0)),
            "max_uses": rec.max_uses,
        })),
    )
        .into_response())
}

pub(crate) async fn revoke_token(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> ApiResult {
    let rec = shared.registry().revoke_token(&id).ok_or_else(|| {
        ApiError::not_found(format!("no token with id (or unique prefix) {id:?}"))
    })?;
    shared.store.commit(vec![Op::PutToken(rec.clone())]).await?;
    Ok(Json(json!({ "id": rec.id, "revoked": true })).into_response())
}

pub(crate) async fn rotate_token(State(shared): State<Arc<Shared>>) -> ApiResult {
    let (token, ops) = {
        let mut reg = shared.registry();
        let mut ops: Vec<Op> = reg
            .revoke_default_tokens()
            .into_iter()
            .map(Op::PutToken)
            .collect();
        let (token, rec) = reg.create_token(
            now_millis(),
            shared.ca.digest(),
            TokenKind::Default,
            None,
            None,
        );
        ops.push(Op::PutToken(rec));
        (token, ops)
    };
    shared.store.commit(ops).await?;
    crate::node::files::write_file(
        &shared.cfg.data_dir.join(JOIN_TOKEN_FILE),
        format!("{token}\n").as_bytes(),
        true,
    )
    .map_err(|e| ApiError::unavailable(format!("token rotated but not saved: {e}")))?;
    *shared.join_token.lock().unwrap_or_else(|p| p.into_inner()) = token.clone();
    tracing::warn!("join token rotated; the previous one no longer enrolls workers");
    Ok(Json(json!({ "token": token.to_string() })).into_response())
}

#[cfg(test)]
mod tests {
    use super::rfc3339;

    #[test]
    fn formats_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_795_628_828_123), "2026-11-25T17:47:08.123Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }
}
