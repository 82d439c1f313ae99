//! The HTTP server's connection handling: what a TCP connection may cost.
//!
//! `axum::serve` puts no timer on hyper, so a client that opens a connection
//! and sends nothing, half a request, or nothing after its last request,
//! holds a descriptor for ever; 1,050 of them took every descriptor. Here:
//! - at most 1,024 connections at once, and 256 from one address; a
//!   connection past either is closed at once, before anything is read;
//! - a request's head must arrive within 10 s, which also bounds how long an
//!   idle keep-alive connection waits for its next request;
//! - a request's body must arrive within 30 s (see [`read_body`]); its size
//!   is bounded by `--max-body-bytes`.
//!
//! The numbers are [`HttpLimits::default`](crate::config::HttpLimits).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::ApiError;
use crate::config::HttpLimits;

/// Connections per address, released when a connection ends.
#[derive(Debug, Default)]
struct PerAddress(Mutex<HashMap<IpAddr, usize>>);

/// A connection's place: in the total and in its address's count.
struct Place {
    _total: OwnedSemaphorePermit,
    per: Arc<PerAddress>,
    ip: IpAddr,
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut m = self.per.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

fn admit(
    total: &Arc<Semaphore>,
    per: &Arc<PerAddress>,
    ip: IpAddr,
    max_per_address: usize,
) -> Option<Place> {
    let permit = total.clone().try_acquire_owned().ok()?;
    let mut m = per.0.lock().unwrap_or_else(|p| p.into_inner());
    let n = m.entry(ip).or_insert(0);
    if *n >= max_per_address {
        return None;
    }
    *n += 1;
    Some(Place {
        _total: permit,
        per: per.clone(),
        ip,
    })
}

/// Serves `router` on `listener` until `shutdown`; connections in flight
/// are then asked to finish their current request and close.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    shutdown: CancellationToken,
) {
    let total = Arc::new(Semaphore::new(limits.max_connections));
    let per = Arc::new(PerAddress::default());
    let mut refused: u64 = 0;
    let mut summary = tokio::time::interval(Duration::from_secs(10));
    loop {
        let (tcp, remote) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of descriptors (EMFILE) or a connection reset
                    // before it was accepted: wait a little, go on.
                    tracing::debug!(error = %e, "HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = summary.tick() => {
                if refused > 0 {
                    tracing::warn!(refused, max = limits.max_connections, per_address = limits.max_per_address, "HTTP connections refused in the last 10 s (too many at once)");
                    refused = 0;
                }
                continue;
            }
            () = shutdown.cancelled() => return,
        };
        let Some(place) = admit(&total, &per, remote.ip(), limits.max_per_address) else {
            refused += 1;
            drop(tcp);
            continue;
        };
        // Small request/response exchanges: never wait for Nagle.
        let _ = tcp.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _place = place;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(limits.head_timeout)
                .keep_alive(true);
            let conn = builder.serve_connection(TokioIo::new(tcp), service);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(%remote, error = %e, "HTTP connection ended");
                    }
                }
                () = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    // A long poll or an event stream may not end by itself.
                    let _ = tokio::time::timeout(Duration::from_secs(2), conn).await;
                }
            }
        });
    }
}

/// Middleware: reads a request's whole body within `body_timeout` before
/// the handler runs (the size limit still applies), so a client that
/// declares a large body and sends it slowly, or never, holds nothing for
/// long. Runs after authentication: a stranger's body is never read.
pub async fn read_body(
    State((limit, body_timeout)): State<(usize, Duration)>,
    req: Request,
    next: Next,
) -> Response {
    let (parts, body) = req.into_parts();
    match tokio::time::timeout(body_timeout, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(bytes)) => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Ok(Err(e)) => body_error(&e, limit).into_response(),
        Err(_) => ApiError::new(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            format!(
                "the request body did not arrive within {} s",
                body_timeout.as_secs_f32()
            ),
        )
        .into_response(),
    }
}

/// A body that could not be read: too large, or the connection failed.
fn body_error(e: &axum::Error, limit: usize) -> ApiError {
    use std::error::Error;
    let mut source: Option<&dyn Error> = Some(e);
    while let Some(s) = source {
        if s.is::<http_body_util::LengthLimitError>() {
            return ApiError::too_large(limit);
        }
        source = s.source();
    }
    ApiError::bad_request("invalid_body", format!("cannot read the request body: {e}"))
}
