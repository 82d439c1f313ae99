//! Streamed output of running tasks, on the orchestrator.
//!
//! Workers send `Chunk` frames for tasks submitted with `stream: true`. The
//! attempt's runner publishes them here without going through the scheduler
//! actor (tokens are many; the actor's queue is for decisions). Each task
//! keeps the text of its current attempt so far, so a subscriber that comes
//! late, or falls behind, starts from the whole text instead of missing the
//! beginning. The entry goes when the task finishes; its subscribers then see
//! the channel close and read the final state.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{broadcast, oneshot};

use super::task_state::TaskState;
use crate::task::TaskId;

/// Chunks a slow subscriber may fall behind before it is resynchronised.
const BACKLOG: usize = 256;

/// Subscribers of one task at once. Each may hold a copy of the task's text
/// (up to one frame) in its connection's write buffer when it does not read.
pub(crate) const MAX_SUBSCRIBERS_PER_TASK: usize = 8;
/// Subscribers of all tasks at once.
pub(crate) const MAX_SUBSCRIBERS: usize = 64;

/// Too many subscribers already: the new one is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "too many live-output subscribers (at most {MAX_SUBSCRIBERS_PER_TASK} per task and {MAX_SUBSCRIBERS} in all); poll GET /api/tasks/{{id}}?wait= instead, or retry later"
)]
pub(crate) struct TooManySubscribers;

/// Text kept per task: a result larger than one frame could not arrive
/// anyway, so chunks beyond it are dropped (the final result still comes
/// with `done`) and a worker that streams without end cannot exhaust memory.
const MAX_TEXT: usize = crate::wire::MAX_FRAME;

/// What a subscriber hears next.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Next {
    /// A delta.
    Chunk(Chunk),
    /// The whole text so far, replacing what the subscriber has.
    Reset(Chunk),
    /// The task finished; no more output.
    Closed,
}

/// One delta of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Chunk {
    /// The attempt that produced it: a new number means the text so far was
    /// abandoned (the previous attempt failed) and starts again.
    pub attempt: u32,
    /// The text delta.
    pub text: Arc<str>,
}

struct Entry {
    attempt: u32,
    text: String,
    tx: broadcast::Sender<Chunk>,
}

/// Live task output, shared by the actor's attempt runners and the HTTP API.
#[derive(Clone, Default)]
pub(crate) struct LiveOutput(Arc<Mutex<HashMap<TaskId, Entry>>>);

impl LiveOutput {
    fn map(&self) -> MutexGuard<'_, HashMap<TaskId, Entry>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn entry(map: &mut HashMap<TaskId, Entry>, id: TaskId) -> &mut Entry {
        map.entry(id).or_insert_with(|| Entry {
            attempt: 0,
            text: String::new(),
            tx: broadcast::channel(BACKLOG).0,
        })
    }

    /// Makes room for a streaming task's output; the actor calls it when it
    /// dispatches one, so that only live tasks ever have an entry.
    pub(crate) fn open(&self, id: TaskId) {
        Self::entry(&mut self.map(), id);
    }

    /// Records and forwards a chunk of attempt `attempt` of task `id`.
    /// Chunks of an older attempt than the current one are dropped, and so
    /// is any chunk of a task that is not open (it finished while the chunk
    /// was on its way: an entry made now would never be removed).
    pub(crate) fn publish(&self, id: TaskId, attempt: u32, text: &str) {
        let mut map = self.map();
        let Some(e) = map.get_mut(&id) else {
            return;
        };
        if attempt < e.attempt {
            return;
        }
        if attempt > e.attempt {
            e.attempt = attempt;
            e.text.clear();
        }
        if e.text.len().saturating_add(text.len()) > MAX_TEXT {
            return;
        }
        e.text.push_str(text);
        let _ = e.tx.send(Chunk {
            attempt,
            text: Arc::from(text),
        });
    }

    /// Subscribes to task `id`: the text of its current attempt so far (if
    /// any) and the chunks that follow.
    pub(crate) fn subscribe(
        &self,
        id: TaskId,
    ) -> Result<(Option<Chunk>, broadcast::Receiver<Chunk>), TooManySubscribers> {
        let mut map = self.map();
        let total: usize = map.values().map(|e| e.tx.receiver_count()).sum();
        let mine = map.get(&id).map_or(0, |e| e.tx.receiver_count());
        if total >= MAX_SUBSCRIBERS || mine >= MAX_SUBSCRIBERS_PER_TASK {
            return Err(TooManySubscribers);
        }
        let e = Self::entry(&mut map, id);
        let so_far = (e.attempt > 0).then(|| Chunk {
            attempt: e.attempt,
            text: Arc::from(e.text.as_str()),
        });
        Ok((so_far, e.tx.subscribe()))
    }

    /// The next thing a subscriber of task `id` must hear. A subscriber that
    /// fell more than [`BACKLOG`] chunks behind gets the whole text instead
    /// (taken with a new receiver under one lock, so no chunk is lost or
    /// repeated).
    pub(crate) async fn next(&self, id: TaskId, rx: &mut broadcast::Receiver<Chunk>) -> Next {
        loop {
            match rx.recv().await {
                Ok(c) => return Next::Chunk(c),
                Err(broadcast::error::RecvError::Closed) => return Next::Closed,
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    let map = self.map();
                    let Some(e) = map.get(&id) else {
                        return Next::Closed;
                    };
                    *rx = e.tx.subscribe();
                    if e.attempt > 0 {
                        return Next::Reset(Chunk {
                            attempt: e.attempt,
                            text: Arc::from(e.text.as_str()),
                        });
                    }
                }
            }
        }
    }

    /// The task finished: drop its output; subscribers see the end.
    pub(crate) fn finish(&self, id: TaskId) {
        self.map().remove(&id);
    }

    /// A subscriber gave up on a task that never streamed: forget it unless
    /// someone else still listens.
    pub(crate) fn release(&self, id: TaskId) {
        let mut map = self.map();
        if map
            .get(&id)
            .is_some_and(|e| e.attempt == 0 && e.tx.receiver_count() == 0)
        {
            map.remove(&id);
        }
    }

    /// Tasks with an entry (for tests and leak checks).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.map().len()
    }
}

/// What a [`TaskFollower`] hears next.
#[derive(Debug)]
pub(crate) enum Followed {
    /// A delta (or, first, the attempt's text so far).
    Chunk(Chunk),
    /// The whole text so far, replacing what the follower has.
    Reset(Chunk),
    /// The task's end: its final state, or `None` when nobody will say
    /// (no end to wait for, or the scheduler stopped): look it up.
    Done(Option<Box<TaskState>>),
}

/// Follows one task: its live output, then its end (both HTTP streams use
/// it). Dropping it releases the subscription.
pub(crate) struct TaskFollower {
    id: TaskId,
    output: LiveOutput,
    rx: Option<broadcast::Receiver<Chunk>>,
    first: Option<Chunk>,
    done: Option<oneshot::Receiver<TaskState>>,
}

impl TaskFollower {
    /// Subscribes to task `id`'s output. Subscribe before asking for the
    /// task's state, so nothing produced in between is missed.
    pub(crate) fn subscribe(output: &LiveOutput, id: TaskId) -> Result<Self, TooManySubscribers> {
        let (first, rx) = output.subscribe(id)?;
        Ok(TaskFollower {
            id,
            output: output.clone(),
            rx: Some(rx),
            first,
            done: None,
        })
    }

    /// The receiver that fires with the task's final state.
    pub(crate) fn until(&mut self, done: oneshot::Receiver<TaskState>) {
        self.done = Some(done);
    }

    /// The next chunk, or the end. Text comes before the end: what was
    /// produced before it is heard first. The end may come while the
    /// output stays silent (no text, or a subscription made after the
    /// output was dropped).
    pub(crate) async fn next(&mut self) -> Followed {
        if let Some(c) = self.first.take() {
            return Followed::Chunk(c);
        }
        loop {
            let Some(done) = self.done.as_mut() else {
                return Followed::Done(None);
            };
            let Some(rx) = self.rx.as_mut() else {
                let state = done.await.ok().map(Box::new);
                self.done = None;
                return Followed::Done(state);
            };
            tokio::select! {
                biased;
                n = self.output.next(self.id, rx) => match n {
                    Next::Chunk(c) => return Followed::Chunk(c),
                    Next::Reset(c) => return Followed::Reset(c),
                    Next::Closed => self.rx = None,
                },
                state = done => {
                    self.done = None;
                    return Followed::Done(state.ok().map(Box::new));
                }
            }
        }
    }
}

impl Drop for TaskFollower {
    fn drop(&mut self) {
        // Unsubscribe first, so the entry counts no listener.
        self.rx = None;
        self.output.release(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn late_subscribers_get_the_text_so_far_and_retries_start_over() {
        let s = LiveOutput::default();
        let id = TaskId(1);
        s.open(id);
        s.publish(id, 1, "Hel");
        let (so_far, mut rx) = s.subscribe(id).expect("room");
        assert_eq!(
            so_far,
            Some(Chunk {
                attempt: 1,
                text: Arc::from("Hel")
            })
        );
        s.publish(id, 1, "lo");
        assert_eq!(&*rx.recv().await.expect("chunk").text, "lo");
        // Attempt 2 replaces attempt 1's text; stray attempt-1 chunks drop.
        s.publish(id, 2, "Bon");
        s.publish(id, 1, "stale");
        s.publish(id, 2, "jour");
        assert_eq!(rx.recv().await.expect("chunk").attempt, 2);
        assert_eq!(&*rx.recv().await.expect("chunk").text, "jour");
        s.finish(id);
        assert!(rx.recv().await.is_err(), "closed at the end");
        assert_eq!(s.len(), 0);
        // A chunk still on its way after the end leaves nothing behind.
        s.publish(id, 2, "late");
        assert_eq!(s.len(), 0);
    }

    #[test]
    fn release_forgets_only_silent_unwatched_tasks() {
        let s = LiveOutput::default();
        let (_, rx) = s.subscribe(TaskId(7)).expect("room");
        s.release(TaskId(7));
        assert_eq!(s.len(), 1, "still watched");
        drop(rx);
        s.release(TaskId(7));
        assert_eq!(s.len(), 0);
        s.open(TaskId(8));
        s.publish(TaskId(8), 1, "x");
        s.release(TaskId(8));
        assert_eq!(s.len(), 1, "streaming tasks stay until they finish");
    }

    #[tokio::test]
    async fn a_subscriber_that_falls_behind_gets_the_whole_text_once() {
        let s = LiveOutput::default();
        let id = TaskId(3);
        s.open(id);
        let (_, mut rx) = s.subscribe(id).expect("room");
        let mut all = String::new();
        for i in 0..BACKLOG + 10 {
            let piece = format!("{i},");
            s.publish(id, 1, &piece);
            all.push_str(&piece);
        }
        assert_eq!(
            s.next(id, &mut rx).await,
            Next::Reset(Chunk {
                attempt: 1,
                text: Arc::from(all.as_str())
            })
        );
        // Caught up: the next chunk is the next one, nothing repeated.
        s.publish(id, 1, "end");
        assert_eq!(
            s.next(id, &mut rx).await,
            Next::Chunk(Chunk {
                attempt: 1,
                text: Arc::from("end")
            })
        );
        s.finish(id);
        assert_eq!(s.next(id, &mut rx).await, Next::Closed);
    }

    #[test]
    fn endless_output_is_capped() {
        let s = LiveOutput::default();
        let id = TaskId(4);
        s.open(id);
        let big = "x".repeat(MAX_TEXT / 2 + 1);
        s.publish(id, 1, &big);
        s.publish(id, 1, &big);
        let (so_far, _) = s.subscribe(id).expect("room");
        assert_eq!(so_far.map(|c| c.text.len()), Some(big.len()));
    }

    #[test]
    fn subscribers_are_bounded_per_task_and_in_all() {
        // Before: 40 subscribers that never read an 8 MiB stream added
        // 420 MB to the orchestrator.
        let s = LiveOutput::default();
        let mut held = Vec::new();
        for _ in 0..MAX_SUBSCRIBERS_PER_TASK {
            held.push(s.subscribe(TaskId(1)).expect("room"));
        }
        assert_eq!(s.subscribe(TaskId(1)).err(), Some(TooManySubscribers));
        held.pop();
        assert!(s.subscribe(TaskId(1)).is_ok(), "a place came back");
        let mut others = Vec::new();
        let mut id = 2;
        while held.len() + others.len() < MAX_SUBSCRIBERS - 1 {
            others.push(s.subscribe(TaskId(id)).expect("room"));
            id += 1;
        }
        // 63 held now; the 64th fits, the 65th does not.
        let _last = s.subscribe(TaskId(999)).expect("the 64th");
        assert_eq!(
            s.subscribe(TaskId(1000)).err(),
            Some(TooManySubscribers),
            "64 in all"
        );
    }
}
