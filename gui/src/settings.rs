//! What the user chose, kept between runs in `<config dir>/d8/desktop.json`.
//! No secret is ever kept here: keys live in [`crate::keys`], the join
//! token is used once and forgotten (the worker keeps its certificate).

use std::path::{Path, PathBuf};

use d8::providers::vendor::{self, Vendor};
use serde::{Deserialize, Serialize};

/// One provider as the user set it up.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProviderChoice {
    /// Provider kind (`groq`, `ollama`, …): a [`vendor::VENDORS`] kind.
    pub kind: String,
    /// Whether the worker runs it.
    pub enabled: bool,
    /// `local`, `free` or `paid`; empty: the vendor's default.
    pub tier: String,
    /// Another base URL (an OpenAI-compatible server, a remote Ollama);
    /// empty: the vendor's.
    pub base_url: String,
}

impl ProviderChoice {
    /// The vendor it names, if d8 knows it.
    pub fn vendor(&self) -> Option<&'static Vendor> {
        vendor::find(&self.kind)
    }
}

/// Everything the window remembers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// An orchestrator address typed by the user (VPN, other subnet); empty:
    /// find it over mDNS.
    pub address: String,
    /// Providers, in the window's order ([`offered`]).
    pub providers: Vec<ProviderChoice>,
    /// Tasks run at once.
    pub slots: u32,
    /// The last tab shown.
    pub tab: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            address: String::new(),
            providers: Vec::new(),
            slots: 4,
            tab: String::new(),
        }
    }
}

impl Settings {
    /// Reads `path`; a missing file gives the defaults, a damaged one too
    /// (with the reason, which the window shows: nothing secret is lost).
    pub fn load(path: &Path) -> (Settings, Option<String>) {
        let (mut s, problem) = match std::fs::read_to_string(path) {
            Ok(text) => match serde_json::from_str::<Settings>(&text) {
                Ok(s) => (s, None),
                Err(e) => (
                    Settings::default(),
                    Some(format!(
                        "{} could not be read ({e}); starting from defaults",
                        path.display()
                    )),
                ),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (Settings::default(), None),
            Err(e) => (
                Settings::default(),
                Some(format!("{}: {e}", path.display())),
            ),
        };
        s.normalize();
        (s, problem)
    }

    /// Writes `path` (whole-file replace).
    pub fn save(&self, path: &Path) -> Result<(), String> {
        if let Some(dir) = path.parent() {
            d8::node::files::ensure_dir(dir).map_err(|e| e.to_string())?;
        }
        let json = serde_json::to_vec_pretty(self).map_err(|e| e.to_string())?;
        d8::node::files::write_file(path, &json, false).map_err(|e| e.to_string())
    }

    /// One entry per vendor the window offers, in the table's order;
    /// unknown kinds (from a newer version) are dropped, slots bounded as
    /// `d8 join` bounds them.
    pub fn normalize(&mut self) {
        let mut out = Vec::new();
        for v in offered() {
            let mine = self
                .providers
                .iter()
                .find(|p| vendor::find(&p.kind).is_some_and(|f| f.kind == v.kind))
                .cloned()
                .unwrap_or_default();
            out.push(ProviderChoice {
                kind: v.kind.to_owned(),
                ..mine
            });
        }
        self.providers = out;
        self.slots = self.slots.clamp(1, 1024);
    }

    /// The provider of `kind`.
    pub fn provider_mut(&mut self, kind: &str) -> Option<&mut ProviderChoice> {
        self.providers.iter_mut().find(|p| p.kind == kind)
    }

    /// The providers the worker would run.
    pub fn enabled(&self) -> impl Iterator<Item = &ProviderChoice> {
        self.providers.iter().filter(|p| p.enabled)
    }
}

/// The vendors offered in the window: every one d8 knows, the built-in
/// echo last (it needs no key and no vendor: a way to try the cluster).
pub fn offered() -> impl Iterator<Item = &'static Vendor> {
    let real = vendor::VENDORS.iter().filter(|v| v.kind != "echo");
    real.chain(vendor::VENDORS.iter().filter(|v| v.kind == "echo"))
}

/// The default settings file: `<config dir>/d8/desktop.json`.
pub fn default_path() -> PathBuf {
    dirs::config_dir()
        .unwrap_or_else(|| PathBuf::from("."))
        .join("d8")
        .join("desktop.json")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_survive_a_restart_and_damage_gives_defaults_with_a_reason() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("d8").join("desktop.json");
        let (mut s, problem) = Settings::load(&path);
        assert!(problem.is_none());
        assert_eq!(s.providers.len(), offered().count());
        assert!(s.providers.iter().all(|p| !p.enabled));
        s.provider_mut("groq").expect("groq").enabled = true;
        s.address = "10.0.0.5:5000".into();
        s.save(&path).expect("save");
        let (back, _) = Settings::load(&path);
        assert_eq!(back, s);

        std::fs::write(&path, "{\"slots\": \"many\"").expect("write");
        let (d, problem) = Settings::load(&path);
        assert_eq!(d.slots, 4);
        assert!(problem.expect("reason").contains("could not be read"));
    }

    #[test]
    fn unknown_or_aliased_providers_are_folded_into_the_table() {
        let mut s = Settings {
            providers: vec![
                ProviderChoice {
                    kind: "claude".into(),
                    enabled: true,
                    ..ProviderChoice::default()
                },
                ProviderChoice {
                    kind: "from-the-future".into(),
                    enabled: true,
                    ..ProviderChoice::default()
                },
            ],
            slots: 0,
            ..Settings::default()
        };
        s.normalize();
        assert_eq!(s.slots, 1);
        let enabled: Vec<&str> = s.enabled().map(|p| p.kind.as_str()).collect();
        assert_eq!(enabled, ["anthropic"]);
        assert_eq!(s.providers.last().map(|p| p.kind.as_str()), Some("echo"));
    }
}
