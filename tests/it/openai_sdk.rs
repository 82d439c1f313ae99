//! The official `openai` Python SDK against a cluster of echo workers
//! (`tests/sdk/openai_sdk.py`): the strongest check that agent frameworks
//! work unchanged. `.ci/run` installs the SDK into `target/sdk-venv` and
//! sets `D8_REQUIRE_SDK_TEST`, so CI never skips it; elsewhere, without the
//! SDK, the test says how to get it and passes.

use std::path::PathBuf;

use super::harness::TestCluster;

/// A Python with the `openai` package: `D8_SDK_PYTHON`, or the venv that
/// `.ci/run` makes.
fn python() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("D8_SDK_PYTHON").map(PathBuf::from),
        Some(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/sdk-venv/bin/python")),
    ];
    candidates.into_iter().flatten().find(|p| {
        std::process::Command::new(p)
            .args(["-c", "import openai"])
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

#[tokio::test]
async fn the_openai_python_sdk_works_unchanged() {
    let Some(python) = python() else {
        assert!(
            std::env::var_os("D8_REQUIRE_SDK_TEST").is_none(),
            "D8_REQUIRE_SDK_TEST is set but no Python with the openai package was found"
        );
        eprintln!(
            "skipped: no Python with the `openai` package (python3 -m venv target/sdk-venv && target/sdk-venv/bin/pip install openai)"
        );
        return;
    };
    let c = TestCluster::start().await;
    let _a = c.worker("sdk-a", 0, 4).await;
    let _b = c.worker("sdk-b", 0, 4).await;
    let base = format!("{}/v1", c.base);
    super::harness::run_python_checks(
        &python,
        "tests/sdk/openai_sdk.py",
        &[
            ("OPENAI_BASE_URL", base.as_ref()),
            ("OPENAI_API_KEY", c.key.as_ref()),
        ],
        120,
    )
    .await;
}
