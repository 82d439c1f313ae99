//! `GET /api/logs`: the orchestrator's log ring (its own lines and its
//! workers'), filtered; with `follow=1`, as Server-Sent Events that go on
//! with new lines.
//!
//! Query parameters (all optional):
//! - `worker=ID`: only that worker's lines; `source=orchestrator`: only the
//!   orchestrator's own.
//! - `level=error|warn|info|debug|trace`: that level or more severe.
//! - `since=`: an RFC 3339 time, or an age such as `90s`, `15m`, `2h`, `1d`.
//! - `after=SEQ`: only lines after that sequence number (`next_after` of
//!   an earlier answer).
//! - `limit=`: the newest this many, oldest first (1-10000; default 1000,
//!   or 100 when following).
//!
//! The answer: `{"lines": [...], "next_after", "dropped": {"orchestrator",
//! "workers": {id: n}}, "held": {"lines", "bytes"}}`. Each line is
//! `{"seq", "ts", "level", "source", "worker", "target", "message",
//! "fields"}`. Following sends each line as a `log` event whose `id` is
//! its `seq`; a follower that falls behind catches up from the ring, and
//! lines the ring no longer holds are skipped.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::response::sse::{Event as Sse, KeepAlive};
use axum::response::{IntoResponse, Json, Response};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::broadcast;

use super::{ApiError, AppState};
use crate::logging::Level;
use crate::logging::tap::now_ms;
use crate::node::logs::{Entry, LogQuery, LogRing};

/// Most lines in one answer.
pub(super) const MAX_LIMIT: usize = 10_000;

/// The raw query; every value is checked by hand for a clear error.
#[derive(Debug, Deserialize)]
pub(super) struct LogsParams {
    worker: Option<String>,
    source: Option<String>,
    level: Option<String>,
    since: Option<String>,
    after: Option<String>,
    limit: Option<String>,
    follow: Option<String>,
}

fn bad(code: &'static str, param: &str, message: String) -> ApiError {
    ApiError::bad_request(code, message).with_param(param)
}

/// `since`: RFC 3339, or an age before now.
fn parse_since(s: &str, now: u64) -> Result<u64, ApiError> {
    if let Ok(t) =
        time::OffsetDateTime::parse(s.trim(), &time::format_description::well_known::Rfc3339)
    {
        let ms = t.unix_timestamp_nanos() / 1_000_000;
        return Ok(u64::try_from(ms).unwrap_or(0));
    }
    match crate::cli::parse_duration(s) {
        Ok(age) => {
            let age = u64::try_from(age.as_millis()).unwrap_or(u64::MAX);
            Ok(now.saturating_sub(age))
        }
        Err(_) => Err(bad(
            "invalid_since",
            "since",
            format!(
                "since {s:?} is neither an RFC 3339 time (2026-11-30T15:00:00Z) nor an age (90s, 15m, 2h, 1d)"
            ),
        )),
    }
}

fn parse_flag(param: &str, v: Option<&str>) -> Result<bool, ApiError> {
    match v {
        None | Some("0" | "false") => Ok(false),
        Some("1" | "true" | "") => Ok(true),
        Some(other) => Err(bad(
            "invalid_flag",
            param,
            format!("{param} must be 1, true, 0 or false, not {other:?}"),
        )),
    }
}

/// The validated query, and whether to follow.
pub(super) fn parse(p: &LogsParams, now: u64) -> Result<(LogQuery, bool), ApiError> {
    let follow = parse_flag("follow", p.follow.as_deref())?;
    let orchestrator_only = match p.source.as_deref() {
        None => false,
        Some("orchestrator") => true,
        Some(other) => {
            return Err(bad(
                "invalid_source",
                "source",
                format!(
                    "source {other:?} is not `orchestrator` (use worker=ID for one worker's lines)"
                ),
            ));
        }
    };
    if orchestrator_only && p.worker.is_some() {
        return Err(bad(
            "invalid_source",
            "source",
            "source=orchestrator and worker= exclude each other".into(),
        ));
    }
    let level = match p.level.as_deref() {
        None => Level::Trace,
        Some(l) => Level::parse(l).ok_or_else(|| {
            bad(
                "invalid_level",
                "level",
                format!("level {l:?} is not one of error, warn, info, debug, trace"),
            )
        })?,
    };
    let since_ms = p
        .since
        .as_deref()
        .map(|s| parse_since(s, now))
        .transpose()?;
    let after = p
        .after
        .as_deref()
        .map(|a| {
            a.trim().parse::<u64>().map_err(|_| {
                bad(
                    "invalid_after",
                    "after",
                    format!("after {a:?} is not a sequence number"),
                )
            })
        })
        .transpose()?;
    let limit = match p.limit.as_deref() {
        None if follow => 100,
        None => 1_000,
        Some(l) => l
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| {
                bad(
                    "invalid_limit",
                    "limit",
                    format!("limit must be 1-{MAX_LIMIT}"),
                )
            })?,
    };
    Ok((
        LogQuery {
            worker: p.worker.clone(),
            orchestrator_only,
            level,
            since_ms,
            after,
            limit,
        },
        follow,
    ))
}

/// `GET /api/logs`.
pub(super) async fn logs(
    State(cluster): AppState,
    Query(p): Query<LogsParams>,
) -> Result<Response, ApiError> {
    let (q, follow) = parse(&p, now_ms())?;
    let ring = cluster.logs().clone();
    if follow {
        return Ok(follow_stream(ring, q));
    }
    let (lines, newest) = ring.query(&q);
    let (held_lines, held_bytes) = ring.held();
    Ok(Json(json!({
        "lines": lines.iter().map(|e| e.json()).collect::<Vec<_>>(),
        "next_after": newest.max(q.after.unwrap_or(0)),
        "dropped": ring.dropped_json(),
        "held": {"lines": held_lines, "bytes": held_bytes},
    }))
    .into_response())
}

fn log_event(e: &Entry) -> Sse {
    Sse::default()
        .event("log")
        .id(e.seq.to_string())
        .data(e.json().to_string())
}

/// One follower's place.
struct Follow {
    ring: Arc<LogRing>,
    rx: broadcast::Receiver<Arc<Entry>>,
    q: LogQuery,
    /// The last sequence number sent (or skipped as not wanted).
    last: u64,
    ready: VecDeque<Sse>,
}

impl Follow {
    async fn next(mut self) -> Option<(Result<Sse, Infallible>, Follow)> {
        loop {
            if let Some(e) = self.ready.pop_front() {
                return Some((Ok(e), self));
            }
            match self.rx.recv().await {
                Ok(e) => {
                    if e.seq > self.last {
                        self.last = e.seq;
                        if self.q.matches(&e) {
                            self.ready.push_back(log_event(&e));
                        }
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    // Fell behind: what the ring still holds after the last
                    // line sent, then on from the present.
                    self.rx = self.rx.resubscribe();
                    let q = LogQuery {
                        after: Some(self.last),
                        limit: MAX_LIMIT,
                        ..self.q.clone()
                    };
                    let (lines, newest) = self.ring.query(&q);
                    self.ready.extend(lines.iter().map(|e| log_event(e)));
                    self.last = self.last.max(newest);
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

/// The backlog `q` asks for, then every new line it matches.
fn follow_stream(ring: Arc<LogRing>, q: LogQuery) -> Response {
    // Listen first, so nothing between the backlog and the first new line
    // is lost; lines seen in both are sent once (by sequence number).
    let rx = ring.subscribe();
    let (backlog, newest) = ring.query(&q);
    let follow = Follow {
        ring,
        rx,
        last: newest.max(q.after.unwrap_or(0)),
        q,
        ready: backlog.iter().map(|e| log_event(e)).collect(),
    };
    let stream = futures_util::stream::unfold(follow, Follow::next);
    axum::response::sse::Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> LogsParams {
        let get = |k: &str| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| (*v).to_owned())
        };
        LogsParams {
            worker: get("worker"),
            source: get("source"),
            level: get("level"),
            since: get("since"),
            after: get("after"),
            limit: get("limit"),
            follow: get("follow"),
        }
    }

    #[test]
    fn queries_parse_with_defaults_and_clear_errors() {
        let now = 10_000_000;
        let (q, follow) = parse(&params(&[]), now).expect("empty");
        assert!(!follow);
        assert_eq!((q.limit, q.level), (1_000, Level::Trace));
        let (q, follow) = parse(
            &params(&[("follow", "1"), ("level", "WARN"), ("since", "15m")]),
            now,
        )
        .expect("follow");
        assert!(follow);
        assert_eq!(q.limit, 100);
        assert_eq!(q.level, Level::Warn);
        assert_eq!(q.since_ms, Some(now - 15 * 60_000));
        let (q, _) = parse(&params(&[("since", "1970-01-01T00:00:01Z")]), now).expect("rfc");
        assert_eq!(q.since_ms, Some(1_000));
        for (k, v, code) in [
            ("level", "loud", "invalid_level"),
            ("since", "yesterday", "invalid_since"),
            ("after", "-1", "invalid_after"),
            ("limit", "0", "invalid_limit"),
            ("limit", "10001", "invalid_limit"),
            ("follow", "yes", "invalid_flag"),
            ("source", "workers", "invalid_source"),
        ] {
            let e = parse(&params(&[(k, v)]), now).expect_err(k);
            assert_eq!(e.code, code, "{k}={v}");
            assert_eq!(e.param.as_deref(), Some(k));
        }
    }
}
