//! In-process fake LLM vendors speaking the real wire formats, on 127.0.0.1:0.
//! Also compiled into the desktop app's tests (`gui/tests/desktop.rs`).

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::post;
use serde_json::{Value, json};

/// How the fake answers.
#[derive(Debug, Clone, Copy)]
pub enum Mode {
    /// A normal completion echoing the last message.
    Ok,
    /// Always 429 with `Retry-After`.
    RateLimited { retry_after_secs: u64 },
    /// `allow` normal answers, then 429 with `Retry-After` (a key whose quota runs out).
    Quota { allow: usize, retry_after_secs: u64 },
    /// Always 503 (the vendor is down).
    Down,
    /// Always 401: the key is wrong.
    Rejected,
    /// A normal completion after `delay_ms` (a task in flight for a while;
    /// the desktop app's drain test).
    #[allow(dead_code)]
    Slow { delay_ms: u64 },
}

/// A fake OpenAI-compatible Chat Completions server.
pub struct FakeOpenAi {
    /// Base URL to configure (`…/v1`).
    pub base: String,
    seen: Arc<Mutex<Vec<(String, Value)>>>,
}

impl FakeOpenAi {
    pub async fn start(mode: Mode) -> FakeOpenAi {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let app = Router::new().route(
            "/v1/chat/completions",
            post(move |headers: HeaderMap, body: String| {
                let log = log.clone();
                async move {
                    let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
                    let auth = headers
                        .get("authorization")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    let served = {
                        let mut l = log.lock().expect("lock");
                        l.push((auth, body.clone()));
                        l.len()
                    };
                    let mode = match mode {
                        Mode::Slow { delay_ms } => {
                            tokio::time::sleep(std::time::Duration::from_millis(delay_ms)).await;
                            Mode::Ok
                        }
                        Mode::Quota { allow, .. } if served <= allow => Mode::Ok,
                        Mode::Quota { retry_after_secs, .. } => Mode::RateLimited { retry_after_secs },
                        other => other,
                    };
                    match mode {
                        Mode::Ok | Mode::Slow { .. } => {
                            let last = body["messages"]
                                .as_array()
                                .and_then(|m| m.last())
                                .and_then(|m| m["content"].as_str())
                                .unwrap_or_default()
                                .to_owned();
                            let answer = json!({
                                "id": "chatcmpl-fake",
                                "object": "chat.completion",
                                "model": body["model"],
                                "choices": [{"index": 0, "message": {"role": "assistant", "content": format!("fake: {last}")}, "finish_reason": "stop"}],
                                "usage": {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13}
                            });
                            Response::builder()
                                .header("content-type", "application/json")
                                .body(Body::from(answer.to_string()))
                                .expect("response")
                        }
                        // OpenAI's answer to a wrong key (its error-codes guide:
                        // 401 "Invalid Authentication" / "Incorrect API key
                        // provided", code invalid_api_key); the key shown masked.
                        Mode::Rejected => Response::builder()
                            .status(401)
                            .header("content-type", "application/json")
                            .body(Body::from(
                                json!({"error": {"message": "Incorrect API key provided: gsk_****cdef. You can find your API key at https://console.groq.com/keys.", "type": "invalid_request_error", "param": null, "code": "invalid_api_key"}}).to_string(),
                            ))
                            .expect("response"),
                        Mode::Down => Response::builder()
                            .status(503)
                            .header("content-type", "application/json")
                            .body(Body::from(json!({"error": {"message": "The server is overloaded"}}).to_string()))
                            .expect("response"),
                        Mode::RateLimited { retry_after_secs } | Mode::Quota { retry_after_secs, .. } => Response::builder()
                            .status(429)
                            .header("content-type", "application/json")
                            .header("retry-after", retry_after_secs.to_string())
                            .body(Body::from(
                                json!({"error": {"message": "Rate limit reached for requests", "type": "requests", "code": "rate_limit_exceeded"}}).to_string(),
                            ))
                            .expect("response"),
                    }
                }
            }),
        );
        let addr = super::harness::serve_on_loopback(app).await;
        FakeOpenAi {
            base: format!("http://{addr}/v1"),
            seen,
        }
    }

    /// Requests received.
    pub fn calls(&self) -> usize {
        self.seen.lock().expect("lock").len()
    }

    /// The JSON bodies received.
    pub fn bodies(&self) -> Vec<Value> {
        self.seen
            .lock()
            .expect("lock")
            .iter()
            .map(|(_, b)| b.clone())
            .collect()
    }

    /// The `Authorization` headers received.
    pub fn auth_headers(&self) -> Vec<String> {
        self.seen
            .lock()
            .expect("lock")
            .iter()
            .map(|(a, _)| a.clone())
            .collect()
    }
}
