//! The control plane's store on etcd (a cluster of the test's own, Debian's etcd-server):
//! the same contract as the redb store, a control plane on it keeps its state across
//! restarts, and `fnrt-controlplane migrate-store` (the release binary) copies a redb
//! store into it.
#![allow(missing_docs, clippy::unwrap_used)]

use std::sync::Arc;

use fnrt_controlplane::store::{EtcdSettings, EtcdStore, Op, RedbStore, Store};
use fnrt_controlplane::Config as CpConfig;
use fnrt_tests::etcd::Etcd;
use fnrt_tests::{controlplane_config, real_parts};
use serde_json::{json, Value};

const CLUSTER_TOKEN: &str = "cluster-token-for-the-store-tests-0123456789";

fn settings(etcd: &Etcd, prefix: &str) -> EtcdSettings {
    EtcdSettings { endpoints: etcd.endpoints.clone(), prefix: prefix.into(), ..Default::default() }
}

/// What both stores must do alike.
async fn contract(store: Arc<dyn Store>) {
    store
        .apply(vec![
            Op::Put("ns/a".into(), b"1".to_vec()),
            Op::Put("ns/b".into(), b"2".to_vec()),
            Op::Put("nt/c".into(), b"3".to_vec()),
            // One key twice in a batch: the last wins (etcd refuses a transaction that
            // names a key twice; the store folds them).
            Op::Put("ns/d".into(), b"x".to_vec()),
            Op::Delete("ns/d".into()),
        ])
        .await
        .unwrap();
    store.apply(vec![Op::Delete("ns/a".into()), Op::Delete("ns/zz".into())]).await.unwrap();
    assert_eq!(store.list("ns/").await.unwrap(), vec![("ns/b".to_string(), b"2".to_vec())]);
    assert_eq!(store.list("nt/").await.unwrap().len(), 1);
    assert!(store.list("x/").await.unwrap().is_empty());
    // More records than one page of a read, in key order.
    let many: Vec<Op> = (0..1200).map(|i| Op::Put(format!("many/{i:05}"), vec![1])).collect();
    for chunk in many.chunks(400) {
        store.apply(chunk.to_vec()).await.unwrap();
    }
    let listed = store.list("many/").await.unwrap();
    assert_eq!(listed.len(), 1200);
    assert!(listed.windows(2).all(|w| w[0].0 < w[1].0));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_etcd_store_keeps_the_redb_stores_contract_and_its_prefix_to_itself() {
    let dir = tempfile::tempdir().unwrap();
    contract(Arc::new(RedbStore::open(&dir.path().join("state.redb")).unwrap())).await;
    let etcd = Etcd::start(3).await;
    contract(Arc::new(EtcdStore::connect(&settings(&etcd, "fnrt/")).await.unwrap())).await;
    // Another prefix sees none of it; a stopped cluster is a clear error.
    let other = EtcdStore::connect(&settings(&etcd, "other/")).await.unwrap();
    assert!(other.list("").await.unwrap().is_empty());
    let endpoints = etcd.endpoints.clone();
    drop(etcd);
    let gone = EtcdSettings { endpoints, prefix: "fnrt/".into(), ..Default::default() };
    let err = EtcdStore::connect(&gone).await.err().expect("a stopped cluster is refused");
    assert!(err.to_string().contains("cannot connect to etcd at http://127.0.0.1:"), "{err}");
}

async fn api(
    cp: &fnrt_controlplane::Handle,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> Value {
    let url = format!("http://{}/functions/v1beta1/regions/fr-par{path}", cp.api_address);
    let mut req =
        fnrt_tests::http().request(method, url).header("X-Auth-Token", cp.ctx.cfg.admin_token.expose());
    if let Some(b) = body {
        req = req.header("content-type", "application/json").body(b.to_string());
    }
    let resp = req.send().await.unwrap();
    assert!(resp.status().is_success(), "{path}: {}", resp.status());
    serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_control_plane_on_etcd_keeps_its_state_and_migrate_store_copies_a_redb_store() {
    real_parts();
    let etcd = Etcd::start(1).await;
    let on_etcd = |dir: &std::path::Path, prefix: &str| CpConfig {
        store: "etcd".into(),
        etcd_endpoints: etcd.endpoints.clone(),
        etcd_prefix: prefix.into(),
        ..controlplane_config(dir, CLUSTER_TOKEN)
    };

    // On etcd: what was made is there after a restart (a new state directory: nothing of
    // it is on the local disk).
    let first = tempfile::tempdir().unwrap();
    let cp = fnrt_controlplane::start(on_etcd(first.path(), "fnrt/")).await.unwrap();
    let ns = api(&cp, reqwest::Method::POST, "/namespaces", Some(json!({ "name": "kept" }))).await;
    api(&cp, reqwest::Method::POST, "/functions", Some(json!({ "namespace_id": ns["id"], "name": "f" })))
        .await;
    cp.shutdown().await;
    let second = tempfile::tempdir().unwrap();
    let cp = fnrt_controlplane::start(on_etcd(second.path(), "fnrt/")).await.unwrap();
    let listed = api(&cp, reqwest::Method::GET, "/functions", None).await;
    assert_eq!(
        (listed["total_count"].as_u64(), listed["functions"][0]["name"].as_str()),
        (Some(1), Some("f"))
    );
    cp.shutdown().await;

    // A redb store copied into etcd by the release binary, then served from there.
    let old = tempfile::tempdir().unwrap();
    let cp = fnrt_controlplane::start(controlplane_config(old.path(), CLUSTER_TOKEN)).await.unwrap();
    for name in ["one", "two"] {
        api(&cp, reqwest::Method::POST, "/namespaces", Some(json!({ "name": name }))).await;
    }
    cp.shutdown().await;
    let migrate = || {
        std::process::Command::new(fnrt_tests::shipped::release_bin("fnrt-controlplane"))
            .arg("migrate-store")
            .args(["--set", &format!("state_dir={}", old.path().display()), "--set", "store=etcd"])
            .args(["--set", &format!("etcd_endpoints={}", etcd.endpoints.join(","))])
            .args(["--set", "etcd_prefix=migrated/"])
            .output()
            .unwrap()
    };
    // The control plane hosted here let go of its redb file only once the server's
    // connection tasks (which hold its state) saw their callers' connections close, a
    // moment after shutdown returned: until then redb's lock refuses a second opener.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let out = loop {
        let out = migrate();
        let busy = String::from_utf8_lossy(&out.stderr).contains("Database already open");
        if !busy || std::time::Instant::now() > deadline {
            break out;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && text.contains("copied 2 records into etcd under migrated/"), "{text}");
    let again = migrate();
    let text = String::from_utf8_lossy(&again.stderr).into_owned();
    assert!(!again.status.success() && text.contains("holds 2 records under etcd_prefix already"), "{text}");
    let third = tempfile::tempdir().unwrap();
    let cp = fnrt_controlplane::start(on_etcd(third.path(), "migrated/")).await.unwrap();
    let listed = api(&cp, reqwest::Method::GET, "/namespaces?order_by=name_asc", None).await;
    let names: Vec<&str> =
        listed["namespaces"].as_array().unwrap().iter().map(|n| n["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["one", "two"]);
    cp.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_release_control_plane_starts_on_etcd_and_a_second_one_finds_its_records() {
    use fnrt_tests::shipped::ShippedControlPlane;
    real_parts();
    let etcd = Etcd::start(3).await;
    let settings = [
        "store=etcd".to_string(),
        format!("etcd_endpoints={}", etcd.endpoints.join(",")),
        "etcd_prefix=shipped/".to_string(),
    ];
    let http = fnrt_tests::http();
    let cp = ShippedControlPlane::start(&settings).await;
    let made = http
        .post(format!("{}/namespaces", cp.region_url()))
        .header("X-Auth-Token", &cp.admin_token)
        .header("content-type", "application/json")
        .body(json!({ "name": "on-etcd" }).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(made.status(), 200, "{}", made.text().await.unwrap());
    cp.stop().await;
    // Another process with a state directory of its own: the records are in etcd.
    let cp = ShippedControlPlane::start(&settings).await;
    let listed = http
        .get(format!("{}/namespaces", cp.region_url()))
        .header("X-Auth-Token", &cp.admin_token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let listed: Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed["namespaces"][0]["name"], "on-etcd", "{listed}");
    cp.stop().await;
}
