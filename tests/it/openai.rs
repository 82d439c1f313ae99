//! The OpenAI-compatible API over HTTP, through real (echo) workers: the
//! shapes the `openai` SDKs read, streaming, tool calls, models, errors.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use super::harness::TestCluster;

/// POSTs `body` to `path`; status, headers and JSON body.
async fn post(
    c: &TestCluster,
    path: &str,
    body: &Value,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let resp = c.post_json(path, body).await;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, headers, resp.json().await.unwrap_or(Value::Null))
}

/// A streamed answer's `data:` payloads, in order, read to the end.
async fn stream(c: &TestCluster, body: &Value) -> (u16, Vec<String>) {
    let resp = c.post_json("/v1/chat/completions", body).await;
    let status = resp.status().as_u16();
    let text = tokio::time::timeout(Duration::from_secs(20), resp.text())
        .await
        .expect("stream ends")
        .expect("body");
    let mut data = Vec::new();
    for block in text.split("\n\n").filter(|b| !b.is_empty()) {
        for line in block.lines() {
            // Only `data:` lines (and keep-alive comments) are allowed: no
            // named events, no empty data.
            if line.starts_with(':') {
                continue;
            }
            let d = line
                .strip_prefix("data: ")
                .unwrap_or_else(|| panic!("not a data line: {line:?}"));
            assert!(!d.is_empty(), "empty data event");
            data.push(d.to_owned());
        }
    }
    (status, data)
}

fn user(text: &str) -> Value {
    json!([{"role": "user", "content": text}])
}

const WEATHER: &str = r#"{"type":"function","function":{"name":"get_weather","description":"Weather","parameters":{"type":"object","properties":{"city":{"type":"string"}}}}}"#;

#[tokio::test]
async fn a_chat_completion_has_the_openai_shape_and_is_a_task() {
    let c = TestCluster::start().await;
    let _w = c.worker("w1", 0, 2).await;
    let (status, headers, v) = post(
        &c,
        "/v1/chat/completions",
        &json!({"model": "echo", "messages": user("hello there"), "temperature": 0.2,
                "some_new_sdk_field": {"x": 1}}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let id = headers["x-request-id"].to_str().expect("id").to_owned();
    assert_eq!(v["id"], format!("chatcmpl-{id}"));
    assert_eq!(v["object"], "chat.completion");
    assert!(
        v["created"].as_u64().is_some_and(|t| t > 1_700_000_000),
        "{v}"
    );
    assert_eq!(v["model"], "echo");
    let choice = &v["choices"][0];
    assert_eq!(choice["index"], 0);
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["message"]["content"], "hello there");
    assert_eq!(choice["finish_reason"], "stop");
    assert_eq!(v["usage"]["completion_tokens"], 2);
    assert_eq!(
        v["usage"]["total_tokens"].as_u64(),
        Some(v["usage"]["prompt_tokens"].as_u64().expect("n") + 2)
    );
    // The request is a task like any other.
    let (s, task) = c
        .request(Method::GET, &format!("/api/tasks/{id}"), None)
        .await;
    assert_eq!((s, task["status"].as_str()), (200, Some("completed")));
    assert_eq!(task["type"], "chat_completion");
    // The same at the root (clients that drop /v1), and through the
    // virtual and the provider-pinned names.
    for (path, model) in [
        ("/chat/completions", "echo"),
        ("/v1/chat/completions", "d8/auto"),
        ("/v1/chat/completions", "d8/free"),
        ("/v1/chat/completions", "echo/echo"),
    ] {
        let (status, _, v) = post(&c, path, &json!({"model": model, "messages": user("hi")})).await;
        assert_eq!(status, 200, "{path} {model}: {v}");
        assert_eq!(v["choices"][0]["message"]["content"], "hi");
    }
}

#[tokio::test]
async fn errors_have_the_openai_shape_and_status() {
    let c = TestCluster::start().await;
    let _w = c.worker("w1", 0, 1).await;
    let (status, _, v) = post(
        &c,
        "/v1/chat/completions",
        &json!({"model": "gpt-9", "messages": user("x")}),
    )
    .await;
    assert_eq!(status, 404, "{v}");
    assert_eq!(v["error"]["code"], "model_not_found");
    assert_eq!(v["error"]["param"], "model");
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("gpt-9"))
    );
    let (status, _, v) = post(
        &c,
        "/v1/chat/completions",
        &json!({"model": "echo", "messages": user("x"), "n": 3}),
    )
    .await;
    assert_eq!(
        (status, v["error"]["param"].as_str()),
        (400, Some("n")),
        "{v}"
    );
    let (status, _, v) = post(
        &c,
        "/v1/chat/completions",
        &json!({"model": "echo", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,"}}]}]}),
    )
    .await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["param"], "messages[0].content[0]");
    // A wrong key: 401 in the same shape.
    let resp = c
        .http
        .post(format!("{}/v1/chat/completions", c.base))
        .bearer_auth("sk-wrong")
        .json(&json!({"model": "echo", "messages": user("x")}))
        .send()
        .await
        .expect("http");
    assert_eq!(resp.status().as_u16(), 401);
    let v: Value = resp.json().await.expect("json");
    assert_eq!(v["error"]["type"], "authentication_error");
    assert!(v["error"]["message"].is_string());
}

#[tokio::test]
async fn nobody_to_serve_it_is_a_503_with_retry_after_and_the_task_goes() {
    let c = TestCluster::start_with(|cfg| cfg.queue_timeout = Duration::from_millis(500)).await;
    // A worker came and went: its model stays listed (no flapping), and a
    // request for it waits the queue timeout, then gets 503.
    let w = c.worker("w1", 0, 1).await;
    w.drain().await.expect("drained");
    c.wait_until(|s| s["workers"]["online"] == 0, "offline")
        .await;
    let (status, v) = c.request(Method::GET, "/v1/models/echo", None).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["d8"]["online"], false);
    let (status, headers, v) = post(
        &c,
        "/v1/chat/completions",
        &json!({"model": "echo", "messages": user("x")}),
    )
    .await;
    assert_eq!(status, 503, "{v}");
    assert_eq!(v["error"]["code"], "no_capable_worker");
    assert_eq!(headers["retry-after"], "5");
    // Nothing is left queued to run when a worker comes back.
    let stats = c.stats().await;
    assert_eq!(stats["tasks"]["pending"], 0, "{stats}");
}

#[tokio::test]
async fn models_lists_workers_models_and_the_virtual_ones() {
    let c = TestCluster::start().await;
    let _w = c.worker("w1", 0, 1).await;
    let (status, v) = c.request(Method::GET, "/v1/models", None).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["object"], "list");
    let ids: Vec<&str> = v["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert_eq!(
        ids,
        ["echo", "echo-embed", "d8/auto", "d8/local", "d8/free"]
    );
    assert_eq!(v["data"][1]["d8"]["embedding"], true);
    let echo = &v["data"][0];
    assert_eq!(
        (echo["object"].as_str(), echo["owned_by"].as_str()),
        (Some("model"), Some("echo"))
    );
    assert_eq!(echo["d8"]["online"], true);
    // Ids with a slash are one path parameter.
    let (status, v) = c.request(Method::GET, "/v1/models/d8/auto", None).await;
    assert_eq!((status, v["id"].as_str()), (200, Some("d8/auto")), "{v}");
    let (status, v) = c.request(Method::GET, "/v1/models/nope", None).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (404, Some("model_not_found"))
    );
}

#[tokio::test]
async fn a_tool_call_round_trip() {
    let c = TestCluster::start().await;
    let _w = c.worker("w1", 0, 1).await;
    let tool: Value = serde_json::from_str(WEATHER).expect("tool");
    let (status, _, v) = post(
        &c,
        "/v1/chat/completions",
        &json!({"model": "echo", "messages": user(r#"{"city":"Paris"}"#), "tools": [tool]}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let choice = &v["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert_eq!(choice["message"]["content"], Value::Null);
    let call = choice["message"]["tool_calls"][0].clone();
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "get_weather");
    assert_eq!(call["function"]["arguments"], r#"{"city":"Paris"}"#);
    assert!(
        call.get("index").is_none(),
        "index is for stream deltas only"
    );
    // The assistant's call and the tool's result go back; the answer is final.
    let (status, _, v) = post(
        &c,
        "/v1/chat/completions",
        &json!({"model": "echo", "tools": [tool], "messages": [
            {"role": "user", "content": r#"{"city":"Paris"}"#},
            {"role": "assistant", "content": null, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": call["id"], "content": "21 C and sunny"}
        ]}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["choices"][0]["message"]["content"], "21 C and sunny");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
}

#[tokio::test]
async fn streams_are_data_lines_ending_with_done() {
    let c = TestCluster::start().await;
    let _w = c.worker("w1", 0, 1).await;
    let (status, data) = stream(
        &c,
        &json!({"model": "echo", "messages": user("stream me"), "stream": true,
                "stream_options": {"include_usage": true}}),
    )
    .await;
    assert_eq!(status, 200, "{data:?}");
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).expect("json chunk"))
        .collect();
    let id = chunks[0]["id"].clone();
    for ch in &chunks {
        assert_eq!(ch["object"], "chat.completion.chunk");
        assert_eq!(
            (&ch["id"], &ch["model"], &ch["created"]),
            (&id, &chunks[0]["model"], &chunks[0]["created"])
        );
    }
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks
        .iter()
        .filter_map(|ch| ch["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "stream me");
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    let usage = &chunks[chunks.len() - 1];
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], 2);

    // Tool calls stream as deltas that carry `index`.
    let tool: Value = serde_json::from_str(WEATHER).expect("tool");
    let (status, data) = stream(
        &c,
        &json!({"model": "echo", "messages": user("Paris"), "stream": true, "tools": [tool]}),
    )
    .await;
    assert_eq!(status, 200, "{data:?}");
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).expect("json chunk"))
        .collect();
    let calls: Vec<&Value> = chunks
        .iter()
        .filter_map(|ch| ch["choices"][0]["delta"]["tool_calls"].as_array())
        .flatten()
        .collect();
    assert_eq!(calls.len(), 1, "{chunks:?}");
    assert_eq!(calls[0]["index"], 0);
    assert_eq!(calls[0]["function"]["arguments"], r#"{"text":"Paris"}"#);
    assert_eq!(
        chunks.last().expect("finish")["choices"][0]["finish_reason"],
        "tool_calls"
    );
}

#[tokio::test]
async fn every_capable_provider_resting_is_a_429_with_retry_after() {
    use super::fakes::{FakeOpenAi, Mode};
    let c = TestCluster::start().await;
    let vendor = FakeOpenAi::start(Mode::RateLimited {
        retry_after_secs: 30,
    })
    .await;
    let _w = c.vendor_worker("limited", "groq", "gsk_test_429_0123456789", &vendor.base);
    c.wait_until(|s| s["workers"]["online"] == 1, "online")
        .await;
    // One task meets the 429 and the worker reports the cooldown.
    c.submit("anything", 5).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, list) = c.request(Method::GET, "/api/workers", None).await;
        if list[0]["provider_cooldowns"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no cooldown: {list}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, headers, v) = post(
        &c,
        "/v1/chat/completions",
        &json!({"model": "d8/auto", "messages": user("x")}),
    )
    .await;
    assert_eq!(status, 429, "{v}");
    assert_eq!(v["error"]["type"], "rate_limit_error");
    let secs: u64 = headers["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("secs");
    assert!((20..=30).contains(&secs), "{secs}");
    // Nothing was queued for it.
    assert_eq!(vendor.calls(), 1);
}

/// Streams "Hel", counts itself in `started`, then never finishes.
struct Stall {
    started: std::sync::Arc<tokio::sync::Semaphore>,
}

impl d8::providers::Provider for Stall {
    fn kind(&self) -> &str {
        "stall"
    }
    fn models(&self) -> Vec<String> {
        vec!["stall".into()]
    }
    fn chat<'a>(
        &'a self,
        _req: &'a d8::task::ChatRequest,
        sink: d8::providers::ChunkSink,
    ) -> d8::providers::BoxFuture<'a, Result<d8::task::TaskOutput, d8::providers::ProviderError>>
    {
        Box::pin(async move {
            sink.push("Hel".into()).await;
            self.started.add_permits(1);
            std::future::pending().await
        })
    }
}

fn stall_worker(
    c: &TestCluster,
    name: &str,
    started: &std::sync::Arc<tokio::sync::Semaphore>,
) -> super::harness::TestWorker {
    let mut cfg = c.worker_config(name, 0, 1);
    cfg.providers = d8::providers::ProviderSet::new(vec![std::sync::Arc::new(Stall {
        started: started.clone(),
    })]);
    c.spawn_worker(cfg)
}

/// A cluster with one `Stall` worker online; `started` counts its calls.
async fn stalled_cluster() -> (
    TestCluster,
    super::harness::TestWorker,
    std::sync::Arc<tokio::sync::Semaphore>,
) {
    let c = TestCluster::start().await;
    let started = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    let w = stall_worker(&c, "s1", &started);
    c.wait_until(|s| s["workers"]["online"] == 1, "online")
        .await;
    (c, w, started)
}

/// Opens a stream and reads until `want` is in the body; the response and
/// what came so far.
async fn open_stream(
    c: &TestCluster,
    model: &str,
    want: &str,
) -> (reqwest::Response, String, String) {
    let mut resp = c
        .http
        .post(format!("{}/v1/chat/completions", c.base))
        .bearer_auth(&c.key)
        .json(&json!({"model": model, "messages": user("hi"), "stream": true}))
        .send()
        .await
        .expect("http");
    assert_eq!(resp.status().as_u16(), 200);
    let id = resp.headers()["x-request-id"]
        .to_str()
        .expect("id")
        .to_owned();
    let mut body = String::new();
    while !body.contains(want) {
        let chunk = tokio::time::timeout(Duration::from_secs(10), resp.chunk())
            .await
            .expect("a chunk in time")
            .expect("read")
            .expect("not the end");
        body.push_str(&String::from_utf8_lossy(&chunk));
    }
    (resp, id, body)
}

#[tokio::test]
async fn a_worker_lost_mid_stream_ends_it_with_an_error_then_done() {
    let c = TestCluster::start().await;
    let started = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    let first = stall_worker(&c, "s1", &started);
    c.wait_until(|s| s["workers"]["online"] == 1, "online")
        .await;
    let (mut resp, id, _) = open_stream(&c, "stall", "Hel").await;
    // A second worker to retry on, then the first dies.
    let _second = stall_worker(&c, "s2", &started);
    c.wait_until(|s| s["workers"]["online"] == 2, "two online")
        .await;
    first.handle.abort();
    let mut body = String::new();
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(20), resp.chunk())
        .await
        .expect("the stream ends")
        .expect("read")
    {
        body.push_str(&String::from_utf8_lossy(&chunk));
    }
    let data: Vec<&str> = body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(data.last(), Some(&"[DONE]"), "{body}");
    let error: Value = serde_json::from_str(data[data.len() - 2]).expect("error frame");
    assert_eq!(error["error"]["code"], "stream_interrupted", "{body}");
    // The text of the retry never reached the client, and the task that
    // nobody reads any more is cancelled.
    c.wait_until_task(&id, "cancelled").await;
}

#[tokio::test]
async fn a_client_that_goes_away_cancels_its_task() {
    let (c, _w, _started) = stalled_cluster().await;
    let (resp, id, _) = open_stream(&c, "stall", "Hel").await;
    drop(resp);
    c.wait_until_task(&id, "cancelled").await;
}

#[tokio::test]
async fn a_client_that_stops_waiting_for_a_whole_answer_cancels_its_task() {
    let (c, _w, started) = stalled_cluster().await;
    // A raw connection, so that closing it is exactly what the server sees.
    let addr = c.base.trim_start_matches("http://").to_owned();
    let body = json!({"model": "stall", "messages": user("hi")}).to_string();
    let mut tcp = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        c.key,
        body.len()
    );
    tokio::io::AsyncWriteExt::write_all(&mut tcp, format!("{head}{body}").as_bytes())
        .await
        .expect("send");
    tokio::time::timeout(Duration::from_secs(10), started.acquire())
        .await
        .expect("provider started")
        .expect("semaphore")
        .forget();
    // Right away: the answer to the submission may still be on its way.
    drop(tcp);
    // The task has no id in the client's hands yet: it is the only one.
    c.wait_until_task("1", "cancelled").await;
}

#[tokio::test]
async fn embeddings_float_and_base64() {
    use base64::Engine;
    let c = TestCluster::start().await;
    let _w = c.worker("w1", 0, 2).await;
    let (status, headers, v) = post(
        &c,
        "/v1/embeddings",
        &json!({"model": "echo-embed", "input": ["alpha beta", "gamma", "alpha beta"]}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert!(headers.contains_key("x-request-id"));
    assert_eq!(v["object"], "list");
    assert_eq!(v["model"], "echo-embed");
    assert_eq!(v["usage"]["prompt_tokens"], 5);
    let data = v["data"].as_array().expect("data");
    assert_eq!(data.len(), 3);
    for (i, d) in data.iter().enumerate() {
        assert_eq!(
            (d["object"].as_str(), d["index"].as_u64()),
            (Some("embedding"), Some(i as u64))
        );
    }
    let vec_of = |d: &Value| -> Vec<f32> {
        d["embedding"]
            .as_array()
            .expect("floats")
            .iter()
            .map(|x| x.as_f64().expect("f") as f32)
            .collect()
    };
    assert_eq!(vec_of(&data[0]).len(), 8);
    assert_eq!(vec_of(&data[0]), vec_of(&data[2]));
    assert_ne!(vec_of(&data[0]), vec_of(&data[1]));
    // base64 (the Python SDK's default): the same numbers as f32 LE bytes.
    let (status, _, b) = post(
        &c,
        "/v1/embeddings",
        &json!({"model": "echo-embed", "input": "gamma", "encoding_format": "base64", "dimensions": 8}),
    )
    .await;
    assert_eq!(status, 200, "{b}");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b["data"][0]["embedding"].as_str().expect("base64"))
        .expect("decodes");
    let floats: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(floats, vec_of(&data[1]));
    // What cannot be served is refused, never answered empty.
    for (body, status, param) in [
        (
            json!({"model": "echo-embed", "input": [[1, 2, 3]]}),
            400,
            "input",
        ),
        (json!({"model": "d8/auto", "input": "x"}), 400, "model"),
        (json!({"model": "echo", "input": "x"}), 404, "model"),
    ] {
        let (s, _, v) = post(&c, "/v1/embeddings", &body).await;
        assert_eq!(
            (s, v["error"]["param"].as_str()),
            (status, Some(param)),
            "{body}: {v}"
        );
    }
}

#[tokio::test]
async fn json_schema_requests_get_json() {
    let c = TestCluster::start().await;
    let _w = c.worker("w1", 0, 1).await;
    let (status, _, v) = post(
        &c,
        "/v1/chat/completions",
        &json!({"model": "echo", "messages": user("plain words"),
                "response_format": {"type": "json_schema", "json_schema": {"name": "reply",
                    "schema": {"type": "object", "properties": {"text": {"type": "string"}}}, "strict": true}}}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let content: Value = serde_json::from_str(
        v["choices"][0]["message"]["content"]
            .as_str()
            .expect("text"),
    )
    .expect("the answer is JSON");
    assert_eq!(content, json!({"text": "plain words"}));
    // A schema that is not an object is refused, naming it.
    let (status, _, v) = post(
        &c,
        "/v1/chat/completions",
        &json!({"model": "echo", "messages": user("x"),
                "response_format": {"type": "json_schema", "json_schema": {"name": "r", "schema": "object"}}}),
    )
    .await;
    assert_eq!(
        (status, v["error"]["param"].as_str()),
        (400, Some("response_format.json_schema.schema")),
        "{v}"
    );
}
