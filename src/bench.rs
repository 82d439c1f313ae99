//! `d8 bench`: starts a real cluster on loopback and measures it through the
//! HTTP API. The orchestrator is always its own `d8 serve` process. The N echo
//! workers run either inside the bench process (`--worker-mode inprocess`, the
//! default: one runtime for all of them, so 16 workers do not mean 16
//! processes fighting over 2 cores) or as N `d8 join` processes
//! (`--worker-mode process`). Either way every task crosses loopback QUIC.
//!
//! Figures:
//! - throughput: `--tasks` tasks submitted in batches of `--batch` by
//!   `--clients` concurrent HTTP clients; tasks/s from first submit to last result;
//!   with `--endpoint openai`, `--clients` clients each sending one
//!   `POST /v1/chat/completions` at a time and waiting for its answer;
//! - latency: on the idle cluster, `--samples` sequential single-task submits,
//!   each followed by a long-poll for its result (submit → result, p50/p99),
//!   or single chat completions;
//! - orchestrator peak RSS (Linux: VmHWM; elsewhere sampled with sysinfo).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

pub use crate::cli::BenchArgs;
use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use tokio::process::{Child, Command};

/// One row of the result table.
#[derive(Debug, Clone)]
pub struct BenchRow {
    /// Workers.
    pub workers: usize,
    /// Tasks in the throughput run.
    pub tasks: usize,
    /// Tasks per second.
    pub tasks_per_sec: f64,
    /// Idle submit→result median, ms.
    pub p50_ms: f64,
    /// Idle submit→result 99th percentile, ms.
    pub p99_ms: f64,
    /// Orchestrator peak RSS, MiB.
    pub peak_rss_mb: f64,
    /// The orchestrator's CPU time (user + system) per task of the
    /// throughput run, µs; NaN where it cannot be read.
    pub cpu_us_per_task: f64,
}

enum Workers {
    Processes(Vec<Child>),
    InProcess(
        tokio_util::sync::CancellationToken,
        Vec<tokio::task::JoinHandle<()>>,
    ),
}

struct Cluster {
    orchestrator: Child,
    workers: Workers,
    http: reqwest::Client,
    base: String,
    key: String,
}

impl Cluster {
    /// `queued`: the orchestrator's `--max-queued`, at least the tasks of
    /// one run, so the bench measures throughput and not the bound.
    async fn start(
        dir: &Path,
        n: usize,
        slots: u32,
        in_process: bool,
        queued: u64,
    ) -> Result<Cluster> {
        let exe = std::env::current_exe().context("locating the d8 binary")?;
        let port = free_port()?;
        let odir = dir.join("orchestrator");
        let orchestrator = Command::new(&exe)
            .args([
                "serve",
                "--no-mdns",
                "--bind",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--max-queued",
                &queued.to_string(),
                "--data-dir",
            ])
            .arg(&odir)
            .env("D8_LOG", "warn")
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting d8 serve")?;
        let key_file = odir.join(crate::node::files::API_KEY);
        let token_file = odir.join(crate::node::files::JOIN_TOKEN);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !(key_file.exists() && token_file.exists()) {
            if Instant::now() > deadline {
                bail!("orchestrator did not start within 20 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let key = std::fs::read_to_string(&key_file)?.trim().to_owned();
        let token = std::fs::read_to_string(&token_file)?.trim().to_owned();
        let workers = if in_process {
            let stop = tokio_util::sync::CancellationToken::new();
            let token = d8_certs::JoinToken::parse(&token).context("join token")?;
            let mut handles = Vec::new();
            for i in 0..n {
                let providers: Vec<std::sync::Arc<dyn crate::providers::Provider>> =
                    vec![std::sync::Arc::new(crate::providers::echo::Echo::default())];
                let mut cfg = crate::config::WorkerConfig::lan(
                    dir.join(format!("w{i}")),
                    ([127, 0, 0, 1], port).into(),
                    crate::providers::ProviderSet::new(providers),
                );
                cfg.token = Some(token.clone());
                cfg.worker_id = Some(format!("bench-{i}"));
                cfg.slots = slots;
                let stop = stop.clone();
                handles.push(tokio::spawn(async move {
                    if let Err(e) = crate::node::worker::run(cfg, stop).await {
                        crate::err!("bench worker {i}: {e}");
                    }
                }));
            }
            Workers::InProcess(stop, handles)
        } else {
            let mut children = Vec::new();
            for i in 0..n {
                children.push(
                    Command::new(&exe)
                        .args(["join", &format!("127.0.0.1:{port}"), "--provider", "echo"])
                        .args(["--slots", &slots.to_string()])
                        .args(["--worker-id", &format!("bench-{i}"), "--data-dir"])
                        .arg(dir.join(format!("w{i}")))
                        .env("D8_TOKEN", &token)
                        .env("D8_LOG", "warn")
                        .stdout(Stdio::null())
                        .kill_on_drop(true)
                        .spawn()
                        .context("starting d8 join")?,
                );
            }
            Workers::Processes(children)
        };
        let c = Cluster {
            orchestrator,
            workers,
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(64)
                .build()?,
            base: format!("http://127.0.0.1:{port}"),
            key,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(s) = c.get("/api/workers/stats").await
                && s["workers"]["online"].as_u64() == Some(n as u64)
            {
                break;
            }
            if Instant::now() > deadline {
                bail!("{n} workers did not come online within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(c)
    }

    async fn get(&self, path: &str) -> Result<Value> {
        Ok(self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.key)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?)
    }

    async fn post(&self, path: &str, body: &Value) -> Result<Value> {
        Ok(self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.key)
            .json(body)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?)
    }

    /// The orchestrator's CPU time so far, seconds.
    fn cpu_seconds(&self) -> Option<f64> {
        cpu_seconds(self.orchestrator.id()?)
    }

    fn peak_rss_mb(&self) -> f64 {
        let Some(pid) = self.orchestrator.id() else {
            return f64::NAN;
        };
        peak_rss_bytes(pid) as f64 / (1024.0 * 1024.0)
    }

    async fn stop(mut self) {
        match &mut self.workers {
            Workers::Processes(children) => {
                for w in children {
                    let _ = w.kill().await;
                }
            }
            Workers::InProcess(stop, handles) => {
                stop.cancel();
                for h in handles {
                    h.abort();
                }
            }
        }
        let _ = self.orchestrator.kill().await;
    }
}

/// User + system CPU time of `pid`, from `/proc/<pid>/stat` (proc(5) fields
/// 14 and 15, in clock ticks of 1/100 s: USER_HZ on Linux's x86_64 and
/// aarch64).
#[cfg(target_os = "linux")]
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces: fields are counted after its `)`.
    let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    let ticks = |i: usize| fields.get(i)?.parse::<u64>().ok();
    Some((ticks(11)? + ticks(12)?) as f64 / 100.0)
}

#[cfg(not(target_os = "linux"))]
fn cpu_seconds(_pid: u32) -> Option<f64> {
    None
}

/// A memory figure of `pid` from `/proc/<pid>/status`, in bytes: `VmHWM`
/// (peak resident), `VmRSS` (resident now), … (Linux).
#[cfg(target_os = "linux")]
pub fn proc_memory_bytes(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status
        .lines()
        .find(|l| l.strip_prefix(field).is_some_and(|r| r.starts_with(':')))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(target_os = "linux")]
fn peak_rss_bytes(pid: u32) -> u64 {
    proc_memory_bytes(pid, "VmHWM").unwrap_or(0)
}

#[cfg(not(target_os = "linux"))]
fn peak_rss_bytes(pid: u32) -> u64 {
    // No high-water mark available portably: current RSS, read at the end of the run.
    // sysinfo 0.40's constructor is fallible (no process table): report 0.
    let Ok(mut sys) = sysinfo::System::new() else {
        return 0;
    };
    let pid = sysinfo::Pid::from_u32(pid);
    sys.refresh_processes(sysinfo::ProcessesToUpdate::Some(&[pid]), true);
    sys.process(pid).map_or(0, |p| p.memory())
}

fn free_port() -> Result<u16> {
    // Bind both protocols on the same port number to check it is free for each.
    for _ in 0..50 {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = tcp.local_addr()?.port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free port found")
}

fn task_body(i: usize) -> Value {
    json!({ "type": "agent_action", "data": { "messages": [ { "role": "user", "content": format!("bench task {i}") } ] } })
}

fn chat_body(i: usize) -> Value {
    json!({ "model": "echo", "messages": [ { "role": "user", "content": format!("bench task {i}") } ] })
}

/// One request/answer on the OpenAI-compatible endpoint.
async fn chat_once(http: &reqwest::Client, url: &str, key: &str, i: usize) -> Result<()> {
    let v: Value = http
        .post(url)
        .bearer_auth(key)
        .json(&chat_body(i))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    if v["choices"][0]["finish_reason"] != "stop" {
        bail!("unexpected answer: {v}");
    }
    Ok(())
}

/// Throughput of `--clients` clients each sending one chat completion at a
/// time: tasks/s and the orchestrator's CPU per task.
async fn measure_openai(c: &Cluster, args: &BenchArgs) -> Result<(f64, f64)> {
    let url = format!("{}/v1/chat/completions", c.base);
    let cpu0 = c.cpu_seconds();
    let t0 = Instant::now();
    let clients = args.clients.max(1);
    let mut handles = Vec::new();
    for k in 0..clients {
        let (http, url, key) = (c.http.clone(), url.clone(), c.key.clone());
        let mine: Vec<usize> = (k..args.tasks).step_by(clients).collect();
        handles.push(tokio::spawn(async move {
            for i in mine {
                chat_once(&http, &url, &key, i).await?;
            }
            Ok::<(), anyhow::Error>(())
        }));
    }
    for h in handles {
        h.await??;
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu = match (cpu0, c.cpu_seconds()) {
        (Some(a), Some(b)) => (b - a) * 1e6 / args.tasks as f64,
        _ => f64::NAN,
    };
    Ok((args.tasks as f64 / secs, cpu))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

async fn measure(c: &Cluster, args: &BenchArgs, n: usize) -> Result<BenchRow> {
    // Warm up connections and code paths.
    for i in 0..20 {
        let v = c.post("/api/tasks", &task_body(i)).await?;
        let id = v["task_id"].as_str().unwrap_or_default().to_owned();
        c.get(&format!("/api/tasks/{id}?wait=10")).await?;
    }
    let openai = args.endpoint == "openai";
    let chat_url = format!("{}/v1/chat/completions", c.base);
    // Idle latency: submit, then long-poll the result (or one chat
    // completion, which is both).
    let mut lat = Vec::with_capacity(args.samples);
    for i in 0..args.samples {
        let t0 = Instant::now();
        if openai {
            chat_once(&c.http, &chat_url, &c.key, i).await?;
            lat.push(t0.elapsed().as_secs_f64() * 1_000.0);
            continue;
        }
        let v = c.post("/api/tasks", &task_body(i)).await?;
        let id = v["task_id"].as_str().unwrap_or_default().to_owned();
        let r = c.get(&format!("/api/tasks/{id}?wait=10")).await?;
        if r["status"] != "completed" {
            bail!("latency task {id} ended {}", r["status"]);
        }
        lat.push(t0.elapsed().as_secs_f64() * 1_000.0);
    }
    lat.sort_by(f64::total_cmp);
    if openai {
        let (tasks_per_sec, cpu_us_per_task) = measure_openai(c, args).await?;
        return Ok(BenchRow {
            workers: n,
            tasks: args.tasks,
            tasks_per_sec,
            p50_ms: percentile(&lat, 0.5),
            p99_ms: percentile(&lat, 0.99),
            peak_rss_mb: c.peak_rss_mb(),
            cpu_us_per_task,
        });
    }

    // Throughput.
    let before = c.get("/api/workers/stats").await?["tasks"]["completed"]
        .as_u64()
        .unwrap_or(0);
    let batches: Vec<Value> = (0..args.tasks)
        .collect::<Vec<_>>()
        .chunks(args.batch.max(1))
        .map(|ch| Value::Array(ch.iter().map(|i| task_body(*i)).collect()))
        .collect();
    let cpu0 = c.cpu_seconds();
    let t0 = Instant::now();
    let mut clients = Vec::new();
    let per = batches.len().div_ceil(args.clients.max(1));
    for chunk in batches.chunks(per.max(1)) {
        let chunk = chunk.to_vec();
        let http = c.http.clone();
        let url = format!("{}/api/tasks/batch", c.base);
        let key = c.key.clone();
        clients.push(tokio::spawn(async move {
            for b in chunk {
                http.post(&url)
                    .bearer_auth(&key)
                    .json(&b)
                    .send()
                    .await?
                    .error_for_status()?;
            }
            Ok::<(), reqwest::Error>(())
        }));
    }
    for cl in clients {
        cl.await??;
    }
    let target = before + args.tasks as u64;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let s = c.get("/api/workers/stats").await?;
        let done = s["tasks"]["completed"].as_u64().unwrap_or(0)
            + s["tasks"]["failed"].as_u64().unwrap_or(0);
        if done >= target {
            break;
        }
        if Instant::now() > deadline {
            bail!("throughput run did not finish within 300 s ({done}/{target})");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu_us_per_task = match (cpu0, c.cpu_seconds()) {
        (Some(a), Some(b)) => (b - a) * 1e6 / args.tasks as f64,
        _ => f64::NAN,
    };
    Ok(BenchRow {
        workers: n,
        tasks: args.tasks,
        tasks_per_sec: args.tasks as f64 / secs,
        p50_ms: percentile(&lat, 0.5),
        p99_ms: percentile(&lat, 0.99),
        peak_rss_mb: c.peak_rss_mb(),
        cpu_us_per_task,
    })
}

/// Runs the benchmark and prints the table.
pub async fn run(args: BenchArgs) -> Result<Vec<BenchRow>> {
    crate::ensure_crypto_provider();
    let tmp;
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => {
            tmp = tempdir()?;
            tmp.0.clone()
        }
    };
    let mut rows = Vec::new();
    for &n in &args.workers {
        let mut runs = Vec::new();
        for r in 0..args.runs {
            crate::err!(
                "bench: {n} worker(s), {} tasks, run {}/{} …",
                args.tasks,
                r + 1,
                args.runs
            );
            let run_dir = dir.join(format!("n{n}-r{r}"));
            let cluster = Cluster::start(
                &run_dir,
                n,
                args.slots,
                args.worker_mode == "inprocess",
                (args.tasks as u64).max(crate::cli::DEFAULT_MAX_QUEUED),
            )
            .await?;
            let row = measure(&cluster, &args, n).await;
            cluster.stop().await;
            let row = row?;
            crate::err!(
                "bench:   {:.0} tasks/s, {:.0} µs CPU/task, p50 {:.2} ms, p99 {:.2} ms, peak RSS {:.1} MiB",
                row.tasks_per_sec,
                row.cpu_us_per_task,
                row.p50_ms,
                row.p99_ms,
                row.peak_rss_mb
            );
            runs.push(row);
        }
        let median = |f: fn(&BenchRow) -> f64| {
            let mut v: Vec<f64> = runs.iter().map(f).collect();
            v.sort_by(f64::total_cmp);
            percentile(&v, 0.5)
        };
        rows.push(BenchRow {
            workers: n,
            tasks: args.tasks,
            tasks_per_sec: median(|r| r.tasks_per_sec),
            p50_ms: median(|r| r.p50_ms),
            p99_ms: median(|r| r.p99_ms),
            peak_rss_mb: runs.iter().map(|r| r.peak_rss_mb).fold(0.0, f64::max),
            cpu_us_per_task: median(|r| r.cpu_us_per_task),
        });
    }
    crate::out!(
        "workers {}; median of {} run(s) per row; peak RSS is the maximum over the runs",
        if args.worker_mode == "inprocess" {
            "in the bench process"
        } else {
            "as separate processes"
        },
        args.runs
    );
    crate::out!(
        "| workers | tasks | tasks/s | orchestrator CPU/task | p50 submit→result (idle) | p99 | orchestrator peak RSS |"
    );
    crate::out!(
        "|--------:|------:|--------:|----------------------:|-------------------------:|----:|----------------------:|"
    );
    for r in &rows {
        let cpu = if r.cpu_us_per_task.is_nan() {
            "-".to_owned()
        } else {
            format!("{:.0} µs", r.cpu_us_per_task)
        };
        crate::out!(
            "| {} | {} | {:.0} | {cpu} | {:.2} ms | {:.2} ms | {:.1} MiB |",
            r.workers,
            r.tasks,
            r.tasks_per_sec,
            r.p50_ms,
            r.p99_ms,
            r.peak_rss_mb
        );
    }
    Ok(rows)
}

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempdir() -> Result<TempDir> {
    let p = std::env::temp_dir().join(format!(
        "d8-bench-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&p)?;
    Ok(TempDir(p))
}

#[cfg(test)]
mod tests {
    #[cfg(target_os = "linux")]
    #[test]
    fn cpu_time_is_read_from_proc_and_grows_with_work() {
        let pid = std::process::id();
        let before = super::cpu_seconds(pid).expect("readable");
        // Burn CPU until the process's time has grown by 50 ms (USER_HZ
        // granularity is 10 ms); a busy machine only makes it take longer.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let mut x = 0u64;
        let grew = loop {
            for _ in 0..1_000_000 {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
            let now = super::cpu_seconds(pid).expect("readable");
            if now - before >= 0.05 {
                break true;
            }
            if std::time::Instant::now() > deadline {
                break false;
            }
        };
        assert!(grew, "no CPU time counted in 20 s of work");
        assert!(super::cpu_seconds(u32::MAX).is_none(), "no such process");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn memory_figures_are_read_by_their_exact_name() {
        let pid = std::process::id();
        let rss = super::proc_memory_bytes(pid, "VmRSS").expect("VmRSS");
        let peak = super::proc_memory_bytes(pid, "VmHWM").expect("VmHWM");
        assert!(rss > 0 && peak >= rss, "{rss} {peak}");
        // `VmRSS` is not a prefix match for `VmRSSx`-like names.
        assert_eq!(super::proc_memory_bytes(pid, "VmRS"), None);
    }
}
