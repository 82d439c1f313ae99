//! What a worker's providers cost, and the daily budgets the worker keeps
//! for them.
//!
//! Prices: the worker file's, else d8's built-in list prices for the models
//! it ships as defaults ([`builtin_prices`]), and nothing for the local and
//! free tiers, which cost nothing. The worker advertises them with its
//! offers; the orchestrator accounts usage with them (or with its own
//! prices file).
//!
//! Budgets (`max_usd_per_day`, `max_tokens_per_day` in the worker file): a
//! provider whose spend today (UTC) reaches either rests until midnight
//! UTC, reported like any other rest (reason `budget`). The day's spend is
//! kept in the worker's data dir ([`Ledger`]), so a restart does not reset
//! it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::task::{Price, Usage};

/// Built-in list prices (US$ per million tokens, input / output) of the
/// models d8 uses by default, as each vendor's pricing page listed them in
/// 2025. A snapshot: vendors change prices, so a worker file's
/// `price_per_mtok` / `model_prices`, or the orchestrator's `prices.toml`,
/// win over it. Providers on the local or free tier cost nothing whatever
/// this says.
const BUILTIN: &[(&str, &str, f64, f64)] = &[
    ("anthropic", "claude-3-5-haiku-latest", 0.80, 4.00),
    ("gemini", "gemini-2.0-flash", 0.10, 0.40),
    ("gemini", "gemini-embedding-001", 0.15, 0.0),
    ("openai", "gpt-4o-mini", 0.15, 0.60),
    ("openai", "text-embedding-3-small", 0.02, 0.0),
    ("groq", "llama-3.1-8b-instant", 0.05, 0.08),
    ("groq", "llama-3.3-70b-versatile", 0.59, 0.79),
    ("deepseek", "deepseek-chat", 0.28, 0.42),
    ("deepseek", "deepseek-reasoner", 0.28, 0.42),
];

/// The built-in prices of a provider kind's models.
pub fn builtin_prices(kind: &str) -> Vec<(String, Price)> {
    BUILTIN
        .iter()
        .filter(|(k, ..)| *k == kind)
        .filter_map(|(_, m, i, o)| Price::from_usd(*i, *o).map(|p| ((*m).to_owned(), p)))
        .collect()
}

/// A provider's daily limits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Budget {
    /// Most nano-dollars a UTC day.
    pub max_nanos: Option<u64>,
    /// Most tokens (prompt + completion) a UTC day.
    pub max_tokens: Option<u64>,
}

impl Budget {
    /// Whether there is any limit.
    pub fn is_set(&self) -> bool {
        self.max_nanos.is_some() || self.max_tokens.is_some()
    }

    /// Whether `spent` reached a limit.
    pub fn spent(&self, spent: &Spent) -> bool {
        self.max_nanos.is_some_and(|m| spent.nanos >= m)
            || self.max_tokens.is_some_and(|m| spent.tokens >= m)
    }
}

/// A provider's spend on one UTC day.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spent {
    /// Days since the Unix epoch (UTC).
    pub day: u64,
    /// Nano-dollars.
    pub nanos: u64,
    /// Tokens, prompt and completion.
    pub tokens: u64,
}

impl Spent {
    /// Adds a call's usage at `cost` nano-dollars, starting over on a new day.
    pub fn add(&mut self, today: u64, usage: Usage, cost: u64) {
        if self.day != today {
            *self = Spent {
                day: today,
                ..Spent::default()
            };
        }
        self.nanos = self.nanos.saturating_add(cost);
        self.tokens = self
            .tokens
            .saturating_add(u64::from(usage.prompt_tokens) + u64::from(usage.completion_tokens));
    }
}

/// Today (UTC) in days since the epoch, and the time left until it ends.
pub fn today() -> (u64, Duration) {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    (secs / 86_400, Duration::from_secs(86_400 - secs % 86_400))
}

/// The day's spend per provider kind, in `<data-dir>/spend.json`.
#[derive(Debug, Clone)]
pub struct Ledger {
    path: PathBuf,
}

impl Ledger {
    /// The ledger at `path`.
    pub fn new(path: &Path) -> Ledger {
        Ledger {
            path: path.to_owned(),
        }
    }

    /// What was spent `today`, per provider kind; an unreadable or stale
    /// file counts as nothing spent (and is said so in the log).
    pub fn load(&self, today: u64) -> BTreeMap<String, Spent> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return BTreeMap::new(),
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot read the day's spend; budgets start from zero");
                return BTreeMap::new();
            }
        };
        match serde_json::from_str::<BTreeMap<String, Spent>>(&text) {
            Ok(m) => m.into_iter().filter(|(_, s)| s.day == today).collect(),
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "the day's spend file is not valid; budgets start from zero");
                BTreeMap::new()
            }
        }
    }

    /// Writes the spend (a new file renamed over the old, so a crash
    /// leaves one or the other whole; a failure is logged, never fatal).
    pub fn save(&self, spent: &BTreeMap<String, Spent>) {
        let Ok(text) = serde_json::to_vec_pretty(spent) else {
            return;
        };
        let part = self.path.with_extension("json.part");
        let written =
            std::fs::write(&part, &text).and_then(|()| std::fs::rename(&part, &self.path));
        if let Err(e) = written {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot save the day's spend");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_prices_are_micro_dollars_per_million() {
        let groq = builtin_prices("groq");
        let (_, p) = groq
            .iter()
            .find(|(m, _)| m == "llama-3.3-70b-versatile")
            .expect("listed");
        assert_eq!(
            *p,
            Price {
                input: 590_000,
                output: 790_000
            }
        );
        assert!(builtin_prices("ollama").is_empty());
        // 1M in + 1M out at $0.59/$0.79 is $1.38.
        assert_eq!(
            p.cost_nanos(Usage::new(1_000_000, 1_000_000)),
            1_380_000_000
        );
        // Small calls are not rounded away: 100 tokens at $0.05/M is 5,000 n$.
        let small = Price::from_usd(0.05, 0.08).expect("price");
        assert_eq!(small.cost_nanos(Usage::new(100, 0)), 5_000);
        assert_eq!(Price::from_usd(-1.0, 0.0), None);
        assert_eq!(Price::from_usd(f64::NAN, 0.0), None);
    }

    #[test]
    fn budgets_trip_on_either_limit_and_a_new_day_starts_over() {
        let b = Budget {
            max_nanos: Some(1_000),
            max_tokens: Some(500),
        };
        let mut s = Spent::default();
        s.add(10, Usage::new(100, 100), 400);
        assert!(!b.spent(&s));
        s.add(10, Usage::new(200, 100), 100);
        assert!(b.spent(&s), "500 tokens");
        s.add(11, Usage::new(1, 1), 1);
        assert_eq!(
            s,
            Spent {
                day: 11,
                nanos: 1,
                tokens: 2
            }
        );
        let (_, left) = today();
        assert!(left > Duration::ZERO && left <= Duration::from_secs(86_400));
    }

    #[test]
    fn the_ledger_keeps_only_today() {
        let dir = tempfile::tempdir().expect("dir");
        let l = Ledger::new(&dir.path().join("spend.json"));
        assert!(l.load(5).is_empty());
        let mut m = BTreeMap::new();
        m.insert(
            "groq".to_owned(),
            Spent {
                day: 5,
                nanos: 7,
                tokens: 9,
            },
        );
        m.insert(
            "gemini".to_owned(),
            Spent {
                day: 4,
                nanos: 1,
                tokens: 1,
            },
        );
        l.save(&m);
        let back = l.load(5);
        assert_eq!(back.len(), 1);
        assert_eq!(back["groq"].nanos, 7);
        std::fs::write(dir.path().join("spend.json"), "not json").expect("write");
        assert!(l.load(5).is_empty());
    }
}
