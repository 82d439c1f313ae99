//! The data every layer shares: what a task asks for and what came of it.
//! Plain serde types, no behaviour; `core`, `wire`, `store` and `http` all
//! speak them. They travel over bincode, so nothing here may need
//! `deserialize_any` (no `serde_json::Value`, no untagged enums).

use std::fmt;

use serde::{Deserialize, Serialize};

/// Identifies a task. Allocated by the store, monotonic, never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TaskId(pub u64);

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Identifies a worker: a DNS label issued at enrollment and fixed in its certificate.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct WorkerId(pub String);

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Milliseconds on the orchestrator's clock (Unix epoch, made monotonic by the
/// shell). The core never reads a clock; everything time-related is passed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Millis(pub u64);

impl Millis {
    /// `self + ms`, saturating.
    pub fn plus(self, ms: u64) -> Millis {
        Millis(self.0.saturating_add(ms))
    }
    /// `self - earlier` in ms, 0 if `earlier` is later.
    pub fn since(self, earlier: Millis) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

/// Formats ms since the Unix epoch as RFC 3339 UTC with milliseconds
/// (`2026-11-25T17:47:08.123Z`), the API's one timestamp format. Times past
/// year 9999 print as that year's end.
pub fn rfc3339(ms: u64) -> String {
    let nanos = i128::from(ms) * 1_000_000;
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .unwrap_or_else(|_| time::PrimitiveDateTime::MAX.assume_utc());
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// Lowest and highest task priority (10 is the most urgent).
pub const PRIORITY_RANGE: std::ops::RangeInclusive<u8> = 1..=10;
/// Priority when the client names none (the original project's default).
pub const DEFAULT_PRIORITY: u8 = 5;

/// One chat message.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant` or `tool` (a tool's result).
    pub role: String,
    /// The text (empty for an assistant turn that only calls tools).
    pub content: String,
    /// The participant's name (OpenAI `name`), passed to vendors that take it.
    pub name: Option<String>,
    /// Tools an assistant turn called.
    #[serde(default)]
    pub tool_calls: Vec<ToolCall>,
    /// For a `tool` message: the call it answers.
    pub tool_call_id: Option<String>,
}

impl ChatMessage {
    /// A message of `role` (`system`, `user`, `assistant`).
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
            ..ChatMessage::default()
        }
    }
}

/// A function the model may call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tool {
    /// Its name.
    pub name: String,
    /// What it does, for the model.
    pub description: Option<String>,
    /// Its parameters as JSON Schema text (text, not a value: these types
    /// travel over bincode, which cannot carry a schemaless value).
    pub parameters: Option<String>,
    /// OpenAI's `strict` flag, passed to the vendors that know it.
    pub strict: Option<bool>,
}

/// One call of a [`Tool`] by the model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCall {
    /// The vendor's id for the call; a `tool` message names it to answer.
    pub id: String,
    /// The tool called.
    pub name: String,
    /// The arguments, as the JSON text the model wrote.
    pub arguments: String,
}

/// Whether and which tools the model must call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToolChoice {
    /// The model decides.
    Auto,
    /// No tool call.
    None,
    /// At least one tool call.
    Required,
    /// This one tool.
    Function(String),
}

/// The shape the answer must take.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum ResponseFormat {
    /// Free text.
    #[default]
    Text,
    /// Any single JSON object.
    JsonObject,
    /// JSON matching a schema.
    JsonSchema {
        /// The schema's name (OpenAI requires one).
        name: String,
        /// The schema, as JSON text.
        schema: String,
        /// OpenAI's `strict` flag.
        strict: Option<bool>,
    },
}

impl ResponseFormat {
    /// Whether the answer must be JSON.
    pub fn is_json(&self) -> bool {
        !matches!(self, ResponseFormat::Text)
    }
}

/// Texts to embed: what an embeddings task asks for instead of a chat.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct EmbedRequest {
    /// The texts, one vector each, in order.
    pub input: Vec<String>,
    /// Output dimensions, for models that can shorten their vectors.
    pub dimensions: Option<u32>,
}

/// The cluster's one request type; providers translate it to vendor formats.
/// It is a chat, or, with [`ChatRequest::embed`] set, embeddings of texts
/// by `model` (the chat fields are then unused): one request type keeps one
/// path through scheduling, the wire, the store and the providers' retries.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ChatRequest {
    /// The conversation, oldest first.
    pub messages: Vec<ChatMessage>,
    /// A model name, or `None` for the worker's default.
    pub model: Option<String>,
    /// Sampling temperature.
    pub temperature: Option<f32>,
    /// Nucleus sampling.
    pub top_p: Option<f32>,
    /// Upper bound on generated tokens.
    pub max_tokens: Option<u32>,
    /// Sequences that end generation (at most four; OpenAI's limit).
    pub stop: Vec<String>,
    /// Seed, for vendors that sample reproducibly.
    pub seed: Option<i64>,
    /// Penalty on tokens already present.
    pub presence_penalty: Option<f32>,
    /// Penalty by token frequency.
    pub frequency_penalty: Option<f32>,
    /// Text, a JSON object, or JSON matching a schema: OpenAI family
    /// `response_format`, Gemini `responseMimeType`/`responseSchema`, Ollama
    /// `format`; Anthropic has no such mode, so the system prompt asks.
    pub response_format: ResponseFormat,
    /// Functions the model may call.
    pub tools: Vec<Tool>,
    /// Whether it must call them (`None`: the vendor's default).
    pub tool_choice: Option<ToolChoice>,
    /// Whether it may call several at once (`None`: the vendor's default).
    pub parallel_tool_calls: Option<bool>,
    /// Forward text deltas as they are generated (worker → orchestrator chunks).
    pub stream: bool,
    /// Compute embeddings of these texts instead of chatting.
    pub embed: Option<EmbedRequest>,
}

impl ChatRequest {
    /// The name of the tool whose call has `id`, from the assistant turns
    /// (vendors that match tool results by name need it).
    pub fn tool_name(&self, id: &str) -> Option<&str> {
        self.messages
            .iter()
            .flat_map(|m| &m.tool_calls)
            .find(|c| c.id == id)
            .map(|c| c.name.as_str())
    }
}

/// What a client asked for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskSpec {
    /// Task type; decides which workers may run it (see `core::Routing`).
    pub task_type: String,
    /// Priority 1..=10, 10 most urgent.
    pub priority: u8,
    /// The chat to run.
    pub request: ChatRequest,
    /// Attempts that may fail before the task fails (worker loss and rate
    /// limits do not count).
    pub max_attempts: u32,
    /// Time one attempt may take before it is abandoned and retried elsewhere.
    pub attempt_timeout_ms: u64,
    /// Absolute deadline; past it the task fails wherever it is.
    pub deadline: Option<Millis>,
    /// Agent the task was submitted for, if any.
    pub agent_id: Option<String>,
    /// Provider kind the task must run on (`groq`, `ollama`, …), if any.
    pub provider: Option<String>,
    /// The dearest tier it may run on (`None`: any).
    pub max_tier: Option<Tier>,
}

/// Token counts a provider reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Usage {
    /// Prompt tokens.
    pub prompt_tokens: u32,
    /// Generated tokens.
    pub completion_tokens: u32,
}

impl Usage {
    /// `prompt` tokens in, `completion` tokens out.
    pub const fn new(prompt: u32, completion: u32) -> Self {
        Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
        }
    }
}

/// Why generation stopped, in OpenAI's terms (each vendor's reason maps to one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// A natural end or a stop sequence.
    #[default]
    Stop,
    /// The token limit.
    Length,
    /// The model called tools.
    ToolCalls,
    /// A safety filter.
    ContentFilter,
}

impl FinishReason {
    /// `stop`, `length`, `tool_calls` or `content_filter`.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::ToolCalls => "tool_calls",
            FinishReason::ContentFilter => "content_filter",
        }
    }
}

/// A successful result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskOutput {
    /// Generated text.
    pub content: String,
    /// Tools the model called, in order.
    pub tool_calls: Vec<ToolCall>,
    /// Why generation stopped.
    pub finish_reason: FinishReason,
    /// Provider that produced it (`echo`, `groq`, …).
    pub provider: String,
    /// Model that produced it.
    pub model: String,
    /// Token usage; `None` when the vendor reported none (not zero).
    pub usage: Option<Usage>,
    /// For an embeddings task: one vector per input text, in order.
    pub embeddings: Vec<Vec<f32>>,
}

impl TaskOutput {
    /// A text answer that ended normally, without usage.
    pub fn text(
        content: impl Into<String>,
        provider: impl Into<String>,
        model: impl Into<String>,
    ) -> Self {
        TaskOutput {
            content: content.into(),
            tool_calls: Vec::new(),
            finish_reason: FinishReason::Stop,
            provider: provider.into(),
            model: model.into(),
            usage: None,
            embeddings: Vec::new(),
        }
    }
}

/// How a failure steers the scheduler.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    /// The request itself is bad (vendor said 4xx): fail the task.
    Permanent,
    /// Worth retrying elsewhere (5xx, timeout, connection): consumes an attempt.
    Transient,
    /// Rate limited: retry elsewhere without consuming an attempt; the worker
    /// cools down for `retry_after_ms`.
    RateLimited {
        /// How long the worker's provider should cool down.
        retry_after_ms: u64,
    },
    /// The worker vanished mid-task: not the task's fault, no attempt consumed.
    WorkerLost,
    /// The attempt exceeded its timeout: consumes an attempt.
    Timeout,
    /// The worker cannot serve it right now (every suitable key rejected or
    /// out of quota): run it elsewhere without consuming an attempt.
    Unavailable,
}

impl ErrorKind {
    /// `permanent`, `transient`, `rate_limited`, `worker_lost`, `timeout`,
    /// `unavailable` (a metrics label).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Permanent => "permanent",
            ErrorKind::Transient => "transient",
            ErrorKind::RateLimited { .. } => "rate_limited",
            ErrorKind::WorkerLost => "worker_lost",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Unavailable => "unavailable",
        }
    }
}

/// A failed attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskError {
    /// Classification.
    pub kind: ErrorKind,
    /// Human-readable reason. Never contains secrets (providers redact).
    pub message: String,
}

/// What one attempt produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Outcome {
    /// Success.
    Ok(TaskOutput),
    /// Failure.
    Err(TaskError),
}

/// Lifecycle state, as the HTTP API reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskStatus {
    /// Waiting for a worker.
    Pending,
    /// Running on a worker.
    Assigned,
    /// Finished with a result.
    Completed,
    /// Finished without a result.
    Failed,
    /// Cancelled by a client.
    Cancelled,
}

impl TaskStatus {
    /// The lowercase name used in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Pending => "pending",
            TaskStatus::Assigned => "assigned",
            TaskStatus::Completed => "completed",
            TaskStatus::Failed => "failed",
            TaskStatus::Cancelled => "cancelled",
        }
    }
}

/// A task that reached a final state; what the store keeps as its result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FinishedTask {
    /// The task.
    pub id: TaskId,
    /// Completed, Failed or Cancelled.
    pub status: TaskStatus,
    /// Task type.
    pub task_type: String,
    /// Priority it ran at.
    pub priority: u8,
    /// The output when completed.
    pub output: Option<TaskOutput>,
    /// Why it failed, when failed.
    pub error: Option<String>,
    /// Worker of the final attempt.
    pub worker: Option<WorkerId>,
    /// Agent it was submitted for, if any.
    pub agent_id: Option<String>,
    /// Attempts dispatched.
    pub attempts: u32,
    /// When it was submitted.
    pub created_at: Millis,
    /// When it finished.
    pub completed_at: Millis,
}

/// What a call costs, cheapest first: the scheduler fills the cheapest tier
/// with a free slot before it spends money (see `core`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    /// Hardware the user owns (Ollama on a GPU box).
    Local,
    /// A free-tier key: costs nothing but has tight rate limits.
    Free,
    /// A key that is billed per token.
    Paid,
}

impl Tier {
    /// Every tier, cheapest first.
    pub const ALL: [Tier; 3] = [Tier::Local, Tier::Free, Tier::Paid];

    /// `local`, `free` or `paid`.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Local => "local",
            Tier::Free => "free",
            Tier::Paid => "paid",
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A tier name that is not `local`, `free` or `paid`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown tier {0:?} (expected local, free or paid)")]
pub struct UnknownTier(pub String);

impl std::str::FromStr for Tier {
    type Err = UnknownTier;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Tier::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| UnknownTier(s.to_owned()))
    }
}

/// Task types the original project sent to reasoning-capable models; every
/// other type (`agent_action` first) gets a provider's fast default model.
pub const REASONING_TASKS: [&str; 3] = [
    "evolution_crossover",
    "evolution_mutation",
    "code_generation",
];

/// Whether a task of this type should run on a reasoning model when it names
/// no model.
pub fn wants_reasoning(task_type: &str) -> bool {
    REASONING_TASKS.contains(&task_type)
}

/// One provider on a worker, as advertised to the orchestrator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offer {
    /// Provider kind (`groq`, `ollama`, …).
    pub provider: String,
    /// What its calls cost.
    pub tier: Tier,
    /// Models served; the first is the fast default.
    pub models: Vec<String>,
    /// The model for reasoning task types, when it has one.
    pub reasoning_model: Option<String>,
    /// Models it computes embeddings with.
    pub embedding_models: Vec<String>,
    /// What its calls cost, as this worker knows it (its file, else d8's
    /// built-in list prices): per model, `*` for any other model. Empty for
    /// the local and free tiers, which cost nothing.
    pub prices: Vec<(String, Price)>,
}

impl Offer {
    /// The price of `model`: its own, else the provider-wide `*` one.
    pub fn price_of(&self, model: &str) -> Option<Price> {
        price_in(&self.prices, model)
    }
}

/// The price of `model` in a price list: its own, else the list's `*` one.
pub fn price_in(prices: &[(String, Price)], model: &str) -> Option<Price> {
    let find = |m: &str| prices.iter().find(|(n, _)| n == m).map(|(_, p)| *p);
    find(model).or_else(|| find("*"))
}

/// A price in micro-dollars (US$ 10⁻⁶) per million tokens: integers, so
/// sums are exact and the same everywhere (`$0.59` per million is `590_000`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct Price {
    /// Per million prompt (input) tokens.
    pub input: u64,
    /// Per million completion (output) tokens.
    pub output: u64,
}

impl Price {
    /// `input` and `output` in dollars per million tokens (rounded to the
    /// micro-dollar; negative or not finite is refused).
    pub fn from_usd(input: f64, output: f64) -> Option<Price> {
        let micro = |usd: f64| {
            (usd.is_finite() && (0.0..=1.0e6).contains(&usd)).then(|| (usd * 1e6).round() as u64)
        };
        Some(Price {
            input: micro(input)?,
            output: micro(output)?,
        })
    }

    /// What `usage` costs at this price, in nano-dollars (US$ 10⁻⁹).
    pub fn cost_nanos(&self, usage: Usage) -> u64 {
        // micro-$ per 10⁶ tokens = 10⁻³ nano-$ per token.
        let part = |tokens: u32, per_m: u64| u64::from(tokens).saturating_mul(per_m) / 1_000;
        part(usage.prompt_tokens, self.input)
            .saturating_add(part(usage.completion_tokens, self.output))
    }
}

/// Why a provider (or model) rests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RestReason {
    /// The vendor answered 429 (rate limit).
    #[default]
    RateLimited,
    /// The vendor said the key's quota or credit is used up.
    Quota,
    /// The worker's own daily budget for it is spent (until midnight UTC).
    Budget,
    /// The worker's own per-minute limit is reached.
    OwnLimit,
    /// The vendor rejected the key.
    KeyRejected,
}

impl RestReason {
    /// `rate_limited`, `quota`, `budget`, `own_limit`, `key_rejected`.
    pub fn as_str(self) -> &'static str {
        match self {
            RestReason::RateLimited => "rate_limited",
            RestReason::Quota => "quota",
            RestReason::Budget => "budget",
            RestReason::OwnLimit => "own_limit",
            RestReason::KeyRejected => "key_rejected",
        }
    }
}

/// A provider (or one of its models) that cannot take work now, as the
/// worker sees it; sent with heartbeats and results.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderCooldown {
    /// Provider kind.
    pub provider: String,
    /// The one model cooling down (a per-model rate limit), or `None` for the
    /// whole provider (quota, budget, rejected key).
    pub model: Option<String>,
    /// Milliseconds until it may be used again (0 when disabled).
    pub remaining_ms: u64,
    /// Its key was rejected: unused until the worker restarts.
    pub disabled: bool,
    /// Why it rests.
    pub reason: RestReason,
}

/// How the orchestrator wants one attempt run: which provider to try first
/// and the dearest tier the worker may fall back to on its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// Provider kind to try first.
    pub prefer: String,
    /// Providers of dearer tiers are not used for this attempt.
    pub max_tier: Tier,
}

/// What a worker offers; sent in `Hello`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Capabilities {
    /// The original project's worker type (`groq`, `gemini`, `claude`,
    /// `deepseek_gpu`, or a provider name such as `echo`).
    pub worker_type: String,
    /// Providers configured on the worker, in its own order of preference,
    /// with their models and cost tiers (never keys).
    pub offers: Vec<Offer>,
    /// Tasks it runs at once.
    pub slots: u32,
    /// Operating system.
    pub os: String,
    /// CPU architecture.
    pub arch: String,
    /// Logical CPUs.
    pub cpus: u32,
    /// Total memory, MiB.
    pub memory_mb: u64,
    /// d8 version of the worker.
    pub version: String,
}

/// Longest name a worker may report: its type, provider kinds, model names,
/// OS, architecture and version. Names are shown in every stats answer and
/// compared on every dispatch.
pub const MAX_NAME: usize = 128;

impl Capabilities {
    /// The first name longer than [`MAX_NAME`]: what it is and its length.
    pub fn oversized_name(&self) -> Option<(&'static str, usize)> {
        let mut names: Vec<(&'static str, &str)> = vec![
            ("worker_type", &self.worker_type),
            ("os", &self.os),
            ("arch", &self.arch),
            ("version", &self.version),
        ];
        for o in &self.offers {
            names.push(("provider", &o.provider));
            names.extend(o.models.iter().map(|m| ("model", m.as_str())));
            names.extend(
                o.reasoning_model
                    .iter()
                    .map(|m| ("reasoning_model", m.as_str())),
            );
            names.extend(
                o.embedding_models
                    .iter()
                    .map(|m| ("embedding_model", m.as_str())),
            );
        }
        names
            .into_iter()
            .find(|(_, n)| n.len() > MAX_NAME)
            .map(|(what, n)| (what, n.len()))
    }

    /// Provider kinds, in the worker's order.
    pub fn providers(&self) -> Vec<String> {
        self.offers.iter().map(|o| o.provider.clone()).collect()
    }

    /// Every model served, sorted, without repeats.
    pub fn models(&self) -> Vec<String> {
        let mut m: Vec<String> = self
            .offers
            .iter()
            .flat_map(|o| o.models.iter().cloned())
            .collect();
        m.sort();
        m.dedup();
        m
    }
}

/// A plain chat task for unit tests.
#[cfg(test)]
pub(crate) fn test_spec(task_type: &str, priority: u8) -> TaskSpec {
    TaskSpec {
        task_type: task_type.to_owned(),
        priority,
        request: ChatRequest::default(),
        max_attempts: 3,
        attempt_timeout_ms: 60_000,
        deadline: None,
        agent_id: None,
        provider: None,
        max_tier: None,
    }
}

#[cfg(test)]
mod tests {
    use super::rfc3339;

    #[test]
    fn formats_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_795_628_828_123), "2026-11-25T17:47:08.123Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
        // Out of the calendar's range: clamped, never a panic.
        assert!(rfc3339(u64::MAX).starts_with("9999-12-31T23:59:59"));
    }
}
