//! Turning a vendor's failed HTTP answer into a [`ProviderError`] that steers
//! the scheduler: how long to cool down after a 429 (from `Retry-After`, the
//! `x-ratelimit-reset-*` headers, Anthropic's `anthropic-ratelimit-*-reset`
//! timestamps, or Gemini's `RetryInfo.retryDelay` in the JSON body), quota
//! and budget exhaustion, bad keys, transient failures, and invalid requests
//! (which fail the task with the vendor's own message).
//!
//! Every message that leaves here has passed [`redact`]: vendors sometimes
//! echo (parts of) the key they were given.

use std::time::{Duration, SystemTime};

use reqwest::header::HeaderMap;

use super::{ProviderError, ProviderErrorKind};

/// Cooldown after a 429 that names no time.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(10);
/// Cooldown after a daily quota or budget is exhausted, when the vendor names no time.
pub const QUOTA_COOLDOWN: Duration = Duration::from_secs(3_600);
/// Longest cooldown honoured (a broken header must not park a worker for days).
pub const MAX_COOLDOWN: Duration = Duration::from_secs(24 * 3_600);
/// Shortest cooldown after a rate limit, whatever the vendor said:
/// `Retry-After: 0` or a reset time already past must not turn a key that
/// always answers 429 into a busy loop (one such key got 70 requests in
/// 0.6 s). The orchestrator's own minimum is the same second.
pub const MIN_COOLDOWN: Duration = Duration::from_secs(1);

/// Longest excerpt of vendor text in an error message (and so in a log line).
pub const MAX_MESSAGE: usize = 2_000;

/// Parses Go-style durations as used in `x-ratelimit-reset-*` and Gemini's
/// `retryDelay`: `"20ms"`, `"7.66s"`, `"2m59.56s"`, `"1h"`, or bare seconds.
pub fn parse_go_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    if let Ok(secs) = s.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(1e9)));
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return None;
        }
        let n: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        total += n * match unit {
            "h" => 3_600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 0.001,
            "us" | "µs" => 0.000_001,
            "ns" => 0.000_000_001,
            _ => return None,
        };
    }
    (total.is_finite() && total >= 0.0).then(|| Duration::from_secs_f64(total.min(1e9)))
}

/// Parses an RFC 3339 timestamp (`2026-11-25T18:00:30.5Z`), as Anthropic
/// sends its reset times.
fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    time::OffsetDateTime::parse(s.trim(), &time::format_description::well_known::Rfc3339)
        .ok()
        .map(SystemTime::from)
}

/// Parses an HTTP-date (`Wed, 21 Oct 2015 07:28:00 GMT`), the date form of `Retry-After`.
fn parse_http_date(s: &str) -> Option<SystemTime> {
    httpdate::parse_http_date(s.trim()).ok()
}

fn until(t: SystemTime, now: SystemTime) -> Duration {
    t.duration_since(now).unwrap_or_default()
}

/// The longest wait any rate-limit header asks for, if any does.
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let mut waits = Vec::new();
    if let Some(v) = text("retry-after") {
        if let Ok(secs) = v.trim().parse::<f64>() {
            if secs.is_finite() && secs >= 0.0 {
                waits.push(Duration::from_secs_f64(secs.min(1e9)));
            }
        } else if let Some(t) = parse_http_date(v) {
            waits.push(until(t, now));
        }
    }
    if let Some(ms) = text("retry-after-ms").and_then(|v| v.trim().parse::<u64>().ok()) {
        waits.push(Duration::from_millis(ms));
    }
    for name in ["x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"] {
        if let Some(d) = text(name).and_then(parse_go_duration) {
            waits.push(d);
        }
    }
    for name in [
        "anthropic-ratelimit-requests-reset",
        "anthropic-ratelimit-tokens-reset",
        "anthropic-ratelimit-input-tokens-reset",
        "anthropic-ratelimit-output-tokens-reset",
    ] {
        if let Some(t) = text(name).and_then(parse_rfc3339) {
            waits.push(until(t, now));
        }
    }
    // OpenRouter: `X-RateLimit-Reset`, a Unix time in milliseconds.
    if let Some(t) = text("x-ratelimit-reset").and_then(parse_epoch) {
        waits.push(until(t, now));
    }
    waits.into_iter().max()
}

/// A Unix time as OpenRouter sends it in `X-RateLimit-Reset`: milliseconds
/// (`1741305600000`); a value too small to be milliseconds of this century
/// is taken as seconds.
fn parse_epoch(s: &str) -> Option<SystemTime> {
    let n: u64 = s.trim().parse().ok()?;
    let d = if n >= 100_000_000_000 {
        Duration::from_millis(n)
    } else {
        Duration::from_secs(n)
    };
    SystemTime::UNIX_EPOCH.checked_add(d)
}

/// OpenRouter repeats the upstream limit's headers inside its JSON error
/// (`error.metadata.headers`, e.g. `{"X-RateLimit-Limit": "50",
/// "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "<ms>"}` with
/// "Rate limit exceeded: free-models-per-day", as reported verbatim in
/// Gitlawb/openclaude#936): the reset time from there.
fn openrouter_reset(body: &serde_json::Value, now: SystemTime) -> Option<Duration> {
    let headers = body["error"]["metadata"]["headers"].as_object()?;
    let (_, v) = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("x-ratelimit-reset"))?;
    let t = match v {
        serde_json::Value::String(s) => parse_epoch(s)?,
        serde_json::Value::Number(n) => parse_epoch(&n.to_string())?,
        _ => return None,
    };
    Some(until(t, now))
}

/// Gemini's `error.details[].retryDelay` (type `google.rpc.RetryInfo`).
fn gemini_retry_delay(body: &serde_json::Value) -> Option<Duration> {
    body["error"]["details"]
        .as_array()?
        .iter()
        .filter(|d| {
            d["@type"]
                .as_str()
                .is_some_and(|t| t.ends_with("google.rpc.RetryInfo"))
        })
        .find_map(|d| d["retryDelay"].as_str().and_then(parse_go_duration))
}

/// Google's structured error says the key is bad: an `ErrorInfo` detail with
/// reason `API_KEY_INVALID`. Gemini sends it with HTTP 400
/// `INVALID_ARGUMENT` ("API key not valid. Please pass a valid API key."),
/// not 401/403 (body shape as reported verbatim in
/// cequence-io/openai-scala-client#109 and google-gemini/gemini-cli#25198;
/// `google.rpc.ErrorInfo` per Google's AIP-193).
fn google_key_invalid(body: &serde_json::Value) -> bool {
    body["error"]["details"].as_array().is_some_and(|details| {
        details.iter().any(|d| {
            d["@type"]
                .as_str()
                .is_some_and(|t| t.ends_with("google.rpc.ErrorInfo"))
                && d["reason"] == "API_KEY_INVALID"
        })
    })
}

/// The window of a Google quota that a 429 names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum QuotaWindow {
    /// A per-minute limit: the model is free again in a moment.
    Minute,
    /// A per-day limit: the model is done until the daily reset.
    Day,
}

/// The window of the quota a Gemini 429 exceeded, from the structured
/// `QuotaFailure` detail's `quotaId` (`GenerateRequestsPerMinutePerProjectPerModel-FreeTier`,
/// `…PerDay…`), never from the message: Gemini's message says "check your
/// plan and billing details" for a per-minute limit too. Shape as sent by
/// Gemini, reported verbatim in google-gemini/gemini-cli#8437 and
/// RooCodeInc/Roo-Code#3883. A day wins over a minute when both are named.
fn google_quota_window(body: &serde_json::Value) -> Option<QuotaWindow> {
    let ids: Vec<&str> = body["error"]["details"]
        .as_array()?
        .iter()
        .filter(|d| {
            d["@type"]
                .as_str()
                .is_some_and(|t| t.ends_with("google.rpc.QuotaFailure"))
        })
        .flat_map(|d| d["violations"].as_array().into_iter().flatten())
        .filter_map(|v| v["quotaId"].as_str())
        .collect();
    if ids.iter().any(|id| id.contains("PerDay")) {
        Some(QuotaWindow::Day)
    } else if ids.iter().any(|id| id.contains("PerMinute")) {
        Some(QuotaWindow::Minute)
    } else {
        None
    }
}

/// Time until Gemini's daily quotas reset: midnight Pacific time, taken as
/// 08:00 UTC (midnight PST; during daylight time that is an hour after the
/// real reset, which errs on the side of not hammering a spent key).
fn until_daily_reset(now: SystemTime) -> Duration {
    const DAY: u64 = 24 * 3_600;
    const RESET: u64 = 8 * 3_600;
    let secs = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let into_day = secs % DAY;
    let left = if into_day < RESET {
        RESET - into_day
    } else {
        DAY - into_day + RESET
    };
    Duration::from_secs(left)
}

/// The vendor's own error text from a JSON error body, or a trimmed raw body.
fn vendor_message(body: &serde_json::Value, raw: &str) -> String {
    let candidates = [
        &body["error"]["message"],
        &body["message"],
        &body["error"],
        &body["detail"],
    ];
    candidates
        .iter()
        .find_map(|v| v.as_str().filter(|s| !s.is_empty()))
        .map(str::to_owned)
        .unwrap_or_else(|| raw.chars().take(300).collect::<String>().trim().to_owned())
}

/// Text that means "no more quota until later" rather than "slow down".
fn says_quota_exhausted(text: &str) -> bool {
    let t = text.to_ascii_lowercase();
    [
        "per day",
        "perday",
        "daily",
        "usage limit",
        "credit balance",
        "insufficient credit",
        "quota exceeded for quota metric",
        "billing",
    ]
    .iter()
    .any(|k| t.contains(k))
}

/// At most [`MAX_MESSAGE`] bytes of `text` with `key` (and anything shaped
/// like a key) redacted. Redaction runs on a window one key longer than the
/// cut, so a key that straddles the cut is still found whole.
pub fn excerpt(text: &str, key: Option<&str>) -> String {
    let window = floor_char_boundary(text, MAX_MESSAGE + key.map_or(0, str::len) + 64);
    let mut out = redact(&text[..window], key);
    if out.len() > MAX_MESSAGE || window < text.len() {
        out.truncate(floor_char_boundary(&out, MAX_MESSAGE));
        out.push_str(" …");
    }
    out
}

/// The largest char boundary of `s` at or below `at`.
fn floor_char_boundary(s: &str, at: usize) -> usize {
    if at >= s.len() {
        return s.len();
    }
    (0..=at).rev().find(|&i| s.is_char_boundary(i)).unwrap_or(0)
}

/// Removes `key` and anything that looks like a provider key from `text`.
pub fn redact(text: &str, key: Option<&str>) -> String {
    let mut out = text.to_owned();
    if let Some(k) = key.filter(|k| k.len() >= 8) {
        out = out.replace(k, "<redacted>");
    }
    // Known key shapes: OpenAI `sk-…`, Groq `gsk_…`, Anthropic `sk-ant-…`,
    // Google `AIza…`, OpenRouter `sk-or-…`.
    for prefix in ["sk-", "gsk_", "AIza"] {
        let mut from = 0;
        while let Some(pos) = out[from..].find(prefix) {
            let start = from + pos;
            let at_word_start = out[..start]
                .chars()
                .next_back()
                .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'));
            let len = out[start..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
                .unwrap_or(out.len() - start);
            if at_word_start && len >= prefix.len() + 12 {
                out.replace_range(start..start + len, "<redacted>");
                from = start + "<redacted>".len();
            } else {
                from = start + prefix.len();
            }
        }
    }
    out
}

/// Classifies a failed answer from `vendor`.
pub fn classify(
    vendor: &str,
    status: u16,
    headers: &HeaderMap,
    body: &str,
    key: Option<&str>,
    now: SystemTime,
) -> ProviderError {
    let json: serde_json::Value = serde_json::from_str(body).unwrap_or(serde_json::Value::Null);
    let said = excerpt(&vendor_message(&json, body), key);
    let ms = |d: Duration| {
        u64::try_from(d.clamp(MIN_COOLDOWN, MAX_COOLDOWN).as_millis()).unwrap_or(u64::MAX)
    };
    let window = google_quota_window(&json);
    let (kind, what) = match status {
        // Gemini's structured quota details decide before any wording.
        429 if window == Some(QuotaWindow::Day) => (
            ProviderErrorKind::RateLimited {
                retry_after_ms: ms(until_daily_reset(now)),
            },
            "daily quota of this model used up",
        ),
        429 if window == Some(QuotaWindow::Minute) => (
            ProviderErrorKind::RateLimited {
                retry_after_ms: ms(retry_after(headers, now)
                    .or_else(|| gemini_retry_delay(&json))
                    .unwrap_or(DEFAULT_RETRY_AFTER)),
            },
            "rate limited",
        ),
        429 if says_quota_exhausted(&said) || says_quota_exhausted(body) => (
            ProviderErrorKind::QuotaExhausted {
                retry_after_ms: ms(retry_after(headers, now)
                    .or_else(|| gemini_retry_delay(&json))
                    .or_else(|| openrouter_reset(&json, now))
                    .unwrap_or(QUOTA_COOLDOWN)),
            },
            "quota exhausted",
        ),
        429 => (
            ProviderErrorKind::RateLimited {
                retry_after_ms: ms(retry_after(headers, now)
                    .or_else(|| gemini_retry_delay(&json))
                    .or_else(|| openrouter_reset(&json, now))
                    .unwrap_or(DEFAULT_RETRY_AFTER)),
            },
            "rate limited",
        ),
        402 => (
            ProviderErrorKind::QuotaExhausted {
                retry_after_ms: ms(retry_after(headers, now).unwrap_or(QUOTA_COOLDOWN)),
            },
            "out of credit",
        ),
        400 if says_quota_exhausted(&said) => (
            ProviderErrorKind::QuotaExhausted {
                retry_after_ms: ms(retry_after(headers, now).unwrap_or(QUOTA_COOLDOWN)),
            },
            "usage limit reached",
        ),
        401 | 403 => (ProviderErrorKind::Auth, "key rejected"),
        400 if google_key_invalid(&json) => (ProviderErrorKind::Auth, "key rejected"),
        408 | 409 | 425 | 500..=599 => (ProviderErrorKind::Transient, "vendor unavailable"),
        _ => (ProviderErrorKind::Invalid, "request rejected"),
    };
    ProviderError {
        kind,
        message: format!("{vendor}: {what} (HTTP {status}): {said}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderName, HeaderValue};

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        h
    }

    fn now() -> SystemTime {
        parse_rfc3339("2026-11-25T18:00:00Z").expect("time")
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("20ms"), Some(Duration::from_millis(20)));
        assert_eq!(
            parse_go_duration("7.66s"),
            Some(Duration::from_millis(7_660))
        );
        assert_eq!(
            parse_go_duration("2m59.5s"),
            Some(Duration::from_millis(179_500))
        );
        assert_eq!(parse_go_duration("1h"), Some(Duration::from_secs(3_600)));
        assert_eq!(parse_go_duration("30"), Some(Duration::from_secs(30)));
        for bad in ["", "s", "5x", "-3s", "1..2s"] {
            assert_eq!(parse_go_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn dates() {
        let t = parse_rfc3339("2026-11-25T18:00:30.5Z").expect("rfc3339");
        assert_eq!(until(t, now()), Duration::from_millis(30_500));
        let h = parse_http_date("Wed, 25 Nov 2026 18:01:00 GMT").expect("http date");
        assert_eq!(until(h, now()), Duration::from_secs(60));
        assert!(parse_http_date("tomorrow").is_none());
        // An offset is honoured: 18:00:30+01:00 is 17:00:30Z, already past.
        let t = parse_rfc3339("2026-11-25T18:00:30+01:00").expect("offset");
        assert_eq!(until(t, now()), Duration::ZERO);
        for hostile in [
            "99999999999999999-01-01T00:00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-01-01T25:00:00Z",
            "2026-01-01T00:00:00.12345678é9Z",
            "2026-01-01T00:00:00.Z",
        ] {
            assert!(parse_rfc3339(hostile).is_none(), "{hostile}");
        }
    }

    #[test]
    fn rate_limit_waits_come_from_every_header_style() {
        let cases: Vec<(Vec<(&str, &str)>, Duration)> = vec![
            (vec![("retry-after", "12")], Duration::from_secs(12)),
            (
                vec![("retry-after", "Wed, 25 Nov 2026 18:00:45 GMT")],
                Duration::from_secs(45),
            ),
            (
                vec![
                    ("x-ratelimit-reset-requests", "2m0s"),
                    ("x-ratelimit-reset-tokens", "7.5s"),
                ],
                Duration::from_secs(120),
            ),
            (
                vec![("anthropic-ratelimit-requests-reset", "2026-11-25T18:00:20Z")],
                Duration::from_secs(20),
            ),
            (
                vec![("retry-after-ms", "1500")],
                Duration::from_millis(1_500),
            ),
        ];
        for (h, want) in cases {
            assert_eq!(retry_after(&headers(&h), now()), Some(want), "{h:?}");
        }
        assert_eq!(
            retry_after(&headers(&[("retry-after", "soon")]), now()),
            None
        );
    }

    #[test]
    fn gemini_retry_info_in_the_body() {
        let body = r#"{"error":{"code":429,"message":"Resource has been exhausted (e.g. check quota).","status":"RESOURCE_EXHAUSTED",
            "details":[{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"31s"}]}}"#;
        let e = classify("gemini", 429, &HeaderMap::new(), body, None, now());
        assert_eq!(
            e.kind,
            ProviderErrorKind::RateLimited {
                retry_after_ms: 31_000
            }
        );
    }

    #[test]
    fn a_bad_gemini_key_is_a_rejected_key_although_its_status_is_400() {
        // Gemini's answer to a bad key, as its servers send it (see
        // `google_key_invalid`). Before: a bad request, the task failed and
        // the key kept getting tasks.
        let body = r#"{"error": {"code": 400, "message": "API key not valid. Please pass a valid API key.", "status": "INVALID_ARGUMENT", "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID", "domain": "googleapis.com", "metadata": {"service": "generativelanguage.googleapis.com"}}, {"@type": "type.googleapis.com/google.rpc.LocalizedMessage", "locale": "en-US", "message": "API key not valid. Please pass a valid API key."}]}}"#;
        let e = classify("gemini", 400, &HeaderMap::new(), body, None, now());
        assert_eq!(e.kind, ProviderErrorKind::Auth);
        assert!(
            e.message.contains("key rejected") && e.message.contains("API key not valid"),
            "{}",
            e.message
        );
        // Another 400 with structured details is still the request's fault.
        let other = r#"{"error": {"code": 400, "message": "Invalid JSON payload", "status": "INVALID_ARGUMENT", "details": [{"@type": "type.googleapis.com/google.rpc.BadRequest", "fieldViolations": []}]}}"#;
        assert_eq!(
            classify("gemini", 400, &HeaderMap::new(), other, None, now()).kind,
            ProviderErrorKind::Invalid
        );
    }

    #[test]
    fn a_zero_or_past_retry_time_still_cools_down_for_the_minimum() {
        let past = httpdate::fmt_http_date(now() - Duration::from_secs(60));
        for h in [
            headers(&[("retry-after", "0")]),
            headers(&[("retry-after", past.as_str())]),
            headers(&[("x-ratelimit-reset-requests", "0s")]),
        ] {
            let e = classify("groq", 429, &h, "{}", None, now());
            assert_eq!(
                e.kind,
                ProviderErrorKind::RateLimited {
                    retry_after_ms: 1_000
                },
                "{h:?}"
            );
        }
    }

    /// A Gemini 429 as its servers send it (see `google_quota_window`),
    /// exceeding the quota `quota_id`, with a `RetryInfo` of 26 s.
    fn gemini_429(quota_id: &str) -> String {
        serde_json::json!({"error": {
            "code": 429,
            "message": "You exceeded your current quota, please check your plan and billing details. For more information on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits.",
            "status": "RESOURCE_EXHAUSTED",
            "details": [
                {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [
                    {"quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                     "quotaId": quota_id,
                     "quotaDimensions": {"location": "global", "model": "gemini-2.0-flash"},
                     "quotaValue": "15"}]},
                {"@type": "type.googleapis.com/google.rpc.Help", "links": [{"description": "Learn more about Gemini API quotas", "url": "https://ai.google.dev/gemini-api/docs/rate-limits"}]},
                {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "26s"}
            ]}})
        .to_string()
    }

    #[test]
    fn gemini_quota_windows_come_from_the_quota_id_not_the_wording() {
        // Before: "billing" in the message made every Gemini 429 a spent
        // key (the whole provider cooled down for an hour, its other models
        // untried).
        let h = HeaderMap::new();
        let minute = classify(
            "gemini",
            429,
            &h,
            &gemini_429("GenerateRequestsPerMinutePerProjectPerModel-FreeTier"),
            None,
            now(),
        );
        assert_eq!(
            minute.kind,
            ProviderErrorKind::RateLimited {
                retry_after_ms: 26_000
            }
        );
        // 2026-11-30T10:00:00Z: the daily reset (08:00 UTC) is 22 h away.
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_032_800);
        let day = classify(
            "gemini",
            429,
            &h,
            &gemini_429("GenerateRequestsPerDayPerProjectPerModel-FreeTier"),
            None,
            at,
        );
        assert_eq!(
            day.kind,
            ProviderErrorKind::RateLimited {
                retry_after_ms: 22 * 3_600 * 1_000
            },
            "a model-level rest until the daily reset, not the 26 s RetryInfo"
        );
        assert!(day.message.contains("daily quota"), "{}", day.message);
    }

    #[test]
    fn the_daily_reset_is_the_next_08_00_utc() {
        let t = |s: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
        let midnight = 1_796_000_000 - 1_796_000_000 % 86_400;
        assert_eq!(
            until_daily_reset(t(midnight)),
            Duration::from_secs(8 * 3_600)
        );
        assert_eq!(
            until_daily_reset(t(midnight + 8 * 3_600)),
            Duration::from_secs(24 * 3_600)
        );
        assert_eq!(
            until_daily_reset(t(midnight + 9 * 3_600)),
            Duration::from_secs(23 * 3_600)
        );
    }

    #[test]
    fn openrouter_reset_times_are_honoured_from_headers_and_body() {
        // Before: OpenRouter's reset was ignored and the 10 s default used,
        // so a spent daily free-model allowance was retried every 10 s.
        let t0 = now();
        let later = (t0 + Duration::from_secs(5 * 3_600))
            .duration_since(SystemTime::UNIX_EPOCH)
            .expect("epoch")
            .as_millis()
            .to_string();
        let body = serde_json::json!({"error": {
            "message": "Rate limit exceeded: free-models-per-day. Add 10 credits to unlock 1000 free model requests per day",
            "code": 429,
            "metadata": {"headers": {"X-RateLimit-Limit": "50", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": later}}}})
        .to_string();
        let from_body = classify("openrouter", 429, &HeaderMap::new(), &body, None, t0);
        let from_header = classify(
            "openrouter",
            429,
            &headers(&[("x-ratelimit-reset", later.as_str())]),
            "{}",
            None,
            t0,
        );
        // The daily allowance (its message offers credits) cools the whole
        // key; a plain 429 with the header cools the model. Both until the
        // reset, five hours away, not the 1 h or 10 s defaults.
        let wait = |k: ProviderErrorKind| match k {
            ProviderErrorKind::RateLimited { retry_after_ms }
            | ProviderErrorKind::QuotaExhausted { retry_after_ms } => retry_after_ms,
            other => panic!("{other:?}"),
        };
        for e in [from_body, from_header] {
            let ms = wait(e.kind);
            assert!(
                (5 * 3_600_000 - 1_000..=5 * 3_600_000).contains(&ms),
                "{ms}"
            );
        }
    }

    #[test]
    fn every_status_class() {
        let h = HeaderMap::new();
        let k = |status, body: &str| classify("v", status, &h, body, None, now()).kind;
        assert_eq!(
            k(429, "{}"),
            ProviderErrorKind::RateLimited {
                retry_after_ms: 10_000
            }
        );
        assert_eq!(
            k(
                429,
                r#"{"error":{"message":"Quota exceeded for quota metric 'GenerateContent requests per day'"}}"#
            ),
            ProviderErrorKind::QuotaExhausted {
                retry_after_ms: 3_600_000
            }
        );
        assert_eq!(
            k(402, r#"{"error":{"message":"Insufficient credits"}}"#),
            ProviderErrorKind::QuotaExhausted {
                retry_after_ms: 3_600_000
            }
        );
        assert_eq!(
            k(
                400,
                r#"{"type":"error","error":{"type":"invalid_request_error","message":"You have reached your specified API usage limits."}}"#
            ),
            ProviderErrorKind::QuotaExhausted {
                retry_after_ms: 3_600_000
            }
        );
        assert_eq!(k(401, "{}"), ProviderErrorKind::Auth);
        assert_eq!(k(403, "{}"), ProviderErrorKind::Auth);
        assert_eq!(k(500, "oops"), ProviderErrorKind::Transient);
        assert_eq!(
            k(
                529,
                r#"{"type":"error","error":{"type":"overloaded_error"}}"#
            ),
            ProviderErrorKind::Transient
        );
        assert_eq!(
            k(404, r#"{"error":{"message":"model not found"}}"#),
            ProviderErrorKind::Invalid
        );
        let e = classify(
            "groq",
            400,
            &h,
            r#"{"error":{"message":"context too long"}}"#,
            None,
            now(),
        );
        assert_eq!(
            e.message,
            "groq: request rejected (HTTP 400): context too long"
        );
        // Absurd waits are capped.
        let long = classify(
            "v",
            429,
            &headers(&[("retry-after", "99999999")]),
            "{}",
            None,
            now(),
        );
        assert_eq!(
            long.kind,
            ProviderErrorKind::RateLimited {
                retry_after_ms: 86_400_000
            }
        );
    }

    #[test]
    fn keys_never_survive() {
        let key = "gsk_live_0123456789abcdefghij";
        let body = format!(
            r#"{{"error":{{"message":"Invalid API Key: {key} (also sk-proj-ABCDEFGHIJKLMNOP and AIzaSyA1234567890abcdef)"}}}}"#
        );
        let e = classify("groq", 401, &HeaderMap::new(), &body, Some(key), now());
        assert!(!e.message.contains(key), "{}", e.message);
        assert!(
            !e.message.contains("sk-proj-ABCDEFGHIJKLMNOP"),
            "{}",
            e.message
        );
        assert!(
            !e.message.contains("AIzaSyA1234567890abcdef"),
            "{}",
            e.message
        );
        assert!(e.message.contains("<redacted>"));
        assert_eq!(
            redact("a task-based sk-short reply", None),
            "a task-based sk-short reply"
        );
        let prose = "a task-based-approach-with-many-words";
        assert_eq!(redact(prose, None), prose);
    }
}
