//! The `d8` binary: parse the command line, set up logging, run, map errors
//! to exit codes (0 ok, 1 runtime error, 2 usage error).

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use d8::cli::{Cli, Command, ServiceAction};
use d8::logging::{say, warn};
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    // One crypto provider for rustls, quinn and rcgen; must precede any TLS config.
    d8::ensure_crypto_provider();
    // `.env` in the working directory; real environment variables win.
    let _ = dotenvy::dotenv();
    let mut cli = Cli::parse();
    // `d8 service run`, as a service manager starts d8: the service's env
    // file becomes this process's environment (before any thread starts),
    // then the role runs as `d8 join` / `d8 serve` would with it.
    #[cfg(windows)]
    let mut scm_role = None;
    #[cfg_attr(not(windows), allow(unused_mut))]
    let mut service_log: Option<std::path::PathBuf> = None;
    if let Command::Service {
        action: ServiceAction::Run { target, dir },
    } = &cli.command
    {
        let plan = match d8::service::prepare_run(target, dir.as_deref()) {
            Ok(p) => p,
            Err(e) => {
                warn(&format!("error: {}\n", chain(&e)));
                return ExitCode::FAILURE;
            }
        };
        cli = match Cli::try_parse_from(["d8", plan.role.command()]) {
            Ok(c) => c,
            Err(e) => {
                warn(&format!(
                    "error: the settings in {} are not valid: {e}\n",
                    plan.env_file.display()
                ));
                return ExitCode::from(2);
            }
        };
        match &mut cli.command {
            Command::Join(a) => a.data_dir = Some(plan.data_dir.clone()),
            Command::Serve(a) => a.data_dir = Some(plan.data_dir.clone()),
            _ => {}
        }
        // A Windows service has no stderr: its log goes to a file.
        #[cfg(windows)]
        {
            scm_role = Some(plan.role);
            service_log = plan.log_file.clone();
        }
    }
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // This process's log events at info and above, for the orchestrator's
    // log ring or a worker's forwarding (see d8::logging::tap).
    let tap = d8::logging::LogTap::new();
    {
        use std::io::IsTerminal;
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::util::SubscriberInitExt;
        let base = tracing_subscriber::registry()
            .with(filter)
            .with(d8::logging::TapLayer::new(
                tap.clone(),
                d8::logging::Level::Info,
            ));
        match (
            cli.log_format,
            service_log.as_deref().and_then(open_service_log),
        ) {
            (d8::cli::LogFormat::Text, Some(file)) => base
                .with(
                    tracing_subscriber::fmt::layer()
                        .with_writer(std::sync::Mutex::new(file))
                        .with_ansi(false),
                )
                .init(),
            (d8::cli::LogFormat::Text, None) => base
                .with(
                    tracing_subscriber::fmt::layer()
                        // A log line that cannot be written is dropped and
                        // counted, never a panic (see d8::logging).
                        .with_writer(d8::logging::LossyStderr)
                        // Colour for people, plain text for log files and the journal.
                        .with_ansi(std::io::stderr().is_terminal()),
                )
                .init(),
            (d8::cli::LogFormat::Json, _) => base.with(d8::logging::JsonStderr).init(),
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            warn(&format!("error: cannot start the async runtime: {e}\n"));
            return ExitCode::FAILURE;
        }
    };
    #[cfg(windows)]
    if let Some(role) = scm_role {
        let runner: d8::service::windows::Runner = Box::new(move |stop| {
            runtime
                .block_on(run(cli, tap, Some(stop)))
                .map_err(|e| chain(&e))
        });
        return match d8::service::windows::dispatch(role, runner) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                warn(&format!("error: {e}\n"));
                ExitCode::FAILURE
            }
        };
    }
    match runtime.block_on(run(cli, tap, None)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            warn(&format!("error: {}\n", chain(&e)));
            ExitCode::FAILURE
        }
    }
}

/// The service's log file, opened for appending (moved to `.1` first when
/// past 4 MiB); `None` (logging to stderr) when it cannot be opened.
fn open_service_log(path: &std::path::Path) -> Option<std::fs::File> {
    const ROTATE_AT: u64 = 4 << 20;
    std::fs::create_dir_all(path.parent()?).ok()?;
    if std::fs::metadata(path).is_ok_and(|m| m.len() > ROTATE_AT) {
        let _ = std::fs::rename(path, path.with_extension("log.1"));
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .ok()
}

/// The error and its causes on one line. d8's error types say their cause
/// in their own message and also return it as `source()`, so a cause whose
/// text already ends the line is not repeated.
fn chain(e: &anyhow::Error) -> String {
    let mut line = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !line.ends_with(&cause) {
            line.push_str(": ");
            line.push_str(&cause);
        }
    }
    line
}

/// Runs the command; `stop`, when given (a Windows service), ends `serve`
/// or `join` in place of Ctrl-C.
async fn run(cli: Cli, tap: d8::logging::LogTap, stop: Option<CancellationToken>) -> Result<()> {
    match cli.command {
        Command::Serve(args) => serve(args, tap, stop).await,
        Command::Join(args) => join(args, tap, stop).await,
        Command::Service { action } => match d8::service::command(&action)? {
            0 => Ok(()),
            // The lines printed say what is wrong.
            code => std::process::exit(code),
        },
        Command::Status(client) => d8::admin::status(&client).await,
        Command::Token { action, client } => d8::admin::token(&action, &client).await,
        Command::Workers { action, client } => d8::admin::workers(&action, &client).await,
        Command::Backup { out, client } => d8::admin::backup(&out, &client).await,
        Command::Logs(args) => d8::admin::logs(&args).await,
        Command::Find(args) => find(&args).await,
        Command::Usage(args) => d8::admin::usage(&args).await,
        Command::Bench(args) => d8::bench::run(args).await.map(|_| ()),
        Command::Doctor(args) => {
            if d8::doctor::run(args).await? {
                Ok(())
            } else {
                // The report already said what is wrong.
                std::process::exit(1);
            }
        }
    }
}

/// `d8 find`: the orchestrators announcing themselves within `--wait`.
async fn find(args: &d8::cli::FindArgs) -> Result<()> {
    use d8::discovery::Discovery;
    let mdns = d8::discovery::MdnsDiscovery::new(&args.mdns.interfaces)
        .map_err(|e| anyhow::anyhow!("cannot start mDNS ({e})"))?;
    let mut found = mdns.discover(None, args.wait).await?;
    found.sort_by(|a, b| a.name.cmp(&b.name));
    let local = d8::discovery::local_addrs(&args.mdns.interfaces);
    if args.json {
        for a in &found {
            d8::out!("{}", a.json(&local));
        }
        return Ok(());
    }
    if found.is_empty() {
        warn(&format!(
            "no d8 orchestrator answered over mDNS within {} ms (`d8 doctor` explains why; across VLANs or VPNs give workers the address)\n",
            args.wait.as_millis()
        ));
        std::process::exit(1);
    }
    for a in &found {
        let v = a.json(&local);
        d8::out!(
            "{}  cluster {}  d8 {}  {}  dashboard {}",
            a.name,
            a.cluster_id,
            a.version,
            v["addrs"]
                .as_array()
                .map(|l| l
                    .iter()
                    .filter_map(|x| x.as_str())
                    .collect::<Vec<_>>()
                    .join(", "))
                .unwrap_or_default(),
            v["dashboard"].as_str().unwrap_or("-")
        );
    }
    Ok(())
}

/// Resolves on Ctrl-C, or SIGTERM on Unix (systemd stops services with it).
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// Resolves when `stop` is cancelled, or without one on a stop signal.
async fn stopped(stop: &Option<CancellationToken>) {
    match stop {
        Some(t) => t.cancelled().await,
        None => stop_signal().await,
    }
}

async fn serve(
    args: d8::cli::ServeArgs,
    tap: d8::logging::LogTap,
    stop: Option<CancellationToken>,
) -> Result<()> {
    let mut cfg = d8::config::OrchestratorConfig::from_args(&args)?;
    cfg.logs = Some(tap);
    let data_dir = cfg.data_dir.clone();
    let orch = d8::node::orchestrator::Orchestrator::start(cfg)
        .await
        .context("cannot start the orchestrator")?;
    let token = orch.join_token();
    let port = orch.quic_addr().port();
    let mut banner = format!(
        "d8 orchestrator {} is running\n  QUIC (workers)   udp {}\n  HTTP API         http://{}\n  data directory   {}\n",
        env!("CARGO_PKG_VERSION"),
        orch.quic_addr(),
        orch.http_addr(),
        data_dir.display()
    );
    if orch.advertising() {
        banner += &format!(
            "  mDNS             advertising as {} (_d8._udp)\n",
            orch.name()
        );
    } else {
        banner += "  mDNS             off: workers need this machine's address\n";
    }
    banner += &format!(
        "\n  join token       {token}\n                   (also in {})\n  HTTP API key     {}\n                   (also in {})\n\n",
        data_dir.join(d8::node::files::JOIN_TOKEN).display(),
        orch.api_key(),
        data_dir.join(d8::node::files::API_KEY).display()
    );
    if orch.advertising() {
        // Workers on this LAN find it; the address form is the fallback.
        banner += &format!(
            "  on each worker:  d8 join --token {token} --provider echo\n  (across VLANs/VPNs: d8 join <this-machine's-address>:{port} --token … )\n"
        );
    } else {
        banner += &format!(
            "  on each worker:  d8 join <this-machine's-address>:{port} --token {token} --provider echo\n"
        );
    }
    // The banner is for a person; a closed stdout must not stop the service.
    say(&banner);
    let stop_request = data_dir.join(d8::node::files::STOP_REQUEST);
    tokio::select! {
        () = stopped(&stop) => {}
        () = d8::node::files::requested(&stop_request) => {
            tracing::info!("stop requested through the data dir");
        }
        part = orch.failed() => {
            // Exit non-zero without a clean shutdown: the part that died may
            // hold what a shutdown waits for. Accepted work is on disk.
            tracing::error!(%part, "a part of the orchestrator stopped unexpectedly; exiting so the service manager restarts d8");
            anyhow::bail!("the orchestrator's {part} stopped unexpectedly");
        }
    }
    warn("stopping …\n");
    orch.shutdown().await;
    Ok(())
}

async fn join(
    args: d8::cli::JoinArgs,
    tap: d8::logging::LogTap,
    stop: Option<CancellationToken>,
) -> Result<()> {
    let mut cfg = d8::config::WorkerConfig::from_args(&args)?;
    if let Some(format) = args.check_keys {
        let checks = d8::providers::check::check_all(&cfg.providers).await;
        if checks.is_empty() {
            anyhow::bail!("no provider to check: pass --provider (e.g. --provider groq)");
        }
        for c in &checks {
            match format {
                d8::cli::CheckFormat::Text => d8::out!("{}", d8::providers::check::line(c)),
                d8::cli::CheckFormat::Json => {
                    d8::out!("{}", serde_json::to_string(c).unwrap_or_default())
                }
            }
        }
        if checks.iter().all(d8::providers::check::KeyCheck::usable) {
            return Ok(());
        }
        // Each line already says what is wrong.
        std::process::exit(1);
    }
    cfg.logs = Some(tap);
    if cfg.orchestrator.is_none() {
        // No address: find the orchestrator of our cluster over mDNS.
        let mdns = d8::discovery::MdnsDiscovery::new(&args.mdns.interfaces).map_err(|e| {
            anyhow::anyhow!(
                "cannot start mDNS discovery ({e}); give the orchestrator's address instead"
            )
        })?;
        cfg.discovery = Some(std::sync::Arc::new(mdns));
    }
    let shutdown = match stop {
        Some(t) => t,
        None => {
            let shutdown = CancellationToken::new();
            let drain = shutdown.clone();
            tokio::spawn(async move {
                stop_signal().await;
                drain.cancel();
                // A second Ctrl-C leaves at once; unfinished tasks are re-queued by the orchestrator.
                stop_signal().await;
                warn("forced exit\n");
                std::process::exit(130);
            });
            shutdown
        }
    };
    d8::node::worker::run(cfg, shutdown).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{chain, open_service_log};

    #[test]
    fn a_service_log_past_4_mib_is_moved_aside_and_a_new_one_appended_to() {
        use std::io::Write;
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("worker").join("service.log");
        // The folder is made.
        let mut f = open_service_log(&log).expect("open");
        f.write_all(b"first\n").expect("write");
        drop(f);
        let mut f = open_service_log(&log).expect("reopen");
        f.write_all(b"second\n").expect("write");
        drop(f);
        assert_eq!(
            std::fs::read_to_string(&log).expect("read"),
            "first\nsecond\n"
        );
        std::fs::write(&log, vec![b'x'; (4 << 20) + 1]).expect("fill");
        let mut f = open_service_log(&log).expect("rotate");
        f.write_all(b"fresh\n").expect("write");
        drop(f);
        assert_eq!(std::fs::read_to_string(&log).expect("read"), "fresh\n");
        let old = dir.path().join("worker").join("service.log.1");
        assert_eq!(std::fs::metadata(old).expect("moved").len(), (4 << 20) + 1);
    }

    #[test]
    fn an_error_chain_names_each_cause_once() {
        // FileError says its cause and also returns it as source().
        let io = std::io::Error::new(std::io::ErrorKind::PermissionDenied, "denied");
        let e = anyhow::Error::new(d8::node::files::FileError {
            path: "/x/api-key".into(),
            source: io,
        })
        .context("cannot start the orchestrator");
        assert_eq!(
            chain(&e),
            "cannot start the orchestrator: /x/api-key: denied"
        );
        // A cause that the message does not say is still shown.
        let e = anyhow::anyhow!("inner").context("outer");
        assert_eq!(chain(&e), "outer: inner");
    }
}
