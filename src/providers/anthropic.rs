//! `anthropic`: Claude through the Messages API.
//!
//! `POST {base}/v1/messages` with `x-api-key`, `anthropic-version:
//! 2023-06-01`; system messages become the top-level `system` field;
//! `max_tokens` is required (1024 when the task names none). Streaming is SSE:
//! `message_start` (input tokens), `content_block_delta` (`text_delta`),
//! `message_delta` (output tokens), `message_stop`; an `error` event ends it.

use serde_json::{Value, json};

use super::classify::DEFAULT_RETRY_AFTER;
use super::driver::{Flow, Framing, HttpProvider, VendorClient, count, usage};
use super::shape::json_text;
use super::{ChunkSink, ProviderError, ProviderErrorKind, Secret};
use crate::task::{ChatRequest, FinishReason, ResponseFormat, TaskOutput, ToolChoice};

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
        let mut system: Vec<String> = req
            .messages
            .iter()
            .filter(|m| m.role == "system")
            .map(|m| m.content.clone())
            .collect();
        // The Messages API has no JSON mode; asking in the system prompt is
        // what Anthropic's documentation recommends instead.
        match &req.response_format {
            ResponseFormat::Text => {}
            ResponseFormat::JsonObject => system.push(JSON_INSTRUCTION.to_owned()),
            ResponseFormat::JsonSchema { schema, .. } => {
                system.push(format!(
                    "{JSON_INSTRUCTION} It must match this JSON Schema: {schema}"
                ));
            }
        }
        let mut body = json!({
            "model": req.model.clone().unwrap_or_else(|| self.models[0].clone()),
            "max_tokens": req.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
            "messages": messages(req),
        });
        if !system.is_empty() {
            body["system"] = json!(system.join("\n\n"));
        }
        if let Some(t) = req.temperature {
            body["temperature"] = json!(t);
        }
        if let Some(p) = req.top_p {
            body["top_p"] = json!(p);
        }
        if !req.stop.is_empty() {
            body["stop_sequences"] = json!(req.stop);
        }
        if !req.tools.is_empty() {
            body["tools"] = req
                .tools
                .iter()
                .map(|t| {
                    let mut v = json!({
                        "name": t.name,
                        // Required by the API; a tool without parameters takes none.
                        "input_schema": t.parameters.as_deref().map_or_else(
                            || json!({"type": "object", "properties": {}}),
                            json_text,
                        ),
                    });
                    if let Some(d) = &t.description {
                        v["description"] = json!(d);
                    }
                    v
                })
                .collect();
            let mut choice = match &req.tool_choice {
                None | Some(ToolChoice::Auto) => json!({"type": "auto"}),
                Some(ToolChoice::None) => json!({"type": "none"}),
                Some(ToolChoice::Required) => json!({"type": "any"}),
                Some(ToolChoice::Function(name)) => json!({"type": "tool", "name": name}),
            };
            if req.parallel_tool_calls == Some(false) {
                choice["disable_parallel_tool_use"] = json!(true);
            }
            if req.tool_choice.is_some() || req.parallel_tool_calls == Some(false) {
                body["tool_choice"] = choice;
            }
        }
        if req.stream {
            body["stream"] = json!(true);
        }
        body
    }
}

/// The conversation as Messages API turns: system messages are left out
/// (they go to `system`); an assistant's tool calls become `tool_use`
/// blocks; `tool` results become `tool_result` blocks of a user turn; and
/// consecutive turns of one role merge, since the API wants user and
/// assistant to alternate (parallel tool results share one user turn).
fn messages(req: &ChatRequest) -> Vec<Value> {
    let mut turns: Vec<(&'static str, Vec<Value>)> = Vec::new();
    for m in req.messages.iter().filter(|m| m.role != "system") {
        let (role, blocks) = match m.role.as_str() {
            "assistant" => {
                let mut blocks = Vec::new();
                if !m.content.is_empty() {
                    blocks.push(json!({"type": "text", "text": m.content}));
                }
                blocks.extend(m.tool_calls.iter().map(|c| {
                    json!({"type": "tool_use", "id": c.id, "name": c.name,
                           "input": json_text(&c.arguments)})
                }));
                ("assistant", blocks)
            }
            "tool" => (
                "user",
                vec![json!({"type": "tool_result",
                            "tool_use_id": m.tool_call_id.clone().unwrap_or_default(),
                            "content": m.content})],
            ),
            _ => ("user", vec![json!({"type": "text", "text": m.content})]),
        };
        match turns.last_mut() {
            Some((last, prev)) if *last == role => prev.extend(blocks),
            _ => turns.push((role, blocks)),
        }
    }
    turns
        .into_iter()
        .map(|(role, blocks)| match blocks.as_slice() {
            // A lone text block is sent as plain content, the common form.
            [b] if b["type"] == "text" => json!({"role": role, "content": b["text"]}),
            _ => json!({"role": role, "content": blocks}),
        })
        .collect()
}

/// Anthropic's `stop_reason` in OpenAI's terms.
fn finish_reason(v: &Value) -> Option<FinishReason> {
    Some(match v.as_str()? {
        "max_tokens" => FinishReason::Length,
        "tool_use" => FinishReason::ToolCalls,
        "refusal" => FinishReason::ContentFilter,
        _ => FinishReason::Stop,
    })
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
            for b in blocks {
                match b["type"].as_str() {
                    Some("text") => answer.text(b["text"].as_str().unwrap_or_default()),
                    Some("tool_use") => answer.tool_call(
                        b["id"].as_str().unwrap_or_default(),
                        b["name"].as_str().unwrap_or_default(),
                        &b["input"].to_string(),
                    ),
                    _ => {}
                }
            }
            if let Some(r) = finish_reason(&v["stop_reason"]) {
                answer.finish_reason = r;
            }
            answer.model_from(&v["model"]);
            answer.usage = usage(&v["usage"]["input_tokens"], &v["usage"]["output_tokens"]);
            return call.output(answer);
        }
        call.stream(resp, Framing::Sse, answer, &sink, |data, answer| {
            let v: Value = serde_json::from_str(data).map_err(|e| call.unexpected(&e))?;
            match v["type"].as_str().unwrap_or_default() {
                "message_start" => {
                    answer.model_from(&v["message"]["model"]);
                    if let Some(u) = usage(&v["message"]["usage"]["input_tokens"], &Value::Null) {
                        answer.usage = Some(u);
                    }
                }
                "content_block_start" if v["content_block"]["type"] == "tool_use" => {
                    let block = &v["content_block"];
                    answer.tool_call_piece(
                        v["index"].as_u64().unwrap_or_default(),
                        block["id"].as_str(),
                        block["name"].as_str(),
                        "",
                    );
                }
                "content_block_delta" => match v["delta"]["type"].as_str() {
                    Some("text_delta") => {
                        answer.text(v["delta"]["text"].as_str().unwrap_or_default());
                    }
                    Some("input_json_delta") => answer.tool_call_piece(
                        v["index"].as_u64().unwrap_or_default(),
                        None,
                        None,
                        v["delta"]["partial_json"].as_str().unwrap_or_default(),
                    ),
                    _ => {}
                },
                "message_delta" => {
                    if let Some(r) = finish_reason(&v["delta"]["stop_reason"]) {
                        answer.finish_reason = r;
                    }
                    if v["usage"]["output_tokens"].is_u64() {
                        answer.usage.get_or_insert_default().completion_tokens =
                            count(&v["usage"]["output_tokens"]);
                    }
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
    use crate::task::{ChatMessage, Usage};

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
        assert_eq!(out.usage, Some(Usage::new(11, 2)));
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
        assert_eq!(out.usage, Some(Usage::new(7, 5)));
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

    fn weather_schema() -> Value {
        serde_json::from_str(super::super::testkit::WEATHER_SCHEMA).expect("schema")
    }

    #[tokio::test]
    async fn tool_use_both_ways() {
        // The answer is the tool-use example of Anthropic's tool use guide
        // (docs.anthropic.com/en/docs/build-with-claude/tool-use): a text
        // block, then a `tool_use` block whose `input` is an object, and
        // `stop_reason: "tool_use"`.
        let (base, log) = fake(|_| {
            json_resp(200, &[], &json!({
                "id": "msg_01Aq9w938a90dw8q", "type": "message", "role": "assistant",
                "model": "claude-3-5-sonnet-20241022", "stop_reason": "tool_use",
                "content": [
                    {"type": "text", "text": "I'll check."},
                    {"type": "tool_use", "id": "toolu_01A09q90qw90lq917835lq9", "name": "get_weather",
                     "input": {"city": "San Francisco"}}
                ],
                "usage": {"input_tokens": 20, "output_tokens": 9}
            }))
        })
        .await;
        let req = ChatRequest {
            parallel_tool_calls: Some(false),
            ..super::super::testkit::tool_round_trip(false)
        };
        let out = provider(&base)
            .chat(&req, ChunkSink::none())
            .await
            .expect("ok");
        assert_eq!(out.content, "I'll check.");
        assert_eq!(out.finish_reason, FinishReason::ToolCalls);
        assert_eq!(out.tool_calls.len(), 1);
        assert_eq!(out.tool_calls[0].id, "toolu_01A09q90qw90lq917835lq9");
        assert_eq!(out.tool_calls[0].name, "get_weather");
        assert_eq!(out.tool_calls[0].arguments, r#"{"city":"San Francisco"}"#);
        let body = log.lock().expect("lock")[0].body.clone();
        assert_eq!(
            body,
            json!({
                "model": DEFAULT_MODEL,
                "max_tokens": 1024,
                "system": "Be brief.",
                "messages": [
                    {"role": "user", "content": "Weather in Paris?"},
                    {"role": "assistant", "content": [
                        {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}}]},
                    {"role": "user", "content": [
                        {"type": "tool_result", "tool_use_id": "call_1", "content": "{\"celsius\":21}"}]}
                ],
                "tools": [{"name": "get_weather", "description": "Current weather", "input_schema": weather_schema()}],
                "tool_choice": {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": true}
            })
        );
    }

    #[tokio::test]
    async fn streamed_tool_use_and_a_schema_by_instruction() {
        // Streamed tool use: `content_block_start` names the call, its input
        // arrives as `input_json_delta` fragments
        // (docs.anthropic.com/en/docs/build-with-claude/streaming).
        let (base, log) = fake(|_| {
            sse(&[
                (Some("message_start"), json!({"type": "message_start", "message": {"model": "claude-x", "usage": {"input_tokens": 30, "output_tokens": 1}}}).to_string()),
                (Some("content_block_start"), json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}).to_string()),
                (Some("content_block_delta"), json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Checking"}}).to_string()),
                (Some("content_block_stop"), json!({"type": "content_block_stop", "index": 0}).to_string()),
                (Some("content_block_start"), json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}}).to_string()),
                (Some("content_block_delta"), json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": ""}}).to_string()),
                (Some("content_block_delta"), json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"city\": \"Pa"}}).to_string()),
                (Some("content_block_delta"), json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "ris\"}"}}).to_string()),
                (Some("content_block_stop"), json!({"type": "content_block_stop", "index": 1}).to_string()),
                (Some("message_delta"), json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null}, "usage": {"output_tokens": 40}}).to_string()),
                (Some("message_stop"), json!({"type": "message_stop"}).to_string()),
            ])
        })
        .await;
        let req = ChatRequest {
            response_format: ResponseFormat::JsonSchema {
                name: "w".into(),
                schema: super::super::testkit::WEATHER_SCHEMA.into(),
                strict: None,
            },
            ..super::super::testkit::tool_round_trip(true)
        };
        let out = provider(&base)
            .chat(&req, ChunkSink::none())
            .await
            .expect("ok");
        assert_eq!(out.content, "Checking");
        assert_eq!(out.finish_reason, FinishReason::ToolCalls);
        assert_eq!(
            (
                out.tool_calls[0].id.as_str(),
                out.tool_calls[0].arguments.as_str()
            ),
            ("toolu_1", r#"{"city": "Paris"}"#)
        );
        assert_eq!(out.usage, Some(Usage::new(30, 40)));
        let system = log.lock().expect("lock")[0].body["system"].clone();
        assert_eq!(
            system,
            json!(format!(
                "Be brief.\n\n{JSON_INSTRUCTION} It must match this JSON Schema: {}",
                super::super::testkit::WEATHER_SCHEMA
            ))
        );
    }
}
