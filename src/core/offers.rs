//! Which of a worker's providers may take a task now, and which to prefer.
//!
//! A worker advertises its providers as [`Offer`]s (kind, tier, models). The
//! core mirrors what the worker reports cooling down ([`Cooldown`]: a whole provider
//! or one of its models) and measures how long each provider takes. A task
//! then goes, among workers with a free slot, to the cheapest tier that has
//! a usable provider (local → free → paid), least-loaded first within a
//! tier; an urgent task (priority ≥ `urgent_priority`) goes to the provider
//! that has been fastest instead, whatever its tier.

use std::collections::BTreeMap;

use crate::task::{Millis, Offer, ProviderCooldown, RestReason, Route, Tier};

use super::ClassKey;

/// Cooldowns kept per worker: more than any real worker has (64 providers with a
/// few models cooling down each); a longer report is cut, never trusted whole.
const MAX_COOLDOWNS: usize = 256;

/// A provider (or one model of it) that must not get work on one worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Cooldown {
    pub provider: String,
    /// `None`: every model of the provider.
    pub model: Option<String>,
    /// `None`: disabled until the worker restarts (its key was rejected).
    pub until: Option<Millis>,
    /// Why, as the worker said.
    pub reason: RestReason,
}

impl Cooldown {
    fn active(&self, now: Millis) -> bool {
        self.until.is_none_or(|t| t > now)
    }

    /// A worker's report, made absolute on the orchestrator's clock.
    pub fn from_report(now: Millis, c: &ProviderCooldown) -> Cooldown {
        Cooldown {
            provider: c.provider.clone(),
            model: c.model.clone(),
            until: (!c.disabled).then(|| now.plus(c.remaining_ms)),
            reason: c.reason,
        }
    }

    /// Back to a report, with the time left at `now`.
    pub fn to_report(&self, now: Millis) -> ProviderCooldown {
        ProviderCooldown {
            provider: self.provider.clone(),
            model: self.model.clone(),
            remaining_ms: self.until.map_or(0, |t| t.since(now)),
            disabled: self.until.is_none(),
            reason: self.reason,
        }
    }
}

/// What the core knows about one worker's providers beyond its `Hello`.
#[derive(Debug, Default)]
pub(super) struct OfferState {
    /// Providers and models cooling down.
    pub cooldowns: Vec<Cooldown>,
    /// Smoothed dispatch-to-result time per provider, ms (successes only).
    pub latency_ms: BTreeMap<String, u64>,
}

impl OfferState {
    /// Replaces the rests with the worker's own report. True when that may
    /// free capacity (a cooldown gone or ending earlier), i.e. worth scheduling.
    pub fn set_report(&mut self, now: Millis, report: &[ProviderCooldown]) -> bool {
        let new: Vec<Cooldown> = report
            .iter()
            // A name no offer can have matches nothing: not kept.
            .filter(|c| {
                c.provider.len() <= crate::task::MAX_NAME
                    && c.model
                        .as_ref()
                        .is_none_or(|m| m.len() <= crate::task::MAX_NAME)
            })
            .take(MAX_COOLDOWNS)
            .map(|c| Cooldown::from_report(now, c))
            .collect();
        // Reports of an unchanged cooldown differ by clock jitter only.
        const JITTER_MS: u64 = 50;
        let loosened = self.cooldowns.iter().filter(|r| r.active(now)).any(|old| {
            !new.iter().any(|n| {
                n.provider == old.provider
                    && n.model == old.model
                    && match (n.until, old.until) {
                        (None, None) => true,
                        (Some(a), Some(b)) => a.plus(JITTER_MS) >= b,
                        (Some(_), None) => false,
                        (None, Some(_)) => true,
                    }
            })
        });
        self.cooldowns = new;
        loosened
    }

    /// Cooldowns `provider` until `until` unless the worker already reported a
    /// cooldown for it (its report is more precise: it may name one model).
    pub fn cool_down_unless_reported(&mut self, now: Millis, provider: &str, until: Millis) {
        if !self
            .cooldowns
            .iter()
            .any(|r| r.provider == provider && r.active(now))
        {
            self.cooldowns.push(Cooldown {
                provider: provider.to_owned(),
                model: None,
                until: Some(until),
                reason: RestReason::RateLimited,
            });
        }
    }

    /// Folds one successful attempt's duration into the provider's average
    /// (exponential, weight 1/4 for the newest).
    pub fn record_latency(&mut self, provider: &str, ms: u64) {
        match self.latency_ms.get_mut(provider) {
            Some(avg) => *avg = avg.saturating_mul(3).saturating_add(ms) / 4,
            None => {
                self.latency_ms.insert(provider.to_owned(), ms);
            }
        }
    }

    /// Drops cooldowns that have ended.
    pub fn expire(&mut self, now: Millis) {
        self.cooldowns.retain(|r| r.active(now));
    }

    /// When the next cooldown ends, if any does.
    pub fn next_expiry(&self) -> Option<Millis> {
        self.cooldowns.iter().filter_map(|r| r.until).min()
    }

    fn cooling_down(&self, now: Millis, provider: &str, model: Option<&str>) -> bool {
        self.cooldowns
            .iter()
            .any(|r| r.provider == provider && r.model.as_deref() == model && r.active(now))
    }

    /// Whether `offer` can serve a task of `class` now.
    pub fn usable(&self, offer: &Offer, class: &ClassKey, now: Millis) -> bool {
        if class
            .provider
            .as_ref()
            .is_some_and(|p| *p != offer.provider)
            || class.max_tier.is_some_and(|t| offer.tier > t)
            || self.cooling_down(now, &offer.provider, None)
        {
            return false;
        }
        if class.embed {
            return match &class.model {
                Some(m) => {
                    offer.embedding_models.contains(m)
                        && !self.cooling_down(now, &offer.provider, Some(m))
                }
                None => offer
                    .embedding_models
                    .iter()
                    .any(|m| !self.cooling_down(now, &offer.provider, Some(m))),
            };
        }
        match &class.model {
            Some(m) => {
                offer.models.contains(m) && !self.cooling_down(now, &offer.provider, Some(m))
            }
            // With no model named the worker picks one of the provider's:
            // any that is not cooling down will do.
            None => {
                offer.models.is_empty()
                    || offer
                        .models
                        .iter()
                        .any(|m| !self.cooling_down(now, &offer.provider, Some(m)))
            }
        }
    }

    /// The best offer for a `class` task on a worker offering `offers`:
    /// its sort key (smaller is better) and index, or `None` when none is
    /// usable. Allocation-free: it runs for every candidate worker.
    pub fn choose(
        &self,
        offers: &[Offer],
        class: &ClassKey,
        urgent: bool,
        now: Millis,
    ) -> Option<Choice> {
        offers
            .iter()
            .enumerate()
            .filter(|(_, o)| self.usable(o, class, now))
            .map(|(i, o)| {
                // Urgent: measured providers first, fastest first; tier
                // breaks ties. Otherwise the tier alone decides.
                let speed = if urgent {
                    let latency = self.latency_ms.get(&o.provider).copied();
                    (latency.is_none(), latency.unwrap_or(0))
                } else {
                    (false, 0)
                };
                Choice {
                    speed,
                    tier: o.tier,
                    order: i,
                }
            })
            .min()
    }

    /// The route for the offer `choose` picked.
    pub fn route(offers: &[Offer], choice: Choice, class: &ClassKey, urgent: bool) -> Route {
        Route {
            prefer: offers
                .get(choice.order)
                .map(|o| o.provider.clone())
                .unwrap_or_default(),
            max_tier: if urgent {
                class.max_tier.unwrap_or(Tier::Paid)
            } else {
                choice.tier
            },
        }
    }

    /// The cooldowns, with time left at `now`, for the API.
    pub fn report(&self, now: Millis) -> Vec<ProviderCooldown> {
        self.cooldowns
            .iter()
            .filter(|r| r.active(now))
            .map(|r| r.to_report(now))
            .collect()
    }
}

/// How good a worker's best offer is for one task: compared field by field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Choice {
    /// `(unmeasured, smoothed ms)` for urgent tasks; zero otherwise.
    pub speed: (bool, u64),
    /// Cheapest first.
    pub tier: Tier,
    /// The worker's own order of preference.
    pub order: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_huge_report_is_cut() {
        let mut s = OfferState::default();
        let report: Vec<ProviderCooldown> = (0..10_000)
            .map(|i| ProviderCooldown {
                provider: format!("p{i}"),
                model: None,
                remaining_ms: 1_000,
                disabled: false,
                reason: crate::task::RestReason::default(),
            })
            .collect();
        s.set_report(Millis(0), &report);
        assert_eq!(s.cooldowns.len(), MAX_COOLDOWNS);
    }
}
