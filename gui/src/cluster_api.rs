//! The cluster as its orchestrator's HTTP API shows it, given the API key:
//! workers, queue, success rate, and this computer's share of the work.

use std::time::Duration;

use serde::Deserialize;

use crate::{Backend, Shared};

/// How often the API is asked.
pub const EVERY: Duration = Duration::from_secs(2);

/// One worker, as `GET /api/workers` lists it (the parts shown).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct Worker {
    /// Its id.
    pub worker_id: String,
    /// `online`, `offline`, `revoked`.
    pub status: String,
    /// Providers it runs (online workers).
    pub providers: Option<Vec<String>>,
    /// Tasks running.
    pub active_tasks: Option<u64>,
    /// Tasks completed since it connected.
    pub completed_tasks: Option<u64>,
    /// Its OS.
    pub os: Option<String>,
}

/// The numbers shown.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// Workers online / enrolled.
    pub online: u64,
    /// Enrolled workers.
    pub total: u64,
    /// Tasks waiting.
    pub pending: u64,
    /// Tasks running.
    pub running: u64,
    /// Completed, all time.
    pub completed: u64,
    /// Failed, all time.
    pub failed: u64,
    /// Percent of finished tasks that completed.
    pub success_rate: f64,
    /// Workers.
    pub workers: Vec<Worker>,
}

impl Snapshot {
    /// This computer's share of the tasks completed by the online workers
    /// (`me`: its worker id): (its count, everyone's).
    pub fn share(&self, me: &str) -> (u64, u64) {
        let online = self.workers.iter().filter(|w| w.status == "online");
        let all: u64 = online.clone().filter_map(|w| w.completed_tasks).sum();
        let mine = online
            .filter(|w| w.worker_id == me)
            .filter_map(|w| w.completed_tasks)
            .sum();
        (mine, all)
    }
}

/// What the window shows.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum View {
    /// No URL or no key yet.
    #[default]
    Idle,
    /// The last answer.
    Ok(Snapshot),
    /// The last attempt failed (wrong key, down).
    Failed(String),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Target {
    url: String,
    key: String,
}

/// Polls the API of the chosen cluster.
#[derive(Debug, Clone)]
pub struct ClusterApi {
    target: Shared<Option<Target>>,
    view: Shared<View>,
}

#[derive(Deserialize)]
struct Stats {
    workers: StatsWorkers,
    tasks: StatsTasks,
    performance: StatsPerf,
}
#[derive(Deserialize)]
struct StatsWorkers {
    total: u64,
    online: u64,
}
#[derive(Deserialize)]
struct StatsTasks {
    pending: u64,
    assigned: u64,
    completed: u64,
    failed: u64,
}
#[derive(Deserialize)]
struct StatsPerf {
    success_rate: f64,
}

impl ClusterApi {
    /// Starts polling (nothing is asked until [`Self::set_target`]).
    pub fn start(backend: &Backend) -> ClusterApi {
        let api = ClusterApi {
            target: Shared::new(None, backend.repaint()),
            view: Shared::new(View::Idle, backend.repaint()),
        };
        let me = api.clone();
        backend.spawn(async move { me.run().await });
        api
    }

    /// Which cluster, with which key (`None`: stop asking).
    pub fn set_target(&self, url: Option<&str>, key: Option<&str>) {
        let t = match (url, key) {
            (Some(u), Some(k)) if !u.is_empty() && !k.is_empty() => Some(Target {
                url: u.to_owned(),
                key: k.to_owned(),
            }),
            _ => None,
        };
        let mut cur = self.target.lock();
        if *cur != t {
            *cur = t;
            drop(cur);
            self.view.update(|v| *v = View::Idle);
        }
    }

    /// What to show.
    pub fn view(&self) -> View {
        self.view.lock().clone()
    }

    async fn run(self) {
        d8::ensure_crypto_provider();
        let Ok(client) = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(3))
            .build()
        else {
            return;
        };
        loop {
            let target = self.target.lock().clone();
            if let Some(t) = target {
                let answer = fetch(&client, &t).await;
                // Only if the target did not change meanwhile.
                if self.target.lock().as_ref() == Some(&t) {
                    self.view.update_if_changed(|v| {
                        *v = match answer {
                            Ok(s) => View::Ok(s),
                            Err(e) => View::Failed(e),
                        }
                    });
                }
            }
            tokio::time::sleep(EVERY).await;
        }
    }
}

async fn get<T: serde::de::DeserializeOwned>(
    client: &reqwest::Client,
    t: &Target,
    path: &str,
) -> Result<T, String> {
    let r = client
        .get(format!("{}{path}", t.url))
        .bearer_auth(&t.key)
        .send()
        .await
        .map_err(|e| {
            if e.is_timeout() {
                "no answer within 3 s".to_owned()
            } else {
                "cannot reach the orchestrator".to_owned()
            }
        })?;
    match r.status().as_u16() {
        200 => r
            .json::<T>()
            .await
            .map_err(|_| "the orchestrator answered in an unknown shape".to_owned()),
        401 => Err("the API key was refused".to_owned()),
        s => Err(format!("the orchestrator answered {s}")),
    }
}

async fn fetch(client: &reqwest::Client, t: &Target) -> Result<Snapshot, String> {
    let s: Stats = get(client, t, "/api/workers/stats").await?;
    let workers: Vec<Worker> = get(client, t, "/api/workers").await?;
    Ok(Snapshot {
        online: s.workers.online,
        total: s.workers.total,
        pending: s.tasks.pending,
        running: s.tasks.assigned,
        completed: s.tasks.completed,
        failed: s.tasks.failed,
        success_rate: s.performance.success_rate,
        workers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_share_counts_online_workers_only() {
        let w = |id: &str, status: &str, done: u64| Worker {
            worker_id: id.into(),
            status: status.into(),
            completed_tasks: Some(done),
            ..Worker::default()
        };
        let s = Snapshot {
            workers: vec![
                w("me", "online", 30),
                w("pi", "online", 10),
                w("old", "offline", 99),
            ],
            ..Snapshot::default()
        };
        assert_eq!(s.share("me"), (30, 40));
        assert_eq!(s.share("stranger"), (0, 40));
    }
}
