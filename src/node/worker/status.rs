//! What a running worker tells its own machine: `<data-dir>/status.json`,
//! rewritten every second (and at each change of state) while it runs, and
//! a last time when it stops. The desktop app supervises `d8 join` as a
//! child process and reads this file to show it live; a person can `cat`
//! it. Nothing secret goes in it (no key, no token).
//!
//! ```json
//! {"pid": 4242, "version": "0.1.0", "state": "connected",
//!  "worker_id": "laptop", "orchestrator": "192.168.1.20:5000",
//!  "since": "2026-11-30T17:00:00.000Z", "active": 1, "completed": 12,
//!  "failed": 0, "handed_back": 3,
//!  "rests": [{"provider": "groq", "model": null,
//!  "remaining_ms": 41000, "disabled": false, "reason": "rate_limited"}],
//!  "last_error": null, "updated_at": "2026-11-30T17:03:12.000Z"}
//! ```
//!
//! `state` is `starting`, `enrolling`, `connecting`, `connected`,
//! `draining`, `stopped` or `failed`; `since` is when it entered it;
//! `last_error` says why the last connection ended or the worker failed;
//! `handed_back` counts tasks given back to run elsewhere because a provider
//! here was rate limited or out of quota (not failures).
//! The file is written whole and renamed into place: a reader never sees
//! half of it.
//!
//! The other way: a file named `drain-request` appearing in the data dir
//! makes the worker drain and stop, as Ctrl-C does (checked each second;
//! the file is removed). A supervisor stops its child this way on every OS,
//! where a windowless process on Windows gets no Ctrl-C.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::json;
use tokio::sync::Notify;

use crate::providers::ProviderSet;
use crate::task::rfc3339;

/// How often the file is rewritten while nothing changes (countdowns move).
pub const EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
struct Inner {
    state: &'static str,
    since_ms: u64,
    worker_id: Option<String>,
    orchestrator: Option<String>,
    last_error: Option<String>,
}

/// The worker's state as the status file shows it; shared by the run loop
/// and its session (task counts are in [`super::Load`]).
#[derive(Debug)]
pub(super) struct Board {
    path: PathBuf,
    inner: Mutex<Inner>,
    changed: Notify,
}

fn now_ms() -> u64 {
    crate::logging::tap::now_ms()
}

impl Board {
    /// A board writing to `<data_dir>/status.json`, in state `starting`.
    pub(super) fn new(data_dir: &Path) -> Board {
        Board {
            path: data_dir.join(crate::node::files::STATUS),
            inner: Mutex::new(Inner {
                state: "starting",
                since_ms: now_ms(),
                ..Inner::default()
            }),
            changed: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Enters `state` (a change is written at once).
    pub(super) fn set(&self, state: &'static str) {
        let mut i = self.lock();
        if i.state != state {
            i.state = state;
            i.since_ms = now_ms();
            drop(i);
            self.changed.notify_one();
        }
    }

    /// Connected to `orchestrator` as `worker_id`.
    pub(super) fn connected(&self, worker_id: &str, orchestrator: String) {
        {
            let mut i = self.lock();
            i.worker_id = Some(worker_id.to_owned());
            i.orchestrator = Some(orchestrator);
        }
        self.set("connected");
    }

    /// Why the last connection ended, or the worker failed.
    pub(super) fn error(&self, why: &str) {
        self.lock().last_error = Some(crate::logging::line::clip(why, 512));
        self.changed.notify_one();
    }

    /// The file's content now.
    fn json(&self, load: &super::Load, providers: &ProviderSet) -> serde_json::Value {
        let i = self.lock();
        json!({
            "pid": std::process::id(),
            "version": env!("CARGO_PKG_VERSION"),
            "state": i.state,
            "since": rfc3339(i.since_ms),
            "worker_id": i.worker_id,
            "orchestrator": i.orchestrator,
            "active": load.active.load(Ordering::Relaxed),
            "completed": load.completed.load(Ordering::Relaxed),
            "failed": load.failed.load(Ordering::Relaxed),
            "handed_back": load.handed_back.load(Ordering::Relaxed),
            "rests": providers.cooldowns(),
            "last_error": i.last_error,
            "updated_at": rfc3339(now_ms()),
        })
    }

    /// Writes the file (whole, then renamed into place); a failure is
    /// logged once per run of failures, never fatal.
    fn write(&self, load: &super::Load, providers: &ProviderSet, failing: &mut bool) {
        let text = self.json(load, providers).to_string();
        let part = self.path.with_extension("json.part");
        let r = std::fs::write(&part, text).and_then(|()| std::fs::rename(&part, &self.path));
        match r {
            Ok(()) => *failing = false,
            Err(e) if !*failing => {
                *failing = true;
                tracing::warn!(path = %self.path.display(), error = %e, "cannot write the worker's status file");
            }
            Err(_) => {}
        }
    }
}

/// Keeps the file current until `stop` fires, then writes it a last time
/// with whatever final state the run loop set.
pub(super) async fn keep_written(
    board: Arc<Board>,
    load: Arc<super::Load>,
    providers: ProviderSet,
    stop: tokio_util::sync::CancellationToken,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut failing = false;
    let request = board.path.with_file_name(crate::node::files::DRAIN_REQUEST);
    loop {
        if !shutdown.is_cancelled() && std::fs::remove_file(&request).is_ok() {
            tracing::info!("drain requested through the data dir");
            shutdown.cancel();
        }
        board.write(&load, &providers, &mut failing);
        tokio::select! {
            () = tokio::time::sleep(EVERY) => {}
            () = board.changed.notified() => {}
            () = stop.cancelled() => break,
        }
    }
    board.write(&load, &providers, &mut failing);
}
