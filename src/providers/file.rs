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
//! price_per_mtok = { input = 0.10, output = 0.40 }   # US$ per million tokens
//! model_prices = { "gemini-2.5-pro" = { input = 1.25, output = 10.0 } }
//! max_usd_per_day = 2.0          # rests until midnight UTC once spent
//! max_tokens_per_day = 1000000
//!
//! [[providers]]
//! kind = "ollama"
//! base_url = "http://gpu-box:11434"
//! models = ["deepseek-r1:14b"]
//! ```

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::budget::Budget;
use super::{Env, ProviderSettings};
use crate::task::{Price, Tier};

/// The file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerFile {
    /// Providers, in order of preference.
    #[serde(default)]
    pub providers: Vec<ProviderEntry>,
}

/// A price in US$ per million tokens, as the file writes it.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceUsd {
    /// Per million prompt tokens.
    pub input: f64,
    /// Per million completion tokens.
    pub output: f64,
}

/// One provider.
#[derive(Debug, Clone, PartialEq, Deserialize)]
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
    /// Embedding models served (`[]`: none; default: the vendor's, if any).
    pub embedding_models: Option<Vec<String>>,
    /// What every model of this key costs (default: d8's built-in list
    /// prices; nothing on the local and free tiers).
    pub price_per_mtok: Option<PriceUsd>,
    /// What one model costs, over `price_per_mtok`.
    #[serde(default)]
    pub model_prices: BTreeMap<String, PriceUsd>,
    /// Most US$ this key may spend a UTC day; then it rests until midnight.
    pub max_usd_per_day: Option<f64>,
    /// Most tokens (prompt + completion) this key may use a UTC day.
    pub max_tokens_per_day: Option<u64>,
}

/// A worker file that cannot be used; the message names the file, the
/// entry and the problem.
#[derive(Debug, thiserror::Error)]
pub enum WorkerFileError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Not TOML, or not the file's shape (unknown field, wrong type, …).
    /// Only the reader's message and the line are kept: the reader's full
    /// report quotes the line, which may hold a key pasted in by mistake.
    #[error("{}line {line}: {message}", at(path.as_deref()))]
    Syntax {
        /// The file, when read from one.
        path: Option<PathBuf>,
        /// 1-based line of the problem (1 when the reader gave no place).
        line: usize,
        /// What the TOML reader said, without the quoted line.
        message: String,
    },
    /// An entry with a value d8 cannot use.
    #[error("{}providers[{index}]: {problem}", at(path.as_deref()))]
    Invalid {
        /// The file, when read from one.
        path: Option<PathBuf>,
        /// The entry's position.
        index: usize,
        /// What is wrong with it.
        problem: String,
    },
}

/// `path: ` before a message about a file's content.
fn at(path: Option<&Path>) -> String {
    path.map(|p| format!("{}: ", p.display()))
        .unwrap_or_default()
}

impl WorkerFile {
    /// Reads and checks a file; errors name the file and the problem.
    pub fn load(path: &Path) -> Result<WorkerFile, WorkerFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| WorkerFileError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|e| match e {
            WorkerFileError::Syntax { line, message, .. } => WorkerFileError::Syntax {
                path: Some(path.to_owned()),
                line,
                message,
            },
            WorkerFileError::Invalid { index, problem, .. } => WorkerFileError::Invalid {
                path: Some(path.to_owned()),
                index,
                problem,
            },
            read @ WorkerFileError::Read { .. } => read,
        })
    }

    /// Parses and checks the text of a file.
    pub fn parse(text: &str) -> Result<WorkerFile, WorkerFileError> {
        let file: WorkerFile = toml::from_str(text).map_err(|e| WorkerFileError::Syntax {
            path: None,
            line: e.span().map_or(1, |span| {
                1 + text
                    .get(..span.start)
                    .map_or(0, |before| before.matches('\n').count())
            }),
            message: e.message().trim().to_owned(),
        })?;
        for (index, p) in file.providers.iter().enumerate() {
            let invalid = |problem: String| WorkerFileError::Invalid {
                path: None,
                index,
                problem,
            };
            if super::vendor::find(&p.kind).is_none() {
                return Err(invalid(format!("unknown kind {:?}", p.kind)));
            }
            if p.requests_per_minute == Some(0) {
                return Err(invalid("requests_per_minute must be at least 1".into()));
            }
            if p.models.iter().any(|m| m.trim().is_empty())
                || p.reasoning_model
                    .as_ref()
                    .is_some_and(|m| m.trim().is_empty())
            {
                return Err(invalid("empty model name".into()));
            }
            if let Some((m, _)) = p.model_limits.iter().find(|(_, l)| **l == 0) {
                return Err(invalid(format!("model_limits.{m:?} must be at least 1")));
            }
            let bad_price = |p: &PriceUsd| Price::from_usd(p.input, p.output).is_none();
            if p.price_per_mtok.as_ref().is_some_and(bad_price) {
                return Err(invalid(
                    "price_per_mtok: input and output must be US$ amounts from 0 to 1000000".into(),
                ));
            }
            if let Some((m, _)) = p.model_prices.iter().find(|(_, v)| bad_price(v)) {
                return Err(invalid(format!(
                    "model_prices.{m:?}: input and output must be US$ amounts from 0 to 1000000"
                )));
            }
            if p.max_usd_per_day
                .is_some_and(|u| !(u.is_finite() && u > 0.0 && u <= 1.0e9))
            {
                return Err(invalid("max_usd_per_day must be more than 0".into()));
            }
            if p.max_tokens_per_day == Some(0) {
                return Err(invalid("max_tokens_per_day must be at least 1".into()));
            }
        }
        Ok(file)
    }
}

impl ProviderEntry {
    /// The entry's worker-side settings (limits, tier, reasoning model).
    pub fn settings(&self) -> ProviderSettings {
        let mut prices: Vec<(String, Price)> = Vec::new();
        if let Some(p) = self
            .price_per_mtok
            .and_then(|p| Price::from_usd(p.input, p.output))
        {
            prices.push(("*".to_owned(), p));
        }
        prices.extend(
            self.model_prices
                .iter()
                .filter_map(|(m, p)| Price::from_usd(p.input, p.output).map(|p| (m.clone(), p))),
        );
        ProviderSettings {
            tier: self.tier,
            reasoning_model: self.reasoning_model.clone(),
            per_minute: self.requests_per_minute,
            model_limits: self.model_limits.clone(),
            prices,
            budget: Budget {
                // US$ to nano-dollars; checked finite and positive above.
                max_nanos: self.max_usd_per_day.map(|u| (u * 1e9).round() as u64),
                max_tokens: self.max_tokens_per_day,
            },
        }
    }

    /// The settings of this entry as variables over `base` (so building the
    /// provider follows exactly the environment rules).
    pub fn overlay<'a>(&self, base: &'a dyn Env) -> super::Overlay<'a> {
        let mut over = HashMap::new();
        if let Some(v) = super::vendor::find(&self.kind) {
            if let (Some(from), Some(key_var)) = (&self.key_env, v.key_var)
                && let Some(key) = base.var(from)
            {
                over.insert(key_var.to_owned(), key);
            }
            if let (Some(u), Some(url_var)) = (&self.base_url, v.url_var) {
                over.insert(url_var.to_owned(), u.clone());
            }
            if let (false, Some(models_var)) = (self.models.is_empty(), v.models_var) {
                over.insert(models_var.to_owned(), self.models.join(","));
            }
            if let Some(m) = &self.embedding_models {
                // An empty variable means unset: `none` says "no models".
                let value = if m.is_empty() {
                    "none".to_owned()
                } else {
                    m.join(",")
                };
                over.insert(format!("{}_EMBEDDING_MODELS", v.env_prefix), value);
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
            price_per_mtok = { input = 0.10, output = 0.40 }
            model_prices = { "gemini-2.5-pro" = { input = 1.25, output = 10.0 } }
            max_usd_per_day = 2.0
            max_tokens_per_day = 1000000

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
                ..ProviderSettings::default()
            }
        );
        let gemini = f.providers[1].settings();
        assert_eq!(gemini.tier, Some(Tier::Paid));
        assert_eq!(
            gemini.prices,
            vec![
                (
                    "*".to_owned(),
                    Price {
                        input: 100_000,
                        output: 400_000
                    }
                ),
                (
                    "gemini-2.5-pro".to_owned(),
                    Price {
                        input: 1_250_000,
                        output: 10_000_000
                    }
                ),
            ]
        );
        assert_eq!(
            gemini.budget,
            Budget {
                max_nanos: Some(2_000_000_000),
                max_tokens: Some(1_000_000)
            }
        );
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
    fn embedding_models_from_the_file_reach_the_provider() {
        let f = WorkerFile::parse(
            "[[providers]]\nkind = \"ollama\"\nembedding_models = [\"nomic-embed-text\"]\n\n[[providers]]\nkind = \"openai\"\nembedding_models = []",
        )
        .expect("valid");
        let env: HashMap<String, String> =
            [("OPENAI_API_KEY".to_owned(), "sk-x".to_owned())].into();
        let client = crate::providers::VendorClient::new(crate::providers::ReadLimits::DEFAULT)
            .expect("client");
        let build = |i: usize| {
            let e = &f.providers[i];
            crate::providers::build(
                &e.kind,
                &e.overlay(&env),
                None,
                std::time::Duration::ZERO,
                &client,
            )
            .expect("builds")
        };
        assert_eq!(build(0).embedding_models(), ["nomic-embed-text"]);
        // `[]` turns the vendor's default (text-embedding-3-small) off.
        assert!(build(1).embedding_models().is_empty());
        let default =
            crate::providers::build("openai", &env, None, std::time::Duration::ZERO, &client)
                .expect("builds");
        assert_eq!(default.embedding_models(), ["text-embedding-3-small"]);
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
            let e = WorkerFile::parse(text).expect_err(text).to_string();
            assert!(e.contains(want), "{text}: {e}");
            // A key pasted into the file by mistake is never echoed back.
            assert!(!e.contains("gsk_inline"), "{text}: {e}");
        }
        let e = WorkerFile::parse("[[providers]]\nkind = \"groq\"\nkey = \"gsk_inline\"")
            .expect_err("unknown field")
            .to_string();
        assert!(e.starts_with("line 3: unknown field `key`"), "{e}");
        assert!(
            WorkerFile::load(Path::new("/nonexistent/d8.toml"))
                .expect_err("missing")
                .to_string()
                .contains("cannot read")
        );
    }

    #[test]
    fn prices_and_budgets_are_checked() {
        for (line, want) in [
            (
                "price_per_mtok = { input = -1.0, output = 0.0 }",
                "price_per_mtok",
            ),
            (
                "model_prices = { \"m\" = { input = 1.0, output = nan } }",
                "model_prices",
            ),
            ("max_usd_per_day = 0.0", "max_usd_per_day"),
            ("max_tokens_per_day = 0", "max_tokens_per_day"),
        ] {
            let text = format!("[[providers]]\nkind = \"groq\"\n{line}\n");
            let e = WorkerFile::parse(&text).expect_err(line).to_string();
            assert!(e.contains(want), "{line}: {e}");
        }
    }
}
