//! Multi-host tests that really cross a network: each "host" is a Linux
//! network namespace these tests create, joined to the others by a bridge
//! living in its own namespace, with addresses in 10.77.0.0/16 that exist
//! only inside them. The real `d8` binary runs in each. mDNS therefore runs
//! only on those private links, never on this machine's interfaces.
//!
//! They need root (CI runs as root) and `ip` from iproute2; without either
//! they print why they were skipped and pass.

use std::path::{Path, PathBuf};
use std::process::{Command as StdCommand, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::process::{Child, Command};

const BIN: &str = env!("CARGO_BIN_EXE_d8");

/// Why these tests cannot run here, if they cannot.
fn unavailable() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let uid = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("?");
    if uid != "0" {
        return Some(format!(
            "needs root to create network namespaces (uid {uid})"
        ));
    }
    match StdCommand::new("ip").arg("-V").output() {
        Ok(o) if o.status.success() => None,
        _ => Some("needs `ip` from iproute2".into()),
    }
}

macro_rules! lab_or_skip {
    ($name:expr) => {
        match unavailable() {
            Some(why) => {
                eprintln!("SKIPPED {}: {why}", $name);
                return;
            }
            None => Lab::new(),
        }
    };
}

fn ip(args: &[&str]) {
    let out = StdCommand::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The worker's log line once it holds a session (with its module, since
/// "not connected to the orchestrator" is another line).
const CONNECTED: &str = "d8::node::worker::session: connected to the orchestrator";

static LABS: AtomicU32 = AtomicU32::new(0);

/// A set of namespaces on one bridge; everything is torn down on drop.
struct Lab {
    tag: String,
    switch: String,
    namespaces: Vec<String>,
    links: u32,
    procs: Vec<Child>,
    dir: tempfile::TempDir,
}

impl Lab {
    fn new() -> Lab {
        super::harness::init_tracing();
        let tag = format!(
            "d8t{}x{}",
            std::process::id() % 100_000,
            LABS.fetch_add(1, Ordering::Relaxed)
        );
        let switch = format!("{tag}sw");
        ip(&["netns", "add", &switch]);
        ip(&["-n", &switch, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &switch, "link", "set", "br0", "up"]);
        Lab {
            tag,
            namespaces: vec![switch.clone()],
            switch,
            links: 0,
            procs: Vec::new(),
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// A new host with `eth0` on the bridge holding `addrs` (CIDR).
    fn host(&mut self, name: &str, addrs: &[&str]) -> String {
        let ns = format!("{}{name}", self.tag);
        ip(&["netns", "add", &ns]);
        self.namespaces.push(ns.clone());
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        self.attach(&ns, "eth0", addrs);
        ns
    }

    /// Connects `ns` to the bridge with a new interface `ifname`.
    fn attach(&mut self, ns: &str, ifname: &str, addrs: &[&str]) {
        self.links += 1;
        let port = format!("v{}", self.links);
        ip(&[
            "-n",
            &self.switch,
            "link",
            "add",
            &port,
            "type",
            "veth",
            "peer",
            "name",
            ifname,
            "netns",
            ns,
        ]);
        ip(&["-n", &self.switch, "link", "set", &port, "master", "br0"]);
        ip(&["-n", &self.switch, "link", "set", &port, "up"]);
        for a in addrs {
            ip(&["-n", ns, "addr", "add", a, "dev", ifname]);
        }
        ip(&["-n", ns, "link", "set", ifname, "up"]);
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// Runs `d8 args…` inside `ns`, logging to `<dir>/<log>.log`.
    fn spawn(&mut self, ns: &str, log: &str, args: &[&str]) -> usize {
        let file = std::fs::File::create(self.path(&format!("{log}.log"))).expect("log");
        let err = file.try_clone().expect("clone");
        let child = Command::new("ip")
            .args(["netns", "exec", ns, BIN])
            .args(args)
            .env(
                "D8_LOG",
                std::env::var("D8_TEST_LOG").unwrap_or_else(|_| "d8=info".into()),
            )
            .env_remove("D8_TOKEN")
            .env_remove("ORCHESTRATOR_URL")
            .stdout(Stdio::from(file))
            .stderr(Stdio::from(err))
            .kill_on_drop(true)
            .spawn()
            .expect("spawn d8");
        self.procs.push(child);
        self.procs.len() - 1
    }

    fn log(&self, log: &str) -> String {
        std::fs::read_to_string(self.path(&format!("{log}.log"))).unwrap_or_default()
    }

    /// Waits until `log` contains `needle`; returns the time it took.
    async fn wait_log(&self, log: &str, needle: &str, secs: u64) -> Duration {
        let t0 = Instant::now();
        while !self.log(log).contains(needle) {
            assert!(
                t0.elapsed() < Duration::from_secs(secs),
                "{log} never said {needle:?}:\n{}",
                self.log(log)
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        t0.elapsed()
    }

    /// Starts an orchestrator in `ns` advertising on `eth0`; returns its join token.
    async fn orchestrator(&mut self, ns: &str, name: &str) -> String {
        self.orchestrator_with(ns, name, &["--mdns-interface", "eth0"])
            .await
    }

    /// Starts an orchestrator in `ns` with extra flags; returns its join token.
    async fn orchestrator_with(&mut self, ns: &str, name: &str, extra: &[&str]) -> String {
        let dir = self.path(name);
        let dir_s = dir.to_str().expect("utf8").to_owned();
        let mut args = vec!["serve", "--data-dir", &dir_s];
        args.extend_from_slice(extra);
        let _ = std::fs::remove_file(self.path(&format!("{name}.log")));
        self.spawn(ns, name, &args);
        let token_file = dir.join("join-token");
        let t0 = Instant::now();
        while !token_file.exists() || !self.log(name).contains("advertising over mDNS") {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "orchestrator did not start: {}",
                self.log(name)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        std::fs::read_to_string(token_file)
            .expect("token")
            .trim()
            .to_owned()
    }

    /// Starts a worker in `ns` with no orchestrator address, browsing on `eth0`.
    fn worker(&mut self, ns: &str, name: &str, token: &str) -> usize {
        self.worker_with(ns, name, token, &["--mdns-interface", "eth0"])
    }

    /// Starts a worker in `ns` with no orchestrator address and extra flags.
    fn worker_with(&mut self, ns: &str, name: &str, token: &str, extra: &[&str]) -> usize {
        let dir = self.path(name);
        let dir_s = dir.to_str().expect("utf8").to_owned();
        let mut args = vec![
            "join",
            "--token",
            token,
            "--provider",
            "echo",
            "--worker-id",
            name,
            "--data-dir",
            &dir_s,
        ];
        args.extend_from_slice(extra);
        self.spawn(ns, name, &args)
    }

    /// Stops process `idx` with SIGINT (clean shutdown) and waits for it.
    async fn interrupt(&mut self, idx: usize) {
        let child = &mut self.procs[idx];
        if let Some(pid) = child.id() {
            // `ip netns exec` execs d8 in place, so this pid is d8's.
            let _ = StdCommand::new("kill")
                .args(["-INT", &pid.to_string()])
                .status();
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
    }

    /// `GET http://127.0.0.1:5000{path}` inside `ns`, with the API key of the
    /// orchestrator whose data dir is `orch`.
    fn api(&self, ns: &str, orch: &str, path: &str) -> Value {
        http(ns, &self.path(orch), "GET", path, None)
    }

    /// Submits an `agent_action` chat of `content` from inside `ns`; its id.
    fn submit(&self, ns: &str, orch: &str, content: &str) -> String {
        let body = serde_json::json!({
            "type": "agent_action",
            "data": {"messages": [{"role": "user", "content": content}]}
        })
        .to_string();
        let v = http(ns, &self.path(orch), "POST", "/api/tasks", Some(&body));
        v["task_id"].as_str().expect("id").to_owned()
    }

    /// Runs `d8 args…` inside `ns` to completion: (success, stdout).
    fn run(&self, ns: &str, args: &[&str]) -> (bool, String) {
        let out = StdCommand::new("ip")
            .args(["netns", "exec", ns, BIN])
            .args(args)
            .env("D8_LOG", "warn")
            .env_remove("D8_TOKEN")
            .env_remove("ORCHESTRATOR_URL")
            .env_remove("D8_DATA_DIR")
            .output()
            .expect("run d8");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }
}

/// An HTTP call made from inside a namespace (with python3, which every
/// machine this project builds on has).
fn http(ns: &str, orch_dir: &Path, method: &str, path: &str, body: Option<&str>) -> Value {
    let key = std::fs::read_to_string(orch_dir.join("api-key")).expect("key");
    let script = "import sys,urllib.request\n\
        m,u,k,b=sys.argv[1:5]\n\
        r=urllib.request.Request(u,method=m,data=(b.encode() if b else None),headers={'Authorization':'Bearer '+k})\n\
        print(urllib.request.urlopen(r,timeout=20).read().decode())";
    let out = StdCommand::new("ip")
        .args(["netns", "exec", ns, "python3", "-c", script, method])
        .arg(format!("http://127.0.0.1:5000{path}"))
        .arg(key.trim())
        .arg(body.unwrap_or(""))
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json")
}

impl Drop for Lab {
    fn drop(&mut self) {
        for p in &mut self.procs {
            let _ = p.start_kill();
        }
        for ns in self.namespaces.iter().rev() {
            let _ = StdCommand::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::test]
async fn worker_on_another_host_discovers_and_joins_without_an_address() {
    let mut lab = lab_or_skip!("worker_on_another_host_discovers_and_joins_without_an_address");
    let o = lab.host("o", &["10.77.0.1/24"]);
    let w = lab.host("w", &["10.77.0.2/24"]);
    let token = lab.orchestrator(&o, "orch").await;
    let mut times = Vec::new();
    for i in 0..5 {
        // An mDNS responder multicasts a record at most once a second per link
        // (RFC 6762 §6): a query within a second of the last answer (or of the
        // orchestrator's start-up announcements) waits for the next query a
        // second later. This measures a worker joining a settled cluster.
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        let name = format!("w{i}");
        lab.worker(&w, &name, &token);
        times.push(lab.wait_log(&name, CONNECTED, 20).await);
    }
    let stats = lab.api(&o, "orch", "/api/workers/stats");
    assert_eq!(stats["workers"]["online"], 5, "{stats}");
    assert!(lab.log("w0").contains("found the orchestrator over mDNS"));
    assert!(lab.log("w0").contains("10.77.0.1"), "{}", lab.log("w0"));
    // A task crosses the link.
    let id = lab.submit(&o, "orch", "over the bridge");
    let t = lab.api(&o, "orch", &format!("/api/tasks/{id}?wait=10"));
    assert_eq!(t["status"], "completed", "{t}");
    let med = median(times.clone());
    eprintln!(
        "discovery to connected (process start included): median {med:?} over {} workers: {times:?}",
        times.len()
    );
    assert!(med < Duration::from_millis(1_500), "median {med:?}");
}

#[tokio::test]
async fn two_clusters_on_one_bridge_never_mix() {
    let mut lab = lab_or_skip!("two_clusters_on_one_bridge_never_mix");
    let o1 = lab.host("o1", &["10.77.1.1/16"]);
    let o2 = lab.host("o2", &["10.77.1.2/16"]);
    let w = lab.host("w", &["10.77.1.3/16"]);
    let t1 = lab.orchestrator(&o1, "orch1").await;
    let t2 = lab.orchestrator(&o2, "orch2").await;
    for (name, token) in [("a1", &t1), ("b2", &t2), ("c1", &t1), ("d2", &t2)] {
        lab.worker(&w, name, token);
    }
    for name in ["a1", "b2", "c1", "d2"] {
        lab.wait_log(name, CONNECTED, 20).await;
    }
    let ids = |v: &Value| {
        let mut ids: Vec<String> = v
            .as_array()
            .expect("list")
            .iter()
            .map(|w| w["worker_id"].as_str().expect("id").to_owned())
            .collect();
        ids.sort();
        ids
    };
    assert_eq!(ids(&lab.api(&o1, "orch1", "/api/workers")), ["a1", "c1"]);
    assert_eq!(ids(&lab.api(&o2, "orch2", "/api/workers")), ["b2", "d2"]);
}

fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

#[tokio::test]
async fn orchestrator_restarted_on_a_new_address_is_found_again() {
    let mut lab = lab_or_skip!("orchestrator_restarted_on_a_new_address_is_found_again");
    let o = lab.host("o", &["10.77.2.1/24"]);
    let w = lab.host("w", &["10.77.2.2/24"]);
    let token = lab.orchestrator(&o, "orch").await;
    lab.worker(&w, "mover", &token);
    lab.wait_log("mover", CONNECTED, 20).await;
    let orch = 0;
    lab.interrupt(orch).await;
    ip(&["-n", &o, "addr", "del", "10.77.2.1/24", "dev", "eth0"]);
    ip(&["-n", &o, "addr", "add", "10.77.2.9/24", "dev", "eth0"]);
    let t0 = Instant::now();
    lab.orchestrator(&o, "orch").await;
    while count(&lab.log("mover"), CONNECTED) < 2 {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "never came back:\n{}",
            lab.log("mover")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let log = lab.log("mover");
    let last = log
        .lines()
        .rfind(|l| l.contains(CONNECTED))
        .unwrap_or_default();
    assert!(last.contains("10.77.2.9"), "{last}");
    eprintln!(
        "worker found the moved orchestrator {:?} after its restart",
        t0.elapsed()
    );
    let stats = lab.api(&o, "orch", "/api/workers/stats");
    assert_eq!(stats["workers"]["online"], 1, "{stats}");
}

#[tokio::test]
async fn cut_link_requeues_and_the_worker_rejoins_without_a_duplicate() {
    let mut lab = lab_or_skip!("cut_link_requeues_and_the_worker_rejoins_without_a_duplicate");
    let o = lab.host("o", &["10.77.3.1/24"]);
    let cut = lab.host("cut", &["10.77.3.2/24"]);
    let spare = lab.host("spare", &["10.77.3.3/24"]);
    let token = lab
        .orchestrator_with(
            &o,
            "orch",
            &[
                "--mdns-interface",
                "eth0",
                "--heartbeat",
                "200ms",
                "--dead-after",
                "1s",
            ],
        )
        .await;
    lab.worker_with(
        &cut,
        "cut",
        &token,
        &[
            "--mdns-interface",
            "eth0",
            "--slots",
            "1",
            "--echo-delay-ms",
            "30000",
        ],
    );
    lab.wait_log("cut", CONNECTED, 20).await;
    let id = lab.submit(&o, "orch", "survive the cut");
    let t = lab.api(&o, "orch", &format!("/api/tasks/{id}"));
    assert_eq!(
        (t["status"].as_str(), t["worker_id"].as_str()),
        (Some("assigned"), Some("cut")),
        "{t}"
    );
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    lab.worker(&spare, "spare", &token);
    lab.wait_log("spare", CONNECTED, 20).await;

    // Unplug the worker's cable (its bridge port).
    let t0 = Instant::now();
    ip(&["-n", &cut, "link", "set", "eth0", "down"]);
    let t = lab.api(&o, "orch", &format!("/api/tasks/{id}?wait=15"));
    let took = t0.elapsed();
    assert_eq!(t["status"], "completed", "{t}");
    assert_eq!(t["worker_id"], "spare");
    assert_eq!(t["attempts"], 2);
    assert!(took < Duration::from_secs(5), "re-queued after {took:?}");
    eprintln!("cut link: task completed elsewhere {took:?} after the cut");

    // Plug it back: the worker finds its way back by itself.
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    ip(&["-n", &cut, "link", "set", "eth0", "up"]);
    let t1 = Instant::now();
    while count(&lab.log("cut"), CONNECTED) < 2 {
        assert!(
            t1.elapsed() < Duration::from_secs(40),
            "never rejoined:\n{}",
            lab.log("cut")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "cut link: worker rejoined {:?} after the link came back",
        t1.elapsed()
    );
    let stats = lab.api(&o, "orch", "/api/workers/stats");
    assert_eq!(stats["workers"]["online"], 2, "{stats}");
    assert_eq!(
        stats["tasks"]["completed"], 1,
        "no duplicate result: {stats}"
    );
    let t = lab.api(&o, "orch", &format!("/api/tasks/{id}"));
    assert_eq!(t["worker_id"], "spare", "the late result was ignored: {t}");
}

#[tokio::test]
async fn worker_with_a_decoy_bridge_still_connects() {
    let mut lab = lab_or_skip!("worker_with_a_decoy_bridge_still_connects");
    let o = lab.host("o", &["10.77.4.1/24"]);
    let w = lab.host("w", &["10.77.4.2/24"]);
    // Both hosts also carry a docker-style bridge with the same address, the
    // classic way discovery picks an address that leads nowhere (or to itself).
    for ns in [&o, &w] {
        ip(&["-n", ns, "link", "add", "docker0", "type", "bridge"]);
        ip(&["-n", ns, "addr", "add", "172.17.0.1/16", "dev", "docker0"]);
        ip(&["-n", ns, "link", "set", "docker0", "multicast", "on"]);
        ip(&["-n", ns, "link", "set", "docker0", "up"]);
    }
    // Every interface on both sides: no --mdns-interface.
    let token = lab.orchestrator_with(&o, "orch", &[]).await;
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let t0 = Instant::now();
    lab.worker_with(&w, "decoyed", &token, &[]);
    lab.wait_log("decoyed", CONNECTED, 20).await;
    let took = t0.elapsed();
    let log = lab.log("decoyed");
    let line = log
        .lines()
        .find(|l| l.contains(CONNECTED))
        .unwrap_or_default();
    assert!(line.contains("10.77.4.1"), "{log}");
    eprintln!("decoy bridge: connected in {took:?}");
}

#[tokio::test]
async fn doctor_says_ok_when_all_is_well_and_explains_what_is_not() {
    let mut lab = lab_or_skip!("doctor_says_ok_when_all_is_well_and_explains_what_is_not");
    let o = lab.host("o", &["10.77.5.1/24"]);
    let w = lab.host("w", &["10.77.5.2/24"]);

    // Nothing there yet.
    let (ok, report) = lab.run(&w, &["doctor", "--mdns-interface", "eth0", "--wait", "1s"]);
    eprintln!("--- doctor, no orchestrator ---\n{report}");
    assert!(!ok);
    assert!(
        report.contains("eth0") && report.contains("10.77.5.2/24"),
        "{report}"
    );
    assert!(
        report.contains("no orchestrator answered over mDNS"),
        "{report}"
    );

    let token = lab.orchestrator(&o, "orch").await;
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let (ok, report) = lab.run(
        &w,
        &[
            "doctor",
            "--token",
            &token,
            "--mdns-interface",
            "eth0",
            // Longer than the 1 s the negative cases need: with the whole
            // suite running on 2 cores, the answer once came after 1 s.
            "--wait",
            "3s",
        ],
    );
    eprintln!("--- doctor, working ---\n{report}");
    assert!(ok, "{report}");
    assert!(report.contains("Verdict: OK"), "{report}");
    assert!(
        report.contains("10.77.5.1:5000") && report.contains("QUIC reachable"),
        "{report}"
    );
    assert!(report.contains("CA matches your token"), "{report}");
    assert!(report.contains("clock"), "{report}");
    assert!(
        !report.contains(token.rsplit('-').next().expect("secret")),
        "the token secret is never printed"
    );

    // A token of another cluster.
    let other = d8_certs::JoinToken::generate([9; 32]).to_string();
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let (ok, report) = lab.run(
        &w,
        &[
            "doctor",
            "--token",
            &other,
            "--mdns-interface",
            "eth0",
            "--wait",
            "1s",
        ],
    );
    eprintln!("--- doctor, wrong token ---\n{report}");
    assert!(!ok);
    assert!(report.contains("none belongs to cluster"), "{report}");

    // An explicit address that does not answer.
    let (ok, report) = lab.run(&w, &["doctor", "10.77.5.77:5000", "--token", &token]);
    assert!(!ok);
    assert!(report.contains("NOT reachable"), "{report}");
}

#[tokio::test]
async fn find_lists_the_clusters_on_the_lan() {
    let mut lab = lab_or_skip!("find_lists_the_clusters_on_the_lan");
    let o = lab.host("o", &["10.77.7.1/24"]);
    let p = lab.host("p", &["10.77.7.3/24"]);
    let w = lab.host("w", &["10.77.7.2/24"]);
    let find = |lab: &Lab| {
        lab.run(
            &w,
            &["find", "--mdns-interface", "eth0", "--wait", "1500ms"],
        )
    };
    let (ok, out) = find(&lab);
    assert!(!ok && out.is_empty(), "nothing to find yet: {out}");
    lab.orchestrator_with(
        &o,
        "first",
        &["--mdns-interface", "eth0", "--name", "d8-first"],
    )
    .await;
    lab.orchestrator_with(
        &p,
        "second",
        &["--mdns-interface", "eth0", "--name", "d8-second"],
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let (ok, out) = lab.run(
        &w,
        &["find", "--json", "--mdns-interface", "eth0", "--wait", "2s"],
    );
    assert!(ok, "{out}");
    let found: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    let names: Vec<&str> = found.iter().filter_map(|v| v["name"].as_str()).collect();
    assert_eq!(names, ["d8-first", "d8-second"], "{out}");
    assert!(
        found[0]["addrs"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x == "10.77.7.1")),
        "{out}"
    );
    assert_eq!(found[0]["dashboard"], "http://10.77.7.1:5000/");
    assert_eq!(found[0]["openai_base_url"], "http://10.77.7.1:5000/v1");
    assert_eq!(found[0]["version"], env!("CARGO_PKG_VERSION"));
    assert_ne!(
        found[0]["cluster_id"], found[1]["cluster_id"],
        "two clusters"
    );
    let (ok, text) = find(&lab);
    assert!(ok && text.lines().count() == 2, "{text}");
    assert!(
        text.contains("d8-first") && text.contains("http://10.77.7.1:5000/"),
        "{text}"
    );
}
