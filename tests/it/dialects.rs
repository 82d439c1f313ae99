//! One fake server for the four vendor dialects, answering in each one's real
//! wire format, whole or streamed, with text or a tool call; and the tests
//! that drive `/v1/chat/completions` through real workers against it.
//!
//! The shapes are those of the providers' unit tests, each taken from the
//! vendor's documentation: OpenAI's Chat Completions reference and its
//! streaming guide (tool-call deltas with `index`), Anthropic's Messages API
//! and streaming events (`tool_use`, `input_json_delta`), Gemini's
//! `generateContent` and function calling (`functionCall` parts, SSE with
//! `alt=sse`), and Ollama's `/api/chat` (NDJSON, `tool_calls` with object
//! arguments).
//!
//! Every dialect behaves alike: with tools offered and a user message last,
//! it calls the first tool with `{"q": <message>}`; otherwise it answers
//! `fake: <last message or tool result>`.

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, RawQuery};
use axum::response::Response;
use axum::routing::post;
use serde_json::{Value, json};

use super::harness::TestCluster;

/// What the fake model does.
enum Reply {
    Text(String),
    Call { name: String, args: Value },
}

fn decide(last_text: &str, from_tool: bool, tool: Option<&str>) -> Reply {
    match tool {
        Some(name) if !from_tool => Reply::Call {
            name: name.to_owned(),
            args: json!({ "q": last_text }),
        },
        _ => Reply::Text(format!("fake: {last_text}")),
    }
}

/// `decide` for the dialects whose conversation is OpenAI's `messages`
/// (OpenAI, Ollama).
fn decide_messages(body: &Value) -> Reply {
    let last = body["messages"]
        .as_array()
        .and_then(|m| m.last())
        .cloned()
        .unwrap_or_default();
    decide(
        last["content"].as_str().unwrap_or_default(),
        last["role"] == "tool",
        body["tools"][0]["function"]["name"].as_str(),
    )
}

/// Splits text in two pieces (at a char boundary) for streaming.
fn halves(s: &str) -> (String, String) {
    let mut mid = s.len() / 2;
    while !s.is_char_boundary(mid) {
        mid -= 1;
    }
    (s[..mid].to_owned(), s[mid..].to_owned())
}

fn json_response(v: &Value) -> Response {
    Response::builder()
        .header("content-type", "application/json")
        .body(Body::from(v.to_string()))
        .expect("response")
}

fn sse(events: &[(Option<&str>, Value)], done: bool) -> Response {
    let mut body = String::new();
    for (name, data) in events {
        if let Some(n) = name {
            body.push_str(&format!("event: {n}\n"));
        }
        body.push_str(&format!("data: {data}\n\n"));
    }
    if done {
        body.push_str("data: [DONE]\n\n");
    }
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from(body))
        .expect("response")
}

fn openai(body: Value) -> Response {
    let reply = decide_messages(&body);
    let model = body["model"].clone();
    let usage = json!({"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13});
    if body["stream"] != true {
        let (message, finish) = match &reply {
            Reply::Text(t) => (json!({"role": "assistant", "content": t}), "stop"),
            Reply::Call { name, args } => (
                json!({"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_fake1", "type": "function", "function": {"name": name, "arguments": args.to_string()}}]}),
                "tool_calls",
            ),
        };
        return json_response(&json!({
            "id": "chatcmpl-fake", "object": "chat.completion", "created": 1_700_000_000, "model": model,
            "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish}],
            "usage": usage
        }));
    }
    let chunk = |delta: Value, finish: Value| {
        (
            None,
            json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1_700_000_000,
            "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}),
        )
    };
    let mut events = vec![chunk(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    )];
    let finish = match &reply {
        Reply::Text(t) => {
            let (a, b) = halves(t);
            events.push(chunk(json!({"content": a}), Value::Null));
            events.push(chunk(json!({"content": b}), Value::Null));
            "stop"
        }
        Reply::Call { name, args } => {
            let (a, b) = halves(&args.to_string());
            events.push(chunk(
                json!({"tool_calls": [{"index": 0, "id": "call_fake1", "type": "function",
                "function": {"name": name, "arguments": a}}]}),
                Value::Null,
            ));
            events.push(chunk(
                json!({"tool_calls": [{"index": 0, "function": {"arguments": b}}]}),
                Value::Null,
            ));
            "tool_calls"
        }
    };
    events.push(chunk(json!({}), json!(finish)));
    if body["stream_options"]["include_usage"] == true {
        events.push((
            None,
            json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk",
            "model": model, "choices": [], "usage": usage}),
        ));
    }
    sse(&events, true)
}

fn anthropic(body: Value) -> Response {
    let last = body["messages"]
        .as_array()
        .and_then(|m| m.last())
        .cloned()
        .unwrap_or_default();
    // A user turn is a string or blocks; a tool's result is a block.
    let (text, from_tool) = match &last["content"] {
        Value::String(s) => (s.clone(), false),
        Value::Array(blocks) => match blocks.iter().find(|b| b["type"] == "tool_result") {
            Some(r) => (r["content"].as_str().unwrap_or_default().to_owned(), true),
            None => (
                blocks.iter().filter_map(|b| b["text"].as_str()).collect(),
                false,
            ),
        },
        _ => (String::new(), false),
    };
    let reply = decide(&text, from_tool, body["tools"][0]["name"].as_str());
    let model = body["model"].clone();
    if body["stream"] != true {
        let (content, stop) = match &reply {
            Reply::Text(t) => (json!([{"type": "text", "text": t}]), "end_turn"),
            Reply::Call { name, args } => (
                json!([{"type": "tool_use", "id": "toolu_fake1", "name": name, "input": args}]),
                "tool_use",
            ),
        };
        return json_response(&json!({
            "id": "msg_fake", "type": "message", "role": "assistant", "model": model,
            "content": content, "stop_reason": stop, "stop_sequence": null,
            "usage": {"input_tokens": 9, "output_tokens": 4}
        }));
    }
    let mut events = vec![(
        Some("message_start"),
        json!({"type": "message_start", "message": {
        "id": "msg_fake", "type": "message", "role": "assistant", "model": model, "content": [],
        "stop_reason": null, "usage": {"input_tokens": 9, "output_tokens": 1}}}),
    )];
    let stop = match &reply {
        Reply::Text(t) => {
            let (a, b) = halves(t);
            events.push((Some("content_block_start"), json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})));
            for piece in [a, b] {
                events.push((Some("content_block_delta"), json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}})));
            }
            events.push((
                Some("content_block_stop"),
                json!({"type": "content_block_stop", "index": 0}),
            ));
            "end_turn"
        }
        Reply::Call { name, args } => {
            let (a, b) = halves(&args.to_string());
            events.push((Some("content_block_start"), json!({"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use", "id": "toolu_fake1", "name": name, "input": {}}})));
            for piece in [a, b] {
                events.push((Some("content_block_delta"), json!({"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": piece}})));
            }
            events.push((
                Some("content_block_stop"),
                json!({"type": "content_block_stop", "index": 0}),
            ));
            "tool_use"
        }
    };
    events.push((Some("message_delta"), json!({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": null}, "usage": {"output_tokens": 4}})));
    events.push((Some("message_stop"), json!({"type": "message_stop"})));
    sse(&events, false)
}

/// The fake's embedding of a text: its length, then 1.
fn fake_vector(text: &str) -> Value {
    json!([text.len() as f64, 1.0])
}

fn openai_embed(body: Value) -> Response {
    let input: Vec<String> = body["input"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    // Out of order on purpose: clients must follow `index`.
    let data: Vec<Value> = input
        .iter()
        .enumerate()
        .rev()
        .map(|(i, t)| json!({"object": "embedding", "index": i, "embedding": fake_vector(t)}))
        .collect();
    json_response(
        &json!({"object": "list", "data": data, "model": body["model"],
        "usage": {"prompt_tokens": 7, "total_tokens": 7}}),
    )
}

fn ollama_embed(body: Value) -> Response {
    let vectors: Vec<Value> = body["input"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| fake_vector(t.as_str().unwrap_or_default()))
        .collect();
    json_response(&json!({"model": body["model"], "embeddings": vectors,
        "total_duration": 1000, "load_duration": 100, "prompt_eval_count": 7}))
}

fn gemini(rest: &str, query: Option<String>, body: Value) -> Response {
    if rest.ends_with(":batchEmbedContents") {
        let vectors: Vec<Value> = body["requests"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| json!({"values": fake_vector(r["content"]["parts"][0]["text"].as_str().unwrap_or_default())}))
            .collect();
        return json_response(&json!({ "embeddings": vectors }));
    }
    let stream = rest.ends_with(":streamGenerateContent") && query.as_deref() == Some("alt=sse");
    let last = body["contents"]
        .as_array()
        .and_then(|c| c.last())
        .cloned()
        .unwrap_or_default();
    let part = &last["parts"][0];
    let (text, from_tool) = if part["functionResponse"].is_object() {
        let r = &part["functionResponse"]["response"];
        (
            r["content"]
                .as_str()
                .map_or_else(|| r.to_string(), str::to_owned),
            true,
        )
    } else {
        (part["text"].as_str().unwrap_or_default().to_owned(), false)
    };
    let tool = body["tools"][0]["functionDeclarations"][0]["name"].as_str();
    let reply = decide(&text, from_tool, tool);
    let usage = json!({"promptTokenCount": 9, "candidatesTokenCount": 4, "totalTokenCount": 13});
    let piece = |parts: Value, finish: Option<&str>, usage: Option<&Value>| {
        let mut candidate = json!({"content": {"role": "model", "parts": parts}, "index": 0});
        if let Some(f) = finish {
            candidate["finishReason"] = json!(f);
        }
        let mut v = json!({"candidates": [candidate], "modelVersion": "gemini-fake"});
        if let Some(u) = usage {
            v["usageMetadata"] = u.clone();
        }
        v
    };
    let parts = match &reply {
        Reply::Text(t) => json!([{"text": t}]),
        Reply::Call { name, args } => json!([{"functionCall": {"name": name, "args": args}}]),
    };
    if !stream {
        return json_response(&piece(parts, Some("STOP"), Some(&usage)));
    }
    let events: Vec<(Option<&str>, Value)> = match &reply {
        Reply::Text(t) => {
            let (a, b) = halves(t);
            vec![
                (None, piece(json!([{"text": a}]), None, None)),
                (
                    None,
                    piece(json!([{"text": b}]), Some("STOP"), Some(&usage)),
                ),
            ]
        }
        // Gemini sends a function call whole, in one piece.
        Reply::Call { .. } => vec![(None, piece(parts, Some("STOP"), Some(&usage)))],
    };
    sse(&events, false)
}

fn ollama(body: Value) -> Response {
    let reply = decide_messages(&body);
    let model = body["model"].clone();
    let message = match &reply {
        Reply::Text(t) => json!({"role": "assistant", "content": t}),
        Reply::Call { name, args } => json!({"role": "assistant", "content": "",
            "tool_calls": [{"function": {"name": name, "arguments": args}}]}),
    };
    let done = |message: Value| {
        json!({"model": model, "created_at": "2025-01-01T00:00:00Z", "message": message,
               "done_reason": "stop", "done": true, "prompt_eval_count": 9, "eval_count": 4})
    };
    if body["stream"] != true {
        return json_response(&done(message));
    }
    let mut lines = Vec::new();
    match &reply {
        Reply::Text(t) => {
            let (a, b) = halves(t);
            for piece in [a, b] {
                lines.push(json!({"model": model, "created_at": "2025-01-01T00:00:00Z",
                    "message": {"role": "assistant", "content": piece}, "done": false}));
            }
            lines.push(done(json!({"role": "assistant", "content": ""})));
        }
        Reply::Call { .. } => {
            lines.push(json!({"model": model, "created_at": "2025-01-01T00:00:00Z", "message": message, "done": false}));
            lines.push(done(json!({"role": "assistant", "content": ""})));
        }
    }
    let body: String = lines.iter().map(|l| format!("{l}\n")).collect();
    Response::builder()
        .header("content-type", "application/x-ndjson")
        .body(Body::from(body))
        .expect("response")
}

/// Starts the fake; its base URL serves every dialect's path.
async fn start() -> String {
    let parse = |b: &str| serde_json::from_str::<Value>(b).unwrap_or(Value::Null);
    let app = Router::new()
        .route(
            "/v1/chat/completions",
            post(move |b: String| async move { openai(parse(&b)) }),
        )
        .route(
            "/v1/messages",
            post(move |b: String| async move { anthropic(parse(&b)) }),
        )
        .route(
            "/v1beta/models/{rest}",
            post(
                move |Path(rest): Path<String>, RawQuery(q): RawQuery, b: String| async move {
                    gemini(&rest, q, parse(&b))
                },
            ),
        )
        .route(
            "/api/chat",
            post(move |b: String| async move { ollama(parse(&b)) }),
        )
        .route(
            "/v1/embeddings",
            post(move |b: String| async move { openai_embed(parse(&b)) }),
        )
        .route(
            "/api/embed",
            post(move |b: String| async move { ollama_embed(parse(&b)) }),
        );
    let addr = super::harness::serve_on_loopback(app).await;
    format!("http://{addr}")
}

async fn chat(c: &TestCluster, body: Value) -> Value {
    let resp = c.post_json("/v1/chat/completions", &body).await;
    assert_eq!(resp.status().as_u16(), 200);
    resp.json().await.expect("json")
}

/// A streamed answer's JSON chunks, checked to end with `[DONE]`.
async fn chat_stream(c: &TestCluster, body: Value) -> Vec<Value> {
    let resp = c.post_json("/v1/chat/completions", &body).await;
    assert_eq!(resp.status().as_u16(), 200);
    let text = tokio::time::timeout(Duration::from_secs(20), resp.text())
        .await
        .expect("in time")
        .expect("body");
    let data: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(data.last(), Some(&"[DONE]"), "{text}");
    data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).expect("chunk"))
        .collect()
}

const TOOL: &str = r#"{"type":"function","function":{"name":"lookup","description":"Looks it up","parameters":{"type":"object","properties":{"q":{"type":"string"}}}}}"#;

#[tokio::test]
async fn every_vendor_dialect_serves_chat_streams_and_tool_calls_through_v1() {
    let base = start().await;
    let c = TestCluster::start().await;
    let kinds = [
        ("groq", "GROQ_BASE_URL", format!("{base}/v1")),
        ("anthropic", "ANTHROPIC_BASE_URL", base.clone()),
        ("gemini", "GEMINI_BASE_URL", base.clone()),
        ("ollama", "OLLAMA_HOST", base.clone()),
    ];
    let mut workers = Vec::new();
    for (kind, url_var, url) in &kinds {
        let embed_var = format!("{}_EMBEDDING_MODELS", kind.to_uppercase());
        let embed_model = format!("{kind}-embed");
        workers.push(c.vendor_worker_with(
            kind,
            kind,
            &[(url_var, url.as_str()), (&embed_var, &embed_model)],
        ));
    }
    c.wait_until(|s| s["workers"]["online"] == 4, "four vendor workers")
        .await;
    let tool: Value = serde_json::from_str(TOOL).expect("tool");
    for (kind, ..) in &kinds {
        let pin = json!({"provider": kind});
        // Whole answer.
        let v = chat(&c, json!({"model": "d8/auto", "d8": pin, "messages": [{"role": "user", "content": "hello"}]})).await;
        assert_eq!(
            v["choices"][0]["message"]["content"], "fake: hello",
            "{kind}: {v}"
        );
        assert_eq!(v["choices"][0]["finish_reason"], "stop", "{kind}: {v}");
        assert_eq!(v["usage"]["prompt_tokens"], 9, "{kind}: {v}");
        assert_eq!(v["usage"]["completion_tokens"], 4, "{kind}: {v}");
        // Streamed, with usage.
        let chunks = chat_stream(
            &c,
            json!({"model": "d8/auto", "d8": pin, "stream": true,
            "stream_options": {"include_usage": true},
            "messages": [{"role": "user", "content": "hello there"}]}),
        )
        .await;
        let text: String = chunks
            .iter()
            .filter_map(|ch| ch["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(text, "fake: hello there", "{kind}: {chunks:?}");
        assert_eq!(
            chunks.last().expect("usage")["usage"]["completion_tokens"],
            4,
            "{kind}"
        );
        // A tool call, then its result, then the final answer.
        let v = chat(
            &c,
            json!({"model": "d8/auto", "d8": pin, "tools": [tool],
            "messages": [{"role": "user", "content": "hello"}]}),
        )
        .await;
        let message = &v["choices"][0]["message"];
        assert_eq!(
            v["choices"][0]["finish_reason"], "tool_calls",
            "{kind}: {v}"
        );
        let call = message["tool_calls"][0].clone();
        assert_eq!(call["function"]["name"], "lookup", "{kind}: {v}");
        let args: Value =
            serde_json::from_str(call["function"]["arguments"].as_str().expect("args"))
                .expect("json args");
        assert_eq!(args, json!({"q": "hello"}), "{kind}");
        assert!(
            call["id"].as_str().is_some_and(|id| !id.is_empty()),
            "{kind}: {v}"
        );
        let v = chat(
            &c,
            json!({"model": "d8/auto", "d8": pin, "tools": [tool], "messages": [
                {"role": "user", "content": "hello"},
                {"role": "assistant", "content": null, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": call["id"], "content": "result-42"}
            ]}),
        )
        .await;
        assert_eq!(
            v["choices"][0]["message"]["content"], "fake: result-42",
            "{kind}: {v}"
        );
        // The same call, streamed: deltas with an index, whole JSON arguments.
        let chunks = chat_stream(
            &c,
            json!({"model": "d8/auto", "d8": pin, "stream": true, "tools": [tool],
            "messages": [{"role": "user", "content": "hello"}]}),
        )
        .await;
        let deltas: Vec<&Value> = chunks
            .iter()
            .filter_map(|ch| ch["choices"][0]["delta"]["tool_calls"].as_array())
            .flatten()
            .collect();
        assert!(deltas.iter().all(|d| d["index"] == 0), "{kind}: {deltas:?}");
        let streamed: String = deltas
            .iter()
            .filter_map(|d| d["function"]["arguments"].as_str())
            .collect();
        assert_eq!(
            serde_json::from_str::<Value>(&streamed).expect("json"),
            json!({"q": "hello"}),
            "{kind}"
        );
        let finish = chunks
            .iter()
            .rev()
            .find_map(|ch| ch["choices"][0]["finish_reason"].as_str());
        assert_eq!(finish, Some("tool_calls"), "{kind}");
    }
    // Embeddings, in each dialect that has them (Anthropic has none).
    for (kind, usage) in [("groq", Some(7)), ("gemini", None), ("ollama", Some(7))] {
        let resp = c
            .http
            .post(format!("{}/v1/embeddings", c.base))
            .bearer_auth(&c.key)
            .json(&json!({"model": format!("{kind}-embed"), "input": ["a", "abc"], "encoding_format": "float"}))
            .send()
            .await
            .expect("http");
        assert_eq!(resp.status().as_u16(), 200, "{kind}");
        let v: Value = resp.json().await.expect("json");
        assert_eq!(v["data"][0]["embedding"], json!([1.0, 1.0]), "{kind}: {v}");
        assert_eq!(v["data"][1]["embedding"], json!([3.0, 1.0]), "{kind}: {v}");
        assert_eq!(v["usage"]["prompt_tokens"].as_u64(), usage, "{kind}: {v}");
    }
    let resp = c
        .post_json(
            "/v1/embeddings",
            &json!({"model": "anthropic-embed", "input": "a"}),
        )
        .await;
    assert_eq!(resp.status().as_u16(), 404, "anthropic has no embeddings");
}
