//! Usage and cost accounting on the orchestrator.
//!
//! Every completed task that a worker ran is charged once, when it
//! finishes: its prompt and completion tokens and an estimated cost, added
//! to a row per UTC day, provider, model, worker and agent in the store, in
//! the same transaction as the task's result (a crash loses both or
//! neither). Cache hits ran nothing and cost nothing.
//!
//! The price of a call: nothing on the local and free tiers (as the worker
//! advertised its provider); otherwise the orchestrator's prices file
//! (`<data-dir>/prices.toml` or `--prices`) for that provider and model,
//! else the price the worker advertised (its file's, else d8's built-in
//! list price). A call whose vendor reported no usage is counted as a task
//! without tokens; a billed call without any known price has tokens but no
//! cost, and is counted as unpriced, so a total never looks complete when
//! it is not.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use serde::Deserialize;

use crate::providers::file::PriceUsd;
use crate::store::{UsageKey, UsageTotals};
use crate::task::{FinishedTask, Offer, Price, TaskStatus, Tier};

/// Distinct agents a day may have rows; past it, new agents are pooled as
/// `(other)` (agent ids are the clients' to choose).
pub const MAX_AGENTS_PER_DAY: usize = 10_000;
/// The agent name rows are pooled under past [`MAX_AGENTS_PER_DAY`].
pub const OTHER_AGENT: &str = "(other)";
/// Provider/model pairs tracked for `/metrics`; past it they are pooled.
const MAX_METRIC_SERIES: usize = 256;

/// The orchestrator's own prices: provider kind → model (`*`: any) → price.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PriceBook(BTreeMap<String, BTreeMap<String, Price>>);

/// A prices file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("prices file {}: {problem}", path.display())]
pub struct PricesError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong.
    pub problem: String,
}

impl PriceBook {
    /// Parses a prices file:
    ///
    /// ```toml
    /// # US$ per million tokens
    /// [groq]
    /// "llama-3.3-70b-versatile" = { input = 0.59, output = 0.79 }
    /// "*" = { input = 0.10, output = 0.10 }   # any other groq model
    /// ```
    pub fn parse(text: &str) -> Result<PriceBook, String> {
        let raw: BTreeMap<String, BTreeMap<String, PriceUsd>> =
            toml::from_str(text).map_err(|e| e.message().trim().to_owned())?;
        let mut book = BTreeMap::new();
        for (provider, models) in raw {
            let mut prices = BTreeMap::new();
            for (model, p) in models {
                let price = Price::from_usd(p.input, p.output).ok_or_else(|| {
                    format!("[{provider}] {model:?}: input and output must be US$ amounts from 0 to 1000000")
                })?;
                prices.insert(model, price);
            }
            book.insert(provider, prices);
        }
        Ok(PriceBook(book))
    }

    /// Reads `path`; with `required` false a missing file is an empty book.
    pub fn load(path: &Path, required: bool) -> Result<PriceBook, PricesError> {
        let err = |problem: String| PricesError {
            path: path.to_owned(),
            problem,
        };
        match std::fs::read_to_string(path) {
            Ok(text) => PriceBook::parse(&text).map_err(err),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                Ok(PriceBook::default())
            }
            Err(e) => Err(err(e.to_string())),
        }
    }

    /// The price of `model` from `provider`: its own, else the provider's `*`.
    pub fn price(&self, provider: &str, model: &str) -> Option<Price> {
        let models = self.0.get(provider)?;
        models.get(model).or_else(|| models.get("*")).copied()
    }
}

/// What the orchestrator knows to charge tasks with.
#[derive(Debug, Default)]
pub struct Accounts {
    book: PriceBook,
    /// Each worker's offers, from its last Hello (tiers and prices).
    offers: Mutex<HashMap<String, Vec<Offer>>>,
    /// Agents charged on the current day, for [`MAX_AGENTS_PER_DAY`].
    today: Mutex<(u32, HashSet<String>)>,
    /// Since start, per provider and model, for `/metrics` (few: a linear
    /// search that allocates only for a new pair).
    by_model: Mutex<Vec<((String, String), UsageTotals)>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Accounts {
    /// Accounts with the orchestrator's own prices.
    pub fn new(book: PriceBook) -> Accounts {
        Accounts {
            book,
            ..Accounts::default()
        }
    }

    /// Remembers a worker's offers (at its Hello).
    pub fn note_offers(&self, worker: &str, offers: &[Offer]) {
        lock(&self.offers).insert(worker.to_owned(), offers.to_vec());
    }

    /// What `f` adds to the usage table, if it is a completed task a
    /// worker ran.
    pub fn charge(&self, f: &FinishedTask) -> Option<(UsageKey, UsageTotals)> {
        if f.status != TaskStatus::Completed {
            return None;
        }
        let (out, worker) = (f.output.as_ref()?, f.worker.as_ref()?);
        // The worker's tier and price for this call, read in place.
        let (tier, offered) = {
            let offers = lock(&self.offers);
            match offers
                .get(&worker.0)
                .and_then(|o| o.iter().find(|o| o.provider == out.provider))
            {
                Some(o) => (o.tier, o.price_of(&out.model)),
                None => (crate::providers::vendor::default_tier(&out.provider), None),
            }
        };
        let price = if tier <= Tier::Free {
            Some(Price::default())
        } else {
            self.book.price(&out.provider, &out.model).or(offered)
        };
        let mut add = UsageTotals {
            tasks: 1,
            ..UsageTotals::default()
        };
        match out.usage {
            Some(u) => {
                add.prompt_tokens = u64::from(u.prompt_tokens);
                add.completion_tokens = u64::from(u.completion_tokens);
                match price {
                    Some(p) => add.cost_nanos = p.cost_nanos(u),
                    None => add.tasks_unpriced = 1,
                }
            }
            None => add.tasks_without_usage = 1,
        }
        let day = u32::try_from(f.completed_at.0 / 86_400_000).unwrap_or(u32::MAX);
        let agent = f.agent_id.as_deref().unwrap_or_default();
        let agent = {
            let mut today = lock(&self.today);
            if today.0 != day {
                *today = (day, HashSet::new());
            }
            if today.1.contains(agent) {
                agent
            } else if today.1.len() >= MAX_AGENTS_PER_DAY {
                OTHER_AGENT
            } else {
                today.1.insert(agent.to_owned());
                agent
            }
        };
        // Names come from the worker's answer: bounded, no control
        // characters (they key store rows and label metrics).
        let (provider, model) = (label(&out.provider), label(&out.model));
        {
            let mut series = lock(&self.by_model);
            let known = series
                .iter()
                .any(|((p, m), _)| *p == provider && *m == model);
            let (p, m) = if known || series.len() < MAX_METRIC_SERIES {
                (provider.as_str(), model.as_str())
            } else {
                (OTHER_AGENT, OTHER_AGENT)
            };
            match series.iter_mut().find(|((sp, sm), _)| sp == p && sm == m) {
                Some((_, t)) => t.add(&add),
                None => series.push(((p.to_owned(), m.to_owned()), add)),
            }
        }
        let key = UsageKey {
            day,
            provider,
            model,
            worker: worker.0.clone(),
            agent: agent.to_owned(),
        };
        Some((key, add))
    }

    /// Usage since start, per provider and model (for `/metrics`).
    pub fn by_model(&self) -> Vec<((String, String), UsageTotals)> {
        let mut out = lock(&self.by_model).clone();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

/// A name from a peer made fit to key a row or label a metric: at most
/// [`crate::task::MAX_NAME`] bytes, control characters replaced.
pub fn label(name: &str) -> String {
    crate::logging::line::clip(name, crate::task::MAX_NAME).replace(char::is_control, "?")
}

/// One dimension `GET /api/usage?by=` groups by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum By {
    /// Provider kind.
    Provider,
    /// `provider/model`.
    Model,
    /// Worker id.
    Worker,
    /// Agent id.
    Agent,
    /// UTC day.
    Day,
}

impl By {
    /// Parses `provider`, `model`, `worker`, `agent` or `day`.
    pub fn parse(s: &str) -> Option<By> {
        Some(match s {
            "provider" => By::Provider,
            "model" => By::Model,
            "worker" => By::Worker,
            "agent" => By::Agent,
            "day" => By::Day,
            _ => return None,
        })
    }

    /// The group a row belongs to.
    pub fn group(self, k: &UsageKey) -> String {
        match self {
            By::Provider => k.provider.clone(),
            By::Model => format!("{}/{}", k.provider, k.model),
            By::Worker => k.worker.clone(),
            By::Agent => k.agent.clone(),
            By::Day => day_str(k.day),
        }
    }
}

/// `YYYY-MM-DD` of a day since the epoch.
pub fn day_str(day: u32) -> String {
    crate::task::rfc3339(u64::from(day) * 86_400_000)[..10].to_owned()
}

/// Rows summed per group of `by`, largest cost first (then most tokens).
pub fn group(rows: &[(UsageKey, UsageTotals)], by: By) -> Vec<(String, UsageTotals)> {
    let mut groups: BTreeMap<String, UsageTotals> = BTreeMap::new();
    for (k, t) in rows {
        groups.entry(by.group(k)).or_default().add(t);
    }
    let mut out: Vec<(String, UsageTotals)> = groups.into_iter().collect();
    if by != By::Day {
        out.sort_by(|a, b| {
            (b.1.cost_nanos, b.1.prompt_tokens + b.1.completion_tokens)
                .cmp(&(a.1.cost_nanos, a.1.prompt_tokens + a.1.completion_tokens))
                .then_with(|| a.0.cmp(&b.0))
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::{Millis, TaskId, TaskOutput, Usage, WorkerId};

    fn offer(provider: &str, tier: Tier, prices: Vec<(String, Price)>) -> Offer {
        Offer {
            provider: provider.into(),
            tier,
            models: vec!["m".into()],
            reasoning_model: None,
            embedding_models: vec![],
            prices,
        }
    }

    fn done(
        provider: &str,
        model: &str,
        usage: Option<Usage>,
        agent: Option<&str>,
    ) -> FinishedTask {
        let mut out = TaskOutput::text("hi", provider, model);
        out.usage = usage;
        FinishedTask {
            id: TaskId(1),
            status: TaskStatus::Completed,
            task_type: "agent_action".into(),
            priority: 5,
            output: Some(out),
            error: None,
            worker: Some(WorkerId("w1".into())),
            agent_id: agent.map(str::to_owned),
            attempts: 1,
            created_at: Millis(0),
            completed_at: Millis(3 * 86_400_000 + 5),
        }
    }

    fn usd(i: f64, o: f64) -> Price {
        Price::from_usd(i, o).expect("price")
    }

    #[test]
    fn tiers_and_prices_decide_the_cost() {
        let book = PriceBook::parse(
            r#"
            [paid]
            "special" = { input = 10.0, output = 20.0 }
            "#,
        )
        .expect("book");
        let a = Accounts::new(book);
        a.note_offers(
            "w1",
            &[
                offer("free", Tier::Free, vec![("*".into(), usd(5.0, 5.0))]),
                offer("paid", Tier::Paid, vec![("*".into(), usd(1.0, 2.0))]),
                offer("bare", Tier::Paid, vec![]),
            ],
        );
        let u = Some(Usage::new(1_000_000, 500_000));
        // Free tier: nothing, whatever the price list says.
        let (k, t) = a.charge(&done("free", "m", u, Some("ag"))).expect("row");
        assert_eq!((k.day, k.agent.as_str()), (3, "ag"));
        assert_eq!((t.cost_nanos, t.prompt_tokens), (0, 1_000_000));
        // The worker's price: $1 + $1.
        let (_, t) = a.charge(&done("paid", "m", u, None)).expect("row");
        assert_eq!(t.cost_nanos, 2_000_000_000);
        // The orchestrator's file wins: $10 + $10.
        let (_, t) = a.charge(&done("paid", "special", u, None)).expect("row");
        assert_eq!(t.cost_nanos, 20_000_000_000);
        // No price anywhere: tokens, no cost, counted unpriced.
        let (_, t) = a.charge(&done("bare", "m", u, None)).expect("row");
        assert_eq!(
            (t.cost_nanos, t.tasks_unpriced, t.prompt_tokens),
            (0, 1, 1_000_000)
        );
        // No usage reported: a task without tokens.
        let (_, t) = a.charge(&done("paid", "m", None, None)).expect("row");
        assert_eq!((t.tasks, t.tasks_without_usage, t.cost_nanos), (1, 1, 0));
        // Failed tasks and cache hits (no worker) are not charged.
        let mut failed = done("paid", "m", u, None);
        failed.status = TaskStatus::Failed;
        assert!(a.charge(&failed).is_none());
        let mut cached = done("paid", "m", u, None);
        cached.worker = None;
        assert!(a.charge(&cached).is_none());
        let series = a.by_model();
        assert_eq!(series.len(), 4, "{series:?}");
    }

    #[test]
    fn names_from_a_worker_are_bounded_and_cannot_split_a_row_key() {
        let a = Accounts::default();
        let (k, _) = a
            .charge(&done(
                "echo",
                &format!("m\u{1f}x{}", "y".repeat(10_000)),
                None,
                None,
            ))
            .expect("row");
        assert!(k.model.len() <= crate::task::MAX_NAME, "{}", k.model.len());
        assert!(!k.model.contains('\u{1f}'));
        assert_eq!(UsageKey::from_names(k.day, &k.names()), Some(k));
    }

    #[test]
    fn agents_per_day_are_bounded() {
        let a = Accounts::default();
        for i in 0..MAX_AGENTS_PER_DAY + 5 {
            let (k, _) = a
                .charge(&done("echo", "m", None, Some(&format!("agent-{i}"))))
                .expect("row");
            if i < MAX_AGENTS_PER_DAY {
                assert_eq!(k.agent, format!("agent-{i}"));
            } else {
                assert_eq!(k.agent, OTHER_AGENT);
            }
        }
    }

    #[test]
    fn prices_files_are_checked() {
        assert!(PriceBook::parse("[groq]\n\"m\" = { input = -1.0, output = 0.0 }").is_err());
        assert!(PriceBook::parse("[groq]\n\"m\" = { input = 1.0 }").is_err());
        assert!(PriceBook::parse("not toml [").is_err());
        let b = PriceBook::parse("[groq]\n\"*\" = { input = 0.5, output = 1.0 }").expect("ok");
        assert_eq!(b.price("groq", "anything"), Some(usd(0.5, 1.0)));
        assert_eq!(b.price("gemini", "anything"), None);
    }

    #[test]
    fn groups_sum_and_sort_by_cost() {
        let row = |provider: &str, day: u32, cost: u64| {
            (
                UsageKey {
                    day,
                    provider: provider.into(),
                    model: "m".into(),
                    worker: "w".into(),
                    agent: String::new(),
                },
                UsageTotals {
                    tasks: 1,
                    cost_nanos: cost,
                    ..UsageTotals::default()
                },
            )
        };
        let rows = vec![row("a", 1, 5), row("b", 1, 50), row("a", 2, 5)];
        let g = group(&rows, By::Provider);
        assert_eq!(g[0].0, "b");
        assert_eq!(
            (g[1].0.as_str(), g[1].1.cost_nanos, g[1].1.tasks),
            ("a", 10, 2)
        );
        let d = group(&rows, By::Day);
        assert_eq!(d[0].0, "1970-01-02");
        assert_eq!(d[1].0, "1970-01-03");
        assert_eq!(
            By::parse("model").map(|b| b.group(&rows[0].0)).as_deref(),
            Some("a/m")
        );
    }
}
