//! `anthropic`: Claude through the Messages API.
//!
//! `POST {base}/v1/messages` with `x-api-key`, `anthropic-version:
//! 2023-06-01`; system messages become the top-level `system` field;
//! `max_tokens` is required (1024 when the task names none). Streaming is SSE:
//! `message_start` (input tokens), `content_block_delta` (`text_delta`),
//! `message_delta` (output tokens), `message_stop`; an `error` event ends it.

use serde_json::{Value, json};

use super::classify::DEFAULT_RETRY_AFTER;
use super::driver::{Flow, Framing, HttpProvider, VendorClient, count};
use super::{ChunkSink, ProviderError, ProviderErrorKind, Secret};
use crate::task::{ChatRequest, TaskOutput, Usage};

/// API version header value.
pub const API_VERSION: &str = "2023-06-01";
/// Model used when neither task nor configuration names one (vendor table).
pub const DEFAULT_MODEL: &str = super::vendor::ANTHROPIC.default_model;
/// Appended to the system prompt of a task that asks for JSON.
const JSON_INSTRUCTION: &str =
    "Answer with one valid JSON object and nothing else: no prose, no code fences.";

/// `max_tokens` when the task gives none (the API requires one).
pub const DEFAULT_MAX_TOKENS: u32 = 1_024;

/// The Anthropic provider.
#[derive(Debug, Clone)]
pub struct Anthropic {
    base_url: String,
    key: Secret,
    models: Vec<String>,
    http: VendorClient,
}

impl Anthropic {
    /// A provider at `base_url` with `key`, serving `models` (first = default).
    pub fn new(base_url: &str, key: Secret, models: Vec<String>, http: VendorClient) -> Self {
        Anthropic {
            base_url: base_url.trim_end_matches('/').to_owned(),
            key,
            models: if models.is_empty() {
                vec![DEFAULT_MODEL.to_owned()]
            } else {
                models
            },
            http,
        }
    }

    fn body(&self, req: &ChatRequest) -> Value {
        let mut system: Vec<&str> = req
            .messages
            .iter()
            .filter(|m| m.role == "system")
            .map(|m| m.content.as_str())
            .collect();
        // The Messages API has no JSON mode; asking in the system prompt is
        // what Anthropic's documentation recommends instead.
        if req.json {
            system.push(JSON_INSTRUCTION);
        }
        let mut body = json!({
            "model": req.model.clone().unwrap_or_else(|| self.models[0].clone()),
            "max_tokens": req.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
            "messages": req.messages.iter()
                .filter(|m| m.role != "system")
                .map(|m| json!({"role": m.role, "content": m.content}))
                .collect::<Vec<_>>(),
        });
        if !system.is_empty() {
            body["system"] = json!(system.join("\n\n"));
        }
        if let Some(t) = req.temperature {
            body["temperature"] = json!(t);
        }
        if !req.stop.is_empty() {
            body["stop_sequences"] = json!(req.stop);
        }
        if req.stream {
            body["stream"] = json!(true);
        }
        body
    }
}

impl HttpProvider for Anthropic {
    fn kind(&self) -> &str {
        "anthropic"
    }

    fn models(&self) -> &[String] {
        &self.models
    }

    async fn call(&self, req: &ChatRequest, sink: ChunkSink) -> Result<TaskOutput, ProviderError> {
        let key = Some(self.key.expose());
        let request = self
            .http
            .post(format!("{}/v1/messages", self.base_url))
            .header("x-api-key", self.key.expose())
            .header("anthropic-version", API_VERSION)
            .json(&self.body(req));
        let call = self.http.call("anthropic", key);
        let resp = call.send(request, "").await?;
        let mut answer = call.answer(req.model.clone().unwrap_or_else(|| self.models[0].clone()));
        if !req.stream {
            let v = call.json(resp).await?;
            let blocks = v["content"]
                .as_array()
                .ok_or_else(|| call.unexpected(&"no content"))?;
            for b in blocks.iter().filter(|b| b["type"] == "text") {
                answer.text(b["text"].as_str().unwrap_or_default());
            }
            answer.model_from(&v["model"]);
            answer.usage = Usage::new(
                count(&v["usage"]["input_tokens"]),
                count(&v["usage"]["output_tokens"]),
            );
            return call.output(answer);
        }
        call.stream(resp, Framing::Sse, answer, &sink, |data, answer| {
            let v: Value = serde_json::from_str(data).map_err(|e| call.unexpected(&e))?;
            match v["type"].as_str().unwrap_or_default() {
                "message_start" => {
                    answer.model_from(&v["message"]["model"]);
                    answer.usage.prompt_tokens = count(&v["message"]["usage"]["input_tokens"]);
                }
                "content_block_delta" if v["delta"]["type"] == "text_delta" => {
                    answer.text(v["delta"]["text"].as_str().unwrap_or_default());
                }
                "message_delta" if v["usage"]["output_tokens"].is_u64() => {
                    answer.usage.completion_tokens = count(&v["usage"]["output_tokens"]);
                }
                "message_stop" => return Ok(Flow::End),
                "error" => {
                    let kind = match v["error"]["type"].as_str() {
                        Some("rate_limit_error") => ProviderErrorKind::RateLimited {
                            retry_after_ms: u64::try_from(DEFAULT_RETRY_AFTER.as_millis())
                                .unwrap_or(10_000),
                        },
                        Some("invalid_request_error") => ProviderErrorKind::Invalid,
                        _ => ProviderErrorKind::Transient,
                    };
                    let message = v["error"]["message"].as_str().unwrap_or("stream error");
                    return Err(call.error(kind, &message));
                }
                _ => {}
            }
            Ok(Flow::More)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::{fake, json as json_resp, sse};
    use super::*;
    use crate::providers::Provider;
    use crate::task::ChatMessage;

    const KEY: &str = "sk-ant-test-0123456789abcdef";

    fn request(stream: bool) -> ChatRequest {
        ChatRequest {
            messages: vec![
                ChatMessage::new("system", "You are terse."),
                ChatMessage::new("user", "Hello"),
            ],
            model: None,
            temperature: Some(0.7),
            max_tokens: None,
            stream,
            ..ChatRequest::default()
        }
    }

    fn provider(base: &str) -> Anthropic {
        Anthropic::new(
            base,
            Secret::new(KEY),
            vec![],
            super::super::testkit::client(),
        )
    }

    #[tokio::test]
    async fn messages_api_request_and_answer() {
        let (base, log) = fake(|_| {
            json_resp(200, &[], &json!({
                "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-3-5-haiku-20241022",
                "content": [{"type": "text", "text": "Hi."}],
                "stop_reason": "end_turn",
                "usage": {"input_tokens": 11, "output_tokens": 2}
            }))
        })
        .await;
        let out = provider(&base)
            .chat(&request(false), ChunkSink::none())
            .await
            .expect("ok");
        assert_eq!(
            (out.content.as_str(), out.model.as_str()),
            ("Hi.", "claude-3-5-haiku-20241022")
        );
        assert_eq!(out.usage, Usage::new(11, 2));
        let seen = log.lock().expect("lock")[0].clone();
        assert_eq!(seen.path, "/v1/messages");
        assert_eq!(seen.header("x-api-key"), Some(KEY));
        assert_eq!(seen.header("anthropic-version"), Some(API_VERSION));
        assert_eq!(seen.header("authorization"), None);
        assert_eq!(
            seen.body,
            json!({
                "model": DEFAULT_MODEL,
                "max_tokens": 1024,
                "system": "You are terse.",
                "messages": [{"role": "user", "content": "Hello"}],
                "temperature": 0.7f32
            })
        );
    }

    #[tokio::test]
    async fn stop_sequences_and_json_by_system_prompt() {
        let (base, log) = fake(|_| {
            json_resp(
                200,
                &[],
                &json!({
                    "model": "claude-x", "content": [{"type": "text", "text": "{}"}],
                    "usage": {"input_tokens": 1, "output_tokens": 1}
                }),
            )
        })
        .await;
        let req = super::super::testkit::stop_and_json(request(false));
        provider(&base)
            .chat(&req, ChunkSink::none())
            .await
            .expect("ok");
        let body = log.lock().expect("lock")[0].body.clone();
        assert_eq!(body["stop_sequences"], json!(["END"]));
        assert_eq!(
            body["system"],
            json!(format!("You are terse.\n\n{JSON_INSTRUCTION}"))
        );
        assert!(body.get("response_format").is_none());
    }

    #[tokio::test]
    async fn sse_stream_of_events() {
        let (base, log) = fake(|_| {
            sse(&[
                (Some("message_start"), json!({"type": "message_start", "message": {"model": "claude-x", "usage": {"input_tokens": 7, "output_tokens": 1}}}).to_string()),
                (Some("content_block_start"), json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}).to_string()),
                (Some("ping"), json!({"type": "ping"}).to_string()),
                (Some("content_block_delta"), json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hel"}}).to_string()),
                (Some("content_block_delta"), json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "lo"}}).to_string()),
                (Some("content_block_stop"), json!({"type": "content_block_stop", "index": 0}).to_string()),
                (Some("message_delta"), json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 5}}).to_string()),
                (Some("message_stop"), json!({"type": "message_stop"}).to_string()),
            ])
        })
        .await;
        let (tx, mut rx) = tokio::sync::mpsc::channel(8);
        let out = provider(&base)
            .chat(&request(true), ChunkSink::new(tx))
            .await
            .expect("ok");
        assert_eq!(
            (out.content.as_str(), out.model.as_str()),
            ("Hello", "claude-x")
        );
        assert_eq!(out.usage, Usage::new(7, 5));
        assert_eq!(rx.recv().await.as_deref(), Some("Hel"));
        assert_eq!(rx.recv().await.as_deref(), Some("lo"));
        assert_eq!(log.lock().expect("lock")[0].body["stream"], true);
    }

    #[tokio::test]
    async fn failures() {
        let (base, _) = fake(|s| match s.body["messages"][0]["content"].as_str() {
            Some("limit") => json_resp(429, &[("anthropic-ratelimit-requests-reset", "2099-01-01T00:00:00Z"), ("retry-after", "20")], &json!({"type": "error", "error": {"type": "rate_limit_error", "message": "Number of requests has exceeded your rate limit"}})),
            Some("overloaded") => json_resp(529, &[], &json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})),
            Some("budget") => json_resp(400, &[], &json!({"type": "error", "error": {"type": "invalid_request_error", "message": "Your credit balance is too low to access the Anthropic API."}})),
            Some("key") => json_resp(401, &[], &json!({"type": "error", "error": {"type": "authentication_error", "message": "invalid x-api-key"}})),
            Some("midstream") => sse(&[(Some("error"), json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}).to_string())]),
            _ => json_resp(400, &[], &json!({"type": "error", "error": {"type": "invalid_request_error", "message": "messages: roles must alternate"}})),
        })
        .await;
        let p = provider(&base);
        let ask = |content: &str, stream: bool| ChatRequest {
            messages: vec![ChatMessage::new("user", content)],
            stream,
            ..Default::default()
        };
        let kind = |r: Result<TaskOutput, ProviderError>| r.expect_err("fails").kind;
        // The longest wait named wins, capped at a day.
        assert_eq!(
            kind(p.chat(&ask("limit", false), ChunkSink::none()).await),
            ProviderErrorKind::RateLimited {
                retry_after_ms: 86_400_000
            }
        );
        assert_eq!(
            kind(p.chat(&ask("overloaded", false), ChunkSink::none()).await),
            ProviderErrorKind::Transient
        );
        assert_eq!(
            kind(p.chat(&ask("budget", false), ChunkSink::none()).await),
            ProviderErrorKind::QuotaExhausted {
                retry_after_ms: 3_600_000
            }
        );
        assert_eq!(
            kind(p.chat(&ask("key", false), ChunkSink::none()).await),
            ProviderErrorKind::Auth
        );
        assert_eq!(
            kind(p.chat(&ask("midstream", true), ChunkSink::none()).await),
            ProviderErrorKind::Transient
        );
        let e = p
            .chat(&ask("other", false), ChunkSink::none())
            .await
            .expect_err("400");
        assert_eq!(e.kind, ProviderErrorKind::Invalid);
        assert!(e.message.contains("roles must alternate"), "{}", e.message);
    }
}
