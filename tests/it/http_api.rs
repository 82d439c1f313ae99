//! Bad input on the HTTP API gets a 4xx with `{error: {code, message}}`,
//! never a panic, and nothing is stored.

use reqwest::Method;
use serde_json::{Value, json};

use super::harness::TestCluster;

async fn raw(
    c: &TestCluster,
    method: Method,
    path: &str,
    key: Option<&str>,
    body: Option<Vec<u8>>,
) -> (u16, Value) {
    let mut req = c.http.request(method, format!("{}{path}", c.base));
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    if let Some(b) = body {
        req = req.body(b);
    }
    let resp = req.send().await.expect("http");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("<no error code>")
}

#[tokio::test]
async fn authentication() {
    let c = TestCluster::start().await;
    let (s, v) = raw(&c, Method::GET, "/api/workers/stats", None, None).await;
    assert_eq!((s, code(&v)), (401, "unauthorized"));
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("Bearer")
    );
    let (s, v) = raw(
        &c,
        Method::GET,
        "/api/workers/stats",
        Some("d8k_wrong"),
        None,
    )
    .await;
    assert_eq!((s, code(&v)), (401, "unauthorized"));
    // The key never appears in an error.
    assert!(!v.to_string().contains(&c.key));
    let (s, v) = raw(&c, Method::GET, "/health", None, None).await;
    assert_eq!((s, v["status"].as_str()), (200, Some("ok")));
    // The desktop app lists clusters with their worker counts from /health.
    assert_eq!(v["workers_online"], 0, "{v}");
    let _w = c.worker("w1", 0, 1).await;
    let (_, v) = raw(&c, Method::GET, "/health", None, None).await;
    assert_eq!(v["workers_online"], 1, "{v}");
}

#[tokio::test]
async fn bad_bodies_are_4xx_and_store_nothing() {
    let c = TestCluster::start_with(|cfg| cfg.max_body_bytes = 64 * 1024).await;
    let key = c.key.clone();
    let cases: Vec<(&str, &str, Vec<u8>, u16, &str)> = vec![
        ("/api/tasks", "malformed JSON", b"{not json".to_vec(), 400, "invalid_json"),
        ("/api/tasks", "empty body", vec![], 400, "invalid_json"),
        ("/api/tasks", "wrong type", br#"{"type": 5, "data": {"messages": []}}"#.to_vec(), 400, "invalid_request"),
        ("/api/tasks", "missing data", br#"{"type": "agent_action"}"#.to_vec(), 400, "invalid_request"),
        ("/api/tasks", "no messages", br#"{"type": "agent_action", "data": {"messages": []}}"#.to_vec(), 400, "invalid_messages"),
        ("/api/tasks", "bad role", br#"{"type": "t", "data": {"messages": [{"role": "boss", "content": "x"}]}}"#.to_vec(), 400, "invalid_messages"),
        ("/api/tasks", "priority high", br#"{"type": "t", "priority": 11, "data": {"messages": [{"role": "user", "content": "x"}]}}"#.to_vec(), 400, "invalid_priority"),
        ("/api/tasks", "priority zero", br#"{"type": "t", "priority": 0, "data": {"messages": [{"role": "user", "content": "x"}]}}"#.to_vec(), 400, "invalid_priority"),
        ("/api/tasks", "priority negative", br#"{"type": "t", "priority": -3, "data": {"messages": [{"role": "user", "content": "x"}]}}"#.to_vec(), 400, "invalid_priority"),
        ("/api/tasks", "priority string", br#"{"type": "t", "priority": "high", "data": {"messages": [{"role": "user", "content": "x"}]}}"#.to_vec(), 400, "invalid_request"),
        ("/api/tasks", "temperature", br#"{"type": "t", "data": {"messages": [{"role": "user", "content": "x"}], "temperature": 9}}"#.to_vec(), 400, "invalid_temperature"),
        ("/api/tasks", "five stops", br#"{"type": "t", "data": {"messages": [{"role": "user", "content": "x"}], "stop": ["a","b","c","d","e"]}}"#.to_vec(), 400, "invalid_stop"),
        ("/api/tasks", "empty stop", br#"{"type": "t", "data": {"messages": [{"role": "user", "content": "x"}], "stop": ""}}"#.to_vec(), 400, "invalid_stop"),
        ("/api/tasks", "stop number", br#"{"type": "t", "data": {"messages": [{"role": "user", "content": "x"}], "stop": 7}}"#.to_vec(), 400, "invalid_request"),
        ("/api/tasks", "json schema", br#"{"type": "t", "data": {"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_schema"}}}"#.to_vec(), 400, "invalid_response_format"),
        ("/api/tasks", "bad tier", br#"{"type": "t", "data": {"messages": [{"role": "user", "content": "x"}], "max_tier": "cheap"}}"#.to_vec(), 400, "invalid_max_tier"),
        ("/api/tasks", "bad type name", br#"{"type": "a b/c", "data": {"messages": [{"role": "user", "content": "x"}]}}"#.to_vec(), 400, "invalid_type"),
        ("/api/tasks", "array not object", b"[1,2,3]".to_vec(), 400, "invalid_request"),
        ("/api/tasks", "too large", format!(r#"{{"type":"t","data":{{"messages":[{{"role":"user","content":"{}"}}]}}}}"#, "x".repeat(100_000)).into_bytes(), 413, "body_too_large"),
        ("/api/tasks/batch", "empty batch", b"[]".to_vec(), 400, "invalid_batch"),
        ("/api/tasks", "model too long", format!(r#"{{"type":"t","data":{{"model":"{}","messages":[{{"role":"user","content":"x"}}]}}}}"#, "m".repeat(200)).into_bytes(), 400, "invalid_request"),
        ("/api/tasks/batch", "one bad in batch", br#"[{"type": "t", "data": {"messages": [{"role": "user", "content": "x"}]}}, {"type": "t", "priority": 99, "data": {"messages": [{"role": "user", "content": "x"}]}}]"#.to_vec(), 400, "invalid_priority"),
        ("/api/agents/a1/act", "no action_type", br#"{"input_data": {}}"#.to_vec(), 400, "invalid_request"),
        ("/api/agents/a1/act", "empty action_type", br#"{"action_type": " "}"#.to_vec(), 400, "invalid_action_type"),
        ("/api/agents/a1/act", "act priority", br#"{"action_type": "x", "priority": 42}"#.to_vec(), 400, "invalid_priority"),
        ("/api/agents/a1/act", "binary garbage", vec![0xff, 0xfe, 0x00, 0x01], 400, "invalid_json"),
    ];
    for (path, what, body, status, want) in cases {
        let (s, v) = raw(&c, Method::POST, path, Some(&key), Some(body)).await;
        assert_eq!((s, code(&v)), (status, want), "{what}: {v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{what}: {v}"
        );
    }
    let stats = c.stats().await;
    assert_eq!(stats["tasks"]["pending"], 0, "nothing was accepted");
    // The batch error names the offending element.
    let (_, v) = raw(
        &c,
        Method::POST,
        "/api/tasks/batch",
        Some(&key),
        Some(br#"[{"type": "t", "priority": 99, "data": {"messages": [{"role": "user", "content": "x"}]}}]"#.to_vec()),
    )
    .await;
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .starts_with("task 0:"),
        "{v}"
    );
}

#[tokio::test]
async fn unknown_ids_routes_and_methods() {
    let c = TestCluster::start().await;
    for path in [
        "/api/tasks/999999",
        "/api/tasks/not-a-number",
        "/api/tasks/-1",
    ] {
        let (s, v) = c.request(Method::GET, path, None).await;
        assert_eq!((s, code(&v)), (404, "not_found"), "{path}: {v}");
    }
    let (s, v) = c.request(Method::DELETE, "/api/tasks/424242", None).await;
    assert_eq!((s, code(&v)), (404, "not_found"));
    let (s, v) = c.request(Method::GET, "/api/agents/ghost", None).await;
    assert_eq!((s, code(&v)), (404, "not_found"));
    let (s, v) = c.request(Method::GET, "/api/nope", None).await;
    assert_eq!((s, code(&v)), (404, "not_found"));
    let (s, v) = c.request(Method::PATCH, "/api/tasks", None).await;
    assert_eq!((s, code(&v)), (405, "method_not_allowed"), "{v}");
    let (s, v) = c.request(Method::GET, "/api/tasks/1?wait=soon", None).await;
    assert!(s == 400 || s == 404, "{s} {v}");
    let (s, v) = c.request(Method::DELETE, "/api/tokens/zzzz", None).await;
    assert_eq!((s, code(&v)), (404, "not_found"));
    let (s, v) = c
        .request(Method::POST, "/api/tokens", Some(json!({"max_uses": 0})))
        .await;
    assert_eq!((s, code(&v)), (400, "invalid_token_limits"));
}

#[tokio::test]
async fn curl_without_content_type_works() {
    // The walkthrough's `curl -d` sends application/x-www-form-urlencoded.
    let c = TestCluster::start().await;
    let resp = c
        .http
        .post(format!("{}/api/agents/agent123/act", c.base))
        .bearer_auth(&c.key)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(r#"{"action_type":"content_generation","input_data":{"topic":"AI trends"}}"#)
        .send()
        .await
        .expect("http");
    assert_eq!(resp.status().as_u16(), 201);
}

#[tokio::test]
async fn stats_have_exactly_the_original_shape() {
    let c = TestCluster::start().await;
    let stats = c.stats().await;
    let keys = |v: &Value| {
        let mut k: Vec<String> = v.as_object().expect("object").keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(keys(&stats), ["performance", "tasks", "workers"]);
    assert_eq!(
        keys(&stats["workers"]),
        ["busy", "by_type", "online", "total"]
    );
    assert_eq!(
        keys(&stats["tasks"]),
        ["assigned", "completed", "failed", "pending"]
    );
    assert_eq!(
        keys(&stats["performance"]),
        ["success_rate", "total_completed", "total_failed"]
    );
}

#[tokio::test]
async fn store_failure_is_a_503_and_nothing_stays_queued() {
    use std::sync::Arc;
    let backend = Arc::new(d8::store::MemBackend::default());
    let c = TestCluster::start_on(|_| {}, Some(backend.clone())).await;
    let _w = c.worker("w", 0, 2).await;
    let ok = c.submit("before", 5).await;
    assert_eq!(c.wait_task(&ok, 10).await["status"], "completed");
    // Its result is persisted shortly after it completes.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !d8::store::Backend::load(backend.as_ref())
        .expect("load")
        .pending
        .is_empty()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "result never persisted"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    backend.set_failing(true);
    let (s, v) = c
        .request(
            Method::POST,
            "/api/tasks",
            Some(super::harness::chat("lost?", 5)),
        )
        .await;
    assert_eq!((s, code(&v)), (503, "unavailable"), "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("could not store")
    );
    backend.set_failing(false);
    let stats = c.stats().await;
    assert_eq!(stats["tasks"]["pending"], 0);
    assert_eq!(stats["tasks"]["assigned"], 0);
    // Nothing durable means nothing to re-run after a restart either; a task
    // that had already finished before the failure was reported is cancelled
    // no further (the scheduler answers NotLive).
    assert!(
        d8::store::Backend::load(backend.as_ref())
            .expect("load")
            .pending
            .is_empty()
    );
}

#[tokio::test]
async fn no_auth_mode_serves_without_a_key() {
    let c = TestCluster::start_with(|cfg| cfg.require_api_key = false).await;
    let (s, v) = raw(&c, Method::GET, "/api/workers/stats", None, None).await;
    assert_eq!(s, 200, "{v}");
}

/// A raw TCP connection to the API.
async fn tcp(c: &TestCluster) -> tokio::net::TcpStream {
    tokio::net::TcpStream::connect(c.orch().http_addr())
        .await
        .expect("connect")
}

/// Reads until the server closes the connection (true) or `within` passes
/// (false). Whatever the server sends first (an error answer) is skipped.
async fn closed_within(conn: &mut tokio::net::TcpStream, within: std::time::Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 4096];
    tokio::time::timeout(within, async {
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

fn short_timeouts(cfg: &mut d8::config::OrchestratorConfig) {
    cfg.http.head_timeout = std::time::Duration::from_millis(500);
    cfg.http.body_timeout = std::time::Duration::from_millis(500);
    cfg.http.max_per_address = 8;
}

#[tokio::test]
async fn silent_half_sent_and_idle_connections_are_closed() {
    // Before: all three were still open after 150 s, each holding a
    // descriptor; 1,050 of them locked every client out.
    use tokio::io::AsyncWriteExt;
    let c = TestCluster::start_with(short_timeouts).await;
    let long = std::time::Duration::from_secs(5);
    let mut silent = tcp(&c).await;
    assert!(closed_within(&mut silent, long).await, "silent");
    let mut half = tcp(&c).await;
    half.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    assert!(closed_within(&mut half, long).await, "half a head");
    let mut idle = tcp(&c).await;
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    assert!(closed_within(&mut idle, long).await, "idle after a request");
}

#[tokio::test]
async fn a_body_that_never_arrives_is_answered_408_and_the_connection_freed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let c = TestCluster::start_with(short_timeouts).await;
    let mut conn = tcp(&c).await;
    let head = format!(
        "POST /api/tasks HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Length: 1000000\r\n\r\n{{\"type\"",
        c.key
    );
    conn.write_all(head.as_bytes()).await.expect("write");
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), conn.read(&mut answer))
        .await
        .expect("answered in time")
        .expect("read");
    let text = String::from_utf8_lossy(&answer[..n]);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("body_timeout"), "{text}");
    assert_eq!(c.stats().await["tasks"]["pending"], 0, "nothing stored");
}

#[tokio::test]
async fn connections_past_the_per_address_cap_are_closed_at_once() {
    let c = TestCluster::start_with(|cfg| {
        short_timeouts(cfg);
        cfg.http.head_timeout = std::time::Duration::from_secs(30);
    })
    .await;
    // Eight keep-alive connections, each served once: each surely holds a
    // place (no sleep guessing when the server has accepted them).
    async fn served(conn: &mut tokio::net::TcpStream) -> bool {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        if conn
            .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .is_err()
        {
            return false;
        }
        let mut answer = vec![0u8; 1024];
        matches!(conn.read(&mut answer).await, Ok(n) if String::from_utf8_lossy(&answer[..n]).starts_with("HTTP/1.1 200"))
    }
    let mut held = Vec::new();
    for _ in 0..8 {
        let mut conn = tcp(&c).await;
        assert!(served(&mut conn).await, "within the cap");
        held.push(conn);
    }
    let mut extra = tcp(&c).await;
    assert!(
        closed_within(&mut extra, std::time::Duration::from_secs(2)).await,
        "the ninth is closed before anything is read"
    );
    // A held one still works.
    assert!(served(&mut held[0]).await);
    drop(held);
    // Places come back as connections end.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let (s, _) = c.request(Method::GET, "/health", None).await;
    assert_eq!(s, 200);
}

/// Checks a Prometheus text exposition: every sample belongs to a family
/// declared by `# TYPE` before it, names and labels are well formed, values
/// are numbers. Returns the samples as (name with labels, value).
fn parse_exposition(text: &str) -> Vec<(String, f64)> {
    let mut declared = std::collections::HashMap::new();
    let mut samples = Vec::new();
    let name_ok = |n: &str| {
        !n.is_empty()
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
            && !n.starts_with(|c: char| c.is_ascii_digit())
    };
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            let name = parts.next().expect("name");
            let kind = parts.next().expect("kind");
            assert!(name_ok(name), "bad family name in {line:?}");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{line:?}"
            );
            assert!(
                declared.insert(name.to_owned(), kind.to_owned()).is_none(),
                "family declared twice: {line:?}"
            );
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("series and value");
        let name = series.split('{').next().expect("name");
        assert!(name_ok(name), "bad metric name in {line:?}");
        // A histogram's samples are its name plus _bucket, _sum or _count.
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| declared.get(*f).is_some_and(|k| k == "histogram"))
            })
            .unwrap_or(name);
        assert!(
            declared.contains_key(family),
            "sample before its # TYPE: {line:?}"
        );
        if let Some(labels) = series.strip_prefix(name).filter(|l| !l.is_empty()) {
            assert!(labels.starts_with('{') && labels.ends_with('}'), "{line:?}");
            for pair in labels[1..labels.len() - 1].split("\",") {
                let (k, v) = pair
                    .split_once("=\"")
                    .unwrap_or_else(|| panic!("bad label in {line:?}"));
                assert!(name_ok(k), "bad label name in {line:?}");
                assert!(!v.trim_end_matches('"').contains('\n'), "{line:?}");
            }
        }
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        samples.push((series.to_owned(), value));
    }
    // Histograms: buckets ascend, never decrease, and end with +Inf = _count.
    for (family, _) in declared.iter().filter(|(_, k)| *k == "histogram") {
        let prefix = format!("{family}_bucket{{le=\"");
        let buckets: Vec<(f64, f64)> = samples
            .iter()
            .filter_map(|(s, v)| {
                let le = s.strip_prefix(&prefix)?.strip_suffix("\"}")?;
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().expect("le")
                };
                Some((le, *v))
            })
            .collect();
        assert!(!buckets.is_empty(), "{family} has no buckets");
        assert!(
            buckets
                .windows(2)
                .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
            "{family} buckets not cumulative: {buckets:?}"
        );
        let count = samples
            .iter()
            .find(|(s, _)| *s == format!("{family}_count"))
            .map(|(_, v)| *v);
        assert_eq!(buckets.last().map(|b| b.0), Some(f64::INFINITY), "{family}");
        assert_eq!(
            buckets.last().map(|b| b.1),
            count,
            "{family}: +Inf is the count"
        );
    }
    samples
}

#[tokio::test]
async fn metrics_are_valid_exposition_and_move() {
    let c = TestCluster::start().await;
    let _w = c.worker("w1", 0, 2).await;
    let scrape = || async {
        let resp = c
            .http
            .get(format!("{}/metrics", c.base))
            .bearer_auth(&c.key)
            .send()
            .await
            .expect("http");
        assert_eq!(resp.status().as_u16(), 200);
        assert!(
            resp.headers()["content-type"]
                .to_str()
                .expect("ascii")
                .starts_with("text/plain; version=0.0.4")
        );
        parse_exposition(&resp.text().await.expect("text"))
    };
    let value = |samples: &[(String, f64)], series: &str| {
        samples.iter().find(|(s, _)| s == series).map(|(_, v)| *v)
    };
    let before = scrape().await;
    assert_eq!(value(&before, "d8_workers{state=\"online\"}"), Some(1.0));
    assert_eq!(value(&before, "d8_worker_slots"), Some(2.0));
    let done_before =
        value(&before, "d8_tasks_finished_total{status=\"completed\"}").expect("series");
    let id = c.submit("count me", 5).await;
    c.wait_task(&id, 10).await;
    let after = scrape().await;
    assert_eq!(
        value(&after, "d8_tasks_finished_total{status=\"completed\"}"),
        Some(done_before + 1.0)
    );
    let ok_before = value(&before, "d8_http_responses_total{class=\"2xx\"}").expect("series");
    assert!(value(&after, "d8_http_responses_total{class=\"2xx\"}").expect("series") > ok_before);
    // Counts and latencies of what just ran (and one streamed task).
    let (status, v) = c
        .request(
            reqwest::Method::POST,
            "/api/tasks",
            Some(json!({"type": "summarize", "priority": 9, "data": {
                "messages": [{"role": "user", "content": "stream me"}], "stream": true}})),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    c.wait_task(v["task_id"].as_str().expect("id"), 10).await;
    let after = scrape().await;
    let at_least = |series: &str, n: f64| {
        let v = value(&after, series).unwrap_or_else(|| panic!("no {series}"));
        assert!(v >= n, "{series} = {v}, want at least {n}");
    };
    at_least("d8_tasks_submitted_total{type=\"agent_action\"}", 1.0);
    at_least("d8_tasks_submitted_total{type=\"summarize\"}", 1.0);
    at_least(
        "d8_tasks_finished_by_type_total{type=\"summarize\",status=\"completed\"}",
        1.0,
    );
    at_least("d8_attempts_total{provider=\"echo\",outcome=\"ok\"}", 2.0);
    at_least("d8_queue_wait_seconds_count", 2.0);
    at_least("d8_task_duration_seconds_count", 2.0);
    at_least("d8_time_to_first_token_seconds_count", 1.0);
    at_least("d8_store_commit_seconds_count", 2.0);
    at_least(
        "d8_tokens_total{provider=\"echo\",model=\"echo\",kind=\"prompt\"}",
        2.0,
    );
    assert_eq!(
        value(&after, "d8_tasks_pending_by_priority{priority=\"9\"}"),
        Some(0.0)
    );
    // The key is required unless the operator says otherwise.
    let resp = c
        .http
        .get(format!("{}/metrics", c.base))
        .send()
        .await
        .expect("http");
    assert_eq!(resp.status().as_u16(), 401);
    let open = TestCluster::start_with(|cfg| cfg.metrics_no_auth = true).await;
    let resp = open
        .http
        .get(format!("{}/metrics", open.base))
        .send()
        .await
        .expect("http");
    assert_eq!(resp.status().as_u16(), 200);
    let resp = open
        .http
        .get(format!("{}/api/workers", open.base))
        .send()
        .await
        .expect("http");
    assert_eq!(resp.status().as_u16(), 401, "only /metrics opens");
}

#[tokio::test]
async fn recent_tasks_are_listed_newest_first_filtered_and_paged() {
    let c = TestCluster::start().await;
    let _w = c.worker("w1", 0, 4).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let id = c.submit(&format!("task {i}"), 5).await;
        c.wait_task(&id, 10).await;
        ids.push(id);
    }
    let (s, v) = c
        .request(
            reqwest::Method::PUT,
            "/api/agents/lister",
            Some(json!({"system_prompt": "x"})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let (_, v) = c
        .request(
            reqwest::Method::POST,
            "/api/agents/lister/act",
            Some(json!({"action_type": "list"})),
        )
        .await;
    let agent_task = v["task_id"].as_str().expect("id").to_owned();
    c.wait_task(&agent_task, 10).await;
    let c = &c;
    let list = |q: &'static str| async move {
        let (s, v) = c
            .request(reqwest::Method::GET, &format!("/api/tasks{q}"), None)
            .await;
        assert_eq!(s, 200, "{v}");
        v
    };
    let all = list("").await;
    let got: Vec<&str> = all["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .filter_map(|t| t["task_id"].as_str())
        .collect();
    let mut want: Vec<&str> = ids.iter().map(String::as_str).collect();
    want.push(&agent_task);
    want.reverse();
    assert_eq!(got, want, "newest first");
    assert!(all["next_before"].is_null());
    // Pages of two, following next_before.
    let page = list("?limit=2").await;
    assert_eq!(page["tasks"].as_array().map(Vec::len), Some(2));
    let next = page["next_before"].as_str().expect("more").to_owned();
    let (_, page2) = c
        .request(
            reqwest::Method::GET,
            &format!("/api/tasks?limit=2&before={next}"),
            None,
        )
        .await;
    assert_eq!(page2["tasks"][0]["task_id"], want[2]);
    // Filters.
    let by_agent = list("?agent=lister").await;
    assert_eq!(by_agent["tasks"].as_array().map(Vec::len), Some(1));
    assert_eq!(by_agent["tasks"][0]["agent_id"], "lister");
    assert_eq!(list("?status=failed").await["tasks"], json!([]));
    assert_eq!(
        list("?type=agent_action&status=completed").await["tasks"]
            .as_array()
            .map(Vec::len),
        Some(6)
    );
    // A live task is listed too, as it is now.
    let (_, v) = c
        .request(
            reqwest::Method::POST,
            "/api/tasks",
            Some(json!({"type": "nobody_runs_this", "data": {"messages": [{"role": "user", "content": "x"}], "provider": "none"}})),
        )
        .await;
    let live = v["task_id"].as_str().expect("id").to_owned();
    let pending = list("?status=pending").await;
    assert_eq!(pending["tasks"][0]["task_id"], live.as_str(), "{pending}");
    // Bad parameters are named.
    for q in ["?status=done", "?limit=0", "?before=x"] {
        let (s, v) = c
            .request(reqwest::Method::GET, &format!("/api/tasks{q}"), None)
            .await;
        assert_eq!(s, 400, "{q}: {v}");
        assert!(v["error"]["param"].is_string(), "{v}");
    }
}
