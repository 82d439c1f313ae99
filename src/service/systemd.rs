//! systemd units (Linux): system units in `/etc/systemd/system`, user
//! units in `~/.config/systemd/user`.
//!
//! A system unit written here runs under `DynamicUser=` (systemd makes a
//! throwaway account per start) with `StateDirectory=d8/<role>`, and reads
//! its settings with `EnvironmentFile=`, which systemd opens as root before
//! dropping privileges: the env file stays root's, mode 0600. A unit of the
//! same name that a package installed is used as it is.

use super::{MARKER, Plan, Role, Scope};
#[cfg(all(unix, not(target_os = "macos")))]
use super::{ServiceError, Status};

/// Quotes a path for `ExecStart=` (systemd.service(5), "Command lines":
/// double quotes, backslash escapes) and escapes `%` (systemd.unit(5)
/// specifiers).
fn exec_arg(s: &str) -> String {
    let s = s.replace('%', "%%");
    if s.chars()
        .all(|c| c.is_ascii_alphanumeric() || "/_.-+".contains(c))
    {
        s
    } else {
        format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
    }
}

/// One `Environment=` assignment: systemd splits the line on whitespace,
/// so an assignment holding any is quoted whole; `%` is escaped.
fn environment(key: &str, value: &str) -> String {
    let a = format!("{key}={}", value.replace('%', "%%"));
    if a.contains(char::is_whitespace) || a.contains('"') {
        format!(
            "Environment=\"{}\"",
            a.replace('\\', "\\\\").replace('"', "\\\"")
        )
    } else {
        format!("Environment={a}")
    }
}

/// The unit file for `plan`.
pub fn unit(plan: &Plan) -> String {
    let role = plan.role.as_str();
    let exe = exec_arg(&plan.exe.to_string_lossy());
    let cmd = plan.role.command();
    // `EnvironmentFile=` takes one path as it is (no quoting, no splitting);
    // only specifiers need escaping.
    let env_file = plan.env_file.to_string_lossy().replace('%', "%%");
    let stop = match plan.role {
        // SIGINT drains: tasks in flight finish, then the worker leaves.
        Role::Worker => "KillSignal=SIGINT\nTimeoutStopSec=90\n",
        // SIGTERM stops it cleanly (connections closed, store flushed).
        Role::Orchestrator => "KillSignal=SIGTERM\n",
    };
    let mut text = format!(
        "# {MARKER}; `d8 service uninstall` removes it.\n# Settings (keys, token, providers): {}\n[Unit]\nDescription=d8 {role}\n",
        plan.env_file.display()
    );
    // The system manager knows when the network is up; a user's manager
    // has no such target (the worker retries until it connects anyway).
    if plan.scope == Scope::System {
        text += "Wants=network-online.target\nAfter=network-online.target\n";
    }
    text += "\n[Service]\n";
    match plan.scope {
        Scope::System => {
            text += &format!(
                "DynamicUser=yes\nStateDirectory=d8/{role}\nEnvironment=D8_DATA_DIR=%S/d8/{role}\nEnvironmentFile=-{env_file}\n"
            );
        }
        Scope::User => {
            let data = environment("D8_DATA_DIR", &plan.data_dir.to_string_lossy());
            text += &format!("{data}\nEnvironmentFile=-{env_file}\n");
        }
    }
    text += &format!("ExecStart={exe} {cmd}\n{stop}Restart=on-failure\nRestartSec=2\n");
    text += "# A descriptor per worker, HTTP client and event subscriber.\nLimitNOFILE=65536\nNoNewPrivileges=true\n";
    if plan.scope == Scope::System {
        text += "ProtectSystem=strict\nProtectHome=true\nPrivateTmp=true\n";
    }
    text += &format!(
        "\n[Install]\nWantedBy={}\n",
        match plan.scope {
            Scope::System => "multi-user.target",
            Scope::User => "default.target",
        }
    );
    text
}

/// Where a package or `install.sh` may have put a unit of this name, for
/// a system plan; the first that exists.
#[cfg(all(unix, not(target_os = "macos")))]
fn packaged(plan: &Plan) -> Option<std::path::PathBuf> {
    let name = format!("{}.service", plan.role.service_name());
    let mine = plan.entry.as_ref()?;
    if let Ok(text) = std::fs::read_to_string(mine) {
        // Ours is rewritten; someone else's in /etc is used as it is.
        return (!text.contains(MARKER)).then(|| mine.clone());
    }
    if plan.scope == Scope::User {
        return None;
    }
    ["/usr/lib/systemd/system", "/lib/systemd/system"]
        .iter()
        .map(|d| std::path::Path::new(d).join(&name))
        .find(|p| p.is_file())
}

#[cfg(all(unix, not(target_os = "macos")))]
fn systemctl(plan: &Plan, args: &[&str]) -> Result<String, ServiceError> {
    let mut all = Vec::with_capacity(args.len() + 1);
    if plan.scope == Scope::User {
        all.push("--user");
    }
    all.extend_from_slice(args);
    super::run_tool("systemctl", &all)
}

/// A system service hands its keys to `exe`: refuse one that a user other
/// than root could replace (the file, or any folder above it, owned by
/// someone else or writable by others; a sticky folder like /tmp is fine).
#[cfg(unix)]
pub fn check_root_only(exe: &std::path::Path) -> Result<(), super::ServiceError> {
    use std::os::unix::fs::MetadataExt;
    let mut at = Some(exe);
    while let Some(p) = at {
        let m = std::fs::metadata(p).map_err(|e| crate::node::files::FileError {
            path: p.to_path_buf(),
            source: e,
        })?;
        let others_write = m.mode() & 0o022 != 0 && !(m.is_dir() && m.mode() & 0o1000 != 0);
        if m.uid() != 0 || others_write {
            return Err(super::ServiceError::Unsupported(format!(
                "{} can be changed by a user other than root, and a system service would run it with the keys: install d8 where only root writes (sudo install -m 0755 {} /usr/local/bin/d8) and run that one, or use --user",
                p.display(),
                exe.display()
            )));
        }
        at = p.parent();
    }
    Ok(())
}

/// A file a system service is pointed at (`D8_CONFIG`, `D8_PRICES`) must
/// be one the service's own user can read: the units run as a dynamic user
/// (or the package's `d8`) with `ProtectHome=true`, so home folders look
/// empty to it, and elsewhere only what others may read is readable.
/// Refused before anything is written, naming the variable (a worker
/// would otherwise fail at each start with "cannot read").
#[cfg(unix)]
pub fn check_service_can_read(
    var: &str,
    path: &std::path::Path,
) -> Result<(), super::ServiceError> {
    use std::os::unix::fs::MetadataExt;
    let refuse = |why: String| {
        Err(super::ServiceError::Unsupported(format!(
            "{var}={}: {why}; or use --user",
            path.display()
        )))
    };
    if ["/home", "/root", "/run/user"]
        .iter()
        .any(|h| path.starts_with(h))
    {
        return refuse(format!(
            "a system service does not see home folders (ProtectHome=): copy the file to /etc/d8/ (sudo install -m 0644 {} /etc/d8/) and run again with that path",
            path.display()
        ));
    }
    let file = match std::fs::metadata(path) {
        Ok(m) if m.is_file() => m,
        Ok(_) => return refuse("not a file".into()),
        Err(e) => return refuse(format!("cannot be read ({e})")),
    };
    if file.mode() & 0o004 == 0 {
        return refuse(format!(
            "the service runs as its own user, who may not read it: sudo chmod o+r {}",
            path.display()
        ));
    }
    for dir in path.ancestors().skip(1) {
        if let Ok(m) = std::fs::metadata(dir)
            && m.mode() & 0o001 == 0
        {
            return refuse(format!(
                "the service runs as its own user, who may not enter {}: sudo chmod o+x {}",
                dir.display(),
                dir.display()
            ));
        }
    }
    Ok(())
}

#[cfg(all(unix, not(target_os = "macos")))]
pub(super) fn install(
    plan: &Plan,
    start: bool,
    done: &mut super::Progress,
) -> Result<(), ServiceError> {
    use crate::node::files;
    let name = plan.role.service_name();
    let unit = match packaged(plan) {
        Some(existing) => {
            done.push(format!(
                "unit: {} (installed by a package; used as it is)",
                existing.display()
            ));
            existing
        }
        None => {
            let entry = plan
                .entry
                .as_ref()
                .ok_or_else(|| ServiceError::Manager("no unit path".into()))?;
            if let Some(dir) = entry.parent() {
                std::fs::create_dir_all(dir).map_err(|e| {
                    ServiceError::File(files::FileError {
                        path: dir.to_path_buf(),
                        source: e,
                    })
                })?;
            }
            files::write_file(entry, unit(plan).as_bytes(), false)?;
            done.push(format!("unit: {}", entry.display()));
            entry.clone()
        }
    };
    systemctl(plan, &["daemon-reload"]).map_err(|e| unreachable_manager(plan, &unit, e))?;
    if start {
        systemctl(plan, &["enable", "--now", &name])?;
        done.push(format!("{name}: enabled and started"));
    } else {
        systemctl(plan, &["enable", &name])?;
        done.push(format!(
            "{name}: enabled (starts at the next boot or login)"
        ));
    }
    if plan.scope == Scope::User {
        done.push(format!(
            "a user service runs while you are logged in; to start it at boot: loginctl enable-linger {}",
            std::env::var("USER").unwrap_or_else(|_| "$USER".into())
        ));
    }
    Ok(())
}

/// A systemd that does not answer (a user's without a login session: `su`,
/// ssh without lingering; a machine or container without systemd as PID 1)
/// is said in those words, with the way on.
#[cfg(all(unix, not(target_os = "macos")))]
fn unreachable_manager(plan: &Plan, unit: &std::path::Path, e: ServiceError) -> ServiceError {
    let name = plan.role.service_name();
    let then = match plan.scope {
        Scope::User => format!(
            "in a login session (or after `sudo loginctl enable-linger $USER`) run `systemctl --user enable --now {name}`"
        ),
        Scope::System => format!(
            "once systemd runs, `systemctl enable --now {name}`; without it, run `d8 {}` yourself",
            plan.role.command()
        ),
    };
    ServiceError::Manager(format!(
        "the unit is in place ({}), but systemd did not answer ({}): {then}",
        unit.display(),
        e.to_string().replace('\n', " ")
    ))
}

#[cfg(all(unix, not(target_os = "macos")))]
pub(super) fn uninstall(plan: &Plan, done: &mut super::Progress) -> Result<(), ServiceError> {
    let name = plan.role.service_name();
    // Stopping something that is not there is what was wanted.
    if systemctl(plan, &["disable", "--now", &name]).is_ok() {
        done.push(format!("{name}: stopped and disabled"));
    }
    if let Some(entry) = &plan.entry
        && std::fs::read_to_string(entry).is_ok_and(|t| t.contains(MARKER))
    {
        std::fs::remove_file(entry).map_err(|e| {
            ServiceError::File(crate::node::files::FileError {
                path: entry.clone(),
                source: e,
            })
        })?;
        done.push(format!("removed {}", entry.display()));
        let _ = systemctl(plan, &["daemon-reload"]);
    } else if let Some(p) = packaged(plan) {
        done.push(format!(
            "{} belongs to a package: left in place, disabled",
            p.display()
        ));
    }
    if done.is_empty() {
        done.push(format!("{name}: was not installed"));
    }
    Ok(())
}

#[cfg(all(unix, not(target_os = "macos")))]
pub(super) fn status(plan: &Plan) -> Result<Status, ServiceError> {
    let name = plan.role.service_name();
    // `is-enabled` prints a word and exits non-zero for most of them.
    let word = |args: &[&str]| match systemctl(plan, args) {
        Ok(s) => s,
        Err(ServiceError::Manager(m)) => {
            m.rsplit(": ").next().unwrap_or_default().trim().to_owned()
        }
        Err(e) => e.to_string(),
    };
    let enabled = word(&["is-enabled", &name]);
    let active = word(&["is-active", &name]);
    // systemctl(1)'s words for `is-enabled`; anything else is its error.
    const KNOWN: [&str; 12] = [
        "enabled",
        "enabled-runtime",
        "linked",
        "linked-runtime",
        "alias",
        "masked",
        "masked-runtime",
        "static",
        "indirect",
        "disabled",
        "generated",
        "transient",
    ];
    // And for `is-active`.
    const STATES: [&str; 7] = [
        "active",
        "inactive",
        "failed",
        "activating",
        "deactivating",
        "reloading",
        "refreshing",
    ];
    let detail = if !KNOWN.contains(&enabled.as_str()) {
        format!("systemd did not answer ({enabled})")
    } else if !STATES.contains(&active.as_str()) {
        format!("{enabled}, not known: systemd did not answer ({active})")
    } else {
        format!("{enabled}, {active}")
    };
    // The unit systemd uses: a package's, or the one written here.
    let entry = packaged(plan).or_else(|| plan.entry.clone().filter(|p| p.is_file()));
    Ok(Status {
        installed: entry.is_some(),
        entry,
        running: active == "active",
        detail,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[cfg(unix)]
    #[test]
    fn a_system_service_refuses_an_executable_others_can_replace() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let exe = dir.path().join("d8");
        std::fs::write(&exe, b"").expect("write");
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o757)).expect("chmod");
        let e = check_root_only(&exe).expect_err("world-writable");
        assert!(e.to_string().contains("/usr/local/bin/d8"), "{e}");
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        // Owned by whoever runs the test: fine only for root (CI).
        let root = std::process::Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout == b"0\n");
        assert_eq!(check_root_only(&exe).is_ok(), root);
    }

    #[cfg(unix)]
    #[test]
    fn a_system_service_is_only_pointed_at_files_its_own_user_can_read() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &std::path::Path, m: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).expect("chmod")
        };
        // Home folders are hidden from the units (ProtectHome=true).
        let e = check_service_can_read("D8_CONFIG", std::path::Path::new("/home/ana/worker.toml"))
            .expect_err("in a home folder");
        assert!(
            e.to_string().starts_with(
                "D8_CONFIG=/home/ana/worker.toml: a system service does not see home folders"
            ),
            "{e}"
        );
        assert!(
            check_service_can_read("D8_PRICES", std::path::Path::new("/root/prices.toml")).is_err()
        );

        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("worker.toml");
        std::fs::write(&file, "").expect("write");
        mode(dir.path(), 0o755);
        mode(&file, 0o600);
        let e = check_service_can_read("D8_CONFIG", &file).expect_err("owner-only");
        assert!(e.to_string().contains("sudo chmod o+r"), "{e}");
        mode(&file, 0o644);
        assert!(check_service_can_read("D8_CONFIG", &file).is_ok());
        mode(dir.path(), 0o750);
        let e = check_service_can_read("D8_CONFIG", &file).expect_err("folder closed");
        assert!(
            e.to_string()
                .contains(&format!("may not enter {}", dir.path().display())),
            "{e}"
        );
        mode(dir.path(), 0o755);
        let e = check_service_can_read("D8_CONFIG", &dir.path().join("missing.toml"))
            .expect_err("missing");
        assert!(e.to_string().contains("cannot be read"), "{e}");
        assert!(check_service_can_read("D8_CONFIG", dir.path()).is_err());
    }

    fn plan(scope: Scope, exe: &str) -> Plan {
        Plan {
            role: Role::Worker,
            scope,
            exe: PathBuf::from(exe),
            entry: None,
            env_file: PathBuf::from("/etc/d8/worker.env"),
            data_dir: PathBuf::from("/home/ana/.local/share/d8/worker"),
            log_file: None,
        }
    }

    #[test]
    fn a_system_unit_reads_keys_from_the_env_file_and_runs_as_a_dynamic_user() {
        let u = unit(&plan(Scope::System, "/usr/local/bin/d8"));
        assert!(u.contains("\nExecStart=/usr/local/bin/d8 join\n"), "{u}");
        assert!(u.contains("\nEnvironmentFile=-/etc/d8/worker.env\n"));
        assert!(u.contains("\nDynamicUser=yes\nStateDirectory=d8/worker\n"));
        assert!(u.contains("\nKillSignal=SIGINT\n"));
        assert!(u.contains("\nWantedBy=multi-user.target\n"));
        assert!(u.contains("\nWants=network-online.target\nAfter=network-online.target\n"));
        assert!(u.contains(MARKER));
        // Nothing secret can be in it: it is made from paths only.
        assert!(!u.contains("KEY="), "{u}");
    }

    #[test]
    fn odd_paths_are_quoted_and_percent_signs_escaped() {
        let mut p = plan(Scope::User, "/opt/my apps/100%/d8");
        p.env_file = PathBuf::from("/home/José Müller/.config/d8/worker.env");
        p.data_dir = PathBuf::from("/home/José Müller/.local/share/d8/worker");
        let u = unit(&p);
        assert!(
            u.contains("\nExecStart=\"/opt/my apps/100%%/d8\" join\n"),
            "{u}"
        );
        assert!(
            u.contains("\nEnvironmentFile=-/home/José Müller/.config/d8/worker.env\n"),
            "{u}"
        );
        assert!(
            u.contains("\nEnvironment=\"D8_DATA_DIR=/home/José Müller/.local/share/d8/worker\"\n"),
            "{u}"
        );
        assert!(u.contains("\nWantedBy=default.target\n"));
        assert!(!u.contains("DynamicUser"));
        assert!(!u.contains("network-online"), "{u}");
    }
}
