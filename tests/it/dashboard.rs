//! The web dashboard: its headers and assets over HTTP, the host check
//! without a key, and the page itself in a real headless browser
//! (`tests/browser/dashboard.py`: Debian's chromium and chromedriver through
//! Selenium). `.ci/run` installs those and sets `D8_REQUIRE_BROWSER_TEST`,
//! so CI never skips the browser part; elsewhere, without them, it says how
//! to get them and passes.

use std::path::{Path, PathBuf};

use super::harness::TestCluster;
use super::processes::ProcCluster;

#[tokio::test]
async fn the_page_and_its_assets_are_public_with_strict_browser_headers() {
    let c = TestCluster::start().await;
    for (path, kind) in [
        ("/", "text/html"),
        ("/assets/app.js", "text/javascript"),
        ("/assets/app.css", "text/css"),
        ("/assets/favicon.svg", "image/svg+xml"),
    ] {
        let r = c
            .http
            .get(format!("{}{path}", c.base))
            .send()
            .await
            .expect("get");
        assert_eq!(r.status(), 200, "{path} needs no key");
        let h = r.headers();
        let get = |n: &str| h.get(n).and_then(|v| v.to_str().ok()).unwrap_or_default();
        assert!(get("content-type").starts_with(kind), "{path}");
        let csp = get("content-security-policy");
        assert!(
            csp.contains("default-src 'self'") && csp.contains("frame-ancestors 'none'"),
            "{path}: {csp}"
        );
        assert_eq!(get("x-content-type-options"), "nosniff");
        assert_eq!(get("referrer-policy"), "no-referrer");
    }
    // The data behind it is not public, and API answers get the headers too.
    let r = c
        .http
        .get(format!("{}/api/cluster", c.base))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 401);
    assert!(r.headers().contains_key("content-security-policy"));
    let r = c
        .http
        .get(format!("{}/assets/../api/cluster", c.base))
        .send()
        .await
        .expect("get");
    assert_ne!(r.status(), 200, "no way around the key through assets");
    let (status, info) = c.request(reqwest::Method::GET, "/api/cluster", None).await;
    assert_eq!(status, 200);
    assert_eq!(info["version"], env!("CARGO_PKG_VERSION"));
    assert!(
        info["name"].as_str().is_some_and(|n| n.starts_with("d8-")),
        "{info}"
    );
    assert_eq!(info["auth"], true);
    assert_eq!(
        info["quic_port"],
        u64::from(c.orch().quic_addr().port()),
        "{info}"
    );
}

#[tokio::test]
async fn without_a_key_only_allowed_hosts_reach_the_api() {
    let c = TestCluster::start_with(|cfg| {
        cfg.require_api_key = false;
        cfg.allowed_hosts = vec!["pi.example".into()];
    })
    .await;
    let get = |host: &'static str| {
        let url = format!("{}/api/workers/stats", c.base);
        let http = c.http.clone();
        async move {
            http.get(url)
                .header("host", host)
                .send()
                .await
                .expect("get")
        }
    };
    // A page on another site that points its own name at this machine
    // (DNS rebinding) sends its name as the Host: refused, with the fix.
    let r = get("evil.example:5000").await;
    assert_eq!(r.status(), 403);
    let v: serde_json::Value = r.json().await.expect("json");
    assert_eq!(v["error"]["code"], "host_not_allowed");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("--allow-host evil.example")),
        "{v}"
    );
    for host in [
        "127.0.0.1:5000",
        "[::1]:5000",
        "192.168.1.20",
        "localhost:5000",
        "pi.example",
        "PI.example.:5000",
    ] {
        assert_eq!(get(host).await.status(), 200, "{host}");
    }
    let (status, health) = c.request(reqwest::Method::GET, "/health", None).await;
    assert_eq!(status, 200);
    assert_eq!(health["auth"], false, "the page learns it needs no key");
}

/// A Python with Selenium, and Debian's chromium and chromedriver.
fn browser_tools() -> Option<(PathBuf, PathBuf, PathBuf)> {
    let python = [
        std::env::var_os("D8_BROWSER_PYTHON").map(PathBuf::from),
        Some(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/sdk-venv/bin/python")),
    ]
    .into_iter()
    .flatten()
    .find(|p| {
        std::process::Command::new(p)
            .args(["-c", "import selenium"])
            .output()
            .is_ok_and(|o| o.status.success())
    })?;
    let chromium =
        PathBuf::from(std::env::var("D8_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()));
    let driver = PathBuf::from(
        std::env::var("D8_CHROMEDRIVER").unwrap_or_else(|_| "/usr/bin/chromedriver".into()),
    );
    (chromium.exists() && driver.exists()).then_some((python, chromium, driver))
}

#[tokio::test]
async fn the_dashboard_works_in_a_real_browser() {
    let Some((python, chromium, driver)) = browser_tools() else {
        assert!(
            std::env::var_os("D8_REQUIRE_BROWSER_TEST").is_none(),
            "D8_REQUIRE_BROWSER_TEST is set but Selenium, chromium or chromedriver is missing"
        );
        eprintln!(
            "skipped: needs chromium and chromium-driver (apt-get install chromium chromium-driver) and Selenium (target/sdk-venv/bin/pip install selenium)"
        );
        return;
    };
    let mut c = ProcCluster::start().await;
    // Echo answers a word at a time, so the page can show tokens arriving.
    for name in ["laptop", "gpu-box"] {
        c.add_worker_with(
            name,
            &["--provider", "echo"],
            &["--echo-word-delay-ms", "120"],
            &[],
        );
    }
    c.wait_online(2).await;
    let victim = c.workers[0].child.id().expect("pid");
    let shots = std::env::var_os("D8_SHOTS").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("target/browser-shots"),
        PathBuf::from,
    );
    let (url, pid) = (c.url(""), victim.to_string());
    super::harness::run_python_checks(
        &python,
        "tests/browser/dashboard.py",
        &[
            ("D8_URL", url.as_ref()),
            ("D8_KEY", c.key.as_ref()),
            ("D8_WORKERS", "laptop,gpu-box".as_ref()),
            ("D8_KILL_PID", pid.as_ref()),
            ("D8_SHOTS", shots.as_os_str()),
            ("D8_CHROMIUM", chromium.as_os_str()),
            ("D8_CHROMEDRIVER", driver.as_os_str()),
        ],
        180,
    )
    .await;
    // The orchestrator saw the same: one worker gone, one online.
    let stats = c.get("/api/workers/stats").await;
    assert_eq!(stats["workers"]["online"], 1, "{stats}");
}
