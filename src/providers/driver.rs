//! The HTTP side every dialect shares, so that a dialect file says only what
//! its vendor's JSON means.
//!
//! - [`send`] makes the call: a transport failure is transient and names
//!   host and port only; an answer other than 2xx goes to
//!   [`classify`](super::classify::classify).
//! - [`read_stream`] drives a streamed answer to its end: it reads the body
//!   chunk by chunk, splits it into records (SSE events or NDJSON lines),
//!   hands each record to the dialect, and forwards every new piece of text to
//!   the [`ChunkSink`] as soon as the dialect has read it.
//!
//! - [`HttpProvider`]: what a dialect implements; [`Provider`] follows.
//!
//! A stream ends at the dialect's end marker ([`Flow::End`]) or at the end of
//! the body, whichever comes first.

use std::fmt::Display;
use std::time::SystemTime;

use serde_json::Value;

use super::classify::{classify, redact};
use super::stream_parser::{NdjsonParser, SseParser};
use super::{BoxFuture, ChunkSink, Provider, ProviderError, ProviderErrorKind};
use crate::task::{ChatRequest, TaskOutput, Usage};

/// A provider that calls a vendor over HTTP: one dialect. Implementing this
/// is implementing [`Provider`].
pub trait HttpProvider: Send + Sync + 'static {
    /// Provider kind (`groq`, `anthropic`, …).
    fn kind(&self) -> &str;
    /// Models it serves, the default first.
    fn models(&self) -> &[String];
    /// Runs one chat: builds the vendor's request, [`send`]s it and reads
    /// the answer (with [`read_stream`] when `req.stream`).
    fn call(
        &self,
        req: &ChatRequest,
        sink: ChunkSink,
    ) -> impl Future<Output = Result<TaskOutput, ProviderError>> + Send;
}

impl<P: HttpProvider> Provider for P {
    fn kind(&self) -> &str {
        HttpProvider::kind(self)
    }

    fn models(&self) -> Vec<String> {
        HttpProvider::models(self).to_vec()
    }

    fn chat<'a>(
        &'a self,
        req: &'a ChatRequest,
        sink: ChunkSink,
    ) -> BoxFuture<'a, Result<TaskOutput, ProviderError>> {
        Box::pin(self.call(req, sink))
    }
}

/// Sends a vendor request. `hint` is appended to a transport error (e.g. how
/// to start a local server); `key` is redacted from every message.
pub async fn send(
    vendor: &str,
    key: Option<&str>,
    request: reqwest::RequestBuilder,
    hint: &str,
) -> Result<reqwest::Response, ProviderError> {
    let resp = request.send().await.map_err(|e| {
        // Name only host and port: a base URL may carry credentials
        // (`https://user:pass@gateway/…`) and a query may carry a key.
        let target = e
            .url()
            .and_then(|u| Some(format!("{}:{}", u.host_str()?, u.port_or_known_default()?)))
            .unwrap_or_else(|| "the vendor".to_owned());
        ProviderError {
            kind: ProviderErrorKind::Transient,
            message: redact(
                &format!("{vendor}: cannot reach {target}{hint}: {}", e.without_url()),
                key,
            ),
        }
    })?;
    if resp.status().is_success() {
        return Ok(resp);
    }
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap_or_default();
    Err(classify(
        vendor,
        status,
        &headers,
        &text,
        key,
        SystemTime::now(),
    ))
}

/// An error from `vendor`, its message prefixed with the vendor's name and
/// `key` redacted from it.
pub fn vendor_error(
    vendor: &str,
    key: Option<&str>,
    kind: ProviderErrorKind,
    what: &dyn Display,
) -> ProviderError {
    ProviderError {
        kind,
        message: redact(&format!("{vendor}: {what}"), key),
    }
}

/// A transient "unexpected answer" error: what a body that is not the
/// documented shape, or that breaks off, is.
pub fn unexpected(vendor: &str, key: Option<&str>, what: &dyn Display) -> ProviderError {
    vendor_error(
        vendor,
        key,
        ProviderErrorKind::Transient,
        &format_args!("unexpected answer: {what}"),
    )
}

/// A token count in a vendor's JSON; 0 when absent or out of range.
pub fn count(v: &Value) -> u32 {
    v.as_u64().and_then(|n| u32::try_from(n).ok()).unwrap_or(0)
}

/// How a vendor frames a streamed answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Server-Sent Events; a record is one event's `data`.
    Sse,
    /// Newline-delimited JSON; a record is one non-empty line.
    Ndjson,
}

/// Whether a stream goes on after a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Read on.
    More,
    /// The vendor's end marker: stop reading.
    End,
}

/// An answer as it is read: the text so far, and the model and usage the
/// vendor reported (the model asked for until the vendor names one).
#[derive(Debug)]
pub struct Answer {
    /// The model that answered.
    pub model: String,
    /// Token counts.
    pub usage: Usage,
    content: String,
    /// Text read but not yet forwarded to the sink.
    fresh: Vec<String>,
}

impl Answer {
    /// An empty answer from `model`.
    pub fn new(model: String) -> Self {
        Answer {
            model,
            usage: Usage::default(),
            content: String::new(),
            fresh: Vec::new(),
        }
    }

    /// Appends a piece of text; an empty piece is nothing.
    pub fn text(&mut self, piece: &str) {
        if !piece.is_empty() {
            self.content.push_str(piece);
            self.fresh.push(piece.to_owned());
        }
    }

    /// Takes the model from `v` when it is a string.
    pub fn model_from(&mut self, v: &Value) {
        if let Some(m) = v.as_str() {
            m.clone_into(&mut self.model);
        }
    }

    /// The finished output, labelled with `provider`.
    pub fn into_output(self, provider: &str) -> TaskOutput {
        TaskOutput {
            content: self.content,
            provider: provider.to_owned(),
            model: self.model,
            usage: self.usage,
        }
    }
}

/// Splits a body into records.
enum Records {
    Sse(SseParser),
    Ndjson(NdjsonParser),
}

impl Records {
    fn feed(&mut self, bytes: &[u8]) -> Result<Vec<String>, super::stream_parser::LineTooLong> {
        Ok(match self {
            Records::Sse(p) => p.feed(bytes)?.into_iter().map(|e| e.data).collect(),
            Records::Ndjson(p) => p.feed(bytes)?,
        })
    }

    fn finish(&mut self) -> Vec<String> {
        match self {
            Records::Sse(p) => p.finish().into_iter().map(|e| e.data).collect(),
            Records::Ndjson(p) => p.finish().into_iter().collect(),
        }
    }
}

/// Reads a streamed answer to its end. `record` reads one record into the
/// answer; `bad` makes the error for a body that breaks off or cannot be
/// split. Text goes to `sink` record by record, before the next one is read,
/// so a slow consumer slows the read (back-pressure).
pub async fn read_stream(
    mut resp: reqwest::Response,
    framing: Framing,
    mut answer: Answer,
    sink: &ChunkSink,
    bad: impl Fn(&dyn Display) -> ProviderError,
    mut record: impl FnMut(&str, &mut Answer) -> Result<Flow, ProviderError>,
) -> Result<Answer, ProviderError> {
    let mut records = match framing {
        Framing::Sse => Records::Sse(SseParser::default()),
        Framing::Ndjson => Records::Ndjson(NdjsonParser::default()),
    };
    loop {
        // `without_url`: the URL may hold credentials, and the vendor's
        // name is already in the message.
        let (batch, body_ended) = match resp.chunk().await.map_err(|e| bad(&e.without_url()))? {
            Some(bytes) => (records.feed(&bytes).map_err(|e| bad(&e))?, false),
            None => (records.finish(), true),
        };
        for r in batch {
            let flow = record(&r, &mut answer)?;
            for piece in answer.fresh.drain(..) {
                sink.push(piece).await;
            }
            if flow == Flow::End {
                return Ok(answer);
            }
        }
        if body_ended {
            return Ok(answer);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::body::Body;
    use axum::response::Response;

    use super::super::testkit;
    use super::*;

    /// A fake vendor answering every request with `body` as a stream, and the
    /// response to it.
    async fn streamed(body: &'static str) -> reqwest::Response {
        crate::ensure_crypto_provider();
        let (base, _) = testkit::fake(move |_| {
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(Body::from(body))
                .expect("response")
        })
        .await;
        reqwest::get(format!("{base}/x")).await.expect("get")
    }

    fn bad(e: &dyn Display) -> ProviderError {
        unexpected("v", None, e)
    }

    /// Reads `body` as SSE whose records are plain text pieces, `END` ending
    /// it and `BROKEN` failing it; returns the result and what the sink got.
    fn read(body: &'static str) -> (Result<Answer, ProviderError>, Vec<String>) {
        testkit::finishes_within(Duration::from_secs(10), move || async move {
            let (tx, mut rx) = tokio::sync::mpsc::channel(64);
            let sink = ChunkSink::new(tx);
            let out = read_stream(
                streamed(body).await,
                Framing::Sse,
                Answer::new("asked".into()),
                &sink,
                bad,
                |r, a| {
                    if r == "END" {
                        return Ok(Flow::End);
                    }
                    if r == "BROKEN" {
                        return Err(bad(&"broken record"));
                    }
                    a.text(r);
                    Ok(Flow::More)
                },
            )
            .await;
            drop(sink);
            let mut pieces = Vec::new();
            while let Some(p) = rx.recv().await {
                pieces.push(p);
            }
            (out, pieces)
        })
    }

    #[test]
    fn text_reaches_the_sink_in_order_and_the_end_marker_stops_reading() {
        let (out, pieces) = read("data: a\n\ndata: \n\ndata: b\n\ndata: END\n\ndata: late\n\n");
        let out = out.expect("ok").into_output("v");
        assert_eq!((out.content.as_str(), out.model.as_str()), ("ab", "asked"));
        assert_eq!(pieces, ["a", "b"], "empty pieces are not sent");
    }

    #[test]
    fn a_body_that_ends_without_the_marker_ends_the_stream() {
        // Before the shared driver, the OpenAI dialect spun forever here:
        // it stopped only after `[DONE]`.
        let (out, pieces) = read("data: a\n\ndata: b");
        assert_eq!(out.expect("ok").into_output("v").content, "ab");
        assert_eq!(pieces, ["a", "b"]);
    }

    #[test]
    fn a_dialect_error_stops_the_stream_with_that_error() {
        let (out, pieces) = read("data: a\n\ndata: BROKEN\n\ndata: b\n\n");
        assert_eq!(
            out.expect_err("error").message,
            "v: unexpected answer: broken record"
        );
        assert_eq!(pieces, ["a"], "text before the error was already forwarded");
    }

    #[tokio::test]
    async fn ndjson_records_are_lines() {
        let resp = streamed("{\"t\":\"x\"}\n\n{\"t\":\"y\"}").await;
        let out = read_stream(
            resp,
            Framing::Ndjson,
            Answer::new("m".into()),
            &ChunkSink::none(),
            bad,
            |r, a| {
                let v: Value = serde_json::from_str(r).map_err(|e| bad(&e))?;
                a.text(v["t"].as_str().unwrap_or_default());
                Ok(Flow::More)
            },
        )
        .await
        .expect("ok");
        assert_eq!(out.into_output("v").content, "xy");
    }

    #[test]
    fn counts_out_of_range_are_zero() {
        assert_eq!(count(&serde_json::json!(7)), 7);
        assert_eq!(count(&serde_json::json!(u64::MAX)), 0);
        assert_eq!(count(&serde_json::json!("7")), 0);
        assert_eq!(count(&Value::Null), 0);
    }
}
