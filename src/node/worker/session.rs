//! The worker's session with the orchestrator: one [`Session`] per
//! worker run, tried against each address found; a connection goes through
//! connect → Hello/Welcome → serving (heartbeats out, task streams in) →
//! drained or lost.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use d8_certs::ORCHESTRATOR_NAME;
use d8_certs::tls::ALPN_CLUSTER;
use quinn::{Connection, RecvStream, SendStream};
use tokio_util::sync::CancellationToken;

use super::logs::Forwarder;
use super::task::run_task;
use super::{CONNECT_TIMEOUT, Load};
use crate::config::WorkerConfig;
use crate::task::Capabilities;
use crate::transport::{self, close};
use crate::wire::{Hello, OrchMsg, PROTOCOL_VERSION, WorkerMsg};

/// How a session ended, and so what the reconnect loop does next.
pub(super) enum SessionEnd {
    /// Shut down on request.
    Drained,
    /// This address did not answer: try the next one.
    Unreachable(String),
    /// Was connected, or was refused in a way worth retrying later.
    Lost(String),
    /// Retrying cannot help.
    Fatal(String),
}

/// What every connection of this worker run shares.
pub(super) struct Session<'a> {
    /// The worker's configuration (providers, discovery, drain timeout).
    pub(super) cfg: &'a WorkerConfig,
    /// The id in this worker's certificate.
    pub(super) worker_id: &'a str,
    /// mTLS client configuration with this worker's certificate.
    pub(super) client: &'a quinn::ClientConfig,
    /// What this machine offers, sent in Hello.
    pub(super) caps: &'a Capabilities,
    /// Tasks in flight and the draining flag, shared with task runners.
    pub(super) load: &'a Arc<Load>,
    /// Fires on Ctrl-C: drain, then end.
    pub(super) shutdown: &'a CancellationToken,
    /// This worker's log lines on their way to the orchestrator.
    pub(super) forward: &'a tokio::sync::Mutex<Forwarder>,
    /// What `status.json` shows.
    pub(super) board: &'a super::status::Board,
}

impl Session<'_> {
    /// Connects to `addr` and serves until the connection ends or the
    /// worker has drained.
    pub(super) async fn run(&self, addr: SocketAddr) -> SessionEnd {
        let shutdown = self.shutdown;
        let endpoint = match transport::client_endpoint(addr) {
            Ok(e) => e,
            Err(e) => return SessionEnd::Unreachable(e.to_string()),
        };
        let connecting = match endpoint.connect_with(self.client.clone(), addr, ORCHESTRATOR_NAME) {
            Ok(c) => c,
            Err(e) => return SessionEnd::Unreachable(format!("{addr}: {e}")),
        };
        let conn = tokio::select! {
            c = tokio::time::timeout(CONNECT_TIMEOUT, connecting) => match c {
                Ok(Ok(c)) => c,
                Ok(Err(e)) if transport::is_unauthorized(&e) => return SessionEnd::Fatal(transport::explain(&e)),
                Ok(Err(e)) => return SessionEnd::Unreachable(format!("{} ({addr})", transport::explain(&e))),
                Err(_) => return SessionEnd::Unreachable(format!("no answer from {addr}")),
            },
            () = shutdown.cancelled() => return SessionEnd::Drained,
        };
        debug_assert_eq!(
            conn.handshake_data()
                .and_then(|h| h.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
                .and_then(|h| h.protocol)
                .as_deref(),
            Some(ALPN_CLUSTER)
        );
        let end = self.serve(&conn).await;
        if let SessionEnd::Drained = end {
            conn.close(close::NORMAL, b"worker drained");
            let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
        }
        end
    }

    /// The connected phase: Hello/Welcome on the control stream, then
    /// heartbeats out and task streams in until the connection ends or the
    /// worker has drained.
    async fn serve(&self, conn: &Connection) -> SessionEnd {
        let (load, shutdown, providers) = (self.load, self.shutdown, &self.cfg.providers);
        // The receive half stays open for the session, as the orchestrator
        // keeps its side of the control stream.
        let (mut control, _control_recv, heartbeat) = match self.hello(conn).await {
            Ok(x) => x,
            Err(end) => return end,
        };
        tracing::info!(worker = %self.worker_id, addr = %conn.remote_address(), "connected to the orchestrator");
        self.board
            .connected(self.worker_id, conn.remote_address().to_string());
        if let Some(d) = &self.cfg.discovery {
            d.idle();
        }
        load.draining.store(false, Ordering::Relaxed);
        // One session at a time holds the forwarder.
        let mut forward = self.forward.lock().await;
        let mut tick = tokio::time::interval(heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut drain_deadline: Option<tokio::time::Instant> = None;
        loop {
            if let Some(deadline) = drain_deadline {
                let drained = load.active.load(Ordering::Relaxed) == 0;
                if drained {
                    tracing::info!("drained: no task in flight");
                } else if tokio::time::Instant::now() >= deadline {
                    tracing::warn!(
                        active = load.active.load(Ordering::Relaxed),
                        "drain timeout; leaving tasks to be re-queued"
                    );
                }
                if drained || tokio::time::Instant::now() >= deadline {
                    // What the worker said while leaving goes too (the tap
                    // already holds the lines just logged).
                    while forward.pull_ready().is_some() {}
                    let _ = send_logs(&mut control, &mut forward).await;
                    return SessionEnd::Drained;
                }
            }
            tokio::select! {
                stream = conn.accept_bi() => match stream {
                    Ok((send, recv)) => {
                        let load = load.clone();
                        let providers = providers.clone();
                        tokio::spawn(async move { run_task(send, recv, providers, load).await });
                    }
                    Err(e) => return lost(&e),
                },
                _ = tick.tick() => {
                    let beat = WorkerMsg::Heartbeat {
                        active: load.active.load(Ordering::Relaxed),
                        cooldowns: providers.cooldowns(),
                    };
                    if let Err(e) = transport::write_frame(&mut control, &beat).await {
                        return broken(conn, &e);
                    }
                    // Lines logged since the last pull go with this beat.
                    while forward.pull_ready().is_some() && !forward.full() {}
                    if let Err(e) = send_logs(&mut control, &mut forward).await {
                        return broken(conn, &e);
                    }
                }
                () = forward.pull() => {
                    if forward.full()
                        && let Err(e) = send_logs(&mut control, &mut forward).await
                    {
                        return broken(conn, &e);
                    }
                }
                () = shutdown.cancelled(), if drain_deadline.is_none() => {
                    tracing::info!(active = load.active.load(Ordering::Relaxed), "draining: finishing in-flight tasks, accepting no more (Ctrl-C again to force)");
                    load.draining.store(true, Ordering::Relaxed);
                    self.board.set("draining");
                    let _ = transport::write_frame(&mut control, &WorkerMsg::Drain).await;
                    drain_deadline = Some(tokio::time::Instant::now() + self.cfg.drain_timeout);
                }
            }
        }
    }
    /// Opens the control stream and introduces this worker: Hello out,
    /// Welcome (with the heartbeat interval) or Rejected back.
    async fn hello(
        &self,
        conn: &Connection,
    ) -> Result<(SendStream, RecvStream, Duration), SessionEnd> {
        let (mut control, mut control_recv) = conn.open_bi().await.map_err(|e| lost(&e))?;
        let hello = WorkerMsg::Hello(Hello {
            proto: PROTOCOL_VERSION,
            worker_id: self.worker_id.to_owned(),
            caps: self.caps.clone(),
        });
        if let Err(e) = transport::write_frame(&mut control, &hello).await {
            return Err(SessionEnd::Lost(e.to_string()));
        }
        match transport::read_frame::<OrchMsg>(&mut control_recv).await {
            Ok(OrchMsg::Welcome { heartbeat_ms, .. }) => Ok((
                control,
                control_recv,
                Duration::from_millis(u64::from(heartbeat_ms.clamp(50, 60_000))),
            )),
            Ok(OrchMsg::Rejected { reason, .. }) => Err(SessionEnd::Fatal(format!(
                "orchestrator rejected this worker: {reason}"
            ))),
            Err(_) => Err(match conn.close_reason() {
                Some(e) => lost(&e),
                None => SessionEnd::Lost("orchestrator did not answer hello".into()),
            }),
        }
    }
}

/// Sends the forwarder's batch, if any; an unsent batch is kept.
async fn send_logs(
    control: &mut SendStream,
    forward: &mut Forwarder,
) -> Result<(), crate::transport::FrameError> {
    let Some(msg) = forward.take() else {
        return Ok(());
    };
    let sent = transport::write_frame(control, &msg).await;
    if sent.is_err() {
        forward.put_back(msg);
    }
    sent
}

/// How a session ends when a control-stream write failed.
fn broken(conn: &Connection, e: &crate::transport::FrameError) -> SessionEnd {
    match conn.close_reason() {
        Some(e) => lost(&e),
        None => SessionEnd::Lost(e.to_string()),
    }
}

fn lost(e: &quinn::ConnectionError) -> SessionEnd {
    if transport::is_unauthorized(e) {
        SessionEnd::Fatal(transport::explain(e))
    } else {
        SessionEnd::Lost(transport::explain(e))
    }
}
