//! `d8 service`: start d8 at boot or at login with the operating system's
//! own service manager, the one implementation behind the command, the
//! installers' hints and the desktop app's "Start at login".
//!
//! | OS      | system scope (root / administrator)   | user scope                      |
//! |---------|----------------------------------------|---------------------------------|
//! | Linux   | systemd unit in `/etc/systemd/system`  | systemd user unit               |
//! | macOS   | refused: a LaunchAgent is the way      | LaunchAgent (`~/Library/LaunchAgents`) |
//! | Windows | a real service (Service Control Manager) | refused: needs an administrator |
//!
//! Settings never go in a unit, a plist or a service's command line: they
//! go in one *env file* per role (`KEY=value` lines, mode 0600, or on
//! Windows an access list of SYSTEM and Administrators only), which the
//! service reads when it starts. `d8 service install` copies into it the
//! d8 settings found in its own environment (the variables `d8 join` or
//! `d8 serve` read, and each vendor's key, URL, model and tier variables),
//! so `GROQ_API_KEY=… D8_PROVIDERS=groq d8 service install` sets the
//! worker up the way `d8 join` would run by hand.
//!
//! Decisions:
//! - A unit that a package or `install.sh` put in place (no [`MARKER`]) is
//!   enabled as it is, never overwritten.
//! - Units written here run under systemd's `DynamicUser=` with their state
//!   in `/var/lib/d8/<role>` (`StateDirectory=`): no account to create.
//! - On macOS d8 runs as the logged-in user's LaunchAgent (LaunchDaemons
//!   run before anyone logs in, when the Keychain and the local-network
//!   permission the user granted are not there).
//! - On Windows the service runs as LocalSystem (as most agent services
//!   do; the SCM then needs no password) with its data and env file in
//!   `%ProgramData%\d8`, readable only by SYSTEM and Administrators. A
//!   per-user entry would start `d8.exe` in a console window at each login,
//!   so without administrator rights the desktop app's own Start at login
//!   (a windowless program) is the way.

use std::path::{Path, PathBuf};

pub mod env_file;
pub mod launchd;
pub mod login;
pub mod systemd;
#[cfg(windows)]
pub mod windows;

/// Written into every entry this module creates, so that it knows which
/// ones it may overwrite or remove.
pub const MARKER: &str = "Written by `d8 service install`";

/// What the service runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `d8 join`.
    Worker,
    /// `d8 serve`.
    Orchestrator,
}

impl Role {
    /// `worker` or `orchestrator`: the data dir's last part and the
    /// env file's stem.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Worker => "worker",
            Role::Orchestrator => "orchestrator",
        }
    }

    /// The `d8` subcommand it runs.
    pub fn command(self) -> &'static str {
        match self {
            Role::Worker => "join",
            Role::Orchestrator => "serve",
        }
    }

    /// The service's name: systemd unit stem and Windows service name.
    pub fn service_name(self) -> String {
        format!("d8-{}", self.as_str())
    }

    /// The launchd label.
    pub fn label(self) -> String {
        format!("org.d8.{}", self.as_str())
    }
}

/// Whose service it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Starts at boot, for the machine (root or an administrator installs it).
    System,
    /// Starts at this user's login.
    User,
}

impl Scope {
    /// The default: system for root (or on Windows, where a service is
    /// the only kind), user otherwise.
    pub fn default_here() -> Scope {
        if cfg!(windows) || is_root() {
            Scope::System
        } else {
            Scope::User
        }
    }

    /// `system` or `user`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::System => "system",
            Scope::User => "user",
        }
    }
}

#[cfg(unix)]
fn is_root() -> bool {
    // The effective uid, without libc: /proc is Linux-only and macOS has no
    // /proc, so ask `id`, which every Unix has.
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

#[cfg(not(unix))]
fn is_root() -> bool {
    false
}

/// Why a service could not be set up, stopped or read.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// This OS has no such service kind (e.g. a system LaunchDaemon).
    #[error("{0}")]
    Unsupported(String),
    /// Writing or reading a file failed.
    #[error(transparent)]
    File(#[from] crate::node::files::FileError),
    /// The service manager refused or failed.
    #[error("{0}")]
    Manager(String),
}

// Here rather than in `cli`: `service` uses `cli`'s types, so `cli` must
// not use `service`'s (tests/it/layering.rs).
impl crate::cli::ServiceTarget {
    /// The role asked for (worker unless `--orchestrator`).
    pub fn role(&self) -> Role {
        if self.orchestrator {
            Role::Orchestrator
        } else {
            Role::Worker
        }
    }

    /// The scope asked for, else this machine's default.
    pub fn scope(&self) -> Scope {
        if self.system {
            Scope::System
        } else if self.user {
            Scope::User
        } else {
            Scope::default_here()
        }
    }
}

/// Where everything of one service lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// What it runs.
    pub role: Role,
    /// Whose it is.
    pub scope: Scope,
    /// The `d8` executable the entry starts.
    pub exe: PathBuf,
    /// The entry itself (unit file, plist); `None` for a Windows service,
    /// which lives in the Service Control Manager's database.
    pub entry: Option<PathBuf>,
    /// The settings file.
    pub env_file: PathBuf,
    /// The service's data dir.
    pub data_dir: PathBuf,
    /// Where the service's own output goes, when the service manager does
    /// not keep it (launchd, Windows); `None` under systemd (the journal).
    pub log_file: Option<PathBuf>,
}

/// The folders a plan is made from, so tests can point them anywhere.
#[derive(Debug, Clone)]
pub struct Dirs {
    /// The user's home.
    pub home: PathBuf,
    /// The user's config dir (`~/.config`, `%APPDATA%`, `~/Library/Application Support`).
    pub config: PathBuf,
    /// Root of the machine-wide places (`/`, or `%ProgramData%` on Windows).
    pub system_root: PathBuf,
}

impl Dirs {
    /// This machine's.
    pub fn here() -> Dirs {
        let home = dirs::home_dir().unwrap_or_else(|| PathBuf::from("."));
        Dirs {
            config: dirs::config_dir().unwrap_or_else(|| home.join(".config")),
            home,
            system_root: if cfg!(windows) {
                std::env::var_os("ProgramData")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| PathBuf::from(r"C:\ProgramData"))
            } else {
                PathBuf::from("/")
            },
        }
    }
}

/// The plan for `role` in `scope` on the OS this was built for, or why
/// this OS has no such service.
pub fn plan(role: Role, scope: Scope, exe: &Path, dirs: &Dirs) -> Result<Plan, ServiceError> {
    let name = role.service_name();
    let env_name = format!("{}.env", role.as_str());
    let user_data = crate::node::files::default_data_dir(role.as_str());
    if cfg!(windows) {
        if scope == Scope::User {
            return Err(ServiceError::Unsupported(
                "on Windows a worker that starts by itself is a Windows service, which an administrator installs (run this from an administrator prompt); without one, use the desktop app's Start at login".into(),
            ));
        }
        let root = dirs.system_root.join("d8");
        let data_dir = root.join(role.as_str());
        return Ok(Plan {
            role,
            scope,
            exe: exe.to_path_buf(),
            entry: None,
            env_file: root.join(env_name),
            log_file: Some(data_dir.join("service.log")),
            data_dir,
        });
    }
    if cfg!(target_os = "macos") {
        if scope == Scope::System {
            return Err(ServiceError::Unsupported(
                "on macOS d8 starts as the logged-in user's LaunchAgent: run `d8 service install` without sudo".into(),
            ));
        }
        let d8_config = dirs.config.join("d8");
        return Ok(Plan {
            role,
            scope,
            exe: exe.to_path_buf(),
            entry: Some(
                dirs.home
                    .join("Library/LaunchAgents")
                    .join(format!("{}.plist", role.label())),
            ),
            env_file: d8_config.join(env_name),
            log_file: Some(user_data.join("service.log")),
            data_dir: user_data,
        });
    }
    Ok(match scope {
        Scope::System => Plan {
            role,
            scope,
            exe: exe.to_path_buf(),
            entry: Some(
                dirs.system_root
                    .join("etc/systemd/system")
                    .join(format!("{name}.service")),
            ),
            env_file: dirs.system_root.join("etc/d8").join(env_name),
            data_dir: dirs.system_root.join("var/lib/d8").join(role.as_str()),
            log_file: None,
        },
        Scope::User => Plan {
            role,
            scope,
            exe: exe.to_path_buf(),
            entry: Some(
                dirs.config
                    .join("systemd/user")
                    .join(format!("{name}.service")),
            ),
            env_file: dirs.config.join("d8").join(env_name),
            data_dir: user_data,
            log_file: None,
        },
    })
}

/// The variables a role's service takes from the installing environment:
/// those its command reads (from its flags' `env`), d8's global ones, and
/// every vendor's key, URL, model and tier variables for a worker. The data
/// dir is not among them: the service has its own.
pub fn setting_names(role: Role) -> Vec<String> {
    use clap::CommandFactory;
    let cli = crate::cli::Cli::command();
    let mut names: Vec<String> = cli
        .get_arguments()
        .filter_map(|a| a.get_env())
        .map(|e| e.to_string_lossy().into_owned())
        .collect();
    if let Some(sub) = cli.find_subcommand(role.command()) {
        names.extend(
            sub.get_arguments()
                .filter_map(|a| a.get_env())
                .map(|e| e.to_string_lossy().into_owned()),
        );
    }
    if role == Role::Worker {
        for v in crate::providers::vendor::VENDORS {
            names.extend(
                [v.key_var, v.url_var, v.legacy_url_var, v.models_var]
                    .into_iter()
                    .flatten()
                    .map(str::to_owned),
            );
            for suffix in ["TIER", "REASONING_MODEL", "EMBEDDING_MODELS"] {
                names.push(format!("{}_{suffix}", v.env_prefix));
            }
        }
    }
    names.retain(|n| n != "D8_DATA_DIR" && n != "POLL_INTERVAL");
    names.sort();
    names.dedup();
    names
}

/// The variables among [`setting_names`] that hold a path (their flag
/// parses a `PathBuf`, e.g. `D8_CONFIG`, `D8_PRICES`).
fn path_setting_names() -> Vec<String> {
    use clap::CommandFactory;
    let cli = crate::cli::Cli::command();
    let path = std::any::TypeId::of::<PathBuf>();
    cli.get_subcommands()
        .flat_map(|c| c.get_arguments())
        .chain(cli.get_arguments())
        .filter(|a| a.get_value_parser().type_id() == path)
        .filter_map(|a| a.get_env())
        .map(|e| e.to_string_lossy().into_owned())
        .collect()
}

/// The settings of `role` present in `env`, in name order. A relative
/// path is made absolute against `cwd`: a service starts elsewhere.
pub fn settings_from(
    role: Role,
    env: impl IntoIterator<Item = (String, String)>,
    cwd: &Path,
) -> Vec<(String, String)> {
    let names = setting_names(role);
    let paths = path_setting_names();
    let mut found: Vec<(String, String)> = env
        .into_iter()
        .filter(|(k, _)| names.binary_search(k).is_ok())
        // No d8 setting has whitespace at either end, and values arrive
        // with it (Windows' `set K=v & …` keeps the space before `&`).
        .map(|(k, v)| (k, v.trim().to_owned()))
        .map(|(k, v)| {
            if paths.contains(&k) && !v.is_empty() && Path::new(&v).is_relative() {
                let abs = cwd.join(&v).to_string_lossy().into_owned();
                (k, abs)
            } else {
                (k, v)
            }
        })
        .collect();
    found.sort();
    found
}

/// The arguments the service manager starts d8 with (launchd and
/// Windows): the role and scope only, never a setting.
pub fn run_args(role: Role, scope: Scope) -> [String; 4] {
    [
        "service".into(),
        "run".into(),
        format!("--{}", role.as_str()),
        format!("--{}", scope.as_str()),
    ]
}

/// What `install` and `uninstall` did, a line each, said as it happens:
/// when a later step fails (the service manager refuses to start the
/// service), the person still learns what the earlier ones changed.
pub struct Progress<'a> {
    say: &'a mut dyn FnMut(&str),
    lines: usize,
}

impl<'a> Progress<'a> {
    /// Each line goes to `say` when it is pushed.
    pub fn new(say: &'a mut dyn FnMut(&str)) -> Self {
        Self { say, lines: 0 }
    }

    /// Says one step that was taken.
    pub fn push(&mut self, line: String) {
        (self.say)(&line);
        self.lines += 1;
    }

    /// Nothing was said yet.
    pub fn is_empty(&self) -> bool {
        self.lines == 0
    }
}

/// What `status` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// The entry exists (unit file, plist, registered service).
    pub installed: bool,
    /// Where the entry is (a unit file or plist), when it is a file.
    pub entry: Option<PathBuf>,
    /// The service manager says it runs.
    pub running: bool,
    /// In a few words (`enabled, active`, `starts at boot, running`, …).
    pub detail: String,
}

#[cfg(unix)]
/// Runs a service-manager command; its output, or an error with what it
/// said.
pub(crate) fn run_tool(program: &str, args: &[&str]) -> Result<String, ServiceError> {
    let out = std::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| ServiceError::Manager(format!("cannot run {program}: {e}")))?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if out.status.success() {
        Ok(text)
    } else {
        let err = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        Err(ServiceError::Manager(format!(
            "`{program} {}` failed: {}",
            args.join(" "),
            if err.is_empty() { text } else { err }
        )))
    }
}

/// On Unix a system service is root's to install or remove; said before
/// anything is touched. (Windows answers "access denied" itself.)
fn needs_root(plan: &Plan) -> Result<(), ServiceError> {
    if cfg!(unix) && plan.scope == Scope::System && !is_root() {
        return Err(ServiceError::Unsupported(format!(
            "the {} system service is root's to change: run this with sudo, or pass --user for one that starts at your login",
            plan.role.service_name()
        )));
    }
    Ok(())
}

/// What refuses an install before anything is written: the rights it
/// needs, and on Linux a system service's executable and the files its
/// settings point at.
pub fn preflight(plan: &Plan, settings: &[(String, String)]) -> Result<(), ServiceError> {
    needs_root(plan)?;
    #[cfg(all(unix, not(target_os = "macos")))]
    if plan.scope == Scope::System {
        systemd::check_root_only(&plan.exe)?;
        let paths = path_setting_names();
        for (k, v) in settings {
            if paths.contains(k) && !v.is_empty() {
                systemd::check_service_can_read(k, Path::new(v))?;
            }
        }
    }
    #[cfg(not(all(unix, not(target_os = "macos"))))]
    let _ = settings;
    Ok(())
}

/// Installs (and with `start`, starts) the service of `plan`, writing
/// `settings` into its env file (merged with what it holds), and tells
/// `done` each step as it is taken.
pub fn install(
    plan: &Plan,
    settings: &[(String, String)],
    start: bool,
    done: &mut Progress,
) -> Result<(), ServiceError> {
    preflight(plan, settings)?;
    #[cfg(windows)]
    windows::prepare(plan)?;
    env_file::update(plan, settings)?;
    done.push(format!(
        "settings: {} ({})",
        plan.env_file.display(),
        if settings.is_empty() {
            "no d8 variable in this environment: nothing set".to_owned()
        } else {
            settings
                .iter()
                .map(|(k, _)| k.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        }
    ));
    #[cfg(windows)]
    return windows::install(plan, start, done);
    #[cfg(target_os = "macos")]
    return launchd::install(plan, start, done);
    #[cfg(all(unix, not(target_os = "macos")))]
    return systemd::install(plan, start, done);
}

/// Stops and removes the service of `plan`. Its data dir and env file
/// stay (they hold the worker's identity and keys); the last line says
/// where.
pub fn uninstall(plan: &Plan, done: &mut Progress) -> Result<(), ServiceError> {
    needs_root(plan)?;
    #[cfg(windows)]
    windows::uninstall(plan, done)?;
    #[cfg(target_os = "macos")]
    launchd::uninstall(plan, done)?;
    #[cfg(all(unix, not(target_os = "macos")))]
    systemd::uninstall(plan, done)?;
    done.push(format!(
        "kept: {} and {} (delete them to forget this {})",
        plan.env_file.display(),
        plan.data_dir.display(),
        plan.role.as_str()
    ));
    Ok(())
}

/// What the service manager says of the service of `plan`.
pub fn status(plan: &Plan) -> Result<Status, ServiceError> {
    #[cfg(windows)]
    return windows::status(plan);
    #[cfg(target_os = "macos")]
    return launchd::status(plan);
    #[cfg(all(unix, not(target_os = "macos")))]
    return systemd::status(plan);
}

/// What [`key_env_settings`] found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct KeyEnv {
    /// Variables set here, with their values.
    pub found: Vec<(String, String)>,
    /// Variables the file names that are not set here.
    pub missing: Vec<String>,
}

/// The variables a worker file (`D8_CONFIG` among `settings`) names with
/// `key_env`, taken from `env`: the service finds them in its env file
/// like the vendors' own variables. Returns those found and the names
/// `env` lacks (to point out). A file that cannot be read or parsed is
/// refused here: the worker would fail at each start. Names a process
/// lives by (`PATH`, `HOME`, `LD_…`) are never copied, whatever the file
/// says.
pub fn key_env_settings(
    settings: &[(String, String)],
    env: impl Fn(&str) -> Option<String>,
) -> Result<KeyEnv, ServiceError> {
    const NEVER: [&str; 10] = [
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "SHELL",
        "PWD",
        "TMPDIR",
        "LANG",
        "TERM",
        "SYSTEMROOT",
    ];
    let Some((_, path)) = settings.iter().find(|(k, _)| k == "D8_CONFIG") else {
        return Ok(Default::default());
    };
    let file = crate::providers::file::WorkerFile::load(Path::new(path))
        .map_err(|e| ServiceError::Unsupported(e.to_string()))?;
    let (mut found, mut missing) = (Vec::<(String, String)>::new(), Vec::<String>::new());
    for name in file.providers.iter().filter_map(|p| p.key_env.as_deref()) {
        let seen = settings.iter().chain(&found).any(|(k, _)| k == name)
            || missing.iter().any(|m| m == name);
        if seen || NEVER.contains(&name) || name.starts_with("LD_") || name.starts_with("DYLD_") {
            continue;
        }
        match env(name)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
        {
            Some(v) => found.push((name.to_owned(), v)),
            None => missing.push(name.to_owned()),
        }
    }
    Ok(KeyEnv { found, missing })
}

/// Keys a worker's settings hold for vendors it does not run, as
/// `(key variable, provider kind)`, and the providers it runs.
/// `GROQ_API_KEY=… d8 service install` over settings saying
/// `D8_PROVIDERS=echo`, or none, would leave groq unused, silently.
/// The choice is made as `d8 join` makes it: `D8_PROVIDERS`, else
/// `WORKER_TYPE`; with a worker file (`D8_CONFIG`) the file decides, and
/// nothing is said.
pub fn unused_keys(vars: &[(String, String)]) -> (Vec<(&'static str, &'static str)>, Vec<String>) {
    use crate::providers::vendor;
    let get = |k: &str| {
        vars.iter()
            .rev()
            .find(|(name, v)| name == k && !v.trim().is_empty())
            .map(|(_, v)| v.trim())
    };
    if get("D8_CONFIG").is_some() {
        return (Vec::new(), Vec::new());
    }
    let running: Vec<String> = match get("D8_PROVIDERS") {
        Some(list) => list
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| vendor::find(p).map_or(p, |v| v.kind).to_owned())
            .collect(),
        None => get("WORKER_TYPE")
            .map(|t| vec![vendor::by_worker_type(t).map_or(t, |v| v.kind).to_owned()])
            .unwrap_or_default(),
    };
    let unused = vendor::VENDORS
        .iter()
        .filter_map(|v| Some((v.key_var?, v.kind)))
        .filter(|(key, kind)| get(key).is_some() && !running.iter().any(|r| r == kind))
        .collect();
    (unused, running)
}

/// One line from a worker's status file (`state`, and where to), if it
/// has one.
fn worker_line(data_dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(data_dir.join(crate::node::files::STATUS)).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    let mut line = v["state"].as_str()?.to_owned();
    if let Some(o) = v["orchestrator"].as_str() {
        line += &format!(" (orchestrator {o})");
    }
    if let Some(e) = v["last_error"].as_str() {
        line += &format!("; last error: {e}");
    }
    Some(line)
}

/// What `install` points out once the env file is written: `vars` is
/// that file as the service will read it, `unset` the `key_env` names the
/// environment lacked, `enrolled` whether the worker has its identity.
fn install_notes(
    plan: &Plan,
    vars: &[(String, String)],
    unset: &[String],
    enrolled: bool,
) -> Vec<String> {
    let has = |name: &str| vars.iter().any(|(k, v)| k == name && !v.trim().is_empty());
    let mut notes: Vec<String> = unset
        .iter()
        .filter(|name| !has(name))
        .map(|name| format!(
            "note: the worker file names {name} (key_env), which is not set here: run again with it set, or add it to {}",
            plan.env_file.display()
        ))
        .collect();
    match plan.role {
        Role::Worker => {
            let (unused, running) = unused_keys(vars);
            if !unused.is_empty() {
                // echo (it answers with the prompt) is never suggested
                // beside a real provider: routed an agent's task, it would
                // answer it.
                let mut list: Vec<&str> = running
                    .iter()
                    .map(String::as_str)
                    .filter(|k| *k != "echo")
                    .collect();
                list.extend(unused.iter().map(|(_, kind)| *kind));
                let keys: Vec<&str> = unused.iter().map(|(k, _)| *k).collect();
                notes.push(format!(
                    "note: {} set, but this worker runs {}: set D8_PROVIDERS={} (in {}, or run again with it) to use {}",
                    keys.join(", "),
                    if running.is_empty() {
                        "no provider".to_owned()
                    } else {
                        format!("only {}", running.join(","))
                    },
                    list.join(","),
                    plan.env_file.display(),
                    if keys.len() == 1 { "it" } else { "them" }
                ));
            }
            if !enrolled && !has("D8_TOKEN") {
                notes.push(format!(
                    "note: this worker has not joined yet and its settings hold no D8_TOKEN; run again as {RUN_AGAIN_WITH_TOKEN}"
                ));
            }
        }
        Role::Orchestrator => notes.push(format!(
            "join token and API key: in {} (join-token, api-key)",
            plan.data_dir.display()
        )),
    }
    notes
}

/// How to give the join token to `d8 service install`, in the syntax of
/// this OS's prompt (cmd's `set "K=v" &` keeps no stray space in the value).
#[cfg(windows)]
const RUN_AGAIN_WITH_TOKEN: &str =
    r#"set "D8_TOKEN=<token printed by d8 serve>" & d8.exe service install"#;
#[cfg(not(windows))]
const RUN_AGAIN_WITH_TOKEN: &str = "D8_TOKEN=<token printed by d8 serve> d8 service install";

/// `d8 service install|uninstall|status`: prints what was done or found;
/// returns the exit status.
pub fn command(action: &crate::cli::ServiceAction) -> anyhow::Result<i32> {
    use crate::cli::ServiceAction;
    let exe = std::env::current_exe()
        .map_err(|e| anyhow::anyhow!("cannot tell where this d8 executable is: {e}"))?;
    // The real file behind a symlink (`/usr/local/bin/d8` → …) on Unix; on
    // Windows canonicalize gives a `\\?\` path, which is not one to register.
    #[cfg(unix)]
    let exe = exe.canonicalize().unwrap_or(exe);
    let dirs = Dirs::here();
    match action {
        ServiceAction::Install { target, no_start } => {
            let plan = plan(target.role(), target.scope(), &exe, &dirs)?;
            let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
            let mut settings = settings_from(plan.role, std::env::vars(), &cwd);
            let mut unset = Vec::new();
            // The worker file is read below only once the service could.
            preflight(&plan, &settings)?;
            if plan.role == Role::Worker {
                let keys = key_env_settings(&settings, |k| std::env::var(k).ok())?;
                settings.extend(keys.found);
                settings.sort();
                unset = keys.missing;
            }
            let mut say = |line: &str| crate::out!("{line}");
            install(&plan, &settings, !no_start, &mut Progress::new(&mut say))?;
            // What the service will read: the env file as it now stands.
            let vars: Vec<(String, String)> = dotenvy::from_path_iter(&plan.env_file)
                .map(|lines| lines.filter_map(Result::ok).collect())
                .unwrap_or_default();
            let enrolled = plan
                .data_dir
                .join(crate::node::files::WORKER_CERT)
                .is_file();
            for note in install_notes(&plan, &vars, &unset, enrolled) {
                crate::out!("{note}");
            }
            Ok(0)
        }
        ServiceAction::Uninstall { target } => {
            let plan = plan(target.role(), target.scope(), &exe, &dirs)?;
            let mut say = |line: &str| crate::out!("{line}");
            uninstall(&plan, &mut Progress::new(&mut say))?;
            Ok(0)
        }
        ServiceAction::Status { target } => {
            let asked = target.worker || target.orchestrator;
            let roles = if asked {
                vec![target.role()]
            } else {
                vec![Role::Worker, Role::Orchestrator]
            };
            // Without a role, the exit status is about the installed ones
            // (a machine runs a worker or an orchestrator, rarely both).
            let mut codes = Vec::new();
            for role in roles {
                let plan = plan(role, target.scope(), &exe, &dirs)?;
                let st = status(&plan)?;
                if st.running {
                    codes.push(0);
                } else if st.installed {
                    codes.push(3);
                } else if asked {
                    codes.push(4);
                }
                crate::out!(
                    "{} ({} scope): {}",
                    role.service_name(),
                    plan.scope.as_str(),
                    if st.installed {
                        st.detail.clone()
                    } else {
                        "not installed".into()
                    }
                );
                if st.installed {
                    if let Some(e) = &st.entry {
                        crate::out!("  entry     {}", e.display());
                    }
                    crate::out!("  settings  {}", plan.env_file.display());
                    crate::out!("  data      {}", plan.data_dir.display());
                    if let Some(l) = &plan.log_file {
                        crate::out!("  log       {}", l.display());
                    }
                    if role == Role::Worker
                        && let Some(line) = worker_line(&plan.data_dir)
                    {
                        crate::out!("  worker    {line}");
                    }
                }
            }
            Ok(codes.into_iter().max().unwrap_or(4))
        }
        ServiceAction::Run { .. } => {
            anyhow::bail!("`d8 service run` is started by the service manager")
        }
    }
}

/// For `d8 service run`: the plan, with the env file loaded into this
/// process's environment (its values win over inherited ones). Call it
/// before any thread starts.
pub fn prepare_run(target: &crate::cli::ServiceTarget, dir: Option<&Path>) -> anyhow::Result<Plan> {
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("d8"));
    let mut plan = plan(target.role(), target.scope(), &exe, &Dirs::here())?;
    if let Some(dir) = dir {
        plan.env_file = dir.join(format!("{}.env", plan.role.as_str()));
        plan.data_dir = dir.join(plan.role.as_str());
        plan.log_file = Some(plan.data_dir.join("service.log"));
    }
    match dotenvy::from_path_override(&plan.env_file) {
        Ok(()) => Ok(plan),
        // dotenvy's message quotes the line, which may hold a key: say
        // which line instead.
        Err(dotenvy::Error::LineParse(text, _)) => {
            let number = std::fs::read_to_string(&plan.env_file)
                .ok()
                .zip(text.lines().next().map(str::trim))
                .and_then(|(all, first)| all.lines().position(|l| l.trim() == first))
                .map_or_else(String::new, |i| format!(" {}", i + 1));
            anyhow::bail!("{}: line{number} is not KEY=value", plan.env_file.display())
        }
        Err(dotenvy::Error::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => anyhow::bail!(
            "no settings file at {}: `d8 service install` writes it",
            plan.env_file.display()
        ),
        Err(e) => anyhow::bail!("{}: {e}", plan.env_file.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dirs() -> Dirs {
        Dirs {
            home: PathBuf::from("/home/ana"),
            config: PathBuf::from("/home/ana/.config"),
            system_root: PathBuf::from("/srv/root"),
        }
    }

    #[cfg(all(unix, not(target_os = "macos")))]
    #[test]
    fn linux_plans_put_units_settings_and_state_where_systemd_and_d8_look() {
        let exe = Path::new("/usr/local/bin/d8");
        let p = plan(Role::Worker, Scope::System, exe, &dirs()).expect("plan");
        assert_eq!(
            p.entry.as_deref(),
            Some(Path::new("/srv/root/etc/systemd/system/d8-worker.service"))
        );
        assert_eq!(p.env_file, Path::new("/srv/root/etc/d8/worker.env"));
        assert_eq!(p.data_dir, Path::new("/srv/root/var/lib/d8/worker"));
        let p = plan(Role::Orchestrator, Scope::User, exe, &dirs()).expect("plan");
        assert_eq!(
            p.entry.as_deref(),
            Some(Path::new(
                "/home/ana/.config/systemd/user/d8-orchestrator.service"
            ))
        );
        assert_eq!(
            p.env_file,
            Path::new("/home/ana/.config/d8/orchestrator.env")
        );
        // The same data dir as `d8 serve` run by hand by this user.
        assert_eq!(
            p.data_dir,
            crate::node::files::default_data_dir("orchestrator")
        );
    }

    #[cfg(target_os = "macos")]
    #[test]
    fn macos_plans_use_a_launch_agent_of_the_user() {
        let exe = Path::new("/Applications/d8.app/Contents/MacOS/d8");
        let p = plan(Role::Worker, Scope::User, exe, &dirs()).expect("plan");
        assert_eq!(
            p.entry.as_deref(),
            Some(Path::new(
                "/home/ana/Library/LaunchAgents/org.d8.worker.plist"
            ))
        );
        assert_eq!(p.env_file, Path::new("/home/ana/.config/d8/worker.env"));
        assert!(plan(Role::Worker, Scope::System, exe, &dirs()).is_err());
    }

    #[cfg(windows)]
    #[test]
    fn windows_plans_keep_settings_and_state_under_program_data() {
        let d = Dirs {
            system_root: PathBuf::from(r"C:\ProgramData"),
            ..dirs()
        };
        let exe = Path::new(r"C:\Users\José Müller\AppData\Local\Programs\d8\d8.exe");
        let p = plan(Role::Worker, Scope::System, exe, &d).expect("plan");
        assert_eq!(p.entry, None);
        assert_eq!(p.env_file, Path::new(r"C:\ProgramData\d8\worker.env"));
        assert_eq!(p.data_dir, Path::new(r"C:\ProgramData\d8\worker"));
        assert_eq!(
            p.log_file.as_deref(),
            Some(Path::new(r"C:\ProgramData\d8\worker\service.log"))
        );
        // A per-user d8.exe at login would open a console window: refused,
        // with the way that works.
        let e = plan(Role::Worker, Scope::User, exe, &d).expect_err("user scope");
        assert!(e.to_string().contains("administrator"), "{e}");
    }

    #[test]
    fn settings_are_what_the_role_reads_and_never_the_data_dir() {
        let env = [
            ("GROQ_API_KEY", "gsk_1"),
            ("D8_PROVIDERS", "groq"),
            ("ORCHESTRATOR_URL", "10.0.0.2"),
            ("D8_TOKEN", "D8-1-x"),
            ("D8_DATA_DIR", "/tmp/elsewhere"),
            ("GEMINI_TIER", "paid"),
            ("HOME", "/root"),
            ("PATH", "/usr/bin"),
            ("D8_LOG", "debug"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        let cwd = Path::new("/home/ana/cluster");
        let w = settings_from(Role::Worker, env.clone(), cwd);
        let names: Vec<&str> = w.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "D8_LOG",
                "D8_PROVIDERS",
                "D8_TOKEN",
                "GEMINI_TIER",
                "GROQ_API_KEY",
                "ORCHESTRATOR_URL"
            ]
        );
        // The orchestrator reads no vendor key and no worker settings.
        let o = settings_from(Role::Orchestrator, env, cwd);
        let names: Vec<&str> = o.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["D8_LOG"]);
        assert!(setting_names(Role::Orchestrator).contains(&"D8_NO_MDNS".to_owned()));
    }

    #[cfg(unix)]
    #[test]
    fn relative_paths_in_settings_are_made_absolute() {
        let cwd = Path::new("/home/ana/cluster");
        // A relative path would be read from the service's own folder.
        let files = [
            ("D8_CONFIG", "worker.toml"),
            ("D8_PRICES", "/etc/d8/prices.toml"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        let w = settings_from(Role::Worker, files.clone(), cwd);
        assert_eq!(
            w,
            [(
                "D8_CONFIG".to_owned(),
                "/home/ana/cluster/worker.toml".to_owned()
            )]
        );
        let o = settings_from(Role::Orchestrator, files, cwd);
        assert_eq!(
            o,
            [("D8_PRICES".to_owned(), "/etc/d8/prices.toml".to_owned())]
        );
    }

    #[test]
    fn keys_for_providers_the_worker_does_not_run_are_named() {
        let vars = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        // The package's settings plus a key: groq would stay unused.
        let (unused, running) = unused_keys(&vars(&[
            ("D8_PROVIDERS", "echo"),
            ("GROQ_API_KEY", "gsk_x"),
            ("ANTHROPIC_API_KEY", "sk-ant"),
        ]));
        assert_eq!(
            unused,
            [("ANTHROPIC_API_KEY", "anthropic"), ("GROQ_API_KEY", "groq")]
        );
        assert_eq!(running, ["echo"]);
        // An alias and spaces count as the provider; an empty key does not.
        let (unused, _) = unused_keys(&vars(&[
            ("D8_PROVIDERS", " claude , groq"),
            ("GROQ_API_KEY", "gsk_x"),
            ("ANTHROPIC_API_KEY", "sk-ant"),
            ("GEMINI_API_KEY", ""),
        ]));
        assert!(unused.is_empty(), "{unused:?}");
        // WORKER_TYPE chooses when D8_PROVIDERS is unset (as `d8 join`).
        let (unused, running) = unused_keys(&vars(&[
            ("WORKER_TYPE", "claude"),
            ("ANTHROPIC_API_KEY", "sk-ant"),
            ("GROQ_API_KEY", "gsk_x"),
        ]));
        assert_eq!(unused, [("GROQ_API_KEY", "groq")]);
        assert_eq!(running, ["anthropic"]);
        // Nothing chosen at all.
        let (unused, running) = unused_keys(&vars(&[("GROQ_API_KEY", "gsk_x")]));
        assert_eq!(unused, [("GROQ_API_KEY", "groq")]);
        assert!(running.is_empty());
        // A later line wins, as in the file.
        let (unused, _) = unused_keys(&vars(&[
            ("D8_PROVIDERS", "echo"),
            ("GROQ_API_KEY", "gsk_x"),
            ("D8_PROVIDERS", "groq"),
        ]));
        assert!(unused.is_empty());
        // A worker file decides its own providers.
        let (unused, _) = unused_keys(&vars(&[
            ("D8_CONFIG", "/etc/d8/worker.toml"),
            ("GROQ_API_KEY", "gsk_x"),
        ]));
        assert!(unused.is_empty());
    }

    #[test]
    fn keys_a_worker_file_names_with_key_env_are_copied_from_the_environment() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("worker.toml");
        std::fs::write(
            &file,
            "[[providers]]\nkind = \"gemini\"\nkey_env = \"MY_GEMINI_KEY\"\n\n\
             [[providers]]\nkind = \"groq\"\nkey_env = \"PATH\"\n\n\
             [[providers]]\nkind = \"openai\"\nkey_env = \"MY_OPENAI_KEY\"\n\n\
             [[providers]]\nkind = \"anthropic\"\nkey_env = \"MY_GEMINI_KEY\"\n",
        )
        .expect("write");
        let env = |k: &str| match k {
            "MY_GEMINI_KEY" => Some("AIza-secret".to_owned()),
            "PATH" => Some("/usr/bin".to_owned()),
            _ => None,
        };
        let settings = vec![("D8_CONFIG".to_owned(), file.to_string_lossy().into_owned())];
        let keys = key_env_settings(&settings, env).expect("read");
        // Once each; PATH never; the unset one named apart.
        assert_eq!(
            keys.found,
            [("MY_GEMINI_KEY".to_owned(), "AIza-secret".to_owned())]
        );
        assert_eq!(keys.missing, ["MY_OPENAI_KEY"]);
        // Without a worker file there is nothing to copy.
        assert_eq!(
            key_env_settings(&[], env).expect("none"),
            Default::default()
        );
        // A file the worker could not read is refused, by its path.
        std::fs::write(&file, "[[providers]]\nkind = ").expect("write");
        let e = key_env_settings(&settings, env).expect_err("broken file");
        assert!(e.to_string().contains(&*file.to_string_lossy()), "{e}");
    }

    #[test]
    fn settings_are_kept_without_surrounding_whitespace() {
        // cmd's `set GROQ_API_KEY=gsk_x & set D8_PROVIDERS=groq & …`.
        let env = [("GROQ_API_KEY", "gsk_x "), ("D8_PROVIDERS", "groq ")]
            .map(|(k, v)| (k.to_owned(), v.to_owned()));
        assert_eq!(
            settings_from(Role::Worker, env, Path::new("/")),
            [
                ("D8_PROVIDERS".to_owned(), "groq".to_owned()),
                ("GROQ_API_KEY".to_owned(), "gsk_x".to_owned())
            ]
        );
    }

    #[cfg(all(unix, not(target_os = "macos")))]
    #[test]
    fn install_notes_come_from_the_env_file_as_the_service_reads_it() {
        let exe = Path::new("/usr/local/bin/d8");
        let worker = plan(Role::Worker, Scope::User, exe, &dirs()).expect("plan");
        let vars = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        let unset = ["TEAM_KEY".to_owned(), "MY_GEMINI_KEY".to_owned()];
        let notes = install_notes(
            &worker,
            &vars(&[
                ("D8_PROVIDERS", "groq"),
                ("MY_GEMINI_KEY", "in the file already"),
            ]),
            &unset,
            false,
        );
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(notes[0].starts_with("note: the worker file names TEAM_KEY (key_env)"));
        assert!(notes[1].contains("has not joined yet") && notes[1].contains("D8_TOKEN=<token"));
        // A token in the file, or an identity, and nothing is left to say.
        let ready = vars(&[("D8_PROVIDERS", "groq"), ("D8_TOKEN", "D8-1-x")]);
        assert!(install_notes(&worker, &ready, &[], false).is_empty());
        assert!(install_notes(&worker, &vars(&[("D8_PROVIDERS", "groq")]), &[], true).is_empty());
        let orchestrator = plan(Role::Orchestrator, Scope::User, exe, &dirs()).expect("plan");
        assert_eq!(
            install_notes(&orchestrator, &[], &[], false),
            [format!(
                "join token and API key: in {} (join-token, api-key)",
                orchestrator.data_dir.display()
            )]
        );
    }
}
