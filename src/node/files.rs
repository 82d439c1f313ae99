//! Data-directory helpers. Secrets (keys, tokens) are written with mode 0600
//! on Unix; on Windows the file inherits the ACL of the per-user data directory.

use std::io::Write;
use std::path::{Path, PathBuf};

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
        #[cfg(not(unix))]
        let _ = secret;
        let mut f = opts.open(&tmp).map_err(err(&tmp))?;
        f.write_all(contents).map_err(err(&tmp))?;
        f.sync_all().map_err(err(&tmp))?;
    }
    std::fs::rename(&tmp, path).map_err(err(path))
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
