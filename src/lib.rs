//! d8: a zero-config LAN cluster for LLM agent work.
//!
//! Module map (who owns what):
//! - [`task`]: the shared data types (task specs, outcomes, capabilities).
//! - [`core`]: the pure scheduler state machine; no I/O, time passed in.
//! - [`wire`]: versioned bincode messages and framing for QUIC streams.

pub mod admin;
pub mod bench;
pub mod cli;
pub mod config;
pub mod core;
pub mod http;
pub mod node;
pub mod providers;
pub mod store;
pub mod task;
pub mod transport;
pub mod wire;
