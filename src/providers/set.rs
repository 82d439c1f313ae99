//! The providers configured on one worker and what the worker knows about
//! them: which cool down (rate limited, out of quota) and for how long, which had
//! their key rejected, the worker's own per-minute limits, cost tiers and
//! model defaults per task type.
//!
//! The orchestrator routes each attempt with a [`Route`]: the provider to try
//! first and the dearest tier allowed. The worker tries that provider, then
//! its others of the same or a cheaper tier, and hands the task back (rate
//! limited, with the shortest cooldown) only when none of them can serve it: a
//! dearer provider on this worker is used only when the orchestrator routes
//! there, because a cheaper one may be free on another machine.
//!
//! Cooldowns are as fine as vendors' limits: a 429 cools down the one model it was
//! for (Groq and Gemini limit per model); an exhausted quota or budget cools down
//! the whole provider (OpenRouter credit, Anthropic's usage limit are per
//! key); a rejected key disables the provider until the worker restarts.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use super::budget::{self, Budget, Ledger, Spent};
use super::{ChunkSink, Provider, ProviderError, ProviderErrorKind};
use crate::task::{
    ChatRequest, Offer, Price, ProviderCooldown, RestReason, Route, TaskOutput, Tier, price_in,
    wants_reasoning,
};

/// A worker's own settings for one provider (from its TOML file).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProviderSettings {
    /// Cost tier; the kind's default ([`super::vendor::default_tier`]) when unset.
    pub tier: Option<Tier>,
    /// Model for reasoning task types (evolution, code generation) when the
    /// task names none; the first model otherwise.
    pub reasoning_model: Option<String>,
    /// Calls per minute over the whole provider.
    pub per_minute: Option<u32>,
    /// Calls per minute per model.
    pub model_limits: BTreeMap<String, u32>,
    /// Prices from the worker file, per model (`*`: any), over the built-in ones.
    pub prices: Vec<(String, Price)>,
    /// Daily limits.
    pub budget: Budget,
}

/// One task as the provider set sees it.
#[derive(Debug, Clone, Copy)]
pub struct Job<'a> {
    /// The chat.
    pub req: &'a ChatRequest,
    /// Its task type (picks the fast or the reasoning model).
    pub task_type: &'a str,
    /// The provider kind the task insists on, if any.
    pub provider: Option<&'a str>,
    /// The orchestrator's route; `None` (tests, tools) means any tier,
    /// cheapest first.
    pub route: Option<&'a Route>,
}

/// Calls in the last minute under a limit.
#[derive(Debug, Clone, Default)]
struct Limiter {
    per_minute: Option<u32>,
    recent: VecDeque<Instant>,
}

const MINUTE: Duration = Duration::from_secs(60);

impl Limiter {
    fn new(per_minute: Option<u32>) -> Self {
        Limiter {
            per_minute,
            recent: VecDeque::new(),
        }
    }

    /// When a call may start, `None` meaning now.
    fn wait_until(&mut self, now: Instant) -> Option<Instant> {
        let limit = self.per_minute?;
        while self
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) >= MINUTE)
        {
            self.recent.pop_front();
        }
        if self.recent.len() >= limit as usize {
            self.recent.front().map(|t| *t + MINUTE)
        } else {
            None
        }
    }

    fn record(&mut self, now: Instant) {
        if self.per_minute.is_some() {
            self.recent.push_back(now);
        }
    }
}

/// What the worker knows about one of its providers.
#[derive(Debug, Clone, Default)]
struct Health {
    /// The whole provider cools down until then (quota, budget, own limit).
    cooldown_until: Option<Instant>,
    /// Why it cools down.
    reason: RestReason,
    /// Today's spend, for the budget.
    spent: Spent,
    /// The vendor rejected the key: not used again until the worker restarts.
    disabled: bool,
    limiter: Limiter,
    /// Per-model cooldowns (429s) and limits.
    models: HashMap<String, ModelHealth>,
}

#[derive(Debug, Clone, Default)]
struct ModelHealth {
    cooldown_until: Option<Instant>,
    reason: RestReason,
    limiter: Limiter,
}

impl Health {
    fn cooling_down(&self, now: Instant) -> bool {
        self.cooldown_until.is_some_and(|t| t > now)
    }

    fn model_cooling_down(&self, model: &str, now: Instant) -> bool {
        self.models
            .get(model)
            .and_then(|m| m.cooldown_until)
            .is_some_and(|t| t > now)
    }

    /// Takes a call slot for `model` under the provider's and the model's
    /// own limits, or cools down whichever is full until a slot frees.
    fn admit(&mut self, model: Option<&str>, now: Instant) -> bool {
        if let Some(t) = self.limiter.wait_until(now) {
            self.rest(t, RestReason::OwnLimit);
            return false;
        }
        if let Some(m) = model.and_then(|m| self.models.get_mut(m)) {
            if let Some(t) = m.limiter.wait_until(now) {
                m.cooldown_until = Some(t);
                m.reason = RestReason::OwnLimit;
                return false;
            }
            m.limiter.record(now);
        }
        self.limiter.record(now);
        true
    }

    fn cool_down_model(&mut self, model: &str, until: Instant) {
        let m = self.models.entry(model.to_owned()).or_default();
        m.cooldown_until = Some(until);
        m.reason = RestReason::RateLimited;
    }

    /// The whole provider rests until `until`, for `reason`.
    fn rest(&mut self, until: Instant, reason: RestReason) {
        self.cooldown_until = Some(until);
        self.reason = reason;
    }

    /// When this provider could next serve something, if it is cooling down.
    fn soonest(&self, models: &[String], now: Instant) -> Option<Instant> {
        if self.disabled {
            return None;
        }
        let model_free = |m: &String| {
            self.models
                .get(m)
                .and_then(|h| h.cooldown_until)
                .filter(|t| *t > now)
        };
        let models_ready = if models.is_empty() {
            Some(now)
        } else {
            // Every model cooling down → the earliest of them; any ready → now.
            models.iter().map(|m| model_free(m).unwrap_or(now)).min()
        };
        let provider_ready = self.cooldown_until.filter(|t| *t > now).unwrap_or(now);
        models_ready.map(|m| m.max(provider_ready))
    }
}

struct Entry {
    provider: Arc<dyn Provider>,
    tier: Tier,
    reasoning_model: Option<String>,
    /// What its calls cost (empty on the local and free tiers).
    prices: Vec<(String, Price)>,
    budget: Budget,
    /// Its name in the spend ledger: the kind, `kind#2` for a second key of it.
    ledger_key: String,
}

/// The providers configured on one worker, first preferred.
#[derive(Clone, Default)]
pub struct ProviderSet {
    entries: Arc<Vec<Entry>>,
    health: Arc<Mutex<Vec<Health>>>,
    /// Where the day's spend is kept, once the worker has said.
    ledger: Arc<OnceLock<Ledger>>,
}

impl std::fmt::Debug for ProviderSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(
                self.entries
                    .iter()
                    .map(|e| format!("{} ({})", e.provider.kind(), e.tier)),
            )
            .finish()
    }
}

impl ProviderSet {
    /// A set of providers, first preferred, each in its kind's default tier.
    pub fn new(providers: Vec<Arc<dyn Provider>>) -> Self {
        let settings = vec![ProviderSettings::default(); providers.len()];
        Self::with_settings(providers, &settings)
    }

    /// A set with the worker's own settings, in the same order as `providers`
    /// (missing settings are defaults).
    pub fn with_settings(providers: Vec<Arc<dyn Provider>>, settings: &[ProviderSettings]) -> Self {
        let mut entries = Vec::new();
        let mut health = Vec::new();
        for (i, provider) in providers.into_iter().enumerate() {
            let s = settings.get(i).cloned().unwrap_or_default();
            let mut h = Health {
                limiter: Limiter::new(s.per_minute),
                ..Health::default()
            };
            for (model, limit) in &s.model_limits {
                h.models.insert(
                    model.clone(),
                    ModelHealth {
                        cooldown_until: None,
                        reason: RestReason::OwnLimit,
                        limiter: Limiter::new(Some(*limit)),
                    },
                );
            }
            health.push(h);
            let kind = provider.kind();
            let tier = s.tier.unwrap_or_else(|| super::vendor::default_tier(kind));
            // Local hardware and free keys cost nothing; a billed key costs
            // the file's prices, else the built-in ones.
            let prices = if tier > Tier::Free {
                let mut p = budget::builtin_prices(kind);
                for (model, price) in &s.prices {
                    p.retain(|(m, _)| m != model);
                    p.push((model.clone(), *price));
                }
                p
            } else {
                Vec::new()
            };
            let same_kind = entries
                .iter()
                .filter(|e: &&Entry| e.provider.kind() == kind)
                .count();
            entries.push(Entry {
                tier,
                reasoning_model: s.reasoning_model.or_else(|| {
                    super::vendor::find(kind)
                        .and_then(|v| v.reasoning_model)
                        .map(str::to_owned)
                }),
                prices,
                budget: s.budget,
                ledger_key: if same_kind == 0 {
                    kind.to_owned()
                } else {
                    format!("{kind}#{}", same_kind + 1)
                },
                provider,
            });
        }
        ProviderSet {
            entries: Arc::new(entries),
            health: Arc::new(Mutex::new(health)),
            ledger: Arc::default(),
        }
    }

    /// Keeps the day's spend of providers with a budget in `path` (the
    /// worker's data dir), starting from what it holds for today: a restart
    /// does not reset a budget. A provider already past its budget rests
    /// at once. Only the first call takes effect.
    pub fn keep_spend_in(&self, path: &std::path::Path) {
        if self.ledger.set(Ledger::new(path)).is_err() {
            return;
        }
        let Some(ledger) = self.ledger.get() else {
            return;
        };
        let (today, left) = budget::today();
        let saved = ledger.load(today);
        let now = Instant::now();
        let mut health = self.health();
        for (h, e) in health.iter_mut().zip(self.entries.iter()) {
            if let Some(s) = saved.get(&e.ledger_key) {
                h.spent = *s;
                if e.budget.spent(s) {
                    h.rest(now + left, RestReason::Budget);
                    tracing::info!(
                        provider = e.provider.kind(),
                        "daily budget already spent; resting until midnight UTC"
                    );
                }
            }
        }
    }

    /// Counts a successful call against provider `i`'s budget; past it,
    /// the provider rests until midnight UTC.
    fn charge(&self, i: usize, out: &TaskOutput) {
        let e = &self.entries[i];
        let (Some(usage), true) = (out.usage, e.budget.is_set()) else {
            return;
        };
        let cost = price_in(&e.prices, &out.model).map_or(0, |p| p.cost_nanos(usage));
        let (today, left) = budget::today();
        let snapshot: BTreeMap<String, Spent> = {
            let mut health = self.health();
            let h = &mut health[i];
            h.spent.add(today, usage, cost);
            let now = Instant::now();
            let resting = h.reason == RestReason::Budget && h.cooling_down(now);
            if e.budget.spent(&h.spent) && !resting {
                h.rest(now + left, RestReason::Budget);
                tracing::info!(
                    provider = e.provider.kind(),
                    spent_usd = h.spent.nanos as f64 / 1e9,
                    tokens = h.spent.tokens,
                    "daily budget spent; resting until midnight UTC"
                );
            }
            health
                .iter()
                .zip(self.entries.iter())
                .filter(|(_, e)| e.budget.is_set())
                .map(|(h, e)| (e.ledger_key.clone(), h.spent))
                .collect()
        };
        if let Some(ledger) = self.ledger.get() {
            ledger.save(&snapshot);
        }
    }

    /// The providers, first preferred.
    pub fn providers(&self) -> Vec<Arc<dyn Provider>> {
        self.entries.iter().map(|e| e.provider.clone()).collect()
    }

    /// Provider kinds.
    pub fn kinds(&self) -> Vec<String> {
        self.entries
            .iter()
            .map(|e| e.provider.kind().to_owned())
            .collect()
    }

    /// What this worker advertises: kinds, tiers, models (never keys).
    pub fn offers(&self) -> Vec<Offer> {
        self.entries
            .iter()
            .map(|e| {
                let mut models = e.provider.models();
                if let Some(r) = e.reasoning_model.as_ref().filter(|r| !models.contains(r)) {
                    models.push(r.clone());
                }
                Offer {
                    provider: e.provider.kind().to_owned(),
                    tier: e.tier,
                    models,
                    reasoning_model: e.reasoning_model.clone(),
                    embedding_models: e.provider.embedding_models(),
                    prices: e.prices.clone(),
                }
            })
            .collect()
    }

    fn health(&self) -> MutexGuard<'_, Vec<Health>> {
        self.health.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Providers and models that cannot take work now, for heartbeats,
    /// results and the API.
    pub fn cooldowns(&self) -> Vec<ProviderCooldown> {
        let now = Instant::now();
        let left = |t: Instant| {
            u64::try_from(t.saturating_duration_since(now).as_millis()).unwrap_or(u64::MAX)
        };
        let mut out = Vec::new();
        for (h, e) in self.health().iter().zip(self.entries.iter()) {
            let kind = e.provider.kind();
            if h.disabled || h.cooling_down(now) {
                out.push(ProviderCooldown {
                    provider: kind.to_owned(),
                    model: None,
                    remaining_ms: if h.disabled {
                        0
                    } else {
                        h.cooldown_until.map_or(0, left)
                    },
                    disabled: h.disabled,
                    reason: if h.disabled {
                        RestReason::KeyRejected
                    } else {
                        h.reason
                    },
                });
            }
            let mut models: Vec<_> = h
                .models
                .iter()
                .filter_map(|(m, mh)| {
                    mh.cooldown_until
                        .filter(|t| *t > now)
                        .map(|t| (m, t, mh.reason))
                })
                .collect();
            models.sort_by(|a, b| a.0.cmp(b.0));
            out.extend(models.into_iter().map(|(m, t, reason)| ProviderCooldown {
                provider: kind.to_owned(),
                model: Some(m.clone()),
                remaining_ms: left(t),
                disabled: false,
                reason,
            }));
        }
        out
    }

    /// Indices of the providers that may serve `job`, in the order to try
    /// them: the route's preferred provider, then cheapest tier first, then
    /// the worker's own order. Only the named provider kind if the task names
    /// one; only those serving its model when any does; none above the
    /// route's tier; disabled ones never.
    fn candidates(&self, job: &Job<'_>) -> Vec<usize> {
        let health = self.health();
        let mut usable: Vec<usize> = (0..self.entries.len())
            .filter(|i| !health[*i].disabled)
            .filter(|i| {
                job.provider
                    .is_none_or(|k| self.entries[*i].provider.kind() == k)
            })
            .filter(|i| {
                job.route
                    .is_none_or(|r| self.entries[*i].tier <= r.max_tier)
            })
            .collect();
        if job.req.embed.is_some() {
            // Only providers that embed, with the model asked for if any.
            usable.retain(|i| {
                let models = self.entries[*i].provider.embedding_models();
                job.req
                    .model
                    .as_ref()
                    .map_or(!models.is_empty(), |m| models.contains(m))
            });
        } else if let Some(m) = &job.req.model {
            let serving: Vec<usize> = usable
                .iter()
                .copied()
                .filter(|i| self.entries[*i].provider.models().contains(m))
                .collect();
            if !serving.is_empty() {
                usable = serving;
            }
        }
        usable.sort_by_key(|i| {
            let e = &self.entries[*i];
            (
                job.route.is_none_or(|r| r.prefer != e.provider.kind()),
                e.tier,
            )
        });
        usable
    }

    /// The models to try on provider `i` for `job`, best first.
    fn models_for(&self, i: usize, job: &Job<'_>) -> Vec<Option<String>> {
        if let Some(m) = &job.req.model {
            return vec![Some(m.clone())];
        }
        let e = &self.entries[i];
        if job.req.embed.is_some() {
            return e
                .provider
                .embedding_models()
                .into_iter()
                .map(Some)
                .collect();
        }
        let mut list: Vec<String> = e.provider.models();
        if let Some(r) = e
            .reasoning_model
            .as_ref()
            .filter(|_| wants_reasoning(job.task_type))
        {
            list.retain(|m| m != r);
            list.insert(0, r.clone());
        }
        if list.is_empty() {
            vec![None]
        } else {
            list.into_iter().map(Some).collect()
        }
    }

    /// Runs `job` on the best provider and model that are not cooling down,
    /// moving on after a rate limit, an exhausted quota or a rejected key.
    /// Other failures are returned at once (the orchestrator retries
    /// elsewhere). `report` hears about every vendor failure.
    pub async fn run(
        &self,
        job: Job<'_>,
        sink: ChunkSink,
        mut report: impl FnMut(&str, &ProviderError),
    ) -> Result<TaskOutput, ProviderError> {
        // "auto" asks for the provider's own choice of model.
        let auto;
        let job = if job
            .req
            .model
            .as_deref()
            .is_some_and(|m| m.trim().is_empty() || m == "auto")
        {
            auto = ChatRequest {
                model: None,
                ..job.req.clone()
            };
            Job { req: &auto, ..job }
        } else {
            job
        };
        let mut last: Option<ProviderError> = None;
        let candidates = self.candidates(&job);
        for &i in &candidates {
            let e = &self.entries[i];
            let kind = e.provider.kind();
            for model in self.models_for(i, &job) {
                let now = Instant::now();
                {
                    let mut health = self.health();
                    let h = &mut health[i];
                    if h.disabled || h.cooling_down(now) {
                        break;
                    }
                    if model
                        .as_deref()
                        .is_some_and(|m| h.model_cooling_down(m, now))
                    {
                        continue;
                    }
                    if !h.admit(model.as_deref(), now) {
                        // Whichever limit was full now cools down; try on.
                        continue;
                    }
                }
                let req = if model == job.req.model {
                    std::borrow::Cow::Borrowed(job.req)
                } else {
                    std::borrow::Cow::Owned(ChatRequest {
                        model: model.clone(),
                        ..job.req.clone()
                    })
                };
                let answer = if req.embed.is_some() {
                    e.provider.embed(&req).await
                } else {
                    e.provider.chat(&req, sink.clone()).await
                };
                match answer {
                    Ok(out) => {
                        self.charge(i, &out);
                        return Ok(out);
                    }
                    Err(err) => {
                        report(kind, &err);
                        let until = |ms: u64| Instant::now() + Duration::from_millis(ms);
                        let mut health = self.health();
                        let h = &mut health[i];
                        match err.kind {
                            ProviderErrorKind::RateLimited { retry_after_ms } => match &model {
                                Some(m) => h.cool_down_model(m, until(retry_after_ms)),
                                None => h.rest(until(retry_after_ms), RestReason::RateLimited),
                            },
                            ProviderErrorKind::QuotaExhausted { retry_after_ms } => {
                                h.rest(until(retry_after_ms), RestReason::Quota);
                            }
                            ProviderErrorKind::Auth => h.disabled = true,
                            ProviderErrorKind::Transient
                            | ProviderErrorKind::Invalid
                            | ProviderErrorKind::Unavailable => return Err(err),
                        }
                        last = Some(err);
                    }
                }
            }
        }
        // Nothing served it: hand the task back with the shortest cooldown, so
        // the orchestrator knows when this worker is worth asking again.
        let now = Instant::now();
        let soonest = {
            let health = self.health();
            candidates
                .iter()
                .filter_map(|&i| {
                    let models: Vec<String> =
                        self.models_for(i, &job).into_iter().flatten().collect();
                    health[i].soonest(&models, now)
                })
                .filter(|t| *t > now)
                .min()
        };
        Err(match soonest {
            Some(t) => ProviderError {
                kind: ProviderErrorKind::RateLimited {
                    retry_after_ms: u64::try_from(t.duration_since(now).as_millis())
                        .unwrap_or(u64::MAX)
                        .max(1),
                },
                message: last.map_or_else(
                    || "every suitable provider on this worker is cooling down".to_owned(),
                    |e| e.message,
                ),
            },
            None => match last {
                Some(e) if e.kind == ProviderErrorKind::Auth => e,
                _ => ProviderError {
                    kind: ProviderErrorKind::Unavailable,
                    message: if candidates.is_empty() {
                        "no provider on this worker can serve this task (keys rejected, or none within its tier)".to_owned()
                    } else {
                        "no usable provider on this worker (keys rejected?)".to_owned()
                    },
                },
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::BoxFuture;

    type Answer = Result<(), ProviderErrorKind>;

    /// A provider answering from a script and recording the models asked for.
    struct Scripted {
        kind: &'static str,
        models: Vec<String>,
        answers: Mutex<Vec<Answer>>,
        asked: Mutex<Vec<Option<String>>>,
    }

    impl Scripted {
        fn new(kind: &'static str, answers: Vec<Answer>) -> Arc<Self> {
            Self::with_models(kind, &[&format!("{kind}-model")], answers)
        }
        fn with_models(kind: &'static str, models: &[&str], answers: Vec<Answer>) -> Arc<Self> {
            Arc::new(Scripted {
                kind,
                models: models.iter().map(|m| (*m).to_owned()).collect(),
                answers: Mutex::new(answers),
                asked: Mutex::new(Vec::new()),
            })
        }
        fn calls(&self) -> usize {
            self.asked.lock().expect("lock").len()
        }
        fn asked(&self) -> Vec<Option<String>> {
            self.asked.lock().expect("lock").clone()
        }
    }

    impl Provider for Scripted {
        fn kind(&self) -> &str {
            self.kind
        }
        fn models(&self) -> Vec<String> {
            self.models.clone()
        }
        fn chat<'a>(
            &'a self,
            req: &'a ChatRequest,
            _sink: ChunkSink,
        ) -> BoxFuture<'a, Result<TaskOutput, ProviderError>> {
            self.asked.lock().expect("lock").push(req.model.clone());
            let next = {
                let mut a = self.answers.lock().expect("lock");
                if a.is_empty() { Ok(()) } else { a.remove(0) }
            };
            let kind = self.kind.to_owned();
            let model = req.model.clone().unwrap_or_default();
            Box::pin(async move {
                next.map(|()| TaskOutput::text(kind.clone(), kind, model))
                    .map_err(|k| ProviderError {
                        kind: k,
                        message: "scripted".into(),
                    })
            })
        }
    }

    fn chat(model: Option<&str>) -> ChatRequest {
        ChatRequest {
            model: model.map(str::to_owned),
            ..Default::default()
        }
    }

    /// Runs an `agent_action` with no route; returns the provider that served.
    async fn serve(
        set: &ProviderSet,
        req: &ChatRequest,
        provider: Option<&str>,
    ) -> Result<TaskOutput, ProviderError> {
        let job = Job {
            req,
            task_type: "agent_action",
            provider,
            route: None,
        };
        set.run(job, ChunkSink::none(), |_, _| {}).await
    }

    fn limited(ms: u64) -> Answer {
        Err(ProviderErrorKind::RateLimited { retry_after_ms: ms })
    }

    #[tokio::test]
    async fn a_429_cools_down_that_model_and_moves_on() {
        let groq = Scripted::new("groq", vec![limited(60_000)]);
        let gemini = Scripted::new("gemini", vec![]);
        let set = ProviderSet::new(vec![groq.clone(), gemini.clone()]);
        let mut seen = Vec::new();
        let out = set
            .run(
                Job {
                    req: &chat(None),
                    task_type: "agent_action",
                    provider: None,
                    route: None,
                },
                ChunkSink::none(),
                |k, _| seen.push(k.to_owned()),
            )
            .await
            .expect("ok");
        assert_eq!(
            (out.provider.as_str(), seen.as_slice()),
            ("gemini", &["groq".to_owned()][..])
        );
        // groq's model cools down: the next task goes straight to gemini.
        let out = serve(&set, &chat(None), None).await.expect("ok");
        assert_eq!(
            (out.provider.as_str(), groq.calls(), gemini.calls()),
            ("gemini", 1, 2)
        );
        let c = set.cooldowns();
        assert_eq!(c.len(), 1, "{c:?}");
        assert_eq!(
            (c[0].provider.as_str(), c[0].model.as_deref(), c[0].disabled),
            ("groq", Some("groq-model"), false)
        );
        assert!((59_000..=60_000).contains(&c[0].remaining_ms), "{c:?}");
    }

    #[tokio::test]
    async fn a_429_on_one_model_tries_the_next_model_of_the_same_key() {
        let groq = Scripted::with_models("groq", &["fast", "big"], vec![limited(30_000)]);
        let set = ProviderSet::new(vec![groq.clone()]);
        let out = serve(&set, &chat(None), None).await.expect("ok");
        assert_eq!(out.model, "big");
        assert_eq!(
            groq.asked(),
            [Some("fast".to_owned()), Some("big".to_owned())]
        );
        // A task naming the resting model is handed back, not run on another.
        let e = serve(&set, &chat(Some("fast")), None)
            .await
            .expect_err("cooling down");
        assert!(
            matches!(e.kind, ProviderErrorKind::RateLimited { retry_after_ms } if retry_after_ms > 29_000),
            "{e:?}"
        );
        assert_eq!(groq.calls(), 2, "a model cooling down is not called");
    }

    #[tokio::test]
    async fn exhausted_quota_cools_down_the_whole_provider() {
        let a = Scripted::with_models(
            "openrouter",
            &["m1", "m2"],
            vec![Err(ProviderErrorKind::QuotaExhausted {
                retry_after_ms: 3_600_000,
            })],
        );
        let set = ProviderSet::new(vec![a.clone()]);
        let e = serve(&set, &chat(None), None).await.expect_err("quota");
        assert!(
            matches!(e.kind, ProviderErrorKind::RateLimited { retry_after_ms } if retry_after_ms > 3_500_000),
            "{e:?}"
        );
        assert_eq!(a.calls(), 1, "the second model shares the exhausted key");
        let c = set.cooldowns();
        assert_eq!((c.len(), c[0].model.as_deref()), (1, None), "{c:?}");
    }

    #[tokio::test]
    async fn all_cooling_down_hands_the_task_back_with_the_shortest_cooldown() {
        let a = Scripted::new("a", vec![limited(50_000)]);
        let b = Scripted::new(
            "b",
            vec![Err(ProviderErrorKind::QuotaExhausted {
                retry_after_ms: 3_600_000,
            })],
        );
        let set = ProviderSet::new(vec![a, b]);
        let e = serve(&set, &chat(None), None)
            .await
            .expect_err("cooling down");
        assert!(
            matches!(e.kind, ProviderErrorKind::RateLimited { retry_after_ms } if (49_000..=50_000).contains(&retry_after_ms)),
            "{e:?}"
        );
    }

    #[tokio::test]
    async fn rejected_keys_disable_and_other_failures_return_at_once() {
        let bad = Scripted::new("bad", vec![Err(ProviderErrorKind::Auth)]);
        let flaky = Scripted::new("flaky", vec![Err(ProviderErrorKind::Transient)]);
        let set = ProviderSet::new(vec![bad.clone(), flaky.clone()]);
        let e = serve(&set, &chat(None), None).await.expect_err("transient");
        assert_eq!(e.kind, ProviderErrorKind::Transient);
        let out = serve(&set, &chat(None), None).await.expect("ok");
        assert_eq!(out.provider, "flaky");
        assert_eq!(bad.calls(), 1, "a disabled provider is not called again");
        assert!(set.cooldowns()[0].disabled);
        let only_bad =
            ProviderSet::new(vec![Scripted::new("x", vec![Err(ProviderErrorKind::Auth)])]);
        let e = serve(&only_bad, &chat(None), None).await.expect_err("auth");
        assert_eq!(e.kind, ProviderErrorKind::Auth);
        let e = serve(&only_bad, &chat(None), None)
            .await
            .expect_err("none left");
        assert_eq!(e.kind, ProviderErrorKind::Unavailable);
        assert!(e.message.contains("no provider"), "{}", e.message);
        // Neither costs the task an attempt.
        for kind in [ProviderErrorKind::Auth, ProviderErrorKind::Unavailable] {
            let t: crate::task::TaskError = ProviderError {
                kind,
                message: String::new(),
            }
            .into();
            assert_eq!(t.kind, crate::task::ErrorKind::Unavailable);
        }
    }

    #[tokio::test]
    async fn own_per_minute_limits_are_kept_without_asking_the_vendor() {
        let a = Scripted::new("a", vec![]);
        let b = Scripted::new("b", vec![]);
        let two = ProviderSettings {
            per_minute: Some(2),
            ..Default::default()
        };
        let set = ProviderSet::with_settings(vec![a.clone(), b.clone()], &[two]);
        let mut used = Vec::new();
        for _ in 0..3 {
            used.push(serve(&set, &chat(None), None).await.expect("ok").provider);
        }
        assert_eq!(used, ["a", "a", "b"]);
        assert_eq!(a.calls(), 2, "the third call never reached a");
        let c = set.cooldowns();
        assert_eq!((c[0].provider.as_str(), c[0].model.as_deref()), ("a", None));
        assert!((59_000..=60_000).contains(&c[0].remaining_ms), "{c:?}");
    }

    #[tokio::test]
    async fn per_model_limits_cool_down_only_that_model() {
        let groq = Scripted::with_models("groq", &["small", "large"], vec![]);
        let settings = ProviderSettings {
            model_limits: [("large".to_owned(), 1)].into(),
            ..Default::default()
        };
        let set = ProviderSet::with_settings(vec![groq.clone()], &[settings]);
        serve(&set, &chat(Some("large")), None)
            .await
            .expect("first");
        let e = serve(&set, &chat(Some("large")), None)
            .await
            .expect_err("limited");
        assert!(
            matches!(e.kind, ProviderErrorKind::RateLimited { retry_after_ms } if retry_after_ms > 59_000),
            "{e:?}"
        );
        let out = serve(&set, &chat(Some("small")), None)
            .await
            .expect("unlimited");
        assert_eq!(out.model, "small");
        let c = set.cooldowns();
        assert_eq!(
            (c.len(), c[0].model.as_deref()),
            (1, Some("large")),
            "{c:?}"
        );
        assert_eq!(groq.calls(), 2);
    }

    #[tokio::test]
    async fn a_named_model_or_kind_picks_its_provider() {
        let a = Scripted::new("a", vec![]);
        let b = Scripted::new("b", vec![]);
        let set = ProviderSet::new(vec![a.clone(), b]);
        let served = |r: Result<TaskOutput, ProviderError>| r.expect("ok").provider;
        assert_eq!(served(serve(&set, &chat(Some("b-model")), None).await), "b");
        assert_eq!(served(serve(&set, &chat(Some("unknown")), None).await), "a");
        assert_eq!(served(serve(&set, &chat(None), Some("b")).await), "b");
        // "auto" means the provider's own default model.
        assert_eq!(served(serve(&set, &chat(Some("auto")), None).await), "a");
        assert_eq!(a.asked().last(), Some(&Some("a-model".to_owned())));
    }

    #[tokio::test]
    async fn tiers_order_the_providers_and_routes_cap_them() {
        let paid = Scripted::new("openai", vec![]);
        let free = Scripted::new("groq", vec![limited(10_000)]);
        let local = Scripted::new("ollama", vec![]);
        // Listed dearest first on purpose: tiers decide, not the list order.
        let set = ProviderSet::new(vec![paid.clone(), free.clone(), local.clone()]);
        assert_eq!(
            set.offers().iter().map(|o| o.tier).collect::<Vec<_>>(),
            [Tier::Paid, Tier::Free, Tier::Local]
        );
        let r = chat(None);
        assert_eq!(serve(&set, &r, None).await.expect("ok").provider, "ollama");
        let route = |prefer: &str, max_tier| Route {
            prefer: prefer.to_owned(),
            max_tier,
        };
        let run = |route: Route| {
            let set = set.clone();
            async move {
                let r = chat(None);
                let job = Job {
                    req: &r,
                    task_type: "agent_action",
                    provider: None,
                    route: Some(&route),
                };
                set.run(job, ChunkSink::none(), |_, _| {}).await
            }
        };
        // The free key is preferred but rate limited: the worker may fall back
        // to the local model (cheaper), never to the paid key (dearer).
        let out = run(route("groq", Tier::Free)).await.expect("ok");
        assert_eq!(out.provider, "ollama");
        assert_eq!((free.calls(), paid.calls()), (1, 0));
        // Free tier allowed, the free key rate limited, only a paid key
        // left: the task is handed back instead of spending money.
        let only_free = ProviderSet::new(vec![
            paid.clone(),
            Scripted::new("groq", vec![limited(10_000)]),
        ]);
        let r2 = chat(None);
        let rt = route("groq", Tier::Free);
        let e = only_free
            .run(
                Job {
                    req: &r2,
                    task_type: "agent_action",
                    provider: None,
                    route: Some(&rt),
                },
                ChunkSink::none(),
                |_, _| {},
            )
            .await
            .expect_err("handed back");
        assert!(
            matches!(e.kind, ProviderErrorKind::RateLimited { retry_after_ms } if retry_after_ms > 9_000),
            "{e:?}"
        );
        assert_eq!(paid.calls(), 0, "a paid key is used only when routed there");
        // Routed to paid (an urgent task): the preferred provider goes first.
        let out = run(route("openai", Tier::Paid)).await.expect("ok");
        assert_eq!(out.provider, "openai");
    }

    #[tokio::test]
    async fn reasoning_task_types_get_the_reasoning_model() {
        let ds = Scripted::with_models("deepseek", &["deepseek-chat", "deepseek-reasoner"], vec![]);
        let settings = ProviderSettings {
            reasoning_model: Some("deepseek-reasoner".into()),
            ..Default::default()
        };
        let set = ProviderSet::with_settings(vec![ds.clone()], &[settings]);
        for task_type in ["agent_action", "code_generation", "evolution_mutation"] {
            let r = chat(None);
            let job = Job {
                req: &r,
                task_type,
                provider: None,
                route: None,
            };
            set.run(job, ChunkSink::none(), |_, _| {})
                .await
                .expect("ok");
        }
        assert_eq!(
            ds.asked(),
            [
                Some("deepseek-chat".to_owned()),
                Some("deepseek-reasoner".to_owned()),
                Some("deepseek-reasoner".to_owned())
            ]
        );
        assert_eq!(
            set.offers()[0].reasoning_model.as_deref(),
            Some("deepseek-reasoner")
        );
        // DeepSeek's reasoner is the built-in default; other kinds have none.
        let defaults = ProviderSet::new(vec![
            Scripted::new("deepseek", vec![]),
            Scripted::new("groq", vec![]),
        ]);
        let offers = defaults.offers();
        assert_eq!(
            offers[0].reasoning_model.as_deref(),
            Some("deepseek-reasoner")
        );
        assert!(
            offers[0].models.contains(&"deepseek-reasoner".to_owned()),
            "advertised"
        );
        assert_eq!(offers[1].reasoning_model, None);
    }
}
