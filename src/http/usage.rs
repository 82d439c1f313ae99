//! `GET /api/usage?by=provider|model|worker|agent|day&from=&to=`: tokens
//! and estimated cost of completed tasks, summed per group over UTC days.
//!
//! `from` and `to` are `YYYY-MM-DD` (UTC, both included); by default the
//! last 30 days up to today. The answer:
//! `{"by", "from", "to", "rows": [{"key", "tasks", "prompt_tokens",
//! "completion_tokens", "total_tokens", "cost_usd", "monthly_usd",
//! "tasks_without_usage", "tasks_unpriced"}], "total": {…}, "daily":
//! [{"day", "tasks", "total_tokens", "cost_usd"}]}`. `daily` has every day
//! of the range, zeros included (a chart's x axis). `monthly_usd` is the
//! range's cost scaled to 30 days, counted from the first day with any
//! usage in the range to the range's end or today, whichever is earlier:
//! what the cluster costs a month at the pace it has run.

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Json};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, ApiResult, AppState};
use crate::node::now_millis;
use crate::node::usage::{By, day_str, group};
use crate::store::UsageTotals;

/// Longest range one query may cover, in days.
const MAX_DAYS: u32 = 3_660;
/// Days of the default range.
const DEFAULT_DAYS: u32 = 30;

/// The raw query.
#[derive(Debug, Deserialize)]
pub(super) struct UsageParams {
    by: Option<String>,
    from: Option<String>,
    to: Option<String>,
}

/// `YYYY-MM-DD` as days since the Unix epoch.
pub(crate) fn parse_day(s: &str) -> Option<u32> {
    let mut it = s.trim().splitn(3, '-');
    let (y, m, d) = (it.next()?, it.next()?, it.next()?);
    if y.len() != 4 || m.len() != 2 || d.len() != 2 {
        return None;
    }
    let date = time::Date::from_calendar_date(
        y.parse().ok()?,
        time::Month::try_from(m.parse::<u8>().ok()?).ok()?,
        d.parse().ok()?,
    )
    .ok()?;
    // Julian day 2440588 is 1970-01-01.
    u32::try_from(date.to_julian_day() - 2_440_588).ok()
}

fn bad(code: &'static str, param: &str, message: String) -> ApiError {
    ApiError::bad_request(code, message).with_param(param)
}

/// Nano-dollars as dollars (a small call costs fractions of a micro-dollar:
/// nothing is rounded away).
fn usd(nanos: u64) -> f64 {
    nanos as f64 / 1e9
}

fn totals_json(key: Option<&str>, t: &UsageTotals, active_days: u32) -> Value {
    let mut v = json!({
        "tasks": t.tasks,
        "prompt_tokens": t.prompt_tokens,
        "completion_tokens": t.completion_tokens,
        "total_tokens": t.prompt_tokens.saturating_add(t.completion_tokens),
        "cost_usd": usd(t.cost_nanos),
        "monthly_usd": usd(t.cost_nanos.saturating_mul(30) / u64::from(active_days.max(1))),
        "tasks_without_usage": t.tasks_without_usage,
        "tasks_unpriced": t.tasks_unpriced,
    });
    if let Some(k) = key {
        v["key"] = json!(k);
    }
    v
}

/// `GET /api/usage`.
pub(super) async fn usage(State(cluster): AppState, Query(p): Query<UsageParams>) -> ApiResult {
    let by = match p.by.as_deref() {
        None => By::Provider,
        Some(b) => By::parse(b).ok_or_else(|| {
            bad(
                "invalid_by",
                "by",
                format!("by {b:?} is not one of provider, model, worker, agent, day"),
            )
        })?,
    };
    let today = u32::try_from(now_millis().0 / 86_400_000).unwrap_or(u32::MAX);
    let day = |param: &str, v: Option<&str>| {
        v.map(|s| {
            parse_day(s).ok_or_else(|| {
                bad(
                    "invalid_date",
                    param,
                    format!("{param} {s:?} is not a date like 2026-11-30"),
                )
            })
        })
        .transpose()
    };
    let to = day("to", p.to.as_deref())?.unwrap_or(today);
    let from =
        day("from", p.from.as_deref())?.unwrap_or_else(|| to.saturating_sub(DEFAULT_DAYS - 1));
    if from > to {
        return Err(bad("invalid_date", "from", "from is after to".to_owned()));
    }
    if to - from >= MAX_DAYS {
        return Err(bad(
            "invalid_date",
            "from",
            format!("a range covers at most {MAX_DAYS} days"),
        ));
    }
    let rows = cluster.usage(from, to)?;
    let first = rows.iter().map(|(k, _)| k.day).min();
    let active_days = first.map_or(1, |f| to.min(today).saturating_sub(f) + 1);
    let mut total = UsageTotals::default();
    for (_, t) in &rows {
        total.add(t);
    }
    let groups: Vec<Value> = group(&rows, by)
        .iter()
        .map(|(k, t)| totals_json(Some(k), t, active_days))
        .collect();
    let per_day = group(&rows, By::Day);
    let daily: Vec<Value> = (from..=to)
        .map(|d| {
            let name = day_str(d);
            let t = per_day
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, t)| *t)
                .unwrap_or_default();
            json!({
                "day": name,
                "tasks": t.tasks,
                "total_tokens": t.prompt_tokens.saturating_add(t.completion_tokens),
                "cost_usd": usd(t.cost_nanos),
            })
        })
        .collect();
    Ok(Json(json!({
        "by": p.by.as_deref().unwrap_or("provider"),
        "from": day_str(from),
        "to": day_str(to),
        "rows": groups,
        "total": totals_json(None, &total, active_days),
        "daily": daily,
    }))
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_parse_strictly() {
        assert_eq!(parse_day("1970-01-01"), Some(0));
        assert_eq!(parse_day("1970-01-31"), Some(30));
        assert_eq!(parse_day("2026-11-30"), Some(20_787));
        assert_eq!(day_str(20_787), "2026-11-30");
        for bad in [
            "2026-13-01",
            "2026-02-30",
            "26-11-30",
            "yesterday",
            "1969-12-31",
            "",
        ] {
            assert_eq!(parse_day(bad), None, "{bad}");
        }
    }

    #[test]
    fn dollars_keep_fractions_of_a_micro_dollar() {
        assert_eq!(usd(1_380_000_000), 1.38);
        assert_eq!(usd(740), 0.000_000_74);
    }
}
