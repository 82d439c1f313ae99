//! `d8-desktop`: the window, or `--background` for the login item.

// No console window behind the app on Windows.
#![cfg_attr(windows, windows_subsystem = "windows")]

use d8_desktop::app::{App, Config};
use d8_desktop::{Backend, login};

const HELP: &str =
    "d8-desktop: see the d8 clusters on this network and make this computer a worker.

Usage: d8-desktop [--background]

  --background   start the worker with the saved providers and keys, then
                 exit without a window (what \"Start at login\" runs)
  -h, --help     this text
  -V, --version  the version
";

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        None => {}
        Some("-h" | "--help") => {
            print!("{HELP}");
            return std::process::ExitCode::SUCCESS;
        }
        Some("-V" | "--version") => {
            println!("d8-desktop {}", env!("CARGO_PKG_VERSION"));
            return std::process::ExitCode::SUCCESS;
        }
        Some(login::BACKGROUND_FLAG) => {
            return match d8_desktop::app::start_in_background(&Config::system()) {
                Ok(what) => {
                    eprintln!("d8-desktop: {what}");
                    std::process::ExitCode::SUCCESS
                }
                Err(why) => {
                    eprintln!("d8-desktop: {why}");
                    std::process::ExitCode::FAILURE
                }
            };
        }
        Some(other) => {
            eprintln!("d8-desktop: unknown argument {other:?}\n\n{HELP}");
            return std::process::ExitCode::from(2);
        }
    }
    let backend = match Backend::new() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("d8-desktop: cannot start its background threads: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let options = eframe::NativeOptions {
        viewport: eframe::egui::ViewportBuilder::default()
            .with_title("d8")
            .with_app_id("org.d8.desktop")
            .with_inner_size([780.0, 580.0])
            .with_min_inner_size([560.0, 400.0]),
        ..Default::default()
    };
    let app = App::new(Config::system(), backend);
    match eframe::run_native("d8", options, Box::new(|_cc| Ok(Box::new(app)))) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("d8-desktop: cannot open its window: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
