//! Tokens stream provider → worker → orchestrator → HTTP subscriber (SSE).

use std::sync::Arc;
use std::time::Duration;

use d8::providers::{BoxFuture, ChunkSink, Provider, ProviderError, ProviderSet};
use d8::task::{ChatRequest, TaskOutput};
use reqwest::Method;
use serde_json::{Value, json};
use tokio::sync::Semaphore;

use super::harness::TestCluster;

/// Streams "Hel", waits for the test to open `gate`, streams "lo", answers.
struct Drip {
    started: Arc<Semaphore>,
    gate: Arc<Semaphore>,
}

impl Provider for Drip {
    fn kind(&self) -> &str {
        "drip"
    }
    fn models(&self) -> Vec<String> {
        vec!["drip".into()]
    }
    fn chat<'a>(
        &'a self,
        _req: &'a ChatRequest,
        sink: ChunkSink,
    ) -> BoxFuture<'a, Result<TaskOutput, ProviderError>> {
        Box::pin(async move {
            sink.push("Hel".into()).await;
            self.started.add_permits(1);
            let _ = self.gate.acquire().await.map(|p| p.forget());
            sink.push("lo".into()).await;
            Ok(TaskOutput::text("Hello", "drip", "drip"))
        })
    }
}

/// Reads SSE events (`event`, parsed `data`) from a streaming response.
pub(super) struct Events {
    pub(super) resp: reqwest::Response,
    buf: String,
}

impl Events {
    /// Reads `resp`'s body as events.
    pub(super) fn new(resp: reqwest::Response) -> Events {
        Events {
            resp,
            buf: String::new(),
        }
    }

    /// The next event with data (keep-alive comments are skipped); `None`
    /// when the stream ends; panics after 10 s without one.
    pub(super) async fn next(&mut self) -> Option<(String, Value)> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut event = String::from("message");
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(e) = line.strip_prefix("event:") {
                        event = e.trim().to_owned();
                    } else if let Some(d) = line.strip_prefix("data:") {
                        data.push_str(d.trim_start());
                    }
                }
                if data.is_empty() {
                    continue; // keep-alive comment
                }
                return Some((event, serde_json::from_str(&data).expect("json data")));
            }
            let chunk = tokio::time::timeout(Duration::from_secs(10), self.resp.chunk())
                .await
                .expect("an event within 10 s")
                .expect("body")?;
            self.buf
                .push_str(std::str::from_utf8(&chunk).expect("utf-8"));
        }
    }
}

async fn subscribe(c: &TestCluster, id: &str) -> (u16, Events) {
    let resp = c
        .http
        .get(format!("{}/api/tasks/{id}/stream", c.base))
        .bearer_auth(&c.key)
        .send()
        .await
        .expect("http");
    let status = resp.status().as_u16();
    (
        status,
        Events {
            resp,
            buf: String::new(),
        },
    )
}

#[tokio::test]
async fn tokens_reach_an_sse_subscriber_in_order_then_done() {
    let c = TestCluster::start().await;
    let started = Arc::new(Semaphore::new(0));
    let gate = Arc::new(Semaphore::new(0));
    let mut cfg = c.worker_config("streamer", 0, 1);
    cfg.providers = ProviderSet::new(vec![Arc::new(Drip {
        started: started.clone(),
        gate: gate.clone(),
    })]);
    let _w = c.spawn_worker(cfg);
    c.wait_until(|s| s["workers"]["online"] == 1, "online")
        .await;
    let body = json!({
        "type": "agent_action",
        "data": {"messages": [{"role": "user", "content": "greet"}], "stream": true}
    });
    let (status, v) = c.request(Method::POST, "/api/tasks", Some(body)).await;
    assert_eq!(status, 201, "{v}");
    let id = v["task_id"].as_str().expect("id").to_owned();
    // The first chunk is out before anyone subscribes.
    tokio::time::timeout(Duration::from_secs(10), started.acquire())
        .await
        .expect("provider started")
        .expect("semaphore")
        .forget();
    let (status, mut events) = subscribe(&c, &id).await;
    assert_eq!(status, 200);
    assert_eq!(
        events
            .resp
            .headers()
            .get("content-type")
            .and_then(|h| h.to_str().ok()),
        Some("text/event-stream")
    );
    // "Hel" is on its way through the worker; the subscriber gets it either
    // as the text so far or as the next chunk, then the rest.
    let mut text = String::new();
    gate.add_permits(1);
    let done = loop {
        let (event, data) = events.next().await.expect("event");
        match event.as_str() {
            "chunk" => {
                assert_eq!(data["attempt"], 1, "{data}");
                text.push_str(data["text"].as_str().expect("text"));
            }
            "done" => break data,
            other => panic!("unexpected event {other}: {data}"),
        }
    };
    assert_eq!(text, "Hello");
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["result"]["content"], "Hello");
    assert!(events.next().await.is_none(), "the stream ends after done");
    // Subscribing to a finished task answers `done` at once; unknown is 404.
    let (_, mut again) = subscribe(&c, &id).await;
    let (event, data) = again.next().await.expect("done");
    assert_eq!(
        (event.as_str(), &data["status"]),
        ("done", &json!("completed"))
    );
    let (status, _) = subscribe(&c, "999999").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn a_task_submitted_without_stream_still_pushes_done() {
    let c = TestCluster::start().await;
    let _w = c.worker("w", 300, 1).await;
    let id = c.submit("quiet", 5).await;
    let (status, mut events) = subscribe(&c, &id).await;
    assert_eq!(status, 200);
    let (event, data) = events.next().await.expect("event");
    assert_eq!(event, "done", "{data}");
    assert_eq!(data["result"]["content"], "quiet");
}

/// `GET /api/events`, checked to answer 200.
pub(super) async fn open_events(c: &TestCluster) -> Events {
    let resp = c
        .http
        .get(format!("{}/api/events", c.base))
        .bearer_auth(&c.key)
        .send()
        .await
        .expect("http");
    assert_eq!(resp.status().as_u16(), 200);
    Events {
        resp,
        buf: String::new(),
    }
}

/// The next event named `name`, skipping others.
async fn next_named(events: &mut Events, name: &str) -> Value {
    loop {
        let (event, data) = events.next().await.expect("stream open");
        if event == name {
            return data;
        }
    }
}

#[tokio::test]
async fn the_event_stream_starts_with_a_snapshot_then_follows_changes() {
    let c = TestCluster::start().await;
    let mut events = open_events(&c).await;
    let (event, snap) = events.next().await.expect("snapshot");
    assert_eq!(event, "snapshot");
    assert_eq!(snap["workers"], json!([]));
    assert_eq!(snap["stats"]["workers"]["online"], 0);
    assert!(
        snap["stats"]["cache"].is_object() && snap["tasks"].is_array(),
        "{snap}"
    );
    // A worker joins.
    let _w = c.worker("w1", 0, 2).await;
    let w = next_named(&mut events, "worker").await;
    assert_eq!(
        (w["worker_id"].as_str(), w["state"].as_str()),
        (Some("w1"), Some("connected"))
    );
    // A task goes through its states, then the stats catch up.
    let id = c.submit("watch me", 5).await;
    let mut seen = Vec::new();
    while seen.last().map(String::as_str) != Some("completed") {
        let t = next_named(&mut events, "task").await;
        assert_eq!(t["task_id"], id.as_str(), "{t}");
        seen.push(t["status"].as_str().expect("status").to_owned());
    }
    assert_eq!(seen, ["pending", "assigned", "completed"]);
    let stats = next_named(&mut events, "stats").await;
    assert_eq!(stats["tasks"]["completed"], 1, "{stats}");
}

#[tokio::test]
async fn a_client_that_falls_behind_gets_a_fresh_snapshot() {
    let c = TestCluster::start().await;
    let _w = c.worker("w1", 0, 64).await;
    let mut events = open_events(&c).await;
    assert_eq!(events.next().await.expect("first").0, "snapshot");
    // Far more changes than the channel holds while this client reads none.
    let batch: Vec<Value> = (0..3_000)
        .map(|i| super::harness::chat(&format!("t{i}"), 5))
        .collect();
    for chunk in batch.chunks(1_000) {
        let (s, v) = c
            .request(
                Method::POST,
                "/api/tasks/batch",
                Some(Value::Array(chunk.to_vec())),
            )
            .await;
        assert_eq!(s, 201, "{v}");
    }
    c.wait_until(|s| s["tasks"]["completed"] == 3_000, "all done")
        .await;
    // The client reads on: somewhere it was told to start again.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (event, data) = events.next().await.expect("stream open");
        if event == "snapshot" {
            assert!(
                data["stats"]["tasks"].is_object() && data["tasks"].is_array(),
                "{data}"
            );
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no new snapshot");
    }
}

#[tokio::test]
async fn a_provider_that_starts_resting_is_announced_with_its_reason() {
    use super::fakes::{FakeOpenAi, Mode};
    let c = TestCluster::start().await;
    let vendor = FakeOpenAi::start(Mode::RateLimited {
        retry_after_secs: 30,
    })
    .await;
    let _w = c.vendor_worker("limited", "groq", "gsk_test_rests_0123456789", &vendor.base);
    c.wait_until(|s| s["workers"]["online"] == 1, "online")
        .await;
    let mut events = open_events(&c).await;
    assert_eq!(events.next().await.expect("first").0, "snapshot");
    let _id = c.submit("answer me", 5).await;
    let r = next_named(&mut events, "rests").await;
    assert_eq!(r["worker_id"], "limited", "{r}");
    let rest = &r["rests"][0];
    assert_eq!(rest["provider"], "groq", "{r}");
    assert_eq!(rest["reason"], "rate_limited", "{r}");
    let left = rest["remaining_ms"].as_u64().expect("ms");
    assert!(left > 20_000 && left <= 30_000, "{r}");
}
