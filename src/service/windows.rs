//! A real Windows service: registered with the Service Control Manager
//! (SCM), started as `d8.exe service run --<role> --system`, which connects
//! to the SCM's dispatcher, reports Running, and turns the SCM's Stop and
//! Shutdown into the same clean stop Ctrl-C gives (a worker drains).
//!
//! Its data dir and env file are in `%ProgramData%\d8`, whose access list
//! is replaced by SYSTEM and Administrators only (inherited by what the
//! service writes there): Windows ignores Unix modes.

use std::ffi::OsString;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use windows_service::service::{
    ServiceAccess, ServiceAction, ServiceActionType, ServiceControl, ServiceControlAccept,
    ServiceErrorControl, ServiceExitCode, ServiceFailureActions, ServiceFailureResetPeriod,
    ServiceInfo, ServiceStartType, ServiceState, ServiceStatus, ServiceType,
};
use windows_service::service_control_handler::{self, ServiceControlHandlerResult};
use windows_service::service_manager::{ServiceManager, ServiceManagerAccess};

use super::{Plan, ServiceError, Status};

/// ERROR_ACCESS_DENIED.
const ACCESS_DENIED: i32 = 5;
/// ERROR_SERVICE_DOES_NOT_EXIST.
const NO_SUCH_SERVICE: i32 = 1060;
/// ERROR_SERVICE_EXISTS.
const SERVICE_EXISTS: i32 = 1073;
/// ERROR_FAILED_SERVICE_CONTROLLER_CONNECT: not started by the SCM.
const NOT_FROM_SCM: i32 = 1063;

fn code(e: &windows_service::Error) -> Option<i32> {
    match e {
        windows_service::Error::Winapi(io) => io.raw_os_error(),
        _ => None,
    }
}

fn manager_error(what: &str, e: windows_service::Error) -> ServiceError {
    if code(&e) == Some(ACCESS_DENIED) {
        ServiceError::Manager(format!(
            "{what}: access denied: installing or removing a Windows service needs an administrator (open the prompt with \"Run as administrator\")"
        ))
    } else {
        match e {
            // Its Display says only "IO error in winapi call".
            windows_service::Error::Winapi(io) => ServiceError::Manager(format!("{what}: {io}")),
            e => ServiceError::Manager(format!("{what}: {e}")),
        }
    }
}

/// Restricts `%ProgramData%\d8` to SYSTEM and Administrators, inherited by
/// everything in it, before any setting is written there.
pub(super) fn prepare(plan: &Plan) -> Result<(), ServiceError> {
    let Some(root) = plan.env_file.parent() else {
        return Ok(());
    };
    std::fs::create_dir_all(root).map_err(|e| crate::node::files::FileError {
        path: root.to_path_buf(),
        source: e,
    })?;
    crate::node::files::restrict(root, &["*S-1-5-18:(OI)(CI)F", "*S-1-5-32-544:(OI)(CI)F"])
        .map_err(|e| {
            ServiceError::Manager(format!(
                "{}: cannot limit it to SYSTEM and Administrators: {e}",
                root.display()
            ))
        })?;
    Ok(())
}

/// What the SCM starts: `d8.exe service run --<role> --system --dir <root>`.
fn launch_arguments(plan: &Plan) -> Vec<OsString> {
    let mut args: Vec<OsString> = super::run_args(plan.role, plan.scope)
        .into_iter()
        .map(OsString::from)
        .collect();
    if let Some(root) = plan.env_file.parent() {
        args.push("--dir".into());
        args.push(root.into());
    }
    args
}

fn info(plan: &Plan) -> ServiceInfo {
    ServiceInfo {
        name: OsString::from(plan.role.service_name()),
        display_name: OsString::from(format!("d8 {}", plan.role.as_str())),
        service_type: ServiceType::OWN_PROCESS,
        start_type: ServiceStartType::AutoStart,
        error_control: ServiceErrorControl::Normal,
        executable_path: plan.exe.clone(),
        launch_arguments: launch_arguments(plan),
        dependencies: vec![],
        // LocalSystem (see the module docs of `service`).
        account_name: None,
        account_password: None,
    }
}

/// `%ProgramFiles%\d8`: where the service's executable is kept.
fn program_dir() -> std::path::PathBuf {
    std::env::var_os("ProgramFiles")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(r"C:\Program Files"))
        .join("d8")
}

/// Stops `service` if it runs, waiting up to 90 s (a worker drains
/// first). Whether it was running.
fn stop_and_wait(service: &windows_service::service::Service) -> bool {
    let running = service
        .query_status()
        .is_ok_and(|s| s.current_state != ServiceState::Stopped);
    if running {
        let _ = service.stop();
        let deadline = std::time::Instant::now() + Duration::from_secs(90);
        while std::time::Instant::now() < deadline
            && service
                .query_status()
                .is_ok_and(|s| s.current_state != ServiceState::Stopped)
        {
            std::thread::sleep(Duration::from_millis(250));
        }
    }
    running
}

pub(super) fn install(
    plan: &Plan,
    start: bool,
    done: &mut super::Progress,
) -> Result<(), ServiceError> {
    let name = plan.role.service_name();
    let scm = ServiceManager::local_computer(
        None::<&str>,
        ServiceManagerAccess::CONNECT | ServiceManagerAccess::CREATE_SERVICE,
    )
    .map_err(|e| manager_error("cannot open the service manager", e))?;
    let access = ServiceAccess::CHANGE_CONFIG
        | ServiceAccess::START
        | ServiceAccess::STOP
        | ServiceAccess::QUERY_STATUS;
    // The service runs as LocalSystem: its executable must be one only
    // administrators can replace, never the per-user install's copy in
    // %LOCALAPPDATA% (whoever can write that file would run code as
    // SYSTEM and read the keys). It is copied to %ProgramFiles%\d8 first.
    let program_dir = program_dir();
    let mut plan = plan.clone();
    if !plan.exe.starts_with(&program_dir) {
        if let Ok(existing) = scm.open_service(&name, access) {
            // Its executable is in use while it runs.
            if stop_and_wait(&existing) {
                done.push(format!("service {name}: stopped to replace its executable"));
            }
        }
        let target = program_dir.join("d8.exe");
        std::fs::create_dir_all(&program_dir).map_err(|e| crate::node::files::FileError {
            path: program_dir.clone(),
            source: e,
        })?;
        std::fs::copy(&plan.exe, &target).map_err(|e| crate::node::files::FileError {
            path: target.clone(),
            source: e,
        })?;
        done.push(format!(
            "copied {} to {} (a service runs only what administrators can replace)",
            plan.exe.display(),
            target.display()
        ));
        plan.exe = target;
    }
    let plan = &plan;
    let service = match scm.create_service(&info(plan), access) {
        Ok(s) => {
            done.push(format!(
                "service {name}: registered ({} {})",
                plan.exe.display(),
                launch_arguments(plan)
                    .iter()
                    .map(|a| a.to_string_lossy())
                    .collect::<Vec<_>>()
                    .join(" ")
            ));
            s
        }
        Err(e) if code(&e) == Some(SERVICE_EXISTS) => {
            let s = scm
                .open_service(&name, access)
                .map_err(|e| manager_error("cannot open the service", e))?;
            s.change_config(&info(plan))
                .map_err(|e| manager_error("cannot update the service", e))?;
            done.push(format!("service {name}: updated"));
            s
        }
        Err(e) => return Err(manager_error("cannot register the service", e)),
    };
    let _ = service.set_description(
        "Runs d8 tasks with this computer's LLM providers (settings in %ProgramData%\\d8).",
    );
    // Restarted 5 s after a failure, like systemd's Restart=on-failure.
    let restart = ServiceAction {
        action_type: ServiceActionType::Restart,
        delay: Duration::from_secs(5),
    };
    if let Err(e) = service.update_failure_actions(ServiceFailureActions {
        reset_period: ServiceFailureResetPeriod::After(Duration::from_secs(24 * 3600)),
        reboot_msg: None,
        command: None,
        actions: Some(vec![restart.clone(), restart.clone(), restart]),
    }) {
        done.push(format!("(restart on failure not set: {e})"));
    }
    if start {
        // ERROR_SERVICE_DATABASE_LOCKED: the SCM is busy starting other
        // services (at boot; and in Wine's right after its first start).
        const DATABASE_LOCKED: i32 = 1055;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            match service.start::<&str>(&[]) {
                Ok(()) => break,
                Err(e)
                    if code(&e) == Some(DATABASE_LOCKED)
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err(e) => return Err(manager_error("cannot start the service", e)),
            }
        }
        done.push(format!("service {name}: started"));
    } else {
        done.push(format!("service {name}: starts at the next boot"));
    }
    Ok(())
}

pub(super) fn uninstall(plan: &Plan, done: &mut super::Progress) -> Result<(), ServiceError> {
    let name = plan.role.service_name();
    let scm = ServiceManager::local_computer(None::<&str>, ServiceManagerAccess::CONNECT)
        .map_err(|e| manager_error("cannot open the service manager", e))?;
    let service = match scm.open_service(
        &name,
        ServiceAccess::STOP | ServiceAccess::DELETE | ServiceAccess::QUERY_STATUS,
    ) {
        Ok(s) => s,
        Err(e) if code(&e) == Some(NO_SUCH_SERVICE) => {
            done.push(format!("service {name}: was not installed"));
            return Ok(());
        }
        Err(e) => return Err(manager_error("cannot open the service", e)),
    };
    if stop_and_wait(&service) {
        done.push(format!("service {name}: stopped"));
    }
    service
        .delete()
        .map_err(|e| manager_error("cannot remove the service", e))?;
    done.push(format!("service {name}: removed"));
    // The executable copied for the services goes with the last of them.
    let other = match plan.role {
        super::Role::Worker => super::Role::Orchestrator,
        super::Role::Orchestrator => super::Role::Worker,
    };
    let exe = program_dir().join("d8.exe");
    let other_left = scm
        .open_service(other.service_name(), ServiceAccess::QUERY_STATUS)
        .is_ok();
    if !other_left && exe.is_file() {
        match std::fs::remove_file(&exe) {
            Ok(()) => {
                let _ = std::fs::remove_dir(program_dir());
                done.push(format!("removed {}", exe.display()));
            }
            Err(e) => done.push(format!(
                "could not remove {} ({e}); delete it by hand",
                exe.display()
            )),
        }
    }
    Ok(())
}

pub(super) fn status(plan: &Plan) -> Result<Status, ServiceError> {
    let name = plan.role.service_name();
    let scm = ServiceManager::local_computer(None::<&str>, ServiceManagerAccess::CONNECT)
        .map_err(|e| manager_error("cannot open the service manager", e))?;
    let service = match scm.open_service(
        &name,
        ServiceAccess::QUERY_STATUS | ServiceAccess::QUERY_CONFIG,
    ) {
        Ok(s) => s,
        Err(e) if code(&e) == Some(NO_SUCH_SERVICE) => {
            return Ok(Status {
                installed: false,
                entry: None,
                running: false,
                detail: "not installed".into(),
            });
        }
        Err(e) => return Err(manager_error("cannot open the service", e)),
    };
    let state = service
        .query_status()
        .map_err(|e| manager_error("cannot query the service", e))?
        .current_state;
    let enabled = service
        .query_config()
        .is_ok_and(|c| c.start_type == ServiceStartType::AutoStart);
    Ok(Status {
        installed: true,
        entry: None,
        running: state == ServiceState::Running,
        detail: format!(
            "{}, {}",
            if enabled {
                "starts at boot"
            } else {
                "manual start"
            },
            match state {
                ServiceState::Running => "running",
                ServiceState::Stopped => "stopped",
                ServiceState::StartPending => "starting",
                ServiceState::StopPending => "stopping",
                ServiceState::Paused | ServiceState::PausePending => "paused",
                ServiceState::ContinuePending => "resuming",
            }
        ),
    })
}

/// What runs the role inside the service: given the stop signal, returns
/// when the role has stopped.
pub type Runner = Box<dyn FnOnce(CancellationToken) -> Result<(), String> + Send>;

static RUNNER: Mutex<Option<Runner>> = Mutex::new(None);
static NAME: OnceLock<String> = OnceLock::new();

/// Hands this thread to the SCM's dispatcher, which calls back on its own
/// thread to run `runner`; returns when the service has stopped.
pub fn dispatch(role: super::Role, runner: Runner) -> Result<(), ServiceError> {
    let name = role.service_name();
    let _ = NAME.set(name.clone());
    if let Ok(mut slot) = RUNNER.lock() {
        *slot = Some(runner);
    }
    windows_service::service_dispatcher::start(&name, service_main).map_err(|e| {
        if code(&e) == Some(NOT_FROM_SCM) {
            ServiceError::Manager(format!(
                "`d8 service run` is what the Windows service manager starts; to run the {} in this window use `d8 {}`",
                role.as_str(),
                role.command()
            ))
        } else {
            ServiceError::Manager(format!("service dispatcher: {e}"))
        }
    })
}

/// The status the SCM is told; `exit` 0 is success.
fn status_of(state: ServiceState, exit: u32, wait: Duration) -> ServiceStatus {
    ServiceStatus {
        service_type: ServiceType::OWN_PROCESS,
        current_state: state,
        controls_accepted: if state == ServiceState::Running {
            ServiceControlAccept::STOP | ServiceControlAccept::SHUTDOWN
        } else {
            ServiceControlAccept::empty()
        },
        exit_code: if exit == 0 {
            ServiceExitCode::Win32(0)
        } else {
            ServiceExitCode::ServiceSpecific(exit)
        },
        checkpoint: 0,
        wait_hint: wait,
        process_id: None,
    }
}

static HANDLE: OnceLock<service_control_handler::ServiceStatusHandle> = OnceLock::new();

/// The service's entry point the SCM calls (ServiceMain). Its arguments
/// (those of a manual `sc start`) are not used.
extern "system" fn service_main(_argc: u32, _argv: *mut *mut u16) {
    let name = NAME.get().cloned().unwrap_or_default();
    let stop = CancellationToken::new();
    let on_stop = stop.clone();
    let registered = service_control_handler::register(&name, move |control| match control {
        ServiceControl::Stop | ServiceControl::Shutdown | ServiceControl::Preshutdown => {
            on_stop.cancel();
            // A worker drains its tasks first: as long as systemd waits.
            if let Some(h) = HANDLE.get() {
                let _ = h.set_service_status(status_of(
                    ServiceState::StopPending,
                    0,
                    Duration::from_secs(90),
                ));
            }
            ServiceControlHandlerResult::NoError
        }
        ServiceControl::Interrogate => ServiceControlHandlerResult::NoError,
        _ => ServiceControlHandlerResult::NotImplemented,
    });
    let handle = match registered {
        Ok(h) => *HANDLE.get_or_init(|| h),
        Err(e) => {
            tracing::error!("cannot register with the service manager: {e}");
            return;
        }
    };
    let _ = handle.set_service_status(status_of(ServiceState::Running, 0, Duration::ZERO));
    let runner = RUNNER.lock().ok().and_then(|mut r| r.take());
    let result = match runner {
        Some(run) => run(stop),
        None => Err("nothing to run".into()),
    };
    let exit = match result {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!("the service stopped: {e}");
            1
        }
    };
    let _ = handle.set_service_status(status_of(ServiceState::Stopped, exit, Duration::ZERO));
}
