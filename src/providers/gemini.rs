//! `gemini`: Google's Gemini API.
//!
//! `POST {base}/v1beta/models/{model}:generateContent` (streaming:
//! `:streamGenerateContent?alt=sse`) with the key in `x-goog-api-key`. Roles
//! are `user` and `model`; system messages become `systemInstruction`.
//! A 429's wait may arrive only in the JSON body (`RetryInfo.retryDelay`),
//! which the classifier reads.

use serde_json::{Value, json};

use super::driver::{Answer, Call, Flow, Framing, HttpProvider, VendorClient, count};
use super::{ChunkSink, ProviderError, ProviderErrorKind, Secret};
use crate::task::{ChatRequest, TaskOutput, Usage};

/// Model used when neither task nor configuration names one (vendor table).
pub const DEFAULT_MODEL: &str = super::vendor::GEMINI.default_model;

/// The Gemini provider.
#[derive(Debug, Clone)]
pub struct Gemini {
    base_url: String,
    key: Secret,
    models: Vec<String>,
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
            http,
        }
    }

    fn body(req: &ChatRequest) -> Value {
        let system: Vec<Value> = req
            .messages
            .iter()
            .filter(|m| m.role == "system")
            .map(|m| json!({"text": m.content}))
            .collect();
        let contents: Vec<Value> = req
            .messages
            .iter()
            .filter(|m| m.role != "system")
            .map(|m| {
                let role = if m.role == "assistant" {
                    "model"
                } else {
                    "user"
                };
                json!({"role": role, "parts": [{"text": m.content}]})
            })
            .collect();
        let mut body = json!({ "contents": contents });
        if !system.is_empty() {
            body["systemInstruction"] = json!({ "parts": system });
        }
        let mut config = serde_json::Map::new();
        if let Some(t) = req.temperature {
            config.insert("temperature".into(), json!(t));
        }
        if let Some(n) = req.max_tokens {
            config.insert("maxOutputTokens".into(), json!(n));
        }
        if !req.stop.is_empty() {
            config.insert("stopSequences".into(), json!(req.stop));
        }
        if req.json {
            config.insert("responseMimeType".into(), json!("application/json"));
        }
        if !config.is_empty() {
            body["generationConfig"] = Value::Object(config);
        }
        body
    }

    /// Text of the first candidate; a prompt blocked by safety filters is the
    /// request's fault.
    fn text(call: &Call<'_>, v: &Value) -> Result<String, ProviderError> {
        if let Some(reason) = v["promptFeedback"]["blockReason"].as_str() {
            return Err(call.error(
                ProviderErrorKind::Invalid,
                &format_args!("prompt blocked ({reason})"),
            ));
        }
        Ok(v["candidates"][0]["content"]["parts"]
            .as_array()
            .map(|parts| parts.iter().filter_map(|p| p["text"].as_str()).collect())
            .unwrap_or_default())
    }

    /// Reads one answer object (the whole answer, or one streamed piece).
    fn read(call: &Call<'_>, v: &Value, answer: &mut Answer) -> Result<(), ProviderError> {
        answer.text(&Self::text(call, v)?);
        let m = &v["usageMetadata"];
        if m.is_object() {
            answer.usage = Usage::new(
                count(&m["promptTokenCount"]),
                count(&m["candidatesTokenCount"]),
            );
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
    use crate::task::ChatMessage;

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
        assert_eq!(out.usage, Usage::new(8, 3));
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
        assert_eq!(out.usage, Usage::new(8, 2));
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
}
