//! Commands that talk to a running orchestrator over its HTTP API:
//! `d8 status`, `d8 token …`, `d8 workers …`, `d8 backup`, `d8 logs`,
//! `d8 usage`.

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;

use crate::cli::{ClientArgs, TokenAction, WorkersAction};
use crate::node::files::{self, default_data_dir};

/// An authenticated HTTP client for one orchestrator.
pub struct Client {
    http: reqwest::Client,
    base: String,
    key: String,
}

impl Client {
    /// Builds a client; the key comes from the flag/env or the orchestrator's data dir.
    pub fn new(args: &ClientArgs) -> Result<Client> {
        crate::ensure_crypto_provider();
        let key = match &args.api_key {
            Some(k) => k.trim().to_owned(),
            None => {
                let dir = args
                    .data_dir
                    .clone()
                    .unwrap_or_else(|| default_data_dir("orchestrator"));
                let path = dir.join(files::API_KEY);
                std::fs::read_to_string(&path)
                    .map(|s| s.trim().to_owned())
                    .with_context(|| {
                        format!(
                            "no API key: pass --api-key (or D8_API_KEY), or --data-dir of the orchestrator ({} not readable)",
                            path.display()
                        )
                    })?
            }
        };
        Ok(Client {
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(30))
                .build()
                .context("HTTP client")?,
            base: args.url.trim_end_matches('/').to_owned(),
            key,
        })
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value> {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.request(method, &url).bearer_auth(&self.key);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.map_err(|e| {
            anyhow!(
                "cannot reach the orchestrator at {}: {e} (is `d8 serve` running?)",
                self.base
            )
        })?;
        let status = resp.status();
        let value: Value = resp.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            let msg = value["error"]["message"].as_str().unwrap_or("no details");
            bail!("orchestrator answered {status}: {msg}");
        }
        Ok(value)
    }

    /// `GET url` for a long answer (a backup, a followed stream): sent with
    /// the key and `timeout` instead of the usual 30 s; a refusal becomes
    /// the orchestrator's message.
    async fn get_long(
        &self,
        url: reqwest::Url,
        timeout: std::time::Duration,
    ) -> Result<reqwest::Response> {
        let resp = self
            .http
            .get(url)
            .bearer_auth(&self.key)
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| anyhow!("cannot reach the orchestrator at {}: {e}", self.base))?;
        if !resp.status().is_success() {
            let status = resp.status();
            let v: Value = resp.json().await.unwrap_or(Value::Null);
            let msg = v["error"]["message"].as_str().unwrap_or("no details");
            bail!("orchestrator answered {status}: {msg}");
        }
        Ok(resp)
    }

    /// `GET /health`, whatever its status (it answers 503 when degraded).
    pub async fn health(&self) -> Result<Value> {
        let resp = self
            .http
            .get(format!("{}/health", self.base))
            .send()
            .await
            .map_err(|e| anyhow!("cannot reach the orchestrator at {}: {e}", self.base))?;
        Ok(resp.json().await.unwrap_or(Value::Null))
    }

    /// GET `path`.
    pub async fn get(&self, path: &str) -> Result<Value> {
        self.call(reqwest::Method::GET, path, None).await
    }
    /// POST `path` with a JSON body.
    pub async fn post(&self, path: &str, body: Value) -> Result<Value> {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }
    /// DELETE `path`.
    pub async fn delete(&self, path: &str) -> Result<Value> {
        self.call(reqwest::Method::DELETE, path, None).await
    }
}

/// One line on the orchestrator's own state, from `GET /health`.
fn health_line(h: &Value) -> String {
    let dropped = h["log_lines_dropped"].as_u64().unwrap_or(0);
    let mut line = match h["status"].as_str() {
        Some("ok") => "state: ok".to_owned(),
        Some("degraded") => format!(
            "state: DEGRADED, refusing new work: {}",
            h["reason"].as_str().unwrap_or("no reason given")
        ),
        Some("failing") => format!("state: FAILING (about to restart), stopped: {}", h["down"]),
        _ => format!("state: unknown ({h})"),
    };
    if dropped > 0 {
        line.push_str(&format!("   ({dropped} log lines could not be written)"));
    }
    line
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `groq:free gemini:free(cooldown 41s) anthropic:paid(key rejected)` from one
/// worker of `GET /api/workers`.
fn providers_summary(w: &Value) -> String {
    let cooldowns = w["provider_cooldowns"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let offers = w["offers"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let parts: Vec<String> = offers
        .iter()
        .map(|o| {
            let kind = o["provider"].as_str().unwrap_or("?");
            let mut part = format!("{kind}:{}", o["tier"].as_str().unwrap_or("?"));
            let mine = cooldowns.iter().filter(|r| r["provider"] == kind);
            let mut notes = Vec::new();
            for r in mine {
                let what = r["model"]
                    .as_str()
                    .map_or_else(String::new, |m| format!("{m} "));
                if r["disabled"] == true {
                    notes.push("key rejected".to_owned());
                } else {
                    let secs = r["remaining_ms"].as_u64().unwrap_or(0).div_ceil(1_000);
                    notes.push(format!("{what}cooldown {secs}s"));
                }
            }
            if !notes.is_empty() {
                part.push_str(&format!("({})", notes.join(", ")));
            }
            part
        })
        .collect();
    if parts.is_empty() {
        "-".to_owned()
    } else {
        parts.join(" ")
    }
}

fn print_workers(workers: &Value) {
    crate::out!(
        "{:<24} {:<9} {:<14} {:>6} {:>6} {:>9}  {:<16} PROVIDERS",
        "WORKER",
        "STATUS",
        "TYPE",
        "SLOTS",
        "ACTIVE",
        "COMPLETED",
        "OS/ARCH"
    );
    for w in workers.as_array().map(Vec::as_slice).unwrap_or_default() {
        crate::out!(
            "{:<24} {:<9} {:<14} {:>6} {:>6} {:>9}  {:<16} {}",
            s(&w["worker_id"]),
            s(&w["status"]),
            s(&w["worker_type"]),
            s(&w["slots"]),
            s(&w["active_tasks"]),
            s(&w["completed_tasks"]),
            format!("{}/{}", s(&w["os"]), s(&w["arch"])),
            providers_summary(w),
        );
    }
}

/// `d8 status`.
pub async fn status(args: &ClientArgs) -> Result<()> {
    let c = Client::new(args)?;
    let health = c.health().await?;
    let stats = c.get("/api/workers/stats").await?;
    let workers = c.get("/api/workers").await?;
    let w = &stats["workers"];
    let t = &stats["tasks"];
    crate::out!("orchestrator {}", c.base);
    crate::out!("{}", health_line(&health));
    crate::out!(
        "workers: {} total, {} online, {} busy   tasks: {} pending, {} assigned, {} completed, {} failed   success rate {}%",
        s(&w["total"]),
        s(&w["online"]),
        s(&w["busy"]),
        s(&t["pending"]),
        s(&t["assigned"]),
        s(&t["completed"]),
        s(&t["failed"]),
        s(&stats["performance"]["success_rate"]),
    );
    crate::out!();
    print_workers(&workers);
    Ok(())
}

/// `d8 backup FILE`: streams `GET /api/backup` into `FILE` (through a
/// `.part` file, renamed when complete; owner-only, as it holds token
/// hashes and worker records).
pub async fn backup(out: &std::path::Path, args: &ClientArgs) -> Result<()> {
    use tokio::io::AsyncWriteExt;
    let c = Client::new(args)?;
    let url = reqwest::Url::parse(&format!("{}/api/backup", c.base))
        .with_context(|| format!("--url {:?} is not a URL", c.base))?;
    let mut resp = c
        .get_long(url, std::time::Duration::from_secs(3_600))
        .await?;
    let part = out.with_extension("part");
    let mut file = {
        let mut o = tokio::fs::OpenOptions::new();
        o.write(true).create(true).truncate(true);
        #[cfg(unix)]
        o.mode(0o600);
        o.open(&part)
            .await
            .with_context(|| format!("cannot write {}", part.display()))?
    };
    let mut written: u64 = 0;
    while let Some(chunk) = resp.chunk().await.context("the backup broke off")? {
        file.write_all(&chunk)
            .await
            .with_context(|| format!("cannot write {}", part.display()))?;
        written += chunk.len() as u64;
    }
    file.sync_all().await.context("cannot sync the backup")?;
    drop(file);
    tokio::fs::rename(&part, out)
        .await
        .with_context(|| format!("cannot rename {} to {}", part.display(), out.display()))?;
    crate::out!("backup written: {} ({written} bytes)", out.display());
    Ok(())
}

/// `d8 token …`.
pub async fn token(action: &TokenAction, args: &ClientArgs) -> Result<()> {
    let c = Client::new(args)?;
    match action {
        TokenAction::Create { ttl, max_uses } => {
            let v = c
                .post(
                    "/api/tokens",
                    serde_json::json!({ "ttl_secs": ttl.map(|d| d.as_secs().max(1)), "max_uses": max_uses }),
                )
                .await?;
            crate::out!("{}", s(&v["token"]));
            crate::err!(
                "token id {} (expires: {}, max uses: {}); shown once, store it safely",
                s(&v["id"]),
                s(&v["expires_at"]),
                s(&v["max_uses"])
            );
        }
        TokenAction::List => {
            let v = c.get("/api/tokens").await?;
            crate::out!(
                "{:<14} {:<8} {:>6} {:>9} {:<8}",
                "ID",
                "KIND",
                "USES",
                "MAX_USES",
                "STATE"
            );
            for t in v.as_array().map(Vec::as_slice).unwrap_or_default() {
                let state = if t["revoked"].as_bool().unwrap_or(false) {
                    "revoked".to_owned()
                } else {
                    match t["expires_at"].as_u64() {
                        Some(e) if e <= crate::node::now_millis().0 => "expired".to_owned(),
                        Some(e) => format!("expires {}", crate::task::rfc3339(e)),
                        None => "active".to_owned(),
                    }
                };
                crate::out!(
                    "{:<14} {:<8} {:>6} {:>9} {}",
                    s(&t["id"]),
                    s(&t["kind"]),
                    s(&t["uses"]),
                    s(&t["max_uses"]),
                    state
                );
            }
        }
        TokenAction::Revoke { id } => {
            let v = c.delete(&format!("/api/tokens/{id}")).await?;
            crate::out!("revoked token {}", s(&v["id"]));
        }
        TokenAction::Rotate => {
            let v = c.post("/api/tokens/rotate", serde_json::json!({})).await?;
            crate::out!("{}", s(&v["token"]));
            crate::err!(
                "the previous join token no longer enrolls workers (enrolled workers are unaffected)"
            );
        }
    }
    Ok(())
}

/// `d8 workers …`.
pub async fn workers(action: &WorkersAction, args: &ClientArgs) -> Result<()> {
    let c = Client::new(args)?;
    match action {
        WorkersAction::List => print_workers(&c.get("/api/workers").await?),
        WorkersAction::Revoke { id } => {
            c.delete(&format!("/api/workers/{id}")).await?;
            crate::out!("revoked worker {id}; it was disconnected and can no longer connect");
        }
    }
    Ok(())
}

/// One line of `GET /api/logs` (JSON) as `d8 logs` prints it.
fn log_text(v: &Value) -> String {
    let from = v["worker"].as_str().unwrap_or("orchestrator");
    let fields: Vec<(&str, &str)> = v["fields"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.as_str(), v.as_str().unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default();
    crate::logging::line::render_text(
        v["ts"].as_str().unwrap_or("?"),
        v["level"].as_str().unwrap_or("?"),
        Some(from),
        v["target"].as_str().unwrap_or("?"),
        v["message"].as_str().unwrap_or_default(),
        fields,
    )
}

/// `d8 logs`: the log ring's lines, or (`--follow`) those and every new one.
pub async fn logs(args: &crate::cli::LogsArgs) -> Result<()> {
    /// Silence after which a followed stream counts as dead (the server
    /// sends a keep-alive every 15 s).
    const SILENCE: std::time::Duration = std::time::Duration::from_secs(45);
    let c = Client::new(&args.client)?;
    let mut url = reqwest::Url::parse(&format!("{}/api/logs", c.base))
        .with_context(|| format!("--url {:?} is not a URL", c.base))?;
    {
        let mut q = url.query_pairs_mut();
        if let Some(w) = &args.worker {
            q.append_pair("worker", w);
        }
        if args.orchestrator {
            q.append_pair("source", "orchestrator");
        }
        if let Some(l) = &args.level {
            q.append_pair("level", l);
        }
        if let Some(s) = &args.since {
            q.append_pair("since", s);
        }
        if let Some(n) = args.limit {
            q.append_pair("limit", &n.to_string());
        }
        if args.follow {
            q.append_pair("follow", "1");
        }
    }
    let print = |v: &Value| {
        if args.json {
            crate::out!("{v}");
        } else {
            crate::out!("{}", log_text(v));
        }
    };
    if !args.follow {
        let path = format!(
            "/api/logs{}",
            url.query().map(|q| format!("?{q}")).unwrap_or_default()
        );
        let v = c.get(&path).await?;
        for line in v["lines"].as_array().into_iter().flatten() {
            print(line);
        }
        let dropped = &v["dropped"];
        let lost: u64 = dropped["orchestrator"].as_u64().unwrap_or(0)
            + dropped["workers"]
                .as_object()
                .map(|m| m.values().filter_map(Value::as_u64).sum())
                .unwrap_or(0);
        if lost > 0 && !args.json {
            crate::err!(
                "({lost} lines were dropped before reaching the orchestrator: rate limit or backlog; see `dropped` in GET /api/logs)"
            );
        }
        return Ok(());
    }
    // Following has no end; a dead connection is noticed by its silence.
    let mut resp = c
        .get_long(url, std::time::Duration::from_secs(30 * 24 * 3600))
        .await?;
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let chunk = match tokio::time::timeout(SILENCE, resp.chunk()).await {
            Err(_) => bail!("the orchestrator went silent for {} s", SILENCE.as_secs()),
            Ok(Err(e)) => bail!("the log stream broke off: {e}"),
            Ok(Ok(None)) => bail!("the orchestrator closed the log stream"),
            Ok(Ok(Some(c))) => c,
        };
        buf.extend_from_slice(&chunk);
        // Events end with a blank line; `data:` lines carry the JSON.
        while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = buf.drain(..end + 2).collect();
            for line in String::from_utf8_lossy(&event).lines() {
                if let Some(data) = line.strip_prefix("data:")
                    && let Ok(v) = serde_json::from_str::<Value>(data.trim_start())
                {
                    print(&v);
                }
            }
        }
    }
}

/// `d8 usage`: a table of `GET /api/usage`.
pub async fn usage(args: &crate::cli::UsageArgs) -> Result<()> {
    let c = Client::new(&args.client)?;
    let mut url = reqwest::Url::parse(&format!("{}/api/usage", c.base))
        .with_context(|| format!("--url {:?} is not a URL", c.base))?;
    {
        let mut q = url.query_pairs_mut();
        q.append_pair("by", &args.by);
        if let Some(f) = &args.from {
            q.append_pair("from", f);
        }
        if let Some(t) = &args.to {
            q.append_pair("to", t);
        }
    }
    let path = format!("/api/usage?{}", url.query().unwrap_or_default());
    let v = c.get(&path).await?;
    if args.json {
        crate::out!("{v:#}");
        return Ok(());
    }
    crate::out!("{}", usage_table(&v));
    Ok(())
}

/// The text of `d8 usage` from the API's answer.
fn usage_table(v: &Value) -> String {
    let n = |x: &Value| x.as_u64().unwrap_or(0);
    let usd = |x: &Value| format!("{:.4}", x.as_f64().unwrap_or(0.0));
    let by = v["by"].as_str().unwrap_or("provider").to_uppercase();
    let rows = v["rows"].as_array().cloned().unwrap_or_default();
    let total = &v["total"];
    let line = |key: &str, r: &Value| {
        vec![
            key.to_owned(),
            n(&r["tasks"]).to_string(),
            n(&r["prompt_tokens"]).to_string(),
            n(&r["completion_tokens"]).to_string(),
            usd(&r["cost_usd"]),
            usd(&r["monthly_usd"]),
        ]
    };
    let mut table = vec![vec![
        by,
        "TASKS".into(),
        "PROMPT TOKENS".into(),
        "COMPLETION TOKENS".into(),
        "COST US$".into(),
        "MONTHLY US$".into(),
    ]];
    for r in &rows {
        let key = match r["key"].as_str() {
            Some("") => "(none)",
            Some(k) => k,
            None => "?",
        };
        table.push(line(key, r));
    }
    table.push(line("total", total));
    let widths: Vec<usize> = (0..6)
        .map(|i| {
            table
                .iter()
                .map(|r| r[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = format!(
        "usage {} to {} (UTC); monthly = this pace over 30 days\n",
        v["from"].as_str().unwrap_or("?"),
        v["to"].as_str().unwrap_or("?")
    );
    for r in &table {
        let mut cells = vec![format!("{:<w$}", r[0], w = widths[0])];
        cells.extend((1..6).map(|i| format!("{:>w$}", r[i], w = widths[i])));
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    let (without, unpriced) = (
        n(&total["tasks_without_usage"]),
        n(&total["tasks_unpriced"]),
    );
    if without > 0 {
        out.push_str(&format!(
            "{without} task(s) got no usage from their vendor: their tokens and cost are missing\n"
        ));
    }
    if unpriced > 0 {
        out.push_str(&format!(
            "{unpriced} task(s) ran on a billed key with no known price: add it to the worker file (price_per_mtok) or the orchestrator's prices.toml\n"
        ));
    }
    out.trim_end().to_owned()
}

#[cfg(test)]
mod tests {

    #[test]
    fn the_health_line_says_what_is_wrong() {
        use serde_json::json;
        assert_eq!(super::health_line(&json!({"status": "ok"})), "state: ok");
        let d = super::health_line(
            &json!({"status": "degraded", "reason": "store writes fail: disk full", "log_lines_dropped": 3}),
        );
        assert_eq!(
            d,
            "state: DEGRADED, refusing new work: store writes fail: disk full   (3 log lines could not be written)"
        );
        let f = super::health_line(&json!({"status": "failing", "down": ["store"]}));
        assert!(f.contains("FAILING") && f.contains("store"), "{f}");
    }

    use super::{providers_summary, usage_table};
    use serde_json::json;

    #[test]
    fn provider_summary_names_tiers_and_cooldowns() {
        let w = json!({
            "offers": [
                {"provider": "groq", "tier": "free"},
                {"provider": "anthropic", "tier": "paid"},
                {"provider": "ollama", "tier": "local"}
            ],
            "provider_cooldowns": [
                {"provider": "groq", "model": "llama", "remaining_ms": 40_200, "disabled": false},
                {"provider": "anthropic", "model": null, "remaining_ms": 0, "disabled": true}
            ]
        });
        assert_eq!(
            providers_summary(&w),
            "groq:free(llama cooldown 41s) anthropic:paid(key rejected) ollama:local"
        );
        assert_eq!(providers_summary(&json!({"offers": null})), "-");
    }

    #[test]
    fn the_usage_table_lines_up_and_says_what_is_missing() {
        let v = serde_json::json!({
            "by": "provider", "from": "2026-11-01", "to": "2026-11-30",
            "rows": [
                {"key": "groq", "tasks": 120, "prompt_tokens": 45000, "completion_tokens": 12000,
                 "cost_usd": 0.00321, "monthly_usd": 0.0963, "tasks_without_usage": 0, "tasks_unpriced": 0},
                {"key": "ollama", "tasks": 3, "prompt_tokens": 10, "completion_tokens": 20,
                 "cost_usd": 0.0, "monthly_usd": 0.0, "tasks_without_usage": 1, "tasks_unpriced": 0},
            ],
            "total": {"tasks": 123, "prompt_tokens": 45010, "completion_tokens": 12020,
                      "cost_usd": 0.00321, "monthly_usd": 0.0963, "tasks_without_usage": 1, "tasks_unpriced": 0},
        });
        let t = usage_table(&v);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0],
            "usage 2026-11-01 to 2026-11-30 (UTC); monthly = this pace over 30 days"
        );
        assert!(lines[1].starts_with("PROVIDER  TASKS"), "{t}");
        assert!(
            lines[2].starts_with("groq") && lines[2].ends_with("0.0032       0.0963"),
            "{t}"
        );
        assert!(lines[4].starts_with("total"), "{t}");
        assert!(lines[5].contains("1 task(s) got no usage"), "{t}");
        // Columns line up: every row as wide as the header.
        assert_eq!(lines[1].len(), lines[2].len(), "{t}");
    }
}
