//! LLM providers, executed on workers with the worker's own keys.
//!
//! [`Provider`] is the one interface: a chat request in, a [`TaskOutput`] out,
//! text deltas pushed to a [`ChunkSink`] as they arrive (streaming), and
//! failures classified by [`ProviderErrorKind`] so the scheduler can route
//! around rate limits. Vendors live one per file; this issue ships only
//! [`echo::Echo`], the deterministic provider for tests, benchmarks and smoke checks.

pub mod anthropic;
pub mod classify;
pub mod echo;
pub mod file;
pub mod gemini;
pub mod ollama;
pub mod openai;
pub mod set;
pub mod sse;
#[cfg(test)]
pub(crate) mod testkit;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::mpsc;

pub use set::{Job, ProviderSet, ProviderSettings};

use crate::task::{ChatRequest, ErrorKind, TaskError, TaskOutput};

/// A boxed, sendable future (providers are used as trait objects).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where a provider pushes streamed text. Dropping a chunk is never an error:
/// the final [`TaskOutput`] carries the whole text.
#[derive(Debug, Clone, Default)]
pub struct ChunkSink(Option<mpsc::Sender<String>>);

impl ChunkSink {
    /// A sink that forwards to `tx`.
    pub fn new(tx: mpsc::Sender<String>) -> Self {
        ChunkSink(Some(tx))
    }
    /// A sink that discards.
    pub fn none() -> Self {
        ChunkSink(None)
    }
    /// Pushes a delta; waits if the consumer is slow (back-pressure).
    pub async fn push(&self, text: String) {
        if let Some(tx) = &self.0 {
            let _ = tx.send(text).await;
        }
    }
}

/// A provider key. It is only ever read through [`Secret::expose`] when a
/// request is built; `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a key.
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    /// The key itself, for a request header.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// How a provider failure should steer the scheduler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderErrorKind {
    /// 429: rest this provider for `retry_after_ms`, run the task elsewhere.
    RateLimited {
        /// From `Retry-After` or the vendor's reset hints.
        retry_after_ms: u64,
    },
    /// Daily quota or budget gone: a long rest.
    QuotaExhausted {
        /// Until the quota is expected back.
        retry_after_ms: u64,
    },
    /// 401/403: the key is bad; the provider should be disabled on this worker.
    Auth,
    /// 5xx, timeouts, connection errors: retry elsewhere.
    Transient,
    /// The request itself is invalid: fail the task.
    Invalid,
    /// Nothing on this worker can serve the task now (keys rejected, or no
    /// provider within the route's tier): run it elsewhere.
    Unavailable,
}

/// A classified provider failure. `message` must never contain a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ProviderError {
    /// Classification.
    pub kind: ProviderErrorKind,
    /// What the vendor said, redacted.
    pub message: String,
}

impl From<ProviderError> for TaskError {
    fn from(e: ProviderError) -> Self {
        let kind = match e.kind {
            ProviderErrorKind::RateLimited { retry_after_ms }
            | ProviderErrorKind::QuotaExhausted { retry_after_ms } => {
                ErrorKind::RateLimited { retry_after_ms }
            }
            // A rejected key or a worker with nothing usable left is not the
            // task's fault: it runs elsewhere without consuming an attempt.
            ProviderErrorKind::Auth | ProviderErrorKind::Unavailable => ErrorKind::Unavailable,
            ProviderErrorKind::Transient => ErrorKind::Transient,
            ProviderErrorKind::Invalid => ErrorKind::Permanent,
        };
        TaskError {
            kind,
            message: e.message,
        }
    }
}

/// An LLM backend.
pub trait Provider: Send + Sync + 'static {
    /// Provider kind (`echo`, `groq`, …); advertised to the orchestrator.
    fn kind(&self) -> &str;
    /// Models it serves; advertised.
    fn models(&self) -> Vec<String>;
    /// Runs one chat. Cancellation is by dropping the future.
    fn chat<'a>(
        &'a self,
        req: &'a ChatRequest,
        sink: ChunkSink,
    ) -> BoxFuture<'a, Result<TaskOutput, ProviderError>>;
}

/// The HTTP client for vendor providers; a worker builds one and hands it to
/// every [`build`], so all its providers share one connection pool and TLS
/// session cache: rustls, connection reuse,
/// bounded connect and read stalls (a whole attempt is bounded by the
/// orchestrator's attempt timeout).
pub fn http_client() -> Result<reqwest::Client, String> {
    crate::ensure_crypto_provider();
    reqwest::Client::builder()
        .user_agent(concat!("d8/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(std::time::Duration::from_secs(10))
        .read_timeout(std::time::Duration::from_secs(120))
        .pool_idle_timeout(std::time::Duration::from_secs(90))
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))
}

/// Where provider settings come from (the process environment in `d8 join`,
/// a map in tests).
pub trait Env {
    /// The value of `name`, if set and not empty.
    fn var(&self, name: &str) -> Option<String>;
}

/// A provider's settings from `<KIND>_TIER` and `<KIND>_REASONING_MODEL`
/// (`GROQ_TIER=paid`), for workers configured without a file.
pub fn env_settings(kind: &str, env: &dyn Env) -> Result<ProviderSettings, String> {
    let prefix = match kind {
        "claude" => "ANTHROPIC".to_owned(),
        other => other.to_uppercase(),
    };
    let tier = env
        .var(&format!("{prefix}_TIER"))
        .map(|t| {
            t.trim()
                .parse::<crate::task::Tier>()
                .map_err(|e| format!("{prefix}_TIER: {e}"))
        })
        .transpose()?;
    Ok(ProviderSettings {
        tier,
        reasoning_model: env.var(&format!("{prefix}_REASONING_MODEL")),
        ..ProviderSettings::default()
    })
}

/// The process environment.
#[derive(Debug, Clone, Copy)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.trim().is_empty())
    }
}

impl Env for std::collections::HashMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned().filter(|v| !v.trim().is_empty())
    }
}

/// Settings given as flags, over an environment.
pub struct Overlay<'a> {
    /// The environment underneath.
    pub base: &'a dyn Env,
    /// Values that win over it.
    pub over: std::collections::HashMap<String, String>,
}

impl Env for Overlay<'_> {
    fn var(&self, name: &str) -> Option<String> {
        self.over
            .get(name)
            .cloned()
            .filter(|v| !v.trim().is_empty())
            .or_else(|| self.base.var(name))
    }
}

/// Builds the provider called `name` from `env`. `legacy_key` is the
/// original project's `API_KEY`, used when `WORKER_TYPE` names this provider
/// and its own variable is unset. `client` is the worker's shared
/// [`http_client`].
pub fn build(
    name: &str,
    env: &dyn Env,
    legacy_key: Option<&str>,
    echo_delay: std::time::Duration,
    client: &reqwest::Client,
) -> Result<Arc<dyn Provider>, String> {
    if name == "echo" {
        return Ok(Arc::new(echo::Echo { delay: echo_delay }));
    }
    if name == "ollama" {
        // OLLAMA_HOST is Ollama's own variable; DEEPSEEK_BASE_URL is the
        // original project's name for the same thing on deepseek_gpu workers.
        let url = env
            .var("OLLAMA_HOST")
            .or_else(|| env.var("DEEPSEEK_BASE_URL"))
            .unwrap_or_else(|| ollama::DEFAULT_URL.to_owned());
        let models = env
            .var("OLLAMA_MODELS")
            .map(|m| {
                m.split(',')
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        return Ok(Arc::new(ollama::Ollama::new(&url, models, client.clone())));
    }
    let models = |var: &str| -> Vec<String> {
        env.var(var)
            .map(|m| {
                m.split(',')
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    };
    let key_for = |var: &str| -> Result<Secret, String> {
        env.var(var)
            .or_else(|| legacy_key.map(str::to_owned))
            .map(Secret::new)
            .ok_or_else(|| format!("provider {name}: set {var} (the key stays on this machine)"))
    };
    let url = |var: &str, default: &str| -> Result<String, String> {
        let u = env.var(var).unwrap_or_else(|| default.to_owned());
        if u.starts_with("https://") || u.starts_with("http://") {
            Ok(u)
        } else {
            Err(format!("{var}: {u:?} is not an http(s) URL"))
        }
    };
    if name == "anthropic" || name == "claude" {
        return Ok(Arc::new(anthropic::Anthropic::new(
            &url("ANTHROPIC_BASE_URL", anthropic::BASE_URL)?,
            key_for("ANTHROPIC_API_KEY")?,
            models("ANTHROPIC_MODELS"),
            client.clone(),
        )));
    }
    if name == "gemini" {
        return Ok(Arc::new(gemini::Gemini::new(
            &url("GEMINI_BASE_URL", gemini::BASE_URL)?,
            key_for("GEMINI_API_KEY")?,
            models("GEMINI_MODELS"),
            client.clone(),
        )));
    }
    let Some(preset) = openai::PRESETS.iter().find(|p| p.kind == name) else {
        return Err(format!(
            "provider {name:?} is not available in this build; available: echo, ollama, anthropic, gemini, {}",
            openai::PRESETS
                .iter()
                .map(|p| p.kind)
                .collect::<Vec<_>>()
                .join(", ")
        ));
    };
    let key = key_for(preset.key_env)?;
    let base = url(preset.base_url_env, preset.base_url)?;
    let mut p = openai::OpenAiCompat::new(*preset, &base, Some(key), client.clone());
    let served = models(&format!("{}_MODELS", preset.kind.to_ascii_uppercase()));
    if !served.is_empty() {
        p = p.with_models(served);
    }
    Ok(Arc::new(p))
}

#[cfg(test)]
mod build_tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn builds_presets_from_the_environment() {
        let d = std::time::Duration::ZERO;
        let c = http_client().expect("client");
        let p = build("groq", &env(&[("GROQ_API_KEY", "gsk_x")]), None, d, &c).expect("groq");
        assert_eq!(p.kind(), "groq");
        assert!(
            build("groq", &env(&[]), Some("legacy"), d, &c).is_ok(),
            "API_KEY with WORKER_TYPE=groq"
        );
        let e = build("groq", &env(&[]), None, d, &c).err().expect("no key");
        assert!(e.contains("GROQ_API_KEY"), "{e}");
        let e = build(
            "openai",
            &env(&[("OPENAI_API_KEY", "k"), ("OPENAI_BASE_URL", "ftp://x")]),
            None,
            d,
            &c,
        )
        .err()
        .expect("bad url");
        assert!(e.contains("OPENAI_BASE_URL"), "{e}");
        let e = build("mistral", &env(&[]), None, d, &c).err().expect("n/a");
        assert!(e.contains("not available"), "{e}");
        assert_eq!(
            build("echo", &env(&[]), None, d, &c).expect("echo").kind(),
            "echo"
        );
        let o = build(
            "ollama",
            &env(&[
                ("DEEPSEEK_BASE_URL", "http://gpu:11434"),
                ("OLLAMA_MODELS", "a, b"),
            ]),
            None,
            d,
            &c,
        )
        .expect("ollama");
        assert_eq!(
            (o.kind(), o.models()),
            ("ollama", vec!["a".to_owned(), "b".to_owned()])
        );
        for (name, var, kind) in [
            ("anthropic", "ANTHROPIC_API_KEY", "anthropic"),
            ("claude", "ANTHROPIC_API_KEY", "anthropic"),
            ("gemini", "GEMINI_API_KEY", "gemini"),
        ] {
            let p = build(name, &env(&[(var, "key-1234567890")]), None, d, &c).expect(name);
            assert_eq!(p.kind(), kind);
            let e = build(name, &env(&[]), None, d, &c).err().expect("no key");
            assert!(e.contains(var), "{e}");
        }
        let g = build(
            "groq",
            &env(&[("GROQ_API_KEY", "k"), ("GROQ_MODELS", "m1,m2")]),
            None,
            d,
            &c,
        )
        .expect("groq");
        assert_eq!(g.models(), ["m1", "m2"]);
    }

    #[test]
    fn secrets_do_not_print() {
        crate::ensure_crypto_provider();
        let s = Secret::new("gsk_very_secret_value");
        assert_eq!(format!("{s:?}"), "<redacted>");
        let p =
            openai::OpenAiCompat::new(openai::GROQ, "http://x", Some(s), reqwest::Client::new());
        assert!(!format!("{p:?}").contains("very_secret"));
    }

    #[test]
    fn tier_and_reasoning_model_from_the_environment() {
        let s = env_settings(
            "groq",
            &env(&[
                ("GROQ_TIER", "paid"),
                ("GROQ_REASONING_MODEL", "llama-3.3-70b"),
            ]),
        )
        .expect("ok");
        assert_eq!(s.tier, Some(crate::task::Tier::Paid));
        assert_eq!(s.reasoning_model.as_deref(), Some("llama-3.3-70b"));
        assert_eq!(
            env_settings("claude", &env(&[("ANTHROPIC_TIER", "free")]))
                .expect("ok")
                .tier,
            Some(crate::task::Tier::Free)
        );
        let e = env_settings("gemini", &env(&[("GEMINI_TIER", "gratis")])).expect_err("bad");
        assert!(
            e.contains("GEMINI_TIER") && e.contains("local, free or paid"),
            "{e}"
        );
        assert_eq!(
            env_settings("ollama", &env(&[])).expect("ok"),
            ProviderSettings::default()
        );
    }
}
