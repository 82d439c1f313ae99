//! The data directory: the name of every file d8 keeps there, the default
//! location per role, and safe writes. Secrets (keys, tokens) are written
//! readable by their owner only: mode 0600 on Unix, an access list that
//! names only the owner on Windows.

use std::io::Write;
use std::path::{Path, PathBuf};

// Orchestrator files.
/// The cluster CA certificate (orchestrator), or the CA a worker trusts.
pub const CA_CERT: &str = "ca.crt";
/// The cluster CA's private key (secret).
pub const CA_KEY: &str = "ca.key";
/// The orchestrator's server certificate.
pub const ORCHESTRATOR_CERT: &str = "orchestrator.crt";
/// The orchestrator's private key (secret).
pub const ORCHESTRATOR_KEY: &str = "orchestrator.key";
/// The standing join token (secret), for scripts.
pub const JOIN_TOKEN: &str = "join-token";
/// The HTTP API key (secret), for scripts and `d8 status`.
pub const API_KEY: &str = "api-key";
/// The orchestrator's database.
pub const DATABASE: &str = "d8.redb";

// Worker files (its CA copy is [`CA_CERT`]).
/// The worker's private key (secret).
pub const WORKER_KEY: &str = "worker.key";
/// The worker's certificate, signed by the cluster CA.
pub const WORKER_CERT: &str = "worker.crt";
/// The worker id the orchestrator assigned.
pub const WORKER_ID: &str = "worker-id";
/// Worker: its state for the machine it runs on (the desktop app).
pub const STATUS: &str = "status.json";
/// Worker: created by whoever wants it to drain and stop (the desktop app,
/// where no Ctrl-C reaches a windowless process on Windows).
pub const DRAIN_REQUEST: &str = "drain-request";
/// Worker: locked while a worker runs with this data dir (one at a time).
pub const WORKER_LOCK: &str = "worker.lock";
/// Worker: the day's spend of providers with a daily budget.
pub const SPEND: &str = "spend.json";
/// Orchestrator: created by whoever wants it to stop cleanly, as Ctrl-C
/// does (the desktop app's "Stop cluster": no signal reaches a windowless
/// process on Windows).
pub const STOP_REQUEST: &str = "stop-request";
/// Orchestrator: prices that override the workers' for usage accounting
/// (optional).
pub const PRICES: &str = "prices.toml";

/// The default data dir for a role (`orchestrator` or `worker`): the OS's
/// per-user data dir (`~/.local/share`, `%APPDATA%`, `~/Library/Application
/// Support`) + `d8/<role>`.
pub fn default_data_dir(role: &str) -> PathBuf {
    dirs::data_dir()
        .unwrap_or_else(|| PathBuf::from("."))
        .join("d8")
        .join(role)
}

/// Why a data dir could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process (or another run in this one) holds the lock.
    #[error("locked by another process")]
    Busy,
    /// The lock file could not be opened.
    #[error(transparent)]
    File(#[from] FileError),
}

/// Takes the exclusive lock on `<dir>/<name>` (an advisory OS file lock,
/// released when the returned file is dropped or the process ends, however
/// it ends: nothing stale is left behind).
pub fn lock_dir(dir: &Path, name: &str) -> Result<std::fs::File, LockError> {
    let path = dir.join(name);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| FileError {
            path: path.clone(),
            source,
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(LockError::Busy),
        Err(std::fs::TryLockError::Error(source)) => Err(FileError { path, source }.into()),
    }
}

/// Returns once a file appears at `path` (looked for each second, removed
/// when seen). One already there asked an earlier run: it is removed first.
pub async fn requested(path: &Path) {
    let _ = std::fs::remove_file(path);
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        if std::fs::remove_file(path).is_ok() {
            return;
        }
    }
}

/// Errors reading or writing the data directory.
#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", path.display())]
pub struct FileError {
    /// The file.
    pub path: PathBuf,
    /// Cause.
    #[source]
    pub source: std::io::Error,
}

fn err(path: &Path) -> impl FnOnce(std::io::Error) -> FileError + '_ {
    move |source| FileError {
        path: path.to_owned(),
        source,
    }
}

/// Backups being written (`d8 backup`) start with this; one left by a
/// crash mid-backup is removed at the next start.
pub const BACKUP_PREFIX: &str = ".backup-";

/// Removes backups a crash left half-sent in `dir` (an SD card must not
/// fill up with them). Failures are ignored: they are only leftovers.
pub fn remove_stale_backups(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().starts_with(BACKUP_PREFIX) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Creates `dir` (and parents), private to the user on Unix.
pub fn ensure_dir(dir: &Path) -> Result<(), FileError> {
    std::fs::create_dir_all(dir).map_err(err(dir))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(err(dir))?;
    }
    Ok(())
}

/// Writes `contents` atomically (temp file + rename). `secret` files get mode 0600.
pub fn write_file(path: &Path, contents: &[u8], secret: bool) -> Result<(), FileError> {
    let tmp = path.with_extension("tmp");
    {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(if secret { 0o600 } else { 0o644 });
        }
        let mut f = opts.open(&tmp).map_err(err(&tmp))?;
        // Restricted before any secret byte is written; the rename keeps it.
        #[cfg(windows)]
        if secret {
            owner_only(&tmp).map_err(err(&tmp))?;
        }
        f.write_all(contents).map_err(err(&tmp))?;
        f.sync_all().map_err(err(&tmp))?;
    }
    std::fs::rename(&tmp, path).map_err(err(path))
}

/// Replaces a file's access list with one entry for its owner (and the
/// SYSTEM account, which backs up and runs services), inheriting nothing
/// from the folder. `*S-1-3-4` is the OWNER RIGHTS SID, so this also holds
/// for a service account.
#[cfg(windows)]
fn owner_only(path: &Path) -> std::io::Result<()> {
    restrict(path, &["*S-1-3-4:F", "*S-1-5-18:F"])
}

/// Replaces the access list of `path` with `grants` (icacls's `SID:rights`
/// form), inheriting nothing from its folder. Windows has no Unix modes;
/// `icacls` ships with every Windows since Vista and needs no unsafe code
/// here.
#[cfg(windows)]
pub fn restrict(path: &Path, grants: &[&str]) -> std::io::Result<()> {
    use std::os::windows::process::CommandExt;
    /// Keeps a console window from flashing up when the GUI writes a file.
    const CREATE_NO_WINDOW: u32 = 0x0800_0000;
    let out = std::process::Command::new("icacls")
        .arg(path)
        .args(["/inheritance:r", "/grant:r"])
        .args(grants)
        .arg("/q")
        .creation_flags(CREATE_NO_WINDOW)
        .output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "icacls could not restrict the access list: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Reads a UTF-8 file; `Ok(None)` if it does not exist.
pub fn read_optional(path: &Path) -> Result<Option<String>, FileError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(err(path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_private_and_writes_replace() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("key");
        write_file(&p, b"one", true).expect("write");
        write_file(&p, b"two", true).expect("rewrite");
        assert_eq!(read_optional(&p).expect("read").as_deref(), Some("two"));
        assert_eq!(read_optional(&dir.path().join("none")).expect("read"), None);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&p).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
