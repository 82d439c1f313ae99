//! The async shells around the pure core: orchestrator and worker processes.
//!
//! Who owns what:
//! - [`cluster`]: the orchestrator's service facade ([`Cluster`]): submit,
//!   task lookup, cancel, agents, tokens, workers, stats, enrollment. The
//!   HTTP API talks only to it.
//! - [`orchestrator`]: starts a node: identity, the QUIC accept loop (one
//!   task per worker connection), the HTTP server, mDNS, retention.
//! - `actor`: the scheduler actor, sole owner of [`crate::core::Scheduler`];
//!   turns its actions into QUIC streams, store writes and client wake-ups.
//! - [`registry`]: join tokens, enrolled workers, revocations.
//! - [`gate`]: what an unauthenticated QUIC connection may cost.
//! - `live_output`: streamed output of running tasks, for HTTP subscribers.
//! - [`logs`]: the log ring: the orchestrator's lines and its workers'.
//! - [`usage`]: usage and cost accounting, the orchestrator's prices file.
//! - [`worker`]: `d8 join`: identity and enrollment, the session with the
//!   orchestrator, task execution.
//! - [`files`]: the data dir: every file name, default location, safe writes.
//! - [`vitals`]: which long-lived parts are running (for `/health` and for
//!   exiting when one dies).

pub(crate) mod actor;
pub mod cache;
pub mod cluster;
pub mod events;
pub mod files;
pub mod gate;
pub(crate) mod live_output;
pub mod logs;
pub mod models;
pub mod orchestrator;
pub mod registry;
pub mod task_state;
pub mod usage;
pub mod vitals;
pub mod worker;

pub use cluster::{Cluster, ClusterError};

use std::sync::atomic::{AtomicU64, Ordering};

use crate::task::Millis;

/// Wall-clock milliseconds since the Unix epoch, never going backwards within
/// this process (the core assumes a monotonic timeline; persisted times must
/// still mean something after a restart).
pub fn now_millis() -> Millis {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let prev = LAST.fetch_max(wall, Ordering::Relaxed);
    Millis(prev.max(wall))
}
