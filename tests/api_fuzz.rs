//! The API fuzzed against its own OpenAPI document: the release control plane as a
//! process, `schemathesis` (PyPI, in the SDK's virtual environment) reading the document
//! it serves at `/fnrt/v1/openapi.json` and sending generated requests, valid and not, to
//! every operation, then chains of them along the document's links. It fails on any 5xx,
//! an answer the document does not describe (status, content type, JSON schema, so every
//! error in Scaleway's JSON shape), a request the document says is invalid but the API
//! took, an operation that answers without the admin key, or a panic in the log.
//! `FNRT_API_FUZZ_EXAMPLES` (default 50) bounds the examples per operation; the seed is
//! random and printed, `FNRT_API_FUZZ_SEED` replays one.
#![allow(missing_docs, clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::Duration;

use fnrt_tests::shipped::ShippedControlPlane;
use tokio::process::Command;

fn schemathesis() -> PathBuf {
    let py = std::env::var("FNRT_SDK_PYTHON").unwrap_or_else(|_| {
        panic!("FNRT_SDK_PYTHON is not set: run the tests with scripts/test, which makes the virtual environment")
    });
    let bin = PathBuf::from(py).with_file_name("schemathesis");
    assert!(bin.exists(), "{} is missing: scripts/test installs schemathesis with the SDK", bin.display());
    bin
}

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_answers_as_its_openapi_document_says() {
    let webhook = format!("webhook-{:032x}", rand::random::<u128>());
    let cp = ShippedControlPlane::start(&[format!("webhook_token={webhook}")]).await;
    let examples: u32 = env_or("FNRT_API_FUZZ_EXAMPLES", 50);
    let seed: u64 = env_or("FNRT_API_FUZZ_SEED", rand::random::<u32>().into());
    // Its own working directory: schemathesis keeps a .hypothesis database there.
    let work = tempfile::tempdir().unwrap();
    let out = tokio::time::timeout(
        Duration::from_secs(600),
        Command::new(schemathesis())
            .current_dir(work.path())
            .args(["run", &format!("{}/fnrt/v1/openapi.json", cp.api)])
            .args(["--header", &format!("X-Auth-Token: {}", cp.admin_token)])
            .args(["--header", &format!("Authorization: Bearer {webhook}")])
            .args(["--max-examples", &examples.to_string(), "--seed", &seed.to_string()])
            .args(["--phases", "coverage,fuzzing,stateful"])
            // Every check but "a request the document allows is accepted": the document
            // cannot say which ids exist or which names are taken.
            .args(["--checks", "all", "--exclude-checks", "positive_data_acceptance"])
            .args(["--request-timeout", "10", "--no-color", "--output-truncate", "false"])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("schemathesis ran over 600 s")
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let summary: Vec<&str> =
        text.lines().filter(|l| l.contains("generated") || l.starts_with("=====")).collect();
    println!("schemathesis, seed {seed}, {examples} examples per operation: {summary:?}");
    assert!(
        out.status.success(),
        "schemathesis found problems (replay with FNRT_API_FUZZ_SEED={seed}):\n{text}\n{}\ncontrol plane log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        cp.log()
    );
    assert!(text.contains("Stateful"), "schemathesis ran no stateful phase:\n{text}");
    cp.stop().await;
}
