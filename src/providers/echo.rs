//! `echo`: replies with the last user message (or tool result). Deterministic and free, for
//! tests, benchmarks and checking a cluster end to end without any vendor;
//! it also calls tools (see [`call_for`]) and answers JSON when asked.

use std::time::Duration;

use super::{BoxFuture, ChunkSink, Provider, ProviderError, ProviderErrorKind};
use crate::task::{
    ChatMessage, ChatRequest, FinishReason, TaskOutput, ToolCall, ToolChoice, Usage,
};

/// The echo provider.
#[derive(Debug, Clone, Default)]
pub struct Echo {
    /// Artificial latency per request.
    pub delay: Duration,
}

impl Provider for Echo {
    fn kind(&self) -> &str {
        "echo"
    }

    fn models(&self) -> Vec<String> {
        vec!["echo".to_owned()]
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
                    sink.push(out.content.clone()).await;
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
}
