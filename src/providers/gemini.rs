//! `gemini`: Google's Gemini API.
//!
//! `POST {base}/v1beta/models/{model}:generateContent` (streaming:
//! `:streamGenerateContent?alt=sse`) with the key in `x-goog-api-key`. Roles
//! are `user` and `model`; system messages become `systemInstruction`.
//! A 429's wait may arrive only in the JSON body (`RetryInfo.retryDelay`),
//! which the classifier reads.

use serde_json::{Value, json};

use super::driver::{Answer, Call, Flow, Framing, HttpProvider, VendorClient, usage};
use super::shape::{embedding_job, json_text, sampling};
use super::{ChunkSink, ProviderError, ProviderErrorKind, Secret};
use crate::task::{ChatRequest, FinishReason, ResponseFormat, TaskOutput, ToolChoice};

/// Model used when neither task nor configuration names one (vendor table).
pub const DEFAULT_MODEL: &str = super::vendor::GEMINI.default_model;

/// The Gemini provider.
#[derive(Debug, Clone)]
pub struct Gemini {
    base_url: String,
    key: Secret,
    models: Vec<String>,
    embedding_models: Vec<String>,
    http: VendorClient,
}

impl Gemini {
    /// A provider at `base_url` with `key`, serving `models` (first = default).
    pub fn new(base_url: &str, key: Secret, models: Vec<String>, http: VendorClient) -> Self {
        Gemini {
            base_url: base_url.trim_end_matches('/').to_owned(),
            key,
            models: if models.is_empty() {
                vec![DEFAULT_MODEL.to_owned()]
            } else {
                models
            },
            embedding_models: Vec::new(),
            http,
        }
    }

    /// Sets the models it embeds with (`batchEmbedContents`).
    pub fn with_embedding_models(mut self, models: Vec<String>) -> Self {
        self.embedding_models = models;
        self
    }

    fn body(req: &ChatRequest) -> Value {
        let system: Vec<Value> = req
            .messages
            .iter()
            .filter(|m| m.role == "system")
            .map(|m| json!({"text": m.content}))
            .collect();
        // Turns alternate between `user` and `model`; a model turn's tool
        // calls are `functionCall` parts, and tool results `functionResponse`
        // parts of a user turn, which name the function (Gemini matches
        // results to calls by name) and carry an object.
        let mut contents: Vec<(&'static str, Vec<Value>)> = Vec::new();
        for m in req.messages.iter().filter(|m| m.role != "system") {
            let (role, parts) = match m.role.as_str() {
                "assistant" => {
                    let mut parts = Vec::new();
                    if !m.content.is_empty() {
                        parts.push(json!({"text": m.content}));
                    }
                    parts.extend(m.tool_calls.iter().map(|c| {
                        json!({"functionCall": {"name": c.name, "args": json_text(&c.arguments)}})
                    }));
                    ("model", parts)
                }
                "tool" => {
                    let name = m
                        .tool_call_id
                        .as_deref()
                        .and_then(|id| req.tool_name(id))
                        .unwrap_or_default();
                    let response = match serde_json::from_str::<Value>(&m.content) {
                        Ok(v) if v.is_object() => v,
                        _ => json!({"content": m.content}),
                    };
                    (
                        "user",
                        vec![json!({"functionResponse": {"name": name, "response": response}})],
                    )
                }
                _ => ("user", vec![json!({"text": m.content})]),
            };
            match contents.last_mut() {
                Some((last, prev)) if *last == role => prev.extend(parts),
                _ => contents.push((role, parts)),
            }
        }
        let contents: Vec<Value> = contents
            .into_iter()
            .map(|(role, parts)| json!({"role": role, "parts": parts}))
            .collect();
        let mut body = json!({ "contents": contents });
        if !system.is_empty() {
            body["systemInstruction"] = json!({ "parts": system });
        }
        if !req.tools.is_empty() {
            // `parametersJsonSchema` takes JSON Schema as OpenAI clients
            // write it; `parameters` takes only an OpenAPI subset.
            let declarations: Vec<Value> = req
                .tools
                .iter()
                .map(|t| {
                    let mut d = json!({"name": t.name});
                    if let Some(desc) = &t.description {
                        d["description"] = json!(desc);
                    }
                    if let Some(p) = &t.parameters {
                        d["parametersJsonSchema"] = json_text(p);
                    }
                    d
                })
                .collect();
            body["tools"] = json!([{ "functionDeclarations": declarations }]);
            if let Some(choice) = &req.tool_choice {
                let config = match choice {
                    ToolChoice::Auto => json!({"mode": "AUTO"}),
                    ToolChoice::None => json!({"mode": "NONE"}),
                    ToolChoice::Required => json!({"mode": "ANY"}),
                    ToolChoice::Function(name) => {
                        json!({"mode": "ANY", "allowedFunctionNames": [name]})
                    }
                };
                body["toolConfig"] = json!({ "functionCallingConfig": config });
            }
        }
        let mut config = sampling(
            req,
            [
                "temperature",
                "topP",
                "maxOutputTokens",
                "seed",
                "presencePenalty",
                "frequencyPenalty",
            ],
        );
        if !req.stop.is_empty() {
            config.insert("stopSequences".into(), json!(req.stop));
        }
        if req.response_format.is_json() {
            config.insert("responseMimeType".into(), json!("application/json"));
        }
        if let ResponseFormat::JsonSchema { schema, .. } = &req.response_format {
            // Like `parametersJsonSchema`: full JSON Schema, where
            // `responseSchema` would reject e.g. `additionalProperties`.
            config.insert("responseJsonSchema".into(), json_text(schema));
        }
        if !config.is_empty() {
            body["generationConfig"] = Value::Object(config);
        }
        body
    }

    /// Reads one answer object (the whole answer, or one streamed piece):
    /// the first candidate's text and function calls, its finish reason,
    /// usage and model. A prompt blocked by safety filters is the
    /// request's fault.
    fn read(call: &Call<'_>, v: &Value, answer: &mut Answer) -> Result<(), ProviderError> {
        if let Some(reason) = v["promptFeedback"]["blockReason"].as_str() {
            return Err(call.error(
                ProviderErrorKind::Invalid,
                &format_args!("prompt blocked ({reason})"),
            ));
        }
        let candidate = &v["candidates"][0];
        for part in candidate["content"]["parts"]
            .as_array()
            .into_iter()
            .flatten()
        {
            // Thought summaries (`thought: true`) are not the answer.
            if part["thought"] == true {
                continue;
            }
            if let Some(text) = part["text"].as_str() {
                answer.text(text);
            }
            let f = &part["functionCall"];
            if f.is_object() {
                answer.tool_call(
                    f["id"].as_str().unwrap_or_default(),
                    f["name"].as_str().unwrap_or_default(),
                    &f["args"].to_string(),
                );
            }
        }
        if let Some(reason) = candidate["finishReason"].as_str() {
            answer.finish_reason = match reason {
                "MAX_TOKENS" => FinishReason::Length,
                "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII"
                | "IMAGE_SAFETY" => FinishReason::ContentFilter,
                _ => FinishReason::Stop,
            };
        }
        let m = &v["usageMetadata"];
        if let Some(u) = usage(&m["promptTokenCount"], &m["candidatesTokenCount"]) {
            answer.usage = Some(u);
        }
        answer.model_from(&v["modelVersion"]);
        Ok(())
    }
}

impl HttpProvider for Gemini {
    fn kind(&self) -> &str {
        "gemini"
    }

    fn models(&self) -> &[String] {
        &self.models
    }

    fn embedding_models(&self) -> &[String] {
        &self.embedding_models
    }

    /// `POST {base}/v1beta/models/{model}:batchEmbedContents` with one
    /// request per text (`outputDimensionality` when asked); the answer's
    /// `embeddings[i].values`. Gemini reports no token counts here.
    async fn call_embed(&self, req: &ChatRequest) -> Result<TaskOutput, ProviderError> {
        let (embed, model) = embedding_job(req, &self.embedding_models);
        let requests: Vec<Value> = embed
            .input
            .iter()
            .map(|text| {
                let mut r = json!({"model": format!("models/{model}"), "content": {"parts": [{"text": text}]}});
                if let Some(d) = embed.dimensions {
                    r["outputDimensionality"] = json!(d);
                }
                r
            })
            .collect();
        let request = self
            .http
            .post(format!(
                "{}/v1beta/models/{model}:batchEmbedContents",
                self.base_url
            ))
            .header("x-goog-api-key", self.key.expose())
            .json(&json!({ "requests": requests }));
        let call = self.http.call("gemini", Some(self.key.expose()));
        let v = call.json(call.send(request, "").await?).await?;
        let vectors: Vec<Value> = v["embeddings"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| e["values"].clone())
            .collect();
        call.embeddings(model, &vectors, embed.input.len(), None)
    }

    async fn call(&self, req: &ChatRequest, sink: ChunkSink) -> Result<TaskOutput, ProviderError> {
        let key = Some(self.key.expose());
        let model = req.model.clone().unwrap_or_else(|| self.models[0].clone());
        let url = if req.stream {
            format!(
                "{}/v1beta/models/{model}:streamGenerateContent?alt=sse",
                self.base_url
            )
        } else {
            format!("{}/v1beta/models/{model}:generateContent", self.base_url)
        };
        let request = self
            .http
            .post(url)
            .header("x-goog-api-key", self.key.expose())
            .json(&Self::body(req));
        let call = self.http.call("gemini", key);
        let resp = call.send(request, "").await?;
        let mut answer = call.answer(model);
        if req.stream {
            // Gemini's stream has no end marker: the body's end is the end.
            return call
                .stream(resp, Framing::Sse, answer, &sink, |data, answer| {
                    let v: Value = serde_json::from_str(data).map_err(|e| call.unexpected(&e))?;
                    Self::read(&call, &v, answer)?;
                    Ok(Flow::More)
                })
                .await;
        }
        let v = call.json(resp).await?;
        Self::read(&call, &v, &mut answer)?;
        call.output(answer)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::{fake, json as json_resp, sse};
    use super::*;
    use crate::providers::Provider;
    use crate::task::{ChatMessage, Usage};

    const KEY: &str = "AIzaSyTest0123456789abcdefghij";

    fn request(stream: bool) -> ChatRequest {
        ChatRequest {
            messages: vec![
                ChatMessage::new("system", "Answer in French."),
                ChatMessage::new("user", "Hello"),
                ChatMessage::new("assistant", "Bonjour"),
                ChatMessage::new("user", "Thanks"),
            ],
            model: None,
            temperature: Some(0.1),
            max_tokens: Some(50),
            stream,
            ..ChatRequest::default()
        }
    }

    fn provider(base: &str) -> Gemini {
        Gemini::new(
            base,
            Secret::new(KEY),
            vec![],
            super::super::testkit::client(),
        )
    }

    #[tokio::test]
    async fn generate_content_request_and_answer() {
        let (base, log) = fake(|_| {
            json_resp(200, &[], &json!({
                "candidates": [{"content": {"role": "model", "parts": [{"text": "De rien"}, {"text": "."}]}, "finishReason": "STOP"}],
                "usageMetadata": {"promptTokenCount": 8, "candidatesTokenCount": 3, "totalTokenCount": 11},
                "modelVersion": "gemini-2.0-flash-001"
            }))
        })
        .await;
        let out = provider(&base)
            .chat(&request(false), ChunkSink::none())
            .await
            .expect("ok");
        assert_eq!(
            (out.content.as_str(), out.model.as_str()),
            ("De rien.", "gemini-2.0-flash-001")
        );
        assert_eq!(out.usage, Some(Usage::new(8, 3)));
        let seen = log.lock().expect("lock")[0].clone();
        assert_eq!(seen.path, "/v1beta/models/gemini-2.0-flash:generateContent");
        assert_eq!(seen.header("x-goog-api-key"), Some(KEY));
        assert!(!seen.path.contains(KEY), "the key never goes in the URL");
        assert_eq!(
            seen.body,
            json!({
                "contents": [
                    {"role": "user", "parts": [{"text": "Hello"}]},
                    {"role": "model", "parts": [{"text": "Bonjour"}]},
                    {"role": "user", "parts": [{"text": "Thanks"}]}
                ],
                "systemInstruction": {"parts": [{"text": "Answer in French."}]},
                "generationConfig": {"temperature": 0.1f32, "maxOutputTokens": 50}
            })
        );
    }

    #[tokio::test]
    async fn stop_sequences_and_json_mime_type() {
        let (base, log) = fake(|_| {
            json_resp(
                200,
                &[],
                &json!({
                    "candidates": [{"content": {"role": "model", "parts": [{"text": "{}"}]}}]
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
        assert_eq!(
            body["generationConfig"],
            json!({
                "temperature": 0.1f32,
                "maxOutputTokens": 50,
                "stopSequences": ["END"],
                "responseMimeType": "application/json"
            })
        );
    }

    #[tokio::test]
    async fn stream_generate_content_over_sse() {
        let (base, log) = fake(|_| {
            sse(&[
                (None, json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "De "}]}}]}).to_string()),
                (None, json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "rien"}]}, "finishReason": "STOP"}], "usageMetadata": {"promptTokenCount": 8, "candidatesTokenCount": 2}}).to_string()),
            ])
        })
        .await;
        let (tx, mut rx) = tokio::sync::mpsc::channel(8);
        let out = provider(&base)
            .chat(&request(true), ChunkSink::new(tx))
            .await
            .expect("ok");
        assert_eq!(out.content, "De rien");
        assert_eq!(out.usage, Some(Usage::new(8, 2)));
        assert_eq!(rx.recv().await.as_deref(), Some("De "));
        assert_eq!(rx.recv().await.as_deref(), Some("rien"));
        assert_eq!(
            log.lock().expect("lock")[0].path,
            "/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse"
        );
    }

    #[tokio::test]
    async fn retry_delay_from_the_body_quota_and_blocked_prompts() {
        let (base, _) = fake(|s| match s.body["contents"][0]["parts"][0]["text"].as_str() {
            Some("busy") => json_resp(429, &[], &json!({"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "message": "Resource has been exhausted (e.g. check quota).",
                "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "42s"}]}})),
            Some("daily") => json_resp(429, &[], &json!({"error": {"code": 429, "status": "RESOURCE_EXHAUSTED",
                "message": "You exceeded your current quota. Quota exceeded for quota metric 'Generate Content API requests per day'",
                "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "3600s"}]}})),
            Some("key") => json_resp(400, &[], &json!({"error": {"code": 400, "status": "INVALID_ARGUMENT", "message": format!("API key not valid: {KEY}")}})),
            _ => json_resp(200, &[], &json!({"promptFeedback": {"blockReason": "SAFETY"}})),
        })
        .await;
        let p = provider(&base);
        let ask = |content: &str| ChatRequest {
            messages: vec![ChatMessage::new("user", content)],
            ..Default::default()
        };
        let e = p
            .chat(&ask("busy"), ChunkSink::none())
            .await
            .expect_err("429");
        assert_eq!(
            e.kind,
            ProviderErrorKind::RateLimited {
                retry_after_ms: 42_000
            }
        );
        let e = p
            .chat(&ask("daily"), ChunkSink::none())
            .await
            .expect_err("quota");
        assert_eq!(
            e.kind,
            ProviderErrorKind::QuotaExhausted {
                retry_after_ms: 3_600_000
            }
        );
        let e = p
            .chat(&ask("key"), ChunkSink::none())
            .await
            .expect_err("bad key");
        assert!(!e.message.contains(KEY), "{}", e.message);
        let e = p
            .chat(&ask("unsafe"), ChunkSink::none())
            .await
            .expect_err("blocked");
        assert_eq!(e.kind, ProviderErrorKind::Invalid);
        assert!(e.message.contains("SAFETY"));
    }

    #[tokio::test]
    async fn function_calling_both_ways() {
        // A function call as Gemini's function calling guide shows it
        // (ai.google.dev/gemini-api/docs/function-calling): a `functionCall`
        // part with `args` as an object, no id, `finishReason: "STOP"`.
        let (base, log) = fake(|_| {
            json_resp(200, &[], &json!({
                "candidates": [{"content": {"role": "model", "parts": [
                    {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}]},
                    "finishReason": "STOP", "index": 0}],
                "usageMetadata": {"promptTokenCount": 40, "candidatesTokenCount": 6, "totalTokenCount": 46},
                "modelVersion": "gemini-2.0-flash"
            }))
        })
        .await;
        let req = ChatRequest {
            seed: Some(3),
            response_format: ResponseFormat::JsonSchema {
                name: "w".into(),
                schema: super::super::testkit::WEATHER_SCHEMA.into(),
                strict: None,
            },
            ..super::super::testkit::tool_round_trip(false)
        };
        let out = provider(&base)
            .chat(&req, ChunkSink::none())
            .await
            .expect("ok");
        // Gemini ends a calling turn with STOP: OpenAI calls it tool_calls.
        assert_eq!(out.finish_reason, FinishReason::ToolCalls);
        assert_eq!(out.tool_calls.len(), 1);
        assert!(
            out.tool_calls[0].id.starts_with("call_"),
            "{:?}",
            out.tool_calls
        );
        assert_eq!(out.tool_calls[0].arguments, r#"{"city":"Paris"}"#);
        assert_eq!(out.usage, Some(Usage::new(40, 6)));
        let schema: Value =
            serde_json::from_str(super::super::testkit::WEATHER_SCHEMA).expect("schema");
        let body = log.lock().expect("lock")[0].body.clone();
        assert_eq!(
            body,
            json!({
                "contents": [
                    {"role": "user", "parts": [{"text": "Weather in Paris?"}]},
                    {"role": "model", "parts": [{"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}]},
                    {"role": "user", "parts": [{"functionResponse": {"name": "get_weather", "response": {"celsius": 21}}}]}
                ],
                "systemInstruction": {"parts": [{"text": "Be brief."}]},
                "tools": [{"functionDeclarations": [{"name": "get_weather", "description": "Current weather",
                    "parametersJsonSchema": schema}]}],
                "toolConfig": {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}},
                "generationConfig": {"seed": 3, "responseMimeType": "application/json", "responseJsonSchema": schema}
            })
        );
    }

    #[tokio::test]
    async fn safety_and_length_map_to_openai_reasons() {
        let (base, _) = fake(|s| {
            let reason = if s.body["contents"][0]["parts"][0]["text"] == "long" { "MAX_TOKENS" } else { "SAFETY" };
            json_resp(200, &[], &json!({
                "candidates": [{"content": {"role": "model", "parts": [{"text": "x"}]}, "finishReason": reason}]
            }))
        })
        .await;
        let ask = |text: &str| ChatRequest {
            messages: vec![ChatMessage::new("user", text)],
            ..ChatRequest::default()
        };
        let p = provider(&base);
        let long = p.chat(&ask("long"), ChunkSink::none()).await.expect("ok");
        assert_eq!(long.finish_reason, FinishReason::Length);
        // No usageMetadata: usage is absent, not zero.
        assert_eq!(long.usage, None);
        let unsafe_ = p.chat(&ask("other"), ChunkSink::none()).await.expect("ok");
        assert_eq!(unsafe_.finish_reason, FinishReason::ContentFilter);
    }

    #[tokio::test]
    async fn batch_embed_contents() {
        // `batchEmbedContents` as Gemini's embeddings reference shows it
        // (ai.google.dev/api/embeddings): one request per text, naming
        // `models/<model>`; `embeddings[i].values` back, no token counts.
        let (base, log) = fake(|_| {
            json_resp(
                200,
                &[],
                &json!({"embeddings": [{"values": [0.1, 0.2]}, {"values": [0.3, 0.4]}]}),
            )
        })
        .await;
        let p = provider(&base).with_embedding_models(vec!["gemini-embedding-001".into()]);
        let req = ChatRequest {
            embed: Some(crate::task::EmbedRequest {
                input: vec!["a".into(), "b".into()],
                dimensions: Some(2),
            }),
            ..ChatRequest::default()
        };
        let out = p.embed(&req).await.expect("ok");
        assert_eq!(out.embeddings, [vec![0.1, 0.2], vec![0.3, 0.4]]);
        assert_eq!(out.usage, None);
        let seen = log.lock().expect("lock")[0].clone();
        assert_eq!(
            seen.path,
            "/v1beta/models/gemini-embedding-001:batchEmbedContents"
        );
        assert_eq!(seen.header("x-goog-api-key"), Some(KEY));
        assert_eq!(
            seen.body,
            json!({"requests": [
                {"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "a"}]}, "outputDimensionality": 2},
                {"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "b"}]}, "outputDimensionality": 2}
            ]})
        );
    }
}
