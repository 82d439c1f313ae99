//! A per-user LaunchAgent (macOS, launchd.plist(5)): it runs
//! `d8 service run --<role> --user`, which reads the env file and runs the
//! role; launchd restarts it when it exits with an error.

use super::{MARKER, Plan};

/// `&`, `<`, `>` and quotes as XML entities.
pub fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The LaunchAgent property list for `plan`.
pub fn plist(plan: &Plan) -> String {
    let mut args = format!(
        "<string>{}</string>",
        xml_escape(&plan.exe.to_string_lossy())
    );
    for a in super::run_args(plan.role, plan.scope) {
        args += &format!("<string>{}</string>", xml_escape(&a));
    }
    let log = plan
        .log_file
        .as_ref()
        .map(|l| {
            let l = xml_escape(&l.to_string_lossy());
            format!(
                "  <key>StandardOutPath</key><string>{l}</string>\n  <key>StandardErrorPath</key><string>{l}</string>\n"
            )
        })
        .unwrap_or_default();
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<!-- {MARKER}; `d8 service uninstall` removes it. -->
<plist version="1.0">
<dict>
  <key>Label</key><string>{label}</string>
  <key>ProgramArguments</key>
  <array>{args}</array>
  <key>RunAtLoad</key><true/>
  <key>KeepAlive</key><dict><key>SuccessfulExit</key><false/></dict>
  <key>ThrottleInterval</key><integer>5</integer>
  <key>ProcessType</key><string>Background</string>
{log}</dict>
</plist>
"#,
        label = plan.role.label(),
    )
}

#[cfg(target_os = "macos")]
fn domain() -> String {
    let uid = super::run_tool("id", &["-u"]).unwrap_or_else(|_| "501".into());
    format!("gui/{uid}")
}

#[cfg(target_os = "macos")]
pub(super) fn install(
    plan: &Plan,
    start: bool,
    done: &mut super::Progress,
) -> Result<(), super::ServiceError> {
    use crate::node::files;
    let entry = plan
        .entry
        .as_ref()
        .ok_or_else(|| super::ServiceError::Manager("no plist path".into()))?;
    if let Some(dir) = entry.parent() {
        std::fs::create_dir_all(dir).map_err(|e| files::FileError {
            path: dir.to_path_buf(),
            source: e,
        })?;
    }
    files::ensure_dir(&plan.data_dir)?;
    // Replacing a loaded agent: unload the old one first.
    let _ = super::run_tool(
        "launchctl",
        &["bootout", &format!("{}/{}", domain(), plan.role.label())],
    );
    files::write_file(entry, plist(plan).as_bytes(), false)?;
    done.push(format!("LaunchAgent: {}", entry.display()));
    if start {
        super::run_tool(
            "launchctl",
            &["bootstrap", &domain(), &entry.to_string_lossy()],
        )?;
        done.push(format!("{}: loaded and started", plan.role.label()));
    } else {
        done.push(format!("{}: starts at the next login", plan.role.label()));
    }
    Ok(())
}

#[cfg(target_os = "macos")]
pub(super) fn uninstall(
    plan: &Plan,
    done: &mut super::Progress,
) -> Result<(), super::ServiceError> {
    if super::run_tool(
        "launchctl",
        &["bootout", &format!("{}/{}", domain(), plan.role.label())],
    )
    .is_ok()
    {
        done.push(format!("{}: stopped", plan.role.label()));
    }
    if let Some(entry) = &plan.entry
        && std::fs::read_to_string(entry).is_ok_and(|t| t.contains(MARKER))
    {
        std::fs::remove_file(entry).map_err(|e| crate::node::files::FileError {
            path: entry.clone(),
            source: e,
        })?;
        done.push(format!("removed {}", entry.display()));
    }
    if done.is_empty() {
        done.push(format!("{}: was not installed", plan.role.label()));
    }
    Ok(())
}

#[cfg(target_os = "macos")]
pub(super) fn status(plan: &Plan) -> Result<super::Status, super::ServiceError> {
    let installed = plan.entry.as_ref().is_some_and(|p| p.is_file());
    let printed = super::run_tool(
        "launchctl",
        &["print", &format!("{}/{}", domain(), plan.role.label())],
    );
    let running = printed
        .as_ref()
        .is_ok_and(|t| t.lines().any(|l| l.trim() == "state = running"));
    Ok(super::Status {
        installed,
        entry: plan.entry.clone().filter(|_| installed),
        running,
        detail: match printed {
            Ok(_) if running => "loaded, running".into(),
            Ok(_) => "loaded, not running".into(),
            Err(_) => "not loaded".into(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn the_agent_runs_d8_service_run_with_no_setting_in_its_arguments() {
        let plan = Plan {
            role: super::super::Role::Worker,
            scope: super::super::Scope::User,
            exe: PathBuf::from("/Applications/d8 & co.app/Contents/MacOS/d8"),
            entry: None,
            env_file: PathBuf::from("/Users/ana/Library/Application Support/d8/worker.env"),
            data_dir: PathBuf::from("/Users/ana/Library/Application Support/d8/worker"),
            log_file: Some(PathBuf::from(
                "/Users/ana/Library/Application Support/d8/worker/service.log",
            )),
        };
        let p = plist(&plan);
        assert!(p.contains("<array><string>/Applications/d8 &amp; co.app/Contents/MacOS/d8</string><string>service</string><string>run</string><string>--worker</string><string>--user</string></array>"), "{p}");
        assert!(p.contains("<key>Label</key><string>org.d8.worker</string>"));
        assert!(p.contains("<key>RunAtLoad</key><true/>"));
        assert!(p.contains("<key>StandardErrorPath</key><string>/Users/ana/Library/Application Support/d8/worker/service.log</string>"));
    }
}
