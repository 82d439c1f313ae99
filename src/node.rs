//! The async shells around the pure core: orchestrator and worker processes.
//!
//! Who owns what:
//! - [`orchestrator`]: QUIC accept loop (enrollment and cluster connections),
//!   one task per worker connection, and the HTTP server.
//! - `actor`: the scheduler actor, sole owner of [`crate::core::Scheduler`];
//!   turns its actions into QUIC streams, store writes and client wake-ups.
//! - [`registry`]: join tokens, enrolled workers, revocations.
//! - `streams`: streamed output of running tasks, for HTTP subscribers.
//! - [`worker`]: enrollment, the reconnecting session loop, task execution, drain.
//! - [`files`]: data-dir helpers (0600 secrets, atomic writes).

pub(crate) mod actor;
pub mod files;
pub mod orchestrator;
pub mod registry;
pub(crate) mod streams;
pub mod worker;

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
