//! Provider keys (and the cluster's API key) kept on this computer.
//!
//! The OS credential store comes first: Windows Credential Manager, the
//! macOS Keychain, the Secret Service on Linux (GNOME Keyring, KWallet),
//! under the service name `d8`. Where none answers (a Linux machine without
//! a desktop keyring, a headless session), keys go to a JSON file readable
//! by its owner only (0600 on Unix; an owner-only access list on Windows,
//! as d8 writes its own secrets), and the window says which one is used.
//!
//! Calls into an OS store may block (D-Bus, a Keychain prompt): they run in
//! the background, never while drawing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The service name entries are kept under in the OS store.
pub const SERVICE: &str = "d8";

/// The name the cluster's HTTP API key is kept under.
pub const CLUSTER_API_KEY: &str = "cluster-api-key";

/// Somewhere secrets can be kept.
pub trait Vault: Send + Sync {
    /// The secret named `name`, if any.
    fn get(&self, name: &str) -> Result<Option<String>, String>;
    /// Keeps `secret` as `name`.
    fn set(&self, name: &str, secret: &str) -> Result<(), String>;
    /// Forgets `name` (no error when it was not there).
    fn delete(&self, name: &str) -> Result<(), String>;
    /// Where, as the window says it.
    fn describe(&self) -> String;
}

/// The OS credential store, through the `keyring` crate.
#[derive(Debug, Default)]
pub struct OsVault;

impl OsVault {
    fn entry(name: &str) -> Result<keyring::Entry, String> {
        keyring::Entry::new(SERVICE, name).map_err(|e| e.to_string())
    }
}

impl Vault for OsVault {
    fn get(&self, name: &str) -> Result<Option<String>, String> {
        match Self::entry(name)?.get_password() {
            Ok(s) => Ok(Some(s)),
            Err(keyring::Error::NoEntry) => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }

    fn set(&self, name: &str, secret: &str) -> Result<(), String> {
        Self::entry(name)?
            .set_password(secret)
            .map_err(|e| e.to_string())
    }

    fn delete(&self, name: &str) -> Result<(), String> {
        match Self::entry(name)?.delete_credential() {
            Ok(()) | Err(keyring::Error::NoEntry) => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }

    fn describe(&self) -> String {
        if cfg!(windows) {
            "Windows Credential Manager".into()
        } else if cfg!(target_os = "macos") {
            "the macOS Keychain".into()
        } else {
            "the Secret Service (desktop keyring)".into()
        }
    }
}

/// A JSON file of name → secret, written whole and owner-only.
#[derive(Debug)]
pub struct FileVault {
    path: PathBuf,
    lock: Mutex<()>,
}

impl FileVault {
    /// Secrets in `path`.
    pub fn new(path: PathBuf) -> FileVault {
        FileVault {
            path,
            lock: Mutex::new(()),
        }
    }

    fn read(&self) -> Result<BTreeMap<String, String>, String> {
        match std::fs::read_to_string(&self.path) {
            Ok(text) => serde_json::from_str(&text)
                .map_err(|e| format!("{} is not a key file: {e}", self.path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(format!("{}: {e}", self.path.display())),
        }
    }

    fn write(&self, map: &BTreeMap<String, String>) -> Result<(), String> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        d8::node::files::ensure_dir(dir).map_err(|e| e.to_string())?;
        let json = serde_json::to_vec_pretty(map).map_err(|e| e.to_string())?;
        d8::node::files::write_file(&self.path, &json, true).map_err(|e| e.to_string())
    }
}

impl Vault for FileVault {
    fn get(&self, name: &str) -> Result<Option<String>, String> {
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        Ok(self.read()?.remove(name))
    }

    fn set(&self, name: &str, secret: &str) -> Result<(), String> {
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut map = self.read()?;
        map.insert(name.to_owned(), secret.to_owned());
        self.write(&map)
    }

    fn delete(&self, name: &str) -> Result<(), String> {
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut map = self.read()?;
        if map.remove(name).is_some() {
            self.write(&map)?;
        }
        Ok(())
    }

    fn describe(&self) -> String {
        "a file only you can read".to_owned()
    }
}

/// The OS store when it works, else the file.
pub struct KeyStore {
    os: Option<Box<dyn Vault>>,
    file: FileVault,
    /// Set once the OS store failed: later calls go to the file at once.
    os_failed: Mutex<Option<String>>,
}

impl std::fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyStore")
            .field("file", &self.file.path)
            .finish_non_exhaustive()
    }
}

impl KeyStore {
    /// The OS store (`os`), falling back to the file at `file`.
    pub fn new(os: Option<Box<dyn Vault>>, file: PathBuf) -> KeyStore {
        KeyStore {
            os,
            file: FileVault::new(file),
            os_failed: Mutex::new(None),
        }
    }

    /// The machine's OS store, with the file fallback at `file`.
    pub fn system(file: PathBuf) -> KeyStore {
        KeyStore::new(Some(Box::new(OsVault)), file)
    }

    /// Only the file (tests; `--key-file-only`).
    pub fn file_only(file: PathBuf) -> KeyStore {
        KeyStore::new(None, file)
    }

    fn os(&self) -> Option<&dyn Vault> {
        let failed = self.os_failed.lock().unwrap_or_else(|p| p.into_inner());
        if failed.is_some() {
            return None;
        }
        self.os.as_deref()
    }

    fn os_broke(&self, why: String) {
        *self.os_failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
    }

    /// The secret named `name`, from the OS store or else the file.
    pub fn get(&self, name: &str) -> Result<Option<String>, String> {
        if let Some(os) = self.os() {
            match os.get(name) {
                Ok(Some(s)) => return Ok(Some(s)),
                Ok(None) => {}
                Err(e) => self.os_broke(e),
            }
        }
        self.file.get(name)
    }

    /// Keeps `secret`: in the OS store, or in the file when the OS store
    /// refuses (then it stays out of the other one).
    pub fn set(&self, name: &str, secret: &str) -> Result<(), String> {
        if let Some(os) = self.os() {
            match os.set(name, secret) {
                Ok(()) => return self.file.delete(name),
                Err(e) => self.os_broke(e),
            }
        }
        self.file.set(name, secret)
    }

    /// Forgets `name` everywhere.
    pub fn delete(&self, name: &str) -> Result<(), String> {
        if let Some(os) = self.os()
            && let Err(e) = os.delete(name)
        {
            self.os_broke(e);
        }
        self.file.delete(name)
    }

    /// Where new keys go, in a few words for the window.
    pub fn describe(&self) -> String {
        match (&self.os, self.os_failure()) {
            (Some(os), None) => os.describe(),
            _ => self.file.describe(),
        }
    }

    /// The details behind [`Self::describe`]: the file's path and why the
    /// OS store is not used, when it is not.
    pub fn details(&self) -> String {
        let file = format!("{}", self.file.path.display());
        match (&self.os, self.os_failure()) {
            (Some(os), None) => format!(
                "{} (service \"{SERVICE}\"); where it is not available: {file}",
                os.describe()
            ),
            (Some(os), Some(why)) => format!(
                "{file}, because {} is not available here: {}",
                os.describe(),
                d8::logging::line::clip(&why, 160)
            ),
            (None, _) => file,
        }
    }

    fn os_failure(&self) -> Option<String> {
        self.os_failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An OS store that refuses everything (no keyring daemon).
    struct Broken;
    impl Vault for Broken {
        fn get(&self, _: &str) -> Result<Option<String>, String> {
            Err("no secret service on the session bus".into())
        }
        fn set(&self, _: &str, _: &str) -> Result<(), String> {
            Err("no secret service on the session bus".into())
        }
        fn delete(&self, _: &str) -> Result<(), String> {
            Err("no secret service on the session bus".into())
        }
        fn describe(&self) -> String {
            "the test keyring".into()
        }
    }

    /// An OS store in memory.
    #[derive(Default)]
    struct Memory(Mutex<BTreeMap<String, String>>);
    impl Vault for Memory {
        fn get(&self, n: &str) -> Result<Option<String>, String> {
            Ok(self.0.lock().expect("lock").get(n).cloned())
        }
        fn set(&self, n: &str, s: &str) -> Result<(), String> {
            self.0.lock().expect("lock").insert(n.into(), s.into());
            Ok(())
        }
        fn delete(&self, n: &str) -> Result<(), String> {
            self.0.lock().expect("lock").remove(n);
            Ok(())
        }
        fn describe(&self) -> String {
            "memory".into()
        }
    }

    #[test]
    fn without_an_os_store_keys_go_to_an_owner_only_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub").join("keys.json");
        let store = KeyStore::new(Some(Box::new(Broken)), path.clone());
        store.set("groq", "gsk_secret").expect("set");
        assert_eq!(
            store.get("groq").expect("get").as_deref(),
            Some("gsk_secret")
        );
        assert_eq!(store.describe(), "a file only you can read");
        let details = store.details();
        assert!(
            details.contains("keys.json")
                && details.contains("not available here: no secret service"),
            "{details}"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "key file mode {mode:o}");
        }
        // A new store (next run) reads the same file.
        let again = KeyStore::file_only(path);
        assert_eq!(
            again.get("groq").expect("get").as_deref(),
            Some("gsk_secret")
        );
        again.delete("groq").expect("delete");
        assert_eq!(again.get("groq").expect("get"), None);
    }

    #[test]
    fn with_an_os_store_the_file_keeps_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("keys.json");
        // A key from before (the OS store was down then) moves on the next set.
        FileVault::new(path.clone())
            .set("gemini", "old")
            .expect("set");
        let store = KeyStore::new(Some(Box::new(Memory::default())), path.clone());
        assert_eq!(store.get("gemini").expect("get").as_deref(), Some("old"));
        store.set("gemini", "AIza-new").expect("set");
        assert_eq!(
            store.get("gemini").expect("get").as_deref(),
            Some("AIza-new")
        );
        let file = std::fs::read_to_string(&path).expect("read");
        assert!(!file.contains("old") && !file.contains("AIza"), "{file}");
        assert_eq!(store.describe(), "memory");
    }

    #[test]
    fn a_damaged_key_file_is_an_error_not_an_empty_store() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("keys.json");
        std::fs::write(&path, "{not json").expect("write");
        let store = KeyStore::file_only(path);
        let e = store.get("groq").expect_err("damaged");
        assert!(e.contains("not a key file"), "{e}");
        assert!(
            store.set("groq", "x").is_err(),
            "a damaged file is not overwritten"
        );
    }
}
