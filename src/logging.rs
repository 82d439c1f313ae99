//! Log output that can fail without taking anything down.
//!
//! `d8 serve` runs unattended: its stderr may be a file on a full SD card, or
//! a pipe whose reader went away. `tracing-subscriber` reports a failed write
//! with `eprintln!`, which panics when stderr itself is what failed, and the
//! panic ends whichever thread was logging (the store writer, the scheduler).
//! Here a line that cannot be written is dropped and counted instead; the
//! count is in `/health` (`log_lines_dropped`).
//!
//! [`line`] is one log event as d8 keeps and forwards it; [`tap`] captures
//! this process's events for the orchestrator's log ring and a worker's
//! forwarding, and writes `--log-format json`.

pub mod line;
pub mod tap;

pub use line::{Level, LogLine};
pub use tap::{JsonStderr, LogTap, TapLayer};

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};

use tracing_subscriber::fmt::MakeWriter;

static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Log lines that could not be written since the process started.
pub fn dropped_lines() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// Standard error as a log destination whose failures are counted, never
/// reported (a report would go to the stream that just failed).
#[derive(Debug, Clone, Copy, Default)]
pub struct LossyStderr;

impl<'a> MakeWriter<'a> for LossyStderr {
    type Writer = LossyStderr;

    fn make_writer(&'a self) -> Self::Writer {
        LossyStderr
    }
}

impl Write for LossyStderr {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // One formatted event arrives in one call; it goes whole or not at all.
        if io::stderr().write_all(buf).is_err() {
            DROPPED.fetch_add(1, Ordering::Relaxed);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        let _ = io::stderr().flush();
        Ok(())
    }
}

/// Writes `text` to standard output for a person; a failure is ignored
/// (`println!` would panic on a closed pipe or a full disk).
pub fn say(text: &str) {
    let mut out = io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

/// [`say`] for standard error.
pub fn warn(text: &str) {
    let mut err = io::stderr().lock();
    let _ = err.write_all(text.as_bytes());
    let _ = err.flush();
}

/// `println!` that cannot panic: [`say`] with a newline. For the CLI's
/// output (`d8 status | head -1` closes the pipe early).
#[macro_export]
macro_rules! out {
    () => {
        $crate::logging::say("\n")
    };
    ($($arg:tt)*) => {
        $crate::logging::say(&format!("{}\n", format_args!($($arg)*)))
    };
}

/// `eprintln!` that cannot panic: [`warn`] with a newline.
#[macro_export]
macro_rules! err {
    ($($arg:tt)*) => {
        $crate::logging::warn(&format!("{}\n", format_args!($($arg)*)))
    };
}
