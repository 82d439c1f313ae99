//! Starting `d8` as a child process, and reading what it logs.
//!
//! - Secrets (provider keys, the join token) go in the child's environment,
//!   never its command line (which any user of the machine can list).
//! - Its output is appended to a log file in its data dir, not a pipe: a worker
//!   the user keeps running after closing the window must not lose its
//!   stderr, and a window opened later tails the same file.
//! - On Windows the child gets no console window; on Unix it gets its own
//!   process group, so closing the terminal the app was started from (or
//!   its Ctrl-C) does not stop a worker meant to outlive the window.

use std::ffi::OsString;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// A log file past this size is moved to `<name>.1` before the next start.
pub const ROTATE_BYTES: u64 = 4 * 1024 * 1024;

/// Where the `d8` executable is: beside this one (how every installer lays
/// them out), else on `PATH`.
pub fn find_d8() -> Option<PathBuf> {
    let name = format!("d8{}", std::env::consts::EXE_SUFFIX);
    if let Ok(me) = std::env::current_exe() {
        let beside = me.with_file_name(&name);
        if beside.is_file() {
            return Some(beside);
        }
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(&name))
        .find(|p| p.is_file())
}

/// What the window says when there is no `d8` to run.
pub const NOT_FOUND: &str =
    "the d8 program was not found beside d8-desktop or on PATH; reinstall d8";

/// Starts the spec `make` builds for `d8` (not found: [`NOT_FOUND`]),
/// after creating `data_dir`; errors as the window shows them.
pub fn start(
    d8: Option<&Path>,
    data_dir: &Path,
    make: impl FnOnce(&Path) -> Spec,
) -> Result<Child, String> {
    let d8 = d8.ok_or_else(|| NOT_FOUND.to_owned())?;
    d8::node::files::ensure_dir(data_dir).map_err(|e| e.to_string())?;
    spawn(&make(d8)).map_err(|e| format!("cannot start {}: {e}", d8.display()))
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Spec {
    /// The `d8` executable.
    pub program: PathBuf,
    /// Arguments (nothing secret).
    pub args: Vec<OsString>,
    /// Variables to set (keys and tokens go here).
    pub env: Vec<(String, String)>,
    /// Variables to remove from what this process has (a key the user did
    /// not choose must not reach the worker by inheritance).
    pub env_remove: Vec<String>,
    /// Where stdout and stderr go (appended; moved to `.1` first when
    /// past [`ROTATE_BYTES`]).
    pub log: PathBuf,
}

/// Starts `spec`.
pub fn spawn(spec: &Spec) -> std::io::Result<Child> {
    if let Some(dir) = spec.log.parent() {
        std::fs::create_dir_all(dir)?;
    }
    rotate(&spec.log);
    // Owner-only: `d8 serve` prints the join token and API key at start.
    // Appended to, never truncated: a process still writing to it (one
    // started by another window) keeps a readable file.
    let mut open = std::fs::OpenOptions::new();
    open.append(true).create(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut open, 0o600);
    let out = open.open(&spec.log)?;
    let err = out.try_clone()?;
    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    for k in &spec.env_remove {
        cmd.env_remove(k);
    }
    for (k, v) in &spec.env {
        cmd.env(k, v);
    }
    // Plain text: the tail is read by people.
    cmd.env("D8_LOG_FORMAT", "text").env("NO_COLOR", "1");
    no_window(&mut cmd);
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
    }
    cmd.spawn()
}

/// No console window for a console program started from the window
/// (Windows; elsewhere nothing to do).
pub fn no_window(cmd: &mut Command) {
    #[cfg(windows)]
    {
        use std::os::windows::process::CommandExt;
        /// `CREATE_NO_WINDOW` (winbase.h).
        const CREATE_NO_WINDOW: u32 = 0x0800_0000;
        cmd.creation_flags(CREATE_NO_WINDOW);
    }
    #[cfg(not(windows))]
    let _ = cmd;
}

fn rotate(log: &Path) {
    if std::fs::metadata(log).is_ok_and(|m| m.len() > ROTATE_BYTES) {
        let mut old = log.as_os_str().to_owned();
        old.push(".1");
        let _ = std::fs::rename(log, old);
    }
}

/// A log tail read again only when the file changed (size or time).
#[derive(Debug)]
pub struct Tail {
    lines: usize,
    seen: std::sync::Mutex<Option<(u64, Option<std::time::SystemTime>)>>,
}

impl Tail {
    /// The last `lines` lines.
    pub fn new(lines: usize) -> Tail {
        Tail {
            lines,
            seen: std::sync::Mutex::new(None),
        }
    }

    /// The tail of `path` if it changed since the last call.
    pub fn tail_if_changed(&self, path: &Path) -> Option<Vec<String>> {
        let stamp = std::fs::metadata(path).map_or((0, None), |m| (m.len(), m.modified().ok()));
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if *seen == Some(stamp) {
            return None;
        }
        *seen = Some(stamp);
        Some(tail(path, self.lines))
    }
}

/// The last `lines` lines of `path` (reads at most its last 256 KiB).
/// Empty when the file does not exist yet.
pub fn tail(path: &Path, lines: usize) -> Vec<String> {
    const WINDOW: u64 = 256 * 1024;
    let Ok(mut f) = File::open(path) else {
        return Vec::new();
    };
    let len = f.metadata().map_or(0, |m| m.len());
    let start = len.saturating_sub(WINDOW);
    if f.seek(SeekFrom::Start(start)).is_err() {
        return Vec::new();
    }
    let mut bytes = Vec::new();
    if f.take(WINDOW).read_to_end(&mut bytes).is_err() {
        return Vec::new();
    }
    let text = String::from_utf8_lossy(&bytes);
    let mut all: Vec<&str> = text.lines().collect();
    if start > 0 && !all.is_empty() {
        // The first line was cut by the window.
        all.remove(0);
    }
    let from = all.len().saturating_sub(lines);
    all[from..].iter().map(|l| (*l).to_owned()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tail_is_the_last_whole_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("x.log");
        assert!(tail(&p, 5).is_empty(), "no file yet");
        let text: String = (0..100_000).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&p, text).expect("write");
        let t = tail(&p, 3);
        assert_eq!(t, ["line 99997", "line 99998", "line 99999"]);
        let all = tail(&p, 1_000_000);
        assert!(all.len() < 100_000, "only the last 256 KiB are read");
        assert!(all[0].starts_with("line "), "no cut line: {}", all[0]);
    }

    #[test]
    fn a_large_log_is_kept_once_as_dot_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("w.log");
        std::fs::write(&p, vec![b'x'; (ROTATE_BYTES + 1) as usize]).expect("write");
        rotate(&p);
        assert!(!p.exists());
        assert!(dir.path().join("w.log.1").exists());
        std::fs::write(&p, b"small").expect("write");
        rotate(&p);
        assert!(p.exists(), "a small log is not rotated");
    }
}
