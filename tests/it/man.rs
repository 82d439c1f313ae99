//! The man pages the packages install (`installer/man/`) say what the CLI
//! says: one page for `d8` and one per subcommand, made from the clap
//! definitions. After changing a flag or its help, regenerate them with
//! `D8_UPDATE_MAN=1 cargo test --test integration man_pages`.
//! `d8-desktop.1` is written by hand (the app parses its one flag itself).

use clap::CommandFactory;
use std::collections::BTreeMap;
use std::path::Path;

fn pages_in(dir: &Path) -> BTreeMap<String, String> {
    std::fs::read_dir(dir)
        .expect("read man dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "1"))
        .map(|p| {
            let name = p.file_name().expect("name").to_string_lossy().into_owned();
            (name, std::fs::read_to_string(&p).expect("read page"))
        })
        .collect()
}

#[test]
fn man_pages_match_the_cli() {
    let fresh = tempfile::tempdir().expect("tempdir");
    clap_mangen::generate_to(d8::cli::Cli::command(), fresh.path()).expect("render");
    let made = pages_in(fresh.path());
    let committed_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("installer/man");
    if std::env::var_os("D8_UPDATE_MAN").is_some() {
        for (name, _) in pages_in(&committed_dir) {
            if name != "d8-desktop.1" {
                std::fs::remove_file(committed_dir.join(name)).expect("remove");
            }
        }
        for (name, text) in &made {
            std::fs::write(committed_dir.join(name), text).expect("write");
        }
    }
    let mut committed = pages_in(&committed_dir);
    assert!(
        committed.remove("d8-desktop.1").is_some(),
        "installer/man/d8-desktop.1 is missing"
    );
    assert!(made.contains_key("d8.1") && made.contains_key("d8-serve.1"));
    assert_eq!(
        committed.keys().collect::<Vec<_>>(),
        made.keys().collect::<Vec<_>>(),
        "installer/man/ has other pages than the CLI's subcommands; run D8_UPDATE_MAN=1 cargo test --test integration man_pages"
    );
    for (name, text) in &made {
        assert!(
            committed[name] == *text,
            "installer/man/{name} is out of date; run D8_UPDATE_MAN=1 cargo test --test integration man_pages"
        );
    }
}

/// The hand-written page names every flag the desktop app's own help text
/// lists.
#[test]
fn the_desktop_man_page_names_the_apps_flags() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let page = std::fs::read_to_string(root.join("installer/man/d8-desktop.1")).expect("page");
    let main = std::fs::read_to_string(root.join("gui/src/main.rs")).expect("main.rs");
    let help = main
        .split("const HELP: &str =")
        .nth(1)
        .and_then(|rest| rest.split("\";").next())
        .expect("HELP in gui/src/main.rs");
    let flags: Vec<&str> = help
        .split_whitespace()
        .map(|w| w.trim_matches(|c: char| c == '[' || c == ']' || c == ','))
        .filter(|w| w.starts_with('-'))
        .collect();
    assert!(flags.contains(&"--background"), "{flags:?}");
    for flag in flags {
        // roff writes each '-' as '\-'.
        let roff = flag.replace('-', "\\-");
        assert!(page.contains(&roff), "d8-desktop.1 does not name {flag}");
    }
}
