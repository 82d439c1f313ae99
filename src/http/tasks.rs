//! `/api/tasks`: submit one task or a batch, read one (optionally waiting
//! for it to finish), cancel one.

use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::body::{Segment, TaskRequest, parse};
use super::{ApiError, ApiResult, AppState};
use std::sync::Arc;

use crate::node::actor::TaskState;
use crate::node::cache::{self, Lookup};
use crate::node::cluster::{TaskFilter, Watch};
use crate::node::{Cluster, now_millis};
use crate::task::{TaskId, TaskSpec, rfc3339};

/// Most tasks accepted in one batch request.
const MAX_BATCH: usize = 10_000;

/// A task as the API shows it (the original project's shape).
pub(super) fn task_json(s: &TaskState) -> Value {
    json!({
        "task_id": s.task_id.to_string(),
        "status": s.status,
        "type": s.task_type,
        "priority": s.priority,
        "result": s.result,
        "error": s.error,
        "worker_id": s.worker_id.as_ref().map(|w| w.0.clone()),
        "agent_id": s.agent_id,
        "attempts": s.attempts,
        "created_at": rfc3339(s.created_at),
        "completed_at": s.completed_at.map(rfc3339),
    })
}

#[derive(Deserialize)]
pub(super) struct ListQuery {
    status: Option<String>,
    #[serde(rename = "type")]
    task_type: Option<String>,
    agent: Option<String>,
    limit: Option<usize>,
    before: Option<String>,
}

/// Most tasks in one page of `GET /api/tasks`.
const MAX_PAGE: usize = 1_000;

/// `GET /api/tasks?status=&type=&agent=&limit=&before=`: recent tasks,
/// newest first, as `GET /api/tasks/{id}` shows each; `next_before` pages.
pub(super) async fn list(State(cluster): AppState, Query(q): Query<ListQuery>) -> ApiResult {
    if let Some(s) = q.status.as_deref()
        && !["pending", "assigned", "completed", "failed", "cancelled"].contains(&s)
    {
        return Err(ApiError::bad_request(
            "invalid_status",
            format!("status {s:?} is not one of pending, assigned, completed, failed, cancelled"),
        )
        .with_param("status"));
    }
    let limit = q.limit.unwrap_or(100);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(
            ApiError::bad_request("invalid_limit", format!("limit must be 1-{MAX_PAGE}"))
                .with_param("limit"),
        );
    }
    let before = q
        .before
        .as_deref()
        .map(|b| {
            b.parse::<u64>().map(TaskId).map_err(|_| {
                ApiError::bad_request("invalid_before", "before must be a task id")
                    .with_param("before")
            })
        })
        .transpose()?;
    let filter = TaskFilter {
        status: q.status,
        task_type: q.task_type,
        agent: q.agent,
        before,
    };
    let (tasks, next) = cluster.list_tasks(&filter, limit).await?;
    Ok(Json(json!({
        "tasks": tasks.iter().map(task_json).collect::<Vec<_>>(),
        "next_before": next.map(|id| id.to_string()),
    }))
    .into_response())
}

/// `201 {"task_id", "status": "pending"}`.
pub(super) fn accepted(id: TaskId) -> Response {
    (
        StatusCode::CREATED,
        Json(json!({ "task_id": id.to_string(), "status": "pending" })),
    )
        .into_response()
}

/// Task ids are decimal strings; anything else names no task.
pub(super) fn parse_task_id(s: &str) -> Result<TaskId, ApiError> {
    s.parse::<u64>()
        .map(TaskId)
        .map_err(|_| ApiError::not_found(format!("no task {s:?}")))
}

pub(super) async fn submit(
    State(cluster): AppState,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let req: TaskRequest = parse(body, cluster.config().max_body_bytes)?;
    let ttl = req
        .cache
        .then(|| u64::try_from(cluster.config().cache_ttl.as_millis()).unwrap_or(u64::MAX));
    let spec = req.into_spec(cluster.task_defaults(), now_millis())?;
    submit_one(&cluster, spec, ttl).await
}

/// Submits one task, through the result cache when `ttl_ms` is set: a hit
/// is recorded as a completed task at once (`201 {"status": "completed"}`),
/// a miss is stored when its task completes. `x-d8-cache` says which. The
/// key covers the task type, the whole chat (the agent's prompt included)
/// and the routing constraints; not priority, attempts or timeouts.
pub(super) async fn submit_one(
    cluster: &Arc<Cluster>,
    spec: TaskSpec,
    ttl_ms: Option<u64>,
) -> ApiResult {
    let Some(ttl_ms) = ttl_ms else {
        let ids = cluster.submit(vec![spec]).await?;
        return Ok(accepted(ids[0]));
    };
    let mut request = serde_json::to_value(&spec.request).unwrap_or_default();
    if let Some(o) = request.as_object_mut() {
        o.remove("stream");
    }
    let key = cache::key(
        "task",
        &json!({"type": spec.task_type, "request": request,
                "provider": spec.provider, "max_tier": spec.max_tier}),
    );
    let (id, label) = match cluster.cache().lookup(key, now_millis()) {
        Lookup::Hit(out) => (cluster.record_cached(spec, out).await?, "hit"),
        Lookup::Lead(lead) => {
            let id = cluster.submit(vec![spec]).await?[0];
            let c = cluster.clone();
            // The submitter does not wait: the answer is stored when the
            // task completes (a task that fails or is cancelled stores
            // nothing, and the lead's drop frees identical requests).
            tokio::spawn(async move {
                let state = match c.watch(id).await {
                    Ok(Watch::Live(rx)) => rx.await.ok(),
                    Ok(Watch::Finished(s)) => Some(*s),
                    Err(_) => None,
                };
                if let Some(s) = state
                    && s.status == "completed"
                    && let Some(out) = &s.result
                {
                    lead.finish(now_millis(), ttl_ms, out).await;
                }
            });
            (id, "miss")
        }
        // An identical task is running: this one runs too, uncached.
        Lookup::Follow(_) => (cluster.submit(vec![spec]).await?[0], "bypass"),
    };
    let status = if label == "hit" {
        "completed"
    } else {
        "pending"
    };
    let mut resp = (
        StatusCode::CREATED,
        Json(json!({ "task_id": id.to_string(), "status": status })),
    )
        .into_response();
    resp.headers_mut()
        .insert("x-d8-cache", axum::http::HeaderValue::from_static(label));
    Ok(resp)
}

pub(super) async fn submit_batch(
    State(cluster): AppState,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let reqs: Vec<TaskRequest> = parse(body, cluster.config().max_body_bytes)?;
    if reqs.is_empty() || reqs.len() > MAX_BATCH {
        return Err(ApiError::bad_request(
            "invalid_batch",
            format!("a batch holds 1-{MAX_BATCH} tasks"),
        ));
    }
    let (defaults, now) = (cluster.task_defaults(), now_millis());
    let specs = reqs
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            r.into_spec(defaults, now).map_err(|mut e| {
                e.message = format!("task {i}: {}", e.message);
                e
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let ids = cluster.submit(specs).await?;
    let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
    Ok((StatusCode::CREATED, Json(ids)).into_response())
}

#[derive(Deserialize)]
pub(super) struct WaitQuery {
    wait: Option<String>,
}

pub(super) async fn get(
    State(cluster): AppState,
    Segment(id): Segment,
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
                secs.min(cluster.config().max_wait.as_secs_f64()),
            ))
        }
    };
    let state = cluster.task(id, wait).await?;
    Ok(Json(task_json(&state)).into_response())
}

pub(super) async fn cancel(State(cluster): AppState, Segment(id): Segment) -> ApiResult {
    let id = parse_task_id(&id)?;
    cluster.cancel(id).await?;
    Ok(Json(json!({ "task_id": id.to_string(), "status": "cancelled" })).into_response())
}
