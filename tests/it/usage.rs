//! Usage and cost: tokens and estimated cost of completed tasks per
//! provider, model, worker, agent and day, persisted; prices from tiers,
//! built-in list prices and the orchestrator's prices file; daily budgets
//! that make a provider rest until midnight UTC, across worker restarts.

use std::sync::Arc;
use std::time::Duration;

use d8::providers::budget::Budget;
use d8::providers::echo::Echo;
use d8::providers::{Provider, ProviderSet, ProviderSettings};
use d8::task::Tier;
use reqwest::Method;
use serde_json::{Value, json};

use super::fakes::{FakeOpenAi, Mode};
use super::harness::TestCluster;

/// A worker whose one provider is Groq at `base`, on a billed key, with
/// a model d8 has no price for besides its default.
fn paid_groq(c: &TestCluster, name: &str, base: &str) -> super::harness::TestWorker {
    let env: std::collections::HashMap<String, String> = [
        (
            "GROQ_API_KEY".to_owned(),
            "gsk_usage_test_0123456789".to_owned(),
        ),
        ("GROQ_BASE_URL".to_owned(), base.to_owned()),
        (
            "GROQ_MODELS".to_owned(),
            "llama-3.1-8b-instant,some-new-model".to_owned(),
        ),
    ]
    .into();
    let client =
        d8::providers::VendorClient::new(d8::providers::ReadLimits::DEFAULT).expect("client");
    let p = d8::providers::build("groq", &env, None, Duration::ZERO, &client).expect("groq");
    let mut cfg = c.worker_config(name, 0, 4);
    cfg.providers = ProviderSet::with_settings(
        vec![p],
        &[ProviderSettings {
            tier: Some(Tier::Paid),
            ..ProviderSettings::default()
        }],
    );
    c.spawn_worker(cfg)
}

async fn usage(c: &TestCluster, query: &str) -> Value {
    let (status, v) = c
        .request(Method::GET, &format!("/api/usage{query}"), None)
        .await;
    assert_eq!(status, 200, "{v}");
    v
}

fn row<'a>(v: &'a Value, key: &str) -> &'a Value {
    v["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .find(|r| r["key"] == key)
        .unwrap_or_else(|| panic!("no row {key}: {v}"))
}

/// US$ in an answer, compared to the nano-dollar.
fn nanos(v: &Value) -> u64 {
    (v.as_f64().expect("number") * 1e9).round() as u64
}

#[tokio::test]
async fn usage_is_accounted_per_dimension_priced_by_tier_and_survives_a_restart() {
    let mut c = TestCluster::start().await;
    let vendor = FakeOpenAi::start(Mode::Ok).await;
    let _paid = paid_groq(&c, "payer", &vendor.base);
    let _local = c.worker("local", 0, 2).await;
    c.wait_until(|s| s["workers"]["online"] == 2, "two workers")
        .await;
    // Three tasks on the billed Groq key for agent alpha, two on echo
    // (local: free) without an agent.
    let (status, _) = c
        .request(
            Method::PUT,
            "/api/agents/alpha",
            Some(json!({"system_prompt": "be brief", "model": "llama-3.1-8b-instant"})),
        )
        .await;
    assert_eq!(status, 200);
    let mut ids = Vec::new();
    for i in 0..3 {
        let (status, v) = c
            .request(
                Method::POST,
                "/api/agents/alpha/act",
                Some(json!({"action_type": "think", "input_data": {"n": i}})),
            )
            .await;
        assert_eq!(status, 201, "{v}");
        ids.push(v["task_id"].as_str().expect("id").to_owned());
    }
    for words in ["one two", "three four five"] {
        let (status, v) = c
            .request(
                Method::POST,
                "/api/tasks",
                Some(json!({"type": "agent_action", "data": {
                    "messages": [{"role": "user", "content": words}], "provider": "echo"}})),
            )
            .await;
        assert_eq!(status, 201, "{v}");
        ids.push(v["task_id"].as_str().expect("id").to_owned());
    }
    for id in &ids {
        assert_eq!(c.wait_task(id, 10).await["status"], "completed", "{id}");
    }
    // The fake vendor reports 10 prompt and 3 completion tokens a call
    // (its answer's `usage`); llama-3.1-8b-instant lists at $0.05/$0.08 per
    // million: 10 × 0.05 + 3 × 0.08 = 0.74 µ$ = 740 n$ a call.
    let check = |v: &Value| {
        let groq = row(v, "groq");
        assert_eq!(groq["tasks"], 3, "{v}");
        assert_eq!(groq["prompt_tokens"], 30);
        assert_eq!(groq["completion_tokens"], 9);
        assert_eq!(nanos(&groq["cost_usd"]), 3 * 740);
        let echo = row(v, "echo");
        assert_eq!(echo["tasks"], 2);
        // Echo counts words: "one two" in and out, then three and three.
        assert_eq!(echo["prompt_tokens"], 5);
        assert_eq!(echo["completion_tokens"], 5);
        assert_eq!(nanos(&echo["cost_usd"]), 0, "local costs nothing");
        assert_eq!(v["total"]["tasks"], 5);
        assert_eq!(nanos(&v["total"]["cost_usd"]), 3 * 740);
        // One day of use so far: the monthly pace is 30 of them.
        assert_eq!(nanos(&v["total"]["monthly_usd"]), 30 * 3 * 740);
        assert_eq!(v["total"]["tasks_unpriced"], 0);
    };
    check(&usage(&c, "").await);
    let by_model = usage(&c, "?by=model").await;
    assert_eq!(row(&by_model, "groq/llama-3.1-8b-instant")["tasks"], 3);
    assert_eq!(row(&by_model, "echo/echo")["tasks"], 2);
    let by_worker = usage(&c, "?by=worker").await;
    assert_eq!(row(&by_worker, "payer")["tasks"], 3);
    assert_eq!(row(&by_worker, "local")["tasks"], 2);
    let by_agent = usage(&c, "?by=agent").await;
    assert_eq!(row(&by_agent, "alpha")["tasks"], 3);
    assert_eq!(row(&by_agent, "")["tasks"], 2, "tasks without an agent");
    let by_day = usage(&c, "?by=day").await;
    let today = by_day["to"].as_str().expect("to").to_owned();
    assert_eq!(row(&by_day, &today)["tasks"], 5);
    assert_eq!(by_day["daily"].as_array().expect("daily").len(), 30);
    // A range without today has nothing; bad ranges are named.
    let old = usage(&c, "?from=2020-01-01&to=2020-01-31").await;
    assert_eq!(old["total"]["tasks"], 0);
    for (q, param) in [
        ("?by=colour", "by"),
        ("?from=2026-02-30", "from"),
        ("?from=2026-02-01&to=2026-01-01", "from"),
    ] {
        let (status, e) = c
            .request(Method::GET, &format!("/api/usage{q}"), None)
            .await;
        assert_eq!(status, 400, "{q}: {e}");
        assert_eq!(e["error"]["param"], param, "{q}");
    }
    // Prometheus sees the same tokens and cost.
    let metrics = c
        .http
        .get(format!("{}/metrics", c.base))
        .bearer_auth(&c.key)
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains(
            "d8_tokens_total{provider=\"groq\",model=\"llama-3.1-8b-instant\",kind=\"prompt\"} 30"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "d8_cost_usd_total{provider=\"groq\",model=\"llama-3.1-8b-instant\"} 0.00000222"
        ),
        "{metrics}"
    );

    // Kept in the store: a restarted orchestrator answers the same.
    let dir = c.dir.path().join("orchestrator");
    c.orch.take().expect("running").shutdown().await;
    let orch = d8::node::orchestrator::Orchestrator::start(super::harness::local_config(&dir))
        .await
        .expect("restart");
    c.base = format!("http://{}", orch.http_addr());
    c.orch = Some(orch);
    check(&usage(&c, "").await);
}

#[tokio::test]
async fn the_orchestrators_prices_file_wins_and_unknown_prices_are_counted() {
    let prices = tempfile::NamedTempFile::new().expect("file");
    std::fs::write(
        prices.path(),
        "[groq]\n\"llama-3.1-8b-instant\" = { input = 1.0, output = 2.0 }\n",
    )
    .expect("write");
    let path = prices.path().to_owned();
    let c = TestCluster::start_with(move |cfg| cfg.prices = Some(path)).await;
    let vendor = FakeOpenAi::start(Mode::Ok).await;
    let _w = paid_groq(&c, "payer", &vendor.base);
    c.wait_until(|s| s["workers"]["online"] == 1, "online")
        .await;
    for model in ["llama-3.1-8b-instant", "some-new-model"] {
        let (status, v) = c
            .request(
                Method::POST,
                "/api/tasks",
                Some(json!({"type": "agent_action", "data": {
                    "messages": [{"role": "user", "content": "hi"}], "model": model}})),
            )
            .await;
        assert_eq!(status, 201, "{v}");
        let id = v["task_id"].as_str().expect("id").to_owned();
        assert_eq!(c.wait_task(&id, 10).await["status"], "completed");
    }
    let v = usage(&c, "?by=model").await;
    // $1/$2 per million from the file: 10 × 1 + 3 × 2 = 16 µ$.
    let priced = row(&v, "groq/llama-3.1-8b-instant");
    assert_eq!(nanos(&priced["cost_usd"]), 16_000);
    // A model nobody priced: tokens counted, cost unknown, and said so.
    let unknown = row(&v, "groq/some-new-model");
    assert_eq!(unknown["prompt_tokens"], 10);
    assert_eq!(nanos(&unknown["cost_usd"]), 0);
    assert_eq!(unknown["tasks_unpriced"], 1);
    assert_eq!(v["total"]["tasks_unpriced"], 1);
}

#[tokio::test]
async fn a_bad_prices_file_stops_the_start_with_its_name() {
    let prices = tempfile::NamedTempFile::new().expect("file");
    std::fs::write(
        prices.path(),
        "[groq]\n\"m\" = { input = -3.0, output = 0.0 }\n",
    )
    .expect("write");
    let dir = tempfile::tempdir().expect("dir");
    let mut cfg = super::harness::local_config(&dir.path().join("o"));
    cfg.prices = Some(prices.path().to_owned());
    let err = d8::node::orchestrator::Orchestrator::start(cfg)
        .await
        .expect_err("refused");
    let text = format!("{err:#}");
    assert!(
        text.contains(&prices.path().display().to_string()) && text.contains("US$"),
        "{text}"
    );
}

/// An echo worker whose provider may use `max_tokens` a day.
fn budgeted(c: &TestCluster, name: &str, max_tokens: u64) -> super::harness::TestWorker {
    let mut cfg = c.worker_config(name, 0, 1);
    let echo: Arc<dyn Provider> = Arc::new(Echo::default());
    cfg.providers = ProviderSet::with_settings(
        vec![echo],
        &[ProviderSettings {
            budget: Budget {
                max_nanos: None,
                max_tokens: Some(max_tokens),
            },
            ..ProviderSettings::default()
        }],
    );
    c.spawn_worker(cfg)
}

async fn echo_cooldown(c: &TestCluster) -> Option<Value> {
    let (_, workers) = c.request(Method::GET, "/api/workers", None).await;
    workers[0]["provider_cooldowns"]
        .as_array()
        .and_then(|l| l.iter().find(|r| r["provider"] == "echo").cloned())
}

#[tokio::test]
async fn a_spent_daily_budget_rests_the_provider_until_midnight_even_after_a_restart() {
    let c = TestCluster::start().await;
    let w = budgeted(&c, "thrifty", 5);
    c.wait_until(|s| s["workers"]["online"] == 1, "online")
        .await;
    // 3 words in, 3 out: 6 tokens, past the budget of 5.
    let first = c.submit("one two three", 5).await;
    assert_eq!(c.wait_task(&first, 10).await["status"], "completed");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let rest = loop {
        if let Some(r) = echo_cooldown(&c).await {
            break r;
        }
        assert!(tokio::time::Instant::now() < deadline, "no rest reported");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(rest["reason"], "budget", "{rest}");
    let left = rest["remaining_ms"].as_u64().expect("ms");
    assert!(left > 0 && left <= 86_400_000, "until midnight UTC: {left}");
    // Nothing else runs on it today.
    let second = c.submit("four", 5).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (_, t) = c
        .request(Method::GET, &format!("/api/tasks/{second}"), None)
        .await;
    assert_eq!(t["status"], "pending", "{t}");
    // The day's spend is on disk: a restarted worker rests at once.
    let dir = w.dir.clone();
    w.drain().await.expect("drain");
    let spend: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("spend.json")).expect("spend"))
            .expect("json");
    assert_eq!(spend["echo"]["tokens"], 6, "{spend}");
    let mut cfg = c.worker_config("thrifty", 0, 1);
    cfg.token = None;
    cfg.providers = ProviderSet::with_settings(
        vec![Arc::new(Echo::default()) as Arc<dyn Provider>],
        &[ProviderSettings {
            budget: Budget {
                max_nanos: None,
                max_tokens: Some(5),
            },
            ..ProviderSettings::default()
        }],
    );
    let _w = c.spawn_worker(cfg);
    c.wait_until(|s| s["workers"]["online"] == 1, "back online")
        .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        if echo_cooldown(&c)
            .await
            .is_some_and(|r| r["reason"] == "budget")
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the restart forgot the budget"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, t) = c
        .request(Method::GET, &format!("/api/tasks/{second}"), None)
        .await;
    assert_eq!(t["status"], "pending", "still resting: {t}");
}
