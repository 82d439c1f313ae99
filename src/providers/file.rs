//! The worker's optional TOML file (`d8 join --config FILE`): which providers
//! to run, the models each serves, base URLs, which environment variable
//! holds each key, and request-per-minute limits that keep a key under its
//! vendor's quota before the vendor has to answer 429 (per provider and per
//! model), each provider's cost tier (`local`, `free`, `paid`) and the model
//! for reasoning task types.
//!
//! Keys are not read from the file: only the *name* of the variable that
//! holds one (`key_env`), so the file can be shared and committed.
//!
//! ```toml
//! [[providers]]
//! kind = "groq"
//! models = ["llama-3.1-8b-instant", "llama-3.3-70b-versatile"]
//! reasoning_model = "llama-3.3-70b-versatile"
//! requests_per_minute = 30
//! model_limits = { "llama-3.3-70b-versatile" = 15 }
//!
//! [[providers]]
//! kind = "gemini"
//! key_env = "MY_GEMINI_KEY"
//! tier = "paid"          # a billed key: used after local and free ones
//! requests_per_minute = 15
//!
//! [[providers]]
//! kind = "ollama"
//! base_url = "http://gpu-box:11434"
//! models = ["deepseek-r1:14b"]
//! ```

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::Deserialize;

use super::{Env, ProviderSettings};
use crate::task::Tier;

/// The file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerFile {
    /// Providers, in order of preference.
    #[serde(default)]
    pub providers: Vec<ProviderEntry>,
}

/// One provider.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderEntry {
    /// `groq`, `gemini`, `anthropic`, `deepseek`, `openai`, `openrouter`, `ollama`, `echo`.
    pub kind: String,
    /// Models served, the first being the default.
    #[serde(default)]
    pub models: Vec<String>,
    /// Base URL override.
    pub base_url: Option<String>,
    /// Environment variable holding the key (default: the kind's own, e.g. `GROQ_API_KEY`).
    pub key_env: Option<String>,
    /// Requests per minute this key may make; more wait (or go to another provider).
    pub requests_per_minute: Option<u32>,
    /// Requests per minute per model (vendors such as Groq limit each model).
    #[serde(default)]
    pub model_limits: BTreeMap<String, u32>,
    /// Cost tier: `local`, `free` or `paid` (default: by kind, see README).
    pub tier: Option<Tier>,
    /// Model for reasoning task types (evolution, code generation).
    pub reasoning_model: Option<String>,
}

/// Environment variable names a provider kind reads: (key, base URL, models).
pub fn variables(kind: &str) -> Option<(&'static str, &'static str, &'static str)> {
    Some(match kind {
        "groq" => ("GROQ_API_KEY", "GROQ_BASE_URL", "GROQ_MODELS"),
        "openai" => ("OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_MODELS"),
        "deepseek" => (
            "DEEPSEEK_API_KEY",
            "DEEPSEEK_API_BASE_URL",
            "DEEPSEEK_MODELS",
        ),
        "openrouter" => (
            "OPENROUTER_API_KEY",
            "OPENROUTER_BASE_URL",
            "OPENROUTER_MODELS",
        ),
        "anthropic" | "claude" => (
            "ANTHROPIC_API_KEY",
            "ANTHROPIC_BASE_URL",
            "ANTHROPIC_MODELS",
        ),
        "gemini" => ("GEMINI_API_KEY", "GEMINI_BASE_URL", "GEMINI_MODELS"),
        "ollama" => ("", "OLLAMA_HOST", "OLLAMA_MODELS"),
        "echo" => ("", "", ""),
        _ => return None,
    })
}

impl WorkerFile {
    /// Reads and checks a file; errors name the file and the problem.
    pub fn load(path: &Path) -> Result<WorkerFile, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parses and checks the text of a file.
    pub fn parse(text: &str) -> Result<WorkerFile, String> {
        let file: WorkerFile = toml::from_str(text).map_err(|e| e.to_string())?;
        for (i, p) in file.providers.iter().enumerate() {
            if variables(&p.kind).is_none() {
                return Err(format!("providers[{i}]: unknown kind {:?}", p.kind));
            }
            if p.requests_per_minute == Some(0) {
                return Err(format!(
                    "providers[{i}]: requests_per_minute must be at least 1"
                ));
            }
            if p.models.iter().any(|m| m.trim().is_empty())
                || p.reasoning_model
                    .as_ref()
                    .is_some_and(|m| m.trim().is_empty())
            {
                return Err(format!("providers[{i}]: empty model name"));
            }
            if let Some((m, _)) = p.model_limits.iter().find(|(_, l)| **l == 0) {
                return Err(format!(
                    "providers[{i}]: model_limits.{m:?} must be at least 1"
                ));
            }
        }
        Ok(file)
    }
}

impl ProviderEntry {
    /// The entry's worker-side settings (limits, tier, reasoning model).
    pub fn settings(&self) -> ProviderSettings {
        ProviderSettings {
            tier: self.tier,
            reasoning_model: self.reasoning_model.clone(),
            per_minute: self.requests_per_minute,
            model_limits: self.model_limits.clone(),
        }
    }

    /// The settings of this entry as variables over `base` (so building the
    /// provider follows exactly the environment rules).
    pub fn overlay<'a>(&self, base: &'a dyn Env) -> super::Overlay<'a> {
        let mut over = HashMap::new();
        if let Some((key_var, url_var, models_var)) = variables(&self.kind) {
            if let (Some(from), false) = (&self.key_env, key_var.is_empty())
                && let Some(v) = base.var(from)
            {
                over.insert(key_var.to_owned(), v);
            }
            if let (Some(u), false) = (&self.base_url, url_var.is_empty()) {
                over.insert(url_var.to_owned(), u.clone());
            }
            if !self.models.is_empty() && !models_var.is_empty() {
                over.insert(models_var.to_owned(), self.models.join(","));
            }
        }
        super::Overlay { base, over }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_example() {
        let f = WorkerFile::parse(
            r#"
            [[providers]]
            kind = "groq"
            models = ["llama-3.1-8b-instant", "llama-3.3-70b-versatile"]
            reasoning_model = "llama-3.3-70b-versatile"
            requests_per_minute = 30
            model_limits = { "llama-3.3-70b-versatile" = 15 }

            [[providers]]
            kind = "gemini"
            key_env = "MY_GEMINI_KEY"
            tier = "paid"
            requests_per_minute = 15

            [[providers]]
            kind = "ollama"
            base_url = "http://gpu-box:11434"
            "#,
        )
        .expect("parse");
        assert_eq!(f.providers.len(), 3);
        assert_eq!(
            f.providers[0].settings(),
            ProviderSettings {
                tier: None,
                reasoning_model: Some("llama-3.3-70b-versatile".into()),
                per_minute: Some(30),
                model_limits: [("llama-3.3-70b-versatile".to_owned(), 15)].into(),
            }
        );
        assert_eq!(f.providers[1].settings().tier, Some(Tier::Paid));
        let env: HashMap<String, String> =
            [("MY_GEMINI_KEY".to_owned(), "AIza-x".to_owned())].into();
        let o = f.providers[1].overlay(&env);
        assert_eq!(o.var("GEMINI_API_KEY").as_deref(), Some("AIza-x"));
        let o = f.providers[0].overlay(&env);
        assert_eq!(
            o.var("GROQ_MODELS").as_deref(),
            Some("llama-3.1-8b-instant,llama-3.3-70b-versatile")
        );
        assert_eq!(
            f.providers[2].overlay(&env).var("OLLAMA_HOST").as_deref(),
            Some("http://gpu-box:11434")
        );
    }

    #[test]
    fn bad_files_say_what_is_wrong() {
        for (text, want) in [
            ("[[providers]]\nkind = \"mistral\"", "unknown kind"),
            (
                "[[providers]]\nkind = \"groq\"\nkey = \"gsk_inline\"",
                "unknown field",
            ),
            (
                "[[providers]]\nkind = \"groq\"\nrequests_per_minute = 0",
                "at least 1",
            ),
            (
                "[[providers]]\nkind = \"groq\"\nmodels = [\"\"]",
                "empty model",
            ),
            (
                "[[providers]]\nkind = \"groq\"\ntier = \"cheap\"",
                "unknown variant",
            ),
            (
                "[[providers]]\nkind = \"groq\"\nmodel_limits = { \"m\" = 0 }",
                "model_limits",
            ),
            ("providers = 3", "invalid type"),
            ("not toml at all [", ""),
        ] {
            let e = WorkerFile::parse(text).expect_err(text);
            assert!(e.contains(want), "{text}: {e}");
        }
        assert!(
            WorkerFile::load(Path::new("/nonexistent/d8.toml"))
                .expect_err("missing")
                .contains("cannot read")
        );
    }
}
