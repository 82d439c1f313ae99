//! One module per area; shared helpers in `harness`.

mod cache;
mod cluster;
mod dashboard;
mod dialects;
mod enrollment;
mod fakes;
mod harness;
mod http_api;
mod installer;
mod layering;
mod logs;
mod loopback;
mod man;
#[cfg(target_os = "linux")]
mod netns;
mod openai;
mod openai_sdk;
mod processes;
mod streaming;
mod usage;
