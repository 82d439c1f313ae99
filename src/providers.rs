//! LLM providers, executed on workers with the worker's own keys.
//!
//! [`Provider`] is the one interface: a chat request in, a [`TaskOutput`] out,
//! text deltas pushed to a [`ChunkSink`] as they arrive (streaming), and
//! failures classified by [`ProviderErrorKind`] so the scheduler can route
//! around rate limits. Vendors live one per file; this issue ships only
//! [`echo::Echo`], the deterministic provider for tests, benchmarks and smoke checks.

pub mod classify;
pub mod echo;
pub mod sse;

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

/// The providers configured on one worker.
#[derive(Clone, Default)]
pub struct ProviderSet {
    providers: Vec<Arc<dyn Provider>>,
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
        ProviderSet { providers }
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

    /// The provider for `req`: the first serving its model, else the first.
    pub fn pick(&self, req: &ChatRequest) -> Option<&Arc<dyn Provider>> {
        req.model
            .as_ref()
            .and_then(|m| self.providers.iter().find(|p| p.models().contains(m)))
            .or_else(|| self.providers.first())
    }
}
