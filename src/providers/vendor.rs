//! The one table of vendor facts: names, environment variables, default
//! URL, model, tier and reasoning model, and the original project's worker
//! type. Configuration (flags, environment, the worker file), the provider
//! builder, the worker's advertised type and the default routing all read it.
//!
//! Adding a vendor is one entry in [`VENDORS`], plus one dialect file when it
//! does not speak an existing [`Dialect`] (most speak OpenAI's).

use crate::task::Tier;

/// The wire format a vendor speaks; one file per dialect in `providers/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// The built-in deterministic provider (tests, benchmarks, smoke checks).
    Echo,
    /// Ollama's `/api/chat` (NDJSON streams).
    Ollama,
    /// Anthropic's Messages API.
    Anthropic,
    /// Google's Gemini `generateContent`.
    Gemini,
    /// OpenAI's Chat Completions, which many vendors speak.
    OpenAi,
}

/// Everything d8 knows about one vendor before any configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vendor {
    /// Provider kind, as in `--provider` and the worker file; advertised.
    pub kind: &'static str,
    /// Another name accepted for it (`claude` for `anthropic`).
    pub alias: Option<&'static str>,
    /// Its wire format.
    pub dialect: Dialect,
    /// Prefix of its settings variables: `<PREFIX>_TIER`, `<PREFIX>_REASONING_MODEL`.
    pub env_prefix: &'static str,
    /// Variable holding the key; `None` for keyless providers.
    pub key_var: Option<&'static str>,
    /// Variable overriding the base URL.
    pub url_var: Option<&'static str>,
    /// The original project's name for the same URL, read when `url_var` is unset.
    pub legacy_url_var: Option<&'static str>,
    /// Variable listing the models served (comma-separated, default first).
    pub models_var: Option<&'static str>,
    /// Default base URL.
    pub base_url: &'static str,
    /// Model used when neither the task nor the configuration names one.
    pub default_model: &'static str,
    /// Cost tier unless the worker says otherwise: local hardware, a free
    /// tier people usually use, or billed.
    pub tier: Tier,
    /// Model for reasoning task types unless the worker names one. Only
    /// DeepSeek's is certain enough to default (its API has served
    /// `deepseek-reasoner` beside `deepseek-chat` from the start); other
    /// vendors rename models often, and a wrong guess would fail tasks.
    pub reasoning_model: Option<&'static str>,
    /// Embedding models served unless `<PREFIX>_EMBEDDING_MODELS` says
    /// otherwise (empty: none). Only where the vendor documents a stable
    /// one; Ollama serves whatever was pulled, so it has none by default.
    pub embedding_models: &'static [&'static str],
    /// The original project's `WORKER_TYPE` for this provider.
    pub worker_type: &'static str,
    /// The original project sent evolution and code generation only to
    /// workers of this type (its reasoning-capable ones).
    pub reasoning_worker: bool,
}

/// The built-in echo provider.
pub const ECHO: Vendor = Vendor {
    kind: "echo",
    alias: None,
    dialect: Dialect::Echo,
    env_prefix: "ECHO",
    key_var: None,
    url_var: None,
    legacy_url_var: None,
    models_var: None,
    base_url: "",
    default_model: "echo",
    tier: Tier::Local,
    reasoning_model: None,
    embedding_models: &["echo-embed"],
    worker_type: "echo",
    reasoning_worker: false,
};

/// Ollama on a machine of the user's (the original project's `deepseek_gpu`).
pub const OLLAMA: Vendor = Vendor {
    kind: "ollama",
    alias: None,
    dialect: Dialect::Ollama,
    env_prefix: "OLLAMA",
    key_var: None,
    // Ollama's own variable.
    url_var: Some("OLLAMA_HOST"),
    legacy_url_var: Some("DEEPSEEK_BASE_URL"),
    models_var: Some("OLLAMA_MODELS"),
    base_url: "http://localhost:11434",
    default_model: "deepseek-r1:8b",
    tier: Tier::Local,
    reasoning_model: None,
    embedding_models: &[],
    worker_type: "deepseek_gpu",
    reasoning_worker: true,
};

/// Anthropic's Claude.
pub const ANTHROPIC: Vendor = Vendor {
    kind: "anthropic",
    alias: Some("claude"),
    dialect: Dialect::Anthropic,
    env_prefix: "ANTHROPIC",
    key_var: Some("ANTHROPIC_API_KEY"),
    url_var: Some("ANTHROPIC_BASE_URL"),
    legacy_url_var: None,
    models_var: Some("ANTHROPIC_MODELS"),
    base_url: "https://api.anthropic.com",
    default_model: "claude-3-5-haiku-latest",
    tier: Tier::Paid,
    reasoning_model: None,
    embedding_models: &[],
    worker_type: "claude",
    reasoning_worker: true,
};

/// Google's Gemini API.
pub const GEMINI: Vendor = Vendor {
    kind: "gemini",
    alias: None,
    dialect: Dialect::Gemini,
    env_prefix: "GEMINI",
    key_var: Some("GEMINI_API_KEY"),
    url_var: Some("GEMINI_BASE_URL"),
    legacy_url_var: None,
    models_var: Some("GEMINI_MODELS"),
    base_url: "https://generativelanguage.googleapis.com",
    default_model: "gemini-2.0-flash",
    tier: Tier::Free,
    reasoning_model: None,
    embedding_models: &["gemini-embedding-001"],
    worker_type: "gemini",
    reasoning_worker: true,
};

/// OpenAI itself.
pub const OPENAI: Vendor = Vendor {
    kind: "openai",
    alias: None,
    dialect: Dialect::OpenAi,
    env_prefix: "OPENAI",
    key_var: Some("OPENAI_API_KEY"),
    url_var: Some("OPENAI_BASE_URL"),
    legacy_url_var: None,
    models_var: Some("OPENAI_MODELS"),
    base_url: "https://api.openai.com/v1",
    default_model: "gpt-4o-mini",
    tier: Tier::Paid,
    reasoning_model: None,
    embedding_models: &["text-embedding-3-small"],
    worker_type: "openai",
    reasoning_worker: false,
};

/// Groq's OpenAI-compatible API.
pub const GROQ: Vendor = Vendor {
    kind: "groq",
    alias: None,
    dialect: Dialect::OpenAi,
    env_prefix: "GROQ",
    key_var: Some("GROQ_API_KEY"),
    url_var: Some("GROQ_BASE_URL"),
    legacy_url_var: None,
    models_var: Some("GROQ_MODELS"),
    base_url: "https://api.groq.com/openai/v1",
    default_model: "llama-3.1-8b-instant",
    tier: Tier::Free,
    reasoning_model: None,
    embedding_models: &[],
    worker_type: "groq",
    reasoning_worker: false,
};

/// The DeepSeek API. Its URL variable is not `DEEPSEEK_BASE_URL`: the
/// original project used that name for the Ollama host of `deepseek_gpu`.
pub const DEEPSEEK: Vendor = Vendor {
    kind: "deepseek",
    alias: None,
    dialect: Dialect::OpenAi,
    env_prefix: "DEEPSEEK",
    key_var: Some("DEEPSEEK_API_KEY"),
    url_var: Some("DEEPSEEK_API_BASE_URL"),
    legacy_url_var: None,
    models_var: Some("DEEPSEEK_MODELS"),
    base_url: "https://api.deepseek.com/v1",
    default_model: "deepseek-chat",
    tier: Tier::Paid,
    reasoning_model: Some("deepseek-reasoner"),
    embedding_models: &[],
    worker_type: "deepseek",
    reasoning_worker: false,
};

/// OpenRouter.
pub const OPENROUTER: Vendor = Vendor {
    kind: "openrouter",
    alias: None,
    dialect: Dialect::OpenAi,
    env_prefix: "OPENROUTER",
    key_var: Some("OPENROUTER_API_KEY"),
    url_var: Some("OPENROUTER_BASE_URL"),
    legacy_url_var: None,
    models_var: Some("OPENROUTER_MODELS"),
    base_url: "https://openrouter.ai/api/v1",
    default_model: "openrouter/auto",
    tier: Tier::Paid,
    reasoning_model: None,
    embedding_models: &[],
    worker_type: "openrouter",
    reasoning_worker: false,
};

/// Every vendor this build knows, in the order `--help` and errors list them.
pub const VENDORS: [Vendor; 8] = [
    ECHO, OLLAMA, ANTHROPIC, GEMINI, OPENAI, GROQ, DEEPSEEK, OPENROUTER,
];

/// The vendor called `name` (its kind or its alias).
pub fn find(name: &str) -> Option<&'static Vendor> {
    VENDORS
        .iter()
        .find(|v| v.kind == name || v.alias == Some(name))
}

/// The vendor whose original `WORKER_TYPE` is `worker_type` (`claude`,
/// `deepseek_gpu`, …, or a kind itself).
pub fn by_worker_type(worker_type: &str) -> Option<&'static Vendor> {
    VENDORS.iter().find(|v| v.worker_type == worker_type)
}

/// The kinds, comma-separated, for help and error messages.
pub fn kinds() -> String {
    VENDORS.map(|v| v.kind).join(", ")
}

/// The default tier of a provider kind (`paid` for one this build does not know).
pub fn default_tier(kind: &str) -> Tier {
    find(kind).map_or(Tier::Paid, |v| v.tier)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_complete() {
        let mut names: Vec<&str> = VENDORS
            .iter()
            .flat_map(|v| std::iter::once(v.kind).chain(v.alias))
            .collect();
        let n = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), n, "a name is used twice");
        for v in VENDORS {
            assert_eq!(find(v.kind), Some(&v));
            assert_eq!(by_worker_type(v.worker_type), Some(&v));
            assert!(!v.default_model.is_empty());
            // A keyed vendor is reached over HTTP(S) and configurable.
            if v.key_var.is_some() {
                assert!(v.base_url.starts_with("https://"), "{}", v.kind);
                assert!(v.url_var.is_some() && v.models_var.is_some(), "{}", v.kind);
            }
        }
    }

    #[test]
    fn the_original_projects_names_map_both_ways() {
        assert_eq!(by_worker_type("claude").map(|v| v.kind), Some("anthropic"));
        assert_eq!(
            by_worker_type("deepseek_gpu").map(|v| v.kind),
            Some("ollama")
        );
        assert_eq!(find("claude").map(|v| v.worker_type), Some("claude"));
        assert_eq!(find("ollama").map(|v| v.worker_type), Some("deepseek_gpu"));
        assert_eq!(find("groq").map(|v| v.worker_type), Some("groq"));
        assert_eq!(find("mistral"), None);
    }

    #[test]
    fn default_tiers() {
        assert_eq!(default_tier("ollama"), Tier::Local);
        assert_eq!(default_tier("echo"), Tier::Local);
        assert_eq!(default_tier("groq"), Tier::Free);
        assert_eq!(default_tier("gemini"), Tier::Free);
        assert_eq!(default_tier("anthropic"), Tier::Paid);
        assert_eq!(default_tier("someday"), Tier::Paid);
    }
}
