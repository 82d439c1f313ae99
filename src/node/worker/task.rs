//! One task on the worker: its stream from the orchestrator, the provider
//! call, streamed chunks and the final Done.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use quinn::{RecvStream, SendStream};
use tokio::sync::mpsc;

use super::Load;
use crate::providers::{ChunkSink, Job, ProviderSet};
use crate::task::{ErrorKind, Outcome, TaskError};
use crate::transport;
use crate::wire::{self, TaskAssign, TaskReply};

/// Decrements the active count however the task ends.
struct ActiveGuard(Arc<Load>);
impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Runs one task stream: read the assignment, call the provider, forward
/// chunks when asked, answer Done. A stop from the orchestrator (cancel or
/// timeout) drops the provider call.
pub(super) async fn run_task(
    mut send: SendStream,
    mut recv: RecvStream,
    providers: ProviderSet,
    load: Arc<Load>,
) {
    load.active.fetch_add(1, Ordering::Relaxed);
    let _guard = ActiveGuard(load.clone());
    let assign: TaskAssign = match transport::read_frame(&mut recv).await {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(error = %e, "bad task frame; dropping the stream");
            let _ = send.reset(transport::STREAM_ABORTED);
            return;
        }
    };
    let outcome = if load.draining.load(Ordering::Relaxed) {
        // Arrived after Drain was sent: hand it straight back, no attempt used.
        Outcome::Err(TaskError {
            kind: ErrorKind::WorkerLost,
            message: "worker is draining".into(),
        })
    } else {
        let stopped = send.stopped();
        let (tx, mut rx) = mpsc::channel::<String>(64);
        let sink = if assign.spec.request.stream {
            ChunkSink::new(tx)
        } else {
            ChunkSink::none()
        };
        let job = Job {
            req: &assign.spec.request,
            task_type: &assign.spec.task_type,
            provider: assign.spec.provider.as_deref(),
            route: Some(&assign.route),
        };
        let call = providers.run(job, sink, report);
        tokio::pin!(call);
        tokio::pin!(stopped);
        loop {
            tokio::select! {
                r = &mut call => {
                    // Chunks pushed just before the call returned are still
                    // queued: they go out before Done.
                    while let Ok(text) = rx.try_recv() {
                        if transport::write_frame(&mut send, &TaskReply::Chunk { text }).await.is_err() {
                            return;
                        }
                    }
                    break match r {
                        Ok(out) => Outcome::Ok(out),
                        Err(e) => Outcome::Err(e.into()),
                    };
                }
                Some(text) = rx.recv() => {
                    if transport::write_frame(&mut send, &TaskReply::Chunk { text }).await.is_err() {
                        return;
                    }
                }
                _ = &mut stopped => {
                    tracing::debug!(task = %assign.id, attempt = assign.attempt, "task stopped by the orchestrator");
                    return;
                }
            }
        }
    };
    let counter = match &outcome {
        Outcome::Ok(_) => &load.completed,
        Outcome::Err(e)
            if matches!(
                e.kind,
                ErrorKind::RateLimited { .. } | ErrorKind::Unavailable
            ) =>
        {
            &load.handed_back
        }
        Outcome::Err(_) => &load.failed,
    };
    counter.fetch_add(1, Ordering::Relaxed);
    let cooldowns = providers.cooldowns();
    let frame = match wire::encode(&TaskReply::Done {
        outcome,
        cooldowns: cooldowns.clone(),
    }) {
        Ok(frame) => frame,
        // Only a result larger than a frame gets here (`--max-output-bytes`
        // keeps answers below it): the task fails and says why, instead of
        // its stream ending without a word.
        Err(e) => {
            tracing::warn!(task = %assign.id, error = %e, "result too large to send; failing the task");
            let outcome = Outcome::Err(TaskError {
                kind: ErrorKind::Permanent,
                message: format!("the result is too large to send: {e}"),
            });
            match wire::encode(&TaskReply::Done { outcome, cooldowns }) {
                Ok(frame) => frame,
                Err(_) => return,
            }
        }
    };
    if send.write_all(&frame).await.is_ok() {
        let _ = send.finish();
    }
}

/// Logs a provider failure at the level it deserves: a rejected key is the
/// operator's to fix, so it is loud; rate limits are routine.
fn report(provider: &str, e: &crate::providers::ProviderError) {
    use crate::providers::ProviderErrorKind as K;
    match e.kind {
        K::Auth => {
            tracing::error!(provider, error = %e, "the provider rejected this worker's key; fix the key (tasks go to other workers meanwhile)")
        }
        K::QuotaExhausted { retry_after_ms } => {
            tracing::warn!(provider, retry_after_ms, error = %e, "provider quota or budget exhausted; cooling down")
        }
        K::RateLimited { retry_after_ms } => tracing::info!(
            provider,
            retry_after_ms,
            "rate limited; cooling down and handing the task back"
        ),
        K::Transient => {
            tracing::warn!(provider, error = %e, "provider failed; the task will be retried")
        }
        K::Invalid => tracing::info!(provider, error = %e, "provider rejected the request"),
        K::Unavailable => {
            tracing::info!(provider, error = %e, "no provider can serve the task here; handing it back")
        }
    }
}
