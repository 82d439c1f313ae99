//! The platform metadata shipped for the app agrees with the code: the
//! macOS Info.plist (without its local-network keys macOS blocks mDNS
//! silently) and the Linux menu entry.

use std::path::{Path, PathBuf};

fn installer(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../installer")
        .join(rel)
}

/// The value following `<key>name</key>`, as raw XML up to the next key
/// (or the dict's end).
fn value<'a>(plist: &'a str, name: &str) -> &'a str {
    let key = format!("<key>{name}</key>");
    let at = plist.find(&key).unwrap_or_else(|| panic!("{name} missing")) + key.len();
    let rest = &plist[at..];
    let end = [rest.find("<key>"), rest.find("</dict>")]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(rest.len());
    rest[..end].trim()
}

#[test]
fn the_macos_bundle_declares_local_network_use_and_d8s_bonjour_service() {
    let path = installer("macos/Info.plist");
    let plist = std::fs::read_to_string(&path).expect("Info.plist");
    let service = d8::discovery::SERVICE_TYPE.trim_end_matches(".local.");
    assert_eq!(
        value(&plist, "NSBonjourServices")
            .split_whitespace()
            .collect::<String>(),
        format!("<array><string>{service}</string></array>")
    );
    let why = value(&plist, "NSLocalNetworkUsageDescription");
    assert!(why.starts_with("<string>") && why.len() > 40, "{why}");
    assert_eq!(
        value(&plist, "CFBundleExecutable"),
        "<string>d8-desktop</string>"
    );
    let version = format!("<string>{}</string>", env!("CARGO_PKG_VERSION"));
    assert_eq!(value(&plist, "CFBundleShortVersionString"), version);
    assert_eq!(value(&plist, "CFBundleVersion"), version);
    // Well-formed as Apple's parser needs it (Python's plistlib reads the
    // same XML format), where python3 is present.
    if let Ok(out) = std::process::Command::new("python3")
        .args(["-c", "import plistlib,sys; d=plistlib.load(open(sys.argv[1],'rb')); print(d['CFBundleIdentifier'])"])
        .arg(&path)
        .output()
    {
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "org.d8.desktop");
    }
}

#[test]
fn the_linux_menu_entry_starts_the_app_by_its_window_class() {
    let entry = std::fs::read_to_string(installer("linux/d8-desktop.desktop")).expect("entry");
    let lines: Vec<&str> = entry.lines().collect();
    assert_eq!(lines[0], "[Desktop Entry]");
    assert!(lines.contains(&"Exec=d8-desktop"));
    // The window's app id (main.rs) groups it under this entry.
    assert!(lines.contains(&"StartupWMClass=org.d8.desktop"));
    assert_eq!(d8_desktop::login::LABEL, "org.d8.desktop");
}
