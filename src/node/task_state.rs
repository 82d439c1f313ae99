//! A task's state as clients see it: what `GET /api/tasks/{id}` shows, what
//! waiters receive and what events carry. A leaf module, so that everything
//! in `node` may use it without importing the actor.

use serde::Serialize;

use crate::task::{FinishedTask, TaskId, TaskOutput, WorkerId};

/// A task's state as clients see it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskState {
    /// Id.
    pub task_id: TaskId,
    /// pending | assigned | completed | failed | cancelled.
    pub status: &'static str,
    /// Task type.
    #[serde(rename = "type")]
    pub task_type: String,
    /// Priority.
    pub priority: u8,
    /// Output when completed.
    pub result: Option<TaskOutput>,
    /// Failure reason when failed.
    pub error: Option<String>,
    /// Worker of the current or final attempt.
    pub worker_id: Option<WorkerId>,
    /// Agent it was submitted for.
    pub agent_id: Option<String>,
    /// Attempts dispatched.
    pub attempts: u32,
    /// Submission time, ms since the Unix epoch.
    pub created_at: u64,
    /// Completion time, ms since the Unix epoch.
    pub completed_at: Option<u64>,
}

impl From<&FinishedTask> for TaskState {
    fn from(f: &FinishedTask) -> Self {
        TaskState {
            task_id: f.id,
            status: f.status.as_str(),
            task_type: f.task_type.clone(),
            priority: f.priority,
            result: f.output.clone(),
            error: f.error.clone(),
            worker_id: f.worker.clone(),
            agent_id: f.agent_id.clone(),
            attempts: f.attempts,
            created_at: f.created_at.0,
            completed_at: Some(f.completed_at.0),
        }
    }
}
