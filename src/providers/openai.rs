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

use super::driver::{Flow, Framing, HttpProvider, VendorClient, usage};
use super::shape::{embedding_job, json_text, sampling};
use super::vendor::Vendor;
use super::{ChunkSink, ProviderError, Secret};
use crate::task::{
    ChatMessage, ChatRequest, FinishReason, ResponseFormat, TaskOutput, Tool, ToolChoice,
};

/// An OpenAI-compatible provider.
#[derive(Debug, Clone)]
pub struct OpenAiCompat {
    kind: String,
    base_url: String,
    key: Option<Secret>,
    default_model: String,
    models: Vec<String>,
    embedding_models: Vec<String>,
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
            embedding_models: Vec::new(),
            http,
        }
    }

    /// Sets the models it embeds with (`POST {base}/embeddings`).
    pub fn with_embedding_models(mut self, models: Vec<String>) -> Self {
        self.embedding_models = models;
        self
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
            "messages": req.messages.iter().map(message).collect::<Vec<_>>(),
            "stream": stream,
        });
        let names = [
            "temperature",
            "top_p",
            "max_tokens",
            "seed",
            "presence_penalty",
            "frequency_penalty",
        ];
        for (name, v) in sampling(req, names) {
            body[name] = v;
        }
        if let Some(p) = req.parallel_tool_calls {
            body["parallel_tool_calls"] = json!(p);
        }
        if let Some(c) = &req.tool_choice {
            body["tool_choice"] = tool_choice(c);
        }
        if !req.stop.is_empty() {
            body["stop"] = json!(req.stop);
        }
        match &req.response_format {
            ResponseFormat::Text => {}
            ResponseFormat::JsonObject => {
                body["response_format"] = json!({"type": "json_object"});
            }
            ResponseFormat::JsonSchema {
                name,
                schema,
                strict,
            } => {
                let mut spec = json!({"name": name, "schema": json_text(schema)});
                if let Some(strict) = strict {
                    spec["strict"] = json!(strict);
                }
                body["response_format"] = json!({"type": "json_schema", "json_schema": spec});
            }
        }
        if !req.tools.is_empty() {
            body["tools"] = req.tools.iter().map(tool).collect();
        }
        if stream {
            body["stream_options"] = json!({"include_usage": true});
        }
        body
    }
}

/// One message in OpenAI's format.
fn message(m: &ChatMessage) -> Value {
    let mut v = json!({"role": m.role, "content": m.content});
    if let Some(name) = &m.name {
        v["name"] = json!(name);
    }
    if !m.tool_calls.is_empty() {
        if m.content.is_empty() {
            v["content"] = Value::Null;
        }
        v["tool_calls"] = m
            .tool_calls
            .iter()
            .map(|c| {
                json!({"id": c.id, "type": "function",
                       "function": {"name": c.name, "arguments": c.arguments}})
            })
            .collect();
    }
    if let Some(id) = &m.tool_call_id {
        v["tool_call_id"] = json!(id);
    }
    v
}

fn tool(t: &Tool) -> Value {
    let mut f = json!({"name": t.name});
    if let Some(d) = &t.description {
        f["description"] = json!(d);
    }
    if let Some(p) = &t.parameters {
        f["parameters"] = json_text(p);
    }
    if let Some(strict) = t.strict {
        f["strict"] = json!(strict);
    }
    json!({"type": "function", "function": f})
}

fn tool_choice(c: &ToolChoice) -> Value {
    match c {
        ToolChoice::Auto => json!("auto"),
        ToolChoice::None => json!("none"),
        ToolChoice::Required => json!("required"),
        ToolChoice::Function(name) => json!({"type": "function", "function": {"name": name}}),
    }
}

/// OpenAI's `finish_reason` (`function_call` is the pre-tools name).
fn finish_reason(v: &Value) -> Option<FinishReason> {
    Some(match v.as_str()? {
        "length" => FinishReason::Length,
        "tool_calls" | "function_call" => FinishReason::ToolCalls,
        "content_filter" => FinishReason::ContentFilter,
        _ => FinishReason::Stop,
    })
}

impl HttpProvider for OpenAiCompat {
    fn kind(&self) -> &str {
        &self.kind
    }

    fn models(&self) -> &[String] {
        &self.models
    }

    fn embedding_models(&self) -> &[String] {
        &self.embedding_models
    }

    /// `POST {base}/embeddings` with `{model, input: [...], encoding_format:
    /// "float", dimensions?}`; the answer's `data[i].embedding` (in `index`
    /// order) and `usage.prompt_tokens`.
    async fn call_embed(&self, req: &ChatRequest) -> Result<TaskOutput, ProviderError> {
        let (embed, model) = embedding_job(req, &self.embedding_models);
        let mut body = json!({"model": model, "input": embed.input, "encoding_format": "float"});
        if let Some(d) = embed.dimensions {
            body["dimensions"] = json!(d);
        }
        let key = self.key.as_ref().map(Secret::expose);
        let mut request = self
            .http
            .post(format!("{}/embeddings", self.base_url))
            .json(&body);
        if let Some(k) = key {
            request = request.bearer_auth(k);
        }
        let call = self.http.call(&self.kind, key);
        let v = call.json(call.send(request, "").await?).await?;
        let mut data: Vec<&Value> = v["data"].as_array().into_iter().flatten().collect();
        data.sort_by_key(|d| d["index"].as_u64().unwrap_or(u64::MAX));
        let vectors: Vec<Value> = data.iter().map(|d| d["embedding"].clone()).collect();
        let model = v["model"].as_str().map_or(model, str::to_owned);
        call.embeddings(
            model,
            &vectors,
            embed.input.len(),
            usage(&v["usage"]["prompt_tokens"], &Value::Null),
        )
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
            let message = &v["choices"][0]["message"];
            if !message.is_object() {
                return Err(call.unexpected(&"no choices[0].message"));
            }
            answer.text(message["content"].as_str().unwrap_or_default());
            for c in message["tool_calls"].as_array().into_iter().flatten() {
                answer.tool_call(
                    c["id"].as_str().unwrap_or_default(),
                    c["function"]["name"].as_str().unwrap_or_default(),
                    c["function"]["arguments"].as_str().unwrap_or_default(),
                );
            }
            if let Some(r) = finish_reason(&v["choices"][0]["finish_reason"]) {
                answer.finish_reason = r;
            }
            answer.model_from(&v["model"]);
            answer.usage = usage(
                &v["usage"]["prompt_tokens"],
                &v["usage"]["completion_tokens"],
            );
            return call.output(answer);
        }
        call.stream(resp, Framing::Sse, answer, &sink, |data, answer| {
            if data == "[DONE]" {
                return Ok(Flow::End);
            }
            let v: Value = serde_json::from_str(data).map_err(|e| call.unexpected(&e))?;
            answer.model_from(&v["model"]);
            if v["usage"].is_object() {
                answer.usage = usage(
                    &v["usage"]["prompt_tokens"],
                    &v["usage"]["completion_tokens"],
                );
            }
            let choice = &v["choices"][0];
            let delta = &choice["delta"];
            answer.text(delta["content"].as_str().unwrap_or_default());
            for c in delta["tool_calls"].as_array().into_iter().flatten() {
                let (id, name) = (c["id"].as_str(), c["function"]["name"].as_str());
                let arguments = c["function"]["arguments"].as_str().unwrap_or_default();
                // `index` says which call a fragment continues; a server
                // that omits it sends each call whole.
                match c["index"].as_u64() {
                    Some(index) => answer.tool_call_piece(index, id, name, arguments),
                    None => answer.tool_call(
                        id.unwrap_or_default(),
                        name.unwrap_or_default(),
                        arguments,
                    ),
                }
            }
            if let Some(r) = finish_reason(&choice["finish_reason"]) {
                answer.finish_reason = r;
            }
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
    use crate::task::{ChatMessage, Usage};

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
        assert_eq!(out.usage, Some(Usage::new(12, 3)));
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
            response_format: ResponseFormat::JsonObject,
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
        assert_eq!(out.usage, Some(Usage::new(5, 2)));
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

    #[tokio::test]
    async fn tool_calls_both_ways() {
        // The answer is the tool-call example of OpenAI's Chat Completions
        // reference (platform.openai.com/docs/api-reference/chat/object):
        // `content: null`, arguments as a JSON string,
        // `finish_reason: "tool_calls"`.
        let (base, seen) = fake(|_| {
            testkit::json(200, &[], &json!({
                "id": "chatcmpl-abc123", "object": "chat.completion", "created": 1699896916,
                "model": "gpt-4o-mini",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": null,
                    "tool_calls": [{"id": "call_abc123", "type": "function",
                        "function": {"name": "get_weather", "arguments": "{\n\"city\": \"Boston\"\n}"}}]},
                    "logprobs": null, "finish_reason": "tool_calls"}],
                "usage": {"prompt_tokens": 82, "completion_tokens": 17, "total_tokens": 99}
            }))
        })
        .await;
        let req = ChatRequest {
            seed: Some(7),
            top_p: Some(0.5),
            presence_penalty: Some(0.1),
            frequency_penalty: Some(0.2),
            parallel_tool_calls: Some(false),
            ..testkit::tool_round_trip(false)
        };
        let out = provider(&base, "k")
            .chat(&req, ChunkSink::none())
            .await
            .expect("ok");
        assert_eq!(out.content, "");
        assert_eq!(out.finish_reason, FinishReason::ToolCalls);
        assert_eq!(
            out.tool_calls,
            [crate::task::ToolCall {
                id: "call_abc123".into(),
                name: "get_weather".into(),
                arguments: "{\n\"city\": \"Boston\"\n}".into(),
            }]
        );
        assert_eq!(out.usage, Some(Usage::new(82, 17)));
        let body = seen.lock().expect("lock")[0].body.clone();
        assert_eq!(
            body,
            json!({
                "model": "llama-3.1-8b-instant",
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "Weather in Paris?"},
                    {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
                        "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
                    {"role": "tool", "content": "{\"celsius\":21}", "tool_call_id": "call_1"}
                ],
                "stream": false,
                "top_p": 0.5f32, "seed": 7, "presence_penalty": 0.1f32, "frequency_penalty": 0.2f32,
                "parallel_tool_calls": false,
                "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
                "tools": [{"type": "function", "function": {"name": "get_weather",
                    "description": "Current weather",
                    "parameters": serde_json::from_str::<Value>(testkit::WEATHER_SCHEMA).expect("schema")}}]
            })
        );
    }

    #[tokio::test]
    async fn json_schema_is_sent_natively() {
        let (base, seen) = fake(|_| {
            testkit::json(200, &[], &json!({
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "{}"}, "finish_reason": "length"}]
            }))
        })
        .await;
        let req = ChatRequest {
            response_format: ResponseFormat::JsonSchema {
                name: "w".into(),
                schema: testkit::WEATHER_SCHEMA.into(),
                strict: Some(true),
            },
            ..request(false)
        };
        let out = provider(&base, "k")
            .chat(&req, ChunkSink::none())
            .await
            .expect("ok");
        assert_eq!(out.finish_reason, FinishReason::Length);
        // No usage in the answer: absent, not zero.
        assert_eq!(out.usage, None);
        let body = seen.lock().expect("lock")[0].body.clone();
        assert_eq!(
            body["response_format"],
            json!({"type": "json_schema", "json_schema": {"name": "w", "strict": true,
                "schema": serde_json::from_str::<Value>(testkit::WEATHER_SCHEMA).expect("schema")}})
        );
    }

    #[tokio::test]
    async fn streamed_tool_call_fragments_are_joined_and_usage_stays_absent() {
        // OpenAI streams a call's arguments in fragments, each chunk naming
        // the call by `index`; only the first carries `id` and `name`
        // (platform.openai.com/docs/guides/function-calling, "Streaming").
        // This server sends no usage chunk, as many compatible servers do.
        let (base, _) = fake(|_| {
            let events = [
                r#"{"model":"m1","choices":[{"index":0,"delta":{"role":"assistant","content":null,"tool_calls":[{"index":0,"id":"call_x","type":"function","function":{"name":"get_weather","arguments":""}}]},"finish_reason":null}]}"#,
                r#"{"model":"m1","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"ci"}}]},"finish_reason":null}]}"#,
                r#"{"model":"m1","choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"id":"call_y","type":"function","function":{"name":"get_time","arguments":"{}"}}]},"finish_reason":null}]}"#,
                r#"{"model":"m1","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"ty\":\"Paris\"}"}}]},"finish_reason":null}]}"#,
                r#"{"model":"m1","choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}"#,
            ];
            let mut body: String = events.iter().map(|e| format!("data: {e}\n\n")).collect();
            body.push_str("data: [DONE]\n\n");
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(Body::from(body))
                .expect("response")
        })
        .await;
        let out = provider(&base, "k")
            .chat(&testkit::tool_round_trip(true), ChunkSink::none())
            .await
            .expect("ok");
        let calls: Vec<(&str, &str, &str)> = out
            .tool_calls
            .iter()
            .map(|c| (c.id.as_str(), c.name.as_str(), c.arguments.as_str()))
            .collect();
        assert_eq!(
            calls,
            [
                ("call_x", "get_weather", r#"{"city":"Paris"}"#),
                ("call_y", "get_time", "{}")
            ]
        );
        assert_eq!(out.finish_reason, FinishReason::ToolCalls);
        assert_eq!(out.usage, None);
    }

    fn embed_request(model: Option<&str>) -> ChatRequest {
        ChatRequest {
            model: model.map(str::to_owned),
            embed: Some(crate::task::EmbedRequest {
                input: vec!["first text".into(), "second".into()],
                dimensions: Some(2),
            }),
            ..ChatRequest::default()
        }
    }

    #[tokio::test]
    async fn embeddings_in_index_order() {
        // The answer of OpenAI's embeddings reference
        // (platform.openai.com/docs/api-reference/embeddings/create), with
        // the two items out of order: `index` decides.
        let (base, seen) = fake(|_| {
            testkit::json(200, &[], &json!({
                "object": "list",
                "data": [
                    {"object": "embedding", "index": 1, "embedding": [0.5, -0.5]},
                    {"object": "embedding", "index": 0, "embedding": [0.0023064255, -0.009327292]}
                ],
                "model": "text-embedding-3-small",
                "usage": {"prompt_tokens": 8, "total_tokens": 8}
            }))
        })
        .await;
        let p = provider(&base, "k").with_embedding_models(vec!["text-embedding-3-small".into()]);
        assert_eq!(Provider::embedding_models(&p), ["text-embedding-3-small"]);
        let out = p.embed(&embed_request(None)).await.expect("ok");
        assert_eq!(
            out.embeddings,
            [vec![0.002_306_425_5, -0.009_327_292], vec![0.5, -0.5]]
        );
        assert_eq!(out.usage, Some(Usage::new(8, 0)));
        assert_eq!(out.model, "text-embedding-3-small");
        let s = seen.lock().expect("lock")[0].clone();
        assert_eq!(s.path, "/v1/embeddings");
        assert_eq!(s.header("authorization"), Some("Bearer k"));
        assert_eq!(
            s.body,
            json!({"model": "text-embedding-3-small", "input": ["first text", "second"],
                   "encoding_format": "float", "dimensions": 2})
        );
    }

    #[tokio::test]
    async fn embeddings_that_do_not_match_the_inputs_are_refused() {
        let (base, _) = fake(|_| {
            testkit::json(
                200,
                &[],
                &json!({"data": [{"index": 0, "embedding": [1.0]}]}),
            )
        })
        .await;
        let e = provider(&base, "k")
            .embed(&embed_request(Some("m")))
            .await
            .expect_err("one vector for two texts");
        assert_eq!(e.kind, ProviderErrorKind::Transient);
    }
}
