//! The HTTP layer without sockets: `router` over a [`Cluster`] on the
//! in-memory store, driven with `tower::ServiceExt::oneshot`. The socket
//! tests in `tests/it/http_api.rs` cover the same API end to end.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::router;
use crate::config::OrchestratorConfig;
use crate::node::Cluster;
use crate::store::MemBackend;

/// A cluster with no worker and no socket, and its router.
struct App {
    router: Router,
    cluster: Arc<Cluster>,
    backend: Arc<MemBackend>,
    key: String,
    stop: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Drop for App {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl App {
    async fn new(tune: impl FnOnce(&mut OrchestratorConfig)) -> App {
        crate::ensure_crypto_provider();
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cfg = OrchestratorConfig::local(dir.path().to_owned());
        tune(&mut cfg);
        let ca = d8_certs::ClusterCa::generate().expect("ca");
        let backend = Arc::new(MemBackend::default());
        let stop = CancellationToken::new();
        let (cluster, _actor) =
            Cluster::open(cfg, ca, Default::default(), backend.clone(), stop.clone())
                .await
                .expect("open");
        App {
            router: router(cluster.clone()),
            key: cluster.api_key().to_owned(),
            cluster,
            backend,
            stop,
            _dir: dir,
        }
    }

    /// One request with the API key; the status and the JSON body.
    async fn call(&self, method: &str, path: &str, body: Option<&str>) -> (StatusCode, Value) {
        self.call_with(method, path, Some(&self.key.clone()), body)
            .await
    }

    async fn call_with(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(k) = key {
            req = req.header("authorization", format!("Bearer {k}"));
        }
        let req = req
            .body(Body::from(body.unwrap_or_default().to_owned()))
            .expect("request");
        let resp = self.router.clone().oneshot(req).await.expect("infallible");
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .expect("body");
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("<no error code>")
}

fn keys(v: &Value) -> Vec<&str> {
    let mut k: Vec<&str> = v
        .as_object()
        .map(|o| o.keys().map(String::as_str).collect())
        .unwrap_or_default();
    k.sort_unstable();
    k
}

const CHAT: &str =
    r#"{"type": "agent_action", "data": {"messages": [{"role": "user", "content": "hi"}]}}"#;

#[tokio::test]
async fn the_api_key_guards_api_but_not_health() {
    let app = App::new(|_| {}).await;
    let (s, v) = app.call_with("GET", "/api/workers/stats", None, None).await;
    assert_eq!((s, code(&v)), (StatusCode::UNAUTHORIZED, "unauthorized"));
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("Bearer"))
    );
    let (s, v) = app
        .call_with("GET", "/api/workers/stats", Some("d8k_wrong"), None)
        .await;
    assert_eq!((s, code(&v)), (StatusCode::UNAUTHORIZED, "unauthorized"));
    assert!(
        !v.to_string().contains(&app.key),
        "the key never appears in an error"
    );
    let (s, v) = app.call_with("GET", "/health", None, None).await;
    assert_eq!((s, v["status"].as_str()), (StatusCode::OK, Some("ok")));
    assert_eq!(
        app.call("GET", "/api/workers/stats", None).await.0,
        StatusCode::OK
    );

    let open = App::new(|c| c.require_api_key = false).await;
    let (s, _) = open
        .call_with("GET", "/api/workers/stats", None, None)
        .await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test]
async fn tasks_keep_the_original_shapes() {
    let app = App::new(|_| {}).await;
    let (s, v) = app.call("POST", "/api/tasks", Some(CHAT)).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(keys(&v), ["status", "task_id"]);
    assert_eq!(v["status"], "pending");
    let id = v["task_id"].as_str().expect("string id").to_owned();

    let (s, t) = app.call("GET", &format!("/api/tasks/{id}"), None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        keys(&t),
        [
            "agent_id",
            "attempts",
            "completed_at",
            "created_at",
            "error",
            "priority",
            "result",
            "status",
            "task_id",
            "type",
            "worker_id"
        ]
    );
    assert_eq!(
        (t["status"].as_str(), t["type"].as_str()),
        (Some("pending"), Some("agent_action"))
    );
    assert_eq!(t["priority"], 5);
    let created = t["created_at"].as_str().expect("created_at");
    assert!(
        created.len() == 24 && created.ends_with('Z') && created.as_bytes()[10] == b'T',
        "{created}"
    );

    // With no worker the task stays pending: a short wait answers its state.
    let (s, t) = app
        .call("GET", &format!("/api/tasks/{id}?wait=0.05"), None)
        .await;
    assert_eq!((s, t["status"].as_str()), (StatusCode::OK, Some("pending")));

    let (s, v) = app.call("DELETE", &format!("/api/tasks/{id}"), None).await;
    assert_eq!(
        (s, v),
        (
            StatusCode::OK,
            json!({"task_id": id, "status": "cancelled"})
        )
    );
    let (s, v) = app.call("DELETE", &format!("/api/tasks/{id}"), None).await;
    assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "already_finished"));
    assert_eq!(
        v["error"]["message"],
        format!("task {id} already cancelled")
    );
    let (_, t) = app.call("GET", &format!("/api/tasks/{id}"), None).await;
    assert_eq!(t["status"], "cancelled");
    assert!(t["completed_at"].is_string());

    let (s, v) = app
        .call(
            "POST",
            "/api/tasks/batch",
            Some(&format!("[{CHAT}, {CHAT}]")),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(v.as_array().map(Vec::len), Some(2), "{v}");

    let (s, v) = app.call("GET", "/api/workers/stats", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(keys(&v), ["performance", "tasks", "workers"]);
    assert_eq!(
        keys(&v["tasks"]),
        ["assigned", "completed", "failed", "pending"]
    );
    assert_eq!(v["tasks"]["pending"], 2);
    let (_, v) = app
        .call("GET", "/api/workers/stats?include=cooldowns", None)
        .await;
    assert_eq!(v["cooldowns"], json!([]));
    // Waiting tasks by priority (both batch tasks are priority 5, the
    // original project's default).
    let (_, v) = app
        .call("GET", "/api/workers/stats?include=queue", None)
        .await;
    assert_eq!(
        v["queue"],
        json!({"pending_by_priority": {"5": 2}, "requeued": 0})
    );
}

#[tokio::test]
async fn bad_input_is_a_4xx_and_stores_nothing() {
    let app = App::new(|c| c.max_body_bytes = 2_048).await;
    let big = format!(
        r#"{{"type":"t","data":{{"messages":[{{"role":"user","content":"{}"}}]}}}}"#,
        "x".repeat(4_000)
    );
    for (method, path, body, status, want) in [
        ("POST", "/api/tasks", "{not json", 400, "invalid_json"),
        ("POST", "/api/tasks", "", 400, "invalid_json"),
        (
            "POST",
            "/api/tasks",
            r#"{"type": "agent_action"}"#,
            400,
            "invalid_request",
        ),
        (
            "POST",
            "/api/tasks",
            r#"{"type": "t", "priority": 0, "data": {"messages": [{"role": "user", "content": "x"}]}}"#,
            400,
            "invalid_priority",
        ),
        (
            "POST",
            "/api/tasks",
            r#"{"type": "t", "data": {"messages": [{"role": "boss", "content": "x"}]}}"#,
            400,
            "invalid_messages",
        ),
        (
            "POST",
            "/api/tasks",
            r#"{"type": "t", "data": {"messages": [{"role": "user", "content": "x"}], "max_tier": "cheap"}}"#,
            400,
            "invalid_max_tier",
        ),
        ("POST", "/api/tasks", big.as_str(), 413, "body_too_large"),
        ("POST", "/api/tasks/batch", "[]", 400, "invalid_batch"),
        // Not UTF-8 once percent-decoded: before, axum's text/plain 400.
        ("GET", "/api/tasks/%FF%FE", "", 400, "invalid_path"),
        ("DELETE", "/api/workers/%C3%28", "", 400, "invalid_path"),
        ("GET", "/api/agents/%80", "", 400, "invalid_path"),
        (
            "POST",
            "/api/agents/a1/act",
            r#"{"action_type": " "}"#,
            400,
            "invalid_action_type",
        ),
        (
            "PUT",
            "/api/agents/a1",
            r#"{"system_prompt": "p", "temperature": 3}"#,
            400,
            "invalid_temperature",
        ),
        (
            "POST",
            "/api/tokens",
            r#"{"max_uses": 0}"#,
            400,
            "invalid_token_limits",
        ),
        (
            "GET",
            "/api/workers/stats?include=everything",
            "",
            400,
            "invalid_include",
        ),
        ("GET", "/api/tasks/1?wait=soon", "", 400, "invalid_wait"),
        ("GET", "/api/tasks/not-a-number", "", 404, "not_found"),
        ("GET", "/api/tasks/424242", "", 404, "not_found"),
        ("DELETE", "/api/tasks/424242", "", 404, "not_found"),
        ("GET", "/api/agents/ghost", "", 404, "not_found"),
        ("DELETE", "/api/workers/ghost", "", 404, "not_found"),
        ("DELETE", "/api/tokens/zzzz", "", 404, "not_found"),
        ("GET", "/api/nope", "", 404, "not_found"),
        ("PATCH", "/api/tasks", "", 405, "method_not_allowed"),
    ] {
        let (s, v) = app.call(method, path, Some(body)).await;
        assert_eq!(
            (s.as_u16(), code(&v)),
            (status, want),
            "{method} {path}: {v}"
        );
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{v}"
        );
    }
    let (_, v) = app.call("GET", "/api/workers/stats", None).await;
    assert_eq!(v["tasks"]["pending"], 0, "nothing was accepted");
}

#[tokio::test]
async fn agents_round_trip_and_act() {
    let app = App::new(|_| {}).await;
    let (s, v) = app
        .call(
            "PUT",
            "/api/agents/writer",
            Some(r#"{"system_prompt": "You write.", "temperature": 0.5}"#),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let want = json!({"agent_id": "writer", "system_prompt": "You write.", "model": null, "temperature": 0.5, "task_type": "agent_action", "cache_ttl_secs": null});
    assert_eq!(v, want);
    assert_eq!(
        app.call("GET", "/api/agents/writer", None).await,
        (StatusCode::OK, want)
    );
    let (s, v) = app
        .call(
            "POST",
            "/api/agents/writer/act",
            Some(r#"{"action_type": "draft", "input_data": {"topic": "x"}}"#),
        )
        .await;
    assert_eq!(
        (s, v["status"].as_str()),
        (StatusCode::CREATED, Some("pending"))
    );
    // The agent is durable: it is in the store, not only in memory.
    let stored = crate::store::Backend::load(app.backend.as_ref()).expect("load");
    assert_eq!(stored.agents["writer"].system_prompt, "You write.");
}

#[tokio::test]
async fn tokens_create_list_revoke_and_rotate() {
    let app = App::new(|_| {}).await;
    let (s, v) = app
        .call(
            "POST",
            "/api/tokens",
            Some(r#"{"ttl_secs": 60, "max_uses": 2}"#),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(keys(&v), ["expires_at", "id", "max_uses", "token"]);
    let id = v["id"].as_str().expect("id").to_owned();
    assert!(v["token"].as_str().is_some_and(|t| t.starts_with("D8-1-")));
    // An empty body is a token without limits.
    assert_eq!(
        app.call("POST", "/api/tokens", None).await.0,
        StatusCode::CREATED
    );
    let (_, list) = app.call("GET", "/api/tokens", None).await;
    let list = list.as_array().expect("list").clone();
    assert_eq!(list.len(), 3, "the default token and two extra: {list:?}");
    assert!(
        !serde_json::to_string(&list)
            .expect("json")
            .contains("D8-1-"),
        "no secret is listed"
    );
    let (s, v) = app.call("DELETE", &format!("/api/tokens/{id}"), None).await;
    assert_eq!((s, v), (StatusCode::OK, json!({"id": id, "revoked": true})));

    let before = app.cluster.join_token();
    let (s, v) = app.call("POST", "/api/tokens/rotate", None).await;
    assert_eq!(s, StatusCode::OK);
    let new = v["token"].as_str().expect("token");
    assert_ne!(new, before.to_string());
    assert_eq!(app.cluster.join_token().to_string(), new);
    let file = std::fs::read_to_string(
        app.cluster
            .config()
            .data_dir
            .join(crate::node::files::JOIN_TOKEN),
    )
    .expect("join-token file");
    assert_eq!(file.trim(), new);
}

#[tokio::test]
async fn a_failing_store_is_a_503_and_nothing_stays_queued() {
    let app = App::new(|_| {}).await;
    app.backend.set_failing(true);
    for (method, path, body) in [
        ("POST", "/api/tasks", CHAT),
        ("PUT", "/api/agents/a", r#"{"system_prompt": "p"}"#),
        ("POST", "/api/tokens", ""),
        ("POST", "/api/tokens/rotate", ""),
    ] {
        let (s, v) = app.call(method, path, Some(body)).await;
        assert_eq!(
            (s, code(&v)),
            (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            "{path}: {v}"
        );
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("could not store")),
            "{v}"
        );
    }
    app.backend.set_failing(false);
    let (_, v) = app.call("GET", "/api/workers/stats", None).await;
    assert_eq!(
        (
            v["tasks"]["pending"].as_u64(),
            v["tasks"]["assigned"].as_u64()
        ),
        (Some(0), Some(0))
    );
    assert_eq!(
        app.call("GET", "/api/agents/a", None).await.0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn no_workers_list_empty() {
    let app = App::new(|_| {}).await;
    assert_eq!(
        app.call("GET", "/api/workers", None).await,
        (StatusCode::OK, json!([]))
    );
}

#[tokio::test]
async fn a_full_queue_answers_503_with_retry_after_and_accepts_nothing_of_a_batch() {
    let app = App::new(|c| c.max_queued = 3).await;
    for _ in 0..2 {
        assert_eq!(
            app.call("POST", "/api/tasks", Some(CHAT)).await.0,
            StatusCode::CREATED
        );
    }
    // A batch of two does not fit in the one place left: refused whole.
    let req = Request::builder()
        .method("POST")
        .uri("/api/tasks/batch")
        .header("authorization", format!("Bearer {}", app.key))
        .body(Body::from(format!("[{CHAT}, {CHAT}]")))
        .expect("request");
    let resp = app.router.clone().oneshot(req).await.expect("infallible");
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        resp.headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .expect("body");
    let v: Value = serde_json::from_slice(&bytes).expect("json");
    assert_eq!(code(&v), "queue_full", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("--max-queued")),
        "{v}"
    );
    let (_, stats) = app.call("GET", "/api/workers/stats", None).await;
    assert_eq!(
        stats["tasks"]["pending"], 2,
        "nothing of the batch was accepted"
    );
    // One more fits; then the queue is full for single tasks too.
    assert_eq!(
        app.call("POST", "/api/tasks", Some(CHAT)).await.0,
        StatusCode::CREATED
    );
    let (s, v) = app.call("POST", "/api/tasks", Some(CHAT)).await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::SERVICE_UNAVAILABLE, "queue_full")
    );
    // A finished task (here: cancelled) frees its place.
    let (s, _) = app.call("DELETE", "/api/tasks/1", None).await;
    assert_eq!(s, StatusCode::OK);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let (s, _) = app.call("POST", "/api/tasks", Some(CHAT)).await;
        if s == StatusCode::CREATED {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the place never came back"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn agent_definitions_are_bounded_in_size_and_number() {
    let app = App::new(|_| {}).await;
    let big = json!({"system_prompt": "p".repeat(super::body::MAX_SYSTEM_PROMPT + 1)}).to_string();
    let (s, v) = app.call("PUT", "/api/agents/a", Some(&big)).await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::BAD_REQUEST, "invalid_system_prompt")
    );
    let long_model = json!({"system_prompt": "p", "model": "m".repeat(129)}).to_string();
    let (s, v) = app.call("PUT", "/api/agents/a", Some(&long_model)).await;
    assert_eq!((s, code(&v)), (StatusCode::BAD_REQUEST, "invalid_model"));
    let ok = json!({"system_prompt": "p"}).to_string();
    for i in 0..crate::node::cluster::MAX_AGENTS {
        let (s, v) = app
            .call("PUT", &format!("/api/agents/a{i}"), Some(&ok))
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
    }
    let (s, v) = app.call("PUT", "/api/agents/one-more", Some(&ok)).await;
    assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "too_many_agents"));
    // Replacing one is still allowed.
    let (s, _) = app.call("PUT", "/api/agents/a7", Some(&ok)).await;
    assert_eq!(s, StatusCode::OK);
}
