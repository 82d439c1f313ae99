//! Which worker types may run which task types.

use std::collections::BTreeMap;

/// A `--route` rule that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// No `=` between the task type and the worker types.
    #[error("route {0:?}: expected TASK_TYPE=WORKER_TYPE[|WORKER_TYPE…]")]
    NoEquals(String),
    /// Nothing before the `=`.
    #[error("route {0:?}: empty task type")]
    EmptyTaskType(String),
}

/// Routing table: task type → worker types allowed to run it. A task type
/// without a rule runs on any worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routing {
    rules: BTreeMap<String, Vec<String>>,
}

/// Task types that the original project sent only to heavy workers.
const HEAVY_TASKS: [&str; 3] = crate::task::REASONING_TASKS;

impl Default for Routing {
    /// The original project's routing: `agent_action` (and anything unnamed)
    /// runs anywhere; evolution and code generation need a reasoning-capable
    /// worker (`deepseek_gpu`, `claude` or `gemini`).
    fn default() -> Self {
        let mut r = Routing::open();
        // The worker types it reserved for them, from the vendor table.
        let heavy: Vec<String> = crate::providers::VENDORS
            .iter()
            .filter(|v| v.reasoning_worker)
            .map(|v| v.worker_type.to_owned())
            .collect();
        for t in HEAVY_TASKS {
            r.set(t, heavy.clone());
        }
        r
    }
}

impl Routing {
    /// A table with no rules: every task runs anywhere.
    pub fn open() -> Self {
        Routing {
            rules: BTreeMap::new(),
        }
    }

    /// Sets (or with an empty list, removes) the rule for `task_type`.
    pub fn set(&mut self, task_type: &str, worker_types: Vec<String>) {
        if worker_types.is_empty() {
            self.rules.remove(task_type);
        } else {
            let mut w = worker_types;
            w.sort();
            w.dedup();
            self.rules.insert(task_type.to_owned(), w);
        }
    }

    /// Parses `task=type1|type2,task2=type3` (the `--route` flag format).
    pub fn parse_rules(&mut self, s: &str) -> Result<(), RouteError> {
        for rule in s.split(',').map(str::trim).filter(|r| !r.is_empty()) {
            let (task, workers) = rule
                .split_once('=')
                .ok_or_else(|| RouteError::NoEquals(rule.to_owned()))?;
            let task = task.trim();
            if task.is_empty() {
                return Err(RouteError::EmptyTaskType(rule.to_owned()));
            }
            let types = workers
                .split('|')
                .map(str::trim)
                .filter(|w| !w.is_empty() && *w != "*")
                .map(str::to_owned)
                .collect();
            self.set(task, types);
        }
        Ok(())
    }

    /// The worker types allowed for `task_type`, or `None` for any.
    pub fn allowed(&self, task_type: &str) -> Option<&[String]> {
        self.rules.get(task_type).map(Vec::as_slice)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_matches_the_original_project() {
        let r = Routing::default();
        assert_eq!(r.allowed("agent_action"), None);
        assert_eq!(r.allowed("whatever"), None);
        let heavy = r.allowed("code_generation").expect("rule");
        assert_eq!(heavy, ["claude", "deepseek_gpu", "gemini"]);
        assert!(r.allowed("evolution_mutation").is_some());
        assert!(r.allowed("evolution_crossover").is_some());
    }

    #[test]
    fn parses_overrides() {
        let mut r = Routing::default();
        r.parse_rules("code_generation=*, summarize = groq|gemini")
            .expect("parse");
        assert_eq!(r.allowed("code_generation"), None);
        assert_eq!(r.allowed("summarize").expect("rule"), ["gemini", "groq"]);
        assert!(r.parse_rules("nonsense").is_err());
        assert!(r.parse_rules("=groq").is_err());
    }
}
