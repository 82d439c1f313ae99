//! A Chat Completions request body, read into the cluster's [`ChatRequest`].
//!
//! Read from a JSON value rather than derived types, for two reasons: unknown
//! fields must be ignored (SDKs add new ones every month) while every known
//! one is checked with an error that names it (`param`), and the cache key
//! needs the whole body anyway. Shapes follow OpenAI's API reference for
//! `POST /v1/chat/completions`.

use serde_json::Value;

use crate::http::ApiError;
use crate::task::{
    ChatMessage, ChatRequest, DEFAULT_PRIORITY, PRIORITY_RANGE, ResponseFormat, Tier, Tool,
    ToolCall, ToolChoice,
};

/// Longest model name accepted (OpenRouter ids are the longest seen).
const MAX_MODEL: usize = 256;
/// Most stop sequences (OpenAI's limit).
const MAX_STOP: usize = 4;
/// Most tools offered in one request (OpenAI's limit).
const MAX_TOOLS: usize = 128;

/// A checked request.
#[derive(Debug, Clone, PartialEq)]
pub struct Chat {
    /// The `model` asked for, as given.
    pub model: String,
    /// The chat, without its model (resolution fills it in).
    pub request: ChatRequest,
    /// Stream the answer.
    pub stream: bool,
    /// Send a usage chunk at the end of a stream.
    pub include_usage: bool,
    /// d8's own knobs.
    pub knobs: Knobs,
}

/// The top-level `d8` object (the SDKs send it with `extra_body`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Knobs {
    /// Task priority, 1-10.
    pub priority: u8,
    /// Dearest tier allowed.
    pub max_tier: Option<Tier>,
    /// Provider kind to run on.
    pub provider: Option<String>,
    /// Use the result cache: `Some(true)` on, `Some(false)` bypass.
    pub cache: Option<bool>,
}

fn bad(param: &str, message: impl Into<String>) -> ApiError {
    ApiError::bad_request("invalid_request", message).with_param(param)
}

fn string<'a>(v: &'a Value, param: &str) -> Result<Option<&'a str>, ApiError> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s)),
        _ => Err(bad(param, format!("{param} must be a string"))),
    }
}

fn number(
    v: &Value,
    param: &str,
    range: std::ops::RangeInclusive<f64>,
) -> Result<Option<f32>, ApiError> {
    match v {
        Value::Null => Ok(None),
        Value::Number(n) => match n.as_f64() {
            #[allow(clippy::cast_possible_truncation)]
            Some(x) if range.contains(&x) => Ok(Some(x as f32)),
            _ => Err(bad(
                param,
                format!(
                    "{param} must be between {} and {}",
                    range.start(),
                    range.end()
                ),
            )),
        },
        _ => Err(bad(param, format!("{param} must be a number"))),
    }
}

fn boolean(v: &Value, param: &str) -> Result<Option<bool>, ApiError> {
    match v {
        Value::Null => Ok(None),
        Value::Bool(b) => Ok(Some(*b)),
        _ => Err(bad(param, format!("{param} must be true or false"))),
    }
}

/// A JSON value that must be an object, as compact JSON text.
fn schema_text(v: &Value, param: &str) -> Result<Option<String>, ApiError> {
    match v {
        Value::Null => Ok(None),
        Value::Object(_) => Ok(Some(v.to_string())),
        _ => Err(bad(param, format!("{param} must be a JSON Schema object"))),
    }
}

/// `model`: required, printable, of a sane length.
pub fn model(v: &Value) -> Result<String, ApiError> {
    match string(v, "model")? {
        Some(m) if !m.is_empty() && m.len() <= MAX_MODEL && !m.chars().any(char::is_control) => {
            Ok(m.to_owned())
        }
        Some(_) => Err(bad(
            "model",
            format!("model must be 1-{MAX_MODEL} printable characters"),
        )),
        None => Err(bad("model", "model is required (see GET /v1/models)")),
    }
}

/// Reads a request body.
pub fn parse(body: &Value) -> Result<Chat, ApiError> {
    if !body.is_object() {
        return Err(bad("", "the body must be a JSON object"));
    }
    let model = model(&body["model"])?;
    // Capabilities no d8 provider reports: refuse rather than drop.
    if let Some(n) = body["n"].as_u64().filter(|n| *n != 1) {
        return Err(bad(
            "n",
            format!(
                "n = {n} is not supported: d8's providers return one choice; send {n} requests"
            ),
        ));
    }
    if body["logprobs"] == true || !body["top_logprobs"].is_null() {
        let param = if body["logprobs"] == true {
            "logprobs"
        } else {
            "top_logprobs"
        };
        return Err(bad(param, "logprobs are not supported by d8's providers"));
    }
    let messages = body["messages"]
        .as_array()
        .filter(|m| !m.is_empty())
        .ok_or_else(|| bad("messages", "messages must be a non-empty array"))?;
    let mut out = Vec::with_capacity(messages.len());
    for (i, m) in messages.iter().enumerate() {
        out.push(message(m, i, &out)?);
    }
    let max_tokens = match (&body["max_completion_tokens"], &body["max_tokens"]) {
        (v, _) if !v.is_null() => (v, "max_completion_tokens"),
        (_, v) => (v, "max_tokens"),
    };
    let max_tokens = match max_tokens.0 {
        Value::Null => None,
        v => Some(
            v.as_u64()
                .filter(|n| *n >= 1)
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| {
                    bad(
                        max_tokens.1,
                        format!("{} must be a positive integer", max_tokens.1),
                    )
                })?,
        ),
    };
    let stop = match &body["stop"] {
        Value::Null => Vec::new(),
        Value::String(s) => vec![s.clone()],
        Value::Array(a) if a.len() <= MAX_STOP && a.iter().all(Value::is_string) => a
            .iter()
            .filter_map(|s| s.as_str().map(str::to_owned))
            .collect(),
        _ => {
            return Err(bad(
                "stop",
                format!("stop must be a string or an array of at most {MAX_STOP} strings"),
            ));
        }
    };
    let seed = match &body["seed"] {
        Value::Null => None,
        v => Some(
            v.as_i64()
                .ok_or_else(|| bad("seed", "seed must be an integer"))?,
        ),
    };
    let tools = tools(&body["tools"])?;
    let tool_choice = tool_choice(&body["tool_choice"], &tools)?;
    let stream = boolean(&body["stream"], "stream")?.unwrap_or(false);
    let include_usage = boolean(
        &body["stream_options"]["include_usage"],
        "stream_options.include_usage",
    )?
    .unwrap_or(false);
    let request = ChatRequest {
        messages: out,
        model: None,
        temperature: number(&body["temperature"], "temperature", 0.0..=2.0)?,
        top_p: number(&body["top_p"], "top_p", 0.0..=1.0)?,
        max_tokens,
        stop,
        seed,
        presence_penalty: number(&body["presence_penalty"], "presence_penalty", -2.0..=2.0)?,
        frequency_penalty: number(&body["frequency_penalty"], "frequency_penalty", -2.0..=2.0)?,
        response_format: response_format(&body["response_format"])?,
        tools,
        tool_choice,
        parallel_tool_calls: boolean(&body["parallel_tool_calls"], "parallel_tool_calls")?,
        stream,
        embed: None,
    };
    Ok(Chat {
        model,
        request,
        stream,
        include_usage,
        knobs: knobs(&body["d8"])?,
    })
}

/// One message; `before` are the messages read so far (a legacy `function`
/// result answers the latest call of that function).
fn message(m: &Value, i: usize, before: &[ChatMessage]) -> Result<ChatMessage, ApiError> {
    let at = |field: &str| format!("messages[{i}].{field}");
    let role = string(&m["role"], &at("role"))?.unwrap_or_default();
    let role = match role {
        "system" | "developer" => "system",
        "user" => "user",
        "assistant" => "assistant",
        "tool" | "function" => "tool",
        other => {
            return Err(bad(
                &at("role"),
                format!(
                    "role {other:?} is not one of system, developer, user, assistant, tool, function"
                ),
            ));
        }
    };
    let content = content(&m["content"], &at("content"))?;
    let name = string(&m["name"], &at("name"))?.map(str::to_owned);
    let mut msg = ChatMessage {
        role: role.to_owned(),
        content,
        name,
        ..ChatMessage::default()
    };
    if role == "assistant" {
        if let Some(calls) = m["tool_calls"].as_array() {
            for (j, c) in calls.iter().enumerate() {
                let p = at(&format!("tool_calls[{j}]"));
                let f = &c["function"];
                msg.tool_calls.push(ToolCall {
                    id: string(&c["id"], &format!("{p}.id"))?
                        .ok_or_else(|| bad(&format!("{p}.id"), "a tool call needs an id"))?
                        .to_owned(),
                    name: string(&f["name"], &format!("{p}.function.name"))?
                        .ok_or_else(|| {
                            bad(
                                &format!("{p}.function.name"),
                                "a tool call needs a function name",
                            )
                        })?
                        .to_owned(),
                    arguments: string(&f["arguments"], &format!("{p}.function.arguments"))?
                        .unwrap_or("{}")
                        .to_owned(),
                });
            }
        } else if m["function_call"].is_object() {
            // The pre-tools form: one call, no id.
            let f = &m["function_call"];
            let name = string(&f["name"], &at("function_call.name"))?.unwrap_or_default();
            msg.tool_calls.push(ToolCall {
                id: format!("call_{name}"),
                name: name.to_owned(),
                arguments: string(&f["arguments"], &at("function_call.arguments"))?
                    .unwrap_or("{}")
                    .to_owned(),
            });
        }
    }
    if role == "tool" {
        msg.tool_call_id = match string(&m["tool_call_id"], &at("tool_call_id"))? {
            Some(id) => Some(id.to_owned()),
            None => {
                // Legacy `function` results name the function instead.
                let name = msg
                    .name
                    .as_deref()
                    .ok_or_else(|| bad(&at("tool_call_id"), "a tool message needs tool_call_id"))?;
                before
                    .iter()
                    .rev()
                    .flat_map(|b| b.tool_calls.iter().rev())
                    .find(|c| c.name == name)
                    .map(|c| c.id.clone())
            }
        };
    }
    Ok(msg)
}

/// `content`: a string, `null`, or an array of parts whose text is joined.
fn content(v: &Value, param: &str) -> Result<String, ApiError> {
    match v {
        Value::Null => Ok(String::new()),
        Value::String(s) => Ok(s.clone()),
        Value::Array(parts) => {
            let mut text = String::new();
            for (j, p) in parts.iter().enumerate() {
                match p["type"].as_str() {
                    Some("text") => text.push_str(
                        string(&p["text"], &format!("{param}[{j}].text"))?.unwrap_or_default(),
                    ),
                    Some(kind @ ("image_url" | "input_audio" | "file")) => {
                        return Err(bad(
                            &format!("{param}[{j}]"),
                            format!(
                                "content parts of type {kind:?} are not supported yet: d8 routes text only"
                            ),
                        ));
                    }
                    other => {
                        return Err(bad(
                            &format!("{param}[{j}].type"),
                            format!("unknown content part type {other:?}"),
                        ));
                    }
                }
            }
            Ok(text)
        }
        _ => Err(bad(
            param,
            format!("{param} must be a string or an array of parts"),
        )),
    }
}

fn tools(v: &Value) -> Result<Vec<Tool>, ApiError> {
    let Some(list) = v.as_array() else {
        return match v {
            Value::Null => Ok(Vec::new()),
            _ => Err(bad("tools", "tools must be an array")),
        };
    };
    if list.len() > MAX_TOOLS {
        return Err(bad("tools", format!("at most {MAX_TOOLS} tools")));
    }
    list.iter()
        .enumerate()
        .map(|(i, t)| {
            let p = format!("tools[{i}]");
            if t["type"] != "function" {
                return Err(bad(
                    &format!("{p}.type"),
                    "only tools of type \"function\" are supported",
                ));
            }
            let f = &t["function"];
            let name = string(&f["name"], &format!("{p}.function.name"))?
                .filter(|n| !n.is_empty() && n.len() <= 64)
                .ok_or_else(|| {
                    bad(
                        &format!("{p}.function.name"),
                        "a tool needs a name of 1-64 characters",
                    )
                })?;
            Ok(Tool {
                name: name.to_owned(),
                description: string(&f["description"], &format!("{p}.function.description"))?
                    .map(str::to_owned),
                parameters: schema_text(&f["parameters"], &format!("{p}.function.parameters"))?,
                strict: boolean(&f["strict"], &format!("{p}.function.strict"))?,
            })
        })
        .collect()
}

fn tool_choice(v: &Value, tools: &[Tool]) -> Result<Option<ToolChoice>, ApiError> {
    let choice = match v {
        Value::Null => return Ok(None),
        Value::String(s) => match s.as_str() {
            "auto" => ToolChoice::Auto,
            "none" => ToolChoice::None,
            "required" => ToolChoice::Required,
            other => {
                return Err(bad(
                    "tool_choice",
                    format!("tool_choice {other:?} is not one of auto, none, required"),
                ));
            }
        },
        Value::Object(_) => {
            let name = string(&v["function"]["name"], "tool_choice.function.name")?
                .ok_or_else(|| bad("tool_choice", "tool_choice must name a function"))?;
            if !tools.iter().any(|t| t.name == name) {
                return Err(bad(
                    "tool_choice",
                    format!("tool_choice names {name:?}, which is not among the tools"),
                ));
            }
            ToolChoice::Function(name.to_owned())
        }
        _ => {
            return Err(bad(
                "tool_choice",
                "tool_choice must be a string or an object",
            ));
        }
    };
    if tools.is_empty() && choice != ToolChoice::None {
        return Err(bad("tool_choice", "tool_choice is only allowed with tools"));
    }
    Ok(Some(choice))
}

fn response_format(v: &Value) -> Result<ResponseFormat, ApiError> {
    if v.is_null() {
        return Ok(ResponseFormat::Text);
    }
    match v["type"].as_str() {
        Some("text") => Ok(ResponseFormat::Text),
        Some("json_object") => Ok(ResponseFormat::JsonObject),
        Some("json_schema") => {
            let s = &v["json_schema"];
            let name =
                string(&s["name"], "response_format.json_schema.name")?.ok_or_else(|| {
                    bad(
                        "response_format.json_schema.name",
                        "a JSON schema needs a name",
                    )
                })?;
            let schema = schema_text(&s["schema"], "response_format.json_schema.schema")?
                .ok_or_else(|| {
                    bad(
                        "response_format.json_schema.schema",
                        "json_schema needs a schema",
                    )
                })?;
            Ok(ResponseFormat::JsonSchema {
                name: name.to_owned(),
                schema,
                strict: boolean(&s["strict"], "response_format.json_schema.strict")?,
            })
        }
        other => Err(bad(
            "response_format",
            format!("response_format type {other:?} is not one of text, json_object, json_schema"),
        )),
    }
}

/// The top-level `d8` object.
pub fn knobs(v: &Value) -> Result<Knobs, ApiError> {
    if !v.is_null() && !v.is_object() {
        return Err(bad("d8", "d8 must be an object"));
    }
    let priority = match &v["priority"] {
        Value::Null => DEFAULT_PRIORITY,
        p => p
            .as_u64()
            .and_then(|p| u8::try_from(p).ok())
            .filter(|p| PRIORITY_RANGE.contains(p))
            .ok_or_else(|| bad("d8.priority", "d8.priority must be 1-10"))?,
    };
    let max_tier = string(&v["max_tier"], "d8.max_tier")?
        .map(str::parse::<Tier>)
        .transpose()
        .map_err(|e| bad("d8.max_tier", e.to_string()))?;
    let provider = string(&v["provider"], "d8.provider")?
        .filter(|p| !p.is_empty())
        .map(str::to_owned);
    let cache = match &v["cache"] {
        Value::Null => None,
        Value::Bool(b) => Some(*b),
        Value::String(s) if s == "on" => Some(true),
        Value::String(s) if s == "off" => Some(false),
        _ => {
            return Err(bad(
                "d8.cache",
                "d8.cache must be true, false, \"on\" or \"off\"",
            ));
        }
    };
    Ok(Knobs {
        priority,
        max_tier,
        provider,
        cache,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn param(body: Value) -> Option<String> {
        parse(&body).expect_err("refused").param
    }

    #[test]
    fn reads_a_full_request_and_ignores_unknown_fields() {
        let chat = parse(&json!({
            "model": "groq/llama", "stream": true, "stream_options": {"include_usage": true},
            "messages": [
                {"role": "developer", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Weather "}, {"type": "text", "text": "in Paris?"}], "name": "ann"},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "w", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "21C"}
            ],
            "max_completion_tokens": 50, "max_tokens": 9, "stop": "END", "seed": 4,
            "temperature": 0.5, "top_p": 1, "presence_penalty": -1, "frequency_penalty": 2,
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}, "strict": true}},
            "tools": [{"type": "function", "function": {"name": "w", "parameters": {"type": "object"}}}],
            "tool_choice": "required", "parallel_tool_calls": false,
            "d8": {"priority": 9, "max_tier": "free", "cache": "on"},
            "user": "u-1", "metadata": {"a": "b"}, "some_future_field": [1, 2]
        }))
        .expect("valid");
        assert_eq!(chat.model, "groq/llama");
        assert!(chat.stream && chat.include_usage);
        let r = &chat.request;
        assert_eq!(r.messages[0].role, "system");
        assert_eq!(r.messages[1].content, "Weather in Paris?");
        assert_eq!(r.messages[1].name.as_deref(), Some("ann"));
        assert_eq!(r.messages[2].tool_calls[0].id, "c1");
        assert_eq!(r.messages[3].tool_call_id.as_deref(), Some("c1"));
        assert_eq!(r.max_tokens, Some(50));
        assert_eq!(r.stop, ["END"]);
        assert_eq!(r.seed, Some(4));
        assert_eq!(r.tool_choice, Some(ToolChoice::Required));
        assert_eq!(r.parallel_tool_calls, Some(false));
        assert_eq!(
            r.tools[0].parameters.as_deref(),
            Some(r#"{"type":"object"}"#)
        );
        assert!(matches!(
            r.response_format,
            ResponseFormat::JsonSchema { .. }
        ));
        assert_eq!(
            chat.knobs,
            Knobs {
                priority: 9,
                max_tier: Some(Tier::Free),
                provider: None,
                cache: Some(true)
            }
        );
    }

    #[test]
    fn legacy_function_results_answer_the_latest_call() {
        let chat = parse(&json!({"model": "m", "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": null, "function_call": {"name": "f", "arguments": "{\"a\":1}"}},
            {"role": "function", "name": "f", "content": "ok"}
        ]}))
        .expect("valid");
        let m = &chat.request.messages;
        assert_eq!(m[1].tool_calls[0].id, "call_f");
        assert_eq!(m[2].tool_call_id.as_deref(), Some("call_f"));
    }

    #[test]
    fn refusals_name_the_param() {
        let ok = json!([{"role": "user", "content": "hi"}]);
        assert_eq!(param(json!({"messages": ok})).as_deref(), Some("model"));
        assert_eq!(param(json!({"model": "m"})).as_deref(), Some("messages"));
        assert_eq!(
            param(json!({"model": "m", "messages": [], })).as_deref(),
            Some("messages")
        );
        assert_eq!(
            param(json!({"model": "m", "messages": ok, "n": 2})).as_deref(),
            Some("n")
        );
        assert_eq!(
            param(json!({"model": "m", "messages": ok, "logprobs": true})).as_deref(),
            Some("logprobs")
        );
        assert_eq!(
            param(json!({"model": "m", "messages": ok, "temperature": 3})).as_deref(),
            Some("temperature")
        );
        assert_eq!(
            param(json!({"model": "m", "messages": ok, "stop": ["a","b","c","d","e"]})).as_deref(),
            Some("stop")
        );
        assert_eq!(
            param(json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x"}}]}]})).as_deref(),
            Some("messages[0].content[0]")
        );
        assert_eq!(
            param(json!({"model": "m", "messages": [{"role": "robot", "content": "x"}]}))
                .as_deref(),
            Some("messages[0].role")
        );
        assert_eq!(
            param(json!({"model": "m", "messages": [{"role": "tool", "content": "x"}]})).as_deref(),
            Some("messages[0].tool_call_id")
        );
        assert_eq!(
            param(json!({"model": "m", "messages": ok, "tool_choice": {"type": "function", "function": {"name": "nope"}},
                         "tools": [{"type": "function", "function": {"name": "f"}}]})).as_deref(),
            Some("tool_choice")
        );
        assert_eq!(
            param(json!({"model": "m", "messages": ok, "response_format": {"type": "yaml"}}))
                .as_deref(),
            Some("response_format")
        );
        assert_eq!(
            param(json!({"model": "m", "messages": ok, "d8": {"priority": 11}})).as_deref(),
            Some("d8.priority")
        );
        // `n: 1` and `logprobs: false` ask for nothing d8 lacks.
        assert!(parse(&json!({"model": "m", "messages": ok, "n": 1, "logprobs": false})).is_ok());
    }
}
