//! Code functions: the time from the deploy request to `ready` (build + push + pull +
//! start + health check) for a python311 function on an agent with an empty cache, and
//! the same redeploy (new code) on an agent that has the runtime's base layers cached.
//! Runs alternate between agents with the start-up CPU boost (`startup_cpu_millis`, its
//! default of a whole vCPU until the instance is ready) and without it (0: its 256 MB
//! share, 0.14 vCPU, from the start).
//! Beside them, the baseline a user would otherwise run before an image deploy: `buildah
//! bud` of the same image (FROM the runtime's base, COPY the code) and `buildah push`.
//!
//! The control plane and the agents are the release binaries as processes (the product as
//! shipped), each run's agent a new one with an empty cache.
//!
//! Run it with scripts/bench; `codedeploy [runs]`, 3 runs of each by default.
#![allow(clippy::unwrap_used, clippy::too_many_lines, missing_docs)]

use std::io::Write;
use std::time::{Duration, Instant};

use fnrt_tests::real_parts;
use fnrt_tests::shipped::{ShippedAgent, ShippedControlPlane};
use serde_json::{json, Value};

fn zip_of(code: &str) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    w.start_file("handler.py", zip::write::SimpleFileOptions::default()).unwrap();
    w.write_all(code.as_bytes()).unwrap();
    w.finish().unwrap().into_inner()
}

fn code(n: usize) -> String {
    format!("def handle(event, context):\n    return {{\"version\": {n}}}\n")
}

struct Api {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Api {
    async fn send(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let r = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("X-Auth-Token", &self.token)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = r.status();
        let v: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
        assert!(status.is_success(), "{path}: {v}");
        v
    }

    async fn upload(&self, id: &str, zip: Vec<u8>) {
        let u = self.send(reqwest::Method::GET, &format!("/functions/{id}/upload-url"), json!({})).await;
        let r = self.http.put(u["url"].as_str().unwrap()).body(zip).send().await.unwrap();
        let status = r.status();
        assert!(status.is_success(), "upload: {status} {}", r.text().await.unwrap_or_default());
    }

    /// Deploy request to `ready`; the build's own message.
    async fn deploy(&self, id: &str) -> (Duration, String) {
        let t0 = Instant::now();
        self.send(reqwest::Method::POST, &format!("/functions/{id}/deploy"), json!({})).await;
        loop {
            let f = self.send(reqwest::Method::GET, &format!("/functions/{id}"), json!({})).await;
            match f["status"].as_str().unwrap() {
                "ready" => return (t0.elapsed(), f["build_message"].as_str().unwrap_or("").to_string()),
                "error" => panic!("deploy failed: {f}"),
                _ => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }
}

/// Whether the control plane sees `node` as a ready agent.
async fn ready_agent(api: &Api, cp: &ShippedControlPlane, node: &str) -> bool {
    let r = api.http.get(format!("{}/fnrt/v1/agents", cp.api)).header("X-Auth-Token", &api.token).send();
    let v: Value = serde_json::from_slice(&r.await.unwrap().bytes().await.unwrap()).unwrap();
    v["agents"].as_array().unwrap().iter().any(|a| a["node"] == node && a["state"] == "ready")
}

fn buildah(state: &str, args: &[&str]) {
    let out = std::process::Command::new("buildah")
        .args([
            "--storage-driver",
            "vfs",
            "--root",
            &format!("{state}/buildah/root"),
            "--runroot",
            &format!("{state}/buildah/run"),
        ])
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "buildah {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    let runs: usize = std::env::args().nth(1).map(|a| a.parse().expect("runs must be a number")).unwrap_or(3);
    let parts = real_parts();
    let state = parts.state_dir.display().to_string();
    let cp = ShippedControlPlane::start(&["lost_after_ms=1000".into()]).await;
    let api = Api { base: cp.region_url(), token: cp.admin_token.clone(), http: fnrt_tests::http() };
    let ns = api.send(reqwest::Method::POST, "/namespaces", json!({ "name": "bench" })).await;
    let (mut cold, mut cached, mut builds, mut baseline) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut unboosted_cold, mut unboosted) = (Vec::new(), Vec::new());
    let base = format!("{}/fnrt/runtime-python311:latest", parts.registry);
    for run in 0..runs * 2 {
        // An agent with an empty cache: the first deploy pulls the base layers too. Odd
        // runs: no start-up boost.
        let boost = run % 2 == 0;
        let agent = ShippedAgent::start_with(&cp, |c| {
            if !boost {
                c.startup_cpu_millis = 0;
            }
        })
        .await;
        let tag = if boost { "" } else { " (no boost)" };
        let f = api
            .send(
                reqwest::Method::POST,
                "/functions",
                json!({ "namespace_id": ns["id"], "name": format!("py{run}"), "runtime": "python311",
                        "handler": "handler.handle", "min_scale": 1, "memory_limit": 256 }),
            )
            .await;
        let id = f["id"].as_str().unwrap().to_string();
        api.upload(&id, zip_of(&code(1))).await;
        let (t, m) = api.deploy(&id).await;
        if boost { &mut cold } else { &mut unboosted_cold }.push(ms(t));
        println!("cold   run {run}: {:8.1} ms  ({m}){tag}", ms(t));
        // New code, same runtime: only the code layer is new to the node.
        api.upload(&id, zip_of(&code(2))).await;
        let (t, m) = api.deploy(&id).await;
        if boost { &mut cached } else { &mut unboosted }.push(ms(t));
        let build_ms: f64 =
            m.rsplit(" in ").next().and_then(|s| s.trim_end_matches(" ms").parse().ok()).unwrap_or(f64::NAN);
        builds.push(build_ms);
        println!("cached run {run}: {:8.1} ms  ({m}){tag}", ms(t));
        api.send(reqwest::Method::DELETE, &format!("/functions/{id}"), json!({})).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let node = agent.cfg.node_name.clone();
        agent.cleanup().await;
        // The next run's agent must be the only one placement can pick.
        while ready_agent(&api, &cp, &node).await {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        if !boost {
            continue;
        }
        // Baseline: the user's own build and push of the same image.
        let ctx = tempfile::tempdir().unwrap();
        std::fs::write(ctx.path().join("handler.py"), code(3 + run)).unwrap();
        std::fs::write(
            ctx.path().join("Containerfile"),
            format!("FROM {base}\nCOPY handler.py /var/user/handler.py\nENV SCF_HANDLER=handler.handle\n"),
        )
        .unwrap();
        let tag = format!("{}/bench/baseline:{run}", parts.registry);
        let t0 = Instant::now();
        buildah(
            &state,
            &[
                "bud",
                "--quiet",
                "--format",
                "oci",
                "--tls-verify=false",
                "-t",
                &tag,
                &ctx.path().display().to_string(),
            ],
        );
        buildah(&state, &["push", "--quiet", "--tls-verify=false", &tag, &format!("docker://{tag}")]);
        baseline.push(ms(t0.elapsed()));
        println!("buildah run {run}: {:8.1} ms", ms(t0.elapsed()));
    }
    let (c, w, b, base_ms) =
        (median(&mut cold), median(&mut cached), median(&mut builds), median(&mut baseline));
    println!("\ncode function deploy to ready, median of {runs} (python311, 256 MB, min_scale 1)");
    println!("empty node cache (build + push + pull + start)   {c:8.1} ms");
    println!(
        "base layers cached on the node                    {w:8.1} ms  ({:.2}x of the cold deploy)",
        w / c
    );
    println!("  of which the build and push of the code image   {b:8.1} ms");
    let (uc, uw) = (median(&mut unboosted_cold), median(&mut unboosted));
    println!("without the start-up CPU boost: empty cache        {uc:8.1} ms");
    println!(
        "without the start-up CPU boost: base layers cached {uw:8.1} ms  (boosted/unboosted {:.2}x)",
        w / uw
    );
    println!(
        "baseline: buildah bud + push of the same image    {base_ms:8.1} ms  (our build {:.2}x of it)",
        b / base_ms
    );
    cp.stop().await;
}
