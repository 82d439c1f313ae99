//! `echo`: replies with the last user message (or tool result). Deterministic and free, for
//! tests, benchmarks and checking a cluster end to end without any vendor;
//! it also calls tools (see `call_for`) and answers JSON when asked.

use std::time::Duration;

use super::{BoxFuture, ChunkSink, Provider, ProviderError, ProviderErrorKind};
use crate::task::{
    ChatMessage, ChatRequest, FinishReason, TaskOutput, ToolCall, ToolChoice, Usage,
};

/// The echo provider.
#[derive(Debug, Clone)]
pub struct Echo {
    /// Artificial latency per request.
    pub delay: Duration,
    /// When not zero, the answer streams a word at a time with this pause
    /// before each (demos, and watching tokens arrive in the dashboard).
    pub word_delay: Duration,
    /// Models it "embeds" with (`echo-embed` when built from the vendor table).
    pub embedding_models: Vec<String>,
}

impl Default for Echo {
    /// No delay; embeds with the vendor table's `echo-embed`.
    fn default() -> Self {
        Echo {
            delay: Duration::ZERO,
            word_delay: Duration::ZERO,
            embedding_models: super::vendor::ECHO
                .embedding_models
                .iter()
                .map(|m| (*m).to_owned())
                .collect(),
        }
    }
}

/// Dimensions of echo's vectors unless the request asks for others.
pub const EMBED_DIMENSIONS: u32 = 8;

/// A deterministic unit vector for `text`: the same text always gives the
/// same vector, different texts almost never do (FNV-1a per component).
pub fn vector(text: &str, dimensions: u32) -> Vec<f32> {
    let raw: Vec<f32> = (0..dimensions)
        .map(|k| {
            let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ u64::from(k);
            for b in text.bytes() {
                h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
            }
            #[allow(clippy::cast_precision_loss)]
            let x = (h % 2_001) as f32 / 1_000.0 - 1.0;
            x
        })
        .collect();
    let norm = raw.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm == 0.0 {
        return raw;
    }
    raw.into_iter().map(|x| x / norm).collect()
}

impl Provider for Echo {
    fn kind(&self) -> &str {
        "echo"
    }

    fn models(&self) -> Vec<String> {
        vec!["echo".to_owned()]
    }

    fn embedding_models(&self) -> Vec<String> {
        self.embedding_models.clone()
    }

    fn embed<'a>(
        &'a self,
        req: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<TaskOutput, ProviderError>> {
        Box::pin(async move {
            if !self.delay.is_zero() {
                tokio::time::sleep(self.delay).await;
            }
            let embed = req.embed.clone().unwrap_or_default();
            let dims = embed.dimensions.unwrap_or(EMBED_DIMENSIONS).clamp(1, 4_096);
            let words = embed
                .input
                .iter()
                .map(|t| t.split_whitespace().count())
                .sum::<usize>();
            let model = req.model.clone().unwrap_or_else(|| "echo-embed".to_owned());
            Ok(TaskOutput {
                embeddings: embed.input.iter().map(|t| vector(t, dims)).collect(),
                usage: Some(Usage::new(u32::try_from(words).unwrap_or(u32::MAX), 0)),
                ..TaskOutput::text("", "echo", model)
            })
        })
    }

    fn chat<'a>(
        &'a self,
        req: &'a ChatRequest,
        sink: ChunkSink,
    ) -> BoxFuture<'a, Result<TaskOutput, ProviderError>> {
        Box::pin(async move {
            if !self.delay.is_zero() {
                tokio::time::sleep(self.delay).await;
            }
            let Some(last) = req
                .messages
                .iter()
                .rev()
                .find(|m| m.role == "user" || m.role == "tool")
            else {
                return Err(ProviderError {
                    kind: ProviderErrorKind::Invalid,
                    message: "echo: the request has no user message".to_owned(),
                });
            };
            let words = |s: &str| u32::try_from(s.split_whitespace().count()).unwrap_or(u32::MAX);
            let mut out = TaskOutput::text("", "echo", "echo");
            match call_for(req, last) {
                Some(call) => {
                    out.finish_reason = FinishReason::ToolCalls;
                    out.tool_calls.push(call);
                }
                None => {
                    out.content = last.content.clone();
                    let is_json = serde_json::from_str::<serde_json::Value>(&out.content)
                        .is_ok_and(|v| v.is_object());
                    if req.response_format.is_json() && !is_json {
                        out.content = serde_json::json!({ "text": out.content }).to_string();
                    }
                    if self.word_delay.is_zero() {
                        sink.push(out.content.clone()).await;
                    } else {
                        // Word by word, each with its following spaces.
                        let mut rest = out.content.as_str();
                        while !rest.is_empty() {
                            let word = rest.trim_start().len();
                            let lead = rest.len() - word;
                            let end = rest[lead..]
                                .find(char::is_whitespace)
                                .map_or(rest.len(), |i| lead + i);
                            let end = rest[end..]
                                .find(|c: char| !c.is_whitespace())
                                .map_or(rest.len(), |i| end + i);
                            tokio::time::sleep(self.word_delay).await;
                            sink.push(rest[..end].to_owned()).await;
                            rest = &rest[end..];
                        }
                    }
                }
            }
            out.usage = Some(Usage::new(
                req.messages.iter().map(|m| words(&m.content)).sum(),
                words(&out.content),
            ));
            Ok(out)
        })
    }
}

/// Echo's tool use, deterministic for tests: when the request offers tools
/// (and does not forbid them) and the last turn is not a tool's result, it
/// calls the named tool or the first one, with the last message as the
/// arguments if that is a JSON object, else `{"text": <message>}`. After a
/// tool's result it answers with that result.
fn call_for(req: &ChatRequest, last: &ChatMessage) -> Option<ToolCall> {
    if last.role == "tool" || matches!(req.tool_choice, Some(ToolChoice::None)) {
        return None;
    }
    let name = match &req.tool_choice {
        Some(ToolChoice::Function(name)) => name.clone(),
        _ => req.tools.first()?.name.clone(),
    };
    let arguments = match serde_json::from_str::<serde_json::Value>(&last.content) {
        Ok(v) if v.is_object() => v.to_string(),
        _ => serde_json::json!({ "text": last.content }).to_string(),
    };
    Some(ToolCall {
        id: format!("call_echo_{}", req.messages.len()),
        name,
        arguments,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::ChatMessage;

    #[tokio::test]
    async fn echoes_the_last_user_message_and_streams_it() {
        let req = ChatRequest {
            messages: vec![
                ChatMessage::new("system", "be brief"),
                ChatMessage::new("user", "first"),
                ChatMessage::new("assistant", "ok"),
                ChatMessage::new("user", "second one"),
            ],
            ..Default::default()
        };
        let (tx, mut rx) = tokio::sync::mpsc::channel(4);
        let out = Echo::default()
            .chat(&req, ChunkSink::new(tx))
            .await
            .expect("ok");
        assert_eq!(out.content, "second one");
        assert_eq!(out.usage.expect("usage").completion_tokens, 2);
        assert_eq!(rx.recv().await.as_deref(), Some("second one"));
    }

    #[tokio::test]
    async fn with_a_word_delay_it_streams_word_by_word() {
        let req = ChatRequest {
            messages: vec![ChatMessage::new("user", "  one two\nthree ")],
            ..Default::default()
        };
        let (tx, mut rx) = tokio::sync::mpsc::channel(16);
        let echo = Echo {
            word_delay: Duration::from_millis(1),
            ..Echo::default()
        };
        let out = echo.chat(&req, ChunkSink::new(tx)).await.expect("ok");
        let mut chunks = Vec::new();
        while let Ok(c) = rx.try_recv() {
            chunks.push(c);
        }
        assert_eq!(chunks, ["  one ", "two\n", "three "]);
        assert_eq!(chunks.concat(), out.content, "nothing lost or added");
    }

    #[tokio::test]
    async fn no_user_message_is_a_permanent_error() {
        let req = ChatRequest::default();
        let e = Echo::default()
            .chat(&req, ChunkSink::none())
            .await
            .expect_err("err");
        assert_eq!(e.kind, ProviderErrorKind::Invalid);
        let te: crate::task::TaskError = e.into();
        assert_eq!(te.kind, crate::task::ErrorKind::Permanent);
    }

    #[tokio::test]
    async fn embeddings_are_deterministic_unit_vectors() {
        let req = ChatRequest {
            embed: Some(crate::task::EmbedRequest {
                input: vec!["same".into(), "other".into(), "same".into()],
                dimensions: Some(16),
            }),
            ..Default::default()
        };
        let out = Echo::default().embed(&req).await.expect("ok");
        assert_eq!(out.embeddings.len(), 3);
        assert_eq!(out.embeddings[0], out.embeddings[2]);
        assert_ne!(out.embeddings[0], out.embeddings[1]);
        assert_eq!(out.embeddings[0].len(), 16);
        let norm: f32 = out.embeddings[1].iter().map(|x| x * x).sum();
        assert!((norm - 1.0).abs() < 1e-4, "{norm}");
        assert_eq!(Echo::default().embedding_models(), ["echo-embed"]);
    }
}
