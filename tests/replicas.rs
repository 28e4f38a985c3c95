//! Control-plane replicas on one etcd (a cluster of the test's own): compare-and-swap
//! writes that lose no update, every replica following every write (and starting over
//! when changes were compacted away), one leader at a time that a resignation or a crash
//! hands over within seconds, and a deposed leader's fenced writes refused; three release
//! control planes as one cluster, a cron firing once a minute across a leader's crash.
#![allow(missing_docs, clippy::unwrap_used, clippy::too_many_lines)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use fnrt_controlplane::state::{Change, State};
use fnrt_controlplane::store::{Applied, Cond, EtcdSettings, EtcdStore, Feed, Fence, Op, Store};
use fnrt_proto::agent::v1::StreamLogsRequest;
use fnrt_tests::etcd::Etcd;
use fnrt_tests::real_parts;
use fnrt_tests::shipped::{ShippedAgent, ShippedControlPlane};
use futures_util::StreamExt;
use serde_json::{json, Value};

async fn store(etcd: &Etcd, prefix: &str) -> Arc<dyn Store> {
    let settings =
        EtcdSettings { endpoints: etcd.endpoints.clone(), prefix: prefix.into(), ..Default::default() };
    Arc::new(EtcdStore::connect(&settings).await.unwrap())
}

fn token(id: &str, name: &str) -> fnrt_controlplane::model::Token {
    serde_json::from_value(serde_json::json!({
        "id": id, "hash": "x", "namespace_id": "ns", "function_id": null, "description": name,
        "expires_at": null, "created_at": "2026-01-01T00:00:00Z",
    }))
    .unwrap()
}

async fn until(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_lose_no_update_follow_every_write_and_start_over_after_a_compaction() {
    let etcd = Etcd::start(3).await;
    let (a, b) = (
        State::open(store(&etcd, "r/").await).await.unwrap(),
        State::open(store(&etcd, "r/").await).await.unwrap(),
    );

    // 2 x 25 increments of one record at once from two replicas: each computed on its
    // own maps, none lost.
    a.write(|_| Ok((vec![Change::Token(token("t", "0"))], ()))).await.unwrap();
    let bump = |s: Arc<State>| async move {
        for _ in 0..25 {
            s.write(|d| {
                let n: u32 = d.tokens.get("t").map_or(0, |t| t.description.parse().unwrap());
                Ok((vec![Change::Token(token("t", &(n + 1).to_string()))], ()))
            })
            .await
            .unwrap();
        }
    };
    let (x, y) = tokio::join!(tokio::spawn(bump(a.clone())), tokio::spawn(bump(b.clone())));
    x.unwrap();
    y.unwrap();
    for s in [&a, &b] {
        let fifty = || s.read(|d| d.tokens.get("t").is_some_and(|t| t.description == "50"));
        until("both replicas see 50", Duration::from_secs(5), fifty).await;
    }

    // A stale condition is refused and changes nothing.
    let st = store(&etcd, "r/").await;
    let stale = st.apply_if(vec![Cond::Unchanged(1)], vec![Op::Put("tokens/u".into(), b"{}".to_vec())]).await;
    assert!(matches!(stale.unwrap(), Applied::Conflict(r) if r > 1));
    assert!(st.get("tokens/u").await.unwrap().is_none());

    // Compacted past a reader's revision: its feed says to start over, and a replica that
    // follows from there has the same maps.
    let rev = a.rev();
    let compact = fnrt_tests::http()
        .post(format!("{}/v3/kv/compaction", etcd.endpoints[0]))
        .body(format!(r#"{{"revision": "{rev}", "physical": true}}"#))
        .send()
        .await
        .unwrap();
    assert!(compact.status().is_success(), "{}", compact.text().await.unwrap());
    let first = st.watch(1).next().await.unwrap().unwrap();
    assert_eq!(first, Feed::Reset);
    let c = State::open(store(&etcd, "r/").await).await.unwrap();
    b.write(|_| Ok((vec![Change::DeleteToken("t".into())], ()))).await.unwrap();
    for s in [&a, &b, &c] {
        until("every replica sees the delete", Duration::from_secs(5), || s.read(|d| d.tokens.is_empty()))
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_replica_leads_a_resignation_or_a_crash_hands_over_and_the_old_term_is_fenced() {
    let etcd = Etcd::start(3).await;
    let stores = [store(&etcd, "l/").await, store(&etcd, "l/").await, store(&etcd, "l/").await];
    let leads: Vec<_> = stores.iter().enumerate().map(|(i, s)| s.lead(&format!("replica-{i}"))).collect();
    let leaders = |leads: &[tokio::sync::watch::Receiver<Option<Fence>>]| -> Vec<usize> {
        leads.iter().enumerate().filter(|(_, l)| l.borrow().is_some()).map(|(i, _)| i).collect()
    };
    until("a leader", Duration::from_secs(5), || leaders(&leads).len() == 1).await;
    let first = leaders(&leads)[0];
    let old_fence = leads[first].borrow().unwrap();
    // Only the leader's fenced write goes through.
    let claim = |f: Fence| vec![Cond::Leader(f)];
    let put = || vec![Op::Put("~cron/x".into(), b"1".to_vec())];
    assert!(matches!(stores[first].apply_if(claim(old_fence), put()).await.unwrap(), Applied::Done(_)));

    // Resigned: another leads at once.
    stores[first].resign().await;
    let handed = until("a new leader after a resignation", Duration::from_secs(3), || {
        let l = leaders(&leads);
        l.len() == 1 && l[0] != first
    })
    .await;
    let second = leaders(&leads)[0];
    let new_fence = leads[second].borrow().unwrap();
    assert!(new_fence.rev > old_fence.rev);
    assert!(matches!(stores[second].apply_if(claim(old_fence), put()).await.unwrap(), Applied::Conflict(_)));

    // Crashed (its campaign stops without giving the key up): the last one takes over
    // once the lease expires.
    let [s0, s1, s2] = stores;
    let mut rest: Vec<Arc<dyn Store>> = vec![s0, s1, s2];
    let crashed = rest.remove(second);
    drop(crashed);
    let third = (0..3).find(|i| *i != first && *i != second).unwrap();
    let took =
        until("a new leader after a crash", Duration::from_secs(12), || leads[third].borrow().is_some())
            .await;
    println!("handover: after a resignation {handed:?}, after a crash {took:?}");
}

/// `GET <api><path>` with the admin key, as JSON.
async fn admin_get(cp: &ShippedControlPlane, path: &str) -> Value {
    let r = fnrt_tests::http().get(format!("{}{path}", cp.api)).header("X-Auth-Token", &cp.admin_token);
    serde_json::from_slice(&r.send().await.unwrap().bytes().await.unwrap()).unwrap()
}

async fn admin_post(cp: &ShippedControlPlane, path: &str, body: Value) -> Value {
    let r = fnrt_tests::http()
        .post(format!("{}{path}", cp.region_url()))
        .header("X-Auth-Token", &cp.admin_token)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = r.status();
    let v: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert!(status.is_success(), "POST {path}: {status} {v}");
    v
}

/// The times of the timer events function `name` logged on `agent`, as the cron sent them.
async fn timer_runs(agent: &ShippedAgent, name: &str) -> Vec<String> {
    let mut logs = agent
        .client
        .clone()
        .stream_logs(StreamLogsRequest { function: name.to_string(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let mut out = Vec::new();
    while let Some(line) = logs.message().await.unwrap() {
        let Some(body) = line.line.split("echo: Timer event: ").nth(1) else { continue };
        let event: Value = serde_json::from_str(body.trim()).unwrap();
        out.push(event["Time"].as_str().unwrap().to_string());
    }
    out
}

/// A code function made on replica `a`, its zip uploaded there, deployed through `b`
/// (which builds it from the zip it fetches from the registry), called through `c`'s
/// gateway, its zip downloaded through `c`.
async fn code_goes_between_replicas(
    a: &ShippedControlPlane,
    b: &ShippedControlPlane,
    c: &ShippedControlPlane,
    ns: &str,
) {
    use std::io::Write;
    let f = admin_post(
        a,
        "/functions",
        json!({ "namespace_id": ns, "name": "site", "runtime": "custom", "privacy": "public" }),
    )
    .await;
    let id = f["id"].as_str().unwrap().to_string();
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let files = [
        ("scf_bootstrap", "#!/bin/sh\nexec busybox httpd -f -p 9000 -h /var/user/www\n", 0o755),
        ("www/index.html", "served from a zip uploaded to another replica", 0o644),
    ];
    for (name, content, mode) in files {
        zip.start_file(name, zip::write::SimpleFileOptions::default().unix_permissions(mode)).unwrap();
        zip.write_all(content.as_bytes()).unwrap();
    }
    let bytes = zip.finish().unwrap().into_inner();
    let url = admin_get(a, &format!("/functions/v1beta1/regions/fr-par/functions/{id}/upload-url")).await;
    let put = fnrt_tests::http().put(url["url"].as_str().unwrap()).body(bytes.clone()).send().await.unwrap();
    assert_eq!(put.status(), 200, "{}", put.text().await.unwrap());
    admin_post(b, &format!("/functions/{id}/deploy"), json!({})).await;
    let start = Instant::now();
    loop {
        let f = admin_get(c, &format!("/functions/v1beta1/regions/fr-par/functions/{id}")).await;
        if f["status"] == "ready" {
            break;
        }
        assert!(f["status"] != "error" && start.elapsed() < Duration::from_secs(60), "{f}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let got = fnrt_tests::http().get(format!("{}/replicated/site/", c.gateway)).send().await.unwrap();
    assert_eq!(got.text().await.unwrap(), "served from a zip uploaded to another replica");
    let url = admin_get(c, &format!("/functions/v1beta1/regions/fr-par/functions/{id}/download-url")).await;
    let zip = fnrt_tests::http().get(url["url"].as_str().unwrap()).send().await.unwrap();
    assert_eq!(zip.bytes().await.unwrap().to_vec(), bytes, "the zip downloaded from a third replica");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn release_replicas_share_one_cluster_and_a_cron_fires_once_a_minute_across_a_leader_crash() {
    real_parts();
    let etcd = Etcd::start(3).await;
    let settings = [
        "store=etcd".to_string(),
        format!("etcd_endpoints={}", etcd.endpoints.join(",")),
        "etcd_prefix=replicas/".to_string(),
    ];
    let first = ShippedControlPlane::start(&settings).await;
    let mut cps = vec![first.replica(&settings).await, first.replica(&settings).await];
    cps.insert(0, first);
    // The admin key is one for all (made by the first, kept in etcd).
    assert!(cps.iter().all(|c| c.admin_token == cps[0].admin_token));
    let urls: Vec<String> = cps.iter().map(|c| format!("https://{}", c.grpc)).collect();
    let agent = ShippedAgent::start_with(&cps[0], |c| c.controlplane_url = Some(urls.join(","))).await;
    for cp in &cps {
        let start = Instant::now();
        while !admin_get(cp, "/fnrt/v1/agents").await.to_string().contains(&agent.cfg.node_name) {
            assert!(start.elapsed() < Duration::from_secs(10), "the agent did not join {}", cp.api);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let leading: Vec<bool> = {
        let mut v = Vec::new();
        for cp in &cps {
            v.push(admin_get(cp, "/fnrt/v1/replica").await["leading"] == true);
        }
        v
    };
    assert_eq!(leading.iter().filter(|l| **l).count(), 1, "one leader: {leading:?}");
    let leader = leading.iter().position(|l| *l).unwrap();
    let followers: Vec<usize> = (0..3).filter(|i| *i != leader).collect();

    // Made and deployed through followers: the leader places it.
    let (a, b) = (&cps[followers[0]], &cps[followers[1]]);
    let ns = admin_post(a, "/namespaces", json!({ "name": "replicated" })).await;
    let f = admin_post(
        b,
        "/functions",
        json!({ "namespace_id": ns["id"], "name": "echo", "min_scale": 1, "privacy": "public",
                "registry_image": fnrt_tests::image("echo"), "scf_type": "event" }),
    )
    .await;
    let id = f["id"].as_str().unwrap().to_string();
    admin_post(a, &format!("/functions/{id}/deploy"), json!({})).await;
    let start = Instant::now();
    loop {
        let f = admin_get(b, &format!("/functions/v1beta1/regions/fr-par/functions/{id}")).await;
        if f["status"] == "ready" {
            break;
        }
        assert!(f["status"] != "error" && start.elapsed() < Duration::from_secs(60), "{f}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    code_goes_between_replicas(a, b, &cps[leader], ns["id"].as_str().unwrap()).await;
    // Every replica calls it (an event function: through the API's invoke).
    for cp in &cps {
        admin_post(cp, &format!("/functions/{id}/invoke"), json!({ "from": cp.api })).await;
    }

    // A cron every minute, made on a follower; its first run, then the leader crashes.
    admin_post(
        a,
        "/crons",
        json!({ "function_id": id, "schedule": "* * * * *", "args": { "job": "replicas" } }),
    )
    .await;
    let name = format!("fn-{id}");
    let start = Instant::now();
    while timer_runs(&agent, &name).await.is_empty() {
        assert!(start.elapsed() < Duration::from_secs(75), "no cron run in 75 s");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let crashed_at = Instant::now();
    let mut cps: Vec<Option<ShippedControlPlane>> = cps.into_iter().map(Some).collect();
    let mut crashed = cps[leader].take().unwrap();
    crashed.kill().await;
    let survivors: Vec<&ShippedControlPlane> = cps.iter().flatten().collect();
    let mut took_over = None;
    while took_over.is_none() {
        for cp in &survivors {
            if admin_get(cp, "/fnrt/v1/replica").await["leading"] == true {
                took_over = Some(crashed_at.elapsed());
            }
        }
        assert!(crashed_at.elapsed() < Duration::from_secs(15), "no replica took over in 15 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The next two minutes' runs come, each once.
    let start = Instant::now();
    let runs = loop {
        let runs = timer_runs(&agent, &name).await;
        if runs.len() >= 3 {
            break runs;
        }
        assert!(start.elapsed() < Duration::from_secs(150), "runs so far: {runs:?}");
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let mut distinct = runs.clone();
    distinct.dedup();
    assert_eq!(distinct, runs, "a minute ran twice");
    for cp in &survivors {
        admin_post(cp, &format!("/functions/{id}/invoke"), json!({ "after": "the crash" })).await;
    }
    println!("leader crash: a new leader after {:?}; cron runs {runs:?}", took_over.unwrap());
    agent.cleanup().await;
    for cp in cps.into_iter().flatten() {
        cp.stop().await;
    }
}
