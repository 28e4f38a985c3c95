//! A cluster under faults: three nodes as network namespaces (each its own containerd and
//! release agent), three release control-plane replicas on a three-member etcd, a
//! function with two warm instances called through the gateways 20 times a second the
//! whole time (through the replicas still up, as a load balancer would), and a cron every
//! minute. One after another: a node cut off (its link down) and back, a node's agent
//! killed and started again, the leader killed, a rolling restart of the agents, and one
//! of the replicas. For each: calls failed and the time until calls succeed again; at the
//! end, the cron's runs (each minute at most once) and nothing left behind.
#![allow(missing_docs, clippy::unwrap_used, clippy::too_many_lines)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fnrt_proto::agent::v1::{ListFunctionsRequest, StreamLogsRequest};
use fnrt_tests::cluster::Cluster;
use fnrt_tests::real_parts;
use fnrt_tests::shipped::ShippedControlPlane;
use serde_json::{json, Value};

/// One call's outcome: when, and whether it succeeded.
type Outcomes = Arc<Mutex<Vec<(Instant, bool)>>>;

/// Calls `path` on the gateways in `targets` in turn, every 50 ms, until stopped.
fn steady(targets: Arc<Mutex<Vec<String>>>, path: &'static str) -> (Outcomes, tokio::task::JoinHandle<()>) {
    let out: Outcomes = Arc::default();
    let record = out.clone();
    let task = tokio::spawn(async move {
        let http = fnrt_tests::http();
        let mut n = 0usize;
        loop {
            let url = {
                let t = targets.lock().unwrap();
                format!("{}{path}", t[n % t.len()])
            };
            n += 1;
            let call = http.get(&url).timeout(Duration::from_secs(2)).send().await;
            let ok = call.is_ok_and(|r| r.status().is_success());
            record.lock().unwrap().push((Instant::now(), ok));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    (out, task)
}

/// Calls failed since `from`, and the time from `from` until the last failure's end (the
/// first success after it).
fn report(what: &str, out: &Outcomes, from: Instant) -> (usize, Duration) {
    let calls: Vec<(Instant, bool)> =
        out.lock().unwrap().iter().filter(|(t, _)| *t >= from).copied().collect();
    let failed = calls.iter().filter(|(_, ok)| !ok).count();
    let recovered = calls
        .iter()
        .rposition(|(_, ok)| !ok)
        .map_or(Duration::ZERO, |i| calls.get(i + 1).map_or(calls[i].0, |c| c.0) - from);
    println!("{what}: {} calls, {failed} failed, calls succeed again after {recovered:?}", calls.len());
    (failed, recovered)
}

async fn api(cp: &ShippedControlPlane, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
    let mut req = fnrt_tests::http()
        .request(method, format!("{}{path}", cp.region_url()))
        .header("X-Auth-Token", &cp.admin_token);
    if let Some(b) = body {
        req = req.header("content-type", "application/json").body(b.to_string());
    }
    let r = req.send().await.unwrap();
    let status = r.status();
    let v: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap_or(Value::Null);
    assert!(status.is_success(), "{path}: {status} {v}");
    v
}

async fn replica(cp: &ShippedControlPlane) -> Value {
    let r =
        fnrt_tests::http().get(format!("{}/fnrt/v1/replica", cp.api)).header("X-Auth-Token", &cp.admin_token);
    serde_json::from_slice(&r.send().await.unwrap().bytes().await.unwrap()).unwrap()
}

/// The node whose agent serves the stream's calls to function `name` (the calls take
/// 100 ms: the node seen with calls in flight most often over a second).
async fn serving(cluster: &Cluster, name: &str) -> usize {
    let mut seen = vec![0; cluster.nodes.len()];
    for _ in 0..20 {
        for (i, node) in cluster.nodes.iter().enumerate() {
            let fns = node.client().await.list_functions(ListFunctionsRequest {}).await.unwrap().into_inner();
            if fns
                .functions
                .iter()
                .any(|f| f.spec.as_ref().is_some_and(|s| s.name == name) && f.in_flight > 0)
            {
                seen[i] += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (0..seen.len()).max_by_key(|i| seen[*i]).unwrap()
}

/// Whether replica `cp` has node `name` joined and not lost.
async fn joined(cp: &ShippedControlPlane, name: &str) -> bool {
    let r =
        fnrt_tests::http().get(format!("{}/fnrt/v1/agents", cp.api)).header("X-Auth-Token", &cp.admin_token);
    let Ok(r) = r.send().await else { return false };
    let v: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap_or_default();
    v["agents"].as_array().is_some_and(|a| a.iter().any(|x| x["node"] == name && x["state"] == "ready"))
}

async fn wait_joined(cp: &ShippedControlPlane, name: &str) {
    let start = Instant::now();
    while !joined(cp, name).await {
        assert!(start.elapsed() < Duration::from_secs(20), "{name} did not join {} in 20 s", cp.api);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The nodes whose agents report function `name` ready, as a replica sees them.
async fn placed(cp: &ShippedControlPlane, name: &str) -> Vec<String> {
    let r = fnrt_tests::http()
        .get(format!("{}/fnrt/v1/placement", cp.api))
        .header("X-Auth-Token", &cp.admin_token);
    let v: Value = serde_json::from_slice(&r.send().await.unwrap().bytes().await.unwrap()).unwrap();
    let f =
        v["functions"].as_array().unwrap().iter().find(|f| f["name"] == name).cloned().unwrap_or_default();
    let mut nodes: Vec<String> = f["agents"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|x| x["ready"].as_u64() > Some(0))
                .map(|x| x["node"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default();
    nodes.sort();
    nodes
}

async fn wait_placed(cp: &ShippedControlPlane, name: &str, count: usize, limit: Duration) -> Vec<String> {
    wait_placed_off(cp, name, count, "", limit).await
}

/// As [`wait_placed`], on nodes other than `off`.
async fn wait_placed_off(
    cp: &ShippedControlPlane,
    name: &str,
    count: usize,
    off: &str,
    limit: Duration,
) -> Vec<String> {
    let start = Instant::now();
    loop {
        let on = placed(cp, name).await;
        if on.len() == count && !on.iter().any(|n| n == off) {
            return on;
        }
        assert!(start.elapsed() < limit, "{name} on {on:?}, not {count} nodes, after {limit:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The times of the timer events the cron function logged on every node.
async fn cron_runs(cluster: &Cluster, name: &str) -> Vec<String> {
    let mut out = Vec::new();
    for node in &cluster.nodes {
        let Ok(mut c) = tokio::time::timeout(Duration::from_secs(2), node.client()).await else { continue };
        let Ok(logs) =
            c.stream_logs(StreamLogsRequest { function: name.to_string(), ..Default::default() }).await
        else {
            continue;
        };
        let mut logs = logs.into_inner();
        while let Ok(Some(line)) = logs.message().await {
            if let Some(body) = line.line.split("echo: Timer event: ").nth(1) {
                let event: Value = serde_json::from_str(body.trim()).unwrap();
                out.push(event["Time"].as_str().unwrap().to_string());
            }
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_keeps_serving_through_a_cut_node_a_killed_agent_a_killed_leader_and_rolling_restarts() {
    use futures_util::FutureExt;
    real_parts();
    let mut cluster = Cluster::start(3, 3).await;
    // Taken down whatever happens: a failure leaves nothing behind either.
    let outcome = std::panic::AssertUnwindSafe(scenarios(&mut cluster)).catch_unwind().await;
    cluster.take_down().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

async fn scenarios(cluster: &mut Cluster) {
    let cp = &cluster.cps[0];
    let ns = api(cp, reqwest::Method::POST, "/namespaces", Some(json!({ "name": "cl" }))).await;
    let echo = json!({ "namespace_id": ns["id"], "name": "echo", "min_scale": 2, "max_scale": 4,
                       "privacy": "public", "registry_image": fnrt_tests::image("echo") });
    let f = api(cp, reqwest::Method::POST, "/functions", Some(echo)).await;
    let id = f["id"].as_str().unwrap().to_string();
    api(cp, reqwest::Method::POST, &format!("/functions/{id}/deploy"), Some(json!({}))).await;
    let tick = json!({ "namespace_id": ns["id"], "name": "tick", "min_scale": 1, "scf_type": "event",
                       "registry_image": fnrt_tests::image("echo") });
    let t = api(cp, reqwest::Method::POST, "/functions", Some(tick)).await;
    let tick_id = t["id"].as_str().unwrap().to_string();
    api(cp, reqwest::Method::POST, &format!("/functions/{tick_id}/deploy"), Some(json!({}))).await;
    let echo_name = format!("fn-{id}");
    let tick_name = format!("fn-{tick_id}");
    let on = wait_placed(cp, "echo", 2, Duration::from_secs(120)).await;
    wait_placed(cp, "tick", 1, Duration::from_secs(120)).await;
    let _ = (&echo_name, &tick_name);
    api(
        cp,
        reqwest::Method::POST,
        "/crons",
        Some(json!({ "function_id": tick_id, "schedule": "* * * * *" })),
    )
    .await;
    let cron_made = Instant::now();

    let targets = Arc::new(Mutex::new(cluster.live().iter().map(|c| c.gateway.clone()).collect::<Vec<_>>()));
    let (out, stream) = steady(targets.clone(), "/cl/echo/_fixture/sleep?ms=100");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (failed, _) = report("steady", &out, Instant::now() - Duration::from_secs(2));
    assert_eq!(failed, 0, "calls failed with nothing wrong");

    // A node that runs it cut off, then back.
    let cut = serving(cluster, &echo_name).await;
    assert!(on.contains(&cluster.nodes[cut].name));
    let at = Instant::now();
    cluster.net.cut(cut, true);
    let cp = &cluster.cps[0];
    wait_placed_off(cp, "echo", 2, &cluster.nodes[cut].name, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, recovered) = report("node cut off", &out, at);
    assert!(recovered < Duration::from_secs(15), "calls failed for {recovered:?}");
    cluster.net.cut(cut, false);
    let back = Instant::now();
    wait_joined(cp, &cluster.nodes[cut].name).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (failed, _) = report("node back", &out, back);
    assert!(failed <= 2, "{failed} calls failed after the node came back");

    // A node's agent killed (SIGKILL), then started again: it re-adopts its instances.
    let on = wait_placed(cp, "echo", 2, Duration::from_secs(30)).await;
    let victim = serving(cluster, &echo_name).await;
    assert!(on.contains(&cluster.nodes[victim].name));
    let at = Instant::now();
    cluster.nodes[victim].kill_agent().await;
    let cp = &cluster.cps[0];
    wait_placed_off(cp, "echo", 2, &cluster.nodes[victim].name, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, recovered) = report("agent killed", &out, at);
    assert!(recovered < Duration::from_secs(15), "calls failed for {recovered:?}");
    cluster.nodes[victim].start_agent().await;

    // The leader killed: the others serve on, one of them leads within seconds.
    let mut leader = None;
    for (i, c) in cluster.cps.iter().enumerate() {
        if replica(c).await["leading"] == true {
            leader = Some(i);
        }
    }
    let leader = leader.expect("a leader");
    *targets.lock().unwrap() = cluster
        .cps
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != leader)
        .map(|(_, c)| c.gateway.clone())
        .collect();
    // Out of the load balancer first; the calls it had in flight end (a deregistration delay).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let at = Instant::now();
    cluster.cps[leader].kill().await;
    let mut took = None;
    while took.is_none() {
        for c in cluster.live() {
            if replica(c).await["leading"] == true {
                took = Some(at.elapsed());
            }
        }
        assert!(at.elapsed() < Duration::from_secs(15), "no new leader in 15 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (failed, _) = report("leader killed", &out, at);
    println!("leader killed: a new leader after {:?}", took.unwrap());
    assert_eq!(failed, 0, "calls through the other replicas failed");

    // A rolling restart of the agents (SIGTERM, start, rejoined), one at a time.
    let at = Instant::now();
    let survivor = (0..cluster.cps.len()).find(|i| *i != leader).unwrap();
    for i in 0..cluster.nodes.len() {
        cluster.nodes[i].stop_agent().await;
        cluster.nodes[i].start_agent().await;
        wait_joined(&cluster.cps[survivor], &cluster.nodes[i].name).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    report("rolling restart of the agents", &out, at);

    // A rolling restart of the replicas still up (the leader among them): each out of the
    // load balancer, restarted on its addresses, back once every agent joined it again
    // (its gateway routes only to the agents it has heard from).
    let at = Instant::now();
    let up: Vec<usize> = (0..cluster.cps.len()).filter(|i| *i != leader).collect();
    for &r in &up {
        *targets.lock().unwrap() =
            up.iter().filter(|i| **i != r).map(|i| cluster.cps[*i].gateway.clone()).collect();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let old = cluster.cps.remove(r);
        let restarted = old.restart(&cluster.settings).await;
        for n in &cluster.nodes {
            wait_joined(&restarted, &n.name).await;
        }
        cluster.cps.insert(r, restarted);
        *targets.lock().unwrap() = up.iter().map(|i| cluster.cps[*i].gateway.clone()).collect();
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let (failed, _) = report("rolling restart of the replicas", &out, at);
    assert_eq!(failed, 0, "calls failed while the replicas restarted");
    let start = Instant::now();
    loop {
        let mut leaders = 0;
        for c in cluster.live() {
            leaders += usize::from(replica(c).await["leading"] == true);
        }
        if leaders == 1 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{leaders} leaders after the replicas restarted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stream.abort();

    // The cron: each minute's run at most once across everything above.
    let mut runs = cron_runs(cluster, &tick_name).await;
    while runs.is_empty() && cron_made.elapsed() < Duration::from_secs(75) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        runs = cron_runs(cluster, &tick_name).await;
    }
    let mut distinct = runs.clone();
    distinct.dedup();
    println!("cron runs: {runs:?}");
    assert_eq!(distinct, runs, "a minute ran twice");
    assert!(!runs.is_empty(), "the cron never ran");
}
