//! Where this process's log events go besides stderr.
//!
//! [`TapLayer`] is a `tracing` layer that turns each event into a
//! [`LogLine`] and offers it on a [`LogTap`]: the orchestrator keeps its
//! own lines in its log ring from there, a worker forwards them to the
//! orchestrator. Nothing is built while nobody listens.
//!
//! The subscriber is global, so the tap is one per process; `main` makes
//! it and hands it to the node it runs. Tests that run several clusters in
//! one process give each node its own tap (or none) and publish into it.
//!
//! [`JsonStderr`] is the same capture written as one JSON object per line:
//! `--log-format json`.

use std::io::Write as _;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::broadcast;
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, Layer};

use super::line::{Level, LogLine, MAX_FIELDS, MAX_NAME, MAX_VALUE, clip};

/// Lines a listener may fall behind before it loses some (and is told how many).
pub const TAP_CAPACITY: usize = 1_024;

/// This process's log events, for whoever listens; cheap to clone.
#[derive(Debug, Clone)]
pub struct LogTap(broadcast::Sender<Arc<LogLine>>);

impl Default for LogTap {
    fn default() -> Self {
        LogTap(broadcast::channel(TAP_CAPACITY).0)
    }
}

impl LogTap {
    /// A tap nobody listens to yet.
    pub fn new() -> LogTap {
        LogTap::default()
    }

    /// Whether anyone listens (build lines only then).
    pub fn listened(&self) -> bool {
        self.0.receiver_count() > 0
    }

    /// Offers `line` to the listeners.
    pub fn publish(&self, line: LogLine) {
        if self.listened() {
            let _ = self.0.send(Arc::new(line));
        }
    }

    /// A listener, hearing lines published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<LogLine>> {
        self.0.subscribe()
    }
}

/// Milliseconds since the Unix epoch now (0 if the clock is before it).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Collects an event's message and fields.
#[derive(Default)]
struct Capture {
    message: String,
    /// The `log` crate's target, for events that came from `log` records
    /// (their metadata's target is the bridge's).
    log_target: Option<String>,
    fields: Vec<(String, String)>,
}

impl Capture {
    fn record(&mut self, field: &Field, value: String) {
        let name = field.name();
        if name == "message" {
            self.message = value;
        } else if name == "log.target" {
            self.log_target = Some(value);
        } else if name.starts_with("log.") {
            // The `log` bridge's file, line and module: not the event's content.
        } else if self.fields.len() < MAX_FIELDS {
            self.fields
                .push((clip(name, MAX_NAME), clip(&value, MAX_VALUE)));
        }
    }
}

impl Visit for Capture {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.record(field, value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.record(field, format!("{value:?}"));
    }
}

/// The [`LogLine`] of a `tracing` event, stamped now.
pub fn capture(event: &tracing::Event<'_>) -> LogLine {
    let mut c = Capture::default();
    event.record(&mut c);
    let meta = event.metadata();
    let target = c.log_target.as_deref().unwrap_or(meta.target());
    LogLine::new(
        now_ms(),
        Level::of(meta.level()),
        target,
        &c.message,
        c.fields,
    )
}

/// A `tracing` layer that offers events at `min` or more severe on a [`LogTap`].
#[derive(Debug)]
pub struct TapLayer {
    tap: LogTap,
    min: Level,
}

impl TapLayer {
    /// Offers events at `min` or more severe on `tap`.
    pub fn new(tap: LogTap, min: Level) -> TapLayer {
        TapLayer { tap, min }
    }
}

impl<S: tracing::Subscriber> Layer<S> for TapLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        if Level::of(event.metadata().level()) > self.min || !self.tap.listened() {
            return;
        }
        self.tap.publish(capture(event));
    }
}

/// `--log-format json`: each event as one JSON object on stderr, the shape
/// `GET /api/logs` shows (`ts`, `level`, `target`, `message`, `fields`).
/// A line that cannot be written is dropped and counted, as with text.
#[derive(Debug, Default, Clone, Copy)]
pub struct JsonStderr;

impl<S: tracing::Subscriber> Layer<S> for JsonStderr {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        let mut text = capture(event).json().to_string();
        text.push('\n');
        let _ = super::LossyStderr.write(text.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    #[test]
    fn events_become_lines_with_message_fields_and_level() {
        let tap = LogTap::new();
        let mut rx = tap.subscribe();
        let subscriber =
            tracing_subscriber::registry().with(TapLayer::new(tap.clone(), Level::Info));
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(worker = "w1", n = 3, addr = %"10.0.0.1:5000", "connected");
            tracing::debug!("too detailed for the tap");
            tracing::warn!(text = "a b", "slow");
        });
        let first = rx.try_recv().expect("info line");
        assert_eq!(first.level, Level::Info);
        assert_eq!(first.message, "connected");
        assert_eq!(
            first.fields,
            vec![
                ("worker".to_owned(), "w1".to_owned()),
                ("n".to_owned(), "3".to_owned()),
                ("addr".to_owned(), "10.0.0.1:5000".to_owned()),
            ]
        );
        assert!(first.target.contains("tap"), "{}", first.target);
        let second = rx.try_recv().expect("warn line");
        assert_eq!(second.level, Level::Warn);
        assert_eq!(second.fields, vec![("text".to_owned(), "a b".to_owned())]);
        assert!(rx.try_recv().is_err(), "the debug event stays out");
    }

    #[test]
    fn an_unheard_tap_builds_nothing() {
        let tap = LogTap::new();
        assert!(!tap.listened());
        tap.publish(LogLine::new(0, Level::Info, "t", "m", Vec::new()));
        let mut rx = tap.subscribe();
        assert!(rx.try_recv().is_err(), "nothing kept from before");
    }
}
