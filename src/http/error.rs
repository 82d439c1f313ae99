//! The API's one error type.

use axum::Json;
use axum::http::header::RETRY_AFTER;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::node::ClusterError;

/// An error answered to an HTTP client, in the shape the OpenAI SDKs read
/// (`{"error": {"message", "type", "param", "code"}}`), which is also the
/// d8 API's (`code` and `message` are what `/api/*` clients have always read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code.
    pub code: &'static str,
    /// Human-readable explanation.
    pub message: String,
    /// The request field at fault, when one is.
    pub param: Option<String>,
    /// Seconds the client should wait before trying again (`Retry-After`).
    pub retry_after: Option<u64>,
    /// d8 already retried across workers: `x-should-retry: false`, so the
    /// SDKs do not multiply attempts.
    pub retried: bool,
}

impl ApiError {
    /// An error of `status` and `code`.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            param: None,
            retry_after: None,
            retried: false,
        }
    }
    /// 400 with `code`.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }
    /// 401.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }
    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    /// 409.
    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::CONFLICT, code, message)
    }
    /// 413.
    pub fn too_large(limit: usize) -> Self {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("request body exceeds the {limit}-byte limit"),
        )
    }
    /// 503: the orchestrator cannot serve this now (store failing, shutting down).
    pub fn unavailable(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }
    /// Names the request field at fault.
    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }
    /// Says when to try again.
    pub fn with_retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs.max(1));
        self
    }
    /// Marks the failure as already retried by d8.
    pub fn retried(mut self) -> Self {
        self.retried = true;
        self
    }
    /// Renders the response (for middleware that holds the error by value).
    pub fn into_response_owned(self) -> Response {
        self.into_response()
    }
    /// The OpenAI error `type` for this status.
    pub fn kind(&self) -> &'static str {
        match self.status.as_u16() {
            401 | 403 => "authentication_error",
            429 => "rate_limit_error",
            500.. => "server_error",
            _ => "invalid_request_error",
        }
    }
    /// The `{"error": {...}}` body, also sent in-band in a broken stream.
    pub fn body(&self) -> serde_json::Value {
        json!({ "error": {
            "message": self.message,
            "type": self.kind(),
            "param": self.param,
            "code": self.code,
        } })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, Json(self.body())).into_response();
        // Every 503 says when to try again: soon for a full queue (tasks
        // finish every moment), a little later for a failing store or a
        // restart.
        let retry_after = self.retry_after.or_else(|| {
            (self.status == StatusCode::SERVICE_UNAVAILABLE)
                .then_some(if self.code == "queue_full" { 1 } else { 5 })
        });
        let headers = resp.headers_mut();
        if let Some(secs) = retry_after {
            headers.insert(RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.retried {
            headers.insert("x-should-retry", HeaderValue::from_static("false"));
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
            ClusterError::QueueFull { .. } => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "queue_full", message)
            }
        }
    }
}
