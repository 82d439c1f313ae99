//! `ollama`: a local Ollama server's native `/api/chat` (DeepSeek and other
//! local models on a GPU worker). No key. Streaming answers are NDJSON: one
//! `{message:{content}, done:false}` object per piece, then a `done:true`
//! object with the token counts.

use serde_json::{Value, json};

use super::driver::{Answer, Flow, Framing, HttpProvider, VendorClient, usage};
use super::shape::{embedding_job, json_text, sampling};
use super::{ChunkSink, ProviderError, ProviderErrorKind};
use crate::task::{ChatRequest, FinishReason, ResponseFormat, TaskOutput};

/// Model used when neither the task nor the configuration names one (vendor table).
pub const DEFAULT_MODEL: &str = super::vendor::OLLAMA.default_model;

/// Normalises `OLLAMA_HOST`-style values (`host`, `host:port`, or a URL).
pub fn normalize_url(raw: &str) -> String {
    let raw = raw.trim().trim_end_matches('/');
    // `OLLAMA_HOST=0.0.0.0` means "listen everywhere" to the server; a client
    // reaches that server on localhost.
    let raw = raw.replace("0.0.0.0", "localhost");
    if raw.starts_with("http://") || raw.starts_with("https://") {
        // A full URL means what it says (e.g. a proxy on the default port).
        return raw;
    }
    if raw
        .rsplit_once(':')
        .is_some_and(|(_, p)| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
    {
        format!("http://{raw}")
    } else {
        format!("http://{raw}:11434")
    }
}

/// The Ollama provider.
#[derive(Debug, Clone)]
pub struct Ollama {
    base_url: String,
    models: Vec<String>,
    embedding_models: Vec<String>,
    http: VendorClient,
}

impl Ollama {
    /// A provider for the server at `base_url` serving `models` (first = default).
    pub fn new(base_url: &str, models: Vec<String>, http: VendorClient) -> Self {
        Ollama {
            base_url: normalize_url(base_url),
            models: if models.is_empty() {
                vec![DEFAULT_MODEL.to_owned()]
            } else {
                models
            },
            embedding_models: Vec::new(),
            http,
        }
    }

    /// Sets the models it embeds with (`/api/embed`; whatever was pulled).
    pub fn with_embedding_models(mut self, models: Vec<String>) -> Self {
        self.embedding_models = models;
        self
    }
}

/// Reads one object of an answer (the whole answer, or one streamed
/// piece): text, tool calls (arguments arrive as an object, each call
/// whole), and on the last (`done: true`) object the model, token counts
/// and why it stopped.
fn read(v: &Value, answer: &mut Answer) {
    answer.text(v["message"]["content"].as_str().unwrap_or_default());
    for c in v["message"]["tool_calls"].as_array().into_iter().flatten() {
        answer.tool_call(
            c["id"].as_str().unwrap_or_default(),
            c["function"]["name"].as_str().unwrap_or_default(),
            &c["function"]["arguments"].to_string(),
        );
    }
    if v["done"] == true {
        answer.model_from(&v["model"]);
        answer.usage = usage(&v["prompt_eval_count"], &v["eval_count"]);
        if v["done_reason"] == "length" {
            answer.finish_reason = FinishReason::Length;
        }
    }
}

/// The request body of `/api/chat`.
fn body(req: &ChatRequest, model: &str) -> Value {
    let messages: Vec<Value> = req
        .messages
        .iter()
        .map(|m| {
            let mut v = json!({"role": m.role, "content": m.content});
            if !m.tool_calls.is_empty() {
                v["tool_calls"] = m
                    .tool_calls
                    .iter()
                    .map(|c| {
                        json!({"function": {"name": c.name, "arguments": json_text(&c.arguments)}})
                    })
                    .collect();
            }
            if let Some(name) = m.tool_call_id.as_deref().and_then(|id| req.tool_name(id)) {
                v["tool_name"] = json!(name);
            }
            v
        })
        .collect();
    let mut body = json!({"model": model, "messages": messages, "stream": req.stream});
    if !req.tools.is_empty() {
        // Ollama takes OpenAI's tool format; it has no tool_choice.
        body["tools"] = req
            .tools
            .iter()
            .map(|t| {
                json!({"type": "function", "function": {
                    "name": t.name,
                    "description": t.description.clone().unwrap_or_default(),
                    "parameters": t.parameters.as_deref().map_or_else(
                        || json!({"type": "object", "properties": {}}),
                        json_text,
                    ),
                }})
            })
            .collect();
    }
    let mut options = sampling(
        req,
        [
            "temperature",
            "top_p",
            "num_predict",
            "seed",
            "presence_penalty",
            "frequency_penalty",
        ],
    );
    if !req.stop.is_empty() {
        options.insert("stop".into(), json!(req.stop));
    }
    match &req.response_format {
        ResponseFormat::Text => {}
        ResponseFormat::JsonObject => body["format"] = json!("json"),
        // Ollama constrains output to a JSON Schema given as `format`.
        ResponseFormat::JsonSchema { schema, .. } => body["format"] = json_text(schema),
    }
    if !options.is_empty() {
        body["options"] = Value::Object(options);
    }
    body
}

impl HttpProvider for Ollama {
    fn kind(&self) -> &str {
        "ollama"
    }

    fn models(&self) -> &[String] {
        &self.models
    }

    fn embedding_models(&self) -> &[String] {
        &self.embedding_models
    }

    /// `POST /api/embed` with `{model, input: [...], dimensions?}`; the
    /// answer's `embeddings` and `prompt_eval_count`.
    async fn call_embed(&self, req: &ChatRequest) -> Result<TaskOutput, ProviderError> {
        let (embed, model) = embedding_job(req, &self.embedding_models);
        let mut body = json!({"model": model, "input": embed.input});
        if let Some(d) = embed.dimensions {
            body["dimensions"] = json!(d);
        }
        let request = self
            .http
            .post(format!("{}/api/embed", self.base_url))
            .json(&body);
        let call = self.http.call("ollama", None);
        let v = call
            .json(call.send(request, " (is `ollama serve` running?)").await?)
            .await?;
        let vectors = v["embeddings"].as_array().cloned().unwrap_or_default();
        call.embeddings(
            model,
            &vectors,
            embed.input.len(),
            usage(&v["prompt_eval_count"], &Value::Null),
        )
    }

    async fn call(&self, req: &ChatRequest, sink: ChunkSink) -> Result<TaskOutput, ProviderError> {
        let model = req.model.clone().unwrap_or_else(|| self.models[0].clone());
        let request = self
            .http
            .post(format!("{}/api/chat", self.base_url))
            .json(&body(req, &model));
        let call = self.http.call("ollama", None);
        let resp = call.send(request, " (is `ollama serve` running?)").await?;
        let mut answer = call.answer(model);
        if req.stream {
            return call
                .stream(resp, Framing::Ndjson, answer, &sink, |line, answer| {
                    let v: Value = serde_json::from_str(line).map_err(|e| call.unexpected(&e))?;
                    if let Some(e) = v["error"].as_str() {
                        return Err(call.error(ProviderErrorKind::Transient, &e));
                    }
                    read(&v, answer);
                    Ok(if v["done"] == true {
                        Flow::End
                    } else {
                        Flow::More
                    })
                })
                .await;
        }
        let v = call.json(resp).await?;
        if !v["message"].is_object() {
            return Err(call.unexpected(&"no message"));
        }
        read(&v, &mut answer);
        call.output(answer)
    }
}

#[cfg(test)]
mod tests {
    use crate::providers::Provider;
    use axum::body::Body;
    use axum::response::Response;

    use super::super::testkit::{self, Log};
    use super::*;
    use crate::task::{ChatMessage, Usage};

    async fn fake(
        reply: impl Fn(&Value) -> Response + Clone + Send + Sync + 'static,
    ) -> (String, Log) {
        testkit::fake(move |s| reply(&s.body)).await
    }

    fn request(stream: bool) -> ChatRequest {
        ChatRequest {
            messages: vec![ChatMessage::new("user", "why is the sky blue?")],
            model: Some("deepseek-r1:8b".into()),
            temperature: Some(0.5),
            max_tokens: Some(100),
            stream,
            ..ChatRequest::default()
        }
    }

    fn provider(base: &str) -> Ollama {
        crate::ensure_crypto_provider();
        Ollama::new(base, vec![], super::super::testkit::client())
    }

    #[tokio::test]
    async fn native_chat_request_and_answer() {
        let (base, seen) = fake(|_| {
            Response::builder()
                .header("content-type", "application/json")
                .body(Body::from(
                    json!({"model": "deepseek-r1:8b", "message": {"role": "assistant", "content": "Rayleigh."}, "done": true, "prompt_eval_count": 9, "eval_count": 4}).to_string(),
                ))
                .expect("response")
        })
        .await;
        let out = provider(&base)
            .chat(&request(false), ChunkSink::none())
            .await
            .expect("ok");
        assert_eq!(
            (out.content.as_str(), out.provider.as_str()),
            ("Rayleigh.", "ollama")
        );
        assert_eq!(out.usage, Some(Usage::new(9, 4)));
        assert_eq!(
            seen.lock().expect("lock")[0].body,
            json!({
                "model": "deepseek-r1:8b",
                "messages": [{"role": "user", "content": "why is the sky blue?"}],
                "stream": false,
                "options": {"temperature": 0.5, "num_predict": 100}
            })
        );
    }

    #[tokio::test]
    async fn stop_sequences_and_json_format() {
        let (base, seen) = fake(|_| {
            Response::builder()
                .header("content-type", "application/json")
                .body(Body::from(
                    json!({"model": "m", "message": {"role": "assistant", "content": "{}"}, "done": true}).to_string(),
                ))
                .expect("response")
        })
        .await;
        let req = super::super::testkit::stop_and_json(request(false));
        provider(&base)
            .chat(&req, ChunkSink::none())
            .await
            .expect("ok");
        let body = seen.lock().expect("lock")[0].body.clone();
        assert_eq!(body["format"], json!("json"));
        assert_eq!(
            body["options"],
            json!({"temperature": 0.5, "num_predict": 100, "stop": ["END"]})
        );
    }

    #[tokio::test]
    async fn ndjson_stream() {
        let (base, _) = fake(|_| {
            let lines = [
                json!({"model": "m", "message": {"role": "assistant", "content": "Ray"}, "done": false}),
                json!({"model": "m", "message": {"role": "assistant", "content": "leigh"}, "done": false}),
                json!({"model": "m", "message": {"role": "assistant", "content": ""}, "done": true, "prompt_eval_count": 3, "eval_count": 2}),
            ];
            let body: String = lines.iter().map(|l| format!("{l}\n")).collect();
            Response::builder()
                .header("content-type", "application/x-ndjson")
                .body(Body::from(body))
                .expect("response")
        })
        .await;
        let (tx, mut rx) = tokio::sync::mpsc::channel(8);
        let out = provider(&base)
            .chat(&request(true), ChunkSink::new(tx))
            .await
            .expect("ok");
        assert_eq!(out.content, "Rayleigh");
        assert_eq!(out.usage, Some(Usage::new(3, 2)));
        assert_eq!(rx.recv().await.as_deref(), Some("Ray"));
        assert_eq!(rx.recv().await.as_deref(), Some("leigh"));
    }

    #[tokio::test]
    async fn missing_model_is_a_permanent_error_and_no_server_is_transient() {
        let (base, _) = fake(|_| {
            Response::builder()
                .status(404)
                .header("content-type", "application/json")
                .body(Body::from(
                    json!({"error": "model 'nope' not found, try pulling it first"}).to_string(),
                ))
                .expect("response")
        })
        .await;
        let e = provider(&base)
            .chat(&request(false), ChunkSink::none())
            .await
            .expect_err("404");
        assert_eq!(e.kind, ProviderErrorKind::Invalid);
        assert!(e.message.contains("not found"), "{}", e.message);
        let e = provider("http://127.0.0.1:9")
            .chat(&request(false), ChunkSink::none())
            .await
            .expect_err("refused");
        assert_eq!(e.kind, ProviderErrorKind::Transient);
        assert!(e.message.contains("ollama serve"), "{}", e.message);
    }

    #[test]
    fn ollama_host_forms() {
        assert_eq!(normalize_url("localhost"), "http://localhost:11434");
        assert_eq!(normalize_url("0.0.0.0:11434"), "http://localhost:11434");
        assert_eq!(normalize_url("http://gpu-box:8080/"), "http://gpu-box:8080");
        assert_eq!(
            normalize_url("https://ollama.example"),
            "https://ollama.example"
        );
    }

    #[tokio::test]
    async fn tool_calls_both_ways() {
        // Ollama's tool-calling answer (github.com/ollama/ollama docs/api.md,
        // "Chat request (with tools)"): arguments as an object, no call id,
        // `done_reason: "stop"`.
        let (base, seen) = fake(|_| {
            testkit::json(200, &[], &json!({
                "model": "llama3.2", "created_at": "2024-07-22T20:33:28.123648Z",
                "message": {"role": "assistant", "content": "",
                    "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
                "done_reason": "stop", "done": true, "total_duration": 885095291,
                "prompt_eval_count": 122, "eval_count": 20
            }))
        })
        .await;
        let req = ChatRequest {
            response_format: ResponseFormat::JsonSchema {
                name: "w".into(),
                schema: testkit::WEATHER_SCHEMA.into(),
                strict: None,
            },
            seed: Some(1),
            ..testkit::tool_round_trip(false)
        };
        let out = provider(&base)
            .chat(&req, ChunkSink::none())
            .await
            .expect("ok");
        assert_eq!(out.finish_reason, FinishReason::ToolCalls);
        assert_eq!(out.tool_calls[0].name, "get_weather");
        assert_eq!(out.tool_calls[0].arguments, r#"{"city":"Paris"}"#);
        assert!(!out.tool_calls[0].id.is_empty());
        assert_eq!(out.usage, Some(Usage::new(122, 20)));
        let schema: Value = serde_json::from_str(testkit::WEATHER_SCHEMA).expect("schema");
        let body = seen.lock().expect("lock")[0].body.clone();
        assert_eq!(
            body,
            json!({
                "model": DEFAULT_MODEL,
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "Weather in Paris?"},
                    {"role": "assistant", "content": "", "tool_calls": [
                        {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
                    {"role": "tool", "content": "{\"celsius\":21}", "tool_name": "get_weather"}
                ],
                "stream": false,
                "tools": [{"type": "function", "function": {"name": "get_weather",
                    "description": "Current weather", "parameters": schema}}],
                "format": schema,
                "options": {"seed": 1}
            })
        );
    }

    #[tokio::test]
    async fn api_embed() {
        // `/api/embed` as Ollama's API docs show it (docs/api.md, "Generate
        // Embeddings"): `embeddings` as a list of lists, `prompt_eval_count`.
        let (base, seen) = fake(|_| {
            testkit::json(
                200,
                &[],
                &json!({
                    "model": "all-minilm", "embeddings": [[0.010071029, -0.0017594862]],
                    "total_duration": 14143917, "load_duration": 1019500, "prompt_eval_count": 8
                }),
            )
        })
        .await;
        let p = provider(&base).with_embedding_models(vec!["all-minilm".into()]);
        let req = ChatRequest {
            embed: Some(crate::task::EmbedRequest {
                input: vec!["Why is the sky blue?".into()],
                dimensions: None,
            }),
            ..ChatRequest::default()
        };
        let out = p.embed(&req).await.expect("ok");
        assert_eq!(out.embeddings, [vec![0.010_071_029, -0.001_759_486_2]]);
        assert_eq!(out.usage, Some(Usage::new(8, 0)));
        let s = seen.lock().expect("lock")[0].clone();
        assert_eq!(s.path, "/api/embed");
        assert_eq!(
            s.body,
            json!({"model": "all-minilm", "input": ["Why is the sky blue?"]})
        );
    }
}
