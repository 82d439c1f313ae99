//! d8: a zero-config LAN cluster for LLM agent work.
//!
//! One orchestrator (`d8 serve`) keeps a durable priority queue and pushes
//! tasks over QUIC with mutual TLS to workers (`d8 join`), which run them with
//! their own provider keys. Agents talk to the orchestrator's HTTP API.
//!
//! Module map (who owns what):
//! - [`task`]: the data every layer shares (specs, outcomes, capabilities).
//! - [`core`]: the scheduler, a pure state machine; no I/O, time passed in.
//! - [`wire`]: versioned bincode messages and bounded framing (pure).
//! - [`transport`]: quinn endpoints, framed stream I/O, close codes.
//! - [`store`]: durable state (redb) behind a trait with an in-memory twin;
//!   group commit.
//! - [`providers`]: the `Provider` trait, the table of vendor facts, one
//!   dialect per wire format (OpenAI-compatible, Anthropic, Gemini, Ollama,
//!   echo), failure classification, a worker's provider set.
//! - [`node`]: the orchestrator's service facade (`Cluster`), its scheduler
//!   actor and QUIC accept loop, the model catalog and the result cache, and
//!   the worker (enrollment, session, tasks).
//! - [`http`]: `router(cluster)`, one file per resource, one error type; the
//!   OpenAI-compatible `/v1`.
//! - [`cli`]: clap definitions only; [`config`]: flags, environment and the
//!   worker file turned into validated configuration.
//! - [`admin`]: the CLI commands that call the HTTP API; [`mod@bench`]: `d8 bench`;
//!   [`doctor`]: `d8 doctor`.
//! - [`service`]: `d8 service`: every entry d8 puts in an OS's start-up
//!   machinery (systemd units, LaunchAgents, Windows services, the desktop
//!   app's login item); settings in one owner-only env file per role.
//! - [`discovery`]: mDNS advert and browse, address ordering.
//! - [`logging`]: log output whose failures are counted, never a panic;
//!   log lines captured for the orchestrator's ring and workers' forwarding.
//! - [`telemetry`]: histograms and bounded counters for `/metrics`.
//!
//! Identity (CA, tokens, CSR signing, rustls configs) lives in the `d8-certs`
//! crate.

pub mod admin;
pub mod bench;
pub mod cli;
pub mod config;
pub mod core;
pub mod discovery;
pub mod doctor;
pub mod http;
pub mod logging;
pub mod node;
pub mod providers;
pub mod service;
pub mod store;
pub mod task;
pub mod telemetry;
pub mod transport;
pub mod wire;

/// Installs ring as the process-wide rustls crypto provider (once; later
/// calls do nothing). d8's own TLS configs name ring explicitly, but HTTP
/// clients (reqwest) take the process default, and two providers compiled in
/// would make rustls refuse to pick one. Call before building any client.
pub fn ensure_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Err means another default is already installed; that one stays.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}
