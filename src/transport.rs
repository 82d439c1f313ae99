//! QUIC plumbing shared by orchestrator and worker: endpoint construction,
//! framed reads and writes on quinn streams, and the application close codes.
//! The protocol logic lives in `node`; message types in `wire`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{RecvStream, SendStream, VarInt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::wire::{self, WireError};

/// Application close codes (QUIC CONNECTION_CLOSE). The reason text says more.
pub mod close {
    use quinn::VarInt;
    /// Normal shutdown (worker finished draining, orchestrator stopping).
    pub const NORMAL: VarInt = VarInt::from_u32(0);
    /// The peer broke the protocol (bad frame, unexpected message).
    pub const PROTOCOL: VarInt = VarInt::from_u32(1);
    /// Not allowed: no client certificate, unknown or revoked worker.
    pub const UNAUTHORIZED: VarInt = VarInt::from_u32(2);
    /// Incompatible protocol version.
    pub const VERSION: VarInt = VarInt::from_u32(3);
    /// The orchestrator declared the worker dead (missed heartbeats).
    pub const DEAD: VarInt = VarInt::from_u32(4);
    /// A newer connection of the same worker replaced this one (another
    /// process uses the same identity, or this connection was stale).
    pub const REPLACED: VarInt = VarInt::from_u32(5);
    /// The orchestrator cannot take this now (its store writes fail, e.g.
    /// a full disk): try again later. Enrollment is the one place it is
    /// sent; a worker retries with backoff.
    pub const BUSY: VarInt = VarInt::from_u32(6);
}

/// Stream error code used to abandon a task stream (cancel/timeout).
pub const STREAM_ABORTED: VarInt = VarInt::from_u32(1);

/// Errors on a framed stream.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The peer closed the stream cleanly where a frame was expected.
    #[error("stream ended")]
    Eof,
    /// The stream or connection failed.
    #[error("stream failed: {0}")]
    Io(String),
    /// The frame was too large or not a valid message.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The frame is larger than this stream allows.
    #[error("frame of {len} bytes exceeds this stream's {max}-byte limit")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// Limit.
        max: usize,
    },
}

/// Reads one frame and decodes it. `Eof` when the stream ends on a boundary.
pub async fn read_frame<T: DeserializeOwned>(recv: &mut RecvStream) -> Result<T, FrameError> {
    read_frame_within(recv, wire::MAX_FRAME).await
}

/// [`read_frame`] for a frame of at most `max` bytes: a longer one is
/// refused from its length prefix, before anything is allocated.
pub async fn read_frame_within<T: DeserializeOwned>(
    recv: &mut RecvStream,
    max: usize,
) -> Result<T, FrameError> {
    let payload = read_payload_within(recv, max).await?;
    Ok(wire::decode(&payload)?)
}

/// Reads one frame's raw payload.
pub async fn read_payload(recv: &mut RecvStream) -> Result<Vec<u8>, FrameError> {
    read_payload_within(recv, wire::MAX_FRAME).await
}

async fn read_payload_within(recv: &mut RecvStream, max: usize) -> Result<Vec<u8>, FrameError> {
    let mut prefix = [0u8; 4];
    match recv.read_exact(&mut prefix).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Err(FrameError::Eof),
        Err(e) => return Err(FrameError::Io(e.to_string())),
    }
    let len = wire::frame_len(prefix)?;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    let mut payload = vec![0u8; len];
    recv.read_exact(&mut payload)
        .await
        .map_err(|e| FrameError::Io(e.to_string()))?;
    Ok(payload)
}

/// Encodes and writes one frame.
pub async fn write_frame<T: Serialize>(send: &mut SendStream, msg: &T) -> Result<(), FrameError> {
    let frame = wire::encode(msg)?;
    send.write_all(&frame)
        .await
        .map_err(|e| FrameError::Io(e.to_string()))
}

/// Streams a worker may open to the orchestrator: the control stream, with
/// room for a reconnect overlap. quinn sizes per-connection tables from this,
/// so keeping it small keeps the orchestrator's memory per worker small.
const SERVER_STREAMS: u32 = 8;
/// Task streams the orchestrator may have open to one worker at once: the
/// most slots a worker can advertise, plus aborted streams still closing.
const CLIENT_STREAMS: u32 = 2_048;

/// QUIC transport settings for a LAN: keep-alives well inside the idle timeout
/// (quinn sends none by default) and `streams` peer-opened streams at once.
fn transport_config(idle_timeout: Duration, streams: u32) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(idle_timeout / 4));
    // Fits in a VarInt for any sane value; fall back to quinn's default otherwise.
    t.max_idle_timeout(quinn::IdleTimeout::try_from(idle_timeout).ok());
    t.max_concurrent_bidi_streams(VarInt::from_u32(streams));
    t.max_concurrent_uni_streams(VarInt::from_u32(0));
    t
}

/// Data a worker connection may have in flight to the orchestrator, all its
/// streams together. quinn's default is unbounded per connection (1.25 MB
/// per stream); this bounds what any peer, authenticated or not, can make
/// the orchestrator buffer by sending on streams it has not read yet. A
/// result frame (up to 8 MiB) still flows: the window moves as it is read.
const SERVER_RECEIVE_WINDOW: u32 = 2 * 1024 * 1024;

/// Errors building endpoints.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// TLS configuration problem.
    #[error(transparent)]
    Tls(#[from] d8_certs::tls::TlsError),
    /// QUIC rejected the TLS configuration.
    #[error("QUIC TLS configuration: {0}")]
    Quic(String),
    /// The UDP socket could not be bound.
    #[error("cannot bind UDP {addr}: {source}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
}

/// A server endpoint on `addr` with the orchestrator's rustls config.
pub fn server_endpoint(
    addr: SocketAddr,
    tls: rustls::ServerConfig,
    idle_timeout: Duration,
) -> Result<quinn::Endpoint, EndpointError> {
    let crypto = QuicServerConfig::try_from(tls).map_err(|e| EndpointError::Quic(e.to_string()))?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = transport_config(idle_timeout, SERVER_STREAMS);
    transport.receive_window(VarInt::from_u32(SERVER_RECEIVE_WINDOW));
    cfg.transport_config(Arc::new(transport));
    quinn::Endpoint::server(cfg, addr).map_err(|source| EndpointError::Bind { addr, source })
}

/// A quinn client config from a rustls config.
pub fn client_config(
    tls: rustls::ClientConfig,
    idle_timeout: Duration,
) -> Result<quinn::ClientConfig, EndpointError> {
    let crypto = QuicClientConfig::try_from(tls).map_err(|e| EndpointError::Quic(e.to_string()))?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
    cfg.transport_config(Arc::new(transport_config(idle_timeout, CLIENT_STREAMS)));
    Ok(cfg)
}

/// A client endpoint able to reach `target`: bound to the unspecified address
/// of the same family (binding 127.0.0.1 would make LAN addresses unreachable).
pub fn client_endpoint(target: SocketAddr) -> Result<quinn::Endpoint, EndpointError> {
    let addr: SocketAddr = if target.is_ipv6() {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    };
    quinn::Endpoint::client(addr).map_err(|source| EndpointError::Bind { addr, source })
}

/// Turns a quinn connection error into a sentence for the operator, naming the
/// cause when the peer said why (revoked certificate, version, …).
pub fn explain(e: &quinn::ConnectionError) -> String {
    use quinn::ConnectionError as E;
    match e {
        E::ApplicationClosed(c) if c.error_code == close::REPLACED => {
            "closed by the orchestrator: another process connected with this worker's identity (two `d8 join` sharing one --data-dir?)".to_owned()
        }
        E::ApplicationClosed(c) => {
            let reason = String::from_utf8_lossy(&c.reason);
            format!("closed by the orchestrator: {reason}")
        }
        E::ConnectionClosed(c) => {
            let reason = String::from_utf8_lossy(&c.reason);
            // TLS alerts travel as CRYPTO_ERROR 0x100 + alert.
            let code = u64::from(c.error_code);
            let alert = match code.checked_sub(0x100) {
                Some(44) => {
                    " (certificate revoked: this worker was removed with `d8 workers revoke`)"
                }
                Some(42) | Some(48) => " (certificate not accepted by this cluster)",
                Some(116) => " (a client certificate is required)",
                Some(120) => " (no common application protocol: incompatible d8 versions?)",
                _ => "",
            };
            format!("connection refused: {reason}{alert}")
        }
        E::TransportError(t) => format!("handshake failed: {t}"),
        E::TimedOut => "timed out (orchestrator unreachable or not answering on UDP)".to_owned(),
        E::Reset => "connection reset (orchestrator restarted?)".to_owned(),
        E::LocallyClosed => "closed locally".to_owned(),
        E::VersionMismatch => "QUIC version mismatch".to_owned(),
        E::CidsExhausted => "connection ids exhausted".to_owned(),
    }
}

/// True when retrying cannot help: this worker is not allowed (revoked,
/// unknown), speaks another version, or another process holds its identity
/// (two workers sharing one data dir would otherwise evict each other forever).
pub fn is_unauthorized(e: &quinn::ConnectionError) -> bool {
    match e {
        quinn::ConnectionError::ApplicationClosed(c) => {
            c.error_code == close::UNAUTHORIZED
                || c.error_code == close::VERSION
                || c.error_code == close::REPLACED
        }
        quinn::ConnectionError::ConnectionClosed(c) => u64::from(c.error_code) == 0x100 + 44,
        _ => false,
    }
}
