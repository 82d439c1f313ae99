//! What changes in the cluster, as it happens, for `GET /api/events`.
//!
//! The scheduler actor publishes worker and task changes on a broadcast
//! channel of bounded capacity. Nothing is built when nobody listens (a
//! busy orchestrator pays nothing for a closed dashboard). A listener that
//! falls more than [`CAPACITY`] events behind loses them and is told so
//! (`Lagged`): it then starts again from a fresh snapshot, so a slow client
//! costs bounded memory.

use tokio::sync::broadcast;

use super::task_state::TaskState;

/// Events a listener may fall behind before it must start again.
pub const CAPACITY: usize = 1_024;

/// One change.
#[derive(Debug, Clone)]
pub enum Event {
    /// A worker connected, disconnected, began draining, was declared dead
    /// or was revoked.
    Worker {
        /// Its id.
        worker_id: String,
        /// `connected`, `disconnected`, `draining`, `dead` or `revoked`.
        state: &'static str,
    },
    /// A task was accepted, dispatched, or reached its final state (once
    /// durable), as `GET /api/tasks/{id}` shows it.
    Task(Box<TaskState>),
    /// Which of a worker's providers rest (or why) changed.
    Rests {
        /// Its id.
        worker_id: String,
        /// Its providers resting now, as it reported them.
        rests: Vec<crate::task::ProviderCooldown>,
    },
}

/// The channel events travel on; cheap to clone.
#[derive(Debug, Clone)]
pub struct EventBus(broadcast::Sender<Event>);

impl Default for EventBus {
    fn default() -> Self {
        EventBus(broadcast::channel(CAPACITY).0)
    }
}

impl EventBus {
    /// Whether anyone listens (build events only then).
    pub fn listened(&self) -> bool {
        self.0.receiver_count() > 0
    }

    /// Publishes `make()` if anyone listens.
    pub fn publish(&self, make: impl FnOnce() -> Event) {
        if self.listened() {
            let _ = self.0.send(make());
        }
    }

    /// A new listener, hearing what is published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.0.subscribe()
    }
}
