//! Enrollment and mutual TLS: every way in that must be refused is refused,
//! with a reason the operator can act on.

use std::time::Duration;

use d8::node::worker::WorkerError;
use d8::transport;
use d8::wire::{Hello, OrchMsg, WorkerMsg};
use d8_certs::{JoinToken, ORCHESTRATOR_NAME, WorkerKey, pem_to_der, tls};
use reqwest::Method;
use serde_json::json;

use super::harness::TestCluster;

async fn run_to_error(c: &TestCluster, cfg: d8::config::WorkerConfig) -> WorkerError {
    let w = c.spawn_worker(cfg);
    tokio::time::timeout(Duration::from_secs(10), w.handle)
        .await
        .expect("worker gives up in time")
        .expect("join")
        .expect_err("refused")
}

#[tokio::test]
async fn wrong_secret_is_refused() {
    let c = TestCluster::start().await;
    let mut cfg = c.worker_config("intruder", 0, 1);
    let real = c.orch().join_token();
    let forged = JoinToken::parse(&format!(
        "D8-1-{}-{}",
        hex::encode(real.ca_digest()),
        "a".repeat(32)
    ))
    .expect("parse");
    cfg.token = Some(forged);
    let e = run_to_error(&c, cfg).await;
    assert!(
        matches!(&e, WorkerError::Refused(r) if r.contains("unknown join token")),
        "{e}"
    );
    assert_eq!(
        c.request(Method::GET, "/api/workers", None).await.1,
        json!([])
    );
}

#[tokio::test]
async fn expired_and_used_up_tokens_are_refused() {
    let c = TestCluster::start().await;
    let (s, v) = c
        .request(Method::POST, "/api/tokens", Some(json!({"ttl_secs": 1})))
        .await;
    assert_eq!(s, 201, "{v}");
    let short = JoinToken::parse(v["token"].as_str().expect("token")).expect("parse");
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let mut cfg = c.worker_config("late", 0, 1);
    cfg.token = Some(short);
    let e = run_to_error(&c, cfg).await;
    assert!(
        matches!(&e, WorkerError::Refused(r) if r.contains("expired")),
        "{e}"
    );

    let (_, v) = c
        .request(Method::POST, "/api/tokens", Some(json!({"max_uses": 1})))
        .await;
    let once = JoinToken::parse(v["token"].as_str().expect("token")).expect("parse");
    let mut cfg = c.worker_config("first", 0, 1);
    cfg.token = Some(once.clone());
    let w = c.spawn_worker(cfg);
    c.wait_until(|s| s["workers"]["online"] == 1, "first joined")
        .await;
    let mut cfg = c.worker_config("second", 0, 1);
    cfg.token = Some(once);
    let e = run_to_error(&c, cfg).await;
    assert!(
        matches!(&e, WorkerError::Refused(r) if r.contains("maximum number")),
        "{e}"
    );
    w.drain().await.expect("drain");

    // Listing shows ids and uses, never secrets or hashes.
    let (_, list) = c.request(Method::GET, "/api/tokens", None).await;
    let text = list.to_string();
    assert_eq!(list.as_array().map(Vec::len), Some(3), "{list}");
    assert!(!text.contains(c.orch().join_token().secret()));
    assert!(!text.contains("hash"));
}

#[tokio::test]
async fn revoked_and_rotated_tokens_are_refused() {
    let c = TestCluster::start().await;
    let (_, v) = c.request(Method::POST, "/api/tokens", None).await;
    let extra = JoinToken::parse(v["token"].as_str().expect("token")).expect("parse");
    let id = v["id"].as_str().expect("id").to_owned();
    let (s, _) = c
        .request(Method::DELETE, &format!("/api/tokens/{id}"), None)
        .await;
    assert_eq!(s, 200);
    let mut cfg = c.worker_config("x", 0, 1);
    cfg.token = Some(extra);
    let e = run_to_error(&c, cfg).await;
    assert!(
        matches!(&e, WorkerError::Refused(r) if r.contains("revoked")),
        "{e}"
    );

    let old = c.orch().join_token();
    let (s, v) = c.request(Method::POST, "/api/tokens/rotate", None).await;
    assert_eq!(s, 200);
    let new = v["token"].as_str().expect("token").to_owned();
    assert_ne!(new, old.to_string());
    let on_disk =
        std::fs::read_to_string(c.dir.path().join("orchestrator/join-token")).expect("file");
    assert_eq!(on_disk.trim(), new);
    let mut cfg = c.worker_config("y", 0, 1);
    cfg.token = Some(old);
    let e = run_to_error(&c, cfg).await;
    assert!(
        matches!(&e, WorkerError::Refused(r) if r.contains("revoked")),
        "{e}"
    );
    let mut cfg = c.worker_config("z", 0, 1);
    cfg.token = Some(JoinToken::parse(&new).expect("parse"));
    let _w = c.spawn_worker(cfg);
    c.wait_until(|s| s["workers"]["online"] == 1, "joined with the new token")
        .await;
}

#[tokio::test]
async fn wrong_ca_digest_is_refused_before_sending_the_secret() {
    let c = TestCluster::start().await;
    let real = c.orch().join_token();
    let other =
        JoinToken::parse(&format!("D8-1-{}-{}", "ab".repeat(32), real.secret())).expect("parse");
    let mut cfg = c.worker_config("mitm", 0, 1);
    cfg.token = Some(other);
    let e = run_to_error(&c, cfg).await;
    let msg = e.to_string();
    assert!(matches!(e, WorkerError::Enroll(_)), "{msg}");
    assert!(msg.contains("does not match the join token"), "{msg}");
    // The orchestrator never saw an enrollment request, so the token's use count is untouched.
    let (_, list) = c.request(Method::GET, "/api/tokens", None).await;
    assert_eq!(list[0]["uses"], 0);
}

#[tokio::test]
async fn not_enrolled_and_no_token_is_a_clear_error() {
    let c = TestCluster::start().await;
    let mut cfg = c.worker_config("tokenless", 0, 1);
    cfg.token = None;
    let e = run_to_error(&c, cfg).await;
    assert!(matches!(e, WorkerError::NeedToken));
    assert!(e.to_string().contains("--token"));
}

/// A cluster client built by hand, to misbehave in ways `d8 join` never does.
async fn raw_connect(
    c: &TestCluster,
    tls_cfg: rustls::ClientConfig,
) -> Result<quinn::Connection, quinn::ConnectionError> {
    let client = transport::client_config(tls_cfg, Duration::from_secs(4)).expect("client config");
    let addr = c.orch().quic_addr();
    let endpoint = transport::client_endpoint(addr).expect("endpoint");
    endpoint
        .connect_with(client, addr, ORCHESTRATOR_NAME)
        .expect("connect")
        .await
}

/// Stops an enrolled worker and returns a TLS config with its identity, for
/// a hand-made client that then misbehaves.
async fn enrolled_identity(w: super::harness::TestWorker) -> rustls::ClientConfig {
    let dir = w.dir.clone();
    w.drain().await.expect("drain");
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).expect(f);
    let key = WorkerKey::from_pem(&read("worker.key")).expect("key");
    let cert = pem_to_der(&read("worker.crt"), "cert").expect("cert");
    let ca = pem_to_der(&read("ca.crt"), "ca").expect("ca");
    tls::cluster_client_config(ca, vec![cert], Some(key.private_key_der())).expect("tls")
}

fn ca_of(c: &TestCluster) -> rustls::pki_types::CertificateDer<'static> {
    let pem = std::fs::read_to_string(c.dir.path().join("orchestrator/ca.crt")).expect("ca");
    pem_to_der(&pem, "ca").expect("der")
}

#[tokio::test]
async fn cluster_connection_without_client_certificate_is_refused() {
    let c = TestCluster::start().await;
    let cfg = tls::cluster_client_config(ca_of(&c), vec![], None).expect("tls");
    let conn = raw_connect(&c, cfg)
        .await
        .expect("handshake (certificate is optional at the TLS layer)");
    let reason = conn.closed().await;
    let text = transport::explain(&reason);
    assert!(text.contains("client certificate required"), "{text}");
    assert!(transport::is_unauthorized(&reason));
}

#[tokio::test]
async fn certificate_from_another_ca_is_refused_in_the_handshake() {
    let c = TestCluster::start().await;
    let rogue_ca = d8_certs::ClusterCa::generate().expect("ca");
    let key = WorkerKey::generate().expect("key");
    let cert = rogue_ca
        .sign_worker_csr(&key.csr_der("rogue").expect("csr"), "rogue")
        .expect("sign");
    let cfg = tls::cluster_client_config(ca_of(&c), vec![cert], Some(key.private_key_der()))
        .expect("tls");
    let e = match raw_connect(&c, cfg).await {
        Err(e) => e,
        // TLS 1.3: the client may finish before the server has judged its certificate.
        Ok(conn) => conn.closed().await,
    };
    let text = transport::explain(&e);
    assert!(
        text.contains("refused") || text.contains("certificate"),
        "{text}"
    );
}

#[tokio::test]
async fn revoked_worker_is_disconnected_and_cannot_return() {
    let c = TestCluster::start().await;
    let w = c.worker("bad-apple", 0, 1).await;
    let (s, v) = c
        .request(Method::DELETE, "/api/workers/bad-apple", None)
        .await;
    assert_eq!((s, v["status"].as_str()), (200, Some("revoked")), "{v}");
    let e = tokio::time::timeout(Duration::from_secs(10), w.handle)
        .await
        .expect("worker stops")
        .expect("join")
        .expect_err("revoked");
    assert!(e.to_string().contains("revoked"), "{e}");
    // Coming back with the same certificate fails in the handshake itself.
    let mut cfg = c.worker_config("bad-apple", 0, 1);
    cfg.token = None;
    let e = run_to_error(&c, cfg).await;
    assert!(e.to_string().contains("revoked"), "{e}");
    let (_, list) = c.request(Method::GET, "/api/workers", None).await;
    assert_eq!(list[0]["status"], "revoked");
    let (s, _) = c.request(Method::DELETE, "/api/workers/nobody", None).await;
    assert_eq!(s, 404);
}

#[tokio::test]
async fn incompatible_protocol_version_is_explained_on_both_sides() {
    let c = TestCluster::start().await;
    let w = c.worker("old-timer", 0, 1).await;
    let cfg = enrolled_identity(w).await;
    let conn = raw_connect(&c, cfg).await.expect("handshake");
    let (mut send, mut recv) = conn.open_bi().await.expect("stream");
    let hello = WorkerMsg::Hello(Hello {
        proto: 99,
        worker_id: "old-timer".into(),
        caps: Default::default(),
    });
    transport::write_frame(&mut send, &hello)
        .await
        .expect("write");
    match transport::read_frame::<OrchMsg>(&mut recv)
        .await
        .expect("reply")
    {
        OrchMsg::Rejected { reason, supported } => {
            assert_eq!(supported, d8::wire::PROTOCOL_VERSION);
            assert!(
                reason.contains("incompatible protocol version 99"),
                "{reason}"
            );
        }
        other => panic!("expected Rejected, got {other:?}"),
    }
    drop(send);
    let closed = conn.closed().await;
    assert!(
        transport::explain(&closed).contains("incompatible"),
        "{closed}"
    );
    assert_eq!(c.online().await, 0);
}

#[tokio::test]
async fn garbage_on_the_control_stream_closes_only_that_connection() {
    let c = TestCluster::start().await;
    let good = c.worker("good", 0, 1).await;
    let bad = c.worker("bad", 0, 1).await;
    let cfg = enrolled_identity(bad).await;
    let conn = raw_connect(&c, cfg).await.expect("handshake");
    let (mut send, _recv) = conn.open_bi().await.expect("stream");
    // A length prefix far over the limit.
    send.write_all(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3])
        .await
        .expect("write");
    let closed = conn.closed().await;
    assert!(transport::explain(&closed).contains("hello"), "{closed}");
    // The orchestrator and the other worker carry on.
    let id = c.submit("still fine", 5).await;
    assert_eq!(c.wait_task(&id, 10).await["worker_id"], "good");
    good.drain().await.expect("drain");
}

/// An enrollment-ALPN client pinned to this cluster's CA, as `d8 join` makes.
fn enroll_tls(c: &TestCluster) -> rustls::ClientConfig {
    tls::enroll_client_config(c.orch().ca_digest()).expect("tls")
}

#[tokio::test]
async fn an_oversized_enrollment_frame_is_refused_at_once() {
    // Before: the orchestrator allocated and waited for up to 8 MiB from
    // anyone (24 such connections took it from 29 to 226 MB), until the
    // 10 s enrollment timeout.
    let c = TestCluster::start().await;
    let conn = raw_connect(&c, enroll_tls(&c)).await.expect("handshake");
    let (mut send, _recv) = conn.open_bi().await.expect("stream");
    // Announces 1 MiB and sends a little of it.
    send.write_all(&(1024u32 * 1024).to_be_bytes())
        .await
        .expect("prefix");
    send.write_all(&[0u8; 1024]).await.expect("some bytes");
    let closed = tokio::time::timeout(Duration::from_secs(3), conn.closed())
        .await
        .expect("closed well before the 10 s enrollment timeout");
    assert!(
        transport::explain(&closed).contains("bad enrollment request"),
        "{closed}"
    );
}

#[tokio::test]
async fn unauthenticated_connections_are_capped_and_a_worker_still_gets_in_after() {
    let c = TestCluster::start().await;
    // Hold more enrollment connections than the cap, each silent (the
    // orchestrator waits up to 10 s for its request).
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..(d8::node::gate::MAX_UNAUTHENTICATED + 4) {
        match raw_connect(&c, enroll_tls(&c)).await {
            Ok(conn) => held.push(conn),
            Err(e) => {
                assert!(
                    matches!(e, quinn::ConnectionError::ConnectionClosed(_)),
                    "refused, not timed out: {e}"
                );
                refused += 1;
            }
        }
    }
    assert_eq!(held.len(), d8::node::gate::MAX_UNAUTHENTICATED);
    assert_eq!(refused, 4);
    for conn in &held {
        conn.close(0u32.into(), b"done");
    }
    drop(held);
    // Places come back as the connections end; a real worker enrolls.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let w = c.spawn_worker(c.worker_config("late", 0, 1));
        tokio::time::sleep(Duration::from_millis(500)).await;
        if c.online().await == 1 {
            w.drain().await.expect("drain");
            break;
        }
        w.stop.cancel();
        assert!(
            std::time::Instant::now() < deadline,
            "the worker never got in"
        );
    }
}

#[tokio::test]
async fn a_worker_enrolling_while_the_store_fails_keeps_trying_and_gets_in() {
    // Before: the enrollment was refused for good ("could not record the
    // enrollment"), the worker exited, and the orchestrator's memory kept
    // the half-made enrollment (a token use, a worker id).
    let backend = std::sync::Arc::new(d8::store::MemBackend::default());
    let c = TestCluster::start_on(|_| {}, Some(backend.clone())).await;
    backend.set_failing(true);
    let w = c.spawn_worker(c.worker_config("patient", 0, 1));
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert!(!w.handle.is_finished(), "the worker keeps trying");
    backend.set_failing(false);
    c.wait_until(|s| s["workers"]["online"] == 1, "the worker enrolled")
        .await;
    let (_, workers) = c.request(Method::GET, "/api/workers", None).await;
    let ids: Vec<&str> = workers
        .as_array()
        .map(|a| a.iter().filter_map(|w| w["worker_id"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(
        ids,
        ["patient"],
        "no leftover from the failed tries: {workers}"
    );
    w.drain().await.expect("drain");
}

#[tokio::test]
async fn a_hello_with_an_oversized_name_is_refused_with_the_reason() {
    // Before: a 100 KB worker_type was accepted and repeated in every stats
    // answer.
    let c = TestCluster::start().await;
    let w = c.worker("verbose", 0, 1).await;
    let cfg = enrolled_identity(w).await;
    let conn = raw_connect(&c, cfg).await.expect("handshake");
    let (mut send, _recv) = conn.open_bi().await.expect("stream");
    let caps = d8::task::Capabilities {
        worker_type: "x".repeat(100_000),
        slots: 1,
        ..Default::default()
    };
    let hello = WorkerMsg::Hello(Hello {
        proto: d8::wire::PROTOCOL_VERSION,
        worker_id: "verbose".into(),
        caps,
    });
    transport::write_frame(&mut send, &hello)
        .await
        .expect("write");
    let closed = conn.closed().await;
    let text = transport::explain(&closed);
    assert!(
        text.contains("hello refused: its worker_type is 100000 bytes, at most 128"),
        "{text}"
    );
    assert_eq!(c.online().await, 0);
}

#[tokio::test]
async fn an_oversized_log_batch_is_cut_and_counted_and_the_worker_stays() {
    let c = TestCluster::start().await;
    let w = c.worker("noisy", 0, 1).await;
    let cfg = enrolled_identity(w).await;
    let conn = raw_connect(&c, cfg).await.expect("handshake");
    let (mut send, mut recv) = conn.open_bi().await.expect("stream");
    let hello = WorkerMsg::Hello(Hello {
        proto: d8::wire::PROTOCOL_VERSION,
        worker_id: "noisy".into(),
        caps: d8::task::Capabilities {
            worker_type: "echo".into(),
            slots: 1,
            ..Default::default()
        },
    });
    transport::write_frame(&mut send, &hello)
        .await
        .expect("write");
    let welcome: d8::wire::OrchMsg = transport::read_frame(&mut recv).await.expect("welcome");
    assert!(matches!(welcome, d8::wire::OrchMsg::Welcome { .. }));
    // 300 lines of 12 KB each: three times the batch limit, every part
    // far over its bound, and a line that claims to be the orchestrator's.
    let huge = "é".repeat(3_000);
    let lines = (0..300)
        .map(|i| d8::logging::LogLine {
            ts_ms: i,
            level: d8::logging::Level::Error,
            target: huge.clone(),
            message: format!("{i} {huge}"),
            fields: vec![("worker".into(), "orchestrator".into())],
        })
        .collect();
    transport::write_frame(&mut send, &WorkerMsg::Logs { lines, dropped: 5 })
        .await
        .expect("write");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let v = loop {
        let (status, v) = c
            .request(Method::GET, "/api/logs?worker=noisy&limit=10000", None)
            .await;
        assert_eq!(status, 200);
        if v["dropped"]["workers"]["noisy"].as_u64().is_some() {
            break v;
        }
        assert!(tokio::time::Instant::now() < deadline, "{v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let lines = v["lines"].as_array().expect("lines");
    assert_eq!(lines.len(), d8::wire::MAX_LOG_BATCH);
    assert_eq!(v["dropped"]["workers"]["noisy"], 200 + 5);
    for l in lines {
        assert_eq!(l["worker"], "noisy", "the certificate names the sender");
        assert!(l["message"].as_str().expect("m").len() <= d8::logging::line::MAX_MESSAGE);
        assert!(l["target"].as_str().expect("t").len() <= d8::logging::line::MAX_NAME);
    }
    assert_eq!(c.online().await, 1, "a noisy worker is still a worker");
    assert!(conn.close_reason().is_none());
}
