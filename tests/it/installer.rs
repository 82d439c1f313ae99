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
