//! "Start worker on this computer": a child `d8 join`, watched through the
//! status file it keeps in its data dir and stopped through a drain
//! request (see `d8::node::worker::status`).
//!
//! The file, not the child handle, says whether a worker runs: a worker
//! started by an earlier window (kept running when that window closed, or
//! started at login) is shown and stopped the same way. A file rewritten in
//! the last [`FRESH`] belongs to a live worker; the worker rewrites it every
//! second.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use d8::node::files;
use d8::providers::vendor;
use d8::task::ProviderCooldown;
use serde::Deserialize;

use crate::child::{self, Spec};
use crate::{Backend, Shared};

/// A status file older than this is a worker's last word, not a live one.
pub const FRESH: Duration = Duration::from_secs(4);

/// How often the status file is read.
pub const POLL: Duration = Duration::from_millis(400);

/// The worker's `status.json`, as `d8 join` writes it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct Status {
    /// Its process id.
    pub pid: u32,
    /// d8 version.
    pub version: String,
    /// `starting`, `enrolling`, `connecting`, `connected`, `draining`,
    /// `stopped` or `failed`.
    pub state: String,
    /// When it entered `state` (RFC 3339).
    pub since: String,
    /// Its id in the cluster.
    pub worker_id: Option<String>,
    /// The orchestrator it is connected to.
    pub orchestrator: Option<String>,
    /// Tasks running now.
    pub active: u64,
    /// Tasks completed since it started.
    pub completed: u64,
    /// Tasks failed since it started.
    pub failed: u64,
    /// Tasks given back to run elsewhere (a provider here rate limited or
    /// out of quota; not failures).
    pub handed_back: u64,
    /// Providers (or models) resting, with time left as of the file.
    pub rests: Vec<ProviderCooldown>,
    /// Why the last connection ended or the worker failed.
    pub last_error: Option<String>,
}

impl Status {
    /// Whether this state is one of a running worker.
    pub fn running(&self) -> bool {
        !matches!(self.state.as_str(), "stopped" | "failed" | "")
    }
}

/// What the window shows about the local worker.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct View {
    /// The last status read, and when (rest countdowns move from there).
    pub status: Option<(Status, Instant)>,
    /// Whether a worker process is alive (fresh file, or our child running).
    pub alive: bool,
    /// A stop was asked and the worker has not ended yet.
    pub stopping: bool,
    /// How our child ended, when it did on its own (`exit status: 1`).
    pub exited: Option<String>,
    /// Start was pressed and the process is not up yet (keys are being
    /// read): a second press must not start a second worker.
    pub launching: bool,
    /// Starting failed (no `d8` executable, no data dir).
    pub start_error: Option<String>,
    /// The newest lines of its log.
    pub log: Vec<String>,
}

impl View {
    /// The state word, `stopped` when nothing runs.
    pub fn state(&self) -> &str {
        match &self.status {
            Some((s, _)) if self.alive => s.state.as_str(),
            _ => "stopped",
        }
    }
}

/// One provider the worker is to run, with what reaches it through its
/// environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderRun {
    /// Provider kind.
    pub kind: String,
    /// Its key (keyless providers: `None`).
    pub key: Option<String>,
    /// Another base URL, if the user gave one.
    pub base_url: Option<String>,
    /// `local`, `free` or `paid`, if the user chose one.
    pub tier: Option<String>,
}

/// How to start the worker.
#[derive(Debug, Clone, Default)]
pub struct Launch {
    /// Orchestrator address typed by the user; `None`: find it over mDNS.
    pub address: Option<String>,
    /// Join token, when this machine is not enrolled yet.
    pub token: Option<String>,
    /// Providers.
    pub providers: Vec<ProviderRun>,
    /// Tasks run at once.
    pub slots: u32,
    /// Extra arguments (tests: `--mdns-interface`; nothing secret).
    pub extra_args: Vec<String>,
}

/// Every variable through which configuration could reach `d8 join` from
/// this process's own environment: each is removed, then the chosen ones
/// set, so a key the user did not tick never reaches the worker.
pub fn inherited_config_vars() -> Vec<String> {
    let mut out: Vec<String> = [
        "API_KEY",
        "D8_TOKEN",
        "D8_PROVIDERS",
        "D8_CONFIG",
        "D8_DATA_DIR",
        "D8_SLOTS",
        "WORKER_TYPE",
        "WORKER_ID",
        "ORCHESTRATOR_PORT",
        "OLLAMA_HOST",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    for v in &vendor::VENDORS {
        out.extend(
            [v.key_var, v.url_var, v.legacy_url_var, v.models_var]
                .into_iter()
                .flatten()
                .map(str::to_owned),
        );
        out.push(format!("{}_TIER", v.env_prefix));
    }
    out.sort();
    out.dedup();
    out
}

/// The command line and environment of `d8 join` for `launch`.
pub fn spec(d8: &Path, data_dir: &Path, launch: &Launch) -> Spec {
    let mut args: Vec<std::ffi::OsString> = vec!["join".into()];
    if let Some(a) = &launch.address {
        args.push(a.into());
    }
    args.push("--data-dir".into());
    args.push(data_dir.into());
    args.push("--slots".into());
    args.push(launch.slots.clamp(1, 1024).to_string().into());
    let mut env = Vec::new();
    for p in &launch.providers {
        args.push("--provider".into());
        args.push(p.kind.clone().into());
        let Some(v) = vendor::find(&p.kind) else {
            continue;
        };
        if let (Some(var), Some(key)) = (v.key_var, &p.key) {
            env.push((var.to_owned(), key.clone()));
        }
        if let (Some(var), Some(url)) = (v.url_var, &p.base_url) {
            env.push((var.to_owned(), url.clone()));
        }
        if let Some(t) = &p.tier {
            env.push((format!("{}_TIER", v.env_prefix), t.clone()));
        }
    }
    if let Some(t) = &launch.token {
        env.push(("D8_TOKEN".to_owned(), t.clone()));
    }
    args.extend(launch.extra_args.iter().map(Into::into));
    Spec {
        program: d8.to_owned(),
        args,
        env,
        env_remove: inherited_config_vars(),
        log: data_dir.join(LOG),
    }
}

/// The worker's log file in its data dir.
pub const LOG: &str = "worker.log";

/// The local worker.
#[derive(Debug, Clone)]
pub struct LocalWorker {
    data_dir: PathBuf,
    child: Arc<Mutex<Option<Child>>>,
    view: Shared<View>,
    log: Arc<child::Tail>,
}

impl LocalWorker {
    /// The worker with data dir `data_dir`; starts watching its status file.
    pub fn new(data_dir: PathBuf, backend: &Backend) -> LocalWorker {
        let w = LocalWorker {
            data_dir,
            child: Arc::new(Mutex::new(None)),
            view: Shared::new(View::default(), backend.repaint()),
            log: Arc::new(child::Tail::new(200)),
        };
        let watcher = w.clone();
        backend.spawn(async move {
            let mut tick = tokio::time::interval(POLL);
            loop {
                tick.tick().await;
                watcher.refresh();
            }
        });
        w
    }

    /// Its data dir.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Whether this machine holds a worker certificate (a token is not
    /// needed again).
    pub fn enrolled(&self) -> bool {
        self.data_dir.join(files::WORKER_CERT).is_file()
    }

    /// What to show.
    pub fn view(&self) -> View {
        self.view.lock().clone()
    }

    /// Start was pressed: shown as starting until [`Self::start`] runs.
    pub fn launching(&self) {
        self.view.update(|v| {
            v.launching = true;
            v.start_error = None;
        });
    }

    /// Start was pressed but cannot go on (`why`, shown in the bar).
    pub fn not_started(&self, why: String) {
        self.view.update(|v| {
            v.launching = false;
            v.start_error = Some(why);
        });
    }

    /// Starts `d8 join` (`d8`: the executable).
    pub fn start(&self, d8: Option<&Path>, launch: &Launch) {
        // A request left from an earlier stop must not stop this run (the
        // worker ignores one older than itself; remove it anyway).
        let _ = std::fs::remove_file(self.data_dir.join(files::DRAIN_REQUEST));
        let result = child::start(d8, &self.data_dir, |d8| spec(d8, &self.data_dir, launch));
        match result {
            Ok(c) => {
                *self.child.lock().unwrap_or_else(|p| p.into_inner()) = Some(c);
                self.view.update(|v| {
                    v.start_error = None;
                    v.exited = None;
                    v.stopping = false;
                    v.launching = false;
                    v.alive = true;
                    v.status = None;
                });
            }
            Err(e) => self.not_started(e),
        }
    }

    /// Asks the worker to finish its tasks and stop.
    pub fn stop(&self) -> Result<(), String> {
        let path = self.data_dir.join(files::DRAIN_REQUEST);
        std::fs::write(&path, b"").map_err(|e| format!("{}: {e}", path.display()))?;
        self.view.update(|v| v.stopping = true);
        Ok(())
    }

    /// Ends our child at once (a second click while draining).
    pub fn force_stop(&self) {
        if let Some(c) = self
            .child
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
        {
            let _ = c.kill();
        }
    }

    /// Reads the status file and the child's state.
    pub fn refresh(&self) {
        let path = self.data_dir.join(files::STATUS);
        let read = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<Status>(&b).ok());
        let fresh = std::fs::metadata(&path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .is_some_and(|age| age < FRESH);
        let mut exited = None;
        let mut child_running = false;
        {
            let mut slot = self.child.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(c) = slot.as_mut() {
                match c.try_wait() {
                    Ok(None) => child_running = true,
                    Ok(Some(code)) => {
                        if !code.success() {
                            exited = Some(code.to_string());
                        }
                        *slot = None;
                    }
                    Err(_) => *slot = None,
                }
            }
        }
        let log = self.log.tail_if_changed(&self.data_dir.join(LOG));
        self.view.update_if_changed(|v| {
            let running_state = read.as_ref().is_some_and(Status::running);
            v.alive = child_running || (fresh && running_state);
            if let Some(s) = read {
                // The read time moves countdowns: only a new status resets it.
                if v.status.as_ref().is_none_or(|(old, _)| *old != s) {
                    v.status = Some((s, Instant::now()));
                }
            }
            if exited.is_some() {
                v.exited = exited;
            }
            if !v.alive {
                v.stopping = false;
            }
            if let Some(log) = log {
                v.log = log;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_the_token_travel_in_the_environment_only() {
        let launch = Launch {
            address: Some("10.1.2.3:5000".into()),
            token: Some("d8tok-secret".into()),
            providers: vec![
                ProviderRun {
                    kind: "groq".into(),
                    key: Some("gsk_secret".into()),
                    base_url: None,
                    tier: Some("paid".into()),
                },
                ProviderRun {
                    kind: "openai".into(),
                    key: Some("sk-secret".into()),
                    base_url: Some("http://127.0.0.1:9/v1".into()),
                    tier: None,
                },
                ProviderRun {
                    kind: "ollama".into(),
                    key: None,
                    base_url: None,
                    tier: None,
                },
            ],
            slots: 3,
            extra_args: vec![],
        };
        let s = spec(Path::new("/opt/d8/d8"), Path::new("/data/w"), &launch);
        let args: Vec<String> = s
            .args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let line = args.join(" ");
        assert_eq!(
            line,
            "join 10.1.2.3:5000 --data-dir /data/w --slots 3 --provider groq --provider openai --provider ollama"
        );
        assert!(!line.contains("secret"));
        let env: std::collections::BTreeMap<_, _> = s.env.iter().cloned().collect();
        assert_eq!(env["GROQ_API_KEY"], "gsk_secret");
        assert_eq!(env["GROQ_TIER"], "paid");
        assert_eq!(env["OPENAI_API_KEY"], "sk-secret");
        assert_eq!(env["OPENAI_BASE_URL"], "http://127.0.0.1:9/v1");
        assert_eq!(env["D8_TOKEN"], "d8tok-secret");
        assert_eq!(env.len(), 5);
        // Every key variable is cleared first: an inherited ANTHROPIC_API_KEY
        // does not reach a worker the user gave no Anthropic key.
        for var in [
            "ANTHROPIC_API_KEY",
            "GEMINI_API_KEY",
            "API_KEY",
            "D8_CONFIG",
            "GROQ_API_KEY",
        ] {
            assert!(s.env_remove.iter().any(|v| v == var), "{var}");
        }
        assert_eq!(s.log, Path::new("/data/w").join(LOG));
    }

    #[test]
    fn a_status_file_from_a_newer_worker_still_reads() {
        let s: Status = serde_json::from_str(
            r#"{"pid":7,"state":"connected","active":1,"completed":2,"failed":0,
               "rests":[{"provider":"groq","model":null,"remaining_ms":41000,"disabled":false,"reason":"rate_limited"}],
               "something_new":{"x":1}}"#,
        )
        .expect("parse");
        assert!(s.running());
        assert_eq!(s.rests[0].remaining_ms, 41_000);
    }
}
