//! `openai`: any OpenAI-compatible Chat Completions endpoint: OpenAI, Groq,
//! DeepSeek and OpenRouter (same wire format; their URLs and defaults are in
//! the vendor table).
//!
//! Request: `POST {base_url}/chat/completions` with `Authorization: Bearer
//! <key>` and `{model, messages, temperature?, max_tokens?, stream}`; when
//! streaming, `stream_options.include_usage` so the last event carries token
//! counts. Streaming answers are SSE `data: {choices:[{delta:{content}}]}`
//! events ending with `data: [DONE]`.

use serde_json::{Value, json};

use super::driver::{Flow, Framing, HttpProvider, VendorClient, count};
use super::vendor::Vendor;
use super::{ChunkSink, ProviderError, Secret};
use crate::task::{ChatRequest, TaskOutput, Usage};

/// An OpenAI-compatible provider.
#[derive(Debug, Clone)]
pub struct OpenAiCompat {
    kind: String,
    base_url: String,
    key: Option<Secret>,
    default_model: String,
    models: Vec<String>,
    http: VendorClient,
}

impl OpenAiCompat {
    /// A provider for `vendor` (one of the OpenAI dialect) at `base_url`
    /// (trailing `/` ignored) with `key`.
    pub fn new(vendor: &Vendor, base_url: &str, key: Option<Secret>, http: VendorClient) -> Self {
        OpenAiCompat {
            kind: vendor.kind.to_owned(),
            base_url: base_url.trim_end_matches('/').to_owned(),
            key,
            default_model: vendor.default_model.to_owned(),
            models: vec![vendor.default_model.to_owned()],
            http,
        }
    }

    /// Sets the models served (the first is the default).
    pub fn with_models(mut self, models: Vec<String>) -> Self {
        if let Some(first) = models.first() {
            self.default_model = first.clone();
            self.models = models;
        }
        self
    }

    fn body(&self, req: &ChatRequest, stream: bool) -> Value {
        let mut body = json!({
            "model": req.model.clone().unwrap_or_else(|| self.default_model.clone()),
            "messages": req.messages.iter().map(|m| json!({"role": m.role, "content": m.content})).collect::<Vec<_>>(),
            "stream": stream,
        });
        if let Some(t) = req.temperature {
            body["temperature"] = json!(t);
        }
        if let Some(n) = req.max_tokens {
            body["max_tokens"] = json!(n);
        }
        if !req.stop.is_empty() {
            body["stop"] = json!(req.stop);
        }
        if req.json {
            body["response_format"] = json!({"type": "json_object"});
        }
        if stream {
            body["stream_options"] = json!({"include_usage": true});
        }
        body
    }
}

fn usage(v: &Value) -> Usage {
    Usage::new(count(&v["prompt_tokens"]), count(&v["completion_tokens"]))
}

impl HttpProvider for OpenAiCompat {
    fn kind(&self) -> &str {
        &self.kind
    }

    fn models(&self) -> &[String] {
        &self.models
    }

    async fn call(&self, req: &ChatRequest, sink: ChunkSink) -> Result<TaskOutput, ProviderError> {
        let vendor = self.kind.as_str();
        let key = self.key.as_ref().map(Secret::expose);
        let mut request = self
            .http
            .post(format!("{}/chat/completions", self.base_url))
            .json(&self.body(req, req.stream));
        if let Some(k) = key {
            request = request.bearer_auth(k);
        }
        let call = self.http.call(vendor, key);
        let resp = call.send(request, "").await?;
        let mut answer = call.answer(
            req.model
                .clone()
                .unwrap_or_else(|| self.default_model.clone()),
        );
        if !req.stream {
            let v = call.json(resp).await?;
            let content = v["choices"][0]["message"]["content"]
                .as_str()
                .ok_or_else(|| call.unexpected(&"no choices[0].message.content"))?;
            answer.text(content);
            answer.model_from(&v["model"]);
            answer.usage = usage(&v["usage"]);
            return call.output(answer);
        }
        call.stream(resp, Framing::Sse, answer, &sink, |data, answer| {
            if data == "[DONE]" {
                return Ok(Flow::End);
            }
            let v: Value = serde_json::from_str(data).map_err(|e| call.unexpected(&e))?;
            answer.model_from(&v["model"]);
            if v["usage"].is_object() {
                answer.usage = usage(&v["usage"]);
            }
            answer.text(
                v["choices"][0]["delta"]["content"]
                    .as_str()
                    .unwrap_or_default(),
            );
            Ok(Flow::More)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use crate::providers::Provider;
    use axum::body::Body;
    use axum::http::StatusCode;
    use axum::response::Response;

    use super::super::testkit::{self, Log};
    use super::*;
    use crate::providers::ProviderErrorKind;
    use crate::task::ChatMessage;

    /// A fake answering `reply(body)`; returns the `/v1` base URL and the log.
    async fn fake(
        reply: impl Fn(&Value) -> Response + Clone + Send + Sync + 'static,
    ) -> (String, Log) {
        let (base, log) = testkit::fake(move |s| reply(&s.body)).await;
        (format!("{base}/v1"), log)
    }

    fn provider(base: &str, key: &str) -> OpenAiCompat {
        crate::ensure_crypto_provider();
        OpenAiCompat::new(
            &super::super::vendor::GROQ,
            base,
            Some(Secret::new(key)),
            super::super::testkit::client(),
        )
    }

    fn request(stream: bool) -> ChatRequest {
        ChatRequest {
            messages: vec![
                ChatMessage::new("system", "be brief"),
                ChatMessage::new("user", "hi"),
            ],
            model: None,
            temperature: Some(0.2),
            max_tokens: Some(64),
            stream,
            ..ChatRequest::default()
        }
    }

    #[tokio::test]
    async fn sends_the_exact_request_and_reads_the_answer() {
        let (base, seen) = fake(|_| {
            testkit::json(200, &[], &json!({
                "id": "x", "model": "llama-3.1-8b-instant",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello!"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}
            }))
        })
        .await;
        let out = provider(&base, "gsk_test_key_123456")
            .chat(&request(false), ChunkSink::none())
            .await
            .expect("ok");
        assert_eq!(out.content, "hello!");
        assert_eq!(out.provider, "groq");
        assert_eq!(out.usage, Usage::new(12, 3));
        let s = seen.lock().expect("lock")[0].clone();
        assert_eq!(s.path, "/v1/chat/completions");
        assert_eq!(
            s.header("authorization"),
            Some("Bearer gsk_test_key_123456")
        );
        assert_eq!(
            s.body,
            json!({
                "model": "llama-3.1-8b-instant",
                "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
                "temperature": 0.2f32,
                "max_tokens": 64,
                "stream": false
            })
        );
    }

    #[test]
    fn a_stream_cut_before_done_ends_with_what_came() {
        // This spun a core forever before the shared stream driver: the
        // loop waited for `[DONE]` on a body that had already ended.
        let out = testkit::finishes_within(std::time::Duration::from_secs(10), || async {
            let (base, _) = fake(|_| {
                Response::builder()
                    .header("content-type", "text/event-stream")
                    .body(Body::from(
                        "data: {\"model\":\"m1\",\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\n",
                    ))
                    .expect("response")
            })
            .await;
            provider(&base, "k")
                .chat(&request(true), ChunkSink::none())
                .await
        });
        let out = out.expect("ok");
        assert_eq!((out.content.as_str(), out.model.as_str()), ("Hel", "m1"));
    }

    #[tokio::test]
    async fn stop_sequences_and_json_mode() {
        let (base, seen) = fake(|_| {
            testkit::json(
                200,
                &[],
                &json!({
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "{}"}}]
                }),
            )
        })
        .await;
        let req = ChatRequest {
            stop: vec!["END".into(), "\n\n".into()],
            json: true,
            ..request(false)
        };
        provider(&base, "k")
            .chat(&req, ChunkSink::none())
            .await
            .expect("ok");
        let body = seen.lock().expect("lock")[0].body.clone();
        assert_eq!(body["stop"], json!(["END", "\n\n"]));
        assert_eq!(body["response_format"], json!({"type": "json_object"}));
        let plain = provider(&base, "k");
        plain
            .chat(&request(false), ChunkSink::none())
            .await
            .expect("ok");
        let body = seen.lock().expect("lock")[1].body.clone();
        assert!(body.get("stop").is_none() && body.get("response_format").is_none());
    }

    #[tokio::test]
    async fn streams_deltas_in_order_and_keeps_usage() {
        let (base, seen) = fake(|_| {
            let events = [
                r#"{"model":"m1","choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#,
                r#"{"model":"m1","choices":[{"index":0,"delta":{"content":"Hel"}}]}"#,
                r#"{"model":"m1","choices":[{"index":0,"delta":{"content":"lo"}}]}"#,
                r#"{"model":"m1","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#,
                r#"{"model":"m1","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2}}"#,
            ];
            let mut body: String = events.iter().map(|e| format!("data: {e}\n\n")).collect();
            body.push_str("data: [DONE]\n\n");
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(Body::from(body))
                .expect("response")
        })
        .await;
        let (tx, mut rx) = tokio::sync::mpsc::channel(16);
        let out = provider(&base, "k-0123456789")
            .chat(&request(true), ChunkSink::new(tx))
            .await
            .expect("ok");
        assert_eq!(out.content, "Hello");
        assert_eq!(out.model, "m1");
        assert_eq!(out.usage, Usage::new(5, 2));
        let mut chunks = Vec::new();
        while let Ok(c) = rx.try_recv() {
            chunks.push(c);
        }
        assert_eq!(chunks, ["Hel", "lo"]);
        let body = seen.lock().expect("lock")[0].body.clone();
        assert_eq!(body["stream"], true);
        assert_eq!(body["stream_options"], json!({"include_usage": true}));
    }

    #[tokio::test]
    async fn errors_are_classified_and_keys_redacted() {
        let key = "gsk_secret_abcdefghijklmnop";
        let (base, _) = fake(move |body| match body["messages"][1]["content"].as_str() {
            Some("slow") => testkit::json(
                429,
                &[("retry-after", "7"), ("x-ratelimit-reset-requests", "2.5s")],
                &json!({"error": {"message": "Rate limit reached"}}),
            ),
            Some("bad key") => testkit::json(
                401,
                &[],
                &json!({"error": {"message": format!("Invalid API Key {key}")}}),
            ),
            Some("broken") => testkit::json(503, &[], &json!({"error": {"message": "overloaded"}})),
            Some("garbage") => Response::builder()
                .status(StatusCode::OK)
                .body(Body::from("not json"))
                .expect("response"),
            _ => testkit::json(
                400,
                &[],
                &json!({"error": {"message": "max_tokens is too large"}}),
            ),
        })
        .await;
        let p = provider(&base, key);
        let ask = |content: &str| {
            let mut r = request(false);
            r.messages[1].content = content.into();
            r
        };
        let e = p
            .chat(&ask("slow"), ChunkSink::none())
            .await
            .expect_err("429");
        assert_eq!(
            e.kind,
            ProviderErrorKind::RateLimited {
                retry_after_ms: 7_000
            }
        );
        let e = p
            .chat(&ask("bad key"), ChunkSink::none())
            .await
            .expect_err("401");
        assert_eq!(e.kind, ProviderErrorKind::Auth);
        assert!(!e.message.contains(key), "{}", e.message);
        let e = p
            .chat(&ask("broken"), ChunkSink::none())
            .await
            .expect_err("503");
        assert_eq!(e.kind, ProviderErrorKind::Transient);
        let e = p
            .chat(&ask("garbage"), ChunkSink::none())
            .await
            .expect_err("bad body");
        assert_eq!(e.kind, ProviderErrorKind::Transient);
        let e = p
            .chat(&ask("other"), ChunkSink::none())
            .await
            .expect_err("400");
        assert_eq!(e.kind, ProviderErrorKind::Invalid);
        assert!(
            e.message.contains("max_tokens is too large"),
            "{}",
            e.message
        );
        // Nothing listening: transient, and the message names host and port
        // only, never credentials in the base URL.
        let gone = provider("http://user:hunter2secret@127.0.0.1:9/v1", key);
        let e = gone
            .chat(&ask("x"), ChunkSink::none())
            .await
            .expect_err("refused");
        assert_eq!(e.kind, ProviderErrorKind::Transient);
        assert!(!e.message.contains(key));
        assert!(!e.message.contains("hunter2secret"), "{}", e.message);
        assert!(e.message.contains("127.0.0.1:9"), "{}", e.message);
    }
}
