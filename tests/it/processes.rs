//! The real `d8` binary in child processes on loopback: crashes (SIGKILL),
//! restarts, the CLI, and secrets in output.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::process::{Child, Command};

use super::harness::{chat, free_port, init_tracing, wait_healthy};

const BIN: &str = env!("CARGO_BIN_EXE_d8");

pub(super) struct Proc {
    pub(super) child: Child,
    log: PathBuf,
}

fn spawn(args: &[&str], log: &Path, envs: &[(&str, &str)]) -> Proc {
    let out = std::fs::File::create(log).expect("log file");
    let err = out.try_clone().expect("log clone");
    spawn_to(args, log, envs, Stdio::from(out), Stdio::from(err))
}

/// [`spawn`] with stdout and stderr of the caller's choosing; `log` is where
/// a failing test looks.
fn spawn_to(args: &[&str], log: &Path, envs: &[(&str, &str)], out: Stdio, err: Stdio) -> Proc {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env("D8_LOG", "d8=debug")
        .env_remove("D8_TOKEN")
        .env_remove("D8_API_KEY")
        .stdout(out)
        .stderr(err)
        .kill_on_drop(true);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    Proc {
        child: cmd.spawn().expect("spawn d8"),
        log: log.to_path_buf(),
    }
}

/// A cluster of real `d8` processes on loopback.
pub(super) struct ProcCluster {
    dir: tempfile::TempDir,
    port: u16,
    orch: Option<Proc>,
    pub(super) workers: Vec<Proc>,
    http: reqwest::Client,
    pub(super) key: String,
    token: String,
    stderr: Option<fn() -> Stdio>,
}

impl ProcCluster {
    pub(super) async fn start() -> ProcCluster {
        Self::start_with_stderr(None).await
    }

    /// Starts with the orchestrator's stderr going to `stderr` (default: its
    /// log file, like stdout).
    async fn start_with_stderr(stderr: Option<fn() -> Stdio>) -> ProcCluster {
        init_tracing();
        let dir = tempfile::tempdir().expect("tempdir");
        let mut c = ProcCluster {
            dir,
            port: free_port(),
            orch: None,
            workers: Vec::new(),
            http: reqwest::Client::new(),
            key: String::new(),
            token: String::new(),
            stderr,
        };
        c.start_orchestrator().await;
        c
    }

    fn odir(&self) -> PathBuf {
        self.dir.path().join("orchestrator")
    }

    async fn start_orchestrator(&mut self) {
        let n = std::fs::read_dir(self.dir.path())
            .map(|d| d.count())
            .unwrap_or(0);
        let log = self.dir.path().join(format!("serve-{n}.log"));
        let port = self.port.to_string();
        let odir = self.odir();
        let out = std::fs::File::create(&log).expect("log file");
        let err = match self.stderr {
            Some(make) => make(),
            None => Stdio::from(out.try_clone().expect("log clone")),
        };
        let p = spawn_to(
            &[
                "serve",
                "--no-mdns",
                "--bind",
                "127.0.0.1",
                "--port",
                &port,
                "--heartbeat",
                "200ms",
                "--dead-after",
                "1s",
                "--data-dir",
                odir.to_str().expect("utf8"),
            ],
            &log,
            &[],
            Stdio::from(out),
            err,
        );
        self.orch = Some(p);
        wait_healthy(&self.url("/health"), &log, 20).await;
        self.key = std::fs::read_to_string(self.odir().join("api-key"))
            .expect("api-key")
            .trim()
            .to_owned();
        self.token = std::fs::read_to_string(self.odir().join("join-token"))
            .expect("token")
            .trim()
            .to_owned();
    }

    fn add_worker(&mut self, name: &str, extra: &[&str]) {
        self.add_worker_with(name, &["--provider", "echo"], extra, &[]);
    }

    /// A worker with explicit provider flags and extra environment.
    pub(super) fn add_worker_with(
        &mut self,
        name: &str,
        providers: &[&str],
        extra: &[&str],
        envs: &[(&str, &str)],
    ) {
        let log = self.dir.path().join(format!("{name}.log"));
        let wdir = self.dir.path().join(name);
        let addr = format!("127.0.0.1:{}", self.port);
        let mut args = vec![
            "join",
            &addr,
            "--worker-id",
            name,
            "--data-dir",
            wdir.to_str().expect("utf8"),
        ];
        args.extend_from_slice(providers);
        args.extend_from_slice(extra);
        let token = self.token.clone();
        let mut all = vec![("D8_TOKEN", token.as_str())];
        all.extend_from_slice(envs);
        self.workers.push(spawn(&args, &log, &all));
    }

    pub(super) fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub(super) async fn get(&self, path: &str) -> Value {
        self.http
            .get(self.url(path))
            .bearer_auth(&self.key)
            .send()
            .await
            .expect("http")
            .json()
            .await
            .expect("json")
    }

    /// Submits a chat task; returns its id.
    async fn submit(&self, content: &str) -> String {
        self.submit_json(&chat(content, 5)).await
    }

    /// Submits a task body; its id.
    async fn submit_json(&self, body: &Value) -> String {
        let v: Value = self
            .http
            .post(self.url("/api/tasks"))
            .bearer_auth(&self.key)
            .json(body)
            .send()
            .await
            .expect("http")
            .json()
            .await
            .expect("json");
        v["task_id"].as_str().expect("id").to_owned()
    }

    pub(super) async fn wait_online(&self, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.get("/api/workers/stats").await["workers"]["online"].as_u64() != Some(n) {
            assert!(Instant::now() < deadline, "{n} workers not online");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn all_logs(&self) -> String {
        let mut s = String::new();
        for p in self.orch.iter().chain(&self.workers) {
            s.push_str(&std::fs::read_to_string(&p.log).unwrap_or_default());
        }
        for e in std::fs::read_dir(self.dir.path()).expect("dir").flatten() {
            if e.path().extension().is_some_and(|x| x == "log") {
                s.push_str(&std::fs::read_to_string(e.path()).unwrap_or_default());
            }
        }
        s
    }

    async fn cli(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(BIN)
            .args(args)
            .env("D8_URL", self.url(""))
            .env("D8_DATA_DIR", self.odir())
            .env("D8_LOG", "warn")
            .output()
            .await
            .expect("run d8");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

#[tokio::test]
async fn worker_killed_mid_task_is_detected_and_its_task_completes_elsewhere() {
    let mut c = ProcCluster::start().await;
    c.add_worker("victim", &["--echo-delay-ms", "60000", "--slots", "1"]);
    c.wait_online(1).await;
    let id = c.submit("do not lose me").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.get(&format!("/api/tasks/{id}")).await["status"] != "assigned" {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    c.add_worker("rescuer", &["--slots", "1"]);
    c.wait_online(2).await;
    // SIGKILL: no goodbye on the wire; only missed heartbeats reveal it.
    let t0 = Instant::now();
    c.workers[0].child.kill().await.expect("kill");
    let t = c.get(&format!("/api/tasks/{id}?wait=15")).await;
    let took = t0.elapsed();
    assert_eq!(t["status"], "completed", "{t}");
    assert_eq!(t["worker_id"], "rescuer");
    assert!(took < Duration::from_secs(5), "re-queued after {took:?}");
    eprintln!("killed worker's task completed elsewhere {took:?} after the kill");
}

#[tokio::test]
async fn orchestrator_killed_mid_load_loses_no_accepted_task() {
    let mut c = ProcCluster::start().await;
    c.add_worker("w1", &["--echo-delay-ms", "5", "--slots", "8"]);
    c.add_worker("w2", &["--echo-delay-ms", "5", "--slots", "8"]);
    c.wait_online(2).await;
    let accepted = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let submitter = {
        let http = c.http.clone();
        let url = c.url("/api/tasks/batch");
        let key = c.key.clone();
        let accepted = accepted.clone();
        tokio::spawn(async move {
            for round in 0..400 {
                let batch: Vec<Value> = (0..10)
                    .map(|i| chat(&format!("r{round} t{i}"), (i % 10 + 1) as u8))
                    .collect();
                let Ok(resp) = http.post(&url).bearer_auth(&key).json(&batch).send().await else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                if resp.status().as_u16() == 201
                    && let Ok(ids) = resp.json::<Vec<String>>().await
                {
                    accepted.lock().expect("lock").extend(ids);
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(400)).await;
    let mut orch = c.orch.take().expect("orch");
    orch.child.kill().await.expect("SIGKILL");
    let killed_with = accepted.lock().expect("lock").len();
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.start_orchestrator().await;
    submitter.await.expect("submitter");
    let ids = accepted.lock().expect("lock").clone();
    assert!(
        killed_with > 0 && ids.len() > killed_with,
        "load ran across the restart ({killed_with} then {})",
        ids.len()
    );
    assert_eq!(
        ids.iter().collect::<HashSet<_>>().len(),
        ids.len(),
        "ids never reused"
    );
    c.wait_online(2).await;
    for id in &ids {
        let t = c.get(&format!("/api/tasks/{id}?wait=30")).await;
        assert_eq!(t["status"], "completed", "task {id}: {t}");
    }
    // A batch committed just before the kill may never have been acknowledged;
    // it must still complete, once. So count every task that exists.
    let max_id = ids
        .iter()
        .filter_map(|i| i.parse::<u64>().ok())
        .max()
        .unwrap_or(0);
    let mut existing = 0u64;
    for id in 1..=max_id + 50 {
        let resp = c
            .http
            .get(c.url(&format!("/api/tasks/{id}?wait=30")))
            .bearer_auth(&c.key)
            .send()
            .await
            .expect("http");
        if resp.status().as_u16() == 404 {
            continue;
        }
        let t: Value = resp.json().await.expect("json");
        assert_eq!(t["status"], "completed", "task {id}: {t}");
        existing += 1;
    }
    let stats = c.get("/api/workers/stats").await;
    assert_eq!(
        stats["tasks"]["completed"].as_u64(),
        Some(existing),
        "each task completed exactly once: {stats}"
    );
    assert!(existing >= ids.len() as u64);
    assert_eq!(stats["tasks"]["pending"], 0);
    eprintln!(
        "{} tasks accepted ({killed_with} before the SIGKILL), all completed once",
        ids.len()
    );
}

#[tokio::test]
async fn cli_commands_and_secrets_stay_out_of_logs() {
    let mut c = ProcCluster::start().await;
    c.add_worker("cli-w", &[]);
    c.wait_online(1).await;
    // Centralized logs: the worker's own lines come over QUIC (with its
    // next heartbeat), next to the orchestrator's, each marked with where
    // it came from.
    let deadline = Instant::now() + Duration::from_secs(10);
    let logs_out = loop {
        let (ok, out, err) = c.cli(&["logs"]).await;
        assert!(ok, "{err}");
        if out
            .lines()
            .any(|l| l.contains("[cli-w]") && l.contains("connected to the orchestrator"))
        {
            break out;
        }
        assert!(Instant::now() < deadline, "no forwarded worker line: {out}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        logs_out
            .lines()
            .any(|l| l.contains("[orchestrator]") && l.contains("orchestrator up")),
        "{logs_out}"
    );

    let (ok, out, err) = c.cli(&["status"]).await;
    assert!(ok, "{err}");
    assert!(out.contains("cli-w") && out.contains("online"), "{out}");

    let (ok, out, err) = c
        .cli(&["token", "create", "--ttl", "1h", "--max-uses", "2"])
        .await;
    assert!(ok, "{err}");
    let extra = out.trim().to_owned();
    assert!(extra.starts_with("D8-1-"), "{out}");
    let (ok, out, _) = c.cli(&["token", "list"]).await;
    assert!(
        ok && out.contains("extra") && out.contains("default"),
        "{out}"
    );
    assert!(
        !out.contains(&extra[extra.len() - 32..]),
        "list never shows secrets"
    );
    let extra_id = out
        .lines()
        .find(|l| l.contains("extra"))
        .and_then(|l| l.split_whitespace().next())
        .expect("id")
        .to_owned();
    let (ok, _, err) = c.cli(&["token", "revoke", &extra_id]).await;
    assert!(ok, "{err}");
    let (ok, _, err) = c.cli(&["token", "revoke", "doesnotexist"]).await;
    assert!(!ok && err.contains("404"), "{err}");

    let (ok, out, _) = c.cli(&["workers", "list"]).await;
    assert!(ok && out.contains("cli-w"), "{out}");
    let (ok, _, err) = c.cli(&["workers", "revoke", "cli-w"]).await;
    assert!(ok, "{err}");
    let status = tokio::time::timeout(Duration::from_secs(10), c.workers[0].child.wait())
        .await
        .expect("revoked worker exits")
        .expect("wait");
    assert!(!status.success(), "a revoked worker exits with an error");

    let (ok, new_token, err) = c.cli(&["token", "rotate"]).await;
    assert!(ok, "{err}");

    let (ok, out, err) = c
        .cli(&["logs", "--worker", "cli-w", "--level", "info", "--json"])
        .await;
    assert!(ok, "{err}");
    let parsed: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert!(
        !parsed.is_empty() && parsed.iter().all(|v| v["worker"] == "cli-w"),
        "{out}"
    );
    let (ok, _, err) = c.cli(&["logs", "--level", "loud"]).await;
    assert!(!ok && err.contains("level"), "{err}");

    // Unreachable orchestrator: a clear error, non-zero exit.
    let out = Command::new(BIN)
        .args(["status", "--url", "http://127.0.0.1:9", "--api-key", "x"])
        .output()
        .await
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the orchestrator"));

    // Secrets: key files are private, and no log line carries a secret.
    #[cfg(unix)]
    for f in ["api-key", "join-token", "ca.key", "orchestrator.key"] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(c.odir().join(f))
            .expect(f)
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{f}");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(c.dir.path().join("cli-w/worker.key"))
            .expect("key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let mut logs = c.all_logs();
    // Forwarded and kept lines are output too.
    logs.push_str(&logs_out);
    logs.push_str(&c.cli(&["logs", "--json"]).await.1);
    let secret = |t: &str| t.rsplit('-').next().expect("secret").trim().to_owned();
    // The serve banner prints the token and key on purpose (stdout, once);
    // strip it and check that nothing else ever does.
    let without_banner: String = logs
        .lines()
        .filter(|l| {
            !l.contains("join token ")
                && !l.contains("HTTP API key")
                && !l.contains("on each worker:")
        })
        .collect::<Vec<_>>()
        .join("\n");
    for s in [
        secret(&c.token),
        secret(&extra),
        secret(&new_token),
        c.key.clone(),
    ] {
        assert!(
            !without_banner.contains(&s),
            "secret {}… leaked into logs",
            &s[..4]
        );
    }
    let ca_key = std::fs::read_to_string(c.odir().join("ca.key")).expect("ca key");
    let body: String = ca_key.lines().filter(|l| !l.starts_with("-----")).collect();
    assert!(!logs.contains(&body[..40]));
}

#[cfg(unix)]
#[tokio::test]
async fn sigint_drains_the_worker_and_stops_the_orchestrator_cleanly() {
    let mut c = ProcCluster::start().await;
    c.add_worker("gentle", &["--echo-delay-ms", "700", "--slots", "1"]);
    c.wait_online(1).await;
    let id = c.submit("in flight").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let pid = c.workers[0].child.id().expect("pid").to_string();
    let sent = Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .await
        .expect("kill");
    assert!(sent.success());
    let status = tokio::time::timeout(Duration::from_secs(10), c.workers[0].child.wait())
        .await
        .expect("worker exits after draining")
        .expect("wait");
    assert!(status.success(), "drained worker exits 0");
    let t = c.get(&format!("/api/tasks/{id}")).await;
    assert_eq!(
        (t["status"].as_str(), t["worker_id"].as_str()),
        (Some("completed"), Some("gentle")),
        "{t}"
    );

    let orch = c.orch.as_mut().expect("orch");
    let pid = orch.child.id().expect("pid").to_string();
    Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .await
        .expect("kill");
    let status = tokio::time::timeout(Duration::from_secs(10), orch.child.wait())
        .await
        .expect("orchestrator stops")
        .expect("wait");
    assert!(status.success());
}

#[tokio::test]
async fn a_stop_request_file_stops_the_orchestrator_cleanly_and_a_stale_one_is_ignored() {
    // How the desktop app stops the cluster it started, on every OS.
    init_tracing();
    let dir = tempfile::tempdir().expect("tempdir");
    let odir = dir.path().join("orchestrator");
    std::fs::create_dir_all(&odir).expect("mkdir");
    let request = odir.join("stop-request");
    std::fs::write(&request, b"").expect("stale request");
    let port = free_port().to_string();
    let log = dir.path().join("serve.log");
    let mut p = spawn(
        &[
            "serve",
            "--no-mdns",
            "--bind",
            "127.0.0.1",
            "--port",
            &port,
            "--data-dir",
            odir.to_str().expect("utf8"),
        ],
        &log,
        &[],
    );
    wait_healthy(&format!("http://127.0.0.1:{port}/health"), &log, 20).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        p.child.try_wait().expect("try_wait").is_none(),
        "a request from before the start stops nothing"
    );
    assert!(!request.exists(), "the stale request is removed");
    std::fs::write(&request, b"").expect("request");
    let status = tokio::time::timeout(Duration::from_secs(10), p.child.wait())
        .await
        .expect("the orchestrator stops within seconds")
        .expect("wait");
    assert!(status.success(), "a clean stop exits 0");
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(
        text.contains("stop requested through the data dir"),
        "{text}"
    );
    assert!(!request.exists(), "the request is consumed");
}

#[tokio::test]
async fn original_environment_variables_and_dotenv_configure_a_worker() {
    let c = ProcCluster::start().await;
    // The original project's worker variables, from a `.env` in the working directory.
    let wdir = c.dir.path().join("envworker");
    std::fs::create_dir_all(&wdir).expect("dir");
    let dotenv = format!(
        "ORCHESTRATOR_URL=http://127.0.0.1:{port}\nWORKER_ID=legacy-box\nWORKER_TYPE=deepseek_gpu\nPOLL_INTERVAL=5\nD8_PROVIDERS=echo\nD8_TOKEN={token}\nD8_DATA_DIR={dir}\n",
        port = c.port,
        token = c.token,
        dir = wdir.join("data").display(),
    );
    std::fs::write(wdir.join(".env"), dotenv).expect("write .env");
    let log = std::fs::File::create(c.dir.path().join("envworker.log")).expect("log");
    let mut child = Command::new(BIN)
        .arg("join")
        .current_dir(&wdir)
        .env_remove("D8_TOKEN")
        .env_remove("D8_DATA_DIR")
        .env("D8_LOG", "d8=info")
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .spawn()
        .expect("spawn");
    c.wait_online(1).await;
    let workers = c.get("/api/workers").await;
    assert_eq!(workers[0]["worker_id"], "legacy-box", "{workers}");
    assert_eq!(workers[0]["worker_type"], "deepseek_gpu");
    // deepseek_gpu may run code generation under the original routing.
    let id = c
        .submit_json(&serde_json::json!({"type": "code_generation", "data": {"messages": [{"role": "user", "content": "fn main"}]}}))
        .await;
    let t = c.get(&format!("/api/tasks/{id}?wait=10")).await;
    assert_eq!(t["worker_id"], "legacy-box", "{t}");
    let logged = std::fs::read_to_string(c.dir.path().join("envworker.log")).expect("log");
    assert!(logged.contains("POLL_INTERVAL is ignored"), "{logged}");
    let _ = child.kill().await;
}

#[tokio::test]
async fn vendor_keys_stay_on_their_worker_and_429s_route_around() {
    use super::fakes::{FakeOpenAi, Mode};
    let limited = FakeOpenAi::start(Mode::RateLimited {
        retry_after_secs: 30,
    })
    .await;
    let fresh = FakeOpenAi::start(Mode::Ok).await;
    let key_limited = "gsk_limited_0123456789abcdef";
    let key_fresh = "gsk_fresh_0123456789abcdefgh";
    let mut c = ProcCluster::start().await;
    c.add_worker_with(
        "limited",
        &["--provider", "groq"],
        &[],
        &[
            ("GROQ_API_KEY", key_limited),
            ("GROQ_BASE_URL", &limited.base),
        ],
    );
    c.wait_online(1).await;
    let first = c.submit("before the fresh worker exists").await;
    c.add_worker_with(
        "fresh",
        &["--provider", "groq"],
        &[],
        &[("GROQ_API_KEY", key_fresh), ("GROQ_BASE_URL", &fresh.base)],
    );
    c.wait_online(2).await;
    let mut ids = vec![first];
    for i in 0..8 {
        ids.push(c.submit(&format!("task {i}")).await);
    }
    let mut answers = Vec::new();
    for id in &ids {
        let t = c.get(&format!("/api/tasks/{id}?wait=20")).await;
        assert_eq!(t["status"], "completed", "{t}");
        assert_eq!(t["worker_id"], "fresh", "{t}");
        assert_eq!(t["result"]["provider"], "groq");
        answers.push(t.to_string());
    }
    let stats = c.get("/api/workers/stats").await;
    assert_eq!(
        stats["tasks"]["failed"], 0,
        "429s never fail a task: {stats}"
    );
    // The limited worker was asked once, answered 429, and then cooled down.
    assert_eq!(limited.calls(), 1, "a cooling worker gets no more tasks");
    // Each key went only to its own vendor.
    assert!(
        limited
            .auth_headers()
            .iter()
            .all(|h| h == &format!("Bearer {key_limited}"))
    );
    assert!(
        fresh
            .auth_headers()
            .iter()
            .all(|h| h == &format!("Bearer {key_fresh}"))
    );
    // And no key appears in any log or API answer.
    let workers = c.get("/api/workers").await.to_string();
    let mut everything = c.all_logs();
    everything.push_str(&workers);
    everything.push_str(&stats.to_string());
    everything.push_str(&answers.join("\n"));
    // Lines the workers forwarded (the 429 warnings among them).
    everything.push_str(&c.get("/api/logs?limit=10000").await.to_string());
    for key in [key_limited, key_fresh] {
        assert!(!everything.contains(key), "a provider key leaked");
        assert!(
            !everything.contains(&key[4..20]),
            "part of a provider key leaked"
        );
    }
}

#[tokio::test]
async fn three_keys_with_different_quotas_share_the_work_without_failures() {
    use super::fakes::{FakeOpenAi, Mode};
    let small = FakeOpenAi::start(Mode::Quota {
        allow: 2,
        retry_after_secs: 60,
    })
    .await;
    let medium = FakeOpenAi::start(Mode::Quota {
        allow: 5,
        retry_after_secs: 60,
    })
    .await;
    let large = FakeOpenAi::start(Mode::Ok).await;
    let mut c = ProcCluster::start().await;
    for (name, fake, key) in [
        ("small", &small, "gsk_small_0123456789abcdef"),
        ("medium", &medium, "gsk_medium_0123456789abcdef"),
        ("large", &large, "gsk_large_0123456789abcdef"),
    ] {
        c.add_worker_with(
            name,
            &["--provider", "groq"],
            &["--slots", "1"],
            &[("GROQ_API_KEY", key), ("GROQ_BASE_URL", &fake.base)],
        );
    }
    c.wait_online(3).await;
    // One attempt each: a 429 that counted as an attempt would fail the task.
    let body: Vec<Value> = (0..20)
        .map(|i| serde_json::json!({"type": "agent_action", "max_attempts": 1, "data": {"messages": [{"role": "user", "content": format!("q{i}")}]}}))
        .collect();
    let ids: Vec<String> = c
        .http
        .post(c.url("/api/tasks/batch"))
        .bearer_auth(&c.key)
        .json(&body)
        .send()
        .await
        .expect("http")
        .json()
        .await
        .expect("ids");
    let mut per_worker = std::collections::BTreeMap::<String, usize>::new();
    for id in &ids {
        let t = c.get(&format!("/api/tasks/{id}?wait=30")).await;
        assert_eq!(t["status"], "completed", "{t}");
        *per_worker
            .entry(t["worker_id"].as_str().expect("worker").to_owned())
            .or_default() += 1;
    }
    // Each key served exactly its quota; the rest went around the 429s.
    assert_eq!(per_worker.get("small"), Some(&2), "{per_worker:?}");
    assert_eq!(per_worker.get("medium"), Some(&5), "{per_worker:?}");
    assert_eq!(per_worker.get("large"), Some(&13), "{per_worker:?}");
    assert_eq!(
        (small.calls(), medium.calls()),
        (3, 6),
        "one 429 each, then a cooldown"
    );
    let stats = c.get("/api/workers/stats").await;
    assert_eq!(stats["tasks"]["failed"], 0, "{stats}");
}

/// Every write fails with ENOSPC, as on a full disk.
#[cfg(target_os = "linux")]
fn full_disk() -> Stdio {
    Stdio::from(
        std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .expect("/dev/full"),
    )
}

/// Every write fails with EPIPE: nobody reads the other end.
fn closed_pipe() -> Stdio {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    Stdio::from(writer)
}

#[tokio::test]
async fn a_log_that_cannot_be_written_stops_nothing() {
    // Before: tracing-subscriber reported the failed write with eprintln!,
    // which panicked on the same stderr and killed whichever thread was
    // logging (the store writer every time, the scheduler sometimes) while
    // /health said ok.
    type MakeStderr = fn() -> Stdio;
    let cases: &[(&str, MakeStderr)] = &[
        ("a closed pipe", closed_pipe),
        #[cfg(target_os = "linux")]
        ("a full disk", full_disk),
    ];
    for &(what, stderr) in cases {
        let mut c = ProcCluster::start_with_stderr(Some(stderr)).await;
        c.add_worker("w", &["--slots", "4"]);
        c.wait_online(1).await;
        let mut ids = Vec::new();
        for i in 0..20 {
            ids.push(c.submit(&format!("task {i}")).await);
        }
        for id in &ids {
            let t = c.get(&format!("/api/tasks/{id}?wait=15")).await;
            assert_eq!(t["status"], "completed", "with {what}: {t}");
        }
        let health = c.get("/health").await;
        assert_eq!(health["status"], "ok", "with {what}: {health}");
        assert!(
            health["log_lines_dropped"].as_u64() > Some(0),
            "with {what}, lines were dropped and counted: {health}"
        );
        let orch = c.orch.as_mut().expect("orchestrator");
        assert!(
            orch.child.try_wait().expect("wait").is_none(),
            "with {what}, the orchestrator is still running"
        );
    }
}

/// Runs `sh -c script` in the mount namespace of process `pid`.
#[cfg(target_os = "linux")]
fn in_mount_ns(pid: u32, script: &str) -> std::process::Output {
    std::process::Command::new("nsenter")
        .args([
            "--target",
            &pid.to_string(),
            "--mount",
            "--",
            "sh",
            "-c",
            script,
        ])
        .output()
        .expect("nsenter")
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_full_disk_degrades_the_orchestrator_and_it_recovers_by_itself() {
    // Before: after one ENOSPC redb refused every later write ("Previous
    // I/O error occurred. Please close and re-open the database"); with
    // space back, submits stayed 503 until a restart.
    init_tracing();
    let tmp = tempfile::tempdir().expect("tempdir");
    let can_mount = std::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
        .arg(format!(
            "mount -t tmpfs -o size=1m d8probe {}",
            tmp.path().display()
        ))
        .status()
        .is_ok_and(|s| s.success());
    if !can_mount {
        eprintln!("skipped: needs root to mount a tmpfs in a private mount namespace");
        return;
    }
    let disk = tmp.path().join("disk");
    std::fs::create_dir(&disk).expect("mkdir");
    let data = disk.join("o");
    let port = free_port();
    let log = tmp.path().join("serve.log");
    // A 4 MiB tmpfs over `disk`, seen only by the orchestrator's namespace.
    // Its log goes to the same small disk: both fill up together.
    let script = format!(
        "mount -t tmpfs -o size=4m d8test {disk} && exec {BIN} serve --no-mdns --bind 127.0.0.1 --port {port} --data-dir {data} 2>{disk}/serve.err",
        disk = disk.display(),
        data = data.display(),
    );
    let out = std::fs::File::create(&log).expect("log");
    let err = out.try_clone().expect("log");
    let mut orch = Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            &script,
        ])
        .env("D8_LOG", "d8=info")
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .kill_on_drop(true)
        .spawn()
        .expect("spawn");
    let pid = orch.id().expect("pid");
    let http = reqwest::Client::new();
    let url = |p: &str| format!("http://127.0.0.1:{port}{p}");
    wait_healthy(&url("/health"), &log, 20).await;
    let read = |f: &str| {
        let o = in_mount_ns(pid, &format!("cat {}/{f}", data.display()));
        String::from_utf8_lossy(&o.stdout).trim().to_owned()
    };
    let (key, token) = (read("api-key"), read("join-token"));
    let wlog = tmp.path().join("w.log");
    let wdir = tmp.path().join("w");
    let addr = format!("127.0.0.1:{port}");
    let _worker = spawn(
        &[
            "join",
            &addr,
            "--provider",
            "echo",
            "--data-dir",
            wdir.to_str().expect("utf8"),
        ],
        &wlog,
        &[("D8_TOKEN", token.as_str())],
    );
    let submit = |content: &'static str| {
        let req = http
            .post(url("/api/tasks"))
            .bearer_auth(&key)
            .json(&chat(content, 5));
        async move {
            let r = req.send().await.expect("http");
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let get = |path: String| {
        let req = http.get(url(&path)).bearer_auth(&key);
        async move {
            let r = req.send().await.expect("http");
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let (s, v) = submit("before").await;
    assert_eq!(s, 201, "{v}");
    let id = v["task_id"].as_str().expect("id").to_owned();
    let (_, t) = get(format!("/api/tasks/{id}?wait=15")).await;
    assert_eq!(
        t["status"],
        "completed",
        "{t}\n{}",
        std::fs::read_to_string(&wlog).unwrap_or_default()
    );

    // Fill the disk.
    let fill = format!(
        "dd if=/dev/zero of={}/fill bs=64k 2>/dev/null; true",
        disk.display()
    );
    in_mount_ns(pid, &fill);
    // While the disk is full, writes fail: submissions are refused and the
    // orchestrator says it is degraded. redb may still commit into pages its
    // file already has free, so one write can succeed in between (ending
    // degraded mode until the next fails): keep writing until all three are
    // seen together.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut refused = 0;
    let shown = loop {
        let (s, _) = submit("during").await;
        if s == 503 {
            refused += 1;
        }
        let (hs, h) = get("/health".into()).await;
        if refused > 0 && (hs, h["status"].as_str()) == (503, Some("degraded")) {
            let status = Command::new(BIN)
                .args(["status", "--url", &url(""), "--api-key", &key])
                .output()
                .await
                .expect("d8 status");
            let shown = String::from_utf8_lossy(&status.stdout).into_owned();
            if shown.contains("DEGRADED") {
                break shown;
            }
        }
        assert!(
            Instant::now() < deadline,
            "never refused ({refused}) and degraded together with the disk full: {h}"
        );
    };
    assert!(
        shown.contains("No space left on device"),
        "d8 status says why: {shown}"
    );

    // Room again: it recovers without a restart.
    in_mount_ns(pid, &format!("rm -f {}/fill", disk.display()));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (s, h) = get("/health".into()).await;
        if s == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still degraded with space back: {h}\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (s, v) = submit("after").await;
    assert_eq!(s, 201, "accepting again: {v}");
    let id = v["task_id"].as_str().expect("id").to_owned();
    let (_, t) = get(format!("/api/tasks/{id}?wait=15")).await;
    assert_eq!(t["status"], "completed", "{t}");
    assert!(orch.try_wait().expect("wait").is_none(), "still running");
    let logged = read("../serve.err");
    assert!(
        logged.contains("store writes succeed again"),
        "the log works again too:\n{logged}"
    );
    assert!(
        logged.matches("store writes fail").count() <= 2,
        "the failure is logged once, not per write:\n{logged}"
    );
    // Whether a line was dropped depends on how full the last page was;
    // the /dev/full test covers dropped lines.
}

#[tokio::test]
async fn a_backup_taken_while_serving_holds_the_cluster_and_restores() {
    let mut c = ProcCluster::start().await;
    c.add_worker("w", &[]);
    c.wait_online(1).await;
    let id = c.submit("kept").await;
    let t = c.get(&format!("/api/tasks/{id}?wait=15")).await;
    assert_eq!(t["status"], "completed", "{t}");
    // One that waits: no worker is left to take it.
    for w in &mut c.workers {
        w.child.kill().await.expect("kill worker");
    }
    c.wait_online(0).await;
    let pending = c.submit("later").await;
    let out = c.dir.path().join("saved.redb");
    let (ok, stdout, stderr) = c.cli(&["backup", out.to_str().expect("utf8")]).await;
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.contains("backup written"), "{stdout}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&out).expect("file").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "owner only");
    }
    let leftovers: Vec<_> = std::fs::read_dir(c.odir())
        .expect("dir")
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(d8::node::files::BACKUP_PREFIX)
        })
        .collect();
    assert!(leftovers.is_empty(), "the server's copy is removed");

    // Restore: stop, put the copy in place, start.
    let mut orch = c.orch.take().expect("orch");
    orch.child.kill().await.expect("kill");
    std::fs::copy(&out, c.odir().join("d8.redb")).expect("restore");
    // What a crash in the middle of a backup leaves: removed at start.
    let stale = c
        .odir()
        .join(format!("{}crashed.redb", d8::node::files::BACKUP_PREFIX));
    std::fs::write(&stale, b"half a copy").expect("stale");
    c.start_orchestrator().await;
    assert!(!stale.exists(), "a stale backup is removed at start");
    let t = c.get(&format!("/api/tasks/{id}")).await;
    assert_eq!(t["status"], "completed", "the result came back: {t}");
    assert_eq!(t["result"]["content"], "kept");
    let p = c.get(&format!("/api/tasks/{pending}")).await;
    assert_eq!(p["status"], "pending", "the waiting task came back: {p}");
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn an_idle_connection_flood_at_a_low_descriptor_limit_locks_no_one_out() {
    // Before: 1,050 idle connections took every descriptor of an
    // orchestrator at systemd's default limit (1,024) and every legitimate
    // request failed for as long as they were held.
    init_tracing();
    let tmp = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let log = tmp.path().join("serve.log");
    let data = tmp.path().join("o");
    let script = format!(
        "ulimit -n 400 && exec {BIN} serve --no-mdns --bind 127.0.0.1 --port {port} --data-dir {}",
        data.display()
    );
    let out = std::fs::File::create(&log).expect("log");
    let err = out.try_clone().expect("log");
    let _orch = Command::new("sh")
        .args(["-c", &script])
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .kill_on_drop(true)
        .spawn()
        .expect("spawn");
    let health = format!("http://127.0.0.1:{port}/health");
    wait_healthy(&health, &log, 20).await;
    // 500 silent connections from another loopback address: more than the
    // orchestrator's 400 descriptors.
    let target: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    // Linux routes all of 127/8 to loopback; a host whose loopback has only
    // 127.0.0.1 cannot run this test.
    let probe = tokio::net::TcpSocket::new_v4().expect("socket");
    if probe.bind(([127, 0, 0, 2], 0).into()).is_err() {
        eprintln!("skipped: 127.0.0.2 is not a local address here");
        return;
    }
    drop(probe);
    let mut flood = Vec::new();
    for _ in 0..500 {
        let s = tokio::net::TcpSocket::new_v4().expect("socket");
        s.bind(([127, 0, 0, 2], 0).into()).expect("bind 127.0.0.2");
        if let Ok(c) = s.connect(target).await {
            flood.push(c);
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A client from elsewhere still gets in, at once.
    let fresh = reqwest::Client::new();
    let t0 = Instant::now();
    let r = fresh
        .get(&health)
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .expect("answered while the flood holds its connections");
    assert!(r.status().is_success());
    assert!(t0.elapsed() < Duration::from_secs(2));
    drop(flood);
}

/// The resident memory of `pid`, bytes (Linux).
#[cfg(target_os = "linux")]
fn rss_bytes(pid: u32) -> u64 {
    d8::bench::proc_memory_bytes(pid, "VmRSS").unwrap_or(0)
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn an_enrollment_flood_with_huge_frames_leaves_memory_bounded() {
    // Before: 24 connections each announcing and sending an 8 MiB frame
    // took the orchestrator from 29 to 226 MB for the 10 s enrollment
    // timeout, without any credential.
    let c = ProcCluster::start().await;
    let pid = c.orch.as_ref().and_then(|p| p.child.id()).expect("pid");
    let digest = d8_certs::JoinToken::parse(&c.token)
        .expect("token")
        .ca_digest();
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], c.port).into();
    let before = rss_bytes(pid);
    let mut floods = Vec::new();
    for _ in 0..40 {
        floods.push(tokio::spawn(async move {
            let tls = d8_certs::tls::enroll_client_config(digest).expect("tls");
            let client = d8::transport::client_config(tls, Duration::from_secs(10)).expect("cfg");
            let endpoint = d8::transport::client_endpoint(addr).expect("endpoint");
            let Ok(Ok(conn)) = tokio::time::timeout(
                Duration::from_secs(3),
                endpoint
                    .connect_with(client, addr, d8_certs::ORCHESTRATOR_NAME)
                    .expect("connect"),
            )
            .await
            else {
                return; // refused: what the cap is for
            };
            let Ok((mut send, _recv)) = conn.open_bi().await else {
                return;
            };
            let frame = 8u32 * 1024 * 1024;
            let _ = send.write_all(&frame.to_be_bytes()).await;
            let chunk = vec![0u8; 1024 * 1024];
            let _ = tokio::time::timeout(Duration::from_secs(3), async {
                for _ in 0..8 {
                    if send.write_all(&chunk).await.is_err() {
                        return;
                    }
                }
            })
            .await;
            // Hold the connection a moment, as an attacker would.
            tokio::time::sleep(Duration::from_secs(2)).await;
            drop(conn);
            drop(endpoint);
        }));
    }
    let mut peak = before;
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        peak = peak.max(rss_bytes(pid));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for f in floods {
        let _ = f.await;
    }
    let grew = peak.saturating_sub(before) / (1024 * 1024);
    eprintln!(
        "orchestrator RSS before {} MiB, peak {} MiB during the flood",
        before >> 20,
        peak >> 20
    );
    assert!(grew < 48, "grew by {grew} MiB");
    // And it still serves.
    let h = c.get("/health").await;
    assert_eq!(h["status"], "ok", "{h}");
}

/// A vendor that never stops answering: a streamed answer without end
/// (OpenAI's SSE chunk shape, openai-python `ChatCompletionChunk`), and a
/// whole answer whose body never ends.
#[cfg(target_os = "linux")]
async fn endless_vendor() -> String {
    use axum::body::{Body, Bytes};
    use axum::response::Response;
    use futures_util::StreamExt as _;
    let app = axum::Router::new().fallback(|body: String| async move {
        let streaming = serde_json::from_str::<Value>(&body)
            .ok()
            .is_some_and(|v| v["stream"] == true);
        let piece = "x".repeat(1024);
        let chunk: Bytes = if streaming {
            format!(
                "data: {}\n\n",
                serde_json::json!({"id": "c", "object": "chat.completion.chunk", "model": "m",
                    "choices": [{"index": 0, "delta": {"content": piece}}]})
            )
            .into()
        } else {
            // `{"choices": [{"message": {"content": "xxxx…` and never the end.
            piece.into()
        };
        let head: Bytes = if streaming {
            Bytes::new()
        } else {
            Bytes::from_static(
                br#"{"choices":[{"index":0,"message":{"role":"assistant","content":""#,
            )
        };
        let endless = futures_util::stream::once(async move { Ok::<_, std::io::Error>(head) })
            .chain(futures_util::stream::repeat_with(move || Ok(chunk.clone())));
        Response::builder()
            .header(
                "content-type",
                if streaming {
                    "text/event-stream"
                } else {
                    "application/json"
                },
            )
            .body(Body::from_stream(endless))
            .expect("response")
    });
    let addr = super::harness::serve_on_loopback(app).await;
    format!("http://{addr}/v1")
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_vendor_that_never_stops_fails_the_task_and_the_worker_stays_small() {
    // Before: an endless stream grew a worker to 1.43 GB in 10 s and only
    // the 5-minute attempt timeout stopped it.
    let base = endless_vendor().await;
    let mut c = ProcCluster::start().await;
    c.add_worker_with(
        "w",
        &["--provider", "groq"],
        &[],
        &[
            ("GROQ_API_KEY", "gsk_endless_0123456789abcdef"),
            ("GROQ_BASE_URL", &base),
        ],
    );
    c.wait_online(1).await;
    let wpid = c.workers[0].child.id().expect("pid");
    for (stream, limit) in [
        (true, "--max-output-bytes"),
        (false, "--max-vendor-body-bytes"),
    ] {
        let mut body = chat("go on forever", 5);
        body["data"]["stream"] = serde_json::json!(stream);
        let id = c.submit_json(&body).await;
        let mut peak = 0;
        let deadline = Instant::now() + Duration::from_secs(60);
        let t = loop {
            peak = peak.max(rss_bytes(wpid));
            let t = c.get(&format!("/api/tasks/{id}")).await;
            if t["status"] == "failed" || t["status"] == "completed" {
                break t;
            }
            assert!(Instant::now() < deadline, "not cut within 60 s: {t}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(t["status"], "failed", "{t}");
        let error = t["error"].as_str().unwrap_or_default();
        assert!(error.contains(limit), "stream={stream}: {error}");
        eprintln!("stream={stream}: worker peak RSS {} MiB", peak >> 20);
        assert!(
            peak < 200 * 1024 * 1024,
            "stream={stream}: {} MiB",
            peak >> 20
        );
    }
}

#[tokio::test]
async fn cli_output_to_a_closed_pipe_is_not_a_panic() {
    // Before: `d8 status | head -0` died with "failed printing to stdout:
    // Broken pipe" and exit status 101.
    let c = ProcCluster::start().await;
    let err_path = c.dir.path().join("status.err");
    // `output()` would capture stdout itself: spawn with the closed pipe.
    let status = Command::new(BIN)
        .args(["status", "--url", &c.url(""), "--api-key", &c.key])
        .env("D8_LOG", "warn")
        .stdout(closed_pipe())
        .stderr(Stdio::from(
            std::fs::File::create(&err_path).expect("err file"),
        ))
        .status()
        .await
        .expect("run d8 status");
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(status.code(), Some(0), "{stderr}");
}

#[tokio::test]
async fn log_format_json_writes_one_object_per_line() {
    let mut c = ProcCluster::start().await;
    c.add_worker_with(
        "json-w",
        &["--provider", "echo"],
        &["--log-format", "json"],
        &[],
    );
    c.wait_online(1).await;
    let log = std::fs::read_to_string(&c.workers[0].log).expect("log");
    let objects: Vec<Value> = log
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let connected = objects
        .iter()
        .find(|v| v["message"] == "connected to the orchestrator")
        .unwrap_or_else(|| panic!("no JSON line says it connected: {log}"));
    assert_eq!(connected["level"], "info");
    assert_eq!(connected["target"], "d8::node::worker::session");
    assert_eq!(connected["fields"]["worker"], "json-w");
    assert!(connected["ts"].as_str().expect("ts").ends_with('Z'));
    assert!(!log.contains(" INFO d8::"), "no text-format line: {log}");
}

#[tokio::test]
async fn check_keys_tells_a_working_a_resting_and_a_rejected_key_apart() {
    use super::fakes::{FakeOpenAi, Mode};
    let ok = FakeOpenAi::start(Mode::Ok).await;
    let limited = FakeOpenAi::start(Mode::RateLimited {
        retry_after_secs: 30,
    })
    .await;
    let rejected = FakeOpenAi::start(Mode::Rejected).await;
    let dir = tempfile::tempdir().expect("dir");
    let key = "gsk_check_keys_0123456789abcdef";
    let check = |base: String| {
        let data = dir.path().join("w");
        async move {
            let out = Command::new(BIN)
                .args([
                    "join",
                    "--check-keys=json",
                    "--provider",
                    "groq",
                    "--data-dir",
                ])
                .arg(&data)
                // The key travels in the environment, never the command line.
                .env("GROQ_API_KEY", key)
                .env("GROQ_BASE_URL", base)
                .env("D8_LOG", "warn")
                .output()
                .await
                .expect("run");
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            assert!(
                !stdout.contains(key) && !stderr.contains(key),
                "the key stays hidden"
            );
            let v: Value = serde_json::from_str(stdout.trim())
                .unwrap_or_else(|e| panic!("{e}: {stdout}{stderr}"));
            (out.status.success(), v)
        }
    };
    let (good, v) = check(ok.base.clone()).await;
    assert!(good, "{v}");
    assert_eq!(
        (v["provider"].as_str(), v["result"].as_str()),
        (Some("groq"), Some("ok"))
    );
    assert_eq!(v["model"], "llama-3.1-8b-instant");
    assert_eq!(ok.bodies()[0]["max_tokens"], 1, "one token asked");
    let (good, v) = check(limited.base.clone()).await;
    assert!(good, "a resting key still works: {v}");
    assert_eq!(v["result"], "rate_limited");
    assert_eq!(v["retry_after_ms"], 30_000);
    let (good, v) = check(rejected.base.clone()).await;
    assert!(!good, "a rejected key fails the check: {v}");
    assert_eq!(v["result"], "rejected");
    assert!(
        !dir.path().join("w").join("worker.key").exists(),
        "nothing enrolled"
    );
}
