//! Forwarding this worker's log lines to the orchestrator.
//!
//! Lines come from the process's [`LogTap`] (info and above), pass a rate
//! limit ([`RATE_PER_SEC`] lines a second, bursts of [`BURST`]), and wait
//! in a batch of at most [`MAX_LOG_BATCH`] that the session sends on the
//! control stream with each heartbeat, or at once when full. Lines over the
//! limit, lines that find the batch full while the orchestrator is out of
//! reach, and lines the tap overwrote before they were read are dropped and
//! counted; the count goes with the next batch. A forwarder lives as long
//! as the worker run, so a session that ends keeps its batch for the next.

use std::sync::Arc;

use tokio::sync::broadcast;
use tokio::time::Instant;

use crate::logging::{LogLine, LogTap};
use crate::wire::{MAX_LOG_BATCH, WorkerMsg};

/// Sustained lines a second a worker forwards.
pub const RATE_PER_SEC: f64 = 20.0;
/// Lines a worker may forward at once after a quiet spell.
pub const BURST: f64 = 200.0;

/// A token bucket: `RATE_PER_SEC` refill, `BURST` deep.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(now: Instant) -> Bucket {
        Bucket {
            tokens: BURST,
            at: now,
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        let secs = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + secs * RATE_PER_SEC).min(BURST);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// One worker run's log forwarding.
#[derive(Debug)]
pub(super) struct Forwarder {
    rx: Option<broadcast::Receiver<Arc<LogLine>>>,
    batch: Vec<LogLine>,
    dropped: u64,
    bucket: Bucket,
}

impl Forwarder {
    /// Listens on `tap`; with `None`, forwards nothing.
    pub(super) fn new(tap: Option<&LogTap>) -> Forwarder {
        Forwarder {
            rx: tap.map(LogTap::subscribe),
            batch: Vec::new(),
            dropped: 0,
            bucket: Bucket::full(Instant::now()),
        }
    }

    /// Takes the next line from the tap into the batch (or counts it
    /// dropped). Never resolves without a tap.
    pub(super) async fn pull(&mut self) {
        let Some(rx) = &mut self.rx else {
            return std::future::pending().await;
        };
        match rx.recv().await {
            Ok(line) => self.admit(&line),
            Err(broadcast::error::RecvError::Lagged(n)) => {
                self.dropped = self.dropped.saturating_add(n);
            }
            // The tap lives as long as the process; without it, stop listening.
            Err(broadcast::error::RecvError::Closed) => self.rx = None,
        }
    }

    /// Takes a line the tap already holds, without waiting; `None` when
    /// there is none.
    pub(super) fn pull_ready(&mut self) -> Option<()> {
        let rx = self.rx.as_mut()?;
        match rx.try_recv() {
            Ok(line) => {
                self.admit(&line);
                Some(())
            }
            Err(broadcast::error::TryRecvError::Lagged(n)) => {
                self.dropped = self.dropped.saturating_add(n);
                Some(())
            }
            Err(_) => None,
        }
    }

    fn admit(&mut self, line: &LogLine) {
        if self.batch.len() < MAX_LOG_BATCH && self.bucket.take(Instant::now()) {
            self.batch.push(line.clone());
        } else {
            self.dropped = self.dropped.saturating_add(1);
        }
    }

    /// Whether the batch should go now rather than with the next heartbeat.
    pub(super) fn full(&self) -> bool {
        self.batch.len() >= MAX_LOG_BATCH
    }

    /// The batch and the drop count to send, if there is anything.
    pub(super) fn take(&mut self) -> Option<WorkerMsg> {
        if self.batch.is_empty() && self.dropped == 0 {
            return None;
        }
        Some(WorkerMsg::Logs {
            lines: std::mem::take(&mut self.batch),
            dropped: std::mem::take(&mut self.dropped),
        })
    }

    /// Puts an unsent batch back (the connection broke while sending it).
    pub(super) fn put_back(&mut self, msg: WorkerMsg) {
        if let WorkerMsg::Logs { mut lines, dropped } = msg {
            lines.append(&mut self.batch);
            let over = lines.len().saturating_sub(MAX_LOG_BATCH);
            lines.drain(..over);
            self.batch = lines;
            self.dropped = self
                .dropped
                .saturating_add(dropped)
                .saturating_add(over as u64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logging::Level;
    use std::time::Duration;

    fn line(i: usize) -> LogLine {
        LogLine::new(0, Level::Info, "t", &format!("m{i}"), Vec::new())
    }

    #[test]
    fn the_bucket_allows_a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::full(t0);
        let burst = (0..1_000).filter(|_| b.take(t0)).count();
        assert_eq!(burst as f64, BURST);
        let later = t0 + Duration::from_secs(2);
        let refill = (0..1_000).filter(|_| b.take(later)).count();
        assert_eq!(refill as f64, 2.0 * RATE_PER_SEC);
    }

    #[tokio::test]
    async fn a_flood_is_batched_bounded_and_counted() {
        let tap = LogTap::new();
        let mut f = Forwarder::new(Some(&tap));
        for i in 0..150 {
            tap.publish(line(i));
        }
        for _ in 0..150 {
            f.pull().await;
        }
        assert!(f.full());
        let Some(WorkerMsg::Logs { lines, dropped }) = f.take() else {
            panic!("a batch");
        };
        assert_eq!(lines.len(), MAX_LOG_BATCH);
        assert_eq!(lines[0].message, "m0");
        assert_eq!(dropped, 50, "lines that found the batch full");
        assert!(f.take().is_none(), "nothing left");
        // More than the tap holds while nobody reads: the overwritten are counted.
        for i in 0..(crate::logging::tap::TAP_CAPACITY + 10) {
            tap.publish(line(i));
        }
        f.pull().await;
        let Some(WorkerMsg::Logs { dropped, .. }) = f.take() else {
            panic!("a batch");
        };
        assert_eq!(dropped, 10);
    }

    #[test]
    fn an_unsent_batch_is_kept_for_the_next_session() {
        let mut f = Forwarder::new(None);
        f.batch = (0..60).map(line).collect();
        let msg = f.take().expect("batch");
        f.batch = (60..120).map(line).collect();
        f.put_back(msg);
        assert_eq!(f.batch.len(), MAX_LOG_BATCH);
        assert_eq!(f.batch[0].message, "m20", "the oldest go first");
        assert_eq!(f.dropped, 20);
    }
}
