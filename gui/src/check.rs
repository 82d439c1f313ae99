//! "Test" beside a key: `d8 join --check-keys=json --provider KIND` with the
//! key in its environment. The same provider code a worker runs makes one
//! call asking one token; the verdict is `ok`, `rate_limited`, `rejected`,
//! `unreachable` or `error`.

use std::path::Path;
use std::process::{Command, Stdio};

use serde::Deserialize;

use crate::worker::{Launch, ProviderRun, inherited_config_vars};

/// One verdict, as `d8 join --check-keys=json` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Verdict {
    /// Provider kind.
    pub provider: String,
    /// `ok`, `rate_limited`, `rejected`, `unreachable` or `error`.
    pub result: String,
    /// With `rate_limited`: when the key may be used again.
    #[serde(default)]
    pub retry_after_ms: Option<u64>,
    /// What the vendor or the connection said (never the key).
    #[serde(default)]
    pub message: String,
    /// How long the call took.
    #[serde(default)]
    pub ms: u64,
}

impl Verdict {
    /// The verdict in a few words, as the window shows it.
    pub fn headline(&self) -> String {
        match self.result.as_str() {
            "ok" => format!("works ({} ms)", self.ms),
            "rate_limited" => match self.retry_after_ms {
                Some(ms) => format!("works, rate limited for {}", crate::human_ms(ms)),
                None => "works, rate limited now".to_owned(),
            },
            "rejected" => "rejected: the vendor refused this key".to_owned(),
            "unreachable" => "unreachable".to_owned(),
            other => other.replace('_', " "),
        }
    }
}

/// Tests `provider` through `d8` (blocking: run it in the background).
pub fn run(d8: &Path, provider: &ProviderRun) -> Result<Verdict, String> {
    let launch = Launch {
        providers: vec![provider.clone()],
        slots: 1,
        ..Launch::default()
    };
    // The worker's own recipe gives the environment; the command differs.
    let spec = crate::worker::spec(d8, Path::new("."), &launch);
    let mut cmd = Command::new(d8);
    cmd.args([
        "join",
        "--check-keys=json",
        "--provider",
        provider.kind.as_str(),
    ])
    .stdin(Stdio::null())
    .env("NO_COLOR", "1")
    .env("D8_LOG", "warn");
    for k in inherited_config_vars() {
        cmd.env_remove(k);
    }
    for (k, v) in &spec.env {
        cmd.env(k, v);
    }
    crate::child::no_window(&mut cmd);
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {}: {e}", d8.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if let Some(v) = stdout
        .lines()
        .find_map(|l| serde_json::from_str::<Verdict>(l).ok())
    {
        return Ok(v);
    }
    // No verdict: d8 refused the configuration; its last line says why.
    let stderr = String::from_utf8_lossy(&out.stderr);
    let why = stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("no answer");
    Err(d8::logging::line::clip(why.trim(), 300))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_read_as_sentences() {
        let v = |result: &str, retry: Option<u64>| Verdict {
            provider: "groq".into(),
            result: result.into(),
            retry_after_ms: retry,
            message: String::new(),
            ms: 120,
        };
        assert_eq!(v("ok", None).headline(), "works (120 ms)");
        assert_eq!(
            v("rate_limited", Some(30_000)).headline(),
            "works, rate limited for 30 s"
        );
        assert!(v("rejected", None).headline().starts_with("rejected"));
    }
}
