//! Admission of QUIC connections before they are authenticated.
//!
//! Anyone on the LAN can open a QUIC connection to the orchestrator, so what
//! a connection may cost before it has proved anything (a valid worker
//! certificate, or a join token) is bounded here:
//! - at most [`MAX_UNAUTHENTICATED`] connections are in their handshake,
//!   enrollment or certificate check at once; past that, new ones are
//!   refused before the handshake;
//! - each source address may open [`BURST`] connections at once and
//!   [`PER_SECOND`] a second after that (a worker opens one or two when it
//!   starts; a flood is refused before its handshake costs anything);
//! - refusals and failed enrollments are logged as one summary line per
//!   [`SUMMARY_EVERY`], not one line each.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Connections not yet authenticated, at once.
pub const MAX_UNAUTHENTICATED: usize = 32;
/// New connections one source address may open at once.
pub const BURST: f64 = 40.0;
/// New connections one source address may open per second, sustained.
pub const PER_SECOND: f64 = 20.0;
/// Most source addresses tracked; past it, the idle ones are forgotten.
const MAX_SOURCES: usize = 4_096;
/// How often refusals are summarised in the log.
pub const SUMMARY_EVERY: Duration = Duration::from_secs(10);

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Too many unauthenticated connections at once.
    Busy,
    /// This source opens connections too fast.
    TooFast,
}

/// A token bucket per source address.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The pre-authentication gate. Shared by the accept loop's tasks.
#[derive(Debug)]
pub struct Gate {
    permits: Arc<Semaphore>,
    sources: Mutex<HashMap<IpAddr, Bucket>>,
    refused: AtomicU64,
    failed: AtomicU64,
    last_summary: Mutex<Instant>,
}

impl Default for Gate {
    fn default() -> Self {
        Gate {
            permits: Arc::new(Semaphore::new(MAX_UNAUTHENTICATED)),
            sources: Mutex::new(HashMap::new()),
            refused: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            last_summary: Mutex::new(Instant::now()),
        }
    }
}

impl Gate {
    /// Admits a new connection from `ip`, or says why not. The permit is
    /// the connection's place among the unauthenticated ones: drop it once
    /// the connection has authenticated or ended.
    pub fn admit(&self, ip: IpAddr, now: Instant) -> Result<OwnedSemaphorePermit, Refusal> {
        if !self.take_token(ip, now) {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return Err(Refusal::TooFast);
        }
        self.permits.clone().try_acquire_owned().map_err(|_| {
            self.refused.fetch_add(1, Ordering::Relaxed);
            Refusal::Busy
        })
    }

    fn take_token(&self, ip: IpAddr, now: Instant) -> bool {
        let mut sources = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        if sources.len() >= MAX_SOURCES && !sources.contains_key(&ip) {
            // Forget the sources whose bucket has refilled: they are idle.
            sources.retain(|_, b| refill(*b, now).tokens < BURST);
            if sources.len() >= MAX_SOURCES {
                // Every tracked source is busy: a flood from many
                // addresses. Refuse newcomers rather than grow.
                return false;
            }
        }
        let b = sources.entry(ip).or_insert(Bucket {
            tokens: BURST,
            at: now,
        });
        *b = refill(*b, now);
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Counts a failed enrollment (bad frame, bad token, timeout).
    pub fn note_failure(&self) {
        self.failed.fetch_add(1, Ordering::Relaxed);
    }

    /// Logs what was refused or failed since the last summary, at most once
    /// per [`SUMMARY_EVERY`]. Returns the line's counts when it logged.
    pub fn summarise(&self, now: Instant) -> Option<(u64, u64)> {
        let mut last = self.last_summary.lock().unwrap_or_else(|p| p.into_inner());
        if now.duration_since(*last) < SUMMARY_EVERY {
            return None;
        }
        let refused = self.refused.swap(0, Ordering::Relaxed);
        let failed = self.failed.swap(0, Ordering::Relaxed);
        if refused == 0 && failed == 0 {
            return None;
        }
        *last = now;
        tracing::warn!(
            refused,
            failed_enrollments = failed,
            seconds = SUMMARY_EVERY.as_secs(),
            "unauthenticated QUIC connections refused (flood or too many at once) or enrollments failed"
        );
        Some((refused, failed))
    }
}

fn refill(b: Bucket, now: Instant) -> Bucket {
    let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
    Bucket {
        tokens: (b.tokens + elapsed * PER_SECOND).min(BURST),
        at: now,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, n])
    }

    #[test]
    fn a_source_gets_its_burst_then_its_rate() {
        let g = Gate::default();
        let t0 = Instant::now();
        let mut held = Vec::new();
        for _ in 0..MAX_UNAUTHENTICATED {
            held.push(g.admit(ip(1), t0).expect("within the burst"));
        }
        // The permits are all held: the next is refused as busy.
        assert_eq!(g.admit(ip(1), t0).err(), Some(Refusal::Busy));
        held.clear();
        // Burst left: 40 - 33 = 7.
        for _ in 0..7 {
            drop(g.admit(ip(1), t0).expect("rest of the burst"));
        }
        assert_eq!(g.admit(ip(1), t0).err(), Some(Refusal::TooFast));
        // Another address is not affected.
        assert!(g.admit(ip(2), t0).is_ok());
        // A second later, PER_SECOND more.
        let t1 = t0 + Duration::from_secs(1);
        for _ in 0..20 {
            drop(g.admit(ip(1), t1).expect("refilled"));
        }
        assert_eq!(g.admit(ip(1), t1).err(), Some(Refusal::TooFast));
    }

    #[test]
    fn many_sources_do_not_grow_the_table_without_bound() {
        let g = Gate::default();
        let t0 = Instant::now();
        for i in 0..(MAX_SOURCES as u32 + 100) {
            let a = IpAddr::from(i.to_be_bytes());
            drop(g.admit(a, t0));
        }
        assert!(g.sources.lock().expect("lock").len() <= MAX_SOURCES);
        // Once they have gone idle, newcomers are admitted again.
        let later = t0 + Duration::from_secs(5);
        assert!(g.admit(ip(9), later).is_ok());
    }

    #[test]
    fn refusals_are_summarised_once_per_period() {
        let g = Gate::default();
        let t0 = Instant::now();
        for _ in 0..100 {
            drop(g.admit(ip(1), t0));
        }
        g.note_failure();
        assert_eq!(g.summarise(t0), None, "not before the period");
        let t1 = t0 + SUMMARY_EVERY;
        assert_eq!(g.summarise(t1), Some((60, 1)));
        assert_eq!(g.summarise(t1 + SUMMARY_EVERY), None, "nothing new");
    }
}
