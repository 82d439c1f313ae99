//! Fake vendor servers for provider unit tests: axum on 127.0.0.1:0,
//! recording every request (path with query, headers, JSON body).

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Uri};
use axum::response::Response;
use serde_json::Value;

/// One request the fake received.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Path and query.
    pub path: String,
    /// Headers.
    pub headers: HeaderMap,
    /// JSON body (`Null` if not JSON).
    pub body: Value,
}

impl Seen {
    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Requests received so far.
pub type Log = Arc<Mutex<Vec<Seen>>>;

/// Starts a fake answering every POST with `reply(request)`; returns its
/// base URL (`http://127.0.0.1:port`) and the request log.
pub async fn fake(
    reply: impl Fn(&Seen) -> Response + Clone + Send + Sync + 'static,
) -> (String, Log) {
    crate::ensure_crypto_provider();
    let log: Log = Arc::default();
    let sink = log.clone();
    let app = Router::new().fallback(move |uri: Uri, headers: HeaderMap, body: String| {
        let reply = reply.clone();
        let sink = sink.clone();
        async move {
            let seen = Seen {
                path: uri
                    .path_and_query()
                    .map_or_else(|| uri.path().to_owned(), |p| p.as_str().to_owned()),
                headers,
                body: serde_json::from_str(&body).unwrap_or(Value::Null),
            };
            let resp = reply(&seen);
            sink.lock().expect("lock").push(seen);
            resp
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}"), log)
}

/// A JSON response.
pub fn json(status: u16, headers: &[(&str, &str)], body: &Value) -> Response {
    let mut b = Response::builder()
        .status(status)
        .header("content-type", "application/json");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Body::from(body.to_string())).expect("response")
}

/// A `text/event-stream` response of `data:` events (with optional `event:` names).
pub fn sse(events: &[(Option<&str>, String)]) -> Response {
    let mut body = String::new();
    for (event, data) in events {
        if let Some(e) = event {
            body.push_str(&format!("event: {e}\n"));
        }
        body.push_str(&format!("data: {data}\n\n"));
    }
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from(body))
        .expect("response")
}

/// `req` with a stop sequence `END` and JSON mode, for the translation tests.
pub fn stop_and_json(req: crate::task::ChatRequest) -> crate::task::ChatRequest {
    crate::task::ChatRequest {
        stop: vec!["END".into()],
        response_format: crate::task::ResponseFormat::JsonObject,
        ..req
    }
}

/// A tool round trip as every dialect test sends it: a system prompt, the
/// user's question, the assistant's call of `get_weather`, the tool's
/// result, and the tool offered with a forced choice.
pub fn tool_round_trip(stream: bool) -> crate::task::ChatRequest {
    use crate::task::{ChatMessage, ChatRequest, Tool, ToolCall, ToolChoice};
    ChatRequest {
        messages: vec![
            ChatMessage::new("system", "Be brief."),
            ChatMessage::new("user", "Weather in Paris?"),
            ChatMessage {
                tool_calls: vec![ToolCall {
                    id: "call_1".into(),
                    name: "get_weather".into(),
                    arguments: r#"{"city":"Paris"}"#.into(),
                }],
                ..ChatMessage::new("assistant", "")
            },
            ChatMessage {
                tool_call_id: Some("call_1".into()),
                ..ChatMessage::new("tool", r#"{"celsius":21}"#)
            },
        ],
        tools: vec![Tool {
            name: "get_weather".into(),
            description: Some("Current weather".into()),
            parameters: Some(WEATHER_SCHEMA.into()),
            strict: None,
        }],
        tool_choice: Some(ToolChoice::Function("get_weather".into())),
        stream,
        ..ChatRequest::default()
    }
}

/// The parameters of [`tool_round_trip`]'s tool.
pub const WEATHER_SCHEMA: &str =
    r#"{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}"#;

/// Runs the future `make` builds on a runtime of its own thread and returns
/// its output; panics when it has not finished after `limit`. Unlike
/// `tokio::time::timeout`, this also catches a future that never yields (a
/// busy loop): the test fails instead of hanging. The stuck thread is left
/// behind; the test process ends it.
pub fn finishes_within<T, F>(
    limit: std::time::Duration,
    make: impl FnOnce() -> F + Send + 'static,
) -> T
where
    T: Send + 'static,
    F: std::future::Future<Output = T>,
{
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let _ = tx.send(rt.block_on(make()));
    });
    rx.recv_timeout(limit)
        .unwrap_or_else(|e| panic!("not finished after {limit:?} ({e})"))
}

/// A worker's vendor client with the default limits.
pub fn client() -> super::VendorClient {
    super::VendorClient::new(super::ReadLimits::DEFAULT).expect("client")
}
