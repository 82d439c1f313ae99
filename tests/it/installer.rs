//! The shipped systemd units say what the README promises about them.

use std::path::Path;

fn unit(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("installer")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn units_restart_on_failure_and_raise_the_descriptor_limit() {
    for name in ["d8-orchestrator.service", "d8-worker.service"] {
        let u = unit(name);
        let lines: Vec<&str> = u.lines().map(str::trim).collect();
        // `d8 serve` exits 1 when a part of it dies, for this to restart it.
        assert!(lines.contains(&"Restart=on-failure"), "{name}");
        // The default soft limit of 1024 descriptors let 1,050 idle
        // connections lock out every legitimate client.
        let nofile = lines
            .iter()
            .find_map(|l| l.strip_prefix("LimitNOFILE="))
            .and_then(|n| n.parse::<u64>().ok());
        assert!(nofile.is_some_and(|n| n >= 65_536), "{name}: {nofile:?}");
    }
}

/// `d8 service …` as a user whose home is `home` (Linux: the user scope's
/// files are under XDG_CONFIG_HOME / XDG_DATA_HOME).
#[cfg(target_os = "linux")]
fn service(home: &Path, args: &[&str]) -> std::process::Output {
    service_with(home, args, &[])
}

/// `service` with more variables (a later value for PATH wins).
#[cfg(target_os = "linux")]
fn service_with(
    home: &Path,
    args: &[&str],
    vars: &[(&str, std::ffi::OsString)],
) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_d8"))
        .arg("service")
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(vars.iter().map(|(k, v)| (k, v)))
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .env("XDG_DATA_HOME", home.join(".local/share"))
        .output()
        .expect("run d8")
}

#[cfg(target_os = "linux")]
#[test]
fn a_service_with_a_damaged_or_missing_env_file_says_which_line_and_never_its_text() {
    let home = tempfile::tempdir().expect("tempdir");
    let out = service(home.path(), &["run", "--worker", "--user"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no settings file at"), "{err}");

    let dir = home.path().join(".config/d8");
    std::fs::create_dir_all(&dir).expect("dir");
    // A quote left open on the key's line: dotenvy's own message would
    // quote the line, key and all.
    std::fs::write(
        dir.join("worker.env"),
        "D8_PROVIDERS=echo\nGROQ_API_KEY=\"gsk_secret_never_shown\nOTHER=1\n",
    )
    .expect("write");
    let out = service(home.path(), &["run", "--worker", "--user"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 2 is not KEY=value"), "{err}");
    assert!(!err.contains("gsk_secret_never_shown"), "{err}");
}

#[cfg(target_os = "linux")]
#[test]
fn service_status_without_a_role_exits_4_when_nothing_is_installed() {
    let home = tempfile::tempdir().expect("tempdir");
    let out = service(home.path(), &["status", "--user"]);
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("d8-worker (user scope): not installed"),
        "{text}"
    );
    assert!(text.contains("d8-orchestrator (user scope): not installed"));
}

/// When the service manager fails after d8 has changed things, the lines
/// about what was already done (the env file, the unit) are printed all
/// the same, then the error.
#[cfg(target_os = "linux")]
#[test]
fn install_says_what_it_did_before_the_service_manager_failed() {
    let home = tempfile::tempdir().expect("tempdir");
    // A user's systemd without a session bus answers like this
    // (`systemctl --user` over su or ssh without lingering).
    let path = fake_systemctl(
        home.path(),
        "echo 'Failed to connect to bus: No medium found' >&2\nexit 1",
    );
    let out = service_with(
        home.path(),
        &["install", "--worker", "--user"],
        &[("PATH", path), ("D8_PROVIDERS", "echo".into())],
    );
    assert!(!out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stdout);
    let env_file = home.path().join(".config/d8/worker.env");
    let unit = home.path().join(".config/systemd/user/d8-worker.service");
    assert!(
        said.contains(&format!("settings: {} (D8_PROVIDERS)", env_file.display())),
        "{said}"
    );
    assert!(
        said.contains(&format!("unit: {}", unit.display())),
        "{said}"
    );
    assert!(unit.is_file() && env_file.is_file());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("systemd did not answer"), "{err}");
}

/// A PATH whose `systemctl` is a shell script with `body`, before the
/// real PATH.
#[cfg(target_os = "linux")]
fn fake_systemctl(home: &Path, body: &str) -> std::ffi::OsString {
    use std::os::unix::fs::PermissionsExt;
    let bin = home.join("bin");
    std::fs::create_dir_all(&bin).expect("bin");
    let systemctl = bin.join("systemctl");
    std::fs::write(&systemctl, format!("#!/bin/sh\n{body}\n")).expect("write");
    std::fs::set_permissions(&systemctl, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let mut path = std::ffi::OsString::from(&bin);
    path.push(":");
    path.push(std::env::var_os("PATH").unwrap_or_default());
    path
}

/// A key given to `d8 service install` for a provider the settings do
/// not run (here echo, which is never suggested beside it) is pointed
/// out, by its variable's name only.
#[cfg(target_os = "linux")]
#[test]
fn install_points_out_a_key_for_a_provider_the_worker_does_not_run() {
    let home = tempfile::tempdir().expect("tempdir");
    let path = fake_systemctl(home.path(), "exit 0");
    let env_file = home.path().join(".config/d8/worker.env");
    std::fs::create_dir_all(env_file.parent().expect("dir")).expect("dir");
    std::fs::write(&env_file, "# tried out first\nD8_PROVIDERS=echo\n").expect("write");
    let out = service_with(
        home.path(),
        &["install", "--worker", "--user"],
        &[
            ("PATH", path.clone()),
            ("GROQ_API_KEY", "gsk_never_shown".into()),
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains(&format!(
            "note: GROQ_API_KEY set, but this worker runs only echo: set D8_PROVIDERS=groq (in {}, or run again with it) to use it",
            env_file.display()
        )),
        "{said}"
    );
    assert!(!said.contains("gsk_never_shown"), "{said}");

    // Run again with the provider named: nothing to point out.
    let out = service_with(
        home.path(),
        &["install", "--worker", "--user"],
        &[("PATH", path), ("D8_PROVIDERS", "groq".into())],
    );
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(!said.contains("note: GROQ_API_KEY"), "{said}");
    let text = std::fs::read_to_string(&env_file).expect("env file");
    assert!(
        text.contains("\nD8_PROVIDERS=groq\n") && text.contains("GROQ_API_KEY=gsk_never_shown\n")
    );
}

/// A worker file's `key_env` variables reach the service's env file (by
/// value; printed by name only), and one not set here is pointed out.
#[cfg(target_os = "linux")]
#[test]
fn install_copies_the_keys_a_worker_file_names_with_key_env() {
    let home = tempfile::tempdir().expect("tempdir");
    let path = fake_systemctl(home.path(), "exit 0");
    let file = home.path().join("worker.toml");
    std::fs::write(
        &file,
        "[[providers]]\nkind = \"gemini\"\nkey_env = \"MY_GEMINI_KEY\"\n\n[[providers]]\nkind = \"groq\"\nkey_env = \"TEAM_GROQ_KEY\"\n",
    )
    .expect("write");
    let out = service_with(
        home.path(),
        &["install", "--worker", "--user"],
        &[
            ("PATH", path),
            ("D8_CONFIG", file.clone().into()),
            ("MY_GEMINI_KEY", "AIza_never_shown".into()),
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stdout);
    let env_file = home.path().join(".config/d8/worker.env");
    assert!(
        said.contains(&format!(
            "settings: {} (D8_CONFIG, MY_GEMINI_KEY)",
            env_file.display()
        )),
        "{said}"
    );
    assert!(
        said.contains("note: the worker file names TEAM_GROQ_KEY (key_env), which is not set here"),
        "{said}"
    );
    assert!(!said.contains("AIza_never_shown"), "{said}");
    let text = std::fs::read_to_string(&env_file).expect("env file");
    assert!(
        text.contains("\nMY_GEMINI_KEY=AIza_never_shown\n"),
        "{text}"
    );

    // A worker file that does not parse is refused before anything changes.
    std::fs::write(&file, "[[providers]]\nkind =").expect("write");
    let out = service_with(
        home.path(),
        &["install", "--worker", "--user"],
        &[("D8_CONFIG", file.clone().into())],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&*file.to_string_lossy()), "{err}");
    assert_eq!(std::fs::read_to_string(&env_file).expect("env file"), text);
}
