//! The cluster protocol: versioned messages and their framing (pure: no I/O).
//!
//! Every frame is a 4-byte big-endian length and a bincode (serde, standard
//! config) payload of at most [`MAX_FRAME`] bytes. Three stream kinds:
//!
//! - enrollment (ALPN `d8-enroll/1`, worker opens one bi stream):
//!   [`EnrollRequest`] → [`EnrollResponse`].
//! - control (ALPN `d8/1`, worker opens one bi stream): [`WorkerMsg::Hello`]
//!   first, answered by [`OrchMsg::Welcome`] or [`OrchMsg::Rejected`]; then
//!   heartbeats and drain from the worker.
//! - task (orchestrator opens one bi stream per attempt): [`TaskAssign`] →
//!   [`TaskReply::Chunk`]* → [`TaskReply::Done`].
//!
//! Compatibility rule: `WorkerMsg::Hello` stays variant 0 with `proto` as its
//! first field, and `OrchMsg::Rejected` stays variant 1, in every version, so
//! peers of different versions can always tell each other why they cannot talk
//! (see [`peek_hello_version`]).

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::logging::LogLine;
use crate::task::{Capabilities, Outcome, TaskId, TaskSpec};

/// Version of the message protocol spoken here. 2: chat requests carry stop
/// sequences and JSON mode; workers advertise offers (provider, tier,
/// models); assignments carry a route; results carry the worker's cooldowns.
/// 3: chats carry tools, tool calls and results, sampling controls and a
/// JSON schema; results carry tool calls, a finish reason, and usage only
/// when the vendor reported it. 4: workers forward their log lines.
pub const PROTOCOL_VERSION: u16 = 4;

/// Largest payload accepted or sent (8 MiB): bigger than any sane chat, small
/// enough that a hostile length prefix cannot exhaust a Pi's memory.
pub const MAX_FRAME: usize = 8 * 1024 * 1024;

/// Framing and decoding errors.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The length prefix exceeds [`MAX_FRAME`].
    #[error("frame of {0} bytes exceeds the {MAX_FRAME}-byte limit")]
    TooLarge(usize),
    /// The payload is not a valid message.
    #[error("undecodable frame: {0}")]
    Decode(String),
    /// A message could not be encoded (only on programming errors).
    #[error("unencodable message: {0}")]
    Encode(String),
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_FRAME>()
}

/// Encodes `msg` as one frame (length prefix included).
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, WireError> {
    let mut out = vec![0u8; 4];
    bincode::serde::encode_into_std_write(msg, &mut out, config())
        .map_err(|e| WireError::Encode(e.to_string()))?;
    let len = out.len() - 4;
    if len > MAX_FRAME {
        return Err(WireError::TooLarge(len));
    }
    // len <= MAX_FRAME < u32::MAX, so the cast is lossless.
    out[..4].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(out)
}

/// Validates a length prefix.
pub fn frame_len(prefix: [u8; 4]) -> Result<usize, WireError> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len > MAX_FRAME {
        return Err(WireError::TooLarge(len));
    }
    Ok(len)
}

/// Decodes one payload (without its prefix). Trailing bytes are an error.
pub fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, WireError> {
    let (msg, used) = bincode::serde::decode_from_slice(payload, config())
        .map_err(|e| WireError::Decode(e.to_string()))?;
    if used != payload.len() {
        return Err(WireError::Decode(format!(
            "{} trailing bytes",
            payload.len() - used
        )));
    }
    Ok(msg)
}

/// Reads the protocol version out of a `Hello` payload of *any* version,
/// even one this build cannot fully decode.
pub fn peek_hello_version(payload: &[u8]) -> Option<u16> {
    let ((variant, proto), _): ((u32, u16), usize) =
        bincode::serde::decode_from_slice(payload, config()).ok()?;
    (variant == 0).then_some(proto)
}

/// Worker → orchestrator on an enrollment stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum EnrollRequest {
    /// Ask for a certificate.
    Enroll {
        /// Sender's protocol version.
        proto: u16,
        /// The join token's secret.
        secret: String,
        /// PKCS#10 CSR, DER.
        csr_der: Vec<u8>,
        /// Preferred worker id (the orchestrator may pick another).
        wanted_id: String,
    },
}

/// Orchestrator → worker on an enrollment stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum EnrollResponse {
    /// Certificate issued.
    Enrolled {
        /// The id in the certificate.
        worker_id: String,
        /// Worker certificate, DER.
        cert_der: Vec<u8>,
        /// Cluster CA certificate, DER.
        ca_der: Vec<u8>,
    },
    /// Refused, with a reason for the operator.
    Refused {
        /// Why.
        reason: String,
    },
}

/// The first message on the control stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// Sender's protocol version. Must stay the first field.
    pub proto: u16,
    /// The worker's id (must match its certificate).
    pub worker_id: String,
    /// What it offers.
    pub caps: Capabilities,
}

/// Worker → orchestrator on the control stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum WorkerMsg {
    /// Must be first. Variant 0 forever.
    Hello(Hello),
    /// Liveness, load and the state of the worker's providers.
    Heartbeat {
        /// Tasks running now.
        active: u32,
        /// Providers cooling down or disabled (the others are ready).
        cooldowns: Vec<ProviderCooldown>,
    },
    /// Stop sending me tasks; I will finish what I have and leave.
    Drain,
    /// Log lines from this worker, oldest first.
    Logs {
        /// The lines (at most [`MAX_LOG_BATCH`] are kept; the rest count as dropped).
        lines: Vec<LogLine>,
        /// Lines this worker dropped since its last `Logs` (rate limit, buffer).
        dropped: u64,
    },
}

/// Most log lines in one [`WorkerMsg::Logs`].
pub const MAX_LOG_BATCH: usize = 100;

pub use crate::task::{ProviderCooldown, Route};

/// Orchestrator → worker on the control stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum OrchMsg {
    /// Accepted.
    Welcome {
        /// Version both sides now speak.
        proto: u16,
        /// How often to heartbeat.
        heartbeat_ms: u32,
    },
    /// Not accepted. Variant 1 forever.
    Rejected {
        /// Why, for the operator.
        reason: String,
        /// Version the orchestrator speaks.
        supported: u16,
    },
}

/// Orchestrator → worker: the first frame of a task stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskAssign {
    /// The task.
    pub id: TaskId,
    /// The attempt; echoed implicitly by answering on this stream.
    pub attempt: u32,
    /// What to run.
    pub spec: TaskSpec,
    /// Which provider to use.
    pub route: Route,
}

/// The sending side of [`TaskAssign`]: same encoding, borrows the spec so
/// the orchestrator does not copy every task it dispatches.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct TaskAssignRef<'a> {
    /// The task.
    pub id: TaskId,
    /// The attempt.
    pub attempt: u32,
    /// What to run.
    pub spec: &'a TaskSpec,
    /// Which provider to use.
    pub route: &'a Route,
}

/// Worker → orchestrator on a task stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum TaskReply {
    /// A piece of streamed output.
    Chunk {
        /// The text delta.
        text: String,
    },
    /// The final outcome; the stream ends after it.
    Done {
        /// What happened.
        outcome: Outcome,
        /// The worker's providers that are cooling down now, so the orchestrator
        /// routes the next attempt with what this one learned.
        cooldowns: Vec<ProviderCooldown>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::{
        ChatMessage, ChatRequest, ErrorKind, FinishReason, ResponseFormat, TaskError, TaskOutput,
        Tool, ToolCall, ToolChoice, Usage,
    };
    use proptest::prelude::*;

    fn roundtrip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(msg: T) {
        let frame = encode(&msg).expect("encode");
        let len = frame_len(frame[..4].try_into().expect("prefix")).expect("len");
        assert_eq!(len, frame.len() - 4);
        assert_eq!(decode::<T>(&frame[4..]).expect("decode"), msg);
    }

    fn route() -> Route {
        Route {
            prefer: "groq".into(),
            max_tier: crate::task::Tier::Free,
        }
    }

    fn spec() -> TaskSpec {
        TaskSpec {
            task_type: "agent_action".into(),
            priority: 7,
            request: ChatRequest {
                messages: vec![
                    ChatMessage::new("user", "héllo"),
                    ChatMessage {
                        tool_calls: vec![ToolCall {
                            id: "c1".into(),
                            name: "f".into(),
                            arguments: "{}".into(),
                        }],
                        ..ChatMessage::new("assistant", "")
                    },
                    ChatMessage {
                        tool_call_id: Some("c1".into()),
                        ..ChatMessage::new("tool", "42")
                    },
                ],
                model: Some("m".into()),
                temperature: Some(0.5),
                top_p: Some(0.9),
                stop: vec!["\n\n".into()],
                seed: Some(-7),
                response_format: ResponseFormat::JsonSchema {
                    name: "s".into(),
                    schema: "{\"type\":\"object\"}".into(),
                    strict: Some(true),
                },
                tools: vec![Tool {
                    name: "f".into(),
                    description: Some("does f".into()),
                    parameters: Some("{}".into()),
                    strict: None,
                }],
                tool_choice: Some(ToolChoice::Function("f".into())),
                parallel_tool_calls: Some(false),
                stream: true,
                ..ChatRequest::default()
            },
            max_attempts: 3,
            attempt_timeout_ms: 1000,
            deadline: None,
            agent_id: Some("a".into()),
            provider: Some("groq".into()),
            max_tier: Some(crate::task::Tier::Free),
        }
    }

    #[test]
    fn every_message_round_trips() {
        roundtrip(EnrollRequest::Enroll {
            proto: 1,
            secret: "s".into(),
            csr_der: vec![1, 2, 3],
            wanted_id: "pc".into(),
        });
        roundtrip(EnrollResponse::Refused {
            reason: "no".into(),
        });
        roundtrip(WorkerMsg::Hello(Hello {
            proto: 1,
            worker_id: "pc".into(),
            caps: Capabilities {
                worker_type: "echo".into(),
                offers: vec![crate::task::Offer {
                    provider: "groq".into(),
                    tier: crate::task::Tier::Free,
                    models: vec!["llama".into()],
                    reasoning_model: None,
                    embedding_models: vec!["embed-1".into()],
                    prices: vec![],
                }],
                slots: 4,
                ..Default::default()
            },
        }));
        roundtrip(WorkerMsg::Heartbeat {
            active: 3,
            cooldowns: vec![ProviderCooldown {
                provider: "groq".into(),
                model: None,
                remaining_ms: 1_500,
                disabled: false,
                reason: crate::task::RestReason::default(),
            }],
        });
        roundtrip(OrchMsg::Rejected {
            reason: "old".into(),
            supported: 1,
        });
        roundtrip(TaskAssign {
            id: TaskId(42),
            attempt: 2,
            spec: spec(),
            route: route(),
        });
        roundtrip(TaskReply::Done {
            outcome: Outcome::Ok(TaskOutput {
                content: "x".into(),
                tool_calls: vec![ToolCall {
                    id: "call_1".into(),
                    name: "f".into(),
                    arguments: "{\"a\":1}".into(),
                }],
                finish_reason: FinishReason::ToolCalls,
                provider: "echo".into(),
                model: "echo".into(),
                usage: Some(Usage::new(1, 2)),
                embeddings: vec![vec![0.5, -1.25]],
            }),
            cooldowns: vec![],
        });
        roundtrip(TaskReply::Done {
            outcome: Outcome::Err(TaskError {
                kind: ErrorKind::RateLimited { retry_after_ms: 5 },
                message: "slow down".into(),
            }),
            cooldowns: vec![ProviderCooldown {
                provider: "groq".into(),
                model: Some("llama".into()),
                remaining_ms: 5,
                disabled: false,
                reason: crate::task::RestReason::default(),
            }],
        });
    }

    #[test]
    fn borrowed_assign_encodes_like_the_owned_one() {
        let owned = TaskAssign {
            id: TaskId(7),
            attempt: 3,
            spec: spec(),
            route: route(),
        };
        let borrowed = TaskAssignRef {
            id: TaskId(7),
            attempt: 3,
            spec: &owned.spec,
            route: &owned.route,
        };
        assert_eq!(
            encode(&owned).expect("owned"),
            encode(&borrowed).expect("borrowed")
        );
    }

    #[test]
    fn version_is_readable_from_any_hello() {
        let frame = encode(&WorkerMsg::Hello(Hello {
            proto: 9,
            worker_id: "pc".into(),
            caps: Capabilities::default(),
        }))
        .expect("encode");
        assert_eq!(peek_hello_version(&frame[4..]), Some(9));
        // A future Hello with an entirely different tail still yields its version.
        let future = encode(&(0u32, 77u16, vec!["new", "fields"], 3.5f64)).expect("encode");
        assert_eq!(peek_hello_version(&future[4..]), Some(77));
        assert!(decode::<WorkerMsg>(&future[4..]).is_err());
        let hb = encode(&WorkerMsg::Heartbeat {
            active: 1,
            cooldowns: vec![],
        })
        .expect("encode");
        assert_eq!(peek_hello_version(&hb[4..]), None);
    }

    #[test]
    fn log_batches_roundtrip() {
        use crate::logging::Level;
        roundtrip(WorkerMsg::Logs {
            lines: vec![LogLine::new(
                1_764_000_000_000,
                Level::Warn,
                "d8::node::worker",
                "rate limited: ré",
                vec![("provider".into(), "groq".into())],
            )],
            dropped: 7,
        });
    }

    #[test]
    fn oversized_prefix_is_refused() {
        assert!(matches!(frame_len([0xff; 4]), Err(WireError::TooLarge(_))));
        assert!(frame_len((MAX_FRAME as u32).to_be_bytes()).is_ok());
    }

    #[test]
    fn trailing_bytes_are_an_error() {
        let mut frame = encode(&WorkerMsg::Drain).expect("encode");
        frame.push(0);
        assert!(decode::<WorkerMsg>(&frame[4..]).is_err());
    }

    proptest! {
        /// Random bytes never panic the decoder, whatever type is expected.
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode::<WorkerMsg>(&bytes);
            let _ = decode::<OrchMsg>(&bytes);
            let _ = decode::<TaskAssign>(&bytes);
            let _ = decode::<TaskReply>(&bytes);
            let _ = decode::<EnrollRequest>(&bytes);
            let _ = decode::<EnrollResponse>(&bytes);
            let _ = peek_hello_version(&bytes);
        }

        /// Flipping any byte of a valid frame yields an error or another valid
        /// message, never a panic.
        #[test]
        fn mutated_frames_never_panic(pos in any::<usize>(), val in any::<u8>()) {
            let mut frame = encode(&TaskAssign { id: TaskId(1), attempt: 1, spec: spec(), route: route() }).expect("encode");
            let i = 4 + pos % (frame.len() - 4);
            frame[i] = val;
            let _ = decode::<TaskAssign>(&frame[4..]);
        }

        /// Length prefixes claiming huge sizes are refused before allocation.
        #[test]
        fn huge_lengths_refused(len in (MAX_FRAME as u32 + 1)..=u32::MAX) {
            prop_assert!(frame_len(len.to_be_bytes()).is_err());
        }
    }
}
