//! JSON pieces several dialects build the same way, under their own names.

use serde_json::{Map, Value, json};

use crate::task::{ChatRequest, EmbedRequest};

/// A JSON text the HTTP layer has already validated, as a value (`{}` if it
/// is not JSON after all: a vendor then says what is wrong with it).
pub fn json_text(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| json!({}))
}

/// The sampling controls a request sets, under the vendor's `names` for
/// temperature, top_p, max_tokens, seed, presence_penalty and
/// frequency_penalty, in that order. Unset controls are left out (the
/// vendor's defaults apply).
pub fn sampling(req: &ChatRequest, names: [&str; 6]) -> Map<String, Value> {
    let values = [
        req.temperature.map(|v| json!(v)),
        req.top_p.map(|v| json!(v)),
        req.max_tokens.map(|v| json!(v)),
        req.seed.map(|v| json!(v)),
        req.presence_penalty.map(|v| json!(v)),
        req.frequency_penalty.map(|v| json!(v)),
    ];
    names
        .into_iter()
        .zip(values)
        .filter_map(|(name, v)| Some((name.to_owned(), v?)))
        .collect()
}

/// What an embeddings call needs: the texts (and dimensions), and the model
/// (the one asked for, else the provider's first embedding model).
pub fn embedding_job(req: &ChatRequest, models: &[String]) -> (EmbedRequest, String) {
    let model = req
        .model
        .clone()
        .or_else(|| models.first().cloned())
        .unwrap_or_default();
    (req.embed.clone().unwrap_or_default(), model)
}
