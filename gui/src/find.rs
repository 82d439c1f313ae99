//! The clusters on this LAN: d8's own mDNS browser (`d8::discovery`, as
//! `d8 find` and `d8 join` use it), each cluster's `/health` for its worker
//! count, and an address typed by the user for networks mDNS does not
//! cross (a VPN, another subnet).

use std::sync::Arc;
use std::time::{Duration, Instant};

use d8::discovery::{Advert, Discovery, LocalAddr};
use serde::Deserialize;

use crate::{Backend, Shared};

/// How long one browse round listens.
pub const ROUND: Duration = Duration::from_millis(1500);

/// One cluster as the window lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Its name (the orchestrator's).
    pub name: String,
    /// Cluster id (from its CA): a worker joins only its own.
    pub cluster_id: Option<String>,
    /// d8 version.
    pub version: String,
    /// HTTP base URL on the address best reached from here.
    pub url: Option<String>,
    /// The address `d8 join` would be given (`HOST:PORT`), for a typed one.
    pub typed: Option<String>,
    /// From its `/health`: online workers, or why it did not answer.
    pub health: Health,
}

/// What a cluster's `/health` said.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Health {
    /// Not asked yet.
    #[default]
    Unknown,
    /// It answered.
    Up {
        /// `ok`, `degraded`, `failing`.
        status: String,
        /// Online workers (older orchestrators do not say).
        workers_online: Option<u64>,
        /// Whether its API needs a key.
        auth: bool,
    },
    /// It did not answer.
    Down(String),
}

/// What the window shows under "Clusters".
#[derive(Debug, Clone, Default, PartialEq)]
pub struct View {
    /// Clusters seen (mDNS, then the typed address).
    pub clusters: Vec<Found>,
    /// mDNS could not run here (the window still offers a typed address).
    pub mdns_error: Option<String>,
    /// A first browse round has ended (before it: "Looking…").
    pub searched: bool,
    /// `d8 doctor`'s explanation, once asked: running, or its output.
    pub doctor: Option<Doctor>,
}

/// `d8 doctor`, run from the window.
#[derive(Debug, Clone, PartialEq)]
pub enum Doctor {
    /// Running since.
    Running(Instant),
    /// What it printed.
    Done(String),
}

#[derive(Debug, Deserialize)]
struct HealthBody {
    status: String,
    #[serde(default)]
    workers_online: Option<u64>,
    #[serde(default)]
    auth: bool,
}

/// The HTTP base URL for an advert, on the address best reached from here
/// (link-local IPv6 is never put in a URL).
pub fn advert_url(a: &Advert, local: &[LocalAddr]) -> Option<String> {
    a.json(local)["dashboard"]
        .as_str()
        .map(|u| u.trim_end_matches('/').to_owned())
}

/// The HTTP base URL for an address the user typed: `HOST`, `HOST:PORT`
/// or `http://HOST:PORT` (as `d8 join` takes it); the port defaults to
/// d8's. `None` when it is not an address.
pub fn typed_url(addr: &str) -> Option<String> {
    let a = addr.trim().trim_end_matches('/');
    if a.is_empty() || a.chars().any(char::is_whitespace) {
        return None;
    }
    if let Some(rest) = a.strip_prefix("http://") {
        return (!rest.is_empty()).then(|| a.to_owned());
    }
    if a.contains("://") {
        return None;
    }
    let port = d8::cli::DEFAULT_PORT;
    // A bare IPv6 address has colons but no port.
    if a.parse::<std::net::Ipv6Addr>().is_ok() {
        return Some(format!("http://[{a}]:{port}"));
    }
    if a.contains(':') {
        return Some(format!("http://{a}"));
    }
    Some(format!("http://{a}:{port}"))
}

/// Asks `url/health`.
pub async fn health(client: &reqwest::Client, url: &str) -> Health {
    let answer = client
        .get(format!("{url}/health"))
        .timeout(Duration::from_secs(2))
        .send()
        .await;
    match answer {
        // 503 bodies say degraded or failing: still an answer.
        Ok(r) => match r.json::<HealthBody>().await {
            Ok(b) => Health::Up {
                status: b.status,
                workers_online: b.workers_online,
                auth: b.auth,
            },
            Err(_) => Health::Down("answered, but not as d8 does".into()),
        },
        Err(e) if e.is_timeout() => Health::Down("no answer within 2 s".into()),
        Err(e) if e.is_connect() => Health::Down("connection refused or unreachable".into()),
        Err(e) => Health::Down(d8::logging::line::clip(&e.to_string(), 160)),
    }
}

/// The background finder.
#[derive(Debug, Clone)]
pub struct Finder {
    view: Shared<View>,
    typed: Shared<String>,
}

impl Finder {
    /// Starts browsing with `discovery` (`None`: mDNS could not start,
    /// `mdns_error` says why).
    pub fn start(discovery: Result<Arc<dyn Discovery>, String>, backend: &Backend) -> Finder {
        let f = Finder {
            view: Shared::new(View::default(), backend.repaint()),
            typed: Shared::new(String::new(), backend.repaint()),
        };
        let me = f.clone();
        backend.spawn(async move { me.run(discovery).await });
        f
    }

    /// What to show.
    pub fn view(&self) -> View {
        self.view.lock().clone()
    }

    /// The address typed by the user (probed with the rest).
    pub fn set_typed(&self, addr: &str) {
        let mut t = self.typed.lock();
        if *t != addr {
            addr.clone_into(&mut t);
        }
    }

    /// Runs `d8 doctor` and keeps what it says.
    pub fn explain(&self, d8: Option<std::path::PathBuf>, backend: &Backend) {
        self.view
            .update(|v| v.doctor = Some(Doctor::Running(Instant::now())));
        let view = self.view.clone();
        backend.spawn_blocking(move || {
            let text = match d8 {
                None => crate::child::NOT_FOUND.to_owned(),
                Some(d8) => {
                    let mut cmd = std::process::Command::new(&d8);
                    cmd.arg("doctor")
                        .env("NO_COLOR", "1")
                        .stdin(std::process::Stdio::null());
                    crate::child::no_window(&mut cmd);
                    match cmd.output() {
                        Ok(o) => {
                            let mut t = String::from_utf8_lossy(&o.stdout).into_owned();
                            t.push_str(&String::from_utf8_lossy(&o.stderr));
                            t
                        }
                        Err(e) => format!("cannot run {}: {e}", d8.display()),
                    }
                }
            };
            view.update(|v| v.doctor = Some(Doctor::Done(text)));
        });
    }

    async fn run(self, discovery: Result<Arc<dyn Discovery>, String>) {
        d8::ensure_crypto_provider();
        let client = match reqwest::Client::builder().no_proxy().build() {
            Ok(c) => c,
            Err(e) => {
                self.view
                    .update(|v| v.mdns_error = Some(format!("no HTTP client: {e}")));
                return;
            }
        };
        let disc = match discovery {
            Ok(d) => Some(d),
            Err(e) => {
                self.view.update(|v| v.mdns_error = Some(e));
                None
            }
        };
        loop {
            let started = Instant::now();
            let adverts = match &disc {
                Some(d) => match d.discover(None, ROUND).await {
                    Ok(a) => a,
                    Err(e) => {
                        self.view.update(|v| v.mdns_error = Some(e.to_string()));
                        Vec::new()
                    }
                },
                None => Vec::new(),
            };
            let local = d8::discovery::local_addrs(&[]);
            let mut found: Vec<Found> = adverts
                .iter()
                .map(|a| Found {
                    name: a.name.clone(),
                    cluster_id: Some(a.cluster_id.clone()),
                    version: a.version.clone(),
                    url: advert_url(a, &local),
                    typed: None,
                    health: Health::Unknown,
                })
                .collect();
            found.sort_by(|a, b| a.name.cmp(&b.name));
            let typed = self.typed.lock().clone();
            if let Some(url) = typed_url(&typed) {
                found.push(Found {
                    name: typed.trim().to_owned(),
                    cluster_id: None,
                    version: String::new(),
                    url: Some(url),
                    typed: Some(typed.trim().to_owned()),
                    health: Health::Unknown,
                });
            }
            for f in &mut found {
                if let Some(u) = &f.url {
                    f.health = health(&client, u).await;
                }
            }
            self.view.update_if_changed(|v| {
                v.clusters = found;
                v.searched = true;
            });
            // Without mDNS nothing paces the loop but this.
            let left = Duration::from_secs(2).saturating_sub(started.elapsed());
            tokio::time::sleep(left).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_addresses_become_http_urls_as_d8_join_reads_them() {
        assert_eq!(
            typed_url("10.0.0.5").as_deref(),
            Some("http://10.0.0.5:5000")
        );
        assert_eq!(
            typed_url(" pi.local:7000 ").as_deref(),
            Some("http://pi.local:7000")
        );
        assert_eq!(
            typed_url("http://10.0.0.5:5000/").as_deref(),
            Some("http://10.0.0.5:5000")
        );
        assert_eq!(
            typed_url("fd00::5").as_deref(),
            Some("http://[fd00::5]:5000")
        );
        assert_eq!(typed_url(""), None);
        assert_eq!(typed_url("two words"), None);
        assert_eq!(
            typed_url("https://x"),
            None,
            "d8 serves plain HTTP on the LAN"
        );
    }
}
