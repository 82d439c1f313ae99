//! `POST /v1/embeddings`: vectors for texts, from the workers' embedding
//! models (OpenAI-compatible `/embeddings`, Gemini `batchEmbedContents`,
//! Ollama `/api/embed`, echo's deterministic vectors).
//!
//! Request (OpenAI's reference): `model` (an embedding model some worker
//! offers, or `<provider>/<model>`), `input` as a string or an array of
//! strings (token arrays are refused: d8 does not know each model's
//! tokenizer), `encoding_format` `float` or `base64` (the Python SDK's
//! default: little-endian `f32`s, base64), `dimensions`; the top-level `d8`
//! object as for chats. Unknown fields are ignored.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::{Value, json};

use super::{
    Cached, cache_ttl_ms, cached, check_resting, finished_output, follow_to_end, request,
    resolve_for, set_cache_header, set_request_id, shaping, submit,
};
use crate::http::body::parse;
use crate::http::{ApiError, AppState};
use crate::node::{Cluster, cache};
use crate::task::{ChatRequest, EmbedRequest, TaskOutput};

/// Most texts in one request (OpenAI's limit).
const MAX_INPUTS: usize = 2_048;

fn bad(param: &str, message: impl Into<String>) -> ApiError {
    ApiError::bad_request("invalid_request", message).with_param(param)
}

/// The checked request.
struct Embeddings {
    model: String,
    input: Vec<String>,
    base64: bool,
    dimensions: Option<u32>,
    knobs: request::Knobs,
}

fn read(body: &Value) -> Result<Embeddings, ApiError> {
    if !body.is_object() {
        return Err(bad("", "the body must be a JSON object"));
    }
    let model = request::model(&body["model"])?;
    let tokens = || {
        bad(
            "input",
            "token arrays are not supported: send the text (d8 routes to models whose tokenizers it does not know)",
        )
    };
    let input = match &body["input"] {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) if !items.is_empty() => {
            if items.len() > MAX_INPUTS {
                return Err(bad(
                    "input",
                    format!("at most {MAX_INPUTS} texts in one request"),
                ));
            }
            items
                .iter()
                .map(|i| match i {
                    Value::String(s) => Ok(s.clone()),
                    Value::Number(_) | Value::Array(_) => Err(tokens()),
                    _ => Err(bad(
                        "input",
                        "input must be a string or an array of strings",
                    )),
                })
                .collect::<Result<Vec<_>, _>>()?
        }
        Value::Array(_) => return Err(bad("input", "input must not be empty")),
        Value::Null => return Err(bad("input", "input is required")),
        _ => {
            return Err(bad(
                "input",
                "input must be a string or an array of strings",
            ));
        }
    };
    if input.iter().any(String::is_empty) {
        return Err(bad("input", "input texts must not be empty"));
    }
    let base64 = match body["encoding_format"].as_str() {
        None if body["encoding_format"].is_null() => false,
        Some("float") => false,
        Some("base64") => true,
        _ => {
            return Err(bad(
                "encoding_format",
                "encoding_format must be \"float\" or \"base64\"",
            ));
        }
    };
    let dimensions = match &body["dimensions"] {
        Value::Null => None,
        v => Some(
            v.as_u64()
                .filter(|d| (1..=65_536).contains(d))
                .and_then(|d| u32::try_from(d).ok())
                .ok_or_else(|| bad("dimensions", "dimensions must be a positive integer"))?,
        ),
    };
    Ok(Embeddings {
        model,
        input,
        base64,
        dimensions,
        knobs: request::knobs(&body["d8"])?,
    })
}

/// A vector as the SDKs' `base64` format: its `f32`s, little-endian.
fn encode(v: &[f32]) -> String {
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// `POST /v1/embeddings`.
pub(in crate::http) async fn embeddings(
    State(cluster): AppState,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match run(cluster, &headers, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn run(
    cluster: Arc<Cluster>,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body: Value = parse(body, cluster.config().max_body_bytes)?;
    let e = read(&body)?;
    let workers = cluster.live_workers().await?;
    let target = resolve_for(&e.model, &e.knobs, &cluster.models_of(&workers), true)?;
    // The encoding is only how the same vectors travel.
    let key = cache::key("embeddings", &shaping(&body, &["user", "encoding_format"]));
    let lead = match cached(&cluster, headers, &e.knobs, key).await {
        Cached::Hit(out) => {
            let mut resp = answer(&e, &out);
            set_cache_header(&mut resp, "hit");
            return Ok(resp);
        }
        Cached::Miss(lead) => Some(lead),
        Cached::Bypass => None,
    };
    check_resting(&workers, &target, &e.model)?;
    let req = ChatRequest {
        model: target.model.clone(),
        embed: Some(EmbedRequest {
            input: e.input.clone(),
            dimensions: e.dimensions,
        }),
        ..ChatRequest::default()
    };
    let sub = submit(&cluster, req, e.knobs.priority, target).await?;
    let id = sub.id();
    let state = follow_to_end(sub).await?;
    let out = finished_output(&state)?;
    let label = if lead.is_some() { "miss" } else { "bypass" };
    if let Some(lead) = lead {
        lead.finish(crate::node::now_millis(), cache_ttl_ms(&cluster), out)
            .await;
    }
    let mut resp = answer(&e, out);
    set_request_id(&mut resp, id);
    set_cache_header(&mut resp, label);
    Ok(resp)
}

/// The OpenAI answer for `out`.
fn answer(e: &Embeddings, out: &TaskOutput) -> Response {
    let data: Vec<Value> = out
        .embeddings
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let embedding = if e.base64 { json!(encode(v)) } else { json!(v) };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    let usage = out.usage.map_or(
        Value::Null,
        |u| json!({"prompt_tokens": u.prompt_tokens, "total_tokens": u.prompt_tokens}),
    );
    Json(json!({"object": "list", "data": data, "model": out.model, "usage": usage}))
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_inputs_and_refuses_token_arrays() {
        let e = read(
            &json!({"model": "m", "input": "one", "encoding_format": "base64", "dimensions": 4,
                             "user": "u"}),
        )
        .expect("valid");
        assert_eq!((e.input.len(), e.base64, e.dimensions), (1, true, Some(4)));
        let param = |b: Value| read(&b).err().and_then(|e| e.param);
        assert_eq!(
            param(json!({"model": "m", "input": [1, 2, 3]})).as_deref(),
            Some("input")
        );
        assert_eq!(
            param(json!({"model": "m", "input": [[1, 2]]})).as_deref(),
            Some("input")
        );
        assert_eq!(
            param(json!({"model": "m", "input": []})).as_deref(),
            Some("input")
        );
        assert_eq!(
            param(json!({"model": "m", "input": [""]})).as_deref(),
            Some("input")
        );
        assert_eq!(param(json!({"model": "m"})).as_deref(), Some("input"));
        assert_eq!(param(json!({"input": "x"})).as_deref(), Some("model"));
        assert_eq!(
            param(json!({"model": "m", "input": "x", "encoding_format": "hex"})).as_deref(),
            Some("encoding_format")
        );
    }

    #[test]
    fn base64_is_little_endian_f32() {
        // 1.0f32 = 0x3f800000, little-endian 00 00 80 3f.
        assert_eq!(encode(&[1.0]), "AACAPw==");
    }
}
