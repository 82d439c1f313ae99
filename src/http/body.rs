//! Request bodies: JSON parsing whatever the content type, and complete
//! validation, so nothing invalid reaches the cluster.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::ApiError;
use crate::node::cluster::TaskDefaults;
use crate::store::AgentDef;
use crate::task::{
    ChatMessage, ChatRequest, DEFAULT_PRIORITY, Millis, PRIORITY_RANGE, ResponseFormat, TaskSpec,
    Tier,
};

/// Parses a JSON body whatever its content type; maps size and syntax errors.
pub(super) fn parse<T: DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
    limit: usize,
) -> Result<T, ApiError> {
    let bytes = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large(limit)
        } else {
            ApiError::bad_request(
                "invalid_body",
                format!("could not read the request body: {e}"),
            )
        }
    })?;
    if bytes.is_empty() {
        return Err(ApiError::bad_request(
            "invalid_json",
            "request body is empty; send a JSON object",
        ));
    }
    serde_json::from_slice(&bytes).map_err(|e| {
        let code = if e.is_syntax() || e.is_eof() {
            "invalid_json"
        } else {
            "invalid_request"
        };
        ApiError::bad_request(code, format!("invalid request body: {e}"))
    })
}

fn check_priority(p: Option<i64>) -> Result<u8, ApiError> {
    match p {
        None => Ok(DEFAULT_PRIORITY),
        Some(p) => u8::try_from(p)
            .ok()
            .filter(|p| PRIORITY_RANGE.contains(p))
            .ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_priority",
                    format!("priority {p} is out of range: use 1 (lowest) to 10 (most urgent)"),
                )
            }),
    }
}

fn check_task_type(t: &str) -> Result<(), ApiError> {
    let ok = !t.is_empty()
        && t.len() <= 64
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "invalid_type",
            "task type must be 1-64 characters from letters, digits, '_', '-' and '.'",
        ))
    }
}

/// Agent ids are path segments: 1-128 printable characters.
pub(super) fn check_agent_id(id: &str) -> Result<(), ApiError> {
    if id.is_empty() || id.len() > 128 || id.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "invalid_agent_id",
            "agent id must be 1-128 printable characters",
        ));
    }
    Ok(())
}

fn check_temperature(t: Option<f32>) -> Result<(), ApiError> {
    if t.is_some_and(|t| !(0.0..=2.0).contains(&t)) {
        return Err(ApiError::bad_request(
            "invalid_temperature",
            "temperature must be between 0 and 2",
        ));
    }
    Ok(())
}

/// `POST /api/agents/{id}/act`.
#[derive(Deserialize)]
pub(super) struct ActRequest {
    action_type: String,
    #[serde(default)]
    input_data: Value,
    priority: Option<i64>,
}

const DEFAULT_AGENT_PROMPT: &str = "You are an autonomous AI agent. Carry out the requested action using the input provided and reply with the result only.";

impl ActRequest {
    /// The task for one action of `agent_id`, defined by `agent` when one
    /// was stored (else the default prompt).
    pub(super) fn into_spec(
        self,
        agent_id: String,
        agent: Option<AgentDef>,
        defaults: TaskDefaults,
    ) -> Result<TaskSpec, ApiError> {
        check_agent_id(&agent_id)?;
        if self.action_type.trim().is_empty() || self.action_type.len() > 128 {
            return Err(ApiError::bad_request(
                "invalid_action_type",
                "action_type must be 1-128 characters",
            ));
        }
        let priority = check_priority(self.priority)?;
        let (system, model, temperature, task_type) = match agent {
            Some(a) => (
                a.system_prompt,
                a.model,
                a.temperature,
                a.task_type.unwrap_or_else(|| "agent_action".into()),
            ),
            None => (
                format!("{DEFAULT_AGENT_PROMPT} Your agent id is {agent_id}."),
                None,
                None,
                "agent_action".into(),
            ),
        };
        let input = match &self.input_data {
            Value::Null => "(none)".to_owned(),
            Value::String(s) => s.clone(),
            other => serde_json::to_string_pretty(other).unwrap_or_default(),
        };
        let user = format!("Action: {}\n\nInput:\n{input}", self.action_type);
        Ok(TaskSpec {
            task_type,
            priority,
            request: ChatRequest {
                messages: vec![
                    ChatMessage::new("system", system),
                    ChatMessage::new("user", user),
                ],
                model,
                temperature,
                ..ChatRequest::default()
            },
            max_attempts: defaults.max_attempts,
            attempt_timeout_ms: defaults.attempt_timeout_ms,
            deadline: None,
            agent_id: Some(agent_id),
            provider: None,
            max_tier: None,
        })
    }
}

/// Largest agent system prompt, bytes.
pub(super) const MAX_SYSTEM_PROMPT: usize = 64 * 1024;

/// `PUT /api/agents/{id}`.
#[derive(Deserialize)]
pub(super) struct AgentRequest {
    system_prompt: String,
    model: Option<String>,
    temperature: Option<f32>,
    task_type: Option<String>,
    /// Identical actions are answered from the cache for this long.
    cache_ttl_secs: Option<u64>,
}

impl AgentRequest {
    /// The checked definition.
    pub(super) fn into_def(self) -> Result<AgentDef, ApiError> {
        if let Some(t) = &self.task_type {
            check_task_type(t)?;
        }
        // Every agent lives in the orchestrator's memory: 1,000 of the
        // largest take 64 MiB.
        if self.system_prompt.len() > MAX_SYSTEM_PROMPT {
            return Err(ApiError::bad_request(
                "invalid_system_prompt",
                format!(
                    "system_prompt is {} bytes, at most {MAX_SYSTEM_PROMPT}",
                    self.system_prompt.len()
                ),
            ));
        }
        if self
            .model
            .as_ref()
            .is_some_and(|m| m.len() > crate::task::MAX_NAME)
        {
            return Err(ApiError::bad_request(
                "invalid_model",
                format!("model must be at most {} bytes", crate::task::MAX_NAME),
            ));
        }
        check_temperature(self.temperature)?;
        if self
            .cache_ttl_secs
            .is_some_and(|t| !(1..=MAX_CACHE_TTL_SECS).contains(&t))
        {
            return Err(ApiError::bad_request(
                "invalid_cache_ttl",
                format!("cache_ttl_secs must be 1-{MAX_CACHE_TTL_SECS}"),
            )
            .with_param("cache_ttl_secs"));
        }
        Ok(AgentDef {
            system_prompt: self.system_prompt,
            model: self.model,
            temperature: self.temperature,
            task_type: self.task_type,
            cache_ttl_secs: self.cache_ttl_secs,
        })
    }
}

/// Longest cache TTL an agent may ask for: a year.
const MAX_CACHE_TTL_SECS: u64 = 31_536_000;

/// `POST /api/tasks` (and each element of a batch).
#[derive(Deserialize)]
pub(super) struct TaskRequest {
    #[serde(rename = "type")]
    task_type: String,
    data: TaskData,
    priority: Option<i64>,
    max_attempts: Option<u32>,
    timeout_secs: Option<u64>,
    deadline_secs: Option<u64>,
    /// Answer from the result cache when an identical task ran before
    /// (single tasks only; ignored in batches).
    #[serde(default)]
    pub(super) cache: bool,
}

#[derive(Deserialize)]
struct TaskData {
    messages: Vec<ChatMessage>,
    model: Option<String>,
    /// Run only on workers with this provider (`groq`, `ollama`, …).
    provider: Option<String>,
    /// The dearest tier allowed: `local`, `free` or `paid` (default).
    max_tier: Option<String>,
    temperature: Option<f32>,
    max_tokens: Option<u32>,
    /// One stop sequence or a list of up to four.
    stop: Option<Stop>,
    /// `{"type": "json_object"}` asks for JSON; `{"type": "text"}` is the default.
    response_format: Option<FormatBody>,
    /// Forward tokens as they are generated (`GET /api/tasks/{id}/stream`).
    #[serde(default)]
    stream: bool,
}

/// OpenAI's `stop`: a string or an array of strings.
#[derive(Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct FormatBody {
    #[serde(rename = "type")]
    kind: String,
}

/// Validates `stop` and `response_format`; returns (stop sequences, JSON mode).
fn check_output_controls(
    stop: Option<Stop>,
    format: Option<FormatBody>,
) -> Result<(Vec<String>, bool), ApiError> {
    let stop = match stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s],
        Some(Stop::Many(v)) => v,
    };
    if stop.len() > 4 || stop.iter().any(|s| s.is_empty() || s.len() > 256) {
        return Err(ApiError::bad_request(
            "invalid_stop",
            "stop must be a non-empty string or a list of at most 4 of them, each at most 256 bytes",
        ));
    }
    let json = match format.as_ref().map(|f| f.kind.as_str()) {
        None | Some("text") => false,
        Some("json_object") => true,
        Some(other) => {
            return Err(ApiError::bad_request(
                "invalid_response_format",
                format!(
                    "response_format type {other:?} is not supported (use \"json_object\" or \"text\")"
                ),
            ));
        }
    };
    Ok((stop, json))
}

impl TaskRequest {
    /// The checked task; `now` anchors `deadline_secs`.
    pub(super) fn into_spec(
        self,
        defaults: TaskDefaults,
        now: Millis,
    ) -> Result<TaskSpec, ApiError> {
        check_task_type(&self.task_type)?;
        let priority = check_priority(self.priority)?;
        let data = self.data;
        if data.messages.is_empty() {
            return Err(ApiError::bad_request(
                "invalid_messages",
                "data.messages must hold at least one message",
            ));
        }
        if let Some(m) = data
            .messages
            .iter()
            .find(|m| !matches!(m.role.as_str(), "system" | "user" | "assistant"))
        {
            return Err(ApiError::bad_request(
                "invalid_messages",
                format!(
                    "message role {:?} is not one of system, user, assistant",
                    m.role
                ),
            ));
        }
        check_temperature(data.temperature)?;
        let (stop, json) = check_output_controls(data.stop, data.response_format)?;
        let max_tier = data
            .max_tier
            .as_deref()
            .map(str::parse::<Tier>)
            .transpose()
            .map_err(|e| {
                ApiError::bad_request("invalid_max_tier", format!("data.max_tier: {e}"))
            })?;
        for (what, v) in [("model", &data.model), ("provider", &data.provider)] {
            if v.as_ref()
                .is_some_and(|s| s.len() > 128 || s.chars().any(char::is_control))
            {
                return Err(ApiError::bad_request(
                    "invalid_request",
                    format!("data.{what} must be at most 128 printable characters"),
                ));
            }
        }
        if self.max_attempts.is_some_and(|a| !(1..=20).contains(&a)) {
            return Err(ApiError::bad_request(
                "invalid_max_attempts",
                "max_attempts must be 1-20",
            ));
        }
        if self.timeout_secs.is_some_and(|t| t == 0 || t > 86_400) {
            return Err(ApiError::bad_request(
                "invalid_timeout",
                "timeout_secs must be 1-86400",
            ));
        }
        Ok(TaskSpec {
            task_type: self.task_type,
            priority,
            request: ChatRequest {
                messages: data.messages,
                model: data.model,
                temperature: data.temperature,
                max_tokens: data.max_tokens,
                stop,
                response_format: if json {
                    ResponseFormat::JsonObject
                } else {
                    ResponseFormat::Text
                },
                stream: data.stream,
                ..ChatRequest::default()
            },
            max_attempts: self.max_attempts.unwrap_or(defaults.max_attempts),
            attempt_timeout_ms: self
                .timeout_secs
                .map_or(defaults.attempt_timeout_ms, |s| s * 1_000),
            deadline: self
                .deadline_secs
                .map(|s| Millis(now.0.saturating_add(s.saturating_mul(1_000)))),
            agent_id: None,
            provider: data.provider,
            max_tier,
        })
    }
}

/// `POST /api/tokens` (an empty body means no limits).
#[derive(Deserialize, Default)]
pub(super) struct CreateToken {
    pub(super) ttl_secs: Option<u64>,
    pub(super) max_uses: Option<u32>,
}

/// One path segment (an id), as text. A segment that is not valid UTF-8
/// once percent-decoded is a JSON 400 like every other error (axum's own
/// `Path` rejection is `text/plain`).
#[derive(Debug)]
pub struct Segment(pub String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Segment {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<String>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(s)| Segment(s))
            .map_err(|e| ApiError::bad_request("invalid_path", e.body_text()))
    }
}
