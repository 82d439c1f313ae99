//! Cluster behaviour with in-process orchestrator and workers.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

use super::harness::{TestCluster, chat};

#[tokio::test]
async fn happy_path_agent_action() {
    let c = TestCluster::start().await;
    let _w = c.worker("pc-1", 0, 4).await;
    let (s, v) = c
        .request(
            Method::POST,
            "/api/agents/agent123/act",
            Some(
                json!({"action_type": "content_generation", "input_data": {"topic": "AI trends"}}),
            ),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["status"], "pending");
    let id = v["task_id"].as_str().expect("id");
    let t = c.wait_task(id, 10).await;
    assert_eq!(t["status"], "completed", "{t}");
    assert_eq!(t["worker_id"], "pc-1");
    assert_eq!(t["attempts"], 1);
    let content = t["result"]["content"].as_str().expect("content");
    assert!(
        content.contains("content_generation") && content.contains("AI trends"),
        "{content}"
    );
    assert!(t["created_at"].as_str().is_some_and(|s| s.ends_with('Z')));
    let stats = c.stats().await;
    assert_eq!(stats["tasks"]["completed"], 1);
    assert_eq!(stats["performance"]["success_rate"], 100.0);
    assert_eq!(stats["workers"]["by_type"]["echo"], 1);
}

#[tokio::test]
async fn agent_definition_shapes_the_prompt() {
    let c = TestCluster::start().await;
    let (s, v) = c
        .request(
            Method::PUT,
            "/api/agents/writer",
            Some(json!({"system_prompt": "You write haiku.", "task_type": "code_generation"})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = c.request(Method::GET, "/api/agents/writer", None).await;
    assert_eq!(
        (s, v["system_prompt"].as_str()),
        (200, Some("You write haiku."))
    );
    // code_generation is routed only to heavy workers: an echo worker never gets it.
    let _w = c.worker("light", 0, 4).await;
    let (_, v) = c
        .request(
            Method::POST,
            "/api/agents/writer/act",
            Some(json!({"action_type": "write"})),
        )
        .await;
    let id = v["task_id"].as_str().expect("id").to_owned();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, t) = c
        .request(Method::GET, &format!("/api/tasks/{id}"), None)
        .await;
    assert_eq!(t["status"], "pending", "{t}");
    assert_eq!(t["type"], "code_generation");
    // A worker of an allowed type picks it up.
    let mut cfg = c.worker_config("gpu", 0, 1);
    cfg.worker_type = Some("deepseek_gpu".into());
    let _gpu = c.spawn_worker(cfg);
    let t = c.wait_task(&id, 10).await;
    assert_eq!(
        (t["status"].as_str(), t["worker_id"].as_str()),
        (Some("completed"), Some("gpu"))
    );
}

#[tokio::test]
async fn two_workers_many_tasks_all_complete_once() {
    let c = TestCluster::start().await;
    let _a = c.worker("a", 1, 8).await;
    let _b = c.worker("b", 1, 8).await;
    let n = 400;
    let batch: Vec<Value> = (0..n).map(|i| chat(&format!("task {i}"), 5)).collect();
    let (s, ids) = c
        .request(Method::POST, "/api/tasks/batch", Some(Value::Array(batch)))
        .await;
    assert_eq!(s, 201, "{ids}");
    let ids: Vec<String> = serde_json::from_value(ids).expect("ids");
    assert_eq!(ids.len(), n);
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), n, "ids unique");
    let mut per_worker: HashMap<String, usize> = HashMap::new();
    for (i, id) in ids.iter().enumerate() {
        let t = c.wait_task(id, 30).await;
        assert_eq!(t["status"], "completed", "{t}");
        assert_eq!(t["result"]["content"], format!("task {i}"));
        *per_worker
            .entry(t["worker_id"].as_str().expect("worker").to_owned())
            .or_default() += 1;
    }
    assert_eq!(per_worker.len(), 2, "both workers used: {per_worker:?}");
    assert!(
        per_worker.values().all(|&k| k > n / 5),
        "load spread: {per_worker:?}"
    );
    let stats = c.stats().await;
    assert_eq!(stats["tasks"]["completed"], n as u64);
    assert_eq!(stats["tasks"]["pending"], 0);
}

#[tokio::test]
async fn priorities_are_served_most_urgent_first() {
    let c = TestCluster::start().await;
    let _w = c.worker("solo", 150, 1).await;
    let blocker = c.submit("blocker", 5).await;
    c.wait_until(|s| s["tasks"]["assigned"] == 1, "blocker running")
        .await;
    let mut ids = Vec::new();
    for p in [1u8, 10, 5, 10, 3] {
        ids.push((p, c.submit(&format!("p{p}"), p).await));
    }
    let mut done = Vec::new();
    for (p, id) in &ids {
        let t = c.wait_task(id, 20).await;
        assert_eq!(t["status"], "completed");
        done.push((
            t["completed_at"].as_str().expect("time").to_owned(),
            *p,
            id.clone(),
        ));
    }
    c.wait_task(&blocker, 5).await;
    done.sort();
    let order: Vec<u8> = done.iter().map(|d| d.1).collect();
    assert_eq!(order, vec![10, 10, 5, 3, 1]);
    // FIFO within a priority.
    let tens: Vec<&String> = done.iter().filter(|d| d.1 == 10).map(|d| &d.2).collect();
    assert_eq!(tens, vec![&ids[1].1, &ids[3].1]);
}

#[tokio::test]
async fn lost_worker_task_completes_on_the_other() {
    let c = TestCluster::start().await;
    let slow = c.worker("slow", 60_000, 1).await;
    let id = c.submit("survive me", 5).await;
    c.wait_until(|s| s["tasks"]["assigned"] == 1, "task running on slow")
        .await;
    let _fast = c.worker("fast", 0, 1).await;
    // The slow worker vanishes mid-task.
    slow.handle.abort();
    let t0 = Instant::now();
    let t = c.wait_task(&id, 10).await;
    assert_eq!(t["status"], "completed", "{t}");
    assert_eq!(t["worker_id"], "fast");
    assert_eq!(t["attempts"], 2);
    eprintln!("re-run on the other worker after {:?}", t0.elapsed());
}

#[tokio::test]
async fn drain_finishes_in_flight_work_then_leaves() {
    let c = TestCluster::start().await;
    let w = c.worker("drainer", 400, 2).await;
    let id = c.submit("finish me", 5).await;
    c.wait_until(|s| s["tasks"]["assigned"] == 1, "running")
        .await;
    let drained = tokio::spawn(w.drain());
    // While draining it takes no new work.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let queued = c.submit("not for the drainer", 5).await;
    drained.await.expect("join").expect("clean exit");
    let t = c.wait_task(&id, 5).await;
    assert_eq!(
        (t["status"].as_str(), t["worker_id"].as_str()),
        (Some("completed"), Some("drainer"))
    );
    let (_, q) = c
        .request(Method::GET, &format!("/api/tasks/{queued}"), None)
        .await;
    assert_eq!(q["status"], "pending", "{q}");
    c.wait_until(|s| s["workers"]["total"] == 0, "drainer gone")
        .await;
}

#[tokio::test]
async fn cancel_pending_and_running_tasks() {
    let c = TestCluster::start().await;
    let _w = c.worker("w", 60_000, 1).await;
    let running = c.submit("long", 5).await;
    c.wait_until(|s| s["tasks"]["assigned"] == 1, "running")
        .await;
    let pending = c.submit("queued", 5).await;
    for id in [&pending, &running] {
        let (s, v) = c
            .request(Method::DELETE, &format!("/api/tasks/{id}"), None)
            .await;
        assert_eq!((s, v["status"].as_str()), (200, Some("cancelled")), "{v}");
        let (_, t) = c
            .request(Method::GET, &format!("/api/tasks/{id}"), None)
            .await;
        assert_eq!(t["status"], "cancelled");
    }
    let (s, v) = c
        .request(Method::DELETE, &format!("/api/tasks/{running}"), None)
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("already_finished"))
    );
    // The worker's slot is free again: a new task runs there.
    c.wait_until(
        |s| s["tasks"]["assigned"] == 0 && s["workers"]["busy"] == 0,
        "slot freed",
    )
    .await;
}

#[tokio::test]
async fn long_poll_returns_as_soon_as_the_result_exists() {
    let c = TestCluster::start().await;
    let _w = c.worker("w", 300, 1).await;
    let id = c.submit("hello", 5).await;
    let t0 = Instant::now();
    let (s, t) = c
        .request(Method::GET, &format!("/api/tasks/{id}?wait=10"), None)
        .await;
    let took = t0.elapsed();
    assert_eq!((s, t["status"].as_str()), (200, Some("completed")));
    assert!(took < Duration::from_secs(5), "long poll took {took:?}");
    // A long poll on a task that stays pending returns its current state at the timeout.
    let _ = c.submit("a", 5).await;
    let stuck = c.submit("b", 5).await;
    let (_, t) = c
        .request(Method::GET, &format!("/api/tasks/{stuck}?wait=0.2"), None)
        .await;
    assert_eq!(t["status"], "pending");
}

#[tokio::test]
async fn restart_keeps_results_tokens_and_workers() {
    let mut c = TestCluster::start().await;
    let w = c.worker("keeper", 0, 2).await;
    let id = c.submit("remember me", 5).await;
    c.wait_task(&id, 10).await;
    let token = c.orch().join_token().to_string();
    let key = c.key.clone();
    w.drain().await.expect("drain");
    let dir = c.dir.path().join("orchestrator");
    c.orch.take().expect("running").shutdown().await;
    let orch = d8::node::orchestrator::Orchestrator::start(super::harness::local_config(&dir))
        .await
        .expect("restart");
    assert_eq!(
        orch.join_token().to_string(),
        token,
        "standing token survives a restart"
    );
    assert_eq!(orch.api_key(), key);
    c.base = format!("http://{}", orch.http_addr());
    c.orch = Some(orch);
    let t = c.wait_task(&id, 5).await;
    assert_eq!(t["result"]["content"], "remember me");
    assert_eq!(c.stats().await["tasks"]["completed"], 1);
    // The enrolled worker reconnects with its certificate, no token needed.
    let mut cfg = c.worker_config("keeper", 0, 2);
    cfg.token = None;
    let _w = c.spawn_worker(cfg);
    c.wait_until(|s| s["workers"]["online"] == 1, "worker back")
        .await;
    let (_, list) = c.request(Method::GET, "/api/workers", None).await;
    assert_eq!(list[0]["worker_id"], "keeper");
    assert_eq!(list[0]["status"], "online");
}

#[tokio::test]
async fn results_expire_after_the_retention() {
    let c = TestCluster::start_with(|cfg| cfg.result_retention = Duration::from_millis(600)).await;
    let _w = c.worker("w", 0, 1).await;
    let id = c.submit("short-lived", 5).await;
    assert_eq!(c.wait_task(&id, 10).await["status"], "completed");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (s, _) = c
            .request(Method::GET, &format!("/api/tasks/{id}"), None)
            .await;
        if s == 404 {
            break;
        }
        assert!(Instant::now() < deadline, "result still there after 10 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Totals are kept; only the stored result went.
    assert_eq!(c.stats().await["tasks"]["completed"], 1);
}

#[tokio::test]
async fn worker_started_before_the_orchestrator_enrolls_when_it_comes_up() {
    super::harness::init_tracing();
    let dir = tempfile::tempdir().expect("tempdir");
    let port = super::harness::free_port();
    let mut cfg = super::harness::local_config(&dir.path().join("o"));
    cfg.quic_addr = ([127, 0, 0, 1], port).into();
    cfg.http_addr = ([127, 0, 0, 1], port).into();
    // First start only to create the cluster identity and its token.
    let orch = d8::node::orchestrator::Orchestrator::start(cfg.clone())
        .await
        .expect("start");
    let token = orch.join_token();
    orch.shutdown().await;

    let providers: Vec<std::sync::Arc<dyn d8::providers::Provider>> =
        vec![std::sync::Arc::new(d8::providers::echo::Echo::default())];
    let mut wcfg = d8::config::WorkerConfig::local(
        dir.path().join("w"),
        cfg.quic_addr,
        d8::providers::ProviderSet::new(providers),
    );
    wcfg.token = Some(token);
    let stop = tokio_util::sync::CancellationToken::new();
    let worker = tokio::spawn(d8::node::worker::run(wcfg, stop.clone()));
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        !worker.is_finished(),
        "the worker keeps trying while the orchestrator is down"
    );

    let orch = d8::node::orchestrator::Orchestrator::start(cfg)
        .await
        .expect("restart");
    let mut c = TestCluster::adopt(orch, dir);
    c.wait_until(|s| s["workers"]["online"] == 1, "the worker to join")
        .await;
    stop.cancel();
    worker.await.expect("join").expect("clean exit");
    c.orch.take().expect("running").shutdown().await;
}

#[tokio::test]
async fn two_processes_with_one_identity_do_not_evict_each_other_forever() {
    let c = TestCluster::start().await;
    let first = c.worker("twin", 0, 1).await;
    let mut cfg = c.worker_config("twin", 0, 1);
    cfg.token = None;
    // A copy of its data dir (a cloned disk or VM): the same identity in
    // another dir. (The same dir twice is refused before connecting: see
    // a_second_worker_on_the_same_data_dir_is_refused_….)
    cfg.data_dir = first.dir.with_file_name("twin-copy");
    std::fs::create_dir_all(&cfg.data_dir).expect("mkdir");
    for f in ["ca.crt", "worker.crt", "worker.key", "worker-id"] {
        std::fs::copy(first.dir.join(f), cfg.data_dir.join(f)).expect(f);
    }
    let second = c.spawn_worker(cfg);
    let e = tokio::time::timeout(Duration::from_secs(10), first.handle)
        .await
        .expect("the evicted worker stops")
        .expect("join")
        .expect_err("evicted");
    assert!(e.to_string().contains("another process"), "{e}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!second.handle.is_finished(), "the newer one stays");
    assert_eq!(c.online().await, 1);
}

#[tokio::test]
async fn worker_without_an_address_follows_what_discovery_reports() {
    use d8::discovery::{Advert, StaticDiscovery, cluster_id};
    let c = TestCluster::start().await;
    let addr = c.orch().quic_addr();
    let advert = |cid: String, ip: &str, port: u16| Advert {
        name: "orch".into(),
        cluster_id: cid,
        proto: d8::wire::PROTOCOL_VERSION,
        version: "test".into(),
        quic_port: port,
        http_port: port,
        addrs: vec![ip.parse().expect("ip")],
    };
    let mine = cluster_id(&c.orch().ca_digest());
    // Another cluster's orchestrator is announced too, and a dead address of ours.
    let discovery = std::sync::Arc::new(StaticDiscovery::new(vec![
        advert("0000000000000000".into(), "127.0.0.1", addr.port()),
        advert(mine.clone(), "127.0.0.1", super::harness::free_port()),
    ]));
    let mut cfg = c.worker_config("roamer", 0, 1);
    cfg.orchestrator = None;
    cfg.discovery = Some(discovery.clone());
    let w = c.spawn_worker(cfg);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        c.online().await,
        0,
        "neither the other cluster nor a dead address connects"
    );
    // Discovery now reports the orchestrator where it really is.
    discovery.set(vec![advert(mine, "127.0.0.1", addr.port())]);
    c.wait_until(
        |s| s["workers"]["online"] == 1,
        "worker found the orchestrator",
    )
    .await;
    w.drain().await.expect("drain");
}

#[tokio::test]
async fn provider_cooldowns_are_visible_in_the_workers_api() {
    use super::fakes::{FakeOpenAi, Mode};
    let c = TestCluster::start().await;
    let vendor = FakeOpenAi::start(Mode::RateLimited {
        retry_after_secs: 30,
    })
    .await;
    let w = c.vendor_worker(
        "limited",
        "groq",
        "gsk_test_cooldown_0123456789",
        &vendor.base,
    );
    c.wait_until(|s| s["workers"]["online"] == 1, "online")
        .await;
    let id = c.submit("anything", 5).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let list = loop {
        let (_, list) = c.request(Method::GET, "/api/workers", None).await;
        if list[0]["provider_cooldowns"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
        {
            break list;
        }
        assert!(Instant::now() < deadline, "no cooldown reported: {list}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let cd = &list[0]["provider_cooldowns"][0];
    assert_eq!(
        (cd["provider"].as_str(), cd["disabled"].as_bool()),
        (Some("groq"), Some(false)),
        "{list}"
    );
    let remaining = cd["remaining_ms"].as_u64().expect("ms");
    assert!((20_000..=30_000).contains(&remaining), "{remaining}");
    // The orchestrator cools down the whole worker too (its only provider cools down),
    // and the task waits without having used up an attempt.
    assert!(
        list[0]["cooldown_ms"]
            .as_u64()
            .is_some_and(|ms| ms > 20_000),
        "{list}"
    );
    let (_, t) = c
        .request(Method::GET, &format!("/api/tasks/{id}"), None)
        .await;
    assert_eq!(t["status"], "pending", "{t}");
    assert_eq!(vendor.calls(), 1);
    // Its own machine sees the task given back, not failed, and the rest.
    let v = wait_status(&w.dir, "the hand-back counted", |v| v["handed_back"] == 1).await;
    assert_eq!(
        (v["failed"].as_u64(), v["completed"].as_u64()),
        (Some(0), Some(0)),
        "{v}"
    );
    assert_eq!(v["rests"][0]["provider"], "groq", "{v}");
    // Stats keep the original shape unless asked for cooldowns.
    let plain = c.stats().await;
    assert!(plain.get("cooldowns").is_none(), "{plain}");
    let (status, stats) = c
        .request(Method::GET, "/api/workers/stats?include=cooldowns", None)
        .await;
    assert_eq!(status, 200, "{stats}");
    let cd = &stats["cooldowns"][0];
    assert_eq!(
        (cd["worker_id"].as_str(), cd["provider"].as_str()),
        (Some("limited"), Some("groq")),
        "{stats}"
    );
    let (status, _) = c
        .request(Method::GET, "/api/workers/stats?include=everything", None)
        .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn stop_sequences_and_json_mode_reach_the_vendor() {
    use super::fakes::{FakeOpenAi, Mode};
    let c = TestCluster::start().await;
    let vendor = FakeOpenAi::start(Mode::Ok).await;
    let _w = c.vendor_worker("gpt", "openai", "sk-test-0123456789", &vendor.base);
    c.wait_until(|s| s["workers"]["online"] == 1, "online")
        .await;
    let body = serde_json::json!({
        "type": "agent_action",
        "data": {
            "messages": [{"role": "user", "content": "list three colours"}],
            "stop": "###",
            "response_format": {"type": "json_object"}
        }
    });
    let (status, v) = c.request(Method::POST, "/api/tasks", Some(body)).await;
    assert_eq!(status, 201, "{v}");
    let t = c.wait_task(v["task_id"].as_str().expect("id"), 10).await;
    assert_eq!(t["status"], "completed", "{t}");
    let sent = &vendor.bodies()[0];
    assert_eq!(sent["stop"], serde_json::json!(["###"]), "{sent}");
    assert_eq!(
        sent["response_format"],
        serde_json::json!({"type": "json_object"})
    );
}

/// A worker whose only provider is an OpenAI-compatible `kind` at `base`.
#[tokio::test]
async fn free_keys_are_used_before_paid_ones_and_429s_spill_over() {
    use super::fakes::{FakeOpenAi, Mode};
    let c = TestCluster::start().await;
    // A free Groq key good for two calls, then 429 with a minute to wait.
    let groq = FakeOpenAi::start(Mode::Quota {
        allow: 2,
        retry_after_secs: 60,
    })
    .await;
    let openai = FakeOpenAi::start(Mode::Ok).await;
    let _paid = c.vendor_worker("a-paid", "openai", "sk-paid-0123456789", &openai.base);
    // Named so that a tie on load would favour the paid worker: only the
    // tiers can put the free key first.
    let _free = c.vendor_worker("z-free", "groq", "gsk_free_0123456789", &groq.base);
    c.wait_until(|s| s["workers"]["online"] == 2, "both online")
        .await;
    let (_, list) = c.request(Method::GET, "/api/workers", None).await;
    let tier_of = |name: &str| {
        list.as_array()
            .and_then(|a| a.iter().find(|w| w["worker_id"] == name))
            .map(|w| w["offers"][0]["tier"].clone())
    };
    assert_eq!(tier_of("z-free"), Some(serde_json::json!("free")), "{list}");
    assert_eq!(tier_of("a-paid"), Some(serde_json::json!("paid")), "{list}");
    let mut ran_on = Vec::new();
    for i in 0..5 {
        let id = c.submit(&format!("task {i}"), 5).await;
        let t = c.wait_task(&id, 10).await;
        assert_eq!(t["status"], "completed", "{t}");
        ran_on.push(t["worker_id"].as_str().unwrap_or_default().to_owned());
    }
    assert_eq!(
        ran_on,
        ["z-free", "z-free", "a-paid", "a-paid", "a-paid"],
        "the free key serves until its quota runs out, then the paid key"
    );
    assert_eq!(groq.calls(), 3, "two served, one 429, then it cools down");
    assert_eq!(openai.calls(), 3);
    // A task capped at the free tier waits for the free key instead.
    let body = serde_json::json!({
        "type": "agent_action",
        "data": {"messages": [{"role": "user", "content": "cheap only"}], "max_tier": "free"}
    });
    let (status, v) = c.request(Method::POST, "/api/tasks", Some(body)).await;
    assert_eq!(status, 201, "{v}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, t) = c
        .request(
            Method::GET,
            &format!("/api/tasks/{}", v["task_id"].as_str().expect("id")),
            None,
        )
        .await;
    assert_eq!(t["status"], "pending", "{t}");
    assert_eq!(openai.calls(), 3, "the paid key was not used");
    let stats = c.stats().await;
    assert_eq!(stats["tasks"]["failed"], 0, "{stats}");
}

#[tokio::test]
async fn a_vendor_outage_retries_the_task_on_another_worker_after_a_pause() {
    use super::fakes::{FakeOpenAi, Mode};
    let c = TestCluster::start().await;
    let down = FakeOpenAi::start(Mode::Down).await;
    let up = FakeOpenAi::start(Mode::Ok).await;
    // The failing worker has the cheaper (free) key, so tiers alone would
    // send every attempt back to it; only the failure moves the retry.
    let _a = c.vendor_worker("a-down", "groq", "gsk_down_0123456789", &down.base);
    let _b = c.vendor_worker("b-up", "openai", "sk-up-0123456789", &up.base);
    c.wait_until(|s| s["workers"]["online"] == 2, "both online")
        .await;
    let started = Instant::now();
    let id = c.submit("hello", 5).await;
    let t = c.wait_task(&id, 15).await;
    assert_eq!(t["status"], "completed", "{t}");
    assert_eq!(t["worker_id"], "b-up", "{t}");
    assert_eq!(t["attempts"], 2, "{t}");
    assert_eq!(
        down.calls(),
        1,
        "the retry did not go back to the failing worker"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "the retry waited for its backoff"
    );
}

/// A provider whose calls never finish and that records when a call is dropped.
struct Hang {
    dropped: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

struct SetOnDrop(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl d8::providers::Provider for Hang {
    fn kind(&self) -> &str {
        "hang"
    }
    fn models(&self) -> Vec<String> {
        vec!["hang".into()]
    }
    fn chat<'a>(
        &'a self,
        _req: &'a d8::task::ChatRequest,
        _sink: d8::providers::ChunkSink,
    ) -> d8::providers::BoxFuture<'a, Result<d8::task::TaskOutput, d8::providers::ProviderError>>
    {
        let guard = SetOnDrop(self.dropped.clone());
        Box::pin(async move {
            let _guard = guard;
            std::future::pending::<()>().await;
            unreachable!("pending never resolves")
        })
    }
}

#[tokio::test]
async fn cancelling_a_task_stops_the_provider_call() {
    let c = TestCluster::start().await;
    let dropped = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut cfg = c.worker_config("hanger", 0, 1);
    cfg.providers = d8::providers::ProviderSet::new(vec![std::sync::Arc::new(Hang {
        dropped: dropped.clone(),
    })]);
    let _w = c.spawn_worker(cfg);
    c.wait_until(|s| s["workers"]["online"] == 1, "online")
        .await;
    let id = c.submit("forever", 5).await;
    c.wait_until(|s| s["tasks"]["assigned"] == 1, "running")
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!dropped.load(std::sync::atomic::Ordering::SeqCst));
    let (s, _) = c
        .request(Method::DELETE, &format!("/api/tasks/{id}"), None)
        .await;
    assert_eq!(s, 200);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !dropped.load(std::sync::atomic::Ordering::SeqCst) {
        assert!(
            Instant::now() < deadline,
            "the provider call was not stopped"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_start_that_cannot_bind_leaves_nothing_running() {
    use d8::config::OrchestratorConfig;
    use d8::node::orchestrator::{Orchestrator, StartError};
    d8::ensure_crypto_provider();
    let dir = tempfile::tempdir().expect("tempdir");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let mut cfg = OrchestratorConfig::local(dir.path().to_owned());
    cfg.http_addr = taken.local_addr().expect("addr");
    let e = Orchestrator::start(cfg)
        .await
        .expect_err("the HTTP port is taken");
    assert!(matches!(e, StartError::HttpBind { .. }), "{e}");
    // Nothing of the failed start holds the database: the next start on the
    // same data dir opens it at once.
    let o = Orchestrator::start(OrchestratorConfig::local(dir.path().to_owned()))
        .await
        .expect("a second start on the same data dir");
    o.shutdown().await;
}

/// Answers every chat with `len` bytes of text, more than a frame holds.
struct Huge {
    len: usize,
}

impl d8::providers::Provider for Huge {
    fn kind(&self) -> &str {
        "huge"
    }
    fn models(&self) -> Vec<String> {
        vec!["huge".into()]
    }
    fn chat<'a>(
        &'a self,
        _req: &'a d8::task::ChatRequest,
        _sink: d8::providers::ChunkSink,
    ) -> d8::providers::BoxFuture<'a, Result<d8::task::TaskOutput, d8::providers::ProviderError>>
    {
        Box::pin(async move {
            Ok(d8::task::TaskOutput::text(
                "x".repeat(self.len),
                "huge",
                "huge",
            ))
        })
    }
}

#[tokio::test]
async fn a_result_larger_than_a_frame_fails_the_task_and_says_why() {
    // Before: the worker's Done frame failed to encode, the stream ended
    // without a word, and the task was retried as "stream ended" until its
    // attempts ran out.
    let c = TestCluster::start_with(|cfg| cfg.max_attempts = 1).await;
    let mut cfg = c.worker_config("big", 0, 1);
    cfg.providers = d8::providers::ProviderSet::new(vec![std::sync::Arc::new(Huge {
        len: d8::wire::MAX_FRAME + 1,
    })]);
    let before = c.online().await;
    let _w = c.spawn_worker(cfg);
    c.wait_until(
        |s| s["workers"]["online"].as_u64() > Some(before),
        "worker online",
    )
    .await;
    let id = c.submit("anything", 5).await;
    let t = c.wait_task(&id, 20).await;
    assert_eq!(t["status"], "failed", "{t}");
    let error = t["error"].as_str().unwrap_or_default();
    assert!(error.contains("too large to send"), "{error}");
}

/// The in-memory store, whose commits panic once `panic` is set: a bug or
/// a fault inside the store writer thread.
#[derive(Default)]
struct PanickingStore {
    inner: d8::store::MemBackend,
    panic: std::sync::atomic::AtomicBool,
}

impl d8::store::Backend for PanickingStore {
    fn load(&self) -> Result<d8::store::Snapshot, d8::store::StoreError> {
        self.inner.load()
    }
    fn commit(&self, ops: &[d8::store::Op]) -> Result<(), d8::store::StoreError> {
        assert!(
            !self.panic.load(std::sync::atomic::Ordering::Relaxed),
            "injected store panic"
        );
        self.inner.commit(ops)
    }
    fn result(
        &self,
        id: d8::task::TaskId,
    ) -> Result<Option<d8::task::FinishedTask>, d8::store::StoreError> {
        self.inner.result(id)
    }
    fn cache_get(
        &self,
        key: &d8::store::CacheKey,
    ) -> Result<Option<Vec<u8>>, d8::store::StoreError> {
        self.inner.cache_get(key)
    }
    fn usage(
        &self,
        from: u32,
        to: u32,
    ) -> Result<Vec<(d8::store::UsageKey, d8::store::UsageTotals)>, d8::store::StoreError> {
        self.inner.usage(from, to)
    }
    fn recent_results(
        &self,
        before: Option<d8::task::TaskId>,
        n: usize,
    ) -> Result<Vec<d8::task::FinishedTask>, d8::store::StoreError> {
        self.inner.recent_results(before, n)
    }
}

#[tokio::test]
async fn a_dead_store_writer_shows_in_health_and_ends_the_orchestrator() {
    // Before: the writer thread died, every write failed with "closed",
    // /health still said ok and the process stayed up, so no service
    // manager restarted it.
    let backend = std::sync::Arc::new(PanickingStore::default());
    let c = TestCluster::start_on(|_| {}, Some(backend.clone())).await;
    let (s, v) = c.request(Method::GET, "/health", None).await;
    assert_eq!((s, v["status"].as_str()), (200, Some("ok")), "{v}");
    backend
        .panic
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let (s, _) = c
        .request(Method::POST, "/api/tasks", Some(chat("x", 5)))
        .await;
    assert_eq!(s, 503, "the write that killed the writer is not accepted");
    // The README promises an exit "within a fraction of a second".
    let part = tokio::time::timeout(Duration::from_secs(1), c.orch().failed())
        .await
        .expect("the orchestrator notices within 1 s");
    assert_eq!(part, d8::node::vitals::Part::Store);
    let (s, v) = c.request(Method::GET, "/health", None).await;
    assert_eq!(s, 503, "{v}");
    assert_eq!(v["status"], "failing");
    assert_eq!(v["down"], json!(["store"]));
}

/// Starts and stops an orchestrator in `dir` so that it has an identity and
/// a store; returns its join token.
async fn established(dir: &std::path::Path) -> String {
    let cfg = super::harness::local_config(dir);
    let orch = d8::node::orchestrator::Orchestrator::start(cfg)
        .await
        .expect("first start");
    let token = orch.join_token().to_string();
    orch.shutdown().await;
    token
}

/// Starts on `dir`; the error's full text when it is refused.
async fn start_error(dir: &std::path::Path) -> Option<String> {
    let cfg = super::harness::local_config(dir);
    match d8::node::orchestrator::Orchestrator::start(cfg).await {
        Ok(orch) => {
            orch.shutdown().await;
            None
        }
        Err(e) => Some(format!("{e}")),
    }
}

#[tokio::test]
async fn a_damaged_store_is_refused_with_a_clear_error_and_changes_nothing() {
    super::harness::init_tracing();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("o");
    let token = established(&dir).await;
    let db = dir.join(d8::node::files::DATABASE);
    let good = std::fs::read(&db).expect("store");

    // Emptied (a crash while the file was being replaced, a bad copy):
    // before, a new store was created and the join token replaced.
    std::fs::write(&db, b"").expect("truncate");
    let e = start_error(&dir).await.expect("refused");
    assert!(e.contains("d8.redb") && e.contains("empty"), "{e}");
    assert_eq!(
        std::fs::read_to_string(dir.join(d8::node::files::JOIN_TOKEN))
            .expect("token")
            .trim(),
        token,
        "the join token is kept"
    );
    assert_eq!(
        std::fs::metadata(&db).expect("db").len(),
        0,
        "left as found"
    );

    // Gone.
    std::fs::remove_file(&db).expect("rm");
    let e = start_error(&dir).await.expect("refused");
    assert!(e.contains("d8.redb") && e.contains("missing"), "{e}");
    assert!(!db.exists(), "not re-created");

    // Garbled: before, redb panicked inside open (exit 101).
    for seed in 0..8u64 {
        let mut bytes = good.clone();
        let mut x = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        for b in bytes.iter_mut().skip(512) {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            *b = (x >> 33) as u8;
        }
        std::fs::write(&db, &bytes).expect("garble");
        let e = start_error(&dir).await;
        let e = e.unwrap_or_else(|| panic!("seed {seed}: a garbled store was accepted"));
        assert!(e.contains("d8.redb"), "seed {seed}: {e}");
    }

    // Put back, it starts again with the same identity.
    std::fs::write(&db, &good).expect("restore");
    assert_eq!(start_error(&dir).await, None);
}

#[tokio::test]
async fn tasks_waiting_across_a_restart_still_count_against_the_queue_bound() {
    let mut c = TestCluster::start_with(|cfg| cfg.max_queued = 2).await;
    c.submit("a", 5).await;
    c.submit("b", 5).await;
    c.orch.take().expect("running").shutdown().await;
    let mut cfg = super::harness::local_config(&c.dir.path().join("orchestrator"));
    cfg.max_queued = 2;
    let orch = d8::node::orchestrator::Orchestrator::start(cfg)
        .await
        .expect("restart");
    let c = TestCluster::adopt(orch, c.dir);
    let (s, v) = c
        .request(Method::POST, "/api/tasks", Some(chat("c", 5)))
        .await;
    assert_eq!(s, 503, "{v}");
    assert_eq!(v["error"]["code"], "queue_full");
}

#[tokio::test]
async fn a_completion_is_visible_only_once_it_is_durable() {
    // Before: a result was shown as soon as the worker sent it, while its
    // record could still be lost; after a crash the task ran again although
    // a client had seen it completed.
    let backend = std::sync::Arc::new(d8::store::MemBackend::default());
    let c = TestCluster::start_on(|_| {}, Some(backend.clone())).await;
    let _w = c.worker("w", 300, 1).await;
    let id = c.submit("hello", 5).await;
    backend.set_failing(true);
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let (s, t) = c
        .request(Method::GET, &format!("/api/tasks/{id}?wait=1"), None)
        .await;
    assert_eq!(s, 200, "{t}");
    assert_eq!(
        t["status"], "assigned",
        "not completed while not durable: {t}"
    );
    assert!(t["result"].is_null(), "{t}");
    backend.set_failing(false);
    let t = c.wait_task(&id, 15).await;
    assert_eq!(t["status"], "completed", "{t}");
    assert_eq!(t["result"]["content"], "hello", "{t}");
}

#[tokio::test]
async fn failing_store_writes_degrade_the_orchestrator_until_they_work_again() {
    let backend = std::sync::Arc::new(d8::store::MemBackend::default());
    let c = TestCluster::start_on(|_| {}, Some(backend.clone())).await;
    backend.set_failing(true);
    let (s, _) = c
        .request(Method::POST, "/api/tasks", Some(chat("a", 5)))
        .await;
    assert_eq!(s, 503, "the write fails");
    let (s, h) = c.request(Method::GET, "/health", None).await;
    assert_eq!((s, h["status"].as_str()), (503, Some("degraded")), "{h}");
    assert!(
        h["reason"]
            .as_str()
            .is_some_and(|r| r.contains("injected failure")),
        "{h}"
    );
    let (s, v) = c
        .request(Method::POST, "/api/tasks", Some(chat("b", 5)))
        .await;
    assert_eq!(s, 503, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("cannot store new work")),
        "refused up front, saying why: {v}"
    );
    // The disk has room again: no restart, no request needed to notice.
    backend.set_failing(false);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (s, h) = c.request(Method::GET, "/health", None).await;
        if s == 200 {
            assert_eq!(h["status"], "ok");
            break;
        }
        assert!(Instant::now() < deadline, "still degraded: {h}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (s, v) = c
        .request(Method::POST, "/api/tasks", Some(chat("c", 5)))
        .await;
    assert_eq!(s, 201, "{v}");
}

#[tokio::test]
async fn no_task_is_dispatched_while_results_cannot_be_recorded() {
    let backend = std::sync::Arc::new(d8::store::MemBackend::default());
    let c = TestCluster::start_on(|_| {}, Some(backend.clone())).await;
    let _w = c.worker("w", 1_000, 1).await;
    let a = c.submit("a", 5).await;
    c.wait_until(|s| s["tasks"]["assigned"] == 1, "a running")
        .await;
    let b = c.submit("b", 5).await;
    backend.set_failing(true);
    let (s, _) = c
        .request(Method::POST, "/api/tasks", Some(chat("c", 5)))
        .await;
    assert_eq!(s, 503, "the store fails");
    // `a` finishes on the worker meanwhile; its slot frees, but `b` must
    // not run: its result could not be kept either.
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    let (_, tb) = c
        .request(Method::GET, &format!("/api/tasks/{b}"), None)
        .await;
    assert_eq!(tb["status"], "pending", "{tb}");
    backend.set_failing(false);
    for id in [&a, &b] {
        let t = c.wait_task(id, 15).await;
        assert_eq!(t["status"], "completed", "{t}");
    }
}

/// A worker's `status.json`, once readable.
fn worker_status(dir: &std::path::Path) -> Option<Value> {
    serde_json::from_str(&std::fs::read_to_string(dir.join("status.json")).ok()?).ok()
}

async fn wait_status(dir: &std::path::Path, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = worker_status(dir).filter(|v| pred(v)) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "status never {what}: {:?}",
            worker_status(dir)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_worker_keeps_its_status_file_current_for_its_machine() {
    let c = TestCluster::start().await;
    let w = c.worker("statusy", 0, 2).await;
    let v = wait_status(&w.dir, "connected", |v| v["state"] == "connected").await;
    assert_eq!(v["worker_id"], "statusy");
    assert_eq!(v["orchestrator"], c.orch().quic_addr().to_string());
    assert_eq!(v["pid"], std::process::id());
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    let id = c.submit("count me", 5).await;
    c.wait_task(&id, 10).await;
    wait_status(&w.dir, "counting the task", |v| v["completed"] == 1).await;
    let dir = w.dir.clone();
    w.drain().await.expect("drain");
    let last = worker_status(&dir).expect("status");
    assert_eq!(last["state"], "stopped", "{last}");
    assert_eq!(last["active"], 0);
    // Nothing secret in it.
    let text = std::fs::read_to_string(dir.join("status.json")).expect("read");
    let token = c.orch().join_token().to_string();
    assert!(!text.contains(token.rsplit('-').next().expect("secret")));
    assert!(!text.contains(&c.key));
}

#[tokio::test]
async fn a_worker_that_cannot_connect_says_why_in_its_status_file() {
    let c = TestCluster::start().await;
    let mut cfg = c.worker_config("lonely", 0, 1);
    cfg.orchestrator = Some(([127, 0, 0, 1], super::harness::free_port()).into());
    // Enrolled already: only the connection fails.
    let w = c.worker("lonely", 0, 1).await;
    let dir = w.dir.clone();
    w.drain().await.expect("drain");
    cfg.token = None;
    let w = c.spawn_worker(cfg);
    let v = wait_status(&dir, "connecting with a reason", |v| {
        v["state"] == "connecting" && v["last_error"].is_string()
    })
    .await;
    assert!(
        v["last_error"].as_str().is_some_and(|e| !e.is_empty()),
        "{v}"
    );
    w.stop.cancel();
    let _ = w.handle.await;
    assert_eq!(worker_status(&dir).expect("status")["state"], "stopped");
}

#[tokio::test]
async fn a_second_worker_on_the_same_data_dir_is_refused_and_leaves_the_first_alone() {
    // Two desktop windows, or the login item and a click: one identity,
    // one status file, one worker.
    let c = TestCluster::start().await;
    let w = c.worker("only-one", 0, 1).await;
    wait_status(&w.dir, "connected", |v| v["state"] == "connected").await;
    let mut cfg = c.worker_config("intruder", 0, 1);
    cfg.data_dir = w.dir.clone();
    std::fs::write(w.dir.join("drain-request"), b"").expect("request");
    let err = d8::node::worker::run(cfg, tokio_util::sync::CancellationToken::new())
        .await
        .expect_err("refused");
    assert!(
        matches!(err, d8::node::worker::WorkerError::DataDirBusy(_)),
        "{err}"
    );
    assert!(err.to_string().contains("already running"), "{err}");
    // The first one's request is not consumed by the refused one: the first
    // worker drains on it.
    tokio::time::timeout(Duration::from_secs(10), w.handle)
        .await
        .expect("the first worker drains on its request")
        .expect("join")
        .expect("drained cleanly");
    let v = worker_status(&w.dir).expect("status");
    assert_eq!(
        (v["state"].as_str(), v["worker_id"].as_str()),
        (Some("stopped"), Some("only-one")),
        "{v}"
    );
}

#[tokio::test]
async fn a_drain_request_file_stops_the_worker_like_ctrl_c() {
    let c = TestCluster::start().await;
    // A request left over from before the worker started is ignored.
    let cfg = c.worker_config("supervised", 0, 1);
    std::fs::create_dir_all(&cfg.data_dir).expect("dir");
    std::fs::write(cfg.data_dir.join("drain-request"), b"").expect("stale request");
    let dir = cfg.data_dir.clone();
    let w = c.spawn_worker(cfg);
    c.wait_until(|s| s["workers"]["online"] == 1, "online")
        .await;
    wait_status(&dir, "connected", |v| v["state"] == "connected").await;
    assert!(!w.handle.is_finished(), "the stale request did not stop it");
    // Now a supervisor asks.
    std::fs::write(dir.join("drain-request"), b"").expect("request");
    let ended = tokio::time::timeout(Duration::from_secs(10), w.handle)
        .await
        .expect("the worker stopped")
        .expect("join");
    assert!(ended.is_ok(), "{ended:?}");
    assert_eq!(worker_status(&dir).expect("status")["state"], "stopped");
    assert!(
        !dir.join("drain-request").exists(),
        "the request is consumed"
    );
    c.wait_until(|s| s["workers"]["online"] == 0, "gone").await;
}
