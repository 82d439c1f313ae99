//! "Start at login": the entry is written by d8's own module (see
//! `d8::service::login`), the one place where d8 touches an OS's start-up
//! machinery, shared with `d8 service`.

pub use d8::service::login::{BACKGROUND_FLAG, LABEL, enabled, set};
