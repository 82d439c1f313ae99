//! The orchestrator's log ring: its own log lines and those its workers
//! forward, newest kept, oldest dropped past a line cap and a byte cap.
//!
//! Every line gets a sequence number when it enters (a cursor for
//! `GET /api/logs?after=` and for followers that fell behind) and the id of
//! the worker that sent it, taken from that worker's certificate, never
//! from the line. New lines are also offered on a broadcast channel for
//! `GET /api/logs?follow=1` and `GET /api/events`; a follower that falls
//! behind catches up from the ring by sequence number.
//!
//! Lines lost before they got here are counted where they were lost: a
//! worker reports the lines its rate limit or its buffer dropped, and the
//! orchestrator counts what it could not take from its own tap.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{Value, json};
use tokio::sync::broadcast;

use crate::logging::{Level, LogLine};

/// Lines kept at most.
pub const MAX_LINES: usize = 10_000;
/// Bytes of lines kept at most (by [`LogLine::weight`]).
pub const MAX_BYTES: usize = 4 * 1024 * 1024;
/// Lines a follower may fall behind before it catches up from the ring.
const FOLLOW_CAPACITY: usize = 256;
/// Workers whose dropped-line counts are remembered.
const MAX_DROP_COUNTS: usize = 1_024;

/// A line in the ring.
#[derive(Debug)]
pub struct Entry {
    /// Its place: later lines have larger numbers.
    pub seq: u64,
    /// The worker that sent it; `None` for the orchestrator's own.
    pub worker: Option<String>,
    /// The line.
    pub line: LogLine,
}

impl Entry {
    /// The JSON of `GET /api/logs`: the line's, with `seq`, `source` and `worker`.
    pub fn json(&self) -> Value {
        let mut v = self.line.json();
        v["seq"] = json!(self.seq);
        v["source"] = json!(if self.worker.is_some() {
            "worker"
        } else {
            "orchestrator"
        });
        v["worker"] = json!(self.worker);
        v
    }

    /// Text for `d8 logs`: the line's, with where it came from.
    pub fn text(&self) -> String {
        self.line
            .text_from(Some(self.worker.as_deref().unwrap_or("orchestrator")))
    }
}

/// Which lines a query wants.
#[derive(Debug, Clone)]
pub struct LogQuery {
    /// Only this worker's lines.
    pub worker: Option<String>,
    /// Only the orchestrator's own lines.
    pub orchestrator_only: bool,
    /// This level or more severe.
    pub level: Level,
    /// Lines logged at or after this time (ms since the epoch).
    pub since_ms: Option<u64>,
    /// Lines after this sequence number.
    pub after: Option<u64>,
    /// The newest this many (of those that match), oldest first.
    pub limit: usize,
}

impl Default for LogQuery {
    fn default() -> Self {
        LogQuery {
            worker: None,
            orchestrator_only: false,
            level: Level::Trace,
            since_ms: None,
            after: None,
            limit: 1_000,
        }
    }
}

impl LogQuery {
    /// Whether `e` is wanted (ignoring `after` and `limit`).
    pub fn matches(&self, e: &Entry) -> bool {
        e.line.level <= self.level
            && self.since_ms.is_none_or(|s| e.line.ts_ms >= s)
            && (!self.orchestrator_only || e.worker.is_none())
            && self
                .worker
                .as_deref()
                .is_none_or(|w| e.worker.as_deref() == Some(w))
    }
}

#[derive(Debug, Default)]
struct Ring {
    lines: VecDeque<Arc<Entry>>,
    bytes: usize,
    next_seq: u64,
    /// Lines the orchestrator could not take from its own tap.
    dropped_own: u64,
    /// Per worker: lines it reported dropped (rate limit, buffer).
    dropped: BTreeMap<String, u64>,
}

/// The ring; shared by the connection handlers and the HTTP API.
#[derive(Debug)]
pub struct LogRing {
    ring: Mutex<Ring>,
    tx: broadcast::Sender<Arc<Entry>>,
    max_lines: usize,
    max_bytes: usize,
}

impl Default for LogRing {
    fn default() -> Self {
        LogRing::new(MAX_LINES, MAX_BYTES)
    }
}

impl LogRing {
    /// A ring that keeps at most `max_lines` lines and `max_bytes` bytes.
    pub fn new(max_lines: usize, max_bytes: usize) -> LogRing {
        LogRing {
            ring: Mutex::new(Ring {
                next_seq: 1,
                ..Ring::default()
            }),
            tx: broadcast::channel(FOLLOW_CAPACITY).0,
            max_lines: max_lines.max(1),
            max_bytes,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps `line` from `worker` (`None`: the orchestrator's own).
    pub fn push(&self, worker: Option<&str>, line: LogLine) {
        let line = line.bounded();
        let weight = line.weight();
        let entry = {
            let mut r = self.lock();
            let entry = Arc::new(Entry {
                seq: r.next_seq,
                worker: worker.map(str::to_owned),
                line,
            });
            r.next_seq += 1;
            r.bytes += weight;
            r.lines.push_back(entry.clone());
            while r.lines.len() > self.max_lines || (r.bytes > self.max_bytes && r.lines.len() > 1)
            {
                if let Some(old) = r.lines.pop_front() {
                    r.bytes = r.bytes.saturating_sub(old.line.weight());
                }
            }
            entry
        };
        if self.tx.receiver_count() > 0 {
            let _ = self.tx.send(entry);
        }
    }

    /// Counts `n` lines lost on the way from `worker` (`None`: the
    /// orchestrator's own tap).
    pub fn note_dropped(&self, worker: Option<&str>, n: u64) {
        if n == 0 {
            return;
        }
        let mut r = self.lock();
        match worker {
            None => r.dropped_own = r.dropped_own.saturating_add(n),
            Some(w) => {
                if r.dropped.len() >= MAX_DROP_COUNTS && !r.dropped.contains_key(w) {
                    return;
                }
                let c = r.dropped.entry(w.to_owned()).or_default();
                *c = c.saturating_add(n);
            }
        }
    }

    /// The newest `q.limit` lines that match `q`, oldest first, and the
    /// sequence number of the newest line in the ring (a cursor for `after`).
    pub fn query(&self, q: &LogQuery) -> (Vec<Arc<Entry>>, u64) {
        let r = self.lock();
        let after = q.after.unwrap_or(0);
        let mut out: Vec<Arc<Entry>> = r
            .lines
            .iter()
            .rev()
            .take_while(|e| e.seq > after)
            .filter(|e| q.matches(e))
            .take(q.limit)
            .cloned()
            .collect();
        out.reverse();
        (out, r.next_seq - 1)
    }

    /// Lines lost before they reached the ring: `{"orchestrator": n,
    /// "workers": {id: n}}`.
    pub fn dropped_json(&self) -> Value {
        let r = self.lock();
        json!({"orchestrator": r.dropped_own, "workers": r.dropped})
    }

    /// Lines and bytes held now.
    pub fn held(&self) -> (usize, usize) {
        let r = self.lock();
        (r.lines.len(), r.bytes)
    }

    /// A follower, hearing lines from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Entry>> {
        self.tx.subscribe()
    }
}

/// Moves this process's own log lines from its tap into `ring` until
/// `stop` fires or the tap closes; lines it could not keep up with are
/// counted dropped.
pub async fn keep_own(
    ring: Arc<LogRing>,
    mut rx: broadcast::Receiver<Arc<LogLine>>,
    stop: tokio_util::sync::CancellationToken,
) {
    loop {
        let got = tokio::select! {
            got = rx.recv() => got,
            () = stop.cancelled() => return,
        };
        match got {
            Ok(line) => ring.push(None, LogLine::clone(&line)),
            Err(broadcast::error::RecvError::Lagged(n)) => ring.note_dropped(None, n),
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(level: Level, ts: u64, msg: &str) -> LogLine {
        LogLine::new(ts, level, "d8::t", msg, Vec::new())
    }

    #[test]
    fn the_ring_keeps_the_newest_within_both_caps() {
        let ring = LogRing::new(100, usize::MAX);
        for i in 0..250 {
            ring.push(None, line(Level::Info, i, &format!("m{i}")));
        }
        let (all, newest) = ring.query(&LogQuery {
            limit: 1_000,
            ..LogQuery::default()
        });
        assert_eq!(all.len(), 100);
        assert_eq!(all[0].line.message, "m150");
        assert_eq!(all[99].line.message, "m249");
        assert_eq!(newest, 250);

        let big = "x".repeat(1_000);
        let one = line(Level::Info, 0, &big).weight();
        let ring = LogRing::new(10_000, one * 5);
        for i in 0..50 {
            ring.push(Some("w"), line(Level::Info, i, &big));
        }
        let (n, bytes) = ring.held();
        assert_eq!(n, 5, "the byte cap holds five such lines");
        assert!(bytes <= one * 5);
    }

    #[test]
    fn queries_filter_by_worker_level_time_and_cursor() {
        let ring = LogRing::default();
        ring.push(None, line(Level::Info, 10, "own"));
        ring.push(Some("a"), line(Level::Warn, 20, "a warn"));
        ring.push(Some("b"), line(Level::Error, 30, "b error"));
        ring.push(Some("a"), line(Level::Info, 40, "a info"));
        let msgs = |q: LogQuery| -> Vec<String> {
            ring.query(&q)
                .0
                .iter()
                .map(|e| e.line.message.clone())
                .collect()
        };
        assert_eq!(
            msgs(LogQuery {
                worker: Some("a".into()),
                ..LogQuery::default()
            }),
            ["a warn", "a info"]
        );
        assert_eq!(
            msgs(LogQuery {
                level: Level::Warn,
                ..LogQuery::default()
            }),
            ["a warn", "b error"]
        );
        assert_eq!(
            msgs(LogQuery {
                since_ms: Some(30),
                ..LogQuery::default()
            }),
            ["b error", "a info"]
        );
        assert_eq!(
            msgs(LogQuery {
                orchestrator_only: true,
                ..LogQuery::default()
            }),
            ["own"]
        );
        assert_eq!(
            msgs(LogQuery {
                after: Some(2),
                ..LogQuery::default()
            }),
            ["b error", "a info"]
        );
        assert_eq!(
            msgs(LogQuery {
                limit: 1,
                ..LogQuery::default()
            }),
            ["a info"],
            "the newest, not the oldest"
        );
    }

    #[test]
    fn drops_are_counted_per_source() {
        let ring = LogRing::default();
        ring.note_dropped(None, 3);
        ring.note_dropped(Some("w1"), 2);
        ring.note_dropped(Some("w1"), 5);
        ring.note_dropped(Some("w2"), 0);
        assert_eq!(
            ring.dropped_json(),
            json!({"orchestrator": 3, "workers": {"w1": 7}})
        );
    }

    #[test]
    fn text_names_the_source() {
        let e = Entry {
            seq: 1,
            worker: Some("pc-1".into()),
            line: line(Level::Warn, 0, "slow"),
        };
        assert_eq!(
            e.text(),
            "1970-01-01T00:00:00.000Z  WARN [pc-1] d8::t: slow"
        );
        assert_eq!(e.json()["source"], "worker");
        assert_eq!(e.json()["worker"], "pc-1");
    }
}
