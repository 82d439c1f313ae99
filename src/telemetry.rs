//! Figures the orchestrator keeps about itself for `GET /metrics`: latency
//! histograms and counters with bounded labels. Each orchestrator has its
//! own [`Telemetry`] (tests run several in one process); nothing global.
//!
//! Recording is a few atomic additions (histograms) or one short lock
//! (labelled counters), so it can sit on the scheduler's paths.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Bucket bounds, in seconds, for task latencies: from 5 ms (echo on a
/// LAN) to 5 min (a slow local model).
pub const TASK_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];
/// Bucket bounds, in seconds, for store commits (an fsync each).
pub const COMMIT_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// A Prometheus-style histogram with fixed buckets.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Per bucket (not cumulative), then the overflow past the last bound.
    counts: Box<[AtomicU64]>,
    sum_nanos: AtomicU64,
}

/// A histogram as read at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// `(upper bound in seconds, observations at or below it)`, cumulative.
    pub buckets: Vec<(f64, u64)>,
    /// All observations (the `+Inf` bucket).
    pub count: u64,
    /// Their sum, in seconds.
    pub sum: f64,
}

impl Histogram {
    /// An empty histogram over `bounds` (ascending).
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_nanos: AtomicU64::new(0),
        }
    }

    /// Records one duration.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = self
            .bounds
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(self.bounds.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Records `ms` milliseconds.
    pub fn observe_ms(&self, ms: u64) {
        self.observe(Duration::from_millis(ms));
    }

    /// The cumulative view Prometheus wants.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut running = 0;
        let mut buckets = Vec::with_capacity(self.bounds.len());
        for (i, b) in self.bounds.iter().enumerate() {
            running += self.counts[i].load(Ordering::Relaxed);
            buckets.push((*b, running));
        }
        running += self.counts[self.bounds.len()].load(Ordering::Relaxed);
        HistogramSnapshot {
            buckets,
            count: running,
            sum: self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }
}

/// The label set counters pool into past their cap.
pub const OTHER: &str = "other";

/// A counter per label set, with at most `max` label sets: values chosen
/// by clients (task types) or peers (provider names) cannot grow it.
/// Label sets are few (a handful in practice): a linear search that
/// allocates only for a new one beats a map keyed by owned strings.
#[derive(Debug)]
pub struct Counters {
    max: usize,
    sets: Mutex<Vec<(Vec<String>, u64)>>,
}

impl Counters {
    /// At most `max` label sets; more are counted under [`OTHER`].
    pub fn new(max: usize) -> Counters {
        Counters {
            max,
            sets: Mutex::default(),
        }
    }

    /// Adds one to `labels`.
    pub fn inc(&self, labels: &[&str]) {
        let mut sets = self.sets.lock().unwrap_or_else(|p| p.into_inner());
        let same =
            |k: &[String], l: &[&str]| k.len() == l.len() && k.iter().zip(l).all(|(a, b)| a == b);
        if let Some((_, n)) = sets.iter_mut().find(|(k, _)| same(k, labels)) {
            *n += 1;
            return;
        }
        let key: Vec<String> = if sets.len() < self.max {
            labels.iter().map(|l| (*l).to_owned()).collect()
        } else {
            vec![OTHER.to_owned(); labels.len()]
        };
        match sets.iter_mut().find(|(k, _)| *k == key) {
            Some((_, n)) => *n += 1,
            None => sets.push((key, 1)),
        }
    }

    /// Every label set and its count, sorted by labels.
    pub fn snapshot(&self) -> Vec<(Vec<String>, u64)> {
        let mut out = self.sets.lock().unwrap_or_else(|p| p.into_inner()).clone();
        out.sort();
        out
    }
}

/// One orchestrator's figures.
#[derive(Debug)]
pub struct Telemetry {
    /// From accepted to first dispatched.
    pub queue_wait: Histogram,
    /// From accepted to completed (completed tasks).
    pub task_duration: Histogram,
    /// From dispatch to the first streamed piece (streamed attempts).
    pub first_token: Histogram,
    /// Tasks accepted, by type.
    pub submitted: Counters,
    /// Tasks finished, by type and status.
    pub finished: Counters,
    /// Attempts that ended, by provider and outcome (`ok`, `rate_limited`,
    /// `transient`, `permanent`, `worker_lost`, `timeout`, `unavailable`).
    pub attempts: Counters,
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry {
            queue_wait: Histogram::new(TASK_BUCKETS),
            task_duration: Histogram::new(TASK_BUCKETS),
            first_token: Histogram::new(TASK_BUCKETS),
            submitted: Counters::new(64),
            finished: Counters::new(192),
            attempts: Counters::new(256),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_with_an_overflow() {
        let h = Histogram::new(&[0.01, 0.1, 1.0]);
        for ms in [5, 10, 50, 500, 5_000] {
            h.observe_ms(ms);
        }
        let s = h.snapshot();
        assert_eq!(s.buckets, vec![(0.01, 2), (0.1, 3), (1.0, 4)]);
        assert_eq!(s.count, 5);
        assert!((s.sum - 5.565).abs() < 1e-9, "{}", s.sum);
    }

    #[test]
    fn counters_pool_label_sets_past_their_cap() {
        let c = Counters::new(2);
        c.inc(&["a", "ok"]);
        c.inc(&["b", "ok"]);
        c.inc(&["a", "ok"]);
        c.inc(&["c", "ok"]);
        c.inc(&["d", "failed"]);
        let s = c.snapshot();
        assert_eq!(
            s,
            vec![
                (vec!["a".to_owned(), "ok".to_owned()], 2),
                (vec!["b".to_owned(), "ok".to_owned()], 1),
                (vec![OTHER.to_owned(), OTHER.to_owned()], 2),
            ]
        );
    }
}
