//! What the cluster can serve, as the OpenAI-compatible API sees it: the
//! catalog of models workers offer (kept a while after a worker leaves, so
//! a laptop that sleeps does not make model pickers flap), and whether a
//! request's constraints can be served now, later, or by nobody online.
//!
//! Pure: snapshots of the workers and a time go in, answers come out.

use std::collections::BTreeMap;

use crate::core::{Liveness, WorkerView};
use crate::task::{Millis, Offer, Tier};

/// How long a model stays listed after the last worker offering it left.
pub const MODEL_RETENTION_MS: u64 = 60 * 60 * 1_000;

/// Most models remembered (offers are capped per worker; this caps the sum
/// over workers that came and went).
const MAX_MODELS: usize = 4_096;

/// One model a worker offers or offered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelEntry {
    /// The model's name, as its provider calls it.
    pub id: String,
    /// The provider kind serving it.
    pub provider: String,
    /// Its cost tier.
    pub tier: Tier,
    /// Some online worker offers it now.
    pub online: bool,
    /// When a worker last offered it.
    pub last_seen: Millis,
    /// An embedding model (else a chat model).
    pub embedding: bool,
}

/// Models seen, by (model, provider): tier, last seen, embedding.
#[derive(Debug, Default)]
pub struct Catalog {
    seen: BTreeMap<(String, String), (Tier, Millis, bool)>,
}

impl Catalog {
    /// Records `offers` of a worker at `now` (when it connects, so that a
    /// worker gone before anyone asked is still listed).
    pub fn record(&mut self, now: Millis, offers: &[Offer]) {
        for o in offers {
            let chat = o.models.iter().map(|m| (m, false));
            for (m, embedding) in chat.chain(o.embedding_models.iter().map(|m| (m, true))) {
                let key = (m.clone(), o.provider.clone());
                if self.seen.len() < MAX_MODELS || self.seen.contains_key(&key) {
                    self.seen.insert(key, (o.tier, now, embedding));
                }
            }
        }
    }

    /// Records what `workers` offer at `now`, forgets what nobody offered
    /// for [`MODEL_RETENTION_MS`], and lists every model, sorted.
    pub fn update(&mut self, now: Millis, workers: &[WorkerView]) -> Vec<ModelEntry> {
        let mut online = std::collections::BTreeSet::new();
        for w in workers {
            self.record(now, &w.caps.offers);
            for o in &w.caps.offers {
                let all = o.models.iter().chain(&o.embedding_models);
                online.extend(all.map(|m| (m.clone(), o.provider.clone())));
            }
        }
        self.seen
            .retain(|_, (_, seen, _)| now.since(*seen) <= MODEL_RETENTION_MS);
        self.seen
            .iter()
            .map(|((id, provider), (tier, seen, embedding))| ModelEntry {
                id: id.clone(),
                provider: provider.clone(),
                tier: *tier,
                online: online.contains(&(id.clone(), provider.clone())),
                last_seen: *seen,
                embedding: *embedding,
            })
            .collect()
    }
}

/// The constraints a request puts on where it may run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Target {
    /// The model, or `None` for each provider's default.
    pub model: Option<String>,
    /// The provider kind, or `None` for any.
    pub provider: Option<String>,
    /// The dearest tier, or `None` for any.
    pub max_tier: Option<Tier>,
    /// Embeddings (the model is an embedding model) rather than a chat.
    pub embed: bool,
}

/// Whether the cluster can serve a [`Target`] now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capacity {
    /// Some online provider can take it now (or once a slot frees).
    Ready,
    /// Every capable provider is cooling down; the first is free again in
    /// this many ms.
    Resting(u64),
    /// No online worker offers it.
    Nobody,
}

/// Whether `workers` can serve `target`: a worker that is alive (not
/// suspect: it missed heartbeats) and not draining, with an offer of the provider and tier wanted and the model
/// (when one is named), that is not disabled. Cooldowns decide between
/// ready and resting.
pub fn capacity(workers: &[WorkerView], target: &Target) -> Capacity {
    let mut soonest: Option<u64> = None;
    for w in workers
        .iter()
        .filter(|w| w.liveness == Liveness::Alive && !w.draining)
    {
        for o in &w.caps.offers {
            let models = if target.embed {
                &o.embedding_models
            } else {
                &o.models
            };
            if target.provider.as_ref().is_some_and(|p| *p != o.provider)
                || target.max_tier.is_some_and(|t| o.tier > t)
                || (target.embed && models.is_empty())
                || target
                    .model
                    .as_ref()
                    .is_some_and(|m| !models.is_empty() && !models.contains(m))
            {
                continue;
            }
            // How long until this offer can take the task (`None`: never,
            // a key was rejected): the longest cooldown that applies to the
            // provider and the model wanted; with no model named, the worker
            // may pick any of the provider's, so the soonest of those.
            let applies = |model: Option<&str>| -> Option<u64> {
                let mut wait = Some(0);
                for c in w
                    .cooldowns
                    .iter()
                    .filter(|c| c.provider == o.provider && c.model.as_deref() == model)
                {
                    wait = if c.disabled {
                        None
                    } else {
                        wait.map(|w| w.max(c.remaining_ms))
                    };
                }
                wait
            };
            let model_wait = match (&target.model, models.is_empty()) {
                (Some(m), _) => applies(Some(m)),
                (None, true) => Some(0),
                (None, false) => models.iter().filter_map(|m| applies(Some(m))).min(),
            };
            let wait = match (applies(None), model_wait) {
                (Some(a), Some(b)) => Some(a.max(b)),
                _ => None,
            };
            match wait {
                Some(0) => return Capacity::Ready,
                Some(ms) => soonest = Some(soonest.map_or(ms, |s| s.min(ms))),
                None => {}
            }
        }
    }
    soonest.map_or(Capacity::Nobody, Capacity::Resting)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::{Capabilities, ProviderCooldown, WorkerId};

    fn worker(id: &str, offers: Vec<Offer>, cooldowns: Vec<ProviderCooldown>) -> WorkerView {
        WorkerView {
            id: WorkerId(id.into()),
            caps: Capabilities {
                offers,
                ..Capabilities::default()
            },
            liveness: Liveness::Alive,
            draining: false,
            active: 0,
            completed: 0,
            connected_at: Millis(0),
            last_seen: Millis(0),
            cooldown_until: None,
            cooldowns,
            latency_ms: BTreeMap::new(),
        }
    }

    fn offer(provider: &str, tier: Tier, models: &[&str]) -> Offer {
        Offer {
            provider: provider.into(),
            tier,
            models: models.iter().map(|m| (*m).to_owned()).collect(),
            reasoning_model: None,
            embedding_models: Vec::new(),
            prices: vec![],
        }
    }

    fn cool(provider: &str, model: Option<&str>, ms: u64, disabled: bool) -> ProviderCooldown {
        ProviderCooldown {
            provider: provider.into(),
            model: model.map(str::to_owned),
            remaining_ms: ms,
            disabled,
            reason: crate::task::RestReason::default(),
        }
    }

    fn target(model: Option<&str>, provider: Option<&str>, max_tier: Option<Tier>) -> Target {
        Target {
            model: model.map(str::to_owned),
            provider: provider.map(str::to_owned),
            max_tier,
            embed: false,
        }
    }

    #[test]
    fn capacity_follows_offers_tiers_and_cooldowns() {
        let groq = offer("groq", Tier::Free, &["llama", "gemma"]);
        let claude = offer("anthropic", Tier::Paid, &["haiku"]);
        let w = [worker("a", vec![groq.clone(), claude.clone()], vec![])];
        assert_eq!(
            capacity(&w, &target(Some("llama"), None, None)),
            Capacity::Ready
        );
        assert_eq!(
            capacity(&w, &target(Some("gpt"), None, None)),
            Capacity::Nobody
        );
        assert_eq!(
            capacity(&w, &target(Some("haiku"), None, Some(Tier::Free))),
            Capacity::Nobody
        );
        assert_eq!(
            capacity(&w, &target(None, Some("anthropic"), None)),
            Capacity::Ready
        );
        // One model resting: that model rests, its sibling does not.
        let w = [worker(
            "a",
            vec![groq.clone()],
            vec![cool("groq", Some("llama"), 4_000, false)],
        )];
        assert_eq!(
            capacity(&w, &target(Some("llama"), None, None)),
            Capacity::Resting(4_000)
        );
        assert_eq!(
            capacity(&w, &target(Some("gemma"), None, None)),
            Capacity::Ready
        );
        // The soonest of two resting workers; a disabled key serves nobody.
        let w = [
            worker(
                "a",
                vec![groq.clone()],
                vec![cool("groq", None, 9_000, false)],
            ),
            worker(
                "b",
                vec![groq.clone()],
                vec![cool("groq", None, 2_000, false)],
            ),
            worker("c", vec![groq.clone()], vec![cool("groq", None, 0, true)]),
        ];
        assert_eq!(
            capacity(&w, &target(None, None, None)),
            Capacity::Resting(2_000)
        );
        let w = [worker(
            "c",
            vec![groq.clone()],
            vec![cool("groq", None, 0, true)],
        )];
        assert_eq!(capacity(&w, &target(None, None, None)), Capacity::Nobody);
        // Suspect and draining workers serve nobody.
        let mut dead = worker("d", vec![groq.clone()], vec![]);
        dead.liveness = Liveness::Suspect;
        let mut draining = worker("e", vec![groq], vec![]);
        draining.draining = true;
        assert_eq!(
            capacity(&[dead, draining], &target(None, None, None)),
            Capacity::Nobody
        );
    }

    #[test]
    fn models_stay_listed_for_a_while_after_their_worker_leaves() {
        let mut c = Catalog::default();
        let w = [worker(
            "a",
            vec![offer("groq", Tier::Free, &["llama"])],
            vec![],
        )];
        let listed = c.update(Millis(1_000), &w);
        assert_eq!(listed.len(), 1);
        assert!(listed[0].online);
        let listed = c.update(Millis(2_000), &[]);
        assert_eq!(listed.len(), 1);
        assert!(!listed[0].online);
        assert_eq!(listed[0].last_seen, Millis(1_000));
        assert!(
            c.update(Millis(1_000 + MODEL_RETENTION_MS + 1), &[])
                .is_empty()
        );
    }
}
