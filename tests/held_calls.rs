//! Calls that survive an agent restart, through the release binaries: a steady stream of
//! gateway calls (40 a second) to a deployed function while its agent is killed with
//! SIGKILL and started again 100 ms later (systemd's `RestartSec` default), and while it is
//! stopped with SIGTERM and started again (a restart or package upgrade). The gateway holds
//! the calls no agent can take (`gateway_hold_ms`) and the agent binds its data plane first
//! thing at start, so only a non-idempotent call the killed agent was answering may fail
//! (the stream's are GETs, which the gateway sends again); a graceful stop
//! drains its calls in flight (a 1.5 s call sent before SIGTERM is answered) and none fails.
//! The figures (failed calls, restart-to-serving time) are printed; RELIABILITY.md records
//! them.
#![allow(missing_docs, clippy::unwrap_used, clippy::too_many_lines)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fnrt_tests::image;
use fnrt_tests::shipped::{ShippedAgent, ShippedControlPlane};
use serde_json::{json, Value};

async fn api(cp: &ShippedControlPlane, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
    let mut req = fnrt_tests::http()
        .request(method.clone(), format!("{}{path}", cp.region_url()))
        .header("X-Auth-Token", &cp.admin_token);
    if let Some(b) = body {
        req = req.header("Content-Type", "application/json").body(b.to_string());
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    let v: Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    assert!(status.is_success(), "{method} {path}: {status} {v}\n{}", cp.log());
    v
}

/// What the stream's calls got, in order: (when sent, the status or the error).
type Results = Arc<Mutex<Vec<(Instant, Result<u16, String>)>>>;

/// Sends a call every 25 ms to `url` until `stop`, each on a task of its own (a held call
/// does not hold up the next); returns the tasks.
fn stream(
    url: String,
    results: Results,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let http =
            fnrt_common::tls::http_client(&[]).unwrap().timeout(Duration::from_secs(20)).build().unwrap();
        let mut calls = Vec::new();
        let mut tick = tokio::time::interval(Duration::from_millis(25));
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            tick.tick().await;
            let (http, url, results) = (http.clone(), url.clone(), results.clone());
            calls.push(tokio::spawn(async move {
                let at = Instant::now();
                let got = match http.get(&url).send().await {
                    Ok(r) => {
                        let status = r.status().as_u16();
                        let body = r.text().await.unwrap_or_default();
                        if status == 200 {
                            Ok(status)
                        } else {
                            Err(format!("{status} {body}"))
                        }
                    }
                    Err(e) => Err(format!("{e:?}")),
                };
                results.lock().unwrap().push((at, got));
            }));
        }
        for c in calls {
            c.await.unwrap();
        }
    })
}

/// The failed calls among those sent in `[from, to)`, and how many were sent.
fn failed(results: &Results, from: Instant, to: Instant) -> (Vec<String>, usize) {
    let r = results.lock().unwrap();
    let window: Vec<_> = r.iter().filter(|(at, _)| *at >= from && *at < to).collect();
    let failed = window.iter().filter_map(|(_, got)| got.clone().err()).collect();
    (failed, window.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn calls_survive_agent_restarts_kill_and_graceful() {
    // FNRT_GATEWAY_HOLD_MS=0 measures the baseline (no call held): the figures are printed
    // and the test asserts nothing of them.
    let hold = std::env::var("FNRT_GATEWAY_HOLD_MS").unwrap_or_else(|_| "5000".into());
    let cp = ShippedControlPlane::start(&[format!("gateway_hold_ms={hold}")]).await;
    // A fixed data plane port, as a node's configuration has it.
    let port = std::net::TcpListener::bind("0.0.0.0:0").unwrap().local_addr().unwrap().port();
    let mut agent = ShippedAgent::start_with(&cp, |c| c.dataplane_listen = ([0, 0, 0, 0], port).into()).await;
    let ns_name = format!("held{:08x}", rand::random::<u32>());
    let ns = api(&cp, reqwest::Method::POST, "/namespaces", Some(json!({ "name": ns_name }))).await;
    let ns_id = ns["id"].as_str().unwrap().to_string();
    let f = api(
        &cp,
        reqwest::Method::POST,
        "/functions",
        Some(json!({
            "namespace_id": ns_id, "name": "echo", "registry_image": image("echo"),
            "min_scale": 1, "memory_limit": 128
        })),
    )
    .await;
    let fn_id = f["id"].as_str().unwrap().to_string();
    api(&cp, reqwest::Method::POST, &format!("/functions/{fn_id}/deploy"), Some(json!({}))).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let f = api(&cp, reqwest::Method::GET, &format!("/functions/{fn_id}"), None).await;
        if f["status"] == "ready" {
            break;
        }
        assert!(Instant::now() < deadline, "the function is not ready: {f}\n{}", cp.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let base = format!("{}/{ns_name}/echo", cp.gateway);
    let results: Results = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let streaming = stream(format!("{base}/hello"), results.clone(), stop.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;

    // A crash: SIGKILL, then a new agent 100 ms later.
    let kill_from = Instant::now();
    agent.kill().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    agent.start_again().await;
    let kill_serving = started.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;

    // A restart: SIGTERM while a 1.5 s call is in flight, then a new agent.
    let term_from = Instant::now();
    let slow = tokio::spawn(fnrt_tests::http().get(format!("{base}/_fixture/sleep?ms=1500")).send());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stopping = Instant::now();
    agent.stop_gracefully().await;
    let drained = stopping.elapsed();
    let started = Instant::now();
    agent.start_again().await;
    let term_serving = started.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let term_to = Instant::now();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    streaming.await.unwrap();

    let slow = slow.await.unwrap().unwrap();
    let slow_status = slow.status();
    let (kill_failed, kill_sent) = failed(&results, kill_from, term_from);
    let (term_failed, term_sent) = failed(&results, term_from, term_to);
    println!(
        "SIGKILL + restart: {} of {kill_sent} calls failed, the new agent answered {:.0} ms after its start\n\
         SIGTERM + restart: {} of {term_sent} calls failed, drained in {:.0} ms (a 1.5 s call in flight), \
         the new agent answered {:.0} ms after its start",
        kill_failed.len(),
        kill_serving.as_secs_f64() * 1e3,
        term_failed.len(),
        drained.as_secs_f64() * 1e3,
        term_serving.as_secs_f64() * 1e3,
    );
    if hold == "0" {
        return finish(cp, agent, &ns_id).await;
    }
    assert_eq!(
        slow_status,
        200,
        "the call in flight at SIGTERM was not drained: {}",
        slow.text().await.unwrap()
    );
    assert!(
        drained >= Duration::from_millis(1000),
        "SIGTERM did not wait for the call in flight: {drained:?}"
    );
    assert!(
        term_failed.is_empty(),
        "calls failed across a graceful restart: {term_failed:?}\n{}",
        agent.log()
    );
    // Only a POST the killed agent was answering may fail (these are GETs, sent again).
    assert!(
        kill_failed.len() <= 1,
        "calls failed across SIGKILL + restart: {kill_failed:?}\n{}",
        agent.log()
    );
    assert!(kill_sent >= 80 && term_sent >= 80, "the stream sent {kill_sent} and {term_sent} calls");
    finish(cp, agent, &ns_id).await;
}

/// Deletes the namespace, stops the control plane and cleans the agent up.
async fn finish(cp: ShippedControlPlane, agent: ShippedAgent, ns_id: &str) {
    api(&cp, reqwest::Method::DELETE, &format!("/namespaces/{ns_id}"), None).await;
    cp.stop().await;
    agent.cleanup().await;
}
