//! The API's one error type.

use axum::Json;
use axum::http::header::RETRY_AFTER;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::node::ClusterError;

/// An error answered to an HTTP client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code.
    pub code: &'static str,
    /// Human-readable explanation.
    pub message: String,
}

impl ApiError {
    /// 400 with `code`.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code,
            message: message.into(),
        }
    }
    /// 401.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            code: "unauthorized",
            message: message.into(),
        }
    }
    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::NOT_FOUND,
            code: "not_found",
            message: message.into(),
        }
    }
    /// 409.
    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::CONFLICT,
            code,
            message: message.into(),
        }
    }
    /// 413.
    pub fn too_large(limit: usize) -> Self {
        ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            code: "body_too_large",
            message: format!("request body exceeds the {limit}-byte limit"),
        }
    }
    /// 503: the orchestrator cannot serve this now (store failing, shutting down).
    pub fn unavailable(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "unavailable",
            message: message.into(),
        }
    }
    /// Renders the response (for middleware that holds the error by value).
    pub fn into_response_owned(self) -> Response {
        self.into_response()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(json!({ "error": { "code": self.code, "message": self.message } }));
        let mut resp = (self.status, body).into_response();
        // Every 503 says when to try again: soon for a full queue (tasks
        // finish every moment), a little later for a failing store or a
        // restart.
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            let secs = if self.code == "queue_full" { "1" } else { "5" };
            resp.headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static(secs));
        }
        resp
    }
}

impl From<ClusterError> for ApiError {
    fn from(e: ClusterError) -> Self {
        let message = e.to_string();
        match e {
            ClusterError::NotFound(_) => ApiError::not_found(message),
            ClusterError::AlreadyFinished { .. } => ApiError::conflict("already_finished", message),
            ClusterError::ShuttingDown(_)
            | ClusterError::Store(_)
            | ClusterError::TokenFile(_)
            | ClusterError::Degraded(_) => ApiError::unavailable(message),
            ClusterError::TooManyAgents { .. } => ApiError::conflict("too_many_agents", message),
            ClusterError::QueueFull { .. } => ApiError {
                status: StatusCode::SERVICE_UNAVAILABLE,
                code: "queue_full",
                message,
            },
        }
    }
}
