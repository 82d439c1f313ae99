//! The web dashboard at `/`: plain HTML, CSS and JavaScript compiled into
//! the binary (no CDN, no build step), and what keeps it safe in a browser.
//!
//! - The page and its assets are public; everything they show comes from
//!   the API with the key, which the page asks for once and keeps in
//!   `sessionStorage` (sent as a bearer header, never in a URL).
//! - Every answer carries `Content-Security-Policy: default-src 'self';
//!   frame-ancestors 'none'` (no inline script or style, no other origin,
//!   no framing), `X-Content-Type-Options: nosniff` and
//!   `Referrer-Policy: no-referrer`.
//! - Without a key (`--no-auth`), a web page elsewhere could make the
//!   user's browser call the API through a DNS name it points at this
//!   machine (DNS rebinding). Then requests must name an allowed host:
//!   an IP address, `localhost`, this machine's hostname or mDNS name (and
//!   their `.local` forms), or one given with `--allow-host`.

use std::sync::OnceLock;

use axum::extract::{Path, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use serde_json::json;

use super::{ApiError, AppState};
use crate::node::{Cluster, now_millis};

const INDEX: &str = include_str!("dashboard/index.html");
const APP_JS: &str = include_str!("dashboard/app.js");
const APP_CSS: &str = include_str!("dashboard/app.css");
const FAVICON: &str = include_str!("dashboard/favicon.svg");

/// The Content-Security-Policy of every answer.
pub const CSP: &str =
    "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            // Small, and new with every release: always revalidated.
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// `GET /`: the page.
pub(super) async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX)
}

/// `GET /assets/{file}`.
pub(super) async fn assets(Path(file): Path<String>) -> Response {
    match file.as_str() {
        "app.js" => asset("text/javascript; charset=utf-8", APP_JS),
        "app.css" => asset("text/css; charset=utf-8", APP_CSS),
        "favicon.svg" => asset("image/svg+xml", FAVICON),
        _ => ApiError::not_found(format!("no asset {file:?}")).into_response_owned(),
    }
}

/// Adds the browser-safety headers (every answer gets them; see the module
/// notes).
pub(super) fn security_headers(h: &mut axum::http::HeaderMap) {
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        HeaderName::from_static("x-frame-options"),
        HeaderValue::from_static("DENY"),
    );
}

/// This machine's hostname, lower case (read once).
fn hostname() -> &'static str {
    static NAME: OnceLock<String> = OnceLock::new();
    NAME.get_or_init(|| {
        sysinfo::System::host_name()
            .unwrap_or_default()
            .to_ascii_lowercase()
    })
}

/// Whether a request naming `host` (the `Host` header) may be served
/// without a key.
pub(super) fn host_allowed(cluster: &Cluster, host: &str) -> bool {
    let host = host.trim().to_ascii_lowercase();
    // Strip the port: `[v6]:port`, `name:port`, `v4:port`.
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or_default().to_owned()
    } else if host.matches(':').count() == 1 {
        host.split(':').next().unwrap_or_default().to_owned()
    } else {
        host.clone()
    };
    let name = name.trim_end_matches('.');
    if name.parse::<std::net::IpAddr>().is_ok()
        || name == "localhost"
        || name.ends_with(".localhost")
    {
        return true;
    }
    let own = |n: &str| !n.is_empty() && (name == n || name == format!("{n}.local"));
    own(hostname())
        || cluster
            .node_info()
            .is_some_and(|i| own(&i.name.to_ascii_lowercase()))
        || cluster
            .config()
            .allowed_hosts
            .iter()
            .any(|a| a.trim_end_matches('.').eq_ignore_ascii_case(name))
}

/// The refusal for a host not on the list.
pub(super) fn host_refused(host: &str) -> Response {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "host_not_allowed",
        format!(
            "Host {host:?} is not allowed while the API runs without a key: use this machine's address or name, or start d8 serve with --allow-host {}",
            host.split(':').next().unwrap_or(host)
        ),
    )
    .into_response_owned()
}

/// `GET /api/cluster`: what the dashboard's header shows.
pub(super) async fn cluster_info(State(cluster): AppState) -> Response {
    let now = now_millis();
    let info = cluster.node_info();
    Json(json!({
        "name": info.map_or("d8", |i| i.name.as_str()),
        "version": env!("CARGO_PKG_VERSION"),
        "started_at": crate::task::rfc3339(cluster.started_at().0),
        "uptime_secs": now.since(cluster.started_at()) / 1_000,
        "quic_port": info.map(|i| i.quic_port),
        "mdns": info.is_some_and(|i| i.mdns),
        "auth": cluster.config().require_api_key,
    }))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_has_no_inline_script_or_style() {
        // CSP forbids both; the browser test would catch it too, later.
        assert!(!INDEX.contains("<script>") && !INDEX.contains("style="));
        assert!(INDEX.contains(r#"<script src="/assets/app.js" defer></script>"#));
        assert!(!APP_JS.contains("innerHTML"), "text goes in as text");
        assert!(!APP_JS.contains("eval("));
    }
}
