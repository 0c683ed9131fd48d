//! schemathesis (PyPI) against openapi.json and every function at once: no
//! 5xx, and every answer is one the document allows (status, content type,
//! headers, body schema). Installed by scripts/deploy-tools.sh into
//! `.dev/venv-fuzz`; `FINAPP_SCHEMATHESIS` may name another binary.

use std::path::PathBuf;

use finapp_tests::{TestApp, TestEnv, all_functions, workspace_root};
use tokio::process::Command;

/// Cases per operation: a few hundred, as the suite's time allows.
const CASES_PER_OPERATION: u32 = 200;
/// The run is the same every time.
const SEED: u32 = 20261201;

fn schemathesis() -> PathBuf {
    std::env::var_os("FINAPP_SCHEMATHESIS")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".dev/venv-fuzz/bin/schemathesis"))
}

#[tokio::test]
async fn schemathesis_finds_no_server_error_and_no_answer_outside_the_document() {
    let binary = schemathesis();
    assert!(
        binary.exists(),
        "{} is missing: run scripts/deploy-tools.sh",
        binary.display()
    );
    // Throttling would turn most fuzzed logins into 429s, and the cap most
    // fuzzed applications into 409s: both are documented, but the fuzzer
    // should reach the paths behind them.
    let env = TestEnv::new()
        .with_var("LOGIN_MAX_FAILURES", 1_000_000)
        .with_var("LOGIN_MAX_FAILURES_PER_ADDRESS", 1_000_000)
        .with_var("MAX_PENDING_APPLICATIONS", 1_000_000);
    let app = TestApp::spawn(&env, all_functions).await;
    finapp_admin::seed_financing_options(&app.deps.store)
        .await
        .unwrap();
    // An admin's token opens every route; the user routes then act for the admin.
    let admin = app.admin_token("fuzz_admin").await;
    app.apply(&admin, 1000.0).await;

    let output = Command::new(&binary)
        .arg("run")
        .arg(workspace_root().join("openapi.json"))
        .arg("--url")
        .arg(app.url(""))
        .arg("--header")
        .arg(format!("Authorization: Bearer {admin}"))
        .args(["--checks", "not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance,negative_data_rejection"])
        .args(["--phases", "examples,coverage,fuzzing"])
        .args(["--max-examples", &CASES_PER_OPERATION.to_string()])
        .args(["--seed", &SEED.to_string()])
        // One worker: schemathesis' workers are threads of one Python, and
        // CPython 3.11's AST constructor keeps its recursion depth per
        // interpreter, so two threads parsing at once can fail hypothesis
        // with "AST constructor recursion depth mismatch" (seen here on
        // 3.11.7, an error of the tool, not a finding about the API). Under
        // the GIL the second worker bought little anyway.
        .args(["--workers", "1", "--no-color"])
        .args(["--request-timeout", "10"])
        .env("SCHEMATHESIS_HOOKS", "")
        .current_dir(std::env::temp_dir())
        .output()
        .await
        .expect("schemathesis runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "schemathesis found failures:\n{stdout}\n{stderr}"
    );
    eprintln!(
        "{}",
        stdout.lines().rev().take(12).collect::<Vec<_>>().join("\n")
    );
}
