//! "Start a cluster here": a child `d8 serve` for the first machine, its
//! join token to copy to the others, and its API key for the cluster view
//! (both read from its data dir, where `d8 serve` keeps them).
//!
//! It is stopped cleanly through a `stop-request` file in its data dir (as
//! Ctrl-C would; the same on every OS). A cluster kept running when the
//! window closed is found again by its `/health` on this machine and
//! stopped the same way.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use d8::node::files;

use crate::child::{self, Spec};
use crate::find::{Health, health};
use crate::{Backend, Shared};

/// The orchestrator's log file in its data dir.
pub const LOG: &str = "serve.log";

/// `lines` with every occurrence of `secrets` masked.
pub fn hide(lines: Vec<String>, secrets: &[Option<String>]) -> Vec<String> {
    lines
        .into_iter()
        .map(|mut l| {
            for s in secrets.iter().flatten() {
                if l.contains(s.as_str()) {
                    l = l.replace(s.as_str(), "[hidden]");
                }
            }
            l
        })
        .collect()
}

/// What the window shows about the cluster on this computer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct View {
    /// Its `/health` on loopback answers.
    pub up: bool,
    /// Our child is running (it may not answer yet).
    pub starting: bool,
    /// A stop was asked.
    pub stopping: bool,
    /// Its standing join token (secret: shown on demand only).
    pub token: Option<String>,
    /// Its HTTP API key (secret).
    pub api_key: Option<String>,
    /// How our child ended, if it failed.
    pub exited: Option<String>,
    /// Starting failed.
    pub start_error: Option<String>,
    /// Online workers, from its `/health`.
    pub workers_online: Option<u64>,
    /// The newest lines of its log.
    pub log: Vec<String>,
}

/// The cluster started (or found running) on this computer.
#[derive(Debug, Clone)]
pub struct LocalCluster {
    data_dir: PathBuf,
    port: u16,
    child: Arc<Mutex<Option<Child>>>,
    view: Shared<View>,
}

impl LocalCluster {
    /// The orchestrator with data dir `data_dir` serving on `port`; starts
    /// watching for it.
    pub fn new(data_dir: PathBuf, port: u16, backend: &Backend) -> LocalCluster {
        let c = LocalCluster {
            data_dir,
            port,
            child: Arc::new(Mutex::new(None)),
            view: Shared::new(View::default(), backend.repaint()),
        };
        let me = c.clone();
        backend.spawn(async move { me.watch().await });
        c
    }

    /// Its HTTP base URL from this machine.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its data dir.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// What to show.
    pub fn view(&self) -> View {
        self.view.lock().clone()
    }

    /// Starts `d8 serve` (`extra`: more flags, nothing secret).
    pub fn start(&self, d8: Option<&Path>, extra: &[String]) {
        let result = child::start(d8, &self.data_dir, |d8| {
            let mut args: Vec<std::ffi::OsString> = vec![
                "serve".into(),
                "--data-dir".into(),
                self.data_dir.clone().into(),
                "--port".into(),
                self.port.to_string().into(),
            ];
            args.extend(extra.iter().map(Into::into));
            Spec {
                program: d8.to_owned(),
                args,
                env: Vec::new(),
                // The flags above say where; nothing inherited may differ.
                env_remove: [
                    "D8_DATA_DIR",
                    "ORCHESTRATOR_PORT",
                    "D8_HTTP_PORT",
                    "D8_QUIC_PORT",
                    "D8_NO_AUTH",
                ]
                .map(str::to_owned)
                .to_vec(),
                log: self.data_dir.join(LOG),
            }
        });
        match result {
            Ok(c) => {
                *self.child.lock().unwrap_or_else(|p| p.into_inner()) = Some(c);
                self.view.update(|v| {
                    v.start_error = None;
                    v.exited = None;
                    v.starting = true;
                    v.stopping = false;
                });
            }
            Err(e) => self.view.update(|v| v.start_error = Some(e)),
        }
    }

    /// Asks it to stop cleanly.
    pub fn stop(&self) -> Result<(), String> {
        let path = self.data_dir.join(files::STOP_REQUEST);
        std::fs::write(&path, b"").map_err(|e| format!("{}: {e}", path.display()))?;
        self.view.update(|v| v.stopping = true);
        Ok(())
    }

    fn secret(&self, name: &str) -> Option<String> {
        std::fs::read_to_string(self.data_dir.join(name))
            .ok()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
    }

    async fn watch(self) {
        d8::ensure_crypto_provider();
        let Ok(client) = reqwest::Client::builder().no_proxy().build() else {
            return;
        };
        let url = self.url();
        let tail = child::Tail::new(100);
        loop {
            let (starting, exited) = {
                let mut slot = self.child.lock().unwrap_or_else(|p| p.into_inner());
                match slot.as_mut().map(Child::try_wait) {
                    Some(Ok(None)) => (true, None),
                    Some(Ok(Some(code))) => {
                        *slot = None;
                        (false, (!code.success()).then(|| code.to_string()))
                    }
                    Some(Err(_)) => {
                        *slot = None;
                        (false, None)
                    }
                    None => (false, None),
                }
            };
            let h = health(&client, &url).await;
            let (up, workers) = match &h {
                Health::Up { workers_online, .. } => (true, *workers_online),
                _ => (false, None),
            };
            // Secrets only from a cluster that runs here.
            let (token, key) = if up || starting {
                (self.secret(files::JOIN_TOKEN), self.secret(files::API_KEY))
            } else {
                (None, None)
            };
            // `d8 serve` prints its join token and API key at start: the
            // window shows them only on demand, never in the log tail.
            let secrets = [self.secret(files::JOIN_TOKEN), self.secret(files::API_KEY)];
            let log = if starting || up || exited.is_some() {
                tail.tail_if_changed(&self.data_dir.join(LOG))
                    .map(|lines| hide(lines, &secrets))
            } else {
                None
            };
            self.view.update_if_changed(|v| {
                v.up = up;
                v.starting = starting;
                v.workers_online = workers;
                v.token = token;
                v.api_key = key;
                if exited.is_some() {
                    v.exited = exited;
                }
                if !up && !starting {
                    v.stopping = false;
                }
                if let Some(log) = log {
                    v.log = log;
                }
            });
            tokio::time::sleep(Duration::from_millis(700)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_tail_never_shows_the_token_or_the_key() {
        let lines = vec![
            "  join token       D8-1-abc-secretpart".to_owned(),
            "  HTTP API key     d8k_topsecret (also in /x/api-key)".to_owned(),
            "  on each worker:  d8 join --token D8-1-abc-secretpart --provider echo".to_owned(),
        ];
        let secrets = [
            Some("D8-1-abc-secretpart".to_owned()),
            Some("d8k_topsecret".to_owned()),
            None,
        ];
        let shown = hide(lines, &secrets).join("\n");
        assert!(
            !shown.contains("secretpart") && !shown.contains("topsecret"),
            "{shown}"
        );
        assert_eq!(shown.matches("[hidden]").count(), 3, "{shown}");
    }
}
