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
pub mod sse;
#[cfg(test)]
pub(crate) mod testkit;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::mpsc;

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
            ProviderErrorKind::Auth | ProviderErrorKind::Transient => ErrorKind::Transient,
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

/// What the worker knows about one of its providers.
#[derive(Debug, Clone, Default)]
struct Health {
    /// Rate limited or out of quota until then.
    resting_until: Option<std::time::Instant>,
    /// The vendor rejected the key: not used again until the worker restarts.
    disabled: bool,
    /// Own limit: calls per minute (from the worker's file).
    per_minute: Option<u32>,
    /// Start times of the calls of the last minute, oldest first.
    recent: std::collections::VecDeque<std::time::Instant>,
}

impl Health {
    /// Takes a call slot under the provider's own per-minute limit, or rests
    /// the provider until the oldest call of the last minute ages out.
    fn admit(&mut self, now: std::time::Instant) -> bool {
        let Some(limit) = self.per_minute else {
            return true;
        };
        let minute = std::time::Duration::from_secs(60);
        while self
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) >= minute)
        {
            self.recent.pop_front();
        }
        if self.recent.len() >= limit as usize {
            self.resting_until = self.recent.front().map(|t| *t + minute);
            return false;
        }
        self.recent.push_back(now);
        true
    }
}

/// The providers configured on one worker, with their rest periods: a 429 on
/// one provider sends the task to the next one on the same worker first;
/// only when every provider able to serve the task is resting does the task
/// go back to the orchestrator (which then rests the whole worker).
#[derive(Clone, Default)]
pub struct ProviderSet {
    providers: Vec<Arc<dyn Provider>>,
    health: Arc<std::sync::Mutex<Vec<Health>>>,
}

impl std::fmt::Debug for ProviderSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.providers.iter().map(|p| p.kind()))
            .finish()
    }
}

impl ProviderSet {
    /// A set of providers, first preferred.
    pub fn new(providers: Vec<Arc<dyn Provider>>) -> Self {
        let health = vec![Health::default(); providers.len()];
        ProviderSet {
            providers,
            health: Arc::new(std::sync::Mutex::new(health)),
        }
    }

    /// Sets each provider's own calls-per-minute limit (same order as `new`).
    pub fn with_limits(self, per_minute: &[Option<u32>]) -> Self {
        for (h, l) in self.health().iter_mut().zip(per_minute) {
            h.per_minute = *l;
        }
        self
    }

    /// Provider kinds.
    pub fn kinds(&self) -> Vec<String> {
        self.providers.iter().map(|p| p.kind().to_owned()).collect()
    }

    /// All models served.
    pub fn models(&self) -> Vec<String> {
        let mut m: Vec<String> = self.providers.iter().flat_map(|p| p.models()).collect();
        m.sort();
        m.dedup();
        m
    }

    /// Providers that cannot take work now, for heartbeats and the API.
    pub fn cooldowns(&self) -> Vec<crate::wire::ProviderCooldown> {
        let now = std::time::Instant::now();
        self.health()
            .iter()
            .zip(&self.providers)
            .filter_map(|(h, p)| {
                let remaining = h
                    .resting_until
                    .map(|t| t.saturating_duration_since(now))
                    .unwrap_or_default();
                (h.disabled || !remaining.is_zero()).then(|| crate::wire::ProviderCooldown {
                    provider: p.kind().to_owned(),
                    remaining_ms: if h.disabled {
                        0
                    } else {
                        u64::try_from(remaining.as_millis()).unwrap_or(u64::MAX)
                    },
                    disabled: h.disabled,
                })
            })
            .collect()
    }

    fn health(&self) -> std::sync::MutexGuard<'_, Vec<Health>> {
        self.health.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Indices of the providers that may serve `req`, preferred first: only
    /// those of the named provider kind, if any; among them those serving its
    /// model when any does, else all; disabled ones never.
    fn candidates(&self, req: &ChatRequest, provider: Option<&str>) -> Vec<usize> {
        let health = self.health();
        let usable: Vec<usize> = (0..self.providers.len())
            .filter(|i| !health[*i].disabled)
            .filter(|i| provider.is_none_or(|k| self.providers[*i].kind() == k))
            .collect();
        let by_model: Vec<usize> = req
            .model
            .as_ref()
            .map(|m| {
                usable
                    .iter()
                    .copied()
                    .filter(|i| self.providers[*i].models().contains(m))
                    .collect()
            })
            .unwrap_or_default();
        if by_model.is_empty() {
            usable
        } else {
            by_model
        }
    }

    /// Runs `req` on the best provider that is not resting, moving on to the
    /// next after a rate limit, quota exhaustion or rejected key. Other
    /// failures are returned at once (the orchestrator retries elsewhere).
    pub async fn run(
        &self,
        req: &ChatRequest,
        provider: Option<&str>,
        sink: ChunkSink,
        mut report: impl FnMut(&str, &ProviderError),
    ) -> Result<TaskOutput, ProviderError> {
        // "auto" asks for each provider's own default model.
        let auto;
        let req = if req
            .model
            .as_deref()
            .is_some_and(|m| m.trim().is_empty() || m == "auto")
        {
            auto = ChatRequest {
                model: None,
                ..req.clone()
            };
            &auto
        } else {
            req
        };
        let mut last: Option<ProviderError> = None;
        for i in self.candidates(req, provider) {
            let now = std::time::Instant::now();
            {
                let mut health = self.health();
                if health[i].resting_until.is_some_and(|t| t > now) || !health[i].admit(now) {
                    continue;
                }
            }
            let p = &self.providers[i];
            match p.chat(req, sink.clone()).await {
                Ok(out) => return Ok(out),
                Err(e) => {
                    report(p.kind(), &e);
                    match e.kind {
                        ProviderErrorKind::RateLimited { retry_after_ms }
                        | ProviderErrorKind::QuotaExhausted { retry_after_ms } => {
                            self.health()[i].resting_until =
                                Some(now + std::time::Duration::from_millis(retry_after_ms));
                        }
                        ProviderErrorKind::Auth => self.health()[i].disabled = true,
                        ProviderErrorKind::Transient | ProviderErrorKind::Invalid => return Err(e),
                    }
                    last = Some(e);
                }
            }
        }
        // Every candidate is resting (or was just put to rest): hand the task
        // back with the shortest rest, so the orchestrator can rest this worker.
        let now = std::time::Instant::now();
        let soonest = self
            .candidates(req, provider)
            .into_iter()
            .filter_map(|i| self.health()[i].resting_until)
            .map(|t| t.saturating_duration_since(now))
            .min();
        Err(match soonest {
            Some(wait) => ProviderError {
                kind: ProviderErrorKind::RateLimited {
                    retry_after_ms: u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1),
                },
                message: last.map_or_else(
                    || "every provider on this worker is resting".to_owned(),
                    |e| e.message,
                ),
            },
            None => last.unwrap_or(ProviderError {
                kind: ProviderErrorKind::Transient,
                message: "no usable provider on this worker (keys rejected?)".to_owned(),
            }),
        })
    }
}

#[cfg(test)]
mod set_tests {
    use super::*;
    use crate::task::Usage;
    use std::sync::Mutex;

    /// A provider answering from a script.
    struct Scripted {
        kind: &'static str,
        answers: Mutex<Vec<Result<(), ProviderErrorKind>>>,
        calls: Mutex<u32>,
        last_model: Mutex<Option<String>>,
    }

    impl Scripted {
        fn new(kind: &'static str, answers: Vec<Result<(), ProviderErrorKind>>) -> Arc<Self> {
            Arc::new(Scripted {
                kind,
                answers: Mutex::new(answers),
                calls: Mutex::new(0),
                last_model: Mutex::new(None),
            })
        }
        fn calls(&self) -> u32 {
            *self.calls.lock().expect("lock")
        }
    }

    impl Provider for Scripted {
        fn kind(&self) -> &str {
            self.kind
        }
        fn models(&self) -> Vec<String> {
            vec![format!("{}-model", self.kind)]
        }
        fn chat<'a>(
            &'a self,
            req: &'a ChatRequest,
            _sink: ChunkSink,
        ) -> BoxFuture<'a, Result<TaskOutput, ProviderError>> {
            *self.calls.lock().expect("lock") += 1;
            *self.last_model.lock().expect("lock") = req.model.clone();
            let next = {
                let mut a = self.answers.lock().expect("lock");
                if a.is_empty() { Ok(()) } else { a.remove(0) }
            };
            let kind = self.kind.to_owned();
            Box::pin(async move {
                next.map(|()| TaskOutput {
                    content: kind.clone(),
                    provider: kind,
                    model: "m".into(),
                    usage: Usage::default(),
                })
                .map_err(|k| ProviderError {
                    kind: k,
                    message: "scripted".into(),
                })
            })
        }
    }

    fn req(model: Option<&str>) -> ChatRequest {
        ChatRequest {
            model: model.map(str::to_owned),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn a_429_moves_to_the_next_provider_and_rests_the_first() {
        let groq = Scripted::new(
            "groq",
            vec![Err(ProviderErrorKind::RateLimited {
                retry_after_ms: 60_000,
            })],
        );
        let gemini = Scripted::new("gemini", vec![]);
        let set = ProviderSet::new(vec![groq.clone(), gemini.clone()]);
        let mut seen = Vec::new();
        let out = set
            .run(&req(None), None, ChunkSink::none(), |k, _| {
                seen.push(k.to_owned())
            })
            .await
            .expect("ok");
        assert_eq!(out.provider, "gemini");
        assert_eq!(seen, ["groq"]);
        // groq rests: the next task goes straight to gemini.
        let out = set
            .run(&req(None), None, ChunkSink::none(), |_, _| {})
            .await
            .expect("ok");
        assert_eq!(
            (out.provider.as_str(), groq.calls(), gemini.calls()),
            ("gemini", 1, 2)
        );
        let c = set.cooldowns();
        assert_eq!(
            (c.len(), c[0].provider.as_str(), c[0].disabled),
            (1, "groq", false)
        );
        assert!((59_000..=60_000).contains(&c[0].remaining_ms), "{c:?}");
    }

    #[tokio::test]
    async fn all_resting_hands_the_task_back_with_the_shortest_rest() {
        let a = Scripted::new(
            "a",
            vec![Err(ProviderErrorKind::RateLimited {
                retry_after_ms: 50_000,
            })],
        );
        let b = Scripted::new(
            "b",
            vec![Err(ProviderErrorKind::QuotaExhausted {
                retry_after_ms: 3_600_000,
            })],
        );
        let set = ProviderSet::new(vec![a, b]);
        let e = set
            .run(&req(None), None, ChunkSink::none(), |_, _| {})
            .await
            .expect_err("resting");
        match e.kind {
            ProviderErrorKind::RateLimited { retry_after_ms } => assert!(
                (49_000..=50_000).contains(&retry_after_ms),
                "{retry_after_ms}"
            ),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn rejected_keys_disable_and_other_failures_return_at_once() {
        let bad = Scripted::new("bad", vec![Err(ProviderErrorKind::Auth)]);
        let flaky = Scripted::new("flaky", vec![Err(ProviderErrorKind::Transient)]);
        let set = ProviderSet::new(vec![bad.clone(), flaky.clone()]);
        let e = set
            .run(&req(None), None, ChunkSink::none(), |_, _| {})
            .await
            .expect_err("transient");
        assert_eq!(e.kind, ProviderErrorKind::Transient);
        let out = set
            .run(&req(None), None, ChunkSink::none(), |_, _| {})
            .await
            .expect("ok");
        assert_eq!(out.provider, "flaky");
        assert_eq!(bad.calls(), 1, "a disabled provider is not called again");
        assert!(set.cooldowns()[0].disabled);
        let only_bad =
            ProviderSet::new(vec![Scripted::new("x", vec![Err(ProviderErrorKind::Auth)])]);
        let e = only_bad
            .run(&req(None), None, ChunkSink::none(), |_, _| {})
            .await
            .expect_err("auth");
        assert_eq!(e.kind, ProviderErrorKind::Auth);
        let e = only_bad
            .run(&req(None), None, ChunkSink::none(), |_, _| {})
            .await
            .expect_err("none left");
        assert!(e.message.contains("no usable provider"), "{}", e.message);
    }

    #[tokio::test]
    async fn own_per_minute_limits_are_kept_without_asking_the_vendor() {
        let a = Scripted::new("a", vec![]);
        let b = Scripted::new("b", vec![]);
        let set = ProviderSet::new(vec![a.clone(), b.clone()]).with_limits(&[Some(2), None]);
        let mut used = Vec::new();
        for _ in 0..3 {
            let out = set
                .run(&req(None), None, ChunkSink::none(), |_, _| {})
                .await
                .expect("ok");
            used.push(out.provider);
        }
        assert_eq!(used, ["a", "a", "b"]);
        assert_eq!(a.calls(), 2, "the third call never reached a");
        let c = set.cooldowns();
        assert_eq!(c[0].provider, "a");
        assert!((59_000..=60_000).contains(&c[0].remaining_ms), "{c:?}");
        // Alone, a limited provider hands the task back with the wait.
        let solo = ProviderSet::new(vec![Scripted::new("s", vec![])]).with_limits(&[Some(1)]);
        solo.run(&req(None), None, ChunkSink::none(), |_, _| {})
            .await
            .expect("first");
        let e = solo
            .run(&req(None), None, ChunkSink::none(), |_, _| {})
            .await
            .expect_err("limited");
        assert!(
            matches!(e.kind, ProviderErrorKind::RateLimited { retry_after_ms } if retry_after_ms > 59_000),
            "{e:?}"
        );
    }

    #[tokio::test]
    async fn a_named_model_prefers_its_provider() {
        let a = Scripted::new("a", vec![]);
        let b = Scripted::new("b", vec![]);
        let set = ProviderSet::new(vec![a.clone(), b]);
        let out = set
            .run(&req(Some("b-model")), None, ChunkSink::none(), |_, _| {})
            .await
            .expect("ok");
        assert_eq!(out.provider, "b");
        let out = set
            .run(&req(Some("unknown")), None, ChunkSink::none(), |_, _| {})
            .await
            .expect("ok");
        assert_eq!(out.provider, "a");
        let out = set
            .run(&req(None), Some("b"), ChunkSink::none(), |_, _| {})
            .await
            .expect("ok");
        assert_eq!(out.provider, "b", "a named provider kind wins");
        // "auto" reaches the provider as no model at all.
        let out = set
            .run(&req(Some("auto")), None, ChunkSink::none(), |_, _| {})
            .await
            .expect("ok");
        assert_eq!(out.provider, "a");
        assert_eq!(*a.last_model.lock().expect("lock"), None);
    }
}

/// The HTTP client every vendor provider shares: rustls, connection reuse,
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
/// and its own variable is unset.
pub fn build(
    name: &str,
    env: &dyn Env,
    legacy_key: Option<&str>,
    echo_delay: std::time::Duration,
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
        return Ok(Arc::new(ollama::Ollama::new(&url, models, http_client()?)));
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
            http_client()?,
        )));
    }
    if name == "gemini" {
        return Ok(Arc::new(gemini::Gemini::new(
            &url("GEMINI_BASE_URL", gemini::BASE_URL)?,
            key_for("GEMINI_API_KEY")?,
            models("GEMINI_MODELS"),
            http_client()?,
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
    let mut p = openai::OpenAiCompat::new(*preset, &base, Some(key), http_client()?);
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
        let p = build("groq", &env(&[("GROQ_API_KEY", "gsk_x")]), None, d).expect("groq");
        assert_eq!(p.kind(), "groq");
        assert!(
            build("groq", &env(&[]), Some("legacy"), d).is_ok(),
            "API_KEY with WORKER_TYPE=groq"
        );
        let e = build("groq", &env(&[]), None, d).err().expect("no key");
        assert!(e.contains("GROQ_API_KEY"), "{e}");
        let e = build(
            "openai",
            &env(&[("OPENAI_API_KEY", "k"), ("OPENAI_BASE_URL", "ftp://x")]),
            None,
            d,
        )
        .err()
        .expect("bad url");
        assert!(e.contains("OPENAI_BASE_URL"), "{e}");
        let e = build("mistral", &env(&[]), None, d).err().expect("n/a");
        assert!(e.contains("not available"), "{e}");
        assert_eq!(
            build("echo", &env(&[]), None, d).expect("echo").kind(),
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
            let p = build(name, &env(&[(var, "key-1234567890")]), None, d).expect(name);
            assert_eq!(p.kind(), kind);
            let e = build(name, &env(&[]), None, d).err().expect("no key");
            assert!(e.contains(var), "{e}");
        }
        let g = build(
            "groq",
            &env(&[("GROQ_API_KEY", "k"), ("GROQ_MODELS", "m1,m2")]),
            None,
            d,
        )
        .expect("groq");
        assert_eq!(g.models(), ["m1", "m2"]);
    }

    #[test]
    fn secrets_do_not_print() {
        let s = Secret::new("gsk_very_secret_value");
        assert_eq!(format!("{s:?}"), "<redacted>");
        let p =
            openai::OpenAiCompat::new(openai::GROQ, "http://x", Some(s), reqwest::Client::new());
        assert!(!format!("{p:?}").contains("very_secret"));
    }
}
