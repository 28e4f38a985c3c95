//! Restart safety against the real containerd, runc and CNI: the agent, as a process of
//! its own, is killed with SIGKILL while its instances serve a steady stream of calls and
//! while half-made instance parts lie around; started again, it re-adopts every instance
//! (their output is read again), removes what was half made, and no call made after it is
//! back fails.
#![allow(missing_docs, clippy::unwrap_used, clippy::too_many_lines)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use containerd_client::services::v1::container::Runtime as CdRuntime;
use containerd_client::services::v1::snapshots::{ListSnapshotsRequest, PrepareSnapshotRequest};
use containerd_client::services::v1::{Container, CreateContainerRequest, ListContainersRequest};
use fnrt_agent::Config;
use fnrt_agent::Containerd;
use fnrt_agent::Network;
use fnrt_proto::agent::v1::{
    DeployFunctionRequest, FunctionSpec, ListFunctionsRequest, ListInstancesRequest, RemoveFunctionRequest,
    StartInstanceRequest, StopInstanceRequest, StreamLogsRequest,
};
use fnrt_tests::process::{agent_bin, ready, spawn_agent};
use fnrt_tests::{assert_nothing_left, image, node_leftovers, remove_namespace, test_config};

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// One call of the steady stream: when it started and what it got.
struct Call {
    at: Instant,
    result: Result<u16, String>,
}

/// Half-made parts of an instance `id` that "crashed" during its start: its mark, a
/// network namespace, a CNI address, cgroups, a root filesystem; and a container with no task.
async fn leave_half_made(cfg: &Config, cd: &Containerd, id: &str, image_top: &str) {
    let node_name = format!("{}-{id}", cfg.namespace);
    std::fs::write(cfg.state_dir.join("instances").join(id), b"").unwrap();
    // A real network namespace with a real address on the bridge, as the agent makes them.
    let network =
        Network::new(&cfg.cni_bin_dir, &cfg.cni_data_dir(), &cfg.bridge, &cfg.subnet, &cfg.namespace);
    network.attach(id).await.unwrap();
    // Its cgroups in the controllers the node mounts (v1), or in the unified tree (v2).
    let v1 = Path::new("/sys/fs/cgroup/memory").is_dir();
    let roots: Vec<PathBuf> = if v1 {
        ["memory", "pids", "cpu", "cpuacct"]
            .iter()
            .map(|c| Path::new("/sys/fs/cgroup").join(c))
            .filter(|p| p.is_dir())
            .collect()
    } else {
        vec![PathBuf::from("/sys/fs/cgroup")]
    };
    for root in roots {
        let fnrt = root.join("fnrt");
        assert!(fnrt.is_dir(), "{} is made by the running instances", fnrt.display());
        std::fs::create_dir(fnrt.join(&node_name)).unwrap();
    }
    let prep = PrepareSnapshotRequest {
        snapshotter: "overlayfs".into(),
        key: id.into(),
        parent: image_top.into(),
        labels: HashMap::new(),
    };
    cd.snapshots().prepare(cd.req(prep)).await.unwrap();
    let container = Container {
        id: format!("{id}-c"),
        labels: HashMap::from([("fnrt.function".to_string(), "steady".to_string())]),
        image: image("echo"),
        runtime: Some(CdRuntime { name: "io.containerd.runc.v2".into(), options: None }),
        spec: Some(prost_types_any()),
        ..Default::default()
    };
    cd.containers().create(cd.req(CreateContainerRequest { container: Some(container) })).await.unwrap();
}

fn prost_types_any() -> prost_types::Any {
    prost_types::Any {
        type_url: "types.containerd.io/opencontainers/runtime-spec/1/Spec".into(),
        value: b"{}".to_vec(),
    }
}

async fn snapshot_keys(cd: &Containerd) -> Vec<String> {
    let req = ListSnapshotsRequest { snapshotter: "overlayfs".into(), filters: vec![] };
    let mut stream = cd.snapshots().list(cd.req(req)).await.unwrap().into_inner();
    let mut out = Vec::new();
    while let Some(page) = stream.message().await.unwrap() {
        out.extend(page.info.into_iter().map(|i| i.name));
    }
    out
}

async fn a_sigkilled_agent_readopts_its_instances_cleans_half_made_ones_and_no_call_fails_after(
    class: &'static str,
) {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path());
    if class == "gvisor" {
        cfg.sandbox_classes = vec![fnrt_function::SandboxClass::Runc, fnrt_function::SandboxClass::Gvisor];
    }
    cfg.dataplane_listen = free_port();
    let log = dir.path().join("agent.log");
    let mut agent = spawn_agent(&agent_bin(), &cfg, &log);
    let mut client = ready(&mut agent, &cfg, &log).await;

    let mut ids = Vec::new();
    for _ in 0..3 {
        let req = StartInstanceRequest {
            function: "steady".into(),
            image: image("echo"),
            sandbox_class: class.into(),
            ..Default::default()
        };
        ids.push(client.start_instance(req).await.unwrap().into_inner().instance.unwrap().id);
    }
    ids.sort();
    // A deployed function too: its pool must come back with its instance.
    let kept = FunctionSpec {
        name: "kept".into(),
        image: image("echo"),
        provisioned: 1,
        sandbox_class: class.into(),
        ..Default::default()
    };
    let deployed = client.deploy_function(DeployFunctionRequest { function: Some(kept) }).await.unwrap();
    let kept_instances = deployed.into_inner().function.unwrap().instances;
    assert_eq!(kept_instances.len(), 1);

    // The steady stream: a call every 5 ms, each with a 2 s deadline.
    let stop = Arc::new(AtomicBool::new(false));
    let url = format!("http://{}/function/steady/ping", cfg.dataplane_listen);
    let caller = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let http =
                fnrt_common::tls::http_client(&[]).unwrap().timeout(Duration::from_secs(2)).build().unwrap();
            let mut calls = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let at = Instant::now();
                let result = match http.get(&url).send().await {
                    Ok(r) => Ok(r.status().as_u16()),
                    Err(e) => Err(e.to_string()),
                };
                calls.push(Call { at, result });
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            calls
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;

    agent.start_kill().unwrap(); // SIGKILL
    agent.wait().await.unwrap();
    let killed = Instant::now();

    // While it is down, a start cut short leaves its parts behind.
    let cd = Containerd::connect(&cfg.containerd_socket, &cfg.namespace).await.unwrap();
    let tops = snapshot_keys(&cd).await;
    let top = tops.iter().find(|k| k.starts_with("sha256:")).unwrap().clone();
    let half = "steady-deadbeef";
    leave_half_made(&cfg, &cd, half, &top).await;
    assert!(!node_leftovers(&format!("{}-{half}", cfg.namespace)).is_empty());
    // A network namespace and address with no mark at all.
    let unmarked = "steady-0badf00d";
    let network =
        Network::new(&cfg.cni_bin_dir, &cfg.cni_data_dir(), &cfg.bridge, &cfg.subnet, &cfg.namespace);
    network.attach(unmarked).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut agent = spawn_agent(&agent_bin(), &cfg, &log);
    let mut client = ready(&mut agent, &cfg, &log).await;
    let back = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let calls = caller.await.unwrap();

    let before: Vec<&Call> = calls.iter().filter(|c| c.at < killed).collect();
    let after: Vec<&Call> = calls.iter().filter(|c| c.at >= back).collect();
    assert!(before.len() > 20 && after.len() > 20, "{} calls before, {} after", before.len(), after.len());
    for c in before.iter().chain(&after) {
        if let Ok(200) = c.result {
            continue;
        }
        // A call in flight at the kill may fail; one started before it was sent cannot be told
        // apart, so only calls that ended before the kill are held to 200.
        assert!(c.at >= back || c.at + Duration::from_millis(100) > killed, "failed call: {:?}", c.result);
    }
    let failed_after: Vec<&Result<u16, String>> =
        after.iter().map(|c| &c.result).filter(|r| !matches!(r, Ok(200))).collect();
    assert!(failed_after.is_empty(), "calls after the agent was back failed: {failed_after:?}");
    eprintln!(
        "restart: {} calls before the kill, {} after the agent was back, all 200; down {} ms",
        before.len(),
        after.len(),
        back.duration_since(killed).as_millis()
    );

    // Every instance re-adopted, running.
    let list = client.list_instances(ListInstancesRequest::default()).await.unwrap().into_inner().instances;
    let mut listed: Vec<String> = list
        .iter()
        .filter(|i| i.state == "running" && i.function == "steady")
        .map(|i| i.id.clone())
        .collect();
    listed.sort();
    assert_eq!(listed, ids, "{list:?}");
    // The deployed function is served from its pool again, by the same instance.
    let functions = client.list_functions(ListFunctionsRequest {}).await.unwrap().into_inner().functions;
    assert_eq!(functions.len(), 1, "{functions:?}");
    assert_eq!(functions[0].instances, kept_instances);
    let answer = fnrt_tests::http()
        .get(format!("http://{}/function/kept/", cfg.dataplane_listen))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert!(answer.text().await.unwrap().contains("x-scf-name"), "the pool's headers");
    client.remove_function(RemoveFunctionRequest { name: "kept".into() }).await.unwrap();

    // Their output is read again: a line printed after the restart is found by its call.
    let resp = fnrt_tests::http()
        .get(format!("http://{}/function/steady/_fixture/log?text=after-restart", cfg.dataplane_listen))
        .header("X-Scf-Request-Id", "after-restart-1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let req = StreamLogsRequest { request_id: "after-restart-1".into(), ..Default::default() };
        let mut s = client.stream_logs(req).await.unwrap().into_inner();
        let mut found = false;
        while let Some(l) = s.message().await.unwrap() {
            found |= l.line == "after-restart";
        }
        if found {
            break;
        }
        assert!(Instant::now() < deadline, "the line printed after the restart was not read");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // What was half made is gone.
    let mut left = node_leftovers(&format!("{}-{half}", cfg.namespace));
    left.extend(node_leftovers(&format!("{}-{unmarked}", cfg.namespace)));
    assert!(left.is_empty(), "{left:#?}\nagent log:\n{}", std::fs::read_to_string(&log).unwrap_or_default());
    assert!(!snapshot_keys(&cd).await.contains(&half.to_string()));
    let containers = cd.containers().list(cd.req(ListContainersRequest { filters: vec![] })).await.unwrap();
    let containers: Vec<String> = containers.into_inner().containers.into_iter().map(|c| c.id).collect();
    assert!(!containers.contains(&format!("{half}-c")), "{containers:?}");
    assert!(!cfg.state_dir.join("instances").join(half).exists());

    for id in ids {
        client.stop_instance(StopInstanceRequest { id }).await.unwrap();
    }
    // The removed function's instance stops once idle.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !client
        .list_instances(ListInstancesRequest { function: "kept".into() })
        .await
        .unwrap()
        .into_inner()
        .instances
        .is_empty()
    {
        assert!(Instant::now() < deadline, "the removed function's instance still runs");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // And its teardown is done (the table forgets it first).
    loop {
        let left = node_leftovers(&format!("{}-kept-", cfg.namespace));
        let c = cd.containers().list(cd.req(ListContainersRequest { filters: vec![] })).await.unwrap();
        if left.is_empty() && !c.into_inner().containers.iter().any(|c| c.id.starts_with("kept-")) {
            break;
        }
        assert!(Instant::now() < deadline, "the removed function's instance is not torn down: {left:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    agent.start_kill().unwrap();
    agent.wait().await.unwrap();
    remove_namespace(&cfg.containerd_socket, &cfg.namespace).await;
    assert_nothing_left(&cfg.namespace).await;
}

fnrt_tests::each_class!(
    a_sigkilled_agent_readopts_its_instances_cleans_half_made_ones_and_no_call_fails_after
);
