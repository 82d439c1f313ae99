//! `GET /metrics`: the Prometheus text exposition format (version 0.0.4),
//! written by hand from the cluster's own figures at each scrape. Nothing
//! is registered globally: every orchestrator (tests run several in one
//! process) answers with its own numbers. Labels take only bounded values
//! (statuses, provider kinds, worker types, status classes), never task or
//! agent ids.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::{Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{ApiError, AppState};

/// HTTP answers by status class (1xx..5xx), counted by [`every_answer`].
#[derive(Debug, Default)]
pub struct HttpCounters([AtomicU64; 5]);

/// Middleware on every answer: counts it by status class and adds the
/// browser-safety headers (one layer for both: it runs on every request).
pub async fn every_answer(
    State(counters): State<Arc<HttpCounters>>,
    req: Request,
    next: Next,
) -> Response {
    let mut resp = next.run(req).await;
    let class = usize::from(resp.status().as_u16() / 100).clamp(1, 5) - 1;
    counters.0[class].fetch_add(1, Ordering::Relaxed);
    super::dashboard::security_headers(resp.headers_mut());
    resp
}

/// A text in the exposition format, one family at a time.
#[derive(Default)]
struct Exposition(String);

impl Exposition {
    /// Starts a family: its help and type lines.
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    /// One sample of the current family.
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", escape(v));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }

    /// A whole histogram family (its `_bucket`, `_sum` and `_count`).
    fn histogram(&mut self, name: &str, help: &str, h: &crate::telemetry::HistogramSnapshot) {
        self.family(name, "histogram", help);
        let bucket = format!("{name}_bucket");
        for (le, n) in &h.buckets {
            self.sample(&bucket, &[("le", &le.to_string())], n);
        }
        self.sample(&bucket, &[("le", "+Inf")], h.count);
        self.sample(&format!("{name}_sum"), &[], h.sum);
        self.sample(&format!("{name}_count"), &[], h.count);
    }

    /// A counter family with one sample per label set.
    fn counters(
        &mut self,
        name: &str,
        help: &str,
        labels: &[&str],
        c: &crate::telemetry::Counters,
    ) {
        self.family(name, "counter", help);
        for (values, n) in c.snapshot() {
            let pairs: Vec<(&str, &str)> = labels
                .iter()
                .copied()
                .zip(values.iter().map(String::as_str))
                .collect();
            self.sample(name, &pairs, n);
        }
    }

    /// A family with one unlabelled sample.
    fn single(&mut self, name: &str, kind: &str, help: &str, value: u64) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }
}

/// A label value as the format wants it: `\`, `"` and newlines escaped.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// `GET /metrics`.
pub(super) async fn metrics(
    State(cluster): AppState,
    axum::Extension(http): axum::Extension<Arc<HttpCounters>>,
) -> Result<Response, ApiError> {
    let s = cluster.stats().await?;
    let workers = cluster.live_workers().await?;
    let mut e = Exposition::default();
    e.family("d8_build_info", "gauge", "The running d8 version.");
    e.sample(
        "d8_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1,
    );

    let c = s.counters;
    e.family(
        "d8_tasks_finished_total",
        "counter",
        "Tasks that reached a final state, since the store was created.",
    );
    for (status, n) in [
        ("completed", c.completed),
        ("failed", c.failed),
        ("cancelled", c.cancelled),
    ] {
        e.sample("d8_tasks_finished_total", &[("status", status)], n);
    }
    e.single(
        "d8_attempts_requeued_total",
        "counter",
        "Attempts put back in the queue (worker lost, timeout, transient error, rate limit) since start.",
        c.requeued,
    );
    e.single(
        "d8_late_results_total",
        "counter",
        "Results of superseded attempts, dropped, since start.",
        c.late_results,
    );
    e.single(
        "d8_tasks_pending",
        "gauge",
        "Tasks waiting for a worker.",
        s.pending as u64,
    );
    e.family(
        "d8_tasks_pending_by_priority",
        "gauge",
        "Tasks waiting for a worker, by priority (1 lowest, 10 most urgent).",
    );
    for p in 1..=10 {
        e.sample(
            "d8_tasks_pending_by_priority",
            &[("priority", &p.to_string())],
            s.pending_by_priority[p],
        );
    }
    e.single(
        "d8_tasks_running",
        "gauge",
        "Tasks running on a worker.",
        s.assigned as u64,
    );

    e.family("d8_workers", "gauge", "Connected workers by state.");
    for (state, n) in [
        ("connected", s.workers_total),
        ("online", s.workers_online),
        ("busy", s.workers_busy),
    ] {
        e.sample("d8_workers", &[("state", state)], n as u64);
    }
    e.family(
        "d8_workers_by_type",
        "gauge",
        "Connected workers by worker type.",
    );
    for (t, n) in &s.by_type {
        e.sample("d8_workers_by_type", &[("type", t)], *n as u64);
    }
    e.single(
        "d8_worker_slots",
        "gauge",
        "Tasks the connected workers run at once, in all.",
        workers.iter().map(|w| u64::from(w.caps.slots)).sum(),
    );
    let mut cooling: std::collections::BTreeMap<(String, bool), u64> = Default::default();
    for w in &workers {
        for cd in &w.cooldowns {
            *cooling
                .entry((cd.provider.clone(), cd.disabled))
                .or_default() += 1;
        }
    }
    e.family(
        "d8_provider_cooldowns",
        "gauge",
        "Providers (or their models) cooling down on connected workers; disabled: key rejected.",
    );
    for ((provider, disabled), n) in &cooling {
        let disabled = if *disabled { "true" } else { "false" };
        e.sample(
            "d8_provider_cooldowns",
            &[("provider", provider), ("disabled", disabled)],
            *n,
        );
    }

    let cache = cluster.cache().stats();
    e.single(
        "d8_cache_hits_total",
        "counter",
        "Answers served from the result cache since start.",
        cache.hits,
    );
    e.single(
        "d8_cache_misses_total",
        "counter",
        "Result cache lookups that found nothing, since start.",
        cache.misses,
    );
    e.single(
        "d8_cache_evictions_total",
        "counter",
        "Cached answers dropped for room, since start.",
        cache.evictions,
    );
    e.single(
        "d8_cache_entries",
        "gauge",
        "Answers in the result cache.",
        cache.entries as u64,
    );
    e.single(
        "d8_cache_bytes",
        "gauge",
        "Stored size of the result cache.",
        cache.bytes as u64,
    );

    e.family(
        "d8_http_responses_total",
        "counter",
        "HTTP answers by status class, since start.",
    );
    for (i, n) in http.0.iter().enumerate() {
        let class = format!("{}xx", i + 1);
        e.sample(
            "d8_http_responses_total",
            &[("class", &class)],
            n.load(Ordering::Relaxed),
        );
    }
    let t = cluster.telemetry();
    e.counters(
        "d8_tasks_submitted_total",
        "Tasks accepted, by type, since start (types past 64 pooled as other).",
        &["type"],
        &t.submitted,
    );
    e.counters(
        "d8_tasks_finished_by_type_total",
        "Tasks finished, by type and status, since start.",
        &["type", "status"],
        &t.finished,
    );
    e.counters(
        "d8_attempts_total",
        "Attempts that ended, by provider and outcome (ok, rate_limited, transient, permanent, worker_lost, timeout, unavailable), since start.",
        &["provider", "outcome"],
        &t.attempts,
    );
    e.histogram(
        "d8_queue_wait_seconds",
        "Time from a task's acceptance to its first dispatch.",
        &t.queue_wait.snapshot(),
    );
    e.histogram(
        "d8_task_duration_seconds",
        "Time from a task's acceptance to its completion (completed tasks).",
        &t.task_duration.snapshot(),
    );
    e.histogram(
        "d8_time_to_first_token_seconds",
        "Time from dispatch to the first streamed piece of output (streamed attempts).",
        &t.first_token.snapshot(),
    );
    e.histogram(
        "d8_store_commit_seconds",
        "Time for one store transaction to become durable.",
        &cluster.store().commit_time().snapshot(),
    );
    let usage = cluster.accounts().by_model();
    e.family(
        "d8_tokens_total",
        "counter",
        "Tokens of completed tasks by provider, model and kind (prompt, completion), since start.",
    );
    for ((provider, model), t) in &usage {
        for (kind, n) in [
            ("prompt", t.prompt_tokens),
            ("completion", t.completion_tokens),
        ] {
            let labels = [
                ("provider", provider.as_str()),
                ("model", model),
                ("kind", kind),
            ];
            e.sample("d8_tokens_total", &labels, n);
        }
    }
    e.family(
        "d8_cost_usd_total",
        "counter",
        "Estimated cost of completed tasks in US dollars by provider and model, since start.",
    );
    for ((provider, model), t) in &usage {
        let labels = [("provider", provider.as_str()), ("model", model)];
        e.sample("d8_cost_usd_total", &labels, t.cost_nanos as f64 / 1e9);
    }
    e.single(
        "d8_store_degraded",
        "gauge",
        "1 while the store cannot write (tasks are refused with 503).",
        u64::from(cluster.store().degraded().is_some()),
    );
    // Read from /proc: Linux only (the orchestrator's home is a Pi).
    #[cfg(target_os = "linux")]
    if let Some(rss) = crate::bench::proc_memory_bytes(std::process::id(), "VmRSS") {
        e.single(
            "d8_process_resident_memory_bytes",
            "gauge",
            "Resident memory of the orchestrator process.",
            rss,
        );
    }
    let mut resp = e.0.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        let mut e = Exposition::default();
        e.family("x", "gauge", "X.");
        e.sample("x", &[("p", "a\"b\\c\nd")], 3);
        assert_eq!(
            e.0,
            "# HELP x X.\n# TYPE x gauge\nx{p=\"a\\\"b\\\\c\\nd\"} 3\n"
        );
    }
}
