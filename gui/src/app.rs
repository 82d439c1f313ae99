//! The window: three tabs (Cluster, This computer, Activity) under a bar
//! that always shows the local worker's state and the one big button.
//!
//! Drawing never waits: every frame reads the background parts' views,
//! every click that needs I/O hands it to the [`Backend`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use d8::discovery::Discovery;
use eframe::egui::{self, Color32, RichText};

use crate::check::Verdict;
use crate::cluster_api::{self, ClusterApi};
use crate::find::{self, Finder, Health};
use crate::keys::{CLUSTER_API_KEY, KeyStore};
use crate::local_cluster::LocalCluster;
use crate::settings::{ProviderChoice, Settings};
use crate::worker::{Launch, LocalWorker, ProviderRun};
use crate::{Backend, Shared, human_ms, login};

/// Where the app keeps and finds things; [`Config::system`] for real use,
/// temporary dirs in tests.
pub struct Config {
    /// The `d8` executable (`None`: not found; Start explains).
    pub d8: Option<PathBuf>,
    /// The local worker's data dir (as `d8 join` uses it by default).
    pub worker_dir: PathBuf,
    /// Data dir of a cluster started here (as `d8 serve` uses it by default).
    pub cluster_dir: PathBuf,
    /// Port of a cluster started here.
    pub cluster_port: u16,
    /// The settings file.
    pub settings_path: PathBuf,
    /// Where keys are kept.
    pub keys: Arc<KeyStore>,
    /// How clusters are found (`Err`: why mDNS cannot run here).
    pub discovery: Result<Arc<dyn Discovery>, String>,
    /// This executable (for "Start at login"); `None` hides the toggle.
    pub exe: Option<PathBuf>,
    /// The user's home and config dirs (login entries).
    pub home: PathBuf,
    /// See `home`.
    pub config_dir: PathBuf,
    /// More `d8 join` flags (tests: a short heartbeat; nothing secret).
    pub worker_args: Vec<String>,
    /// More `d8 serve` flags.
    pub cluster_args: Vec<String>,
}

impl Config {
    /// This machine's defaults: `d8` beside this executable, d8's own data
    /// dirs, the OS credential store, mDNS on every interface.
    pub fn system() -> Config {
        let config_dir = dirs::config_dir().unwrap_or_else(|| PathBuf::from("."));
        let keys_file = config_dir.join("d8").join("desktop-keys.json");
        Config {
            d8: crate::child::find_d8(),
            worker_dir: d8::node::files::default_data_dir("worker"),
            cluster_dir: d8::node::files::default_data_dir("orchestrator"),
            cluster_port: d8::cli::DEFAULT_PORT,
            settings_path: crate::settings::default_path(),
            keys: Arc::new(KeyStore::system(keys_file)),
            discovery: d8::discovery::MdnsDiscovery::new(&mdns_interfaces())
                .map(|d| Arc::new(d) as Arc<dyn Discovery>)
                .map_err(|e| e.to_string()),
            exe: std::env::current_exe().ok(),
            home: dirs::home_dir().unwrap_or_else(|| PathBuf::from(".")),
            config_dir,
            worker_args: Vec::new(),
            cluster_args: Vec::new(),
        }
    }
}

/// The interfaces mDNS may use: `D8_MDNS_INTERFACE` (comma-separated, as
/// `d8` reads it; the `d8` children inherit it), else every one but
/// loopback.
pub fn mdns_interfaces() -> Vec<String> {
    std::env::var("D8_MDNS_INTERFACE")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

const GREEN: Color32 = Color32::from_rgb(0x3f, 0xb9, 0x50);
const AMBER: Color32 = Color32::from_rgb(0xd2, 0x99, 0x22);
const RED: Color32 = Color32::from_rgb(0xf8, 0x51, 0x49);
/// Below this width (points) the This computer tab stacks its provider
/// list over the provider's settings instead of two columns.
const NARROW: f32 = 560.0;

/// The tabs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tab {
    /// Clusters found, joining, a cluster here.
    Cluster,
    /// Providers and keys, slots, start at login.
    Computer,
    /// Cluster numbers and logs.
    Activity,
}

impl Tab {
    fn name(self) -> &'static str {
        match self {
            Tab::Cluster => "Cluster",
            Tab::Computer => "This computer",
            Tab::Activity => "Activity",
        }
    }

    fn parse(s: &str) -> Tab {
        match s {
            "This computer" => Tab::Computer,
            "Activity" => Tab::Activity,
            _ => Tab::Cluster,
        }
    }
}

/// A key test's state.
#[derive(Debug, Clone)]
pub enum Check {
    /// Running.
    Running,
    /// The verdict.
    Done(Verdict),
    /// d8 could not test it.
    Failed(String),
}

/// What is known about stored keys.
#[derive(Debug, Clone, Default)]
struct KeysView {
    /// Provider kind → a key is stored.
    stored: BTreeMap<String, bool>,
    /// Where keys go.
    place: String,
    /// The path and why, on hover.
    place_details: String,
    /// The cluster API key, loaded.
    api_key: Option<String>,
    /// The last failure.
    error: Option<String>,
    loaded: bool,
}

/// The app.
pub struct App {
    cfg: Config,
    backend: Backend,
    settings: Settings,
    saved: Settings,
    settings_problem: Option<String>,
    finder: Finder,
    worker: LocalWorker,
    cluster: LocalCluster,
    api: ClusterApi,
    keys: Shared<KeysView>,
    checks: Shared<BTreeMap<String, Check>>,
    /// Keys typed and not yet saved, by provider.
    key_inputs: BTreeMap<String, String>,
    /// The provider whose details are shown.
    selected: String,
    token_input: String,
    api_key_input: String,
    /// The cluster chosen in the list (its URL).
    chosen: Option<String>,
    tab: Tab,
    show_token: bool,
    closing: bool,
    may_close: bool,
    notice: Option<(String, Instant)>,
    login_on: bool,
}

impl App {
    /// The app with `cfg`; background work starts now.
    pub fn new(cfg: Config, backend: Backend) -> App {
        let (settings, settings_problem) = Settings::load(&cfg.settings_path);
        let finder = Finder::start(cfg.discovery.clone(), &backend);
        let worker = LocalWorker::new(cfg.worker_dir.clone(), &backend);
        let cluster = LocalCluster::new(cfg.cluster_dir.clone(), cfg.cluster_port, &backend);
        let api = ClusterApi::start(&backend);
        let keys = Shared::new(KeysView::default(), backend.repaint());
        let checks = Shared::new(BTreeMap::new(), backend.repaint());
        let login_on = login::enabled(&cfg.home, &cfg.config_dir);
        let selected = settings
            .enabled()
            .next()
            .or(settings.providers.first())
            .map(|p| p.kind.clone())
            .unwrap_or_default();
        let app = App {
            tab: Tab::parse(&settings.tab),
            saved: settings.clone(),
            settings,
            settings_problem,
            finder,
            worker,
            cluster,
            api,
            keys,
            checks,
            key_inputs: BTreeMap::new(),
            selected,
            token_input: String::new(),
            api_key_input: String::new(),
            chosen: None,
            show_token: false,
            closing: false,
            may_close: false,
            notice: None,
            login_on,
            cfg,
            backend,
        };
        app.load_keys();
        app
    }

    /// Reads which providers have a stored key (not the keys themselves,
    /// but the cluster API key, which the cluster view uses).
    fn load_keys(&self) {
        let store = self.cfg.keys.clone();
        let view = self.keys.clone();
        let kinds: Vec<String> = self
            .settings
            .providers
            .iter()
            .map(|p| p.kind.clone())
            .collect();
        self.backend.spawn_blocking(move || {
            let mut stored = BTreeMap::new();
            let mut error = None;
            for k in kinds {
                match store.get(&k) {
                    Ok(v) => {
                        stored.insert(k, v.is_some());
                    }
                    Err(e) => error = Some(e),
                }
            }
            let api_key = store.get(CLUSTER_API_KEY).ok().flatten();
            let place = store.describe();
            let place_details = store.details();
            view.update(|v| {
                v.place_details = place_details;
                v.stored = stored;
                v.api_key = api_key;
                v.place = place;
                v.error = error;
                v.loaded = true;
            });
        });
    }

    fn say(&mut self, text: impl Into<String>) {
        self.notice = Some((text.into(), Instant::now()));
    }

    fn save_settings(&mut self) {
        self.settings.tab = self.tab.name().to_owned();
        if self.settings != self.saved {
            match self.settings.save(&self.cfg.settings_path) {
                Ok(()) => self.saved = self.settings.clone(),
                Err(e) => self.say(format!("cannot save settings: {e}")),
            }
        }
    }

    /// The worker is running (this window's or an earlier one's).
    pub fn worker_running(&self) -> bool {
        self.worker.view().alive
    }

    /// The local worker's status, for tests and the window.
    pub fn worker_view(&self) -> crate::worker::View {
        self.worker.view()
    }

    /// The cluster started here.
    pub fn local_cluster(&self) -> &LocalCluster {
        &self.cluster
    }

    /// Saves the key typed for `kind`.
    fn save_key(&mut self, kind: &str) {
        let Some(key) = self
            .key_inputs
            .remove(kind)
            .filter(|k| !k.trim().is_empty())
        else {
            return;
        };
        let store = self.cfg.keys.clone();
        let view = self.keys.clone();
        let kind = kind.to_owned();
        self.backend
            .spawn_blocking(move || keep_key(&store, &view, &kind, &key));
    }

    fn forget_key(&mut self, kind: &str) {
        let store = self.cfg.keys.clone();
        let view = self.keys.clone();
        let kind = kind.to_owned();
        self.backend.spawn_blocking(move || {
            let r = store.delete(&kind);
            view.update(|v| match r {
                Ok(()) => {
                    v.stored.insert(kind, false);
                }
                Err(e) => v.error = Some(e),
            });
        });
    }

    fn run_of(choice: &ProviderChoice, key: Option<String>) -> ProviderRun {
        let trimmed = |s: &str| Some(s.trim().to_owned()).filter(|s| !s.is_empty());
        ProviderRun {
            kind: choice.kind.clone(),
            key,
            base_url: trimmed(&choice.base_url),
            tier: trimmed(&choice.tier),
        }
    }

    /// Tests the key of `kind` (the typed one, else the stored one).
    fn test_key(&mut self, kind: &str) {
        let Some(choice) = self
            .settings
            .providers
            .iter()
            .find(|p| p.kind == kind)
            .cloned()
        else {
            return;
        };
        let typed = self
            .key_inputs
            .get(kind)
            .map(|k| k.trim().to_owned())
            .filter(|k| !k.is_empty());
        let store = self.cfg.keys.clone();
        let checks = self.checks.clone();
        let d8 = self.cfg.d8.clone();
        checks.update(|c| c.insert(kind.to_owned(), Check::Running));
        let kind = kind.to_owned();
        self.backend.spawn_blocking(move || {
            let needs_key = choice.vendor().is_some_and(|v| v.key_var.is_some());
            let key = match typed {
                Some(k) => Some(k),
                None if needs_key => match store.get(&kind) {
                    Ok(Some(k)) => Some(k),
                    Ok(None) => {
                        checks.update(|c| {
                            c.insert(kind, Check::Failed("no key: paste one first".into()))
                        });
                        return;
                    }
                    Err(e) => {
                        checks.update(|c| c.insert(kind, Check::Failed(e)));
                        return;
                    }
                },
                None => None,
            };
            let result = match d8 {
                None => Err(crate::child::NOT_FOUND.into()),
                Some(d8) => crate::check::run(&d8, &App::run_of(&choice, key)),
            };
            checks.update(|c| {
                c.insert(
                    kind,
                    match result {
                        Ok(v) => Check::Done(v),
                        Err(e) => Check::Failed(e),
                    },
                )
            });
        });
    }

    /// Why Start cannot work now, if it cannot.
    fn start_blocker(&self) -> Option<String> {
        if self.cfg.d8.is_none() {
            return Some(crate::child::NOT_FOUND.into());
        }
        let enabled: Vec<&ProviderChoice> = self.settings.enabled().collect();
        if enabled.is_empty() {
            return Some("choose at least one provider under \"This computer\"".into());
        }
        let keys = self.keys.lock();
        for p in enabled {
            let needs = p.vendor().is_some_and(|v| v.key_var.is_some());
            let typed = self
                .key_inputs
                .get(&p.kind)
                .is_some_and(|k| !k.trim().is_empty());
            if needs && !typed && keys.loaded && !keys.stored.get(&p.kind).copied().unwrap_or(false)
            {
                return Some(format!(
                    "{} needs a key under \"This computer\"",
                    title(&p.kind)
                ));
            }
        }
        drop(keys);
        if !self.worker.enrolled()
            && self.token_input.trim().is_empty()
            && self.local_token().is_none()
        {
            return Some(
                "paste the cluster's join token under \"Cluster\" (printed by d8 serve, or in the dashboard)"
                    .into(),
            );
        }
        None
    }

    /// The token of the cluster running here, if this window can read it.
    fn local_token(&self) -> Option<String> {
        let v = self.cluster.view();
        if v.up { v.token } else { None }
    }

    /// "Start worker on this computer".
    fn start_worker(&mut self) {
        if let Some(why) = self.start_blocker() {
            self.say(why);
            return;
        }
        // Typed keys are kept first, in the same background job that then
        // reads every key back from the store: one path, in order.
        let typed: Vec<(String, String)> = std::mem::take(&mut self.key_inputs)
            .into_iter()
            .filter(|(_, k)| !k.trim().is_empty())
            .collect();
        self.save_settings();
        let local = self.cluster.view();
        let address = Some(self.settings.address.trim().to_owned())
            .filter(|a| !a.is_empty())
            .or_else(|| {
                local
                    .up
                    .then(|| format!("127.0.0.1:{}", self.cluster.port()))
            });
        let token = Some(self.token_input.trim().to_owned())
            .filter(|t| !t.is_empty())
            .or_else(|| {
                (!self.worker.enrolled())
                    .then(|| self.local_token())
                    .flatten()
            });
        let chosen: Vec<ProviderChoice> = self.settings.enabled().cloned().collect();
        let slots = self.settings.slots;
        let extra = self.cfg.worker_args.clone();
        let store = self.cfg.keys.clone();
        let view = self.keys.clone();
        let worker = self.worker.clone();
        let d8 = self.cfg.d8.clone();
        self.token_input.clear();
        worker.launching();
        self.backend.spawn_blocking(move || {
            for (kind, key) in &typed {
                keep_key(&store, &view, kind, key);
            }
            match provider_runs(&store, &chosen) {
                Ok(providers) => worker.start(
                    d8.as_deref(),
                    &Launch {
                        address,
                        token,
                        providers,
                        slots,
                        extra_args: extra,
                    },
                ),
                Err(e) => worker.not_started(e),
            }
        });
    }

    fn stop_worker(&mut self) {
        if let Err(e) = self.worker.stop() {
            self.say(format!("cannot ask the worker to stop: {e}"));
        }
    }

    /// Draws one frame (eframe calls this through [`eframe::App::ui`];
    /// tests call it through egui_kittest).
    pub fn show(&mut self, ui: &mut egui::Ui) {
        self.backend.repaint().attach(ui.ctx());
        // Nothing repaints on a timer: background parts ask for a frame when
        // what they show changes (a resting provider's countdown moves
        // because the worker rewrites its status file every second).
        self.handle_close(ui.ctx());
        egui::Panel::top("bar").show(ui, |ui| self.bar(ui));
        egui::CentralPanel::default().show(ui, |ui| {
            egui::ScrollArea::vertical()
                .auto_shrink([false, false])
                .show(ui, |ui| match self.tab {
                    Tab::Cluster => self.cluster_tab(ui),
                    Tab::Computer => self.computer_tab(ui),
                    Tab::Activity => self.activity_tab(ui),
                });
        });
        self.close_dialog(ui.ctx());
        self.save_settings();
    }

    fn bar(&mut self, ui: &mut egui::Ui) {
        ui.add_space(6.0);
        ui.horizontal(|ui| {
            ui.heading(RichText::new("d8").strong());
            ui.label(RichText::new(format!("desktop {}", env!("CARGO_PKG_VERSION"))).weak());
            ui.with_layout(egui::Layout::right_to_left(egui::Align::Center), |ui| {
                let v = self.worker.view();
                if v.launching {
                    ui.add_enabled(
                        false,
                        egui::Button::new(RichText::new("Starting…").size(16.0)),
                    );
                } else if v.alive {
                    let label = if v.stopping { "Stopping…" } else { "Stop" };
                    if ui
                        .add_enabled(
                            !v.stopping,
                            egui::Button::new(RichText::new(label).size(16.0)),
                        )
                        .on_hover_text("Running tasks finish first; no new task is taken")
                        .clicked()
                    {
                        self.stop_worker();
                    }
                    if v.stopping
                        && ui
                            .button("Force stop")
                            .on_hover_text(
                                "End the worker now; its running tasks move to other workers",
                            )
                            .clicked()
                    {
                        self.worker.force_stop();
                    }
                } else {
                    let blocker = self.start_blocker();
                    let b = egui::Button::new(
                        RichText::new("Start worker on this computer")
                            .size(16.0)
                            .strong(),
                    )
                    .fill(Color32::from_rgb(0x1f, 0x6f, 0xeb));
                    let r = ui.add(b);
                    let r = match &blocker {
                        Some(why) => r.on_hover_text(why),
                        None => r,
                    };
                    if r.clicked() {
                        self.start_worker();
                    }
                }
            });
        });
        ui.add_space(2.0);
        self.worker_line(ui);
        if let Some((text, at)) = &self.notice {
            if at.elapsed() < Duration::from_secs(12) {
                ui.colored_label(AMBER, text);
                // Drawn again when it is due to go.
                ui.ctx()
                    .request_repaint_after(Duration::from_secs(12).saturating_sub(at.elapsed()));
            } else {
                self.notice = None;
            }
        }
        ui.add_space(4.0);
        ui.horizontal(|ui| {
            for t in [Tab::Cluster, Tab::Computer, Tab::Activity] {
                ui.selectable_value(&mut self.tab, t, t.name());
            }
        });
        ui.add_space(2.0);
    }

    /// The worker's state in one line, with its rests.
    fn worker_line(&self, ui: &mut egui::Ui) {
        let v = self.worker.view();
        let (dot, text) = worker_summary(&v);
        ui.horizontal_wrapped(|ui| {
            let (rect, _) = ui.allocate_exact_size(egui::vec2(12.0, 12.0), egui::Sense::hover());
            ui.painter().circle_filled(rect.center(), 5.0, dot);
            ui.label(text);
        });
        if let Some((s, read_at)) = &v.status
            && v.alive
        {
            for r in &s.rests {
                let left = r
                    .remaining_ms
                    .saturating_sub(read_at.elapsed().as_millis() as u64);
                let what = match &r.model {
                    Some(m) => format!("{} ({m})", r.provider),
                    None => r.provider.clone(),
                };
                let when = if r.disabled {
                    "until the worker restarts".to_owned()
                } else {
                    format!("for {}", human_ms(left))
                };
                ui.label(
                    RichText::new(format!(
                        "   {what} rests {when}: {}",
                        r.reason.as_str().replace('_', " ")
                    ))
                    .color(AMBER),
                );
            }
        }
        if let Some(e) = &v.start_error {
            ui.colored_label(RED, e);
        }
    }

    fn cluster_tab(&mut self, ui: &mut egui::Ui) {
        let found = self.finder.view();
        let local = self.cluster.view();
        ui.heading("Clusters on this network");
        if let Some(e) = &found.mdns_error {
            ui.colored_label(
                AMBER,
                format!("Cannot look on this network: {e}. Type an address below."),
            );
        }
        if found.clusters.is_empty() {
            if !found.searched {
                ui.horizontal(|ui| {
                    ui.spinner();
                    ui.label("Looking for clusters…");
                });
            } else {
                ui.label("No cluster found on this network.");
                ui.horizontal(|ui| {
                    if ui.button("Why?").on_hover_text("Run d8 doctor").clicked() {
                        self.finder.explain(self.cfg.d8.clone(), &self.backend);
                    }
                    if !local.up && !local.starting && ui.button("Start a cluster here").clicked() {
                        self.cluster
                            .start(self.cfg.d8.as_deref(), &self.cfg.cluster_args);
                    }
                });
            }
        }
        // One cluster found and none chosen: that one.
        if self.chosen.is_none()
            && let [only] = found.clusters.as_slice()
        {
            self.chosen = only.url.clone();
        }
        for c in &found.clusters {
            // Wrapped: a narrow window puts the address and link below.
            ui.horizontal_wrapped(|ui| {
                let chosen = self.chosen.as_deref() == c.url.as_deref();
                if ui.radio(chosen, c.name.as_str()).clicked() {
                    self.chosen = c.url.clone();
                }
                if !c.version.is_empty() {
                    ui.label(RichText::new(format!("v{}", c.version)).weak());
                }
                match &c.health {
                    Health::Up {
                        status,
                        workers_online,
                        ..
                    } => {
                        if let Some(n) = workers_online {
                            ui.label(plural(*n, "worker", "workers"));
                        }
                        if status != "ok" {
                            ui.colored_label(AMBER, status);
                        }
                    }
                    Health::Down(why) => {
                        ui.colored_label(RED, why);
                    }
                    Health::Unknown => {}
                }
                if let Some(u) = &c.url {
                    ui.label(
                        RichText::new(u.trim_start_matches("http://"))
                            .weak()
                            .monospace(),
                    );
                    ui.hyperlink_to("Open dashboard", format!("{u}/"));
                }
            });
        }
        if let Some(d) = &found.doctor {
            egui::CollapsingHeader::new("d8 doctor")
                .default_open(true)
                .show(ui, |ui| match d {
                    find::Doctor::Running(_) => {
                        ui.horizontal(|ui| {
                            ui.spinner();
                            ui.label("Looking at this machine and its network…");
                        });
                    }
                    find::Doctor::Done(text) => {
                        ui.label(RichText::new(text).monospace());
                    }
                });
        }
        ui.add_space(6.0);
        ui.horizontal(|ui| {
            let l = ui.label("Orchestrator address");
            let r = ui
                .add(
                    egui::TextEdit::singleline(&mut self.settings.address)
                        .hint_text("only across VPNs or subnets: 10.0.0.5 or pi.local:5000")
                        .desired_width(300.0),
                )
                .labelled_by(l.id);
            if r.changed() {
                self.finder.set_typed(&self.settings.address);
            }
        });
        self.finder.set_typed(&self.settings.address);

        ui.separator();
        ui.heading("Joining");
        if self.worker.enrolled() {
            ui.label("This computer is enrolled: it needs no token to join again.");
        } else if self.local_token().is_some() {
            ui.label("The worker will join the cluster running on this computer.");
        } else {
            ui.horizontal(|ui| {
                secret_field(
                    ui,
                    "Join token",
                    &mut self.token_input,
                    "D8-1-… printed by d8 serve, or from the dashboard",
                    320.0,
                );
            });
            if let Some(cid) = token_cluster(&self.token_input) {
                match found.clusters.iter().find(|c| c.cluster_id.as_deref() == Some(cid.as_str())) {
                    Some(c) => ui.label(format!("This token is for {}.", c.name)),
                    None => ui.colored_label(
                        AMBER,
                        format!(
                            "No cluster of this token (id {cid}) is announcing itself here; type its address above if it is on another network."
                        ),
                    ),
                };
            } else if !self.token_input.trim().is_empty() {
                ui.colored_label(
                    RED,
                    "This is not a join token: they read D8-1-… (d8 serve prints one).",
                );
            }
            ui.label(
                RichText::new(
                    "Used once: the worker keeps a certificate, and the token is not stored.",
                )
                .weak(),
            );
        }

        ui.separator();
        self.local_cluster_section(ui, &local);
    }

    fn local_cluster_section(&mut self, ui: &mut egui::Ui, local: &crate::local_cluster::View) {
        ui.heading("A cluster on this computer");
        if local.up {
            ui.label(format!(
                "Running at {}{}",
                self.cluster.url(),
                local
                    .workers_online
                    .map(|n| format!(" · {}", plural(n, "worker", "workers")))
                    .unwrap_or_default()
            ));
            if let Some(token) = &local.token {
                ui.horizontal(|ui| {
                    ui.label("Join token for the other machines:");
                    if self.show_token {
                        ui.label(RichText::new(token).monospace());
                    } else {
                        ui.label(RichText::new("••••••••••••").monospace());
                    }
                    if ui.button(if self.show_token { "Hide" } else { "Show" }).clicked() {
                        self.show_token = !self.show_token;
                    }
                    if ui.button("Copy join token").clicked() {
                        ui.ctx().copy_text(token.clone());
                        self.say("Join token copied. On each other machine: open d8 and paste it under Cluster.");
                    }
                });
                ui.horizontal(|ui| {
                    ui.hyperlink_to("Open dashboard", format!("{}/", self.cluster.url()));
                    let label = if local.stopping {
                        "Stopping cluster…"
                    } else {
                        "Stop cluster"
                    };
                    if ui
                        .add_enabled(!local.stopping, egui::Button::new(label))
                        .on_hover_text("The queue is kept on disk; start it again to go on")
                        .clicked()
                        && let Err(e) = self.cluster.stop()
                    {
                        self.say(e);
                    }
                });
            } else {
                ui.label(
                    RichText::new(format!(
                        "Started outside this app (its data is not in {})",
                        self.cluster.data_dir().display()
                    ))
                    .weak(),
                );
            }
        } else if local.starting {
            ui.horizontal(|ui| {
                ui.spinner();
                ui.label("Starting the cluster…");
            });
        } else {
            ui.label(
                "The first machine (a Raspberry Pi, a home server) runs the cluster; the others join it.",
            );
            // With nothing found, the button is offered above, beside "Why?".
            let none_found = {
                let f = self.finder.view();
                f.searched && f.clusters.is_empty()
            };
            if !none_found && ui.button("Start a cluster here").clicked() {
                self.cluster
                    .start(self.cfg.d8.as_deref(), &self.cfg.cluster_args);
            }
        }
        if let Some(e) = &local.start_error {
            ui.colored_label(RED, e);
        }
        if let Some(code) = &local.exited {
            ui.colored_label(
                RED,
                format!("The cluster stopped ({code}). Its last lines:"),
            );
            for l in local.log.iter().rev().take(6).rev() {
                ui.label(RichText::new(l).monospace().small());
            }
        }
    }

    fn computer_tab(&mut self, ui: &mut egui::Ui) {
        let keys = self.keys.lock().clone();
        let checks = self.checks.lock().clone();
        ui.heading("Providers");
        ui.label(
            RichText::new(format!(
                "Keys stay on this computer, in {}; the worker gets them through its environment, never its command line.",
                if keys.place.is_empty() { "the credential store" } else { &keys.place }
            ))
            .weak(),
        )
        .on_hover_text(&keys.place_details);
        if let Some(e) = &keys.error {
            ui.colored_label(RED, e);
        }
        let kind = self.selected.clone();
        // Side by side where there is room; stacked in a narrow window
        // (a phone-sized one clipped the detail's buttons and fields).
        if ui.available_width() >= NARROW {
            ui.columns(2, |cols| {
                let (left, right) = cols.split_at_mut(1);
                self.provider_list(&mut left[0], &keys);
                self.provider_detail(&mut right[0], &kind, &keys, checks.get(&kind));
            });
        } else {
            self.provider_list(ui, &keys);
            ui.add_space(6.0);
            self.provider_detail(ui, &kind, &keys, checks.get(&kind));
        }
        ui.separator();
        ui.heading("Worker");
        ui.horizontal(|ui| {
            let l = ui.label("Tasks at once");
            ui.add(egui::DragValue::new(&mut self.settings.slots).range(1..=64))
                .labelled_by(l.id);
        });
        if let Some(exe) = self.cfg.exe.clone() {
            let mut on = self.login_on;
            if ui
                .checkbox(&mut on, "Start the worker when I log in")
                .on_hover_text("Starts it in the background with these providers; no window opens")
                .changed()
            {
                match login::set(on, &exe, &self.cfg.home, &self.cfg.config_dir) {
                    Ok(()) => self.login_on = on,
                    Err(e) => self.say(format!("cannot change the login item: {e}")),
                }
            }
        }
        if let Some(p) = &self.settings_problem {
            ui.colored_label(AMBER, p);
        }
    }

    /// The providers, one selectable line each, with whether each runs and
    /// has a key.
    fn provider_list(&mut self, ui: &mut egui::Ui, keys: &KeysView) {
        for p in &self.settings.providers {
            ui.horizontal(|ui| {
                if ui
                    .selectable_label(self.selected == p.kind, title(&p.kind))
                    .clicked()
                {
                    self.selected = p.kind.clone();
                }
                if p.enabled {
                    ui.label(RichText::new("on").small().color(GREEN))
                        .on_hover_text("The worker runs it");
                }
                if keys.stored.get(&p.kind).copied().unwrap_or(false) {
                    ui.label(RichText::new("key stored").small().weak());
                }
            });
        }
    }

    fn provider_detail(
        &mut self,
        ui: &mut egui::Ui,
        kind: &str,
        keys: &KeysView,
        check: Option<&Check>,
    ) {
        let Some(p) = self.settings.provider_mut(kind) else {
            return;
        };
        let Some(v) = p.vendor() else {
            return;
        };
        ui.strong(format!("{} settings", title(kind)));
        ui.checkbox(
            &mut p.enabled,
            format!("Run {} on this worker", title(kind)),
        );
        let needs_key = v.key_var.is_some();
        let stored = keys.stored.get(kind).copied().unwrap_or(false);
        if needs_key {
            ui.horizontal(|ui| {
                let input = self.key_inputs.entry(kind.to_owned()).or_default();
                let hint = if stored {
                    "stored (paste to replace)"
                } else {
                    "paste the key"
                };
                secret_field(ui, "Key", input, hint, 220.0);
            });
        }
        ui.horizontal(|ui| {
            let typed = self
                .key_inputs
                .get(kind)
                .is_some_and(|k| !k.trim().is_empty());
            if needs_key
                && ui
                    .add_enabled(typed, egui::Button::new("Save key"))
                    .clicked()
            {
                self.save_key(kind);
            }
            if needs_key && stored && ui.button("Forget key").clicked() {
                self.forget_key(kind);
            }
            let can_test = !needs_key || typed || stored;
            if ui
                .add_enabled(
                    can_test && !matches!(check, Some(Check::Running)),
                    egui::Button::new("Test"),
                )
                .on_hover_text("One tiny call (one token) through the worker's provider code")
                .clicked()
            {
                self.test_key(kind);
            }
        });
        match check {
            Some(Check::Running) => {
                ui.horizontal(|ui| {
                    ui.spinner();
                    ui.label("Testing…");
                });
            }
            Some(Check::Done(v)) => {
                let color = match v.result.as_str() {
                    "ok" => GREEN,
                    "rate_limited" => AMBER,
                    _ => RED,
                };
                ui.colored_label(color, v.headline());
                if v.result != "ok" && !v.message.is_empty() {
                    ui.label(RichText::new(&v.message).weak().small());
                }
            }
            Some(Check::Failed(e)) => {
                ui.colored_label(RED, e);
            }
            None => {}
        }
        let Some(p) = self.settings.provider_mut(kind) else {
            return;
        };
        ui.horizontal(|ui| {
            let l = ui.label("Tier");
            egui::ComboBox::from_id_salt(("tier", kind))
                .selected_text(if p.tier.is_empty() {
                    format!("{} (default)", v.tier.as_str())
                } else {
                    p.tier.clone()
                })
                .show_ui(ui, |ui| {
                    ui.selectable_value(&mut p.tier, String::new(), "default");
                    for t in ["local", "free", "paid"] {
                        ui.selectable_value(&mut p.tier, t.to_owned(), t);
                    }
                })
                .response
                .labelled_by(l.id);
        });
        // Only where d8 reads another URL for it (not the built-in echo).
        if v.url_var.is_some() {
            ui.horizontal(|ui| {
                let l = ui.label("Base URL");
                ui.add(
                    egui::TextEdit::singleline(&mut p.base_url)
                        .hint_text(v.base_url)
                        .desired_width(220.0),
                )
                .labelled_by(l.id);
            });
        }
    }

    fn activity_tab(&mut self, ui: &mut egui::Ui) {
        let local = self.cluster.view();
        // The cluster whose numbers are shown: the chosen one, else the one
        // running here, else the only one found.
        let found = self.finder.view();
        let url = self
            .chosen
            .clone()
            .or_else(|| local.up.then(|| self.cluster.url()))
            .or_else(|| match found.clusters.as_slice() {
                [one] => one.url.clone(),
                _ => None,
            });
        let key = local
            .api_key
            .clone()
            .filter(|_| local.up && url.as_deref() == Some(self.cluster.url().as_str()))
            .or_else(|| self.keys.lock().api_key.clone());
        self.api.set_target(url.as_deref(), key.as_deref());
        ui.heading("Cluster");
        match (&url, self.api.view()) {
            (None, _) => {
                ui.label("Choose a cluster under Cluster to see it here.");
            }
            (Some(u), cluster_api::View::Ok(s)) => {
                ui.label(RichText::new(u).weak().monospace());
                egui::Grid::new("numbers").num_columns(2).show(ui, |ui| {
                    ui.label("Workers online");
                    ui.label(format!("{} of {}", s.online, s.total));
                    ui.end_row();
                    ui.label("Queue");
                    ui.label(format!("{} waiting · {} running", s.pending, s.running));
                    ui.end_row();
                    ui.label("Finished");
                    ui.label(format!(
                        "{} completed · {} failed · {:.1}% success",
                        s.completed, s.failed, s.success_rate
                    ));
                    ui.end_row();
                    if let Some((st, _)) = self.worker.view().status
                        && let Some(me) = &st.worker_id
                    {
                        let (mine, all) = s.share(me);
                        ui.label("This computer");
                        ui.label(if all == 0 {
                            "no task completed by online workers yet".to_owned()
                        } else {
                            format!(
                                "{mine} of {all} tasks ({:.0}%)",
                                mine as f64 * 100.0 / all as f64
                            )
                        });
                        ui.end_row();
                    }
                });
                ui.hyperlink_to("Open dashboard", format!("{u}/"));
            }
            (Some(_), view) => {
                if let cluster_api::View::Failed(e) = view {
                    ui.colored_label(RED, e);
                }
                if key.is_none() {
                    ui.label("Its HTTP API key shows workers, queue and success rate here.");
                }
                ui.horizontal(|ui| {
                    secret_field(
                        ui,
                        "API key",
                        &mut self.api_key_input,
                        "d8k_… from the orchestrator's data dir",
                        260.0,
                    );
                    if ui
                        .add_enabled(
                            !self.api_key_input.trim().is_empty(),
                            egui::Button::new("Save API key"),
                        )
                        .clicked()
                    {
                        let secret = std::mem::take(&mut self.api_key_input).trim().to_owned();
                        let store = self.cfg.keys.clone();
                        let view = self.keys.clone();
                        self.backend.spawn_blocking(move || {
                            let r = store.set(CLUSTER_API_KEY, &secret);
                            view.update(|v| match r {
                                Ok(()) => v.api_key = Some(secret),
                                Err(e) => v.error = Some(e),
                            });
                        });
                    }
                });
            }
        }
        ui.separator();
        let v = self.worker.view();
        egui::CollapsingHeader::new("This computer's worker log")
            .default_open(true)
            .show(ui, |ui| log_lines(ui, &v.log, "worker-log"));
        if !local.log.is_empty() {
            egui::CollapsingHeader::new("The cluster's log (on this computer)")
                .default_open(false)
                .show(ui, |ui| log_lines(ui, &local.log, "cluster-log"));
        }
    }

    fn handle_close(&mut self, ctx: &egui::Context) {
        if ctx.input(|i| i.viewport().close_requested()) && !self.may_close {
            let v = self.worker.view();
            let ours = self.cluster.view();
            if v.alive || ours.up {
                ctx.send_viewport_cmd(egui::ViewportCommand::CancelClose);
                self.closing = true;
            }
        }
    }

    fn close_dialog(&mut self, ctx: &egui::Context) {
        if !self.closing {
            return;
        }
        let worker = self.worker.view().alive;
        let cluster = self.cluster.view().up;
        let what = match (worker, cluster) {
            (true, true) => "The worker and the cluster are running.",
            (true, false) => "The worker is running.",
            (false, true) => "The cluster is running.",
            (false, false) => "",
        };
        let mut choice = None;
        egui::Modal::new(egui::Id::unique("d8-closing")).show(ctx, |ui| {
            ui.set_width(360.0);
            ui.heading("Keep running?");
            ui.label(format!(
                "{what} They can keep running without this window; open d8 again to see or stop them."
            ));
            ui.horizontal(|ui| {
                if ui.button("Keep running").clicked() {
                    choice = Some(true);
                }
                if ui.button("Stop and quit").clicked() {
                    choice = Some(false);
                }
                if ui.button("Cancel").clicked() {
                    self.closing = false;
                }
            });
        });
        if let Some(keep) = choice {
            if !keep {
                let _ = self.worker.stop();
                let _ = self.cluster.stop();
            }
            self.closing = false;
            self.may_close = true;
            ctx.send_viewport_cmd(egui::ViewportCommand::Close);
        }
    }
}

impl eframe::App for App {
    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        self.show(ui);
    }
}

fn log_lines(ui: &mut egui::Ui, lines: &[String], id: &str) {
    if lines.is_empty() {
        ui.label(RichText::new("Nothing yet.").weak());
        return;
    }
    egui::ScrollArea::vertical()
        .id_salt(id)
        .max_height(260.0)
        .stick_to_bottom(true)
        .show(ui, |ui| {
            for l in lines {
                ui.label(RichText::new(l).monospace().small());
            }
        });
}

/// The id of the cluster a join token is for (tokens carry their CA's
/// digest); `None` when it is not a token.
pub fn token_cluster(token: &str) -> Option<String> {
    d8_certs::JoinToken::parse(token)
        .ok()
        .map(|t| d8::discovery::cluster_id(&t.ca_digest()))
}

/// A labelled, masked one-line field (keys, tokens).
fn secret_field(ui: &mut egui::Ui, label: &str, value: &mut String, hint: &str, width: f32) {
    let l = ui.label(label);
    ui.add(
        egui::TextEdit::singleline(value)
            .password(true)
            .hint_text(hint)
            .desired_width(width),
    )
    .labelled_by(l.id);
}

/// "1 worker", "3 workers".
fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// A provider's name as people write it.
pub fn title(kind: &str) -> String {
    match kind {
        "openai" => "OpenAI".into(),
        "openrouter" => "OpenRouter".into(),
        "deepseek" => "DeepSeek".into(),
        "anthropic" => "Anthropic (Claude)".into(),
        "ollama" => "Ollama (local models)".into(),
        "echo" => "Echo (a test: repeats the prompt)".into(),
        other => {
            let mut c = other.chars();
            c.next()
                .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
                .unwrap_or_default()
        }
    }
}

/// The dot colour and the sentence for the worker's state.
pub fn worker_summary(v: &crate::worker::View) -> (Color32, String) {
    let green = GREEN;
    let amber = AMBER;
    let red = RED;
    let grey = Color32::from_rgb(0x8b, 0x94, 0x9e);
    let counts = |s: &crate::worker::Status| {
        let mut t = format!("{} running · {} completed", s.active, s.completed);
        if s.failed > 0 {
            t += &format!(" · {} failed", s.failed);
        }
        if s.handed_back > 0 {
            t += &format!(" · {} handed to other workers", s.handed_back);
        }
        t
    };
    match &v.status {
        Some((s, _)) if v.alive => match s.state.as_str() {
            "connected" => (
                green,
                format!(
                    "Connected to {} as {} · {}",
                    s.orchestrator.as_deref().unwrap_or("the cluster"),
                    s.worker_id.as_deref().unwrap_or("this computer"),
                    counts(s)
                ),
            ),
            "draining" => (
                amber,
                format!("Stopping: finishing {} running task(s)", s.active),
            ),
            "connecting" => (
                amber,
                match &s.last_error {
                    Some(e) => format!("Connecting… last attempt: {e}"),
                    None => "Connecting…".to_owned(),
                },
            ),
            "enrolling" => (amber, "Joining the cluster…".to_owned()),
            _ => (amber, "Starting…".to_owned()),
        },
        None if v.alive => (amber, "Starting…".to_owned()),
        Some((s, _)) => {
            let why = v
                .exited
                .as_ref()
                .map(|c| format!(" ({c})"))
                .unwrap_or_default();
            match (&s.last_error, s.state.as_str()) {
                (Some(e), "failed") => (red, format!("The worker failed{why}: {e}")),
                _ if v.exited.is_some() => (red, format!("The worker ended{why}")),
                _ => (
                    grey,
                    format!(
                        "Not running · last run: {} completed, {} failed",
                        s.completed, s.failed
                    ),
                ),
            }
        }
        None => match &v.exited {
            Some(c) => (
                red,
                format!("The worker ended ({c}); see Activity for its log"),
            ),
            None => (
                grey,
                "Not running: this computer is not lending itself yet".to_owned(),
            ),
        },
    }
}

/// Keeps a typed key (in the background: the OS store may block) and says
/// how that went in the keys view.
fn keep_key(store: &KeyStore, view: &Shared<KeysView>, kind: &str, key: &str) {
    let r = store.set(kind, key.trim());
    let place = store.describe();
    let place_details = store.details();
    view.update(|v| {
        v.place = place;
        v.place_details = place_details;
        match r {
            Ok(()) => {
                v.stored.insert(kind.to_owned(), true);
                v.error = None;
            }
            Err(e) => v.error = Some(format!("cannot keep the {kind} key: {e}")),
        }
    });
}

/// What the worker runs for the chosen providers, with their keys read
/// from the store; a key that cannot be read stops the start (a worker
/// without it would only fail its tasks).
fn provider_runs(store: &KeyStore, chosen: &[ProviderChoice]) -> Result<Vec<ProviderRun>, String> {
    chosen
        .iter()
        .map(|c| {
            let key = if c.vendor().is_some_and(|v| v.key_var.is_some()) {
                store
                    .get(&c.kind)
                    .map_err(|e| format!("cannot read the {} key: {e}", title(&c.kind)))?
            } else {
                None
            };
            Ok(App::run_of(c, key))
        })
        .collect()
}

/// `d8-desktop --background` (the login item): starts the worker with the
/// saved choices and stored keys, unless one runs already, and returns
/// what it did. Needs an enrolled machine: a token is never stored.
pub fn start_in_background(cfg: &Config) -> Result<String, String> {
    let (settings, problem) = Settings::load(&cfg.settings_path);
    if let Some(p) = problem {
        return Err(p);
    }
    let backend = Backend::new().map_err(|e| e.to_string())?;
    let worker = LocalWorker::new(cfg.worker_dir.clone(), &backend);
    worker.refresh();
    if worker.view().alive {
        return Ok("the worker is already running".into());
    }
    if !worker.enrolled() {
        return Err(
            "this computer has not joined a cluster yet: open d8 and press Start once".into(),
        );
    }
    let chosen: Vec<ProviderChoice> = settings.enabled().cloned().collect();
    if chosen.is_empty() {
        return Err("no provider is chosen: open d8 and tick one under \"This computer\"".into());
    }
    let launch = Launch {
        address: Some(settings.address.trim().to_owned()).filter(|a| !a.is_empty()),
        token: None,
        providers: provider_runs(&cfg.keys, &chosen)?,
        slots: settings.slots,
        extra_args: cfg.worker_args.clone(),
    };
    worker.start(cfg.d8.as_deref(), &launch);
    match worker.view().start_error {
        Some(e) => Err(e),
        None => Ok(format!(
            "worker started; its log: {}",
            cfg.worker_dir.join(crate::worker::LOG).display()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_names_its_cluster() {
        let t = "D8-1-37d0f04db1b4b0dbcbb29d3cd7cf56141954df0a3c1484d927ec35c798366843-6byvtfjl5ddnrewl53aqvcppakiralny";
        assert_eq!(token_cluster(t).as_deref(), Some("37d0f04db1b4b0db"));
        assert_eq!(
            token_cluster(&format!("  {t}\n")).as_deref(),
            Some("37d0f04db1b4b0db")
        );
        assert_eq!(token_cluster("D8-1-abc-def"), None);
        assert_eq!(token_cluster("d8k_apikey"), None);
    }
}
