//! The HTTP API (axum). `router` builds everything over the orchestrator's
//! shared state; handlers are in `api`; every error is an [`ApiError`]
//! rendered as `{"error": {"code", "message"}}` with a 4xx/5xx status. The
//! integration tests exercise it over real sockets (`tests/it/http_api.rs`).
//!
//! Request bodies are parsed as JSON whatever their `Content-Type` (the
//! original project's clients and `curl -d` send form content types).

pub(crate) mod api;
mod error;
mod stream;

pub use api::rfc3339;
pub use error::ApiError;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post, put};

use crate::node::orchestrator::Shared;

/// Builds the router over the orchestrator's shared state.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    let limit = shared.cfg.max_body_bytes;
    let api = Router::new()
        .route("/agents/{agent_id}/act", post(api::agent_act))
        .route(
            "/agents/{agent_id}",
            put(api::put_agent).get(api::get_agent),
        )
        .route("/tasks", post(api::submit_task))
        .route("/tasks/batch", post(api::submit_batch))
        .route("/tasks/{id}", get(api::get_task).delete(api::cancel_task))
        .route("/tasks/{id}/stream", get(stream::stream_task))
        .route("/workers/stats", get(api::worker_stats))
        .route("/workers", get(api::list_workers))
        .route("/workers/{id}", axum::routing::delete(api::revoke_worker))
        .route("/tokens", get(api::list_tokens).post(api::create_token))
        .route("/tokens/rotate", post(api::rotate_token))
        .route("/tokens/{id}", axum::routing::delete(api::revoke_token))
        .route_layer(middleware::from_fn_with_state(shared.clone(), require_key));
    Router::new()
        .route("/health", get(api::health))
        .nest("/api", api)
        .fallback(api::not_found)
        .method_not_allowed_fallback(api::method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .with_state(shared)
}

/// Compares without an early exit, so response timing does not reveal how
/// much of a guessed key was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn require_key(State(shared): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    if shared.cfg.require_api_key {
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
            Some(k) if !constant_time_eq(k.as_bytes(), shared.api_key.as_bytes()) => {
                return ApiError::unauthorized("wrong API key").into_response_owned();
            }
            Some(_) => {}
        }
    }
    next.run(req).await
}
