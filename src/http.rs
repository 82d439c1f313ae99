//! The HTTP API (axum) over the [`Cluster`] facade.
//!
//! [`router`] builds everything from an `Arc<Cluster>` and needs no socket,
//! so the handlers are tested with `oneshot` (`tests` below) as well as
//! over real sockets (`tests/it/http_api.rs`). Handlers only translate JSON
//! to cluster calls and back; every error is an [`ApiError`], rendered as
//! `{"error": {"code", "message", "type", "param"}}` (OpenAI's shape) with a
//! 4xx/5xx status.
//!
//! One file per resource:
//! - `openai`: `/v1/chat/completions`, `/v1/embeddings`, `/v1/models`.
//! - `tasks`: submit (one or a batch, through the result cache when asked),
//!   get (with `?wait=`), cancel.
//! - `task_stream`: `GET /api/tasks/{id}/stream`, a task's output as SSE.
//! - `agents`: the original project's agents and `/act`.
//! - `admin`: health, workers and their stats, join tokens, the cache.
//! - `events`: `GET /api/events`, the dashboard's live stream.
//! - `logs`: `GET /api/logs`, the log ring (and `follow=1`).
//! - `usage`: `GET /api/usage`, tokens and cost per provider, model,
//!   worker, agent or day.
//! - `body`: request bodies: parsing and validation.
//! - `dashboard`: the web page at `/`, its assets, the browser-safety
//!   headers, the host check without a key, `GET /api/cluster`.
//!
//! Request bodies are parsed as JSON whatever their `Content-Type` (the
//! original project's clients and `curl -d` send form content types).

mod admin;
mod agents;
mod body;
mod dashboard;
mod error;
mod events;
mod logs;
pub mod metrics;
mod openai;
pub mod serve;
mod task_stream;
mod tasks;
#[cfg(test)]
mod tests;
mod usage;

pub use error::ApiError;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{delete, get, post, put};

use crate::node::Cluster;

/// What every handler gets: the cluster.
type AppState = State<Arc<Cluster>>;

/// What most handlers answer.
type ApiResult = Result<Response, ApiError>;

/// Builds the router over the cluster.
pub fn router(cluster: Arc<Cluster>) -> Router {
    let limit = cluster.config().max_body_bytes;
    let api = Router::new()
        .route("/agents/{agent_id}/act", post(agents::act))
        .route("/agents/{agent_id}", put(agents::put).get(agents::get))
        .route("/tasks", post(tasks::submit).get(tasks::list))
        .route("/tasks/batch", post(tasks::submit_batch))
        .route("/tasks/{id}", get(tasks::get).delete(tasks::cancel))
        .route("/tasks/{id}/stream", get(task_stream::stream))
        .route("/workers/stats", get(admin::worker_stats))
        .route("/workers", get(admin::list_workers))
        .route("/workers/{id}", delete(admin::revoke_worker))
        .route("/tokens", get(admin::list_tokens).post(admin::create_token))
        .route("/tokens/rotate", post(admin::rotate_token))
        .route("/tokens/{id}", delete(admin::revoke_token))
        .route("/backup", get(admin::backup))
        .route("/cache", delete(admin::clear_cache))
        .route("/events", get(events::events))
        .route("/logs", get(logs::logs))
        .route("/usage", get(usage::usage))
        .route("/cluster", get(dashboard::cluster_info));
    // The key check, then (inner layer: only an authorised client's body
    // is read) the body within its time limit.
    let protect = |r: Router<Arc<Cluster>>| {
        r.route_layer(middleware::from_fn_with_state(
            (limit, cluster.config().http.body_timeout),
            serve::read_body,
        ))
        .route_layer(middleware::from_fn_with_state(cluster.clone(), require_key))
    };
    // The OpenAI-compatible API, at `/v1` and (for clients that drop it)
    // at the root; same key and body handling as `/api`.
    let v1 = Router::new()
        .route("/chat/completions", post(openai::chat))
        .route("/embeddings", post(openai::embeddings))
        .route("/models", get(openai::models))
        .route("/models/{*id}", get(openai::model));
    let root_chat = Router::new().route("/chat/completions", post(openai::chat));
    let counters = Arc::new(metrics::HttpCounters::default());
    let scrape = Router::new().route("/metrics", get(metrics::metrics));
    // Scrapers on a trusted network may be let in without the key.
    let scrape = if cluster.config().metrics_no_auth {
        scrape.route_layer(middleware::from_fn_with_state(cluster.clone(), check_host))
    } else {
        scrape.route_layer(middleware::from_fn_with_state(cluster.clone(), require_key))
    };
    Router::new()
        .route("/", get(dashboard::index))
        .route("/assets/{file}", get(dashboard::assets))
        .route("/health", get(admin::health))
        .merge(scrape)
        .nest("/api", protect(api))
        .nest("/v1", protect(v1))
        .merge(protect(root_chat))
        .fallback(admin::not_found)
        .method_not_allowed_fallback(admin::method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::Extension(counters.clone()))
        .layer(middleware::from_fn_with_state(
            counters,
            metrics::every_answer,
        ))
        .with_state(cluster)
}

/// Without a key, only requests naming an allowed host (DNS rebinding;
/// see `dashboard`).
async fn check_host(State(cluster): AppState, req: Request, next: Next) -> Response {
    if let Some(host) = req
        .headers()
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        && !dashboard::host_allowed(&cluster, host)
    {
        return dashboard::host_refused(host);
    }
    next.run(req).await
}

/// Compares without an early exit, so response timing does not reveal how
/// much of a guessed key was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn require_key(State(cluster): AppState, req: Request, next: Next) -> Response {
    if !cluster.config().require_api_key {
        return check_host(State(cluster), req, next).await;
    }
    {
        let given = req
            .headers()
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim);
        match given {
            None => {
                return ApiError::unauthorized(
                    "missing API key: send `Authorization: Bearer <key>` (the key is in <data-dir>/api-key)",
                )
                .into_response_owned();
            }
            Some(k) if !constant_time_eq(k.as_bytes(), cluster.api_key().as_bytes()) => {
                return ApiError::unauthorized("wrong API key").into_response_owned();
            }
            Some(_) => {}
        }
    }
    next.run(req).await
}
