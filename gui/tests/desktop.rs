//! The desktop app driven as a person would, through egui_kittest: widgets
//! found by their labels, clicked and typed into; the app runs the real
//! `d8` binary (`d8 serve`, `d8 join`, `d8 join --check-keys`) against a
//! fake vendor speaking OpenAI's wire format, all on loopback.
//!
//! `d8` is the one `cargo test --workspace` builds for the d8 package's
//! own tests (`target/<profile>/d8`); running only this package's tests
//! after changing d8 needs `cargo build --bin d8` first.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use d8::discovery::{Advert, StaticDiscovery};
use d8_desktop::app::{App, Config};
use d8_desktop::keys::KeyStore;
use d8_desktop::{Backend, human_ms};
use eframe::egui;
use egui_kittest::Harness;
use egui_kittest::kittest::Queryable;

#[path = "../../tests/it/fakes.rs"]
#[allow(dead_code, missing_docs)]
mod fakes;
#[path = "../../tests/it/loopback.rs"]
#[allow(dead_code)]
mod loopback;

/// What fakes.rs needs from the d8 test harness.
mod harness {
    pub use super::loopback::serve_on_loopback;
}

use fakes::{FakeOpenAi, Mode};
use loopback::free_port;

/// The `d8` executable beside this test's directory.
fn d8_bin() -> PathBuf {
    let me = std::env::current_exe().expect("current_exe");
    let dir = me
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>");
    let bin = dir.join(format!("d8{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.is_file(),
        "{} is missing: run `cargo test --workspace` (or `cargo build --bin d8`) first",
        bin.display()
    );
    bin
}

/// `d8 serve` on loopback, killed on drop.
struct Orchestrator {
    child: Child,
    port: u16,
    key: String,
    token: String,
}

impl Drop for Orchestrator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Orchestrator {
    fn start(root: &Path) -> Orchestrator {
        let dir = root.join("orchestrator");
        std::fs::create_dir_all(&dir).expect("mkdir");
        let port = free_port();
        let log = std::fs::File::create(root.join("serve.log")).expect("log");
        let child = Command::new(d8_bin())
            .args(["serve", "--no-mdns", "--bind", "127.0.0.1", "--port"])
            .arg(port.to_string())
            .args(["--heartbeat", "200ms", "--dead-after", "1s", "--data-dir"])
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone"))
            .stderr(log)
            .spawn()
            .expect("spawn d8 serve");
        let read = |name: &str| {
            std::fs::read_to_string(dir.join(name))
                .unwrap_or_default()
                .trim()
                .to_owned()
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while read("api-key").is_empty() || !healthy(port) {
            assert!(
                Instant::now() < deadline,
                "d8 serve did not start: {}",
                std::fs::read_to_string(root.join("serve.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Orchestrator {
            child,
            port,
            key: read("api-key"),
            token: read("join-token"),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn advert(&self) -> Advert {
        Advert {
            name: "d8-test-cluster".into(),
            cluster_id: "0123456789abcdef".into(),
            proto: 4,
            version: env!("CARGO_PKG_VERSION").into(),
            quic_port: self.port,
            http_port: self.port,
            addrs: vec!["127.0.0.1".parse().expect("ip")],
        }
    }
}

fn healthy(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let req =
        format!("GET /health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.1 200")
}

/// A blocking HTTP call with the API key, for the test's own checks.
fn api(
    rt: &tokio::runtime::Runtime,
    o: &Orchestrator,
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> serde_json::Value {
    rt.block_on(async {
        let mut req = reqwest::Client::new()
            .request(method, o.url(path))
            .bearer_auth(&o.key);
        if let Some(b) = body {
            req = req.json(&b);
        }
        req.send()
            .await
            .expect("http")
            .json::<serde_json::Value>()
            .await
            .expect("json")
    })
}

/// A task as `GET /api/tasks/{id}` shows it.
fn task(rt: &tokio::runtime::Runtime, o: &Orchestrator, id: &str) -> serde_json::Value {
    api(
        rt,
        o,
        reqwest::Method::GET,
        &format!("/api/tasks/{id}"),
        None,
    )
}

fn submit(rt: &tokio::runtime::Runtime, o: &Orchestrator, text: &str) -> String {
    let v = api(
        rt,
        o,
        reqwest::Method::POST,
        "/api/tasks",
        Some(
            serde_json::json!({"type": "agent_action", "data": {"messages": [{"role": "user", "content": text}]}}),
        ),
    );
    v["task_id"].as_str().expect("task_id").to_owned()
}

struct Setup {
    root: tempfile::TempDir,
    rt: tokio::runtime::Runtime,
}

/// A failed test must not leave a worker or a cluster running: the app
/// lets them outlive it on purpose. Ask both to stop, then end what did not.
impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::fs::write(self.path("worker/drain-request"), b"");
        let _ = std::fs::write(self.path("here/stop-request"), b"");
        // The pid of a worker that has not written its last word (a
        // stopped one's pid may belong to someone else by now).
        let running = || {
            std::fs::read(self.path("worker/status.json"))
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .filter(|v| !matches!(v["state"].as_str(), Some("stopped" | "failed")))
                .and_then(|v| v["pid"].as_u64())
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while running().is_some() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        if let Some(pid) = running() {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
    }
}

impl Setup {
    fn new() -> Setup {
        d8::ensure_crypto_provider();
        Setup {
            root: tempfile::tempdir().expect("tempdir"),
            rt: tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("runtime"),
        }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.root.path().join(p)
    }

    fn config(&self, adverts: Vec<Advert>) -> Config {
        Config {
            d8: Some(d8_bin()),
            worker_dir: self.path("worker"),
            cluster_dir: self.path("here"),
            cluster_port: free_port(),
            settings_path: self.path("config/desktop.json"),
            keys: Arc::new(KeyStore::file_only(self.path("config/keys.json"))),
            discovery: Ok(Arc::new(StaticDiscovery::new(adverts))),
            exe: None,
            home: self.path("home"),
            config_dir: self.path("config"),
            worker_args: Vec::new(),
            cluster_args: [
                "--no-mdns",
                "--bind",
                "127.0.0.1",
                "--heartbeat",
                "200ms",
                "--dead-after",
                "1s",
            ]
            .map(str::to_owned)
            .to_vec(),
        }
    }

    fn harness(&self, cfg: Config) -> Harness<'static, App> {
        self.harness_sized(cfg, [960.0, 760.0])
    }

    fn harness_sized(&self, cfg: Config, size: [f32; 2]) -> Harness<'static, App> {
        let app = App::new(cfg, Backend::new().expect("backend"));
        Harness::builder()
            .with_size(size)
            .build_ui_state(|ui, app: &mut App| app.show(ui), app)
    }
}

/// Steps the app until `pred` holds; panics after `secs` with the worker's log.
fn wait_for(
    h: &mut Harness<'_, App>,
    what: &str,
    secs: u64,
    pred: impl Fn(&Harness<'_, App>) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        h.step();
        if pred(h) {
            return;
        }
        if Instant::now() > deadline {
            let v = h.state().worker_view();
            panic!(
                "{what}: not seen within {secs} s\nworker: {:?}\nits log:\n{}",
                v.status,
                v.log.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(40));
    }
}

fn shows(h: &Harness<'_, App>, text: &str) -> bool {
    h.query_by_label_contains(text).is_some()
}

fn type_into(h: &mut Harness<'_, App>, label: &str, text: &str) {
    h.get_by_label(label).focus();
    h.step();
    h.get_by_label(label).type_text(text);
    h.step();
}

/// Under "This computer": OpenAI on, its key typed, pointed at `base`.
fn use_openai(h: &mut Harness<'_, App>, key: &str, base: &str) {
    click(h, "This computer");
    click(h, "OpenAI");
    click(h, "Run OpenAI on this worker");
    type_into(h, "Key", key);
    type_into(h, "Base URL", base);
}

fn click(h: &mut Harness<'_, App>, label: &str) {
    h.get_by_label(label).click();
    h.step();
    h.step();
}

#[test]
fn a_key_entered_and_start_pressed_make_this_computer_a_worker_that_completes_tasks_and_drains_on_stop()
 {
    let s = Setup::new();
    let fake =
        s.rt.block_on(FakeOpenAi::start(Mode::Slow { delay_ms: 1500 }));
    let o = Orchestrator::start(s.root.path());
    let mut h = s.harness(s.config(vec![o.advert()]));

    // Find: the cluster is listed with its worker count (from /health).
    wait_for(&mut h, "the cluster in the list", 15, |h| {
        shows(h, "d8-test-cluster") && shows(h, "0 workers")
    });
    type_into(
        &mut h,
        "Orchestrator address",
        &format!("127.0.0.1:{}", o.port),
    );
    type_into(&mut h, "Join token", &o.token);

    // Keys: OpenAI pointed at the fake, key typed, tested through d8.
    use_openai(&mut h, "sk-desktop-test-key", &fake.base);
    click(&mut h, "Test");
    wait_for(&mut h, "the key test's verdict", 30, |h| {
        shows(h, "works (")
    });

    // Run.
    click(&mut h, "Start worker on this computer");
    wait_for(&mut h, "the worker connected", 30, |h| {
        shows(h, "Connected to 127.0.0.1")
    });
    let id = submit(&s.rt, &o, "hello from the test");
    wait_for(&mut h, "one task completed, shown live", 30, |h| {
        shows(h, "1 completed")
    });
    let t = task(&s.rt, &o, &id);
    assert_eq!(t["status"], "completed", "{t}");
    assert_eq!(t["result"]["content"], "fake: hello from the test", "{t}");
    let workers = api(&s.rt, &o, reqwest::Method::GET, "/api/workers", None);
    assert_eq!(workers[0]["status"], "online", "{workers}");
    assert_eq!(workers[0]["providers"][0], "openai", "{workers}");

    // The key reached the worker through its environment, nowhere else.
    assert!(
        fake.auth_headers()
            .iter()
            .all(|a| a == "Bearer sk-desktop-test-key"),
        "{:?}",
        fake.auth_headers()
    );
    let pid = h.state().worker_view().status.expect("status").0.pid;
    #[cfg(target_os = "linux")]
    {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("cmdline");
        let cmdline = String::from_utf8_lossy(&cmdline);
        assert!(cmdline.contains("join"), "{cmdline}");
        assert!(
            !cmdline.contains("sk-desktop") && !cmdline.contains(&o.token),
            "{cmdline}"
        );
    }
    let settings = std::fs::read_to_string(s.path("config/desktop.json")).expect("settings");
    assert!(
        !settings.contains("sk-desktop") && settings.contains(&fake.base),
        "{settings}"
    );
    let log = std::fs::read_to_string(s.path("worker/worker.log")).expect("worker log");
    assert!(
        !log.contains("sk-desktop") && !log.contains(&o.token),
        "{log}"
    );

    // Stop drains: a task in flight (the fake takes 1.5 s) completes, then
    // the worker ends.
    let id = submit(&s.rt, &o, "finish me");
    wait_for(&mut h, "the task running on the worker", 15, |h| {
        shows(h, "1 running")
    });
    click(&mut h, "Stop");
    wait_for(&mut h, "the worker stopped", 30, |h| {
        shows(h, "Not running") && !h.state().worker_running()
    });
    let t = task(&s.rt, &o, &id);
    assert_eq!(t["status"], "completed", "drained, not abandoned: {t}");
    assert_eq!(t["worker_id"], workers[0]["worker_id"], "{t}");
    let status: serde_json::Value =
        serde_json::from_slice(&std::fs::read(s.path("worker/status.json")).expect("status"))
            .expect("json");
    assert_eq!(status["state"], "stopped", "{status}");
    assert_eq!(status["completed"], 2, "{status}");
    let _ = pid;
}

#[test]
fn a_rejected_key_is_shown_as_rejected() {
    let s = Setup::new();
    let fake = s.rt.block_on(FakeOpenAi::start(Mode::Rejected));
    let mut h = s.harness(s.config(Vec::new()));
    click(&mut h, "This computer");
    click(&mut h, "OpenAI");
    type_into(&mut h, "Key", "sk-wrong");
    type_into(&mut h, "Base URL", &fake.base);
    click(&mut h, "Test");
    wait_for(&mut h, "the verdict", 30, |h| {
        shows(h, "rejected: the vendor refused this key")
    });
    assert_eq!(fake.calls(), 1, "one tiny call");
    // The key was tested, not kept: nothing stored until Save or Start.
    assert!(!s.path("config/keys.json").exists());
    // A rate-limited key reads as working but resting.
    assert_eq!(human_ms(30_000), "30 s");
}

#[test]
fn with_no_cluster_on_the_network_the_first_machine_starts_one_and_its_worker_joins_it() {
    let s = Setup::new();
    let fake = s.rt.block_on(FakeOpenAi::start(Mode::Ok));
    let mut h = s.harness(s.config(Vec::new()));
    wait_for(&mut h, "nothing found", 15, |h| {
        shows(h, "No cluster found on this network.")
    });
    assert!(shows(&h, "Why?"), "d8 doctor is offered");
    click(&mut h, "Start a cluster here");
    wait_for(&mut h, "the cluster running here", 30, |h| {
        shows(h, "Running at http://127.0.0.1")
    });
    wait_for(&mut h, "its token offered", 10, |h| {
        shows(h, "Copy join token")
    });
    let token = std::fs::read_to_string(s.path("here/join-token")).expect("token");
    assert!(!shows(&h, token.trim()), "the token is hidden until Show");
    click(&mut h, "Show");
    assert!(shows(&h, token.trim()), "Show reveals it");

    // No token to paste: the worker joins the cluster on this computer.
    use_openai(&mut h, "sk-first-machine", &fake.base);
    click(&mut h, "Start worker on this computer");
    wait_for(&mut h, "the worker connected", 30, |h| {
        shows(h, "Connected to 127.0.0.1")
    });
    assert!(
        std::fs::read_to_string(s.path("config/keys.json"))
            .expect("keys")
            .contains("sk-first-machine"),
        "Start keeps the typed key"
    );

    // The cluster's numbers, read with its own API key.
    click(&mut h, "Activity");
    wait_for(&mut h, "the cluster's numbers", 15, |h| shows(h, "1 of 1"));
    // Its log tail shows the banner, never the token or the key in it.
    click(&mut h, "The cluster's log (on this computer)");
    wait_for(&mut h, "the cluster's banner", 10, |h| {
        shows(h, "join token       [hidden]")
    });
    let key = std::fs::read_to_string(s.path("here/api-key")).expect("key");
    assert!(
        !shows(&h, token.trim()) && !shows(&h, key.trim()),
        "a secret in the log tail"
    );

    // Closing the window with both running asks first.
    h.input_mut()
        .viewports
        .entry(egui::ViewportId::ROOT)
        .or_default()
        .events
        .push(egui::ViewportEvent::Close);
    h.step();
    h.step();
    assert!(
        shows(&h, "Keep running?"),
        "closing asks whether to keep them"
    );
    click(&mut h, "Stop and quit");
    wait_for(&mut h, "the worker and the cluster stopped", 30, |h| {
        !h.state().worker_running() && !h.state().local_cluster().view().up
    });
}

#[test]
fn a_wrong_token_is_refused_and_the_window_says_why() {
    let s = Setup::new();
    let o = Orchestrator::start(s.root.path());
    let mut h = s.harness(s.config(vec![o.advert()]));
    type_into(
        &mut h,
        "Orchestrator address",
        &format!("127.0.0.1:{}", o.port),
    );
    // The right cluster, a wrong secret (as after `d8 token rotate`).
    let (cluster, _) = o.token.rsplit_once('-').expect("token");
    type_into(
        &mut h,
        "Join token",
        &format!("{cluster}-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"),
    );
    click(&mut h, "This computer");
    click(&mut h, "Ollama (local models)");
    click(&mut h, "Run Ollama (local models) on this worker");
    click(&mut h, "Start worker on this computer");
    // The button is gone at once: a second press cannot start a second worker.
    assert!(h.query_by_label("Start worker on this computer").is_none());
    wait_for(&mut h, "the refusal explained", 30, |h| {
        shows(h, "The worker failed") && shows(h, "unknown join token")
    });
    assert!(!h.state().worker_running());
    let workers = api(&s.rt, &o, reqwest::Method::GET, "/api/workers", None);
    assert_eq!(workers, serde_json::json!([]), "nobody enrolled");
    let log = std::fs::read_to_string(s.path("worker/worker.log")).expect("log");
    assert_eq!(
        log.matches("enrollment refused").count(),
        1,
        "one worker ran: {log}"
    );
}

#[test]
fn at_phone_width_the_fields_and_provider_settings_fit_the_window() {
    let s = Setup::new();
    let width = 380.0;
    let o = Orchestrator::start(s.root.path());
    let cfg = s.config(vec![o.advert()]);
    // A stored key adds "Forget key" to the row of buttons, as on a
    // machine in use.
    cfg.keys.set("openai", "sk-test-stored").expect("store");
    let mut h = s.harness_sized(cfg, [width, 760.0]);
    h.step();
    // The label and the field it names.
    let right = |h: &Harness<'_, App>, label: &str| {
        h.get_all_by_label(label)
            .map(|n| n.rect().right())
            .fold(0.0_f32, f32::max)
    };
    wait_for(&mut h, "the cluster", 10, |h| shows(h, "Open dashboard"));
    // One row per cluster: name, version, workers, address, link; it
    // widened the whole tab past the window before it wrapped.
    for label in ["Open dashboard", "Orchestrator address"] {
        let r = right(&h, label);
        assert!(r <= width + 0.5, "{label} ends at x = {r}");
    }
    click(&mut h, "This computer");
    wait_for(&mut h, "the stored key", 5, |h| shows(h, "key stored"));
    click(&mut h, "OpenAI");
    click(&mut h, "Run OpenAI on this worker");
    // Side by side, the settings column was cut at the window's edge
    // ("Tes…", the base URL field half outside).
    for label in ["Test", "Base URL", "Key"] {
        let r = right(&h, label);
        assert!(
            r <= width + 0.5,
            "{label} ends at x = {r} in a {width}-point window"
        );
    }
}
