//! Which of the orchestrator's long-lived parts are still running.
//!
//! Each part holds an [`Alive`] guard for as long as it runs; the guard is
//! dropped when the part returns *or unwinds from a panic*, and marks the
//! part down. `/health` reports the parts that are down, and `d8 serve`
//! exits non-zero when one goes down while no shutdown was asked for, so a
//! service manager (`Restart=on-failure`) starts it again. An orchestrator
//! with a dead store writer or scheduler must not keep answering `ok`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// A long-lived part of the orchestrator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The store's writer thread (every durable write goes through it).
    Store,
    /// The scheduler actor.
    Scheduler,
    /// The QUIC accept loop (workers connect through it).
    Workers,
    /// The HTTP server.
    Http,
}

impl Part {
    /// Every part, in report order.
    pub const ALL: [Part; 4] = [Part::Store, Part::Scheduler, Part::Workers, Part::Http];

    /// The name `/health` uses.
    pub fn name(self) -> &'static str {
        match self {
            Part::Store => "store",
            Part::Scheduler => "scheduler",
            Part::Workers => "quic",
            Part::Http => "http",
        }
    }
}

impl std::fmt::Display for Part {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Part::Store => "store writer",
            Part::Scheduler => "scheduler",
            Part::Workers => "QUIC accept loop",
            Part::Http => "HTTP server",
        })
    }
}

/// The parts that are down; cheap to share and to read.
#[derive(Debug, Default)]
pub struct Vitals {
    down: [AtomicBool; 4],
}

impl Vitals {
    /// A guard that marks `part` down when dropped. Move it into the part's
    /// thread or task.
    pub fn alive(self: &Arc<Self>, part: Part) -> Alive {
        Alive {
            vitals: self.clone(),
            part,
        }
    }

    /// The parts that are down, in [`Part::ALL`] order.
    pub fn down(&self) -> Vec<Part> {
        Part::ALL
            .into_iter()
            .zip(&self.down)
            .filter(|(_, d)| d.load(Ordering::Acquire))
            .map(|(p, _)| p)
            .collect()
    }
}

/// Held by a running part; marks it down when dropped.
#[derive(Debug)]
pub struct Alive {
    vitals: Arc<Vitals>,
    part: Part,
}

impl Drop for Alive {
    fn drop(&mut self) {
        let i = Part::ALL.iter().position(|p| *p == self.part).unwrap_or(0);
        self.vitals.down[i].store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_part_is_down_once_its_guard_is_gone_even_by_a_panic() {
        let v = Arc::new(Vitals::default());
        let store = v.alive(Part::Store);
        let sched = v.alive(Part::Scheduler);
        assert!(v.down().is_empty());
        drop(store);
        assert_eq!(v.down(), [Part::Store]);
        let t = std::thread::spawn(move || {
            let _alive = sched;
            panic!("injected");
        });
        assert!(t.join().is_err());
        assert_eq!(v.down(), [Part::Store, Part::Scheduler]);
    }
}
