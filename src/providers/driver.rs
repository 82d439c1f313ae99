//! The HTTP side every dialect shares, so that a dialect file says only what
//! its vendor's JSON means.
//!
//! - [`VendorClient`]: the connection pool a worker's providers share, and
//!   the [`ReadLimits`] on what they read back.
//! - [`Call`]: one call to one vendor. [`Call::send`] makes it (a transport
//!   failure is transient and names host and port only; an answer other
//!   than 2xx goes to [`classify`]); [`Call::json`] reads a whole answer;
//!   [`Call::stream`] drives a streamed one to its end: it reads the body
//!   chunk by chunk, splits it into records (SSE events or NDJSON lines),
//!   hands each record to the dialect, and forwards every new piece of text
//!   to the [`ChunkSink`] as soon as the dialect has read it.
//! - [`HttpProvider`]: what a dialect implements; [`Provider`] follows.
//!
//! A stream ends at the dialect's end marker ([`Flow::End`]) or at the end of
//! the body, whichever comes first. Every read is bounded: a body past
//! [`ReadLimits::body_bytes`] or an answer past [`ReadLimits::output_bytes`]
//! cuts the call and fails the task with a message that says which limit
//! (the vendor may be broken or hostile; an endless answer must not take the
//! worker's memory). A failed answer is read up to [`ERROR_BODY_BYTES`], and
//! no message carries more than an [`excerpt`] of what a vendor said.

use std::fmt::Display;
use std::time::{Duration, SystemTime};

use serde_json::Value;

use super::classify::{classify, excerpt};
use super::stream_parser::{NdjsonParser, SseParser};
use super::{BoxFuture, BuildError, ChunkSink, Provider, ProviderError, ProviderErrorKind};
use crate::task::{ChatRequest, FinishReason, TaskOutput, ToolCall, Usage};

/// Bytes of a failed answer read to classify it; the rest is not read.
pub const ERROR_BODY_BYTES: usize = 64 * 1024;
/// Longest model name taken from a vendor's answer.
const MAX_MODEL_NAME: usize = 256;
/// Most tool calls kept from one answer (far above what a model makes in a
/// turn; a stream naming call index 4,000,000,000 must not allocate for it).
pub const MAX_TOOL_CALLS: usize = 128;

/// Bounds on what a worker reads from vendors, per call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadLimits {
    /// Largest body read: a whole answer, or all of a stream (SSE framing
    /// costs 100-200 bytes per streamed token).
    pub body_bytes: usize,
    /// Largest answer text kept for one task.
    pub output_bytes: usize,
}

impl ReadLimits {
    /// The defaults: far above real answers (a 32k-token answer is about
    /// 130 KB of text and 6 MB of SSE), far below a worker's memory, and
    /// the output well inside one wire frame.
    pub const DEFAULT: ReadLimits = ReadLimits {
        body_bytes: 64 * 1024 * 1024,
        output_bytes: 4 * 1024 * 1024,
    };
}

/// The HTTP client for vendor providers; a worker builds one and hands it to
/// every [`build`](super::build), so all its providers share one connection
/// pool and TLS session cache, and one set of [`ReadLimits`].
#[derive(Debug, Clone)]
pub struct VendorClient {
    client: reqwest::Client,
    limits: ReadLimits,
}

impl VendorClient {
    /// rustls, connection reuse, bounded connect and read stalls (a whole
    /// attempt is bounded by the orchestrator's attempt timeout).
    pub fn new(limits: ReadLimits) -> Result<VendorClient, BuildError> {
        crate::ensure_crypto_provider();
        let client = reqwest::Client::builder()
            .user_agent(concat!("d8/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(120))
            .pool_idle_timeout(Duration::from_secs(90))
            .build()
            .map_err(BuildError::HttpClient)?;
        Ok(VendorClient { client, limits })
    }

    /// A `POST` to `url`.
    pub fn post(&self, url: impl reqwest::IntoUrl) -> reqwest::RequestBuilder {
        self.client.post(url)
    }

    /// One call to `vendor`, whose `key` is redacted from every message.
    pub fn call<'a>(&self, vendor: &'a str, key: Option<&'a str>) -> Call<'a> {
        Call {
            vendor,
            key,
            limits: self.limits,
        }
    }
}

/// A provider that calls a vendor over HTTP: one dialect. Implementing this
/// is implementing [`Provider`].
pub trait HttpProvider: Send + Sync + 'static {
    /// Provider kind (`groq`, `anthropic`, …).
    fn kind(&self) -> &str;
    /// Models it serves, the default first.
    fn models(&self) -> &[String];
    /// Runs one chat: builds the vendor's request, sends it with
    /// [`Call::send`] and reads the answer ([`Call::stream`] when
    /// `req.stream`).
    fn call(
        &self,
        req: &ChatRequest,
        sink: ChunkSink,
    ) -> impl Future<Output = Result<TaskOutput, ProviderError>> + Send;
    /// Models it embeds with (none unless the dialect has embeddings).
    fn embedding_models(&self) -> &[String] {
        &[]
    }
    /// Computes embeddings (`req.embed`, `req.model`).
    fn call_embed(
        &self,
        req: &ChatRequest,
    ) -> impl Future<Output = Result<TaskOutput, ProviderError>> + Send {
        let message = format!(
            "{}: this provider does not compute embeddings",
            HttpProvider::kind(self)
        );
        let _ = req;
        async move {
            Err(ProviderError {
                kind: ProviderErrorKind::Invalid,
                message,
            })
        }
    }
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

    fn embedding_models(&self) -> Vec<String> {
        HttpProvider::embedding_models(self).to_vec()
    }

    fn embed<'a>(
        &'a self,
        req: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<TaskOutput, ProviderError>> {
        Box::pin(self.call_embed(req))
    }
}

/// One call to one vendor: its name and key for messages, and the limits.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    vendor: &'a str,
    key: Option<&'a str>,
    limits: ReadLimits,
}

impl<'a> Call<'a> {
    /// An error from this vendor: prefixed with its name, cut to an
    /// [`excerpt`], the key redacted.
    pub fn error(&self, kind: ProviderErrorKind, what: &dyn Display) -> ProviderError {
        ProviderError {
            kind,
            message: format!("{}: {}", self.vendor, excerpt(&what.to_string(), self.key)),
        }
    }

    /// A transient "unexpected answer" error: what a body that is not the
    /// documented shape, or that breaks off, is.
    pub fn unexpected(&self, what: &dyn Display) -> ProviderError {
        self.error(
            ProviderErrorKind::Transient,
            &format_args!("unexpected answer: {what}"),
        )
    }

    /// The task fails: the answer broke a limit of this worker. Permanent:
    /// another attempt would cost the same tokens for the same result.
    fn over_limit(&self, what: &str, limit: usize, flag: &str) -> ProviderError {
        self.error(
            ProviderErrorKind::Invalid,
            &format_args!(
                "the {what} exceeds this worker's limit of {limit} bytes ({flag}); the call was cut"
            ),
        )
    }

    /// Sends a request. `hint` is appended to a transport error (e.g. how
    /// to start a local server).
    pub async fn send(
        &self,
        request: reqwest::RequestBuilder,
        hint: &str,
    ) -> Result<reqwest::Response, ProviderError> {
        let mut resp = request.send().await.map_err(|e| {
            // Name only host and port: a base URL may carry credentials
            // (`https://user:pass@gateway/…`) and a query may carry a key.
            let target = e
                .url()
                .and_then(|u| Some(format!("{}:{}", u.host_str()?, u.port_or_known_default()?)))
                .unwrap_or_else(|| "the vendor".to_owned());
            self.error(
                ProviderErrorKind::Transient,
                &format_args!("cannot reach {target}{hint}: {}", e.without_url()),
            )
        })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        // Only the head of a failed answer: enough for any vendor's error
        // object, and a 1 GiB error page costs 64 KiB.
        let mut body = Vec::new();
        while body.len() < ERROR_BODY_BYTES {
            match resp.chunk().await {
                Ok(Some(bytes)) => body.extend_from_slice(&bytes),
                Ok(None) | Err(_) => break,
            }
        }
        body.truncate(ERROR_BODY_BYTES);
        let text = String::from_utf8_lossy(&body);
        Err(classify(
            self.vendor,
            status,
            &headers,
            &text,
            self.key,
            SystemTime::now(),
        ))
    }

    /// Reads a whole (not streamed) JSON answer, at most
    /// [`ReadLimits::body_bytes`] of it.
    pub async fn json(&self, mut resp: reqwest::Response) -> Result<Value, ProviderError> {
        let limit = self.limits.body_bytes;
        let too_big = || self.over_limit("answer body", limit, "--max-vendor-body-bytes");
        if resp.content_length().is_some_and(|n| n > limit as u64) {
            return Err(too_big());
        }
        let mut body = Vec::new();
        while let Some(bytes) = resp
            .chunk()
            .await
            .map_err(|e| self.unexpected(&e.without_url()))?
        {
            if body.len() + bytes.len() > limit {
                return Err(too_big());
            }
            body.extend_from_slice(&bytes);
        }
        serde_json::from_slice(&body).map_err(|e| self.unexpected(&e))
    }

    /// Embeddings read from a vendor's answer: one vector per input, in
    /// order, every one a list of finite numbers. Counted against the output
    /// limit (4 bytes a number) like text.
    pub fn embeddings(
        &self,
        model: String,
        vectors: &[Value],
        expected: usize,
        usage: Option<Usage>,
    ) -> Result<TaskOutput, ProviderError> {
        if vectors.len() != expected {
            return Err(self.unexpected(&format_args!(
                "{} embeddings for {expected} inputs",
                vectors.len()
            )));
        }
        let mut out = Vec::with_capacity(vectors.len());
        let mut size = 0usize;
        for v in vectors {
            let nums = v
                .as_array()
                .ok_or_else(|| self.unexpected(&"an embedding that is not a list"))?;
            size = size.saturating_add(nums.len() * 4);
            if size > self.limits.output_bytes {
                return Err(self.over_limit(
                    "answer",
                    self.limits.output_bytes,
                    "--max-output-bytes",
                ));
            }
            #[allow(clippy::cast_possible_truncation)]
            let vector: Option<Vec<f32>> = nums
                .iter()
                .map(|n| n.as_f64().map(|f| f as f32).filter(|f| f.is_finite()))
                .collect();
            out.push(vector.ok_or_else(|| self.unexpected(&"an embedding with a non-number"))?);
        }
        Ok(TaskOutput {
            embeddings: out,
            usage,
            ..TaskOutput::text("", self.vendor, model)
        })
    }

    /// An empty answer from `model`, bounded by this call's output limit.
    pub fn answer(&self, model: String) -> Answer {
        Answer {
            model,
            usage: None,
            finish_reason: FinishReason::Stop,
            content: String::new(),
            tool_calls: Vec::new(),
            size: 0,
            fresh: Vec::new(),
            limit: self.limits.output_bytes,
            overflow: false,
        }
    }

    /// The finished output, labelled with this vendor; an error if the
    /// answer outgrew the output limit.
    pub fn output(&self, answer: Answer) -> Result<TaskOutput, ProviderError> {
        if answer.overflow {
            return Err(self.over_limit("answer", answer.limit, "--max-output-bytes"));
        }
        if answer.tool_calls.len() > MAX_TOOL_CALLS {
            return Err(self.unexpected(&format_args!(
                "more than {MAX_TOOL_CALLS} tool calls in one answer"
            )));
        }
        let tool_calls: Vec<ToolCall> = answer
            .tool_calls
            .into_iter()
            .enumerate()
            .map(|(n, (_, mut c))| {
                // Gemini and Ollama may not name their calls; OpenAI
                // clients need an id to answer a call with.
                if c.id.is_empty() {
                    c.id = call_id(n);
                }
                // A call without parameters streams no argument text.
                if c.arguments.is_empty() {
                    c.arguments.push_str("{}");
                }
                c
            })
            .collect();
        // Vendors that end a tool-calling turn with their plain "stop"
        // (Gemini, Ollama) mean what OpenAI calls tool_calls.
        let finish_reason = match answer.finish_reason {
            FinishReason::Stop if !tool_calls.is_empty() => FinishReason::ToolCalls,
            other => other,
        };
        Ok(TaskOutput {
            content: answer.content,
            tool_calls,
            finish_reason,
            provider: self.vendor.to_owned(),
            model: answer.model,
            usage: answer.usage,
            embeddings: Vec::new(),
        })
    }

    /// Reads a streamed answer to its end and returns the output. `record`
    /// reads one record into the answer. Text goes to `sink` record by
    /// record, before the next one is read, so a slow consumer slows the
    /// read (back-pressure).
    pub async fn stream(
        &self,
        mut resp: reqwest::Response,
        framing: Framing,
        mut answer: Answer,
        sink: &ChunkSink,
        mut record: impl FnMut(&str, &mut Answer) -> Result<Flow, ProviderError>,
    ) -> Result<TaskOutput, ProviderError> {
        let mut records = match framing {
            Framing::Sse => Records::Sse(SseParser::default()),
            Framing::Ndjson => Records::Ndjson(NdjsonParser::default()),
        };
        let mut read = 0usize;
        loop {
            // `without_url`: the URL may hold credentials, and the vendor's
            // name is already in the message.
            let (batch, body_ended) = match resp
                .chunk()
                .await
                .map_err(|e| self.unexpected(&e.without_url()))?
            {
                Some(bytes) => {
                    read = read.saturating_add(bytes.len());
                    if read > self.limits.body_bytes {
                        return Err(self.over_limit(
                            "streamed answer",
                            self.limits.body_bytes,
                            "--max-vendor-body-bytes",
                        ));
                    }
                    let batch = records.feed(&bytes).map_err(|e| self.unexpected(&e))?;
                    (batch, false)
                }
                None => (records.finish(), true),
            };
            for r in batch {
                let flow = record(&r, &mut answer)?;
                for piece in answer.fresh.drain(..) {
                    sink.push(piece).await;
                }
                if answer.overflow || flow == Flow::End {
                    return self.output(answer);
                }
            }
            if body_ended {
                return self.output(answer);
            }
        }
    }
}

/// An id for the `n`th tool call of an answer whose vendor gave none:
/// unique within the process and unlikely to repeat across restarts.
fn call_id(n: usize) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let t = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!("call_{t:x}{:x}_{n}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// A token count in a vendor's JSON; 0 when absent or out of range.
pub fn count(v: &Value) -> u32 {
    v.as_u64().and_then(|n| u32::try_from(n).ok()).unwrap_or(0)
}

/// Usage from two counts in a vendor's JSON, or `None` when the vendor gave
/// neither (absent is not zero).
pub fn usage(prompt: &Value, completion: &Value) -> Option<Usage> {
    (prompt.is_u64() || completion.is_u64()).then(|| Usage::new(count(prompt), count(completion)))
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

/// An answer as it is read: the text and tool calls so far, and the model,
/// usage and finish reason the vendor reported (the model asked for until
/// the vendor names one). Made by [`Call::answer`], which sets its output
/// limit; text and tool calls count against it together.
#[derive(Debug)]
pub struct Answer {
    /// The model that answered.
    pub model: String,
    /// Token counts, when the vendor gave them.
    pub usage: Option<Usage>,
    /// Why generation stopped.
    pub finish_reason: FinishReason,
    content: String,
    /// Tool calls by the vendor's index (streams send them in pieces).
    tool_calls: Vec<(u64, ToolCall)>,
    /// Bytes of text and tool calls kept.
    size: usize,
    /// Text read but not yet forwarded to the sink.
    fresh: Vec<String>,
    limit: usize,
    /// Text past `limit` arrived; the call fails.
    overflow: bool,
}

impl Answer {
    /// Appends a piece of text; an empty piece is nothing. A piece that
    /// would take the text past the output limit is dropped and fails the
    /// call.
    pub fn text(&mut self, piece: &str) {
        if piece.is_empty() || !self.take(piece.len()) {
            return;
        }
        self.content.push_str(piece);
        self.fresh.push(piece.to_owned());
    }

    /// Counts `n` more bytes against the limit; false (and the call fails)
    /// past it.
    fn take(&mut self, n: usize) -> bool {
        if self.overflow || self.size.saturating_add(n) > self.limit {
            self.overflow = true;
            return false;
        }
        self.size += n;
        true
    }

    /// Adds a whole tool call (vendors that send each call in one piece).
    pub fn tool_call(&mut self, id: &str, name: &str, arguments: &str) {
        let index = self.tool_calls.len() as u64;
        self.tool_call_piece(index, Some(id), Some(name), arguments);
    }

    /// Adds a piece of the tool call at `index`: its id and name when the
    /// piece carries them, and more of its arguments text (OpenAI-style
    /// streams send the arguments in fragments). One call past
    /// [`MAX_TOOL_CALLS`] fails the answer.
    pub fn tool_call_piece(
        &mut self,
        index: u64,
        id: Option<&str>,
        name: Option<&str>,
        arguments: &str,
    ) {
        let n = id.map_or(0, str::len) + name.map_or(0, str::len) + arguments.len();
        if !self.take(n) {
            return;
        }
        let at = match self.tool_calls.iter().position(|(i, _)| *i == index) {
            Some(at) => at,
            None => {
                if self.tool_calls.len() > MAX_TOOL_CALLS {
                    return;
                }
                self.tool_calls.push((
                    index,
                    ToolCall {
                        id: String::new(),
                        name: String::new(),
                        arguments: String::new(),
                    },
                ));
                self.tool_calls.len() - 1
            }
        };
        let call = &mut self.tool_calls[at].1;
        if let Some(id) = id.filter(|s| !s.is_empty()) {
            id.clone_into(&mut call.id);
        }
        if let Some(name) = name.filter(|s| !s.is_empty()) {
            name.clone_into(&mut call.name);
        }
        call.arguments.push_str(arguments);
    }

    /// Takes the model from `v` when it is a string of a sane length.
    pub fn model_from(&mut self, v: &Value) {
        if let Some(m) = v.as_str().filter(|m| m.len() <= MAX_MODEL_NAME) {
            m.clone_into(&mut self.model);
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::body::Body;
    use axum::response::Response;

    use super::super::classify::MAX_MESSAGE;
    use super::super::testkit;
    use super::*;

    const LIMITS: ReadLimits = ReadLimits {
        body_bytes: 64 * 1024,
        output_bytes: 1024,
    };

    /// A fake vendor answering every request with `status` and `body`, and
    /// the (unsent) request to it.
    async fn vendor(
        status: u16,
        body: impl Into<Body> + Clone + Send + Sync + 'static,
    ) -> (VendorClient, reqwest::RequestBuilder) {
        let (base, _) = testkit::fake(move |_| {
            Response::builder()
                .status(status)
                .header("content-type", "text/event-stream")
                .body(body.clone().into())
                .expect("response")
        })
        .await;
        let http = VendorClient::new(LIMITS).expect("client");
        let req = http.post(format!("{base}/x"));
        (http, req)
    }

    /// The SSE dialect of these tests: records are text pieces, `END` ends
    /// the stream and `BROKEN` fails it.
    fn record(call: Call<'_>) -> impl FnMut(&str, &mut Answer) -> Result<Flow, ProviderError> {
        move |r, a| match r {
            "END" => Ok(Flow::End),
            "BROKEN" => Err(call.unexpected(&"broken record")),
            _ => {
                a.text(r);
                Ok(Flow::More)
            }
        }
    }

    /// Streams `body` through the test dialect; the result and what the
    /// sink got. A busy loop fails the test instead of hanging it.
    fn read(
        body: impl Into<Body> + Clone + Send + Sync + 'static,
    ) -> (Result<TaskOutput, ProviderError>, Vec<String>) {
        testkit::finishes_within(Duration::from_secs(10), move || async move {
            let (http, req) = vendor(200, body).await;
            let call = http.call("v", Some("secret-key-0123456789"));
            let (tx, mut rx) = tokio::sync::mpsc::channel(64);
            let sink = ChunkSink::new(tx);
            let resp = call.send(req, "").await.expect("sent");
            let out = call
                .stream(
                    resp,
                    Framing::Sse,
                    call.answer("asked".into()),
                    &sink,
                    record(call),
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
        let out = out.expect("ok");
        assert_eq!(
            (
                out.content.as_str(),
                out.model.as_str(),
                out.provider.as_str()
            ),
            ("ab", "asked", "v")
        );
        assert_eq!(pieces, ["a", "b"], "empty pieces are not sent");
    }

    #[test]
    fn a_body_that_ends_without_the_marker_ends_the_stream() {
        // Before the shared driver, the OpenAI dialect spun forever here:
        // it stopped only after `[DONE]`.
        let (out, pieces) = read("data: a\n\ndata: b");
        assert_eq!(out.expect("ok").content, "ab");
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

    #[test]
    fn an_answer_past_the_output_limit_fails_the_task_and_keeps_nothing_more() {
        // 100-byte pieces: the eleventh would pass the 1,024-byte limit.
        let piece = "x".repeat(100);
        let body: String = (0..50).map(|_| format!("data: {piece}\n\n")).collect();
        let (out, pieces) = read(body);
        let e = out.expect_err("over the limit");
        assert_eq!(e.kind, ProviderErrorKind::Invalid, "{e}");
        assert!(
            e.message
                .contains("limit of 1024 bytes (--max-output-bytes)"),
            "{e}"
        );
        assert_eq!(pieces.len(), 10, "nothing past the limit reaches the sink");
    }

    #[test]
    fn an_endless_stream_is_cut_at_the_body_limit() {
        // Keep-alive comments only: no text, so only the body limit can
        // stop it. Before the limit, this read until the attempt timeout
        // while the worker's memory grew with every byte.
        let endless = futures_util::stream::repeat_with(|| {
            Ok::<_, std::io::Error>(axum::body::Bytes::from_static(b": keep-alive\n\n"))
        });
        let body = Body::from_stream(endless);
        let (out, _) = read_body(body);
        let e = out.expect_err("cut");
        assert_eq!(e.kind, ProviderErrorKind::Invalid, "{e}");
        assert!(e.message.contains("(--max-vendor-body-bytes)"), "{e}");
    }

    /// [`read`] for a body that cannot be cloned (a stream): one request.
    fn read_body(body: Body) -> (Result<TaskOutput, ProviderError>, Vec<String>) {
        let body = std::sync::Mutex::new(Some(body));
        let body = std::sync::Arc::new(body);
        read(OnceBody(body))
    }

    /// A body handed out once (the fake answers one request per test).
    #[derive(Clone)]
    struct OnceBody(std::sync::Arc<std::sync::Mutex<Option<Body>>>);

    impl From<OnceBody> for Body {
        fn from(b: OnceBody) -> Body {
            b.0.lock().expect("lock").take().unwrap_or_else(Body::empty)
        }
    }

    #[test]
    fn a_whole_answer_past_the_body_limit_is_refused() {
        // Announced (Content-Length) and unannounced (chunked) sizes.
        let announced = Body::from(vec![b' '; 70 * 1024]);
        let chunked = Body::from_stream(futures_util::stream::iter(
            (0..70).map(|_| Ok::<_, std::io::Error>(vec![b' '; 1024])),
        ));
        for body in [announced, chunked] {
            let body = OnceBody(std::sync::Arc::new(std::sync::Mutex::new(Some(body))));
            let (message, kind) = testkit::finishes_within(Duration::from_secs(10), || async {
                let (http, req) = vendor(200, body).await;
                let call = http.call("v", None);
                let resp = call.send(req, "").await.expect("sent");
                let e = call.json(resp).await.expect_err("too big");
                (e.message, e.kind)
            });
            assert_eq!(kind, ProviderErrorKind::Invalid);
            assert!(message.contains("(--max-vendor-body-bytes)"), "{message}");
        }
    }

    #[test]
    fn a_huge_error_body_is_read_only_in_part_and_never_logged_whole() {
        let key = "sk-secret-0123456789abcdef";
        let message = format!("{key} {}", "y".repeat(1024 * 1024));
        let body = serde_json::json!({"error": {"message": message}}).to_string();
        let e = testkit::finishes_within(Duration::from_secs(10), move || async move {
            let (http, req) = vendor(400, body).await;
            http.call("v", Some(key))
                .send(req, "")
                .await
                .expect_err("400")
        });
        assert_eq!(e.kind, ProviderErrorKind::Invalid);
        assert!(
            e.message.len() < MAX_MESSAGE + 100,
            "{} bytes",
            e.message.len()
        );
        assert!(!e.message.contains(key), "{}", e.message);
        assert!(
            e.message.starts_with("v: request rejected (HTTP 400): "),
            "{}",
            &e.message[..80]
        );
    }

    #[test]
    fn excerpts_cut_long_text_and_redact_a_key_across_the_cut() {
        let key = "custom-gateway-key-without-a-known-prefix";
        assert_eq!(excerpt("short", Some(key)), "short");
        let at_cut = format!("{}{key}", "a".repeat(MAX_MESSAGE - 10));
        let out = excerpt(&at_cut, Some(key));
        assert!(
            !out.contains(&key[..10]),
            "no piece of the key survives: {out}"
        );
        assert!(out.len() <= MAX_MESSAGE + " …".len());
        let multibyte = "é".repeat(MAX_MESSAGE);
        assert!(
            excerpt(&multibyte, None).ends_with(" …"),
            "cut on a char boundary"
        );
    }

    #[test]
    fn ndjson_records_are_lines() {
        let out = testkit::finishes_within(Duration::from_secs(10), || async {
            let (http, req) = vendor(200, "{\"t\":\"x\"}\n\n{\"t\":\"y\"}").await;
            let call = http.call("v", None);
            let resp = call.send(req, "").await.expect("sent");
            call.stream(
                resp,
                Framing::Ndjson,
                call.answer("m".into()),
                &ChunkSink::none(),
                |r, a| {
                    let v: Value = serde_json::from_str(r).map_err(|e| call.unexpected(&e))?;
                    a.text(v["t"].as_str().unwrap_or_default());
                    Ok(Flow::More)
                },
            )
            .await
        });
        assert_eq!(out.expect("ok").content, "xy");
    }

    #[test]
    fn counts_out_of_range_are_zero() {
        assert_eq!(count(&serde_json::json!(7)), 7);
        assert_eq!(count(&serde_json::json!(u64::MAX)), 0);
        assert_eq!(count(&serde_json::json!("7")), 0);
        assert_eq!(count(&Value::Null), 0);
    }

    #[test]
    fn tool_calls_count_against_the_limits() {
        let call = VendorClient::new(LIMITS).expect("client").call("v", None);
        // Any index is fine for one call: nothing is allocated by index.
        let mut a = call.answer("m".into());
        a.tool_call_piece(u64::MAX, Some("c1"), Some("f"), "");
        let out = call.output(a).expect("one call");
        assert_eq!(out.tool_calls[0].arguments, "{}");
        assert_eq!(out.finish_reason, FinishReason::ToolCalls);
        // Too many calls fail the answer instead of growing without end.
        let mut a = call.answer("m".into());
        for i in 0..(MAX_TOOL_CALLS as u64 + 10) {
            a.tool_call_piece(i * 1_000_000_007, None, Some("f"), "");
        }
        let e = call.output(a).expect_err("too many");
        assert!(e.message.contains("tool calls"), "{}", e.message);
        // Arguments count against the output limit like text.
        let mut a = call.answer("m".into());
        a.text("hi");
        a.tool_call("c", "f", &"x".repeat(LIMITS.output_bytes - 3));
        let e = call.output(a).expect_err("too big");
        assert!(e.message.contains("--max-output-bytes"), "{}", e.message);
    }
}
