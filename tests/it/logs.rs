//! Centralized logs: workers forward their lines over QUIC (rate-limited,
//! drops counted), the orchestrator keeps them with its own in a bounded
//! ring, `GET /api/logs` filters and follows them, `/api/events` carries them.
//!
//! Each node here gets its own [`LogTap`] and the test publishes into it,
//! as the global `tracing` layer does in `d8 serve` / `d8 join` (several
//! clusters share this test process, so the global subscriber cannot be
//! theirs; the process-level path is covered in `processes.rs`).

use std::time::Duration;

use d8::logging::{Level, LogLine, LogTap};
use reqwest::Method;
use serde_json::Value;

use super::harness::TestCluster;
use super::streaming::Events;

fn line(level: Level, msg: &str) -> LogLine {
    LogLine::new(
        d8::logging::tap::now_ms(),
        level,
        "d8::test",
        msg,
        vec![("k".into(), "v".into())],
    )
}

async fn logs(c: &TestCluster, query: &str) -> Value {
    let (status, v) = c
        .request(Method::GET, &format!("/api/logs{query}"), None)
        .await;
    assert_eq!(status, 200, "{v}");
    v
}

fn messages(v: &Value) -> Vec<String> {
    v["lines"]
        .as_array()
        .expect("lines")
        .iter()
        .map(|l| l["message"].as_str().expect("message").to_owned())
        .collect()
}

#[tokio::test]
async fn worker_lines_reach_the_ring_with_their_worker_and_filters_apply() {
    let c = TestCluster::start().await;
    let tap = LogTap::new();
    let mut cfg = c.worker_config("logger", 0, 1);
    cfg.logs = Some(tap.clone());
    let w = c.spawn_worker(cfg);
    c.wait_until(|s| s["workers"]["online"] == 1, "online")
        .await;
    tap.publish(line(Level::Warn, "disk almost full"));
    tap.publish(line(Level::Error, "provider key refused"));
    let v = c
        .wait_until_logs("?worker=logger", |v| messages(v).len() >= 2)
        .await;
    assert_eq!(
        messages(&v),
        ["disk almost full", "provider key refused"],
        "{v}"
    );
    let first = &v["lines"][0];
    assert_eq!(first["source"], "worker");
    assert_eq!(first["worker"], "logger");
    assert_eq!(first["level"], "warn");
    assert_eq!(first["fields"]["k"], "v");
    assert!(first["seq"].as_u64().expect("seq") >= 1);
    // Filters.
    assert_eq!(
        messages(&logs(&c, "?worker=logger&level=error").await),
        ["provider key refused"]
    );
    assert!(messages(&logs(&c, "?worker=someone-else").await).is_empty());
    assert!(
        messages(&logs(&c, "?source=orchestrator").await)
            .iter()
            .all(|m| m != "disk almost full"),
        "worker lines are not the orchestrator's"
    );
    let after = v["lines"][0]["seq"].as_u64().expect("seq");
    assert_eq!(
        messages(&logs(&c, &format!("?worker=logger&after={after}")).await),
        ["provider key refused"]
    );
    assert_eq!(
        messages(&logs(&c, "?worker=logger&limit=1").await),
        ["provider key refused"],
        "the newest"
    );
    // Bad queries get a clear 400 naming the parameter.
    let (status, e) = c
        .request(Method::GET, "/api/logs?since=last+tuesday", None)
        .await;
    assert_eq!(status, 400, "{e}");
    assert_eq!(e["error"]["param"], "since");
    w.drain().await.expect("drain");
}

#[tokio::test]
async fn a_flood_is_rate_limited_and_every_line_is_forwarded_or_counted() {
    let c = TestCluster::start().await;
    let tap = LogTap::new();
    let mut cfg = c.worker_config("chatty", 0, 1);
    cfg.logs = Some(tap.clone());
    let w = c.spawn_worker(cfg);
    c.wait_until(|s| s["workers"]["online"] == 1, "online")
        .await;
    const FLOOD: u64 = 3_000;
    let started = std::time::Instant::now();
    for i in 0..FLOOD {
        tap.publish(line(Level::Info, &format!("flood {i}")));
        if i % 100 == 99 {
            tokio::task::yield_now().await;
        }
    }
    // Everything is accounted for once the last batch is in.
    let v = c
        .wait_until_logs("?worker=chatty&limit=10000", |v| {
            let kept = v["lines"].as_array().map_or(0, Vec::len) as u64;
            kept + v["dropped"]["workers"]["chatty"].as_u64().unwrap_or(0) == FLOOD
        })
        .await;
    let kept = v["lines"].as_array().map_or(0, Vec::len) as u64;
    let secs = started.elapsed().as_secs_f64();
    // The worker's limit: a burst of 200, then 20 lines a second.
    let allowed = 200.0 + 20.0 * (secs + 1.0);
    assert!(kept >= 100, "the burst got through: {kept}");
    assert!(
        (kept as f64) <= allowed,
        "{kept} lines forwarded in {secs:.1} s, more than the limit allows ({allowed:.0})"
    );
    // Forwarded lines keep their order.
    let nums: Vec<u64> = messages(&v)
        .iter()
        .map(|m| m["flood ".len()..].parse().expect("n"))
        .collect();
    assert!(nums.windows(2).all(|p| p[0] < p[1]), "in order");
    w.drain().await.expect("drain");
}

#[tokio::test]
async fn followers_get_the_backlog_then_new_lines_and_events_carry_them() {
    let tap = LogTap::new();
    let own = tap.clone();
    let c = TestCluster::start_with(move |cfg| cfg.logs = Some(own)).await;
    tap.publish(line(Level::Info, "before anyone followed"));
    c.wait_until_logs("?source=orchestrator", |v| !messages(v).is_empty())
        .await;
    let resp = c
        .http
        .get(format!(
            "{}/api/logs?follow=1&source=orchestrator&level=info",
            c.base
        ))
        .bearer_auth(&c.key)
        .send()
        .await
        .expect("http");
    assert_eq!(resp.status(), 200);
    let mut follow = Events::new(resp);
    let (event, data) = follow.next().await.expect("backlog");
    assert_eq!(event, "log");
    assert_eq!(data["message"], "before anyone followed");
    assert_eq!(data["source"], "orchestrator");
    assert_eq!(data["worker"], Value::Null);

    let mut events = super::streaming::open_events(&c).await;
    let (event, snap) = events.next().await.expect("snapshot");
    assert_eq!(event, "snapshot");
    assert!(
        snap["logs"]
            .as_array()
            .expect("logs")
            .iter()
            .any(|l| l["message"] == "before anyone followed"),
        "{snap}"
    );

    tap.publish(line(Level::Debug, "too detailed for this follower"));
    tap.publish(line(Level::Warn, "while following"));
    let (event, data) = follow.next().await.expect("new line");
    assert_eq!(event, "log");
    assert_eq!(
        data["message"], "while following",
        "the debug line is filtered out"
    );
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let (event, data) = events.next().await.expect("event");
        if event == "log" {
            seen.push(data["message"].as_str().expect("message").to_owned());
        }
    }
    assert_eq!(seen, ["too detailed for this follower", "while following"]);
}

#[tokio::test]
async fn the_ring_stays_bounded_under_a_long_run() {
    let tap = LogTap::new();
    let own = tap.clone();
    let c = TestCluster::start_with(move |cfg| cfg.logs = Some(own)).await;
    let big = "x".repeat(4_000);
    // 20,000 lines of ~2 KiB each (the message is cut): more than either cap.
    for i in 0..20_000 {
        tap.publish(line(Level::Info, &format!("{i} {big}")));
        if i % 500 == 499 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let v = c
        .wait_until_logs("?limit=10000", |v| {
            messages(v).last().is_some_and(|m| m.starts_with("19999 "))
        })
        .await;
    let held = &v["held"];
    assert!(held["lines"].as_u64().expect("lines") <= 10_000, "{held}");
    assert!(
        held["bytes"].as_u64().expect("bytes") <= 4 * 1024 * 1024,
        "{held}"
    );
    let first = messages(&v)[0].clone();
    assert!(!first.starts_with("0 "), "the oldest went first");
    assert!(
        messages(&v).iter().all(|m| m.len() <= 2_048),
        "messages are cut"
    );
}

impl TestCluster {
    /// `GET /api/logs{query}` until `pred` holds (10 s at most).
    async fn wait_until_logs(&self, query: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let v = logs(self, query).await;
            if pred(&v) {
                return v;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "logs never matched: {v}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
