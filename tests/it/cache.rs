//! The exact-match result cache through `/v1`: keys, hits, misses, bypass,
//! replay as a stream, single flight, restarts, TTL, eviction, clearing.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use super::harness::TestCluster;

/// POSTs `body` to `path` with `headers`; status, `x-d8-cache`, JSON body.
async fn post(
    c: &TestCluster,
    path: &str,
    body: &Value,
    headers: &[(&str, &str)],
) -> (u16, String, Value) {
    let mut req = c
        .http
        .post(format!("{}{path}", c.base))
        .bearer_auth(&c.key)
        .json(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.expect("http");
    let status = resp.status().as_u16();
    let label = resp
        .headers()
        .get("x-d8-cache")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (status, label, resp.json().await.unwrap_or(Value::Null))
}

async fn chat(c: &TestCluster, body: &Value) -> (String, Value) {
    let (status, label, v) = post(c, "/v1/chat/completions", body, &[]).await;
    assert_eq!(status, 200, "{v}");
    (label, v)
}

async fn completed(c: &TestCluster) -> u64 {
    c.stats().await["tasks"]["completed"].as_u64().unwrap_or(0)
}

#[tokio::test]
async fn keys_see_every_field_that_shapes_the_answer_and_no_other() {
    let c = TestCluster::start().await;
    let _w = c.worker("w1", 0, 4).await;
    let base: Value = serde_json::from_str(
        r#"{"model":"echo","messages":[{"role":"user","content":"hi"}],"temperature":0.5,"d8":{"cache":true}}"#,
    )
    .expect("json");
    assert_eq!(chat(&c, &base).await.0, "miss");
    // The same request with its keys in another order, streaming fields,
    // `user`, `metadata` and another priority: a hit, and no new task.
    let same: Value = serde_json::from_str(
        r#"{"d8":{"priority":9,"cache":true},"user":"u2","metadata":{"a":"b"},"temperature":0.5,"messages":[{"content":"hi","role":"user"}],"model":"echo"}"#,
    )
    .expect("json");
    let tasks = completed(&c).await;
    let (label, v) = chat(&c, &same).await;
    assert_eq!(label, "hit", "{v}");
    assert_eq!(v["choices"][0]["message"]["content"], "hi");
    assert!(
        v["id"]
            .as_str()
            .is_some_and(|id| id.starts_with("chatcmpl-c")),
        "{v}"
    );
    assert_eq!(completed(&c).await, tasks, "a hit runs no task");
    // Any difference that could change the answer is a miss.
    let tool =
        json!({"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}});
    let mut variants = Vec::new();
    for (field, value) in [
        ("seed", json!(7)),
        ("tools", json!([tool])),
        ("response_format", json!({"type": "json_object"})),
        ("some_future_field", json!(1)),
        ("temperature", json!(0.6)),
    ] {
        let mut v = base.clone();
        v[field] = value;
        variants.push(v);
    }
    let mut tool_answer = base.clone();
    tool_answer["messages"] = json!([
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "42"}
    ]);
    let mut other_call = tool_answer.clone();
    other_call["messages"][2]["tool_call_id"] = json!("call_2");
    other_call["messages"][1]["tool_calls"][0]["id"] = json!("call_2");
    variants.push(tool_answer);
    variants.push(other_call);
    for v in &variants {
        assert_eq!(chat(&c, v).await.0, "miss", "{v}");
    }
    // Not asked for, or refused: bypass.
    let mut plain = base.clone();
    plain.as_object_mut().expect("object").remove("d8");
    assert_eq!(chat(&c, &plain).await.0, "bypass");
    let (_, label, _) = post(
        &c,
        "/v1/chat/completions",
        &base,
        &[("cache-control", "no-store")],
    )
    .await;
    assert_eq!(label, "bypass");
    let (_, label, _) = post(&c, "/v1/chat/completions", &plain, &[("x-d8-cache", "on")]).await;
    assert_eq!(label, "hit", "the header turns it on too");
    let (status, stats) = c
        .request(
            Method::GET,
            "/api/workers/stats?include=cache,cooldowns",
            None,
        )
        .await;
    assert_eq!(status, 200, "{stats}");
    assert_eq!(stats["cache"]["hits"], 2, "{stats}");
    assert_eq!(stats["cache"]["entries"], 1 + variants.len(), "{stats}");
    assert!(stats["cooldowns"].is_array());
}

#[tokio::test]
async fn a_hit_replays_as_a_stream() {
    let c = TestCluster::start().await;
    let _w = c.worker("w1", 0, 4).await;
    let body = json!({"model": "echo", "messages": [{"role": "user", "content": "once"}], "d8": {"cache": true}});
    assert_eq!(chat(&c, &body).await.0, "miss");
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let resp = c.post_json("/v1/chat/completions", &streamed).await;
    assert_eq!(resp.headers()["x-d8-cache"], "hit");
    let text = resp.text().await.expect("body");
    let data: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(data.last(), Some(&"[DONE]"), "{text}");
    let content: String = data[..data.len() - 1]
        .iter()
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|ch| {
            ch["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(content, "once");
    assert!(text.contains("\"usage\""), "{text}");
    // A streamed miss is stored once complete and served to a whole request.
    let mut fresh = streamed.clone();
    fresh["messages"][0]["content"] = json!("streamed first");
    let resp = c.post_json("/v1/chat/completions", &fresh).await;
    assert_eq!(resp.headers()["x-d8-cache"], "miss");
    resp.text().await.expect("stream ends");
    let mut whole = fresh.clone();
    whole.as_object_mut().expect("object").remove("stream");
    let (label, v) = chat(&c, &whole).await;
    assert_eq!(label, "hit", "{v}");
    assert_eq!(v["choices"][0]["message"]["content"], "streamed first");
}

#[tokio::test]
async fn identical_concurrent_misses_run_one_task() {
    let c = TestCluster::start().await;
    let _w = c.worker("slow", 300, 4).await;
    let body = json!({"model": "echo", "messages": [{"role": "user", "content": "together"}], "d8": {"cache": true}});
    let (a, b) = tokio::join!(chat(&c, &body), chat(&c, &body));
    let mut labels = [a.0, b.0];
    labels.sort();
    assert_eq!(labels, ["hit", "miss"]);
    assert_eq!(a.1["choices"][0]["message"]["content"], "together");
    assert_eq!(b.1["choices"][0]["message"]["content"], "together");
    assert_eq!(completed(&c).await, 1, "one vendor call for both");
}

#[tokio::test]
async fn entries_survive_a_restart_expire_and_are_evicted_and_cleared() {
    let mut c = TestCluster::start_with(|cfg| cfg.cache_ttl = Duration::from_secs(2)).await;
    let w = c.worker("w1", 0, 4).await;
    let body = json!({"model": "echo", "messages": [{"role": "user", "content": "keep"}], "d8": {"cache": true}});
    assert_eq!(chat(&c, &body).await.0, "miss");
    // Embeddings share the cache, whatever their encoding.
    let emb = json!({"model": "echo-embed", "input": ["a"], "d8": {"cache": true}});
    let (_, label, _) = post(&c, "/v1/embeddings", &emb, &[]).await;
    assert_eq!(label, "miss");
    let mut emb64 = emb.clone();
    emb64["encoding_format"] = json!("base64");
    let (status, label, v) = post(&c, "/v1/embeddings", &emb64, &[]).await;
    assert_eq!((status, label.as_str()), (200, "hit"), "{v}");
    assert!(v["data"][0]["embedding"].is_string(), "{v}");
    // Restart: the entry is still there.
    w.drain().await.expect("drain");
    let dir = c.dir.path().join("orchestrator");
    c.orch.take().expect("running").shutdown().await;
    let mut cfg = super::harness::local_config(&dir);
    cfg.cache_ttl = Duration::from_secs(2);
    let orch = d8::node::orchestrator::Orchestrator::start(cfg)
        .await
        .expect("restart");
    c.base = format!("http://{}", orch.http_addr());
    c.orch = Some(orch);
    let _w = c.worker("w2", 0, 4).await;
    assert_eq!(chat(&c, &body).await.0, "hit", "kept across the restart");
    // Past its TTL it is computed again.
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    assert_eq!(chat(&c, &body).await.0, "miss", "expired");
    // DELETE /api/cache empties it.
    let (status, v) = c.request(Method::DELETE, "/api/cache", None).await;
    assert_eq!(status, 200, "{v}");
    assert!(v["cleared"].as_u64().is_some_and(|n| n >= 1), "{v}");
    assert_eq!(chat(&c, &body).await.0, "miss", "cleared");
}

#[tokio::test]
async fn past_the_byte_cap_the_least_recently_used_go() {
    // Room for two of these answers (about 30 bytes each as stored).
    let c = TestCluster::start_with(|cfg| cfg.cache_max_bytes = 70).await;
    let _w = c.worker("w1", 0, 4).await;
    let ask = |text: &str| json!({"model": "echo", "messages": [{"role": "user", "content": text}], "d8": {"cache": true}});
    assert_eq!(chat(&c, &ask("one")).await.0, "miss");
    assert_eq!(chat(&c, &ask("two")).await.0, "miss");
    assert_eq!(chat(&c, &ask("one")).await.0, "hit");
    assert_eq!(chat(&c, &ask("three")).await.0, "miss");
    // "two" was the least recently used.
    assert_eq!(chat(&c, &ask("one")).await.0, "hit");
    assert_eq!(chat(&c, &ask("two")).await.0, "miss");
    let (_, stats) = c
        .request(Method::GET, "/api/workers/stats?include=cache", None)
        .await;
    assert!(
        stats["cache"]["evictions"].as_u64().is_some_and(|n| n >= 1),
        "{stats}"
    );
    assert!(
        stats["cache"]["bytes"].as_u64().is_some_and(|b| b <= 200),
        "{stats}"
    );
}

#[tokio::test]
async fn failures_are_never_cached() {
    let c = TestCluster::start().await;
    let _w = c.worker("w1", 0, 4).await;
    // Echo refuses a chat without a user message: the task fails for good.
    let body = json!({"model": "echo", "messages": [{"role": "system", "content": "only"}], "d8": {"cache": true}});
    for _ in 0..2 {
        let (status, label, v) = post(&c, "/v1/chat/completions", &body, &[]).await;
        assert_eq!((status, label.as_str()), (502, ""), "{v}");
    }
    let (_, stats) = c
        .request(Method::GET, "/api/workers/stats?include=cache", None)
        .await;
    assert_eq!(stats["cache"]["entries"], 0, "{stats}");
    assert_eq!(stats["tasks"]["failed"], 2, "both ran: {stats}");
}

#[tokio::test]
async fn agents_and_api_tasks_use_the_cache_when_they_opt_in() {
    let c = TestCluster::start().await;
    let _w = c.worker("w1", 0, 4).await;
    // An agent with a TTL: its second identical action is a completed task
    // at once, with the first one's answer.
    let (status, v) = c
        .request(
            Method::PUT,
            "/api/agents/writer",
            Some(json!({"system_prompt": "You write.", "cache_ttl_secs": 600})),
        )
        .await;
    assert_eq!(
        (status, v["cache_ttl_secs"].as_u64()),
        (200, Some(600)),
        "{v}"
    );
    let act = json!({"action_type": "summarise", "input_data": {"topic": "cats"}});
    let (status, label, first) = post(&c, "/api/agents/writer/act", &act, &[]).await;
    assert_eq!((status, label.as_str()), (201, "miss"), "{first}");
    let first_id = first["task_id"].as_str().expect("id").to_owned();
    let done = c.wait_task(&first_id, 10).await;
    assert_eq!(done["status"], "completed", "{done}");
    // The answer is stored as the task completes; give it a moment.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let (label, second) = loop {
        let (_, label, v) = post(&c, "/api/agents/writer/act", &act, &[]).await;
        if label == "hit" || tokio::time::Instant::now() > deadline {
            break (label, v);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(label, "hit", "{second}");
    assert_eq!(second["status"], "completed");
    let id = second["task_id"].as_str().expect("id");
    assert_ne!(id, first_id);
    let (_, t) = c
        .request(Method::GET, &format!("/api/tasks/{id}"), None)
        .await;
    assert_eq!(t["status"], "completed", "{t}");
    assert_eq!(t["result"]["content"], done["result"]["content"]);
    assert_eq!(
        (t["attempts"].as_u64(), t["worker_id"].is_null()),
        (Some(0), true),
        "{t}"
    );
    // Counted like any completed task (the stats and the list agree).
    let (_, done) = c
        .request(Method::GET, "/api/tasks?status=completed", None)
        .await;
    let listed = done["tasks"].as_array().map(Vec::len).expect("tasks");
    assert_eq!(completed(&c).await, listed as u64, "{done}");
    // An agent without a TTL, and a task without `cache`, are not cached.
    let (_, label, _) = post(&c, "/api/agents/other/act", &act, &[]).await;
    assert_eq!(label, "");
    let task = json!({"type": "agent_action", "data": {"messages": [{"role": "user", "content": "same"}]}});
    let (_, label, _) = post(&c, "/api/tasks", &task, &[]).await;
    assert_eq!(label, "");
    let mut cached_task = task.clone();
    cached_task["cache"] = json!(true);
    let (_, label, v) = post(&c, "/api/tasks", &cached_task, &[]).await;
    assert_eq!(label, "miss");
    c.wait_task(v["task_id"].as_str().expect("id"), 10).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (_, label, v) = post(&c, "/api/tasks", &cached_task, &[]).await;
        if label == "hit" {
            assert_eq!(v["status"], "completed");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never a hit: {label}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A bad TTL is refused.
    let (status, v) = c
        .request(
            Method::PUT,
            "/api/agents/bad",
            Some(json!({"system_prompt": "x", "cache_ttl_secs": 0})),
        )
        .await;
    assert_eq!(
        (status, v["error"]["param"].as_str()),
        (400, Some("cache_ttl_secs")),
        "{v}"
    );
}
