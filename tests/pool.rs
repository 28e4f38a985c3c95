//! Deployed functions and their pools against the real containerd, runc, CNI and
//! registry: HTTP passthrough and event calls with the SCF headers, timeouts, provisioned
//! concurrency, the bounded queue and 429, scale to zero, and updates under load.
#![allow(missing_docs, clippy::unwrap_used, clippy::too_many_lines)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fnrt_proto::agent::v1::{
    DeployFunctionRequest, FunctionSpec, FunctionType, InvokeRequest, ListFunctionsRequest,
    ListInstancesRequest, RemoveFunctionRequest, UpdateFunctionRequest,
};
use fnrt_tests::{image, TestAgent};

fn spec(name: &str) -> FunctionSpec {
    FunctionSpec { name: name.into(), image: image("echo"), memory_mb: 256, ..Default::default() }
}

async fn deploy(agent: &mut TestAgent, s: FunctionSpec) {
    agent.client.deploy_function(DeployFunctionRequest { function: Some(s) }).await.unwrap();
}

fn url(agent: &TestAgent, function: &str, path: &str) -> String {
    format!("http://{}/function/{function}{path}", agent.handle.dataplane_address)
}

async fn metric(agent: &TestAgent, name: &str, function: &str) -> f64 {
    metric_with(agent, name, &format!("function=\"{function}\"")).await
}

/// A metric's value by its whole label set (0 when it has none yet).
async fn metric_with(agent: &TestAgent, name: &str, labels: &str) -> f64 {
    let text = fnrt_tests::http()
        .get(format!("http://{}/metrics", agent.handle.metrics_address))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let prefix = format!("{name}{{{labels}}} ");
    text.lines().find_map(|l| l.strip_prefix(&prefix)).map_or(0.0, |v| v.parse().unwrap())
}

async fn running(agent: &mut TestAgent, function: &str) -> Vec<String> {
    let list = agent.client.list_instances(ListInstancesRequest { function: function.into() }).await.unwrap();
    list.into_inner().instances.into_iter().filter(|i| i.reason.is_empty()).map(|i| i.id).collect()
}

async fn remove(agent: &mut TestAgent, name: &str) {
    agent.client.remove_function(RemoveFunctionRequest { name: name.into() }).await.unwrap();
    // Its instances stop once idle.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !running(agent, name).await.is_empty() {
        assert!(Instant::now() < deadline, "instances of {name} still run");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn http_passthrough_and_event_calls_carry_the_scf_headers() {
    let mut agent = TestAgent::start().await;
    deploy(
        &mut agent,
        FunctionSpec { provisioned: 1, version: "7".into(), namespace: "ns1".into(), ..spec("web") },
    )
    .await;
    deploy(&mut agent, FunctionSpec { r#type: FunctionType::Event as i32, ..spec("ev") }).await;
    let http = fnrt_tests::http();

    // Method, path, query, headers and a large body through, and back.
    let big: String = "0123456789abcdef".repeat(256 * 1024); // 4 MiB
    let resp = http
        .put(url(&agent, "web", "/a/b?x=1&y=two"))
        .header("X-Custom", "kept")
        .header("X-Scf-Name", "spoofed")
        .header("X-Scf-Request-Id", "rid-web-1")
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-scf-request-id"], "rid-web-1");
    let echoed: serde_json::Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
    assert_eq!(echoed["method"], "PUT");
    assert_eq!(echoed["path"], "/a/b?x=1&y=two");
    assert_eq!(echoed["body"].as_str().unwrap().len(), big.len(), "the 4 MiB body came through and back");
    // The data plane reaches the instance on its namespace's loopback, not across the bridge.
    assert_eq!(echoed["peer"], "127.0.0.1", "the call came from the instance's own loopback");
    let headers: HashMap<String, String> = echoed["headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| (h[0].as_str().unwrap().to_lowercase(), h[1].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(headers["x-custom"], "kept");
    for (k, v) in [
        ("x-scf-request-id", "rid-web-1"),
        ("x-scf-name", "web"),
        ("x-scf-namespace", "ns1"),
        ("x-scf-version", "7"),
        ("x-scf-memory", "256"),
        ("x-scf-timeout", "3000"),
        ("x-scf-region", "local"),
        ("x-scf-appid", "0"),
        ("x-scf-uin", "0"),
        ("x-scf-session-token", ""),
        ("x-scf-secret-id", ""),
        ("x-scf-secret-key", ""),
    ] {
        assert_eq!(headers.get(k).map(String::as_str), Some(v), "{k} in {headers:?}");
    }

    // Hop-by-hop headers (RFC 9110 §7.6.1) stop at the data plane, both ways.
    let resp = http
        .get(url(&agent, "web", "/"))
        .header("Connection", "keep-alive, X-Caller-Hop")
        .header("X-Caller-Hop", "1")
        .header("Keep-Alive", "timeout=5")
        .header("Proxy-Connection", "keep-alive")
        .header("TE", "trailers")
        .header("X-End-To-End", "1")
        .send()
        .await
        .unwrap();
    let echoed: serde_json::Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
    let seen: Vec<String> =
        echoed["headers"].as_array().unwrap().iter().map(|h| h[0].as_str().unwrap().to_lowercase()).collect();
    for hop in ["connection", "x-caller-hop", "keep-alive", "proxy-connection", "te"] {
        assert!(!seen.iter().any(|h| h == hop), "{hop} reached the instance: {seen:?}");
    }
    assert!(seen.iter().any(|h| h == "x-end-to-end"), "{seen:?}");
    let resp = http.get(url(&agent, "web", "/_fixture/hop")).send().await.unwrap();
    assert_eq!(resp.headers()["x-end-to-end"], "1");
    for hop in ["connection", "x-hop-only", "keep-alive"] {
        assert!(resp.headers().get(hop).is_none(), "{hop} came back: {:?}", resp.headers());
    }

    // An event function: POST /event-invoke with the event, whatever path was called.
    let event = r#"{"key":"value"}"#;
    let resp = http.post(url(&agent, "ev", "/")).body(event).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let echoed: serde_json::Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
    assert_eq!((echoed["method"].as_str(), echoed["path"].as_str()), (Some("POST"), Some("/event-invoke")));
    assert_eq!(echoed["body"], event);
    let resp = http.get(url(&agent, "ev", "/")).send().await.unwrap();
    assert_eq!(resp.status(), 405, "an event needs POST");

    // The gRPC Invoke: status, body, duration, request id and the call's log lines.
    let r = agent
        .client
        .invoke(InvokeRequest {
            function: "web".into(),
            payload: b"{}".to_vec(),
            request_id: "inv-1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.status, r.request_id.as_str()), (200, "inv-1"));
    assert!(r.duration_ms > 0.0);
    let r = agent
        .client
        .invoke(InvokeRequest {
            function: "ev".into(),
            payload: b"{\"n\":1}".to_vec(),
            trigger_source: "timer".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(body["path"], "/event-invoke");
    assert!(
        body["headers"].as_array().unwrap().iter().any(|h| h[0]
            .as_str()
            .unwrap()
            .eq_ignore_ascii_case("x-scf-trigger-src")
            && h[1] == "timer"),
        "the trigger source reaches the function: {body}"
    );
    assert_eq!(r.request_id.len(), 36);
    // An HTTP function gets the request's method, path and headers; bad ones are refused.
    let r = agent
        .client
        .invoke(InvokeRequest {
            function: "web".into(),
            method: "PUT".into(),
            path: "/a/b?c=d".into(),
            headers: [("x-from".to_string(), "invoke".to_string())].into(),
            payload: b"body".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!((body["method"].as_str(), body["path"].as_str()), (Some("PUT"), Some("/a/b?c=d")), "{body}");
    assert!(
        body["headers"].as_array().unwrap().iter().any(|h| h[0]
            .as_str()
            .unwrap()
            .eq_ignore_ascii_case("x-from")
            && h[1] == "invoke"),
        "{body}"
    );
    for bad in [
        InvokeRequest { function: "web".into(), path: "http://elsewhere/".into(), ..Default::default() },
        InvokeRequest { function: "web".into(), method: "G T".into(), ..Default::default() },
        InvokeRequest {
            function: "web".into(),
            headers: [("a b".into(), "c".into())].into(),
            ..Default::default()
        },
    ] {
        let e = agent.client.invoke(bad).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{}", e.message());
    }
    // An answer is 6 MB at most, and the function's timeout (3 s) covers all of it: an
    // endless answer and one that streams past the timeout end with a clear error.
    let stream =
        |path: &str| InvokeRequest { function: "web".into(), path: path.into(), ..Default::default() };
    let e = agent.client.invoke(stream("/_fixture/stream?kb=0")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{}", e.message());
    assert!(e.message().contains("over 6000000 bytes"), "{}", e.message());
    let t0 = std::time::Instant::now();
    let e = agent.client.invoke(stream("/_fixture/stream?kb=640&ms=500")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::DeadlineExceeded, "{}", e.message());
    assert!(t0.elapsed() < std::time::Duration::from_millis(4500), "{:?}", t0.elapsed());
    // Through the data plane too: the answer is cut (an error, not a short body that looks
    // whole) when the timeout passes.
    let t0 = std::time::Instant::now();
    let resp = http.get(url(&agent, "web", "/_fixture/stream?kb=640&ms=500")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.bytes().await.is_err(), "the answer went on past the function's timeout");
    assert!(t0.elapsed() < std::time::Duration::from_millis(4500), "{:?}", t0.elapsed());
    let missing = agent.client.invoke(InvokeRequest { function: "nope".into(), ..Default::default() }).await;
    assert_eq!(missing.unwrap_err().code(), tonic::Code::NotFound);

    // Bad specs, and a second deploy of a name.
    let e = agent
        .client
        .deploy_function(DeployFunctionRequest {
            function: Some(FunctionSpec { provisioned: 3, max_instances: 2, ..spec("bad") }),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("provisioned"), "{}", e.message());
    let e = agent
        .client
        .deploy_function(DeployFunctionRequest { function: Some(spec("web")) })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::AlreadyExists);
    let e = agent
        .client
        .deploy_function(DeployFunctionRequest {
            function: Some(FunctionSpec { image: image("never-listens"), provisioned: 1, ..spec("deaf") }),
        })
        .await;
    // (the default 5 s health deadline of test agents)
    assert_eq!(e.unwrap_err().code(), tonic::Code::DeadlineExceeded);
    let listed = agent.client.list_functions(ListFunctionsRequest {}).await.unwrap().into_inner().functions;
    let names: Vec<&str> = listed.iter().map(|f| f.spec.as_ref().unwrap().name.as_str()).collect();
    assert_eq!(names, vec!["ev", "web"], "a failed deploy leaves nothing");
    assert!(running(&mut agent, "deaf").await.is_empty());
    remove(&mut agent, "web").await;
    remove(&mut agent, "ev").await;
    agent.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_looping_provisioned_function_is_restarted_with_back_off() {
    let mut agent = TestAgent::start().await;
    // Each instance listens, passes its health check, and exits 300 ms later.
    let env = HashMap::from([("FIXTURE_EXIT_AFTER_MS".to_string(), "300".to_string())]);
    let deployed = Instant::now();
    deploy(&mut agent, FunctionSpec { provisioned: 1, env, ..spec("loop") }).await;
    // Without back-off a start every ~0.6 s (start, 300 ms, a 200 ms tick): about 13 in
    // 8 s. With 1 s, 2 s, 4 s waits: the deploy's, then about 1.5 s and 4 s later.
    tokio::time::sleep(Duration::from_secs(8).saturating_sub(deployed.elapsed())).await;
    let all = agent.client.list_instances(ListInstancesRequest { function: "loop".into() }).await.unwrap();
    let started = all.into_inner().instances.len();
    assert!((2..=5).contains(&started), "{started} instances started in 8 s");
    let f = agent.client.list_functions(ListFunctionsRequest {}).await.unwrap().into_inner();
    let f = f.functions.iter().find(|f| f.spec.as_ref().unwrap().name == "loop").unwrap();
    assert!(
        f.last_error.contains("ms after its start") && f.last_error.contains("failures in a row"),
        "{}",
        f.last_error
    );
    remove(&mut agent, "loop").await;
    agent.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_update_leaves_the_old_spec_serving_and_saved() {
    let mut agent = TestAgent::start().await;
    deploy(&mut agent, FunctionSpec { provisioned: 1, ..spec("kept") }).await;
    let bad = FunctionSpec { provisioned: 1, image: image("never-listens"), ..spec("kept") };
    let err = agent.client.update_function(UpdateFunctionRequest { function: Some(bad) }).await.unwrap_err();
    assert!(err.message().contains("9000"), "{}", err.message());
    let resp = fnrt_tests::http().get(url(&agent, "kept", "/")).send().await.unwrap();
    assert_eq!(resp.status(), 200, "the old spec still serves");
    // What a restarted agent would serve is the old spec too.
    let saved = std::fs::read_to_string(agent.cfg.state_dir.join("functions/kept.json")).unwrap();
    let saved: serde_json::Value = serde_json::from_str(&saved).unwrap();
    assert_eq!(saved["image"], image("echo"), "{saved}");
    remove(&mut agent, "kept").await;
    agent.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_call_past_its_timeout_gets_504_and_its_instance_is_recycled() {
    let mut agent = TestAgent::start().await;
    deploy(&mut agent, FunctionSpec { provisioned: 1, timeout_ms: 500, ..spec("slow") }).await;
    let before = running(&mut agent, "slow").await;
    let resp = fnrt_tests::http().get(url(&agent, "slow", "/_fixture/sleep?ms=3000")).send().await.unwrap();
    assert_eq!(resp.status(), 504);
    let body = resp.text().await.unwrap();
    assert!(body.contains("did not answer within its timeout of 500 ms"), "{body}");
    // The overrun instance is replaced by a new provisioned one.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = running(&mut agent, "slow").await;
        if now.len() == 1 && now != before {
            break;
        }
        assert!(Instant::now() < deadline, "{before:?} -> {now:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let resp = fnrt_tests::http().get(url(&agent, "slow", "/")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let timeouts =
        metric_with(&agent, "fnrt_call_errors_total", "function=\"slow\",reason=\"timeout\"").await;
    assert_eq!(timeouts, 1.0);
    assert_eq!(metric_with(&agent, "fnrt_calls_total", "function=\"slow\",code=\"504\"").await, 1.0);
    remove(&mut agent, "slow").await;
    agent.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn provisioned_instances_take_a_burst_without_cold_starts() {
    let mut agent = TestAgent::start().await;
    deploy(&mut agent, FunctionSpec { provisioned: 3, ..spec("warm") }).await;
    let http = fnrt_tests::http();
    let calls = (0..3).map(|_| http.get(url(&agent, "warm", "/_fixture/sleep?ms=300")).send());
    for r in futures_util::future::join_all(calls).await {
        assert_eq!(r.unwrap().status(), 200);
    }
    assert_eq!(metric(&agent, "fnrt_cold_starts_total", "warm").await, 0.0);
    assert_eq!(metric(&agent, "fnrt_warm_hits_total", "warm").await, 3.0);
    assert_eq!(running(&mut agent, "warm").await.len(), 3);
    remove(&mut agent, "warm").await;
    agent.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_burst_past_max_instances_gets_429_after_the_queue_bound_and_no_other_error() {
    let mut agent = TestAgent::start().await;
    deploy(
        &mut agent,
        FunctionSpec { max_instances: 1, queue_max: 2, queue_timeout_ms: 400, ..spec("busy") },
    )
    .await;
    let http = fnrt_tests::http();
    let calls = (0..6).map(|_| http.get(url(&agent, "busy", "/_fixture/sleep?ms=1500")).send());
    let mut statuses = Vec::new();
    for r in futures_util::future::join_all(calls).await {
        let r = r.unwrap();
        let status = r.status().as_u16();
        let body = r.text().await.unwrap();
        if status == 429 {
            assert!(body.contains("at capacity"), "{body}");
        }
        statuses.push(status);
    }
    statuses.sort();
    assert!(statuses.iter().all(|s| *s == 200 || *s == 429), "{statuses:?}");
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "one instance, one call at a time: {statuses:?}"
    );
    assert_eq!(running(&mut agent, "busy").await.len(), 1, "max_instances holds");
    assert_eq!(metric(&agent, "fnrt_cold_starts_total", "busy").await, 1.0, "one cold start for the burst");
    remove(&mut agent, "busy").await;
    agent.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn without_provisioned_concurrency_a_function_scales_to_zero_after_the_keep_alive() {
    let mut agent = TestAgent::start().await;
    deploy(&mut agent, FunctionSpec { keep_alive_s: 1, ..spec("idle") }).await;
    assert!(running(&mut agent, "idle").await.is_empty());
    let cold = fnrt_tests::http().get(url(&agent, "idle", "/")).send().await.unwrap();
    assert_eq!(cold.status(), 200);
    // The cold call's anatomy, as browsers show it (W3C Server-Timing), and in metrics.
    let timing = cold.headers().get("server-timing").map(|v| v.to_str().unwrap().to_string());
    let timing = timing.expect("a cold call has Server-Timing");
    let names: Vec<&str> = timing.split(", ").map(|p| p.split(';').next().unwrap()).collect();
    assert_eq!(names, ["queue", "image", "network", "container", "process", "listen", "answer"], "{timing}");
    assert_eq!(running(&mut agent, "idle").await.len(), 1);
    assert_eq!(metric(&agent, "fnrt_cold_starts_total", "idle").await, 1.0);
    assert!(metric_with(&agent, "fnrt_cold_start_phase_seconds_count", "phase=\"listen\"").await >= 1.0);
    let warm = fnrt_tests::http().get(url(&agent, "idle", "/")).send().await.unwrap();
    assert!(warm.headers().get("server-timing").is_none(), "a warm call has no cold-start anatomy");
    let t0 = Instant::now();
    while !running(&mut agent, "idle").await.is_empty() {
        assert!(t0.elapsed() < Duration::from_secs(5), "not scaled to zero");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(t0.elapsed() >= Duration::from_millis(700), "kept for its keep-alive: {:?}", t0.elapsed());
    // And back on the next call.
    assert_eq!(fnrt_tests::http().get(url(&agent, "idle", "/")).send().await.unwrap().status(), 200);
    remove(&mut agent, "idle").await;
    agent.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn updates_under_load_lose_no_call() {
    let mut agent = TestAgent::start().await;
    deploy(&mut agent, FunctionSpec { provisioned: 1, keep_alive_s: 1, ..spec("live") }).await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut callers = Vec::new();
    for _ in 0..4 {
        let (stop, u) = (stop.clone(), url(&agent, "live", "/"));
        callers.push(tokio::spawn(async move {
            let http = fnrt_tests::http();
            let mut seen = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let r = http.get(&u).send().await.unwrap();
                let status = r.status().as_u16();
                let body: serde_json::Value =
                    serde_json::from_str(&r.text().await.unwrap_or_default()).unwrap_or_default();
                seen.push((status, body["env"]["STAGE"].as_str().unwrap_or("").to_string()));
            }
            seen
        }));
    }
    let update = |s: FunctionSpec| UpdateFunctionRequest { function: Some(s) };
    tokio::time::sleep(Duration::from_millis(500)).await;
    agent
        .client
        .update_function(update(FunctionSpec { provisioned: 3, keep_alive_s: 1, ..spec("live") }))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    agent
        .client
        .update_function(update(FunctionSpec { provisioned: 1, keep_alive_s: 1, ..spec("live") }))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // A new environment rolls: new instances first, the old retire after their calls.
    let env = HashMap::from([("STAGE".to_string(), "two".to_string())]);
    agent
        .client
        .update_function(update(FunctionSpec { provisioned: 1, keep_alive_s: 1, env, ..spec("live") }))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for c in callers {
        all.extend(c.await.unwrap());
    }
    let failed: Vec<&(u16, String)> = all.iter().filter(|(s, _)| *s != 200).collect();
    assert!(failed.is_empty(), "{} of {} calls failed: {failed:?}", failed.len(), all.len());
    assert!(all.len() > 50, "{} calls", all.len());
    assert_eq!(all.last().unwrap().1, "two", "the last calls see the new spec");
    eprintln!("updates under load: {} calls, none failed", all.len());
    remove(&mut agent, "live").await;
    agent.cleanup().await;
}
