//! Cluster administration: health, workers (list, stats, revoke) and join
//! tokens (list, create, revoke, rotate); plus the fallbacks for unknown
//! paths and methods.

use std::time::Duration;

use crate::node::Cluster;
use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt as _;
use serde::Deserialize;
use serde_json::{Value, json};

use super::body::{CreateToken, Segment, parse};
use super::{ApiError, ApiResult, AppState};
use crate::node::now_millis;
use crate::task::rfc3339;

/// `200 {"status":"ok"}` while every long-lived part runs; `503
/// {"status":"failing","down":[...]}` when one has stopped (the process is
/// about to exit for its service manager to restart it); `503
/// {"status":"degraded","reason":...}` while store writes fail (new work is
/// refused; it recovers by itself). Needs no key: load balancers and
/// `d8 doctor` call it.
pub(super) async fn health(State(cluster): AppState) -> Response {
    let down: Vec<&str> = cluster
        .vitals()
        .down()
        .into_iter()
        .map(|p| p.name())
        .collect();
    let degraded = cluster.store().degraded();
    let (status, word) = match (down.is_empty(), &degraded) {
        (false, _) => (StatusCode::SERVICE_UNAVAILABLE, "failing"),
        (true, Some(_)) => (StatusCode::SERVICE_UNAVAILABLE, "degraded"),
        (true, None) => (StatusCode::OK, "ok"),
    };
    // `time` lets `d8 doctor` measure clock skew between machines.
    let mut body = json!({
        "status": word,
        "version": env!("CARGO_PKG_VERSION"),
        "time": now_millis().0,
        "log_lines_dropped": crate::logging::dropped_lines(),
        // Whether /api needs the key (the dashboard asks for it only then).
        "auth": cluster.config().require_api_key,
    });
    // How many workers serve (the desktop app lists clusters with it; a
    // count tells a LAN peer nothing the mDNS advert does not). Omitted
    // when the queue's actor does not answer at once: health must.
    if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_millis(250), cluster.stats()).await {
        body["workers_online"] = json!(s.workers_online);
    }
    if !down.is_empty() {
        body["down"] = json!(down);
    }
    if let Some(why) = degraded {
        body["reason"] = json!(format!("store writes fail: {why}"));
    }
    (status, Json(body)).into_response()
}

pub(super) async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint")
}

pub(super) async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this endpoint",
    )
}

#[derive(Deserialize)]
pub(super) struct StatsQuery {
    include: Option<String>,
}

/// `GET /api/workers/stats`: exactly the original project's shape, so its
/// clients keep working. `?include=` takes a comma-separated list:
/// `cooldowns` adds every provider cooling down in the cluster (`worker_id`,
/// `provider`, `model`, `remaining_ms`, `disabled`, `reason`); `cache` adds the result
/// cache's `hits`, `misses`, `entries`, `bytes`, `max_bytes`, `evictions`;
/// `queue` adds `pending_by_priority` and `requeued`.
pub(super) async fn worker_stats(
    State(cluster): AppState,
    Query(q): Query<StatsQuery>,
) -> ApiResult {
    let mut with = Include::default();
    for part in q
        .include
        .as_deref()
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
    {
        match part {
            "" => {}
            "cooldowns" => with.cooldowns = true,
            "cache" => with.cache = true,
            "queue" => with.queue = true,
            other => {
                return Err(ApiError::bad_request(
                    "invalid_include",
                    format!(
                        "include={other:?} is not known (use cooldowns, cache, queue, or several)"
                    ),
                ));
            }
        }
    }
    Ok(Json(stats_json(&cluster, with).await?).into_response())
}

/// The optional parts of the stats.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Include {
    /// Every provider resting on a connected worker.
    pub(super) cooldowns: bool,
    /// The result cache's counters.
    pub(super) cache: bool,
    /// Waiting tasks by priority, re-queued attempts.
    pub(super) queue: bool,
}

impl Include {
    /// All of them (the dashboard's stream).
    pub(super) const ALL: Include = Include {
        cooldowns: true,
        cache: true,
        queue: true,
    };
}

/// The stats as `GET /api/workers/stats` shows them, with the optional parts.
pub(super) async fn stats_json(cluster: &Cluster, with: Include) -> Result<Value, ApiError> {
    let s = cluster.stats().await?;
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
    if with.queue {
        body["queue"] = json!({
            // Waiting tasks per priority, those with any.
            "pending_by_priority": (1..=10)
                .filter(|p| s.pending_by_priority[*p] > 0)
                .map(|p| (p.to_string(), json!(s.pending_by_priority[p])))
                .collect::<serde_json::Map<String, Value>>(),
            // Attempts moved or retried: a worker lost, a timeout, a
            // transient error or a rate limit.
            "requeued": s.counters.requeued,
        });
    }
    if with.cooldowns {
        let mut list = Vec::new();
        for w in cluster.live_workers().await? {
            for r in w.cooldowns {
                list.push(json!({
                    "worker_id": w.id.0,
                    "provider": r.provider,
                    "model": r.model,
                    "remaining_ms": r.remaining_ms,
                    "disabled": r.disabled,
                    "reason": r.reason.as_str(),
                }));
            }
        }
        body["cooldowns"] = Value::Array(list);
    }
    if with.cache {
        let c = cluster.cache().stats();
        body["cache"] = json!({
            "hits": c.hits, "misses": c.misses, "entries": c.entries,
            "bytes": c.bytes, "max_bytes": c.max_bytes, "evictions": c.evictions,
        });
    }
    Ok(body)
}

/// `DELETE /api/cache`: drops every cached answer.
pub(super) async fn clear_cache(State(cluster): AppState) -> ApiResult {
    let cleared = cluster
        .cache()
        .clear()
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))?;
    Ok(Json(json!({ "cleared": cleared })).into_response())
}

pub(super) async fn list_workers(State(cluster): AppState) -> ApiResult {
    Ok(Json(workers_json(&cluster).await?).into_response())
}

/// Every enrolled worker as `GET /api/workers` shows it.
pub(super) async fn workers_json(cluster: &Cluster) -> Result<Value, ApiError> {
    let now = now_millis();
    let out: Vec<Value> = cluster
        .workers()
        .await?
        .into_iter()
        .map(|entry| {
            let (rec, l) = (entry.record, entry.live.as_ref());
            json!({
                "worker_id": rec.id,
                "status": entry.status,
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
                    // US$ per million tokens, per model (`*`: any other).
                    "prices": o.prices.iter().map(|(m, p)| (m.clone(), json!({
                        "input": p.input as f64 / 1e6,
                        "output": p.output as f64 / 1e6,
                    }))).collect::<serde_json::Map<String, Value>>(),
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
                "provider_cooldowns": l.map(|w| w.cooldowns.clone()).unwrap_or_default(),
            })
        })
        .collect();
    Ok(Value::Array(out))
}

pub(super) async fn revoke_worker(State(cluster): AppState, Segment(id): Segment) -> ApiResult {
    cluster.revoke_worker(&id).await?;
    Ok(Json(json!({ "worker_id": id, "status": "revoked" })).into_response())
}

pub(super) async fn list_tokens(State(cluster): AppState) -> ApiResult {
    Ok(Json(cluster.tokens()).into_response())
}

pub(super) async fn create_token(
    State(cluster): AppState,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let req: CreateToken = match &body {
        Ok(b) if b.is_empty() => CreateToken::default(),
        _ => parse(body, cluster.config().max_body_bytes)?,
    };
    if req.max_uses == Some(0) || req.ttl_secs == Some(0) {
        return Err(ApiError::bad_request(
            "invalid_token_limits",
            "ttl_secs and max_uses must be positive",
        ));
    }
    let ttl = req
        .ttl_secs
        .map(|s| Duration::from_millis(s.saturating_mul(1_000)));
    let (token, rec) = cluster.create_token(ttl, req.max_uses).await?;
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

pub(super) async fn revoke_token(State(cluster): AppState, Segment(id): Segment) -> ApiResult {
    let rec = cluster.revoke_token(&id).await?;
    Ok(Json(json!({ "id": rec.id, "revoked": true })).into_response())
}

pub(super) async fn rotate_token(State(cluster): AppState) -> ApiResult {
    let token = cluster.rotate_join_token().await?;
    Ok(Json(json!({ "token": token.to_string() })).into_response())
}

/// Removes the backup file when the response is done with it (sent whole,
/// or the client went away).
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// `GET /api/backup`: a consistent copy of the store (`d8.redb` format),
/// made from one snapshot while the orchestrator keeps serving. Restore:
/// stop `d8 serve`, put the file in place of `<data-dir>/d8.redb`, start.
pub(super) async fn backup(State(cluster): AppState) -> ApiResult {
    let path = cluster.backup().await?;
    let guard = RemoveOnDrop(path);
    let file = tokio::fs::File::open(&guard.0)
        .await
        .map_err(|e| ApiError::unavailable(format!("cannot read the backup just written: {e}")))?;
    let len = file.metadata().await.map(|m| m.len()).ok();
    // The guard rides with the stream: the file goes when the body is done.
    let chunks = tokio_util::io::ReaderStream::new(file).map(move |chunk| {
        let _ = &guard;
        chunk
    });
    let name = format!(
        "d8-backup-{}.redb",
        crate::task::rfc3339(now_millis().0).replace(':', "-")
    );
    let mut resp = axum::body::Body::from_stream(chunks).into_response();
    let h = resp.headers_mut();
    h.insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/octet-stream"),
    );
    if let Ok(v) = axum::http::HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        h.insert(axum::http::header::CONTENT_DISPOSITION, v);
    }
    if let Some(len) = len {
        h.insert(axum::http::header::CONTENT_LENGTH, len.into());
    }
    Ok(resp)
}
