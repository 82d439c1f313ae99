//! `echo`: replies with the last user message. Deterministic and free, for
//! tests, benchmarks and checking a cluster end to end without any vendor.

use std::time::Duration;

use super::{BoxFuture, ChunkSink, Provider, ProviderError, ProviderErrorKind};
use crate::task::{ChatRequest, TaskOutput, Usage};

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
            let Some(last) = req.messages.iter().rev().find(|m| m.role == "user") else {
                return Err(ProviderError {
                    kind: ProviderErrorKind::Invalid,
                    message: "echo: the request has no user message".to_owned(),
                });
            };
            sink.push(last.content.clone()).await;
            let words = |s: &str| u32::try_from(s.split_whitespace().count()).unwrap_or(u32::MAX);
            Ok(TaskOutput {
                content: last.content.clone(),
                provider: "echo".to_owned(),
                model: "echo".to_owned(),
                usage: Usage::new(
                    req.messages.iter().map(|m| words(&m.content)).sum(),
                    words(&last.content),
                ),
            })
        })
    }
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
        assert_eq!(out.usage.completion_tokens, 2);
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
