//! The desktop app's "Start at login", per user: an XDG autostart entry on
//! Linux, a LaunchAgent on macOS, the `Run` key of the current user on
//! Windows. What starts is `d8-desktop --background`: it starts the worker
//! with the saved choices and keys (keys come from the credential store,
//! which only this user's graphical session can read, which is why this is
//! a login item and not a service) and exits, leaving no window.
//!
//! It lives beside the services so that every entry d8 puts into an OS's
//! start-up machinery is written by one module; `d8 service` covers the
//! daemons (`d8 join` / `d8 serve`) and needs no window or key store.

use std::path::{Path, PathBuf};

/// The flag the login entry passes.
pub const BACKGROUND_FLAG: &str = "--background";

/// Identifier of the login entry (file stem, LaunchAgent label, value name).
pub const LABEL: &str = "org.d8.desktop";

/// Where this OS keeps the entry, for a user whose home is `home` and
/// config dir is `config` (Linux). `None` on Windows (the registry).
pub fn entry_path(home: &Path, config: &Path) -> Option<PathBuf> {
    if cfg!(target_os = "macos") {
        Some(
            home.join("Library")
                .join("LaunchAgents")
                .join(format!("{LABEL}.plist")),
        )
    } else if cfg!(windows) {
        None
    } else {
        Some(config.join("autostart").join("d8-desktop.desktop"))
    }
}

/// The XDG autostart entry (Desktop Entry Specification 1.5; `Exec`
/// arguments quoted as it says).
pub fn desktop_entry(exe: &Path) -> String {
    let quoted = exe
        .to_string_lossy()
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('`', "\\`")
        .replace('$', "\\$");
    format!(
        "[Desktop Entry]\nType=Application\nName=d8 worker\nComment=Lend this computer to the d8 cluster\nExec=\"{quoted}\" {BACKGROUND_FLAG}\nTerminal=false\nNoDisplay=true\nX-GNOME-Autostart-enabled=true\n"
    )
}

use super::launchd::xml_escape;

/// The LaunchAgent property list (launchd.plist(5)): run once at login.
pub fn launch_agent(exe: &Path) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0">
<dict>
  <key>Label</key><string>{LABEL}</string>
  <key>ProgramArguments</key>
  <array><string>{}</string><string>{BACKGROUND_FLAG}</string></array>
  <key>RunAtLoad</key><true/>
  <key>ProcessType</key><string>Background</string>
</dict>
</plist>
"#,
        xml_escape(&exe.to_string_lossy())
    )
}

/// The `Run` value: the quoted executable and the flag.
pub fn run_value(exe: &Path) -> String {
    format!("\"{}\" {BACKGROUND_FLAG}", exe.display())
}

/// The registry key holding per-user login programs.
pub const RUN_KEY: &str = r"HKCU\Software\Microsoft\Windows\CurrentVersion\Run";

/// Whether the entry exists.
pub fn enabled(home: &Path, config: &Path) -> bool {
    match entry_path(home, config) {
        Some(p) => p.is_file(),
        None => reg(&["query", RUN_KEY, "/v", LABEL]).is_ok(),
    }
}

/// Adds (`on`) or removes the entry for `exe`.
pub fn set(on: bool, exe: &Path, home: &Path, config: &Path) -> Result<(), String> {
    match entry_path(home, config) {
        Some(p) if on => {
            let text = if cfg!(target_os = "macos") {
                launch_agent(exe)
            } else {
                desktop_entry(exe)
            };
            if let Some(dir) = p.parent() {
                std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            }
            std::fs::write(&p, text).map_err(|e| format!("{}: {e}", p.display()))
        }
        Some(p) => match std::fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(format!("{}: {e}", p.display())),
        },
        None if on => reg(&[
            "add",
            RUN_KEY,
            "/v",
            LABEL,
            "/t",
            "REG_SZ",
            "/d",
            &run_value(exe),
            "/f",
        ]),
        None => match reg(&["delete", RUN_KEY, "/v", LABEL, "/f"]) {
            // Not there is what was wanted.
            Err(_) if !enabled(home, config) => Ok(()),
            other => other,
        },
    }
}

/// Runs Windows' `reg.exe` (present on every Windows since XP).
fn reg(args: &[&str]) -> Result<(), String> {
    let mut cmd = std::process::Command::new("reg");
    cmd.args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    #[cfg(windows)]
    {
        use std::os::windows::process::CommandExt;
        /// No console window flashes up when the desktop app calls this.
        const CREATE_NO_WINDOW: u32 = 0x0800_0000;
        cmd.creation_flags(CREATE_NO_WINDOW);
    }
    let out = cmd.output().map_err(|e| format!("cannot run reg: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_quote_the_executable_and_pass_the_background_flag() {
        let exe = Path::new("/opt/My Apps/d8 \"beta\"/d8-desktop");
        let e = desktop_entry(exe);
        assert!(
            e.contains(r#"Exec="/opt/My Apps/d8 \"beta\"/d8-desktop" --background"#),
            "{e}"
        );
        let p = launch_agent(Path::new(
            "/Applications/d8 & co.app/Contents/MacOS/d8-desktop",
        ));
        assert!(p.contains("<string>/Applications/d8 &amp; co.app/Contents/MacOS/d8-desktop</string><string>--background</string>"), "{p}");
        assert!(p.contains("<key>RunAtLoad</key><true/>"));
        assert_eq!(
            run_value(Path::new(r"C:\Program Files\d8\d8-desktop.exe")),
            r#""C:\Program Files\d8\d8-desktop.exe" --background"#
        );
    }

    #[cfg(all(unix, not(target_os = "macos")))]
    #[test]
    fn the_toggle_adds_and_removes_the_xdg_autostart_entry() {
        let home = tempfile::tempdir().expect("tempdir");
        let config = home.path().join(".config");
        let exe = Path::new("/usr/bin/d8-desktop");
        assert!(!enabled(home.path(), &config));
        set(true, exe, home.path(), &config).expect("on");
        assert!(enabled(home.path(), &config));
        let text =
            std::fs::read_to_string(config.join("autostart/d8-desktop.desktop")).expect("entry");
        assert!(
            text.starts_with("[Desktop Entry]\nType=Application\n"),
            "{text}"
        );
        set(false, exe, home.path(), &config).expect("off");
        assert!(!enabled(home.path(), &config));
        set(false, exe, home.path(), &config).expect("off twice is fine");
    }
}
