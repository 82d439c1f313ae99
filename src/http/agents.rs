//! `/api/agents`: the original project's agents. An agent is a stored
//! system prompt (plus model, temperature, task type); `act` turns one action
//! and its input into a task with that prompt.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::response::IntoResponse;
use serde_json::{Value, json};

use super::body::{ActRequest, AgentRequest, Segment, check_agent_id, parse};
use super::tasks::submit_one;
use super::{ApiError, ApiResult, AppState};
use crate::store::AgentDef;

fn agent_json(id: &str, a: &AgentDef) -> Value {
    json!({
        "agent_id": id,
        "system_prompt": a.system_prompt,
        "model": a.model,
        "temperature": a.temperature,
        "task_type": a.task_type.as_deref().unwrap_or("agent_action"),
        "cache_ttl_secs": a.cache_ttl_secs,
    })
}

pub(super) async fn act(
    State(cluster): AppState,
    Segment(agent_id): Segment,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let req: ActRequest = parse(body, cluster.config().max_body_bytes)?;
    let agent = cluster.agent(&agent_id);
    let ttl = agent
        .as_ref()
        .and_then(|a| a.cache_ttl_secs)
        .map(|s| s.saturating_mul(1_000));
    let spec = req.into_spec(agent_id, agent, cluster.task_defaults())?;
    submit_one(&cluster, spec, ttl).await
}

pub(super) async fn put(
    State(cluster): AppState,
    Segment(agent_id): Segment,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let req: AgentRequest = parse(body, cluster.config().max_body_bytes)?;
    check_agent_id(&agent_id)?;
    let def = req.into_def()?;
    cluster.put_agent(&agent_id, def.clone()).await?;
    Ok(Json(agent_json(&agent_id, &def)).into_response())
}

pub(super) async fn get(State(cluster): AppState, Segment(agent_id): Segment) -> ApiResult {
    let a = cluster.agent(&agent_id).ok_or_else(|| {
        ApiError::not_found(format!(
            "no agent {agent_id:?} (it would get the default prompt)"
        ))
    })?;
    Ok(Json(agent_json(&agent_id, &a)).into_response())
}
