//! LLM providers, executed on workers with the worker's own keys.
//!
//! [`Provider`] is the one interface: a chat request in, a [`TaskOutput`] out,
//! text deltas pushed to a [`ChunkSink`] as they arrive (streaming), and
//! failures classified by [`ProviderErrorKind`] so the scheduler can route
//! around rate limits.
//!
//! Who owns what:
//! - [`vendor`]: the one table of vendor facts (names, variables, defaults).
//! - one file per dialect: [`openai`] (OpenAI, Groq, DeepSeek, OpenRouter),
//!   [`anthropic`], [`gemini`], [`ollama`], and [`echo`], the deterministic
//!   provider for tests, benchmarks and smoke checks.
//! - [`driver`]: the HTTP side every dialect shares: the call, and reading a
//!   streamed answer record by record into the sink.
//! - [`classify`]: the failure classifier (`Retry-After`, reset headers,
//!   quota and auth errors).
//! - [`stream_parser`]: parsers for vendors' streamed answers (SSE and NDJSON).
//! - [`set`]: a worker's providers, their cooldowns and fallback order.
//! - [`check`]: `d8 join --check-keys`, one tiny call per provider.
//! - [`budget`]: prices (built-in list prices, the worker's own) and daily
//!   budgets with the day's spend kept on disk.
//! - [`file`]: the worker's TOML file.
//! - [`build`] here: a provider from its name and the environment.

pub mod anthropic;
pub mod budget;
pub mod check;
pub mod classify;
pub mod driver;
pub mod echo;
pub mod file;
pub mod gemini;
pub mod ollama;
pub mod openai;
pub mod set;
mod shape;
pub mod stream_parser;
#[cfg(test)]
pub(crate) mod testkit;
pub mod vendor;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::mpsc;

pub use driver::{ReadLimits, VendorClient};
pub use set::{Job, ProviderSet, ProviderSettings};
pub use vendor::{Dialect, VENDORS, Vendor};

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
    /// 429: cool this provider down for `retry_after_ms`, run the task elsewhere.
    RateLimited {
        /// From `Retry-After` or the vendor's reset hints.
        retry_after_ms: u64,
    },
    /// Daily quota or budget gone: a long cooldown.
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
    /// Models it computes embeddings with; advertised. None by default.
    fn embedding_models(&self) -> Vec<String> {
        Vec::new()
    }
    /// Computes the embeddings `req.embed` asks for with `req.model`.
    fn embed<'a>(
        &'a self,
        req: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<TaskOutput, ProviderError>> {
        let _ = req;
        let message = format!("{}: this provider does not compute embeddings", self.kind());
        Box::pin(async move {
            Err(ProviderError {
                kind: ProviderErrorKind::Invalid,
                message,
            })
        })
    }
}

/// Why a provider could not be configured from flags, environment or file.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// No vendor of that name in this build.
    #[error(
        "provider {name:?} is not available in this build; available: {}",
        vendor::kinds()
    )]
    Unknown {
        /// The name asked for.
        name: String,
    },
    /// A keyed provider without its key.
    #[error("provider {provider}: set {var} (the key stays on this machine)")]
    MissingKey {
        /// The provider.
        provider: String,
        /// The variable that should hold the key.
        var: &'static str,
    },
    /// A base URL that is not HTTP(S). Its value is not repeated: a
    /// variable set to a key by mistake must not print that key.
    #[error("{var} is not an http(s) URL (it must start with http:// or https://)")]
    BadUrl {
        /// The variable it came from.
        var: &'static str,
    },
    /// `<KIND>_TIER` names no tier.
    #[error("{var}: {source}")]
    BadTier {
        /// The variable.
        var: String,
        /// What was wrong.
        #[source]
        source: crate::task::UnknownTier,
    },
    /// reqwest could not build its client (TLS set-up).
    #[error("cannot build the HTTP client: {0}")]
    HttpClient(#[source] reqwest::Error),
}

/// Where provider settings come from (the process environment in `d8 join`,
/// a map in tests).
pub trait Env {
    /// The value of `name` without surrounding whitespace, if set and not
    /// blank. No setting means anything by it, and values arrive with it:
    /// a key pasted with its line break, or Windows' `set K=v & …`, which
    /// keeps the space before the `&` (sent as is, a key is rejected).
    fn var(&self, name: &str) -> Option<String>;
}

/// `value` as [`Env::var`] gives it.
fn present(value: &str) -> Option<String> {
    let v = value.trim();
    (!v.is_empty()).then(|| v.to_owned())
}

/// A provider's settings from `<PREFIX>_TIER` and `<PREFIX>_REASONING_MODEL`
/// (`GROQ_TIER=paid`; the prefix is in the vendor table), for workers
/// configured without a file.
pub fn env_settings(kind: &str, env: &dyn Env) -> Result<ProviderSettings, BuildError> {
    let prefix =
        vendor::find(kind).map_or_else(|| kind.to_uppercase(), |v| v.env_prefix.to_owned());
    let tier_var = format!("{prefix}_TIER");
    let tier = env
        .var(&tier_var)
        .map(|t| {
            t.trim()
                .parse::<crate::task::Tier>()
                .map_err(|source| BuildError::BadTier {
                    var: tier_var.clone(),
                    source,
                })
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
        std::env::var(name).ok().as_deref().and_then(present)
    }
}

impl Env for std::collections::HashMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).and_then(|v| present(v))
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
            .and_then(|v| present(v))
            .or_else(|| self.base.var(name))
    }
}

/// Splits a comma-separated list, dropping blanks.
fn list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

/// Builds the provider called `name` (a kind or an alias) from `env`, with
/// the variables the vendor table names. `legacy_key` is the original
/// project's `API_KEY`, used when `WORKER_TYPE` names this provider and its
/// own variable is unset. `client` is the worker's shared [`VendorClient`].
pub fn build(
    name: &str,
    env: &dyn Env,
    legacy_key: Option<&str>,
    echo_delay: std::time::Duration,
    client: &VendorClient,
) -> Result<Arc<dyn Provider>, BuildError> {
    let v = vendor::find(name).ok_or_else(|| BuildError::Unknown {
        name: name.to_owned(),
    })?;
    let models = v
        .models_var
        .and_then(|var| env.var(var))
        .map(|m| list(&m))
        .unwrap_or_default();
    // `<PREFIX>_EMBEDDING_MODELS`: a list, or `none`; unset: the vendor's.
    let embedding_models = env
        .var(&format!("{}_EMBEDDING_MODELS", v.env_prefix))
        .map_or_else(
            || v.embedding_models.iter().map(|m| (*m).to_owned()).collect(),
            |m| {
                if m.trim().eq_ignore_ascii_case("none") {
                    Vec::new()
                } else {
                    list(&m)
                }
            },
        );
    let key = || -> Result<Secret, BuildError> {
        let var = v.key_var.unwrap_or_default();
        env.var(var)
            .or_else(|| legacy_key.and_then(present))
            .map(Secret::new)
            .ok_or_else(|| BuildError::MissingKey {
                provider: name.to_owned(),
                var,
            })
    };
    let url = || -> Result<String, BuildError> {
        let var = v.url_var.unwrap_or_default();
        let u = env.var(var).unwrap_or_else(|| v.base_url.to_owned());
        if u.starts_with("https://") || u.starts_with("http://") {
            Ok(u)
        } else {
            Err(BuildError::BadUrl { var })
        }
    };
    Ok(match v.dialect {
        Dialect::Echo => Arc::new(echo::Echo {
            delay: echo_delay,
            // `ECHO_WORD_DELAY_MS` (or `--echo-word-delay-ms`): stream a word
            // at a time; an unreadable value streams at once.
            word_delay: std::time::Duration::from_millis(
                env.var("ECHO_WORD_DELAY_MS")
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0),
            ),
            embedding_models,
        }),
        Dialect::Ollama => {
            // OLLAMA_HOST takes Ollama's own forms (`host:port` too), so it
            // is normalised by the dialect rather than checked here.
            let url = v
                .url_var
                .into_iter()
                .chain(v.legacy_url_var)
                .find_map(|var| env.var(var))
                .unwrap_or_else(|| v.base_url.to_owned());
            Arc::new(
                ollama::Ollama::new(&url, models, client.clone())
                    .with_embedding_models(embedding_models),
            )
        }
        Dialect::Anthropic => Arc::new(anthropic::Anthropic::new(
            &url()?,
            key()?,
            models,
            client.clone(),
        )),
        Dialect::Gemini => Arc::new(
            gemini::Gemini::new(&url()?, key()?, models, client.clone())
                .with_embedding_models(embedding_models),
        ),
        Dialect::OpenAi => {
            let key = key()?;
            let p = openai::OpenAiCompat::new(v, &url()?, Some(key), client.clone())
                .with_embedding_models(embedding_models);
            Arc::new(if models.is_empty() {
                p
            } else {
                p.with_models(models)
            })
        }
    })
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

    /// The message of a build that must fail.
    fn build_error(name: &str, vars: &[(&str, &str)]) -> String {
        let c = testkit::client();
        match build(name, &env(vars), None, std::time::Duration::ZERO, &c) {
            Ok(p) => panic!("{name} built as {}", p.kind()),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn builds_presets_from_the_environment() {
        let d = std::time::Duration::ZERO;
        let c = testkit::client();
        let p = build("groq", &env(&[("GROQ_API_KEY", "gsk_x")]), None, d, &c).expect("groq");
        assert_eq!(p.kind(), "groq");
        assert!(
            build("groq", &env(&[]), Some("legacy"), d, &c).is_ok(),
            "API_KEY with WORKER_TYPE=groq"
        );
        let e = build_error("groq", &[]);
        assert!(e.contains("GROQ_API_KEY"), "{e}");
        let e = build_error(
            "openai",
            &[("OPENAI_API_KEY", "k"), ("OPENAI_BASE_URL", "ftp://x")],
        );
        assert!(e.contains("OPENAI_BASE_URL"), "{e}");
        // A key put in the URL variable by mistake is not printed back.
        let e = build_error(
            "groq",
            &[("GROQ_API_KEY", "k"), ("GROQ_BASE_URL", "gsk_pasted_key")],
        );
        assert!(
            e.contains("GROQ_BASE_URL") && !e.contains("gsk_pasted_key"),
            "{e}"
        );
        let e = build_error("mistral", &[]);
        assert!(
            e.contains("not available") && e.contains("echo, ollama, anthropic"),
            "{e}"
        );
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
            let e = build_error(name, &[]);
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

    /// A key and URL with whitespace at either end (a pasted line break;
    /// Windows' `set GROQ_API_KEY=gsk_x & …` keeps the space) are sent
    /// trimmed; a blank key is a missing one.
    #[tokio::test]
    async fn keys_and_urls_are_used_without_surrounding_whitespace() {
        let (base, seen) = testkit::fake(|_| {
            testkit::json(
                200,
                &[],
                &serde_json::json!({
                    "id": "x", "model": "m",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}]
                }),
            )
        })
        .await;
        let c = testkit::client();
        let p = build(
            "groq",
            &env(&[
                ("GROQ_API_KEY", "gsk_spaced_key \r\n"),
                ("GROQ_BASE_URL", &format!(" {base}/v1 ")),
            ]),
            None,
            std::time::Duration::ZERO,
            &c,
        )
        .expect("groq");
        let request = crate::task::ChatRequest {
            messages: vec![crate::task::ChatMessage::new("user", "hi")],
            ..crate::task::ChatRequest::default()
        };
        p.chat(&request, ChunkSink::none()).await.expect("answer");
        let s = seen.lock().expect("lock")[0].clone();
        assert_eq!(s.header("authorization"), Some("Bearer gsk_spaced_key"));
        let e = build_error("groq", &[("GROQ_API_KEY", "  ")]);
        assert!(e.contains("GROQ_API_KEY"), "{e}");
    }

    #[test]
    fn secrets_do_not_print() {
        crate::ensure_crypto_provider();
        let s = Secret::new("gsk_very_secret_value");
        assert_eq!(format!("{s:?}"), "<redacted>");
        let p = openai::OpenAiCompat::new(&vendor::GROQ, "http://x", Some(s), testkit::client());
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
        let e = env_settings("gemini", &env(&[("GEMINI_TIER", "gratis")]))
            .expect_err("bad")
            .to_string();
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
