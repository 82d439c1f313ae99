//! Shared helpers: start orchestrators and workers, talk HTTP.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use d8::config::{OrchestratorConfig, WorkerConfig};
use d8::node::orchestrator::Orchestrator;
use d8::node::worker::{self, WorkerError};
use d8::providers::{Provider, ProviderSet, echo::Echo};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use super::loopback::{free_port, serve_on_loopback};

/// Logs from the code under test, shown for failing tests (`RUST_LOG` to tune).
#[allow(dead_code)]
pub fn init_tracing() {
    d8::ensure_crypto_provider();
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "d8=info".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_test_writer()
        .try_init();
}

/// An in-process orchestrator plus an HTTP client for it.
pub struct TestCluster {
    pub orch: Option<Orchestrator>,
    pub dir: tempfile::TempDir,
    pub http: reqwest::Client,
    pub base: String,
    pub key: String,
}

/// A running in-process worker.
pub struct TestWorker {
    pub handle: JoinHandle<Result<(), WorkerError>>,
    pub stop: CancellationToken,
    pub dir: PathBuf,
}

impl TestWorker {
    /// Drains and waits for the worker to finish.
    pub async fn drain(self) -> Result<(), WorkerError> {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(20), self.handle)
            .await
            .expect("worker drained in time")
            .expect("worker task")
    }
}

pub fn local_config(dir: &Path) -> OrchestratorConfig {
    OrchestratorConfig::local(dir.to_path_buf())
}

impl TestCluster {
    pub async fn start() -> TestCluster {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tune: impl FnOnce(&mut OrchestratorConfig)) -> TestCluster {
        Self::start_on(tune, None).await
    }

    /// Starts on the given store backend (default: redb in the temp dir).
    pub async fn start_on(
        tune: impl FnOnce(&mut OrchestratorConfig),
        backend: Option<Arc<dyn d8::store::Backend>>,
    ) -> TestCluster {
        init_tracing();
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cfg = local_config(&dir.path().join("orchestrator"));
        tune(&mut cfg);
        let orch = match backend {
            Some(b) => Orchestrator::start_with_backend(cfg, b).await,
            None => Orchestrator::start(cfg).await,
        }
        .expect("orchestrator starts");
        Self::adopt(orch, dir)
    }

    /// A handle on an orchestrator a test started itself, keeping `dir`.
    pub fn adopt(orch: Orchestrator, dir: tempfile::TempDir) -> TestCluster {
        let base = format!("http://{}", orch.http_addr());
        let key = orch.api_key().to_owned();
        TestCluster {
            orch: Some(orch),
            dir,
            http: reqwest::Client::new(),
            base,
            key,
        }
    }

    pub fn orch(&self) -> &Orchestrator {
        self.orch.as_ref().expect("running")
    }

    pub fn worker_config(&self, name: &str, echo_delay_ms: u64, slots: u32) -> WorkerConfig {
        let providers: Vec<Arc<dyn Provider>> = vec![Arc::new(Echo {
            delay: Duration::from_millis(echo_delay_ms),
            ..Echo::default()
        })];
        let mut cfg = WorkerConfig::local(
            self.dir.path().join(name),
            self.orch().quic_addr(),
            ProviderSet::new(providers),
        );
        cfg.token = Some(self.orch().join_token());
        cfg.worker_id = Some(name.to_owned());
        cfg.slots = slots;
        cfg
    }

    /// Spawns a worker whose one provider is a `kind` vendor at `base` with `key`.
    pub fn vendor_worker(&self, name: &str, kind: &str, key: &str, base: &str) -> TestWorker {
        let upper = kind.to_uppercase();
        let (key_var, url_var) = (format!("{upper}_API_KEY"), format!("{upper}_BASE_URL"));
        self.vendor_worker_with(name, kind, &[(&key_var, key), (&url_var, base)])
    }

    /// Spawns a worker whose one provider is built for `kind` from `vars`
    /// (as from the environment) plus a test key for vendors that need one.
    pub fn vendor_worker_with(&self, name: &str, kind: &str, vars: &[(&str, &str)]) -> TestWorker {
        let mut env: std::collections::HashMap<String, String> = [(
            format!("{}_API_KEY", kind.to_uppercase()),
            format!("test-key-{kind}-0123456789"),
        )]
        .into();
        env.extend(vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
        let client =
            d8::providers::VendorClient::new(d8::providers::ReadLimits::DEFAULT).expect("client");
        let p = d8::providers::build(kind, &env, None, Duration::ZERO, &client).expect("provider");
        let mut cfg = self.worker_config(name, 0, 4);
        cfg.providers = ProviderSet::new(vec![p]);
        self.spawn_worker(cfg)
    }

    pub fn spawn_worker(&self, cfg: WorkerConfig) -> TestWorker {
        let stop = CancellationToken::new();
        let dir = cfg.data_dir.clone();
        let handle = tokio::spawn(worker::run(cfg, stop.clone()));
        TestWorker { handle, stop, dir }
    }

    /// Starts an echo worker and waits until the orchestrator counts it online.
    pub async fn worker(&self, name: &str, echo_delay_ms: u64, slots: u32) -> TestWorker {
        let before = self.online().await;
        let w = self.spawn_worker(self.worker_config(name, echo_delay_ms, slots));
        self.wait_until(
            |s| s["workers"]["online"].as_u64() > Some(before),
            "worker online",
        )
        .await;
        w
    }

    pub async fn online(&self) -> u64 {
        self.stats().await["workers"]["online"]
            .as_u64()
            .unwrap_or(0)
    }

    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.key);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("http");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// An authorised `POST` of `body` as JSON to `path`.
    pub async fn post_json(&self, path: &str, body: &Value) -> reqwest::Response {
        self.http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.key)
            .json(body)
            .send()
            .await
            .expect("http")
    }

    pub async fn stats(&self) -> Value {
        let (s, v) = self
            .request(reqwest::Method::GET, "/api/workers/stats", None)
            .await;
        assert_eq!(s, 200, "{v}");
        v
    }

    /// Submits a chat task; returns its id.
    pub async fn submit(&self, content: &str, priority: u8) -> String {
        let (s, v) = self
            .request(
                reqwest::Method::POST,
                "/api/tasks",
                Some(chat(content, priority)),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        v["task_id"].as_str().expect("id").to_owned()
    }

    /// Long-polls a task until it is final (or panics after `secs`).
    pub async fn wait_task(&self, id: &str, secs: u64) -> Value {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let (s, v) = self
                .request(
                    reqwest::Method::GET,
                    &format!("/api/tasks/{id}?wait=2"),
                    None,
                )
                .await;
            assert_eq!(s, 200, "{v}");
            if matches!(
                v["status"].as_str(),
                Some("completed" | "failed" | "cancelled")
            ) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "task {id} not final after {secs}s: {v}"
            );
        }
    }

    /// Polls stats until `pred` holds (10 s max).
    /// Waits (10 s at most) until task `id` has `status`.
    pub async fn wait_until_task(&self, id: &str, status: &str) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let (_, t) = self
                .request(reqwest::Method::GET, &format!("/api/tasks/{id}"), None)
                .await;
            if t["status"] == status {
                return t;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "task {id} never {status}: {t}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn wait_until(&self, pred: impl Fn(&Value) -> bool, what: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let s = self.stats().await;
            if pred(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {s}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A `POST /api/tasks` body.
pub fn chat(content: &str, priority: u8) -> Value {
    json!({
        "type": "agent_action",
        "priority": priority,
        "data": { "messages": [ { "role": "user", "content": content } ] }
    })
}

/// Waits up to `secs` for `url` to answer 2xx; panics with the text of
/// `log` (the process's output) when it does not.
pub async fn wait_healthy(url: &str, log: &Path, secs: u64) {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !http
        .get(url)
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(
            Instant::now() < deadline,
            "{url} not healthy within {secs} s:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs a Python check script with `envs`, on loopback only whatever the
/// machine's proxy settings, for at most `secs`; prints its output and
/// fails unless it succeeded and said `all checks passed`.
pub async fn run_python_checks(
    python: &Path,
    script: &str,
    envs: &[(&str, &std::ffi::OsStr)],
    secs: u64,
) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join(script);
    let mut cmd = tokio::process::Command::new(python);
    cmd.arg(&script)
        .env("NO_PROXY", "*")
        .env_remove("HTTP_PROXY")
        .env_remove("HTTPS_PROXY")
        .env_remove("ALL_PROXY")
        .kill_on_drop(true);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(Duration::from_secs(secs), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{} did not finish in {secs} s", script.display()))
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "{} failed:\n{stdout}\n{stderr}",
        script.display()
    );
    assert!(stdout.contains("all checks passed"), "{stdout}");
}
