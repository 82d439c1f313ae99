//! d8's desktop app: see the clusters on this LAN and make this computer a
//! worker with one button, without a terminal.
//!
//! The app never runs cluster code itself: it supervises the same `d8`
//! binary people run by hand (`d8 join` for "Start worker on this computer",
//! `d8 serve` for "Start a cluster here", `d8 join --check-keys` for "Test"),
//! and reads what those processes tell their machine: the worker's
//! `status.json`, the orchestrator's data dir, its HTTP API.
//!
//! Who owns what:
//! - [`app::App`]: the window. Everything it shows is read each frame from
//!   the parts below; nothing it draws blocks (slow work runs on
//!   [`Backend`]'s runtime and posts its result back).
//! - [`child`]: spawning `d8` (found beside this executable), with secrets
//!   in the environment only, output to a log file, no console window on
//!   Windows, and the log tail.
//! - [`worker`]: the local worker: start, stop (drain), live status.
//! - [`local_cluster`]: the orchestrator started here, its token and key.
//! - [`find`]: clusters announcing themselves over mDNS, with their worker
//!   counts.
//! - [`keys`]: provider keys in the OS credential store, or a 0600 file.
//! - [`check`]: testing one key through the worker's provider code.
//! - [`cluster_api`]: the orchestrator's HTTP API (with the API key).
//! - [`settings`]: what the user chose, kept between runs (no secret).
//! - [`login`]: "Start at login" per OS.

pub mod app;
pub mod check;
pub mod child;
pub mod cluster_api;
pub mod find;
pub mod keys;
pub mod local_cluster;
pub mod login;
pub mod settings;
pub mod worker;

use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

/// The runtime background work runs on, and the way it asks the window to
/// draw again when something changed.
#[derive(Clone)]
pub struct Backend {
    rt: Arc<tokio::runtime::Runtime>,
    repaint: Repaint,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Backend")
    }
}

impl Backend {
    /// A runtime of two threads: background work is I/O (HTTP polls, mDNS,
    /// files), never heavy computation.
    pub fn new() -> std::io::Result<Backend> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("d8-desktop-bg")
            .enable_all()
            .build()?;
        Ok(Backend {
            rt: Arc::new(rt),
            repaint: Repaint::default(),
        })
    }

    /// Runs `fut` in the background.
    pub fn spawn<F>(&self, fut: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.rt.spawn(fut)
    }

    /// Runs blocking `f` (OS credential store, process waits) in the background.
    pub fn spawn_blocking<F, R>(&self, f: F) -> tokio::task::JoinHandle<R>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        self.rt.spawn_blocking(f)
    }

    /// Waits for `fut` on the runtime (tests and `--background` only; the
    /// window never blocks).
    pub fn block_on<F: std::future::Future>(&self, fut: F) -> F::Output {
        self.rt.block_on(fut)
    }

    /// The handle to ask for a repaint.
    pub fn repaint(&self) -> Repaint {
        self.repaint.clone()
    }
}

/// Asks the window to draw again; does nothing before the window exists.
#[derive(Debug, Clone, Default)]
pub struct Repaint(Arc<OnceLock<eframe::egui::Context>>);

impl Repaint {
    /// Called by the window at its first frame.
    pub fn attach(&self, ctx: &eframe::egui::Context) {
        let _ = self.0.set(ctx.clone());
    }

    /// Something changed: draw again.
    pub fn poke(&self) {
        if let Some(ctx) = self.0.get() {
            ctx.request_repaint();
        }
    }
}

/// State a background task writes and the window reads every frame.
#[derive(Debug)]
pub struct Shared<T> {
    inner: Arc<Mutex<T>>,
    repaint: Repaint,
}

impl<T> Clone for Shared<T> {
    fn clone(&self) -> Self {
        Shared {
            inner: self.inner.clone(),
            repaint: self.repaint.clone(),
        }
    }
}

impl<T> Shared<T> {
    /// `value`, repainting through `repaint` on each change.
    pub fn new(value: T, repaint: Repaint) -> Shared<T> {
        Shared {
            inner: Arc::new(Mutex::new(value)),
            repaint,
        }
    }

    /// Reads (a poisoned lock still holds usable state: writers replace
    /// whole values).
    pub fn lock(&self) -> MutexGuard<'_, T> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Changes it and asks for a repaint.
    pub fn update<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        let r = f(&mut self.lock());
        self.repaint.poke();
        r
    }
}

impl<T: PartialEq + Clone> Shared<T> {
    /// Changes it, asking for a repaint only when that changed anything:
    /// background polls run several times a second, and a frame drawn for
    /// nothing costs CPU (much of it with software OpenGL).
    pub fn update_if_changed(&self, f: impl FnOnce(&mut T)) {
        let mut g = self.lock();
        let before = g.clone();
        f(&mut g);
        let changed = *g != before;
        drop(g);
        if changed {
            self.repaint.poke();
        }
    }
}

/// Milliseconds as people read a wait: `45 s`, `3 min 20 s`, `2 h 05 min`.
pub fn human_ms(ms: u64) -> String {
    let s = ms.div_ceil(1000);
    match s {
        0..60 => format!("{s} s"),
        60..3600 if s.is_multiple_of(60) => format!("{} min", s / 60),
        60..3600 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {:02} min", s / 3600, (s % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_read_as_people_say_them() {
        assert_eq!(human_ms(0), "0 s");
        assert_eq!(human_ms(41_001), "42 s");
        assert_eq!(human_ms(120_000), "2 min");
        assert_eq!(human_ms(200_000), "3 min 20 s");
        assert_eq!(human_ms(7_500_000), "2 h 05 min");
    }
}
