//! One log event as d8 keeps, forwards and shows it: [`LogLine`].
//!
//! The same shape travels from a worker to the orchestrator (bincode, in a
//! control-stream frame), sits in the orchestrator's ring, answers
//! `GET /api/logs` (JSON) and is what `--log-format json` writes to stderr.
//! Its parts are bounded ([`MAX_MESSAGE`], [`MAX_FIELDS`], …) where it is
//! made, and again where a worker's line is received: a line is small
//! whatever a log call or a peer put in it.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

/// Longest message kept, in bytes; the rest is cut and marked `…`.
pub const MAX_MESSAGE: usize = 2_048;
/// Most fields kept per line.
pub const MAX_FIELDS: usize = 16;
/// Longest field name or target kept, in bytes.
pub const MAX_NAME: usize = 128;
/// Longest field value kept, in bytes.
pub const MAX_VALUE: usize = 512;

/// Severity, most severe first (so `a <= b` means "a is at least as severe").
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Level {
    /// Something failed.
    Error,
    /// Something is wrong or degraded.
    Warn,
    /// What happened, for an operator.
    Info,
    /// Detail for debugging.
    Debug,
    /// Everything.
    Trace,
}

impl Level {
    /// `error`, `warn`, `info`, `debug`, `trace`.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Error => "error",
            Level::Warn => "warn",
            Level::Info => "info",
            Level::Debug => "debug",
            Level::Trace => "trace",
        }
    }

    /// Parses a level name (any case; `warning` too).
    pub fn parse(s: &str) -> Option<Level> {
        Some(match s.trim().to_ascii_lowercase().as_str() {
            "error" => Level::Error,
            "warn" | "warning" => Level::Warn,
            "info" => Level::Info,
            "debug" => Level::Debug,
            "trace" => Level::Trace,
            _ => return None,
        })
    }

    /// The level of a `tracing` event.
    pub fn of(level: &tracing::Level) -> Level {
        match *level {
            tracing::Level::ERROR => Level::Error,
            tracing::Level::WARN => Level::Warn,
            tracing::Level::INFO => Level::Info,
            tracing::Level::DEBUG => Level::Debug,
            tracing::Level::TRACE => Level::Trace,
        }
    }
}

/// One log event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// When, in ms since the Unix epoch, on the clock of the machine that logged it.
    pub ts_ms: u64,
    /// Severity.
    pub level: Level,
    /// The module that logged it (`d8::node::worker`).
    pub target: String,
    /// The message.
    pub message: String,
    /// Structured fields, in the order they were given.
    pub fields: Vec<(String, String)>,
}

/// `s` cut to at most `max` bytes on a character boundary, marked `…` when cut.
pub fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

impl LogLine {
    /// A line with its parts bounded.
    pub fn new(
        ts_ms: u64,
        level: Level,
        target: &str,
        message: &str,
        fields: Vec<(String, String)>,
    ) -> LogLine {
        LogLine {
            ts_ms,
            level,
            target: clip(target, MAX_NAME),
            message: clip(message, MAX_MESSAGE),
            fields,
        }
        .bounded()
    }

    /// This line with every part within its bound (a peer's line may not be).
    pub fn bounded(mut self) -> LogLine {
        if self.target.len() > MAX_NAME {
            self.target = clip(&self.target, MAX_NAME);
        }
        if self.message.len() > MAX_MESSAGE {
            self.message = clip(&self.message, MAX_MESSAGE);
        }
        self.fields.truncate(MAX_FIELDS);
        for (k, v) in &mut self.fields {
            if k.len() > MAX_NAME {
                *k = clip(k, MAX_NAME);
            }
            if v.len() > MAX_VALUE {
                *v = clip(v, MAX_VALUE);
            }
        }
        self
    }

    /// Bytes this line holds, roughly (for the ring's byte cap).
    pub fn weight(&self) -> usize {
        // The struct, its strings' headers and the ring's bookkeeping.
        const OVERHEAD: usize = 128;
        OVERHEAD
            + self.target.len()
            + self.message.len()
            + self
                .fields
                .iter()
                .map(|(k, v)| k.len() + v.len() + 48)
                .sum::<usize>()
    }

    /// The JSON object of `--log-format json` and `GET /api/logs`
    /// (`ts` in RFC 3339, `fields` an object).
    pub fn json(&self) -> Value {
        let fields: Map<String, Value> = self
            .fields
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        json!({
            "ts": crate::task::rfc3339(self.ts_ms),
            "level": self.level.as_str(),
            "target": self.target,
            "message": self.message,
            "fields": fields,
        })
    }

    /// One line of text for a person:
    /// `2026-11-30T15:07:41.123Z  INFO d8::node::worker: connected addr=…`.
    pub fn text(&self) -> String {
        self.text_from(None)
    }

    /// [`text`](Self::text) with where the line came from before the
    /// target: `… WARN [pc-1] d8::node::worker: …`.
    pub fn text_from(&self, from: Option<&str>) -> String {
        render_text(
            &crate::task::rfc3339(self.ts_ms),
            self.level.as_str(),
            from,
            &self.target,
            &self.message,
            self.fields.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        )
    }
}

/// The text form of a line from its parts (also for lines read back as
/// JSON, by `d8 logs`): `<ts> <LEVEL> [from] target: message k=v …`.
pub fn render_text<'a>(
    ts: &str,
    level: &str,
    from: Option<&str>,
    target: &str,
    message: &str,
    fields: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> String {
    let mut s = format!("{ts} {:>5} ", level.to_ascii_uppercase());
    if let Some(from) = from {
        let _ = write!(s, "[{from}] ");
    }
    let _ = write!(s, "{target}: {message}");
    for (k, v) in fields {
        if v.contains(char::is_whitespace) || v.is_empty() {
            let _ = write!(s, " {k}={v:?}");
        } else {
            let _ = write!(s, " {k}={v}");
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_keeps_whole_characters_and_marks_the_cut() {
        assert_eq!(clip("short", 10), "short");
        let cut = clip(&"é".repeat(100), 11);
        assert!(cut.len() <= 11, "{}", cut.len());
        assert!(cut.ends_with('…'));
        assert!(cut.starts_with("éééé"));
    }

    #[test]
    fn a_peers_oversized_line_is_bounded() {
        let line = LogLine {
            ts_ms: 1,
            level: Level::Info,
            target: "t".repeat(1_000),
            message: "m".repeat(100_000),
            fields: (0..100)
                .map(|i| (format!("k{i}"), "v".repeat(10_000)))
                .collect(),
        }
        .bounded();
        assert!(line.target.len() <= MAX_NAME);
        assert!(line.message.len() <= MAX_MESSAGE);
        assert_eq!(line.fields.len(), MAX_FIELDS);
        assert!(line.fields.iter().all(|(_, v)| v.len() <= MAX_VALUE));
        assert!(line.weight() < 16 * 1024, "{}", line.weight());
    }

    #[test]
    fn levels_order_by_severity_and_parse() {
        assert!(Level::Error < Level::Warn && Level::Warn < Level::Info);
        assert_eq!(Level::parse("WARNING"), Some(Level::Warn));
        assert_eq!(Level::parse("loud"), None);
        assert_eq!(Level::of(&tracing::Level::DEBUG), Level::Debug);
    }

    #[test]
    fn text_and_json_show_the_same_line() {
        let line = LogLine::new(
            0,
            Level::Warn,
            "d8::x",
            "slow",
            vec![("ms".into(), "12".into()), ("why".into(), "a b".into())],
        );
        assert_eq!(
            line.text(),
            "1970-01-01T00:00:00.000Z  WARN d8::x: slow ms=12 why=\"a b\""
        );
        let j = line.json();
        assert_eq!(j["level"], "warn");
        assert_eq!(j["fields"]["why"], "a b");
        assert_eq!(j["ts"], "1970-01-01T00:00:00.000Z");
    }
}
