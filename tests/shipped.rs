//! The product as shipped: every user flow through the release binaries started as
//! processes, the way the README and scripts/demo start them (`fnrt-controlplane`,
//! `fnrt-agent` and `agentctl`), with the clients users have: Scaleway's official Python
//! SDK, the Serverless Framework with Scaleway's plugin, plain curl, and agentctl.
//! In-process servers elsewhere are for fast tests; these are the proof.
#![allow(missing_docs, clippy::unwrap_used, clippy::too_many_lines)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fnrt_tests::image;
use fnrt_tests::shipped::{ShippedAgent, ShippedControlPlane};
use serde_json::{json, Value};
use tokio::process::Command;

/// Runs curl with `args` (30 s at most); the status and body. A transport failure (a
/// connection closed without an answer, as a panicking server gives) fails the test.
async fn curl(args: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "30", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .await
        .expect("curl runs (scripts/test installs it)");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "curl {args:?} failed ({}): {}{stdout}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let (body, code) = stdout.rsplit_once('\n').unwrap();
    (code.trim().parse().unwrap(), body.to_string())
}

/// A call of the region's API with curl, as a user types it.
async fn api(cp: &ShippedControlPlane, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let url = format!("{}{path}", cp.region_url());
    let auth = format!("X-Auth-Token: {}", cp.admin_token);
    let data = body.map(|b| b.to_string());
    let mut args = vec!["-X", method, "-H", &auth, "-H", "Content-Type: application/json", &url];
    if let Some(d) = &data {
        args.extend(["-d", d]);
    }
    let (status, text) = curl(&args).await;
    let v = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{method} {path}: {status} {text:?}"));
    (status, v)
}

async fn ok(cp: &ShippedControlPlane, method: &str, path: &str, body: Option<Value>) -> Value {
    let (status, v) = api(cp, method, path, body).await;
    assert_eq!(status, 200, "{method} {path}: {v}\ncontrol plane log:\n{}", cp.log());
    v
}

/// Polls function `id` until it is no longer pending (3 minutes at most).
async fn settled(cp: &ShippedControlPlane, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let f = ok(cp, "GET", &format!("/functions/{id}"), None).await;
        if f["status"] != "pending" && f["status"] != "creating" {
            return f;
        }
        assert!(Instant::now() < deadline, "function {id} stayed pending: {f}\n{}", cp.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A zip of `files` (name, content, unix mode).
fn zip_of(path: &Path, files: &[(&str, &str, u32)]) {
    let mut z = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    for (name, content, mode) in files {
        let opts = zip::write::SimpleFileOptions::default().unix_permissions(*mode);
        z.start_file(*name, opts).unwrap();
        z.write_all(content.as_bytes()).unwrap();
    }
    z.finish().unwrap();
}

/// The value of header `name` in the echo fixture's answer.
fn header<'a>(v: &'a Value, name: &str) -> Option<&'a str> {
    v["headers"].as_array()?.iter().find(|h| h[0].as_str().is_some_and(|k| k.eq_ignore_ascii_case(name)))?[1]
        .as_str()
}

/// The value of `series` (name and labels, as exposed) in a Prometheus text exposition.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Scrapes the control plane's `/metrics` with curl until every `(series, at least)` holds
/// (10 s at most: a cron's run is counted once its call returns); the exposition.
async fn metrics_reach(cp: &ShippedControlPlane, wanted: &[(String, f64)]) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, text) = curl(&[&format!("{}/metrics", cp.metrics)]).await;
        assert_eq!(status, 200, "{text}");
        let short: Vec<&(String, f64)> =
            wanted.iter().filter(|(s, min)| sample(&text, s).is_none_or(|v| v < *min)).collect();
        if short.is_empty() {
            return text;
        }
        assert!(Instant::now() < deadline, "metrics short of {short:?}:\n{text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn curl_and_agentctl_drive_the_release_binaries() {
    let nats = fnrt_tests::nats::Nats::start().await;
    let cp = ShippedControlPlane::start(&[format!("nats_url={}", nats.url)]).await;
    let agent = ShippedAgent::start(&cp).await;

    // The runtimes check builds the control plane's registry client: the shipped binary
    // once closed the connection here (no TLS crypto provider in the process).
    let runtimes = ok(&cp, "GET", "/runtimes", None).await;
    let names: Vec<&str> =
        runtimes["runtimes"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert!(names.contains(&"python311") && names.contains(&"custom"), "{runtimes}");

    // An image function, created the way the Go SDK sends it: every enum's zero value.
    let ns = ok(&cp, "POST", "/namespaces", Some(json!({ "name": "curl" }))).await;
    let ns_id = ns["id"].as_str().unwrap();
    let f = ok(
        &cp,
        "POST",
        "/functions",
        Some(json!({
            "namespace_id": ns_id, "name": "echo", "registry_image": image("echo"), "min_scale": 1,
            "memory_limit": 128, "privacy": "private", "runtime": "unknown_runtime",
            "http_option": "unknown_http_option", "sandbox": "unknown_sandbox", "tags": null,
            "secret_environment_variables": null, "environment_variables": {},
        })),
    )
    .await;
    assert_eq!((f["http_option"].as_str(), f["sandbox"].as_str()), (Some("enabled"), Some("v2")), "{f}");
    let id = f["id"].as_str().unwrap().to_string();
    let (status, dup) =
        api(&cp, "POST", "/functions", Some(json!({ "namespace_id": ns_id, "name": "echo" }))).await;
    assert_eq!(
        (status, dup["type"].as_str(), dup["resource_id"].as_str()),
        (409, Some("already_exists"), Some(id.as_str())),
        "{dup}"
    );
    ok(&cp, "POST", &format!("/functions/{id}/deploy"), Some(json!({}))).await;
    // SCF's Command and Args: the image that crashes at start, started as the echo server
    // instead; a command whose program is empty is refused.
    let (status, bad) = api(
        &cp,
        "POST",
        "/functions",
        Some(json!({ "namespace_id": ns_id, "name": "bad-cmd", "registry_image": image("crashes"), "command": [""] })),
    )
    .await;
    assert_eq!((status, bad["details"][0]["argument_name"].as_str()), (400, Some("command")), "{bad}");
    let started = ok(
        &cp,
        "POST",
        "/functions",
        Some(json!({
            "namespace_id": ns_id, "name": "cmd", "registry_image": image("crashes"), "min_scale": 1,
            "memory_limit": 128, "command": ["/crashes"], "args": ["echo"],
        })),
    )
    .await;
    assert_eq!(
        (started["command"][0].as_str(), started["args"][0].as_str()),
        (Some("/crashes"), Some("echo"))
    );
    let cmd_id = started["id"].as_str().unwrap().to_string();
    ok(&cp, "POST", &format!("/functions/{cmd_id}/deploy"), None).await;
    // An event function (SCF's event type): crons, triggers and the API's invoke call it
    // at POST /event-invoke; the gateway takes no HTTP calls for it.
    let ev = ok(
        &cp,
        "POST",
        "/functions",
        Some(json!({
            "namespace_id": ns_id, "name": "ev", "registry_image": image("echo"), "min_scale": 1,
            "memory_limit": 256, "scf_type": "event", "image_acceleration": true,
        })),
    )
    .await;
    assert_eq!(ev["scf_type"], "event", "{ev}");
    let ev_id = ev["id"].as_str().unwrap().to_string();
    ok(&cp, "POST", &format!("/functions/{ev_id}/deploy"), None).await;
    // A cron every minute on it: SCF's timer event is looked for at the end.
    ok(
        &cp,
        "POST",
        "/crons",
        Some(json!({ "function_id": ev_id, "name": "tick", "schedule": "* * * * *", "args": { "job": "shipped-cron" } })),
    )
    .await;
    // A cron of a function never deployed: its runs fail, and it says so.
    let never = ok(
        &cp,
        "POST",
        "/functions",
        Some(json!({ "namespace_id": ns_id, "name": "never", "registry_image": image("echo") })),
    )
    .await;
    let doomed = ok(
        &cp,
        "POST",
        "/crons",
        Some(json!({ "function_id": never["id"], "name": "doomed", "schedule": "* * * * *" })),
    )
    .await;
    let doomed_id = doomed["id"].as_str().unwrap().to_string();

    // A custom-runtime code function: its zip PUT with curl to the signed upload URL.
    let c = ok(
        &cp,
        "POST",
        "/functions",
        Some(json!({ "namespace_id": ns_id, "name": "site", "runtime": "custom", "min_scale": 1 })),
    )
    .await;
    let cid = c["id"].as_str().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let zip = dir.path().join("code.zip");
    zip_of(
        &zip,
        &[
            ("scf_bootstrap", "#!/bin/sh\nexec busybox httpd -f -p 9000 -h /var/user/www\n", 0o755),
            ("www/index.html", "custom from curl", 0o644),
        ],
    );
    let len = std::fs::metadata(&zip).unwrap().len();
    let u = ok(&cp, "GET", &format!("/functions/{cid}/upload-url?content_length={len}"), None).await;
    let (status, text) = curl(&[
        "-X",
        "PUT",
        "-H",
        "Content-Type: application/octet-stream",
        "--data-binary",
        &format!("@{}", zip.display()),
        u["url"].as_str().unwrap(),
    ])
    .await;
    assert_eq!(status, 200, "{text}");
    // The URL serves once; another one is made for its length only; a forged one is
    // refused before its body is read.
    let data = format!("@{}", zip.display());
    let put = |url: String| {
        let data = data.clone();
        async move { curl(&["-X", "PUT", "--data-binary", &data, &url]).await }
    };
    let (status, text) = put(u["url"].as_str().unwrap().to_string()).await;
    assert_eq!(status, 401, "a second use: {text}");
    assert!(text.contains("used already"), "{text}");
    // Two URLs asked for at once for one length are two URLs, each good once (they were
    // one and the same URL when made in the same second).
    let path = format!("/functions/{cid}/upload-url?content_length={len}");
    let (a, b) = (ok(&cp, "GET", &path, None).await, ok(&cp, "GET", &path, None).await);
    assert_ne!(a["url"], b["url"]);
    for u in [a, b] {
        let (status, text) = put(u["url"].as_str().unwrap().to_string()).await;
        assert_eq!(status, 200, "{text}");
    }
    let short =
        ok(&cp, "GET", &format!("/functions/{cid}/upload-url?content_length={}", len - 1), None).await;
    let (status, text) = put(short["url"].as_str().unwrap().to_string()).await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("over") && text.contains("this upload URL was made for"), "{text}");
    let forged = u["url"].as_str().unwrap().replace("length=", "length=9");
    let (status, _) = put(forged).await;
    assert_eq!(status, 401);
    // An upload that breaks off (20 KB at 1 KB/s, cut after 1 s) is streamed to a file of
    // its own, which goes with it: only the good zip is kept.
    let big = dir.path().join("big.bin");
    std::fs::write(&big, vec![7u8; 20_000]).unwrap();
    let open = ok(&cp, "GET", &format!("/functions/{cid}/upload-url"), None).await;
    let cut = Command::new("curl")
        .args(["-s", "-X", "PUT", "--limit-rate", "1k", "--max-time", "1", "--data-binary"])
        .arg(format!("@{}", big.display()))
        .arg(open["url"].as_str().unwrap())
        .output()
        .await
        .unwrap();
    assert!(!cut.status.success(), "the cut upload ended by itself");
    let code_dir = cp.dir.path().join("state/code");
    let kept = || -> Vec<String> {
        std::fs::read_dir(&code_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into())
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while kept() != [format!("{cid}.zip")] {
        assert!(Instant::now() < deadline, "left in {}: {:?}", code_dir.display(), kept());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(std::fs::metadata(code_dir.join(format!("{cid}.zip"))).unwrap().len(), len);
    ok(&cp, "POST", &format!("/functions/{cid}/deploy"), Some(json!({}))).await;

    let ready = settled(&cp, &id).await;
    assert_eq!(ready["status"], "ready", "{ready}\n{}", cp.log());
    // The memory advice of the image's size reaches the user (128 MB for an image under
    // 256 MB, where SCF advises 256 to 512 MB).
    let advice = ready["runtime_message"].as_str().unwrap_or_default();
    assert!(advice.contains("memory 128 MB is below") && advice.contains("256 to 512 MB"), "{ready}");
    let built = settled(&cp, &cid).await;
    assert_eq!(built["status"], "ready", "{built}\n{}", cp.log());
    assert!(built["build_message"].as_str().unwrap().starts_with("built "), "{built}");

    // Through the gateway: private without a token, then with one.
    let call = format!("{}/curl/echo/hello?x=1", cp.gateway);
    let (status, _) = curl(&[&call]).await;
    assert_eq!(status, 403);
    let token = ok(&cp, "POST", "/tokens", Some(json!({ "function_id": id }))).await;
    let auth = format!("X-Auth-Token: {}", token["token"].as_str().unwrap());
    let (status, text) = curl(&["-H", &auth, "-H", "X-Scf-Name: forged", "-d", "hi", &call]).await;
    assert_eq!(status, 200, "{text}");
    let seen: Value = serde_json::from_str(&text).unwrap();
    assert_eq!((seen["path"].as_str(), seen["body"].as_str()), (Some("/hello?x=1"), Some("hi")));
    assert_eq!(header(&seen, "x-scf-name"), Some("echo"), "{seen}");
    let (status, text) = curl(&[&format!("{}/curl/site/", cp.gateway)]).await;
    assert_eq!((status, text.as_str()), (200, "custom from curl"));
    let ev = settled(&cp, &ev_id).await;
    assert_eq!(ev["status"], "ready", "{ev}\n{}", cp.log());
    // Image acceleration: the agent that runs it keeps its image (listed pinned).
    let echo_pinned =
        || async {
            let (code, out, err) = agent.agentctl(&["-o", "json", "image", "ls"]).await;
            assert_eq!(code, 0, "{err}");
            let v: Value = serde_json::from_str(&out).unwrap();
            v["images"].as_array().unwrap().iter().any(|i| {
                i["reference"].as_str().is_some_and(|r| r.contains("fnrt/echo")) && i["pinned"] == true
            })
        };
    assert!(echo_pinned().await, "the accelerated function's image is not kept");
    let (status, text) = curl(&[&format!("{}/curl/ev/", cp.gateway)]).await;
    assert_eq!(status, 400, "an HTTP call reached an event function: {text}");
    assert!(text.contains("is an event function"), "{text}");
    let invoked = ok(&cp, "POST", &format!("/functions/{ev_id}/invoke"), Some(json!({ "k": "v" }))).await;
    assert_eq!(invoked["status"], 200, "{invoked}");
    let seen: Value = serde_json::from_str(invoked["body"].as_str().unwrap()).unwrap();
    assert_eq!(
        (seen["method"].as_str(), seen["path"].as_str()),
        (Some("POST"), Some("/event-invoke")),
        "{seen}"
    );
    assert_eq!(seen["body"].as_str(), Some(r#"{"k":"v"}"#), "{seen}");
    assert!(!invoked["request_id"].as_str().unwrap_or_default().is_empty(), "{invoked}");
    // Queued through NATS: 202 and a request id; the call's lines carry that id.
    let (status, queued) = api(
        &cp,
        "POST",
        &format!("/functions/{ev_id}/invoke?invocation_type=event"),
        Some(json!({ "q": 1 })),
    )
    .await;
    assert_eq!((status, queued["status"].as_str()), (202, Some("queued")), "{queued}");
    let rid = queued["request_id"].as_str().unwrap();
    let url = format!("{}/fnrt/v1/functions/{ev_id}/logs?request_id={rid}", cp.api);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, text) = curl(&["-H", &format!("X-Auth-Token: {}", cp.admin_token), &url]).await;
        assert_eq!(status, 200, "{text}");
        if text.contains(r#"echo: async event: {\"q\":1}"#) {
            break;
        }
        assert!(Instant::now() < deadline, "the queued call did not come in 20 s: {text}\n{}", cp.log());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let cmd = settled(&cp, &cmd_id).await;
    assert_eq!(cmd["status"], "ready", "{cmd}\n{}", cp.log());
    let (status, text) = curl(&["-d", "by command", &format!("{}/curl/cmd/", cp.gateway)]).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(serde_json::from_str::<Value>(&text).unwrap()["body"], "by command", "{text}");

    // Straight to the agent's data plane (TLS beyond loopback): without a certificate no
    // answer; with the control plane's but without the gateway's signature, 401.
    let node = agent.client.clone().node_status(fnrt_proto::agent::v1::NodeStatusRequest {}).await.unwrap();
    let port = node.into_inner().dataplane_address.rsplit(':').next().unwrap().to_string();
    let direct = format!("https://127.0.0.1:{port}/function/fn-{id}/hello");
    let anonymous = Command::new("curl")
        .args(["-sk", "--max-time", "10", "-o", "/dev/null", "-w", "%{http_code}", &direct])
        .output()
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&anonymous.stdout),
        "000",
        "a call without a certificate was answered"
    );
    let (cert, key) = (cp.ca.join("controlplane.pem"), cp.ca.join("controlplane.key"));
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    let (status, text) = curl(&["-k", "--cert", &cert, "--key", &key, &direct]).await;
    assert_eq!(status, 401, "{text}");

    // agentctl on the node: an instance started on its own is called like a deployed one.
    let echo = image("echo");
    let (code, _, err) =
        agent.agentctl(&["instance", "start", "solo", &echo, "--timeout-ms", "1000", "-m", "256"]).await;
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = agent.agentctl(&["invoke", "solo", "--path", "/x", "-d", "payload"]).await;
    assert_eq!(code, 0, "{err}");
    // Its start command, as SCF's Command and Args: the image that crashes at start serves.
    let crashes = image("crashes");
    let (code, _, err) = agent
        .agentctl(&["instance", "start", "solo-cmd", &crashes, "--command", "/crashes", "--arg", "echo"])
        .await;
    assert_eq!(code, 0, "{err}");
    let (code, by_cmd, err) = agent.agentctl(&["invoke", "solo-cmd", "--path", "/c"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(by_cmd.contains(r#""path":"/c""#), "{by_cmd}");
    let seen: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (header(&seen, "x-scf-timeout"), header(&seen, "x-scf-memory")),
        (Some("1000"), Some("256")),
        "{seen}"
    );
    assert_eq!(header(&seen, "x-scf-name"), Some("solo"), "{seen}");
    let (code, out, err) = agent.agentctl(&["invoke", "solo", "--path", "/_fixture/sleep?ms=3000"]).await;
    assert_ne!(code, 0, "{out}");
    assert!(err.contains("504") || out.contains("timeout of 1000 ms"), "{out}{err}");
    // An endless answer stops at 6 MB; one that streams past the timeout is cut, with a
    // clear error, not a short answer that looks whole.
    let (code, out, err) = agent.agentctl(&["invoke", "solo", "--path", "/_fixture/stream?kb=0"]).await;
    assert_ne!(code, 0, "an endless answer was taken whole");
    assert!(err.contains("over 6000000 bytes"), "{out:.200}{err}");
    let t0 = Instant::now();
    let (code, _, err) =
        agent.agentctl(&["invoke", "solo", "--path", "/_fixture/stream?kb=640&ms=500"]).await;
    assert_ne!(code, 0, "an answer went on past the function's timeout");
    assert!(t0.elapsed() < Duration::from_secs(4), "{:?}: {err}", t0.elapsed());
    let controlplane = format!("--controlplane={}", cp.api);
    let admin = format!("--admin-token={}", cp.admin_token);
    let (code, out, err) = agent.agentctl(&["cluster", &controlplane, &admin, "agents"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&agent.cfg.node_name), "{out}");

    // The cron's call reached the function (timer event with its args), read with agentctl logs.
    let deadline = Instant::now() + Duration::from_secs(75);
    loop {
        let (code, out, err) = agent.agentctl(&["logs", &format!("fn-{ev_id}")]).await;
        assert_eq!(code, 0, "{err}");
        let timer = |l: &str| {
            l.contains("echo: Timer event")
                && l.contains(r#""Type":"Timer""#)
                && l.contains(r#""TriggerName":"tick""#)
        };
        if out.lines().any(|l| timer(l) && l.contains("shipped-cron")) {
            break;
        }
        assert!(Instant::now() < deadline, "no cron call in 75 s; logs:\n{out}\n{}", cp.log());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // The same lines gathered by the control plane from every agent, with their node:
    // agentctl logs --controlplane, then the API by the call's request id.
    let admin = format!("--admin-token={}", cp.admin_token);
    let (code, out, err) =
        agent.agentctl(&["-o", "json", "logs", "--controlplane", &cp.api, &admin, &ev_id]).await;
    assert_eq!(code, 0, "{err}");
    let line: Value = out
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["line"].as_str().is_some_and(|l| l.contains("echo: Timer event")))
        .unwrap_or_else(|| panic!("no timer line through the control plane: {out}"));
    assert_eq!(line["node"].as_str(), Some(agent.cfg.node_name.as_str()), "{line}");
    let rid = line["request_ids"][0].as_str().unwrap().to_string();
    let url = format!("{}/fnrt/v1/functions/{ev_id}/logs?request_id={rid}", cp.api);
    let (status, text) = curl(&["-H", &format!("X-Auth-Token: {}", cp.admin_token), &url]).await;
    assert_eq!(status, 200, "{text}");
    let by_call: Value = serde_json::from_str(&text).unwrap();
    let lines = by_call["logs"].as_array().unwrap();
    assert!(!lines.is_empty() && lines.iter().all(|l| l["request_ids"][0] == rid.as_str()), "{text}");
    // Followed: the kept lines come at once as JSON lines, then the stream stays open.
    let followed = Command::new("curl")
        .args(["-sN", "--max-time", "3", "-H", &format!("X-Auth-Token: {}", cp.admin_token)])
        .arg(format!("{}/fnrt/v1/functions/{ev_id}/logs?follow=true", cp.api))
        .output()
        .await
        .unwrap();
    assert_eq!(followed.status.code(), Some(28), "the followed stream ended by itself");
    let text = String::from_utf8_lossy(&followed.stdout);
    assert!(text.lines().any(|l| l.contains("echo: Timer event") && l.contains(r#""node""#)), "{text}");

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let c = ok(&cp, "GET", &format!("/crons/{doomed_id}"), None).await;
        if c["status"] == "error" {
            assert!(c["error_message"].as_str().unwrap().contains("runs on no agent"), "{c}");
            break;
        }
        assert!(Instant::now() < deadline, "the failing cron does not say so: {c}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The control plane's metrics moved with all this (README "Running the control plane").
    let (status, _) = curl(&[&format!("{}/nowhere/nothing/", cp.gateway)]).await;
    assert_eq!(status, 404);
    let regional = "/functions/v1beta1/regions/{region}";
    let api = |route: &str, method: &str, code: u16| {
        let labels = format!("route=\"{regional}{route}\",method=\"{method}\",code=\"{code}\"");
        format!("fnrt_controlplane_api_requests_total{{{labels}}}")
    };
    let api_4xx = format!(
        "fnrt_controlplane_api_errors_total{{route=\"{regional}/functions\",method=\"POST\",class=\"4xx\"}}"
    );
    let gw = |function: &str, code: u16| {
        format!("fnrt_controlplane_gateway_calls_total{{function=\"{function}\",code=\"{code}\"}}")
    };
    let text = metrics_reach(
        &cp,
        &[
            (api("/functions", "POST", 200), 5.0),
            (api("/functions", "POST", 409), 1.0),
            (api("/functions/{id}/deploy", "POST", 200), 4.0),
            (api_4xx, 2.0),
            ("fnrt_controlplane_deploys_total{outcome=\"ready\"}".into(), 4.0),
            (gw("curl/echo", 200), 1.0),
            (gw("curl/echo", 403), 1.0),
            (gw("curl/ev", 400), 1.0),
            (gw("unknown", 404), 1.0),
            ("fnrt_controlplane_gateway_call_duration_seconds_count{function=\"curl/echo\"}".into(), 2.0),
            ("fnrt_controlplane_agents{state=\"connected\"}".into(), 1.0),
            ("fnrt_controlplane_reconcile_duration_seconds_count".into(), 1.0),
            ("fnrt_controlplane_cron_runs_total{outcome=\"ok\"}".into(), 1.0),
            ("fnrt_controlplane_cron_runs_total{outcome=\"call_failed\"}".into(), 1.0),
        ],
    )
    .await;
    assert_eq!(sample(&text, "fnrt_controlplane_agents{state=\"connected\"}"), Some(1.0), "{text}");
    // (The last -w is curl's: the type, then the status the helper reads.)
    let (status, kind) =
        curl(&["-o", "/dev/null", "-w", "%{content_type}\n%{http_code}", &format!("{}/metrics", cp.metrics)])
            .await;
    assert_eq!((status, kind.as_str()), (200, "text/plain; version=0.0.4"));
    // Labels stay bounded: no path or id as asked for, no function the control plane
    // does not know.
    assert!(!text.contains(&id) && !text.contains("/nowhere") && !text.contains("fr-par"), "{text}");

    ok(&cp, "DELETE", &format!("/namespaces/{ns_id}"), None).await;
    // Its functions gone, the agent keeps the image no more.
    let deadline = Instant::now() + Duration::from_secs(20);
    while echo_pinned().await {
        assert!(Instant::now() < deadline, "the image of a deleted accelerated function is still kept");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    cp.stop().await;
    agent.cleanup().await;
}

/// The venv's Python with Scaleway's SDK, made by scripts/test.
fn sdk_python() -> String {
    let py = std::env::var("FNRT_SDK_PYTHON").unwrap_or_else(|_| {
        panic!("FNRT_SDK_PYTHON is not set: run the tests with scripts/test, which makes the SDK's virtual environment")
    });
    assert!(
        Path::new(&py).exists(),
        "{py} does not exist: run scripts/test, which makes the SDK's virtual environment"
    );
    py
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_official_python_sdk_drives_the_release_binaries() {
    let python = sdk_python();
    let cp = ShippedControlPlane::start(&[]).await;
    let agent = ShippedAgent::start(&cp).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/test_sdk.py");
    let out = tokio::time::timeout(
        Duration::from_secs(600),
        Command::new(python)
            .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", script])
            .env("FNRT_API_URL", &cp.api)
            .env("FNRT_GATEWAY_URL", &cp.gateway)
            .env("FNRT_ADMIN_TOKEN", &cp.admin_token)
            .env("FNRT_IMAGE_ECHO", image("echo"))
            .env("FNRT_IMAGE_NEVER_LISTENS", image("never-listens"))
            .env("FNRT_IMAGE_ARM64", image("arm64-only"))
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the SDK tests end within 10 minutes")
    .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("{text}");
    assert!(out.status.success(), "the SDK tests failed:\n{text}\ncontrol plane log:\n{}", cp.log());
    // Every function the SDK tests made was deleted: the scheduler takes them off the agent.
    let mut client = agent.client.clone();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !client
        .list_functions(fnrt_proto::agent::v1::ListFunctionsRequest {})
        .await
        .unwrap()
        .into_inner()
        .functions
        .is_empty()
    {
        assert!(Instant::now() < deadline, "deleted functions stayed on the agent");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cp.stop().await;
    agent.cleanup().await;
}

/// Every file under `dir` that contains `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() && !p.is_symlink() {
            found.extend(files_containing(&p, needle));
        } else if p.is_file() {
            let bytes = std::fs::read(&p).unwrap_or_default();
            if bytes.windows(needle.len()).any(|w| w == needle) {
                found.push(p);
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_namespaces_registry_credentials_pull_its_private_image_through_the_release_binaries() {
    const PASSWORD: &str = "shipped-tenant-pw-81c2";
    let proxy = fnrt_tests::proxy::RegistryProxy::start(
        &fnrt_tests::real_parts().registry,
        fnrt_tests::proxy::Fault::Bearer("tenant".into(), PASSWORD.into()),
    )
    .await;
    let host = proxy.addr.to_string();
    let cp = ShippedControlPlane::start(&[format!("allowed_registries={host}")]).await;
    let agent = ShippedAgent::start_with(&cp, |c| proxy.allow(c)).await;
    let creds = json!({ "registry": host, "username": "tenant", "password": PASSWORD });
    let ns =
        ok(&cp, "POST", "/namespaces", Some(json!({ "name": "priv", "registry_credentials": creds }))).await;
    assert!(!ns.to_string().contains(PASSWORD), "{ns}");
    assert_eq!(ns["registry_credentials"]["username"], "tenant", "{ns}");
    let other = ok(&cp, "POST", "/namespaces", Some(json!({ "name": "other" }))).await;
    let mut ids = Vec::new();
    for (space, name) in [(&ns, "pf"), (&other, "of")] {
        let body = json!({ "namespace_id": space["id"], "name": name, "min_scale": 1, "memory_limit": 128,
                           "registry_image": format!("{host}/fnrt/echo:latest") });
        let f = ok(&cp, "POST", "/functions", Some(body)).await;
        let id = f["id"].as_str().unwrap().to_string();
        ok(&cp, "POST", &format!("/functions/{id}/deploy"), Some(json!({}))).await;
        // One after the other: the second deploy finds the image in the node cache.
        let f = settled(&cp, &id).await;
        ids.push((id, f));
    }
    assert_eq!(ids[0].1["status"], "ready", "{}\n{}", ids[0].1, cp.log());
    let (status, text) = curl(&[&format!("{}/priv/pf/", cp.gateway)]).await;
    assert_eq!(status, 200, "{text}");
    // The other namespace has no credentials: the registry refuses its deploy.
    assert_eq!(ids[1].1["status"], "error", "{}", ids[1].1);
    assert!(ids[1].1["error_message"].as_str().unwrap().contains("credentials"), "{}", ids[1].1);
    let (status, _) = curl(&[&format!("{}/other/of/", cp.gateway)]).await;
    assert_ne!(status, 200);
    // Neither the agent's files nor the control plane's answers or log show the password.
    let leaked = files_containing(agent.dir.path(), PASSWORD.as_bytes());
    assert!(leaked.is_empty(), "the password is in {leaked:?}");
    let listed = ok(&cp, "GET", "/namespaces", None).await;
    assert!(!listed.to_string().contains(PASSWORD) && !cp.log().contains(PASSWORD));
    for space in [&ns, &other] {
        ok(&cp, "DELETE", &format!("/namespaces/{}", space["id"].as_str().unwrap()), None).await;
    }
    cp.stop().await;
    agent.cleanup().await;
}

/// Sandbox classes as a user sets them: a namespace whose default is gvisor, on a release
/// agent offering runc and gvisor, runs its function under gVisor (its /proc/version is
/// gVisor's kernel) beside a function of the same namespace that asks for runc; unknown
/// classes are refused at create with 400, and agentctl shows each instance's class.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_namespace_defaulting_to_gvisor_runs_its_functions_under_gvisor_through_the_release_binaries() {
    let cp = ShippedControlPlane::start(&[]).await;
    let agent = ShippedAgent::start_with(&cp, |c| {
        c.sandbox_classes = vec![fnrt_function::SandboxClass::Runc, fnrt_function::SandboxClass::Gvisor];
    })
    .await;
    let (status, refused) =
        api(&cp, "POST", "/namespaces", Some(json!({ "name": "walled", "sandbox_class": "kata" }))).await;
    assert_eq!(status, 400, "{refused}");
    assert!(refused.to_string().contains("is not a sandbox class: use runc or gvisor"), "{refused}");
    let ns =
        ok(&cp, "POST", "/namespaces", Some(json!({ "name": "walled", "sandbox_class": "gvisor" }))).await;
    assert_eq!(ns["sandbox_class"], "gvisor", "{ns}");
    let mut ids = Vec::new();
    for (name, class) in [("inner", Value::Null), ("plain", json!("runc"))] {
        let body = json!({ "namespace_id": ns["id"], "name": name, "min_scale": 1, "memory_limit": 256,
                           "registry_image": image("echo"), "sandbox_class": class });
        let f = ok(&cp, "POST", "/functions", Some(body)).await;
        let id = f["id"].as_str().unwrap().to_string();
        ok(&cp, "POST", &format!("/functions/{id}/deploy"), Some(json!({}))).await;
        ids.push(id);
    }
    for (id, class) in ids.iter().zip(["gvisor", "runc"]) {
        let f = settled(&cp, id).await;
        assert_eq!(
            (f["status"].as_str(), f["sandbox_class"].as_str()),
            (Some("ready"), Some(class)),
            "{f}\n{}",
            cp.log()
        );
    }
    let version = |name: &str| format!("{}/walled/{name}/_fixture/read?path=/proc/version", cp.gateway);
    let (status, inner) = curl(&[&version("inner")]).await;
    assert_eq!(status, 200, "{inner}");
    assert!(inner.contains("Linux version 4.4.0"), "not gVisor's kernel: {inner}");
    let (status, plain) = curl(&[&version("plain")]).await;
    assert_eq!(status, 200, "{plain}");
    assert!(!plain.contains("Linux version 4.4.0"), "runc under gVisor's kernel: {plain}");
    let (code, out, err) = agent.agentctl(&["-o", "json", "instance", "ls"]).await;
    assert_eq!(code, 0, "{err}");
    let listed: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let mut classes: Vec<&str> =
        listed.as_array().unwrap().iter().filter_map(|i| i["sandbox_class"].as_str()).collect();
    classes.sort_unstable();
    assert_eq!(classes, ["gvisor", "runc"], "{out}");
    ok(&cp, "DELETE", &format!("/namespaces/{}", ns["id"].as_str().unwrap()), None).await;
    cp.stop().await;

    // The operator's way, on the agent alone: agentctl names the node's classes, refuses an
    // unknown one before sending anything, and starts and deploys in gvisor.
    let (code, out, err) = agent.agentctl(&["node", "status"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("sandboxes:   runc, gvisor"), "{out}");
    let echo = image("echo");
    let (code, _, err) =
        agent.agentctl(&["instance", "start", "solo-k", &echo, "--sandbox-class", "kata"]).await;
    assert_ne!(code, 0);
    assert!(err.contains("\"kata\" is not a sandbox class: use runc or gvisor"), "{err}");
    let (code, out, err) =
        agent.agentctl(&["instance", "start", "solo-g", &echo, "--sandbox-class", "gvisor"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) =
        agent.agentctl(&["function", "deploy", "pool-g", &echo, "--sandbox-class", "gvisor"]).await;
    assert_eq!(code, 0, "{out}{err}");
    for name in ["solo-g", "pool-g"] {
        let (code, out, err) =
            agent.agentctl(&["invoke", name, "--path", "/_fixture/read?path=/proc/version"]).await;
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("Linux version 4.4.0"), "{name} is not under gVisor: {out}");
    }
    agent.cleanup().await;
}

/// The Serverless Framework and Scaleway's plugin, installed by scripts/test.
fn serverless_dir() -> PathBuf {
    let dir = std::env::var_os("FNRT_SERVERLESS_DIR").map(PathBuf::from).unwrap_or_else(|| {
        panic!("FNRT_SERVERLESS_DIR is not set: run the tests with scripts/test, which installs the Serverless Framework")
    });
    assert!(
        dir.join("node_modules/.bin/serverless").exists(),
        "{}/node_modules/.bin/serverless is missing: run scripts/test, which installs it",
        dir.display()
    );
    dir
}

const SLS_YML: &str = r#"service: sls-shipped
configValidationMode: off
provider:
  name: scaleway
  runtime: python311
  secret:
    NS_SECRET: "ns-one"
plugins:
  - serverless-scaleway-functions
package:
  patterns: ["!node_modules/**", "!.serverless/**"]
functions:
  hello:
    handler: handler.handle
    env:
      GREETING: "GREETING_VALUE"
    secret:
SECRETS
"#;

const SLS_HANDLER: &str = r#"import os


def handle(event, context):
    keys = ["GREETING", "S1", "S2", "S3", "NS_SECRET"]
    return {"statusCode": 200, "body": {"version": "VERSION", "env": {k: os.environ.get(k) for k in keys}}}
"#;

/// Writes the service: serverless.yml with `greeting` and `secrets`, handler.py of `version`.
fn write_service(dir: &Path, version: &str, greeting: &str, secrets: &[(&str, &str)]) {
    let secrets: String = secrets.iter().map(|(k, v)| format!("      {k}: \"{v}\"\n")).collect();
    let yml = SLS_YML.replace("GREETING_VALUE", greeting).replace("SECRETS\n", &secrets);
    std::fs::write(dir.join("serverless.yml"), yml).unwrap();
    std::fs::write(dir.join("handler.py"), SLS_HANDLER.replace("VERSION", version)).unwrap();
}

/// Runs `serverless <verb>` in the service directory against `cp` (loopback only: no
/// telemetry, no notifications); fails with its output unless it succeeds in 5 minutes.
async fn serverless(cp: &ShippedControlPlane, service: &Path, home: &Path, verb: &str) -> String {
    let bin = serverless_dir().join("node_modules/.bin/serverless");
    let out = tokio::time::timeout(
        Duration::from_secs(300),
        Command::new(&bin)
            .arg(verb)
            .current_dir(service)
            .env("HOME", home)
            .env("SCW_FUNCTION_URL", cp.region_url())
            .env("SCW_SECRET_KEY", &cp.admin_token)
            .env("SCW_DEFAULT_PROJECT_ID", "11111111-2222-3333-4444-555555555555")
            .env("SCW_REGION", "fr-par")
            .env("SLS_TELEMETRY_DISABLED", "1")
            .env("SLS_NOTIFICATIONS_MODE", "off")
            .env("SLS_DEPRECATION_DISABLE", "*")
            .env("NO_PROXY", "*")
            .env_remove("HTTP_PROXY")
            .env_remove("HTTPS_PROXY")
            .env_remove("http_proxy")
            .env_remove("https_proxy")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("serverless {verb} did not end in 5 minutes\n{}", cp.log()))
    .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "serverless {verb} failed:\n{text}\ncontrol plane log:\n{}", cp.log());
    println!("serverless {verb}:\n{text}");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_serverless_framework_deploys_redeploys_and_removes_a_python_function() {
    serverless_dir();
    let cp = ShippedControlPlane::start(&[]).await;
    let agent = ShippedAgent::start(&cp).await;
    let work = tempfile::tempdir().unwrap();
    let (service, home) = (work.path().join("svc"), work.path().join("home"));
    std::fs::create_dir_all(&service).unwrap();
    std::fs::create_dir_all(&home).unwrap();
    // The plugin is found from the service directory, as in a user's project.
    std::os::unix::fs::symlink(serverless_dir().join("node_modules"), service.join("node_modules")).unwrap();
    let url = format!("{}/sls-shipped/hello/", cp.gateway);
    let answer = || async {
        let (status, text) = curl(&[&url]).await;
        assert_eq!(status, 200, "{text}\n{}", cp.log());
        serde_json::from_str::<Value>(&text).unwrap()
    };

    write_service(&service, "1", "hello", &[("S1", "one"), ("S2", "two")]);
    serverless(&cp, &service, &home, "deploy").await;
    let seen = answer().await;
    assert_eq!(seen["version"], "1", "{seen}");
    assert_eq!(
        seen["env"],
        json!({ "GREETING": "hello", "S1": "one", "S2": "two", "S3": null, "NS_SECRET": "ns-one" })
    );

    // Again, with new code, one secret changed, one gone, one new: the plugin verifies the
    // hashes it is answered (argon2id) to send only what changed.
    write_service(&service, "2", "hello again", &[("S1", "one-changed"), ("S3", "three")]);
    serverless(&cp, &service, &home, "deploy").await;
    let seen = answer().await;
    assert_eq!(seen["version"], "2", "{seen}");
    assert_eq!(
        seen["env"],
        json!({ "GREETING": "hello again", "S1": "one-changed", "S2": null, "S3": "three", "NS_SECRET": "ns-one" })
    );
    let (_, list) = api(&cp, "GET", "/namespaces?name=sls-shipped", None).await;
    let ns_id = list["namespaces"][0]["id"].as_str().unwrap().to_string();
    let (_, fns) = api(&cp, "GET", &format!("/namespaces/{ns_id}/functions"), None).await;
    let keys: Vec<&str> = fns["functions"][0]["secret_environment_variables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["S1", "S3"], "{fns}");

    serverless(&cp, &service, &home, "remove").await;
    let (status, _) = api(&cp, "GET", &format!("/namespaces/{ns_id}"), None).await;
    assert_eq!(status, 404);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, _) = curl(&[&url]).await;
        if status == 404 {
            break;
        }
        assert!(Instant::now() < deadline, "the removed function still answers ({status})");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    cp.stop().await;
    agent.cleanup().await;
}
