//! Warm calls through the gateway, the release control plane and agent as processes (as
//! tests/shipped.rs starts them): an agent whose data plane listens on loopback (plain
//! HTTP, calls signed) against one whose data plane listens beyond loopback (TLS with the
//! node's certificate, calls signed), side by side in one run, rounds alternating, and
//! beside them one of the plain agent's instances called directly. What it measures is the
//! cost of Cluster TLS on the gateway → data plane hop, and what the gateway and the data
//! plane together add to a call.
//!
//! `gateway [seconds per round]`, 3 by default; run it as scripts/bench does (the stack's
//! containerd and registry, FNRT_RELEASE_DIR naming the release binaries).
#![allow(clippy::unwrap_used, clippy::too_many_lines)]

use std::time::{Duration, Instant};

use fnrt_tests::image;
use fnrt_tests::shipped::{ShippedAgent, ShippedControlPlane};
use serde_json::{json, Value};

#[path = "load.rs"]
mod load;
use load::{load, us};

const ROUNDS: usize = 3;
const INSTANCES: u32 = 4;

async fn post(cp: &ShippedControlPlane, path: &str, body: Value) -> Value {
    let r = fnrt_tests::http()
        .post(format!("{}{path}", cp.region_url()))
        .header("X-Auth-Token", &cp.admin_token)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = r.status();
    let v: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert!(status.is_success(), "{path}: {status} {v}");
    v
}

/// A public echo function with INSTANCES warm instances, deployed and ready; its URL on
/// the gateway.
async fn deploy(cp: &ShippedControlPlane) -> String {
    let ns = post(cp, "/namespaces", json!({ "name": "bench" })).await;
    let f = post(
        cp,
        "/functions",
        json!({ "namespace_id": ns["id"], "name": "echo", "registry_image": image("echo"),
                "min_scale": INSTANCES, "max_scale": INSTANCES, "memory_limit": 512 }),
    )
    .await;
    let id = f["id"].as_str().unwrap();
    post(cp, &format!("/functions/{id}/deploy"), json!({})).await;
    let url = format!("{}/bench/echo/_fixture/sleep?ms=0", cp.gateway);
    let deadline = Instant::now() + Duration::from_secs(120);
    while fnrt_tests::http().get(&url).send().await.map(|r| r.status().as_u16()).unwrap_or(0) != 200 {
        assert!(Instant::now() < deadline, "the function did not answer through the gateway");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    url
}

#[tokio::main]
async fn main() {
    let secs: u64 =
        std::env::args().nth(1).map(|a| a.parse().expect("seconds must be a number")).unwrap_or(3);
    let plain_cp = ShippedControlPlane::start(&[]).await;
    let plain_agent =
        ShippedAgent::start_with(&plain_cp, |c| c.dataplane_listen = ([127, 0, 0, 1], 0).into()).await;
    let tls_cp = ShippedControlPlane::start(&[]).await;
    let tls_agent = ShippedAgent::start(&tls_cp).await;
    let (plain_url, tls_url) = (deploy(&plain_cp).await, deploy(&tls_cp).await);
    let list = fnrt_proto::agent::v1::ListInstancesRequest::default();
    let instances = plain_agent.client.clone().list_instances(list).await.unwrap().into_inner().instances;
    let direct = format!("http://{}/_fixture/sleep?ms=0", instances[0].address);
    let targets = [
        ("gateway, plain data plane", plain_url),
        ("gateway, TLS data plane", tls_url),
        ("direct to an instance", direct),
    ];
    for (_, url) in &targets {
        load(url, 4, Duration::from_millis(500)).await;
    }
    let mut results = Vec::new();
    for clients in [1usize, INSTANCES as usize] {
        let mut per: Vec<(Vec<Duration>, usize, Duration)> = vec![(Vec::new(), 0, Duration::ZERO); 3];
        for round in 0..ROUNDS {
            for k in 0..3 {
                let t = (k + round) % 3;
                let (lat, elapsed) = load(&targets[t].1, clients, Duration::from_secs(secs)).await;
                per[t].1 += lat.len();
                per[t].2 += elapsed;
                per[t].0.extend(lat);
            }
        }
        for (t, (mut lat, n, elapsed)) in per.into_iter().enumerate() {
            lat.sort();
            let rps = n as f64 / elapsed.as_secs_f64();
            results.push((targets[t].0, clients, rps, lat[lat.len() / 2], lat[lat.len() * 99 / 100]));
        }
    }
    println!("\nwarm calls through the gateway, {ROUNDS} rounds of {secs} s per target and client count, alternating");
    println!("{:<28} {:>8} {:>12} {:>10} {:>10}", "target", "clients", "req/s", "p50 µs", "p99 µs");
    for (name, clients, rps, p50, p99) in &results {
        println!("{name:<28} {clients:>8} {rps:>12.0} {:>10.1} {:>10.1}", us(*p50), us(*p99));
    }
    let get = |name: &str, c: usize| *results.iter().find(|r| r.0 == name && r.1 == c).unwrap();
    for clients in [1, INSTANCES as usize] {
        let (plain, tls) = (get(targets[0].0, clients), get(targets[1].0, clients));
        let direct = get(targets[2].0, clients);
        println!(
            "{clients} client(s): TLS/plain req/s {:.2}x, p50 {:+.1} µs with TLS; gateway + data plane add {:+.1} µs (plain) to direct's p50, at {:.2}x its req/s",
            tls.2 / plain.2,
            us(tls.3) - us(plain.3),
            us(plain.3) - us(direct.3),
            plain.2 / direct.2
        );
    }
    for cp in [&plain_cp, &tls_cp] {
        let namespaces: Value = serde_json::from_str(
            &fnrt_tests::http()
                .get(format!("{}/namespaces", cp.region_url()))
                .header("X-Auth-Token", &cp.admin_token)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap(),
        )
        .unwrap();
        for ns in namespaces["namespaces"].as_array().unwrap() {
            fnrt_tests::http()
                .delete(format!("{}/namespaces/{}", cp.region_url(), ns["id"].as_str().unwrap()))
                .header("X-Auth-Token", &cp.admin_token)
                .send()
                .await
                .unwrap();
        }
    }
    plain_cp.stop().await;
    tls_cp.stop().await;
    plain_agent.cleanup().await;
    tls_agent.cleanup().await;
}
