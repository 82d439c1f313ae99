//! `d8 join --check-keys`: one tiny call per configured provider, through
//! the same provider code a worker uses, to tell whether each key works
//! before lending the machine: `ok`, `rate_limited` (the key works but
//! rests now), `rejected` (the vendor refused the key), `unreachable`, or
//! `error`. The desktop app runs it with the keys in the environment (never
//! on the command line) and reads the JSON form.
//!
//! The call asks for one token of the provider's default model: it costs a
//! fraction of a cent on a billed key and nothing on the others.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::{ChunkSink, Provider, ProviderErrorKind, ProviderSet};
use crate::task::{ChatMessage, ChatRequest};

/// How long one check may take.
pub const TIMEOUT: Duration = Duration::from_secs(20);

/// One provider's verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyCheck {
    /// Provider kind.
    pub provider: String,
    /// The model asked.
    pub model: Option<String>,
    /// `ok`, `rate_limited`, `rejected`, `unreachable` or `error`.
    pub result: &'static str,
    /// With `rate_limited`: when the key may be used again, if the vendor said.
    pub retry_after_ms: Option<u64>,
    /// What the vendor or the connection said (never the key).
    pub message: String,
    /// How long the call took.
    pub ms: u64,
}

impl KeyCheck {
    /// Whether the key can be used (now or after its rest).
    pub fn usable(&self) -> bool {
        matches!(self.result, "ok" | "rate_limited")
    }
}

/// Checks one provider.
pub async fn check(p: &dyn Provider) -> KeyCheck {
    let model = p.models().first().cloned();
    let req = ChatRequest {
        messages: vec![ChatMessage::new("user", "Reply with OK.")],
        model: model.clone(),
        max_tokens: Some(1),
        ..ChatRequest::default()
    };
    let started = Instant::now();
    let answer = tokio::time::timeout(TIMEOUT, p.chat(&req, ChunkSink::none())).await;
    let ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let (result, retry_after_ms, message) = match answer {
        Err(_) => (
            "unreachable",
            None,
            format!("no answer within {} s", TIMEOUT.as_secs()),
        ),
        Ok(Ok(_)) => ("ok", None, "the key works".to_owned()),
        Ok(Err(e)) => match e.kind {
            ProviderErrorKind::Auth => ("rejected", None, e.message),
            ProviderErrorKind::RateLimited { retry_after_ms }
            | ProviderErrorKind::QuotaExhausted { retry_after_ms } => {
                ("rate_limited", Some(retry_after_ms), e.message)
            }
            ProviderErrorKind::Transient | ProviderErrorKind::Unavailable => {
                ("unreachable", None, e.message)
            }
            ProviderErrorKind::Invalid => ("error", None, e.message),
        },
    };
    KeyCheck {
        provider: p.kind().to_owned(),
        model,
        result,
        retry_after_ms,
        message,
        ms,
    }
}

/// Checks every provider of `set`, one after another (a handful at most).
pub async fn check_all(set: &ProviderSet) -> Vec<KeyCheck> {
    let mut out = Vec::new();
    for p in set.providers() {
        out.push(check(p.as_ref()).await);
    }
    out
}

/// One line for a person: `groq  ok  llama-3.1-8b-instant  312 ms  the key works`.
pub fn line(c: &KeyCheck) -> String {
    let mut s = format!(
        "{:<12} {:<13} {:<28} {:>6} ms  {}",
        c.provider,
        c.result,
        c.model.as_deref().unwrap_or("-"),
        c.ms,
        c.message
    );
    if let Some(ms) = c.retry_after_ms {
        s.push_str(&format!(" (usable again in {} s)", ms.div_ceil(1000)));
    }
    s
}
