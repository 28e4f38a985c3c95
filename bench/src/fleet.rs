//! A simulated fleet: `agents` fake agents that speak the real gRPC (they register,
//! heartbeat with capacity reports, and take DeployFunction/UpdateFunction/
//! RemoveFunction, running nothing) joined to the release control plane on a one-member
//! etcd of the run's own, with `functions` image functions (min_scale 1) seeded into etcd
//! as deployed. It measures what placement and reconcile cost at that size: the control
//! plane's start (loading every record), the time until every function is on an agent,
//! a reconcile pass in steady state, API latency (a read and a compare-and-swap write),
//! the control plane's memory, and etcd write transactions per second.
//!
//! `fleet [agents] [functions]`, 1000 and 100000 by default (etcd-server on PATH, the
//! release binaries where FNRT_RELEASE_DIR or target/release says); everything on loopback.
#![allow(clippy::unwrap_used, clippy::too_many_lines)]

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fnrt_controlplane::model::{Deployed, Function, FunctionStatus, Namespace};
use fnrt_controlplane::store::{EtcdSettings, EtcdStore, Op, Store};
use fnrt_proto::agent::v1 as apb;
use fnrt_proto::controlplane::v1 as cpb;
use serde_json::Value;
use tonic::{Request, Response, Status};

const CLUSTER_TOKEN: &str = "fleet-cluster-token-0123456789abcdef";
const PREFIX: &str = "fleet/";

/// What each fake node runs: function name → (warm instances asked for, memory in MB).
#[derive(Default)]
struct Node {
    functions: Mutex<HashMap<String, (u32, u32)>>,
}

/// The fake agents' API: one server, the node told by the address a call came to.
struct Fleet {
    nodes: HashMap<SocketAddr, Arc<Node>>,
}

type Stream<T> = Pin<Box<dyn futures_util::Stream<Item = Result<T, Status>> + Send>>;

impl Fleet {
    fn node<T>(&self, req: &Request<T>) -> Result<&Arc<Node>, Status> {
        req.local_addr().and_then(|a| self.nodes.get(&a)).ok_or_else(|| Status::not_found("no such node"))
    }
}

fn none<T>() -> Result<Response<T>, Status> {
    Err(Status::unimplemented("a simulated agent runs nothing"))
}

#[tonic::async_trait]
impl apb::agent_server::Agent for Fleet {
    type PullImageStream = Stream<apb::PullProgress>;
    type PrefetchImageStream = Stream<apb::PullProgress>;
    type StreamLogsStream = Stream<apb::LogLine>;

    async fn node_status(
        &self,
        _: Request<apb::NodeStatusRequest>,
    ) -> Result<Response<apb::NodeStatusResponse>, Status> {
        none()
    }
    async fn pull_image(
        &self,
        _: Request<apb::PullImageRequest>,
    ) -> Result<Response<Self::PullImageStream>, Status> {
        none()
    }
    async fn prefetch_image(
        &self,
        _: Request<apb::PrefetchImageRequest>,
    ) -> Result<Response<Self::PrefetchImageStream>, Status> {
        none()
    }
    async fn list_images(
        &self,
        _: Request<apb::ListImagesRequest>,
    ) -> Result<Response<apb::ListImagesResponse>, Status> {
        none()
    }
    async fn remove_image(
        &self,
        _: Request<apb::RemoveImageRequest>,
    ) -> Result<Response<apb::RemoveImageResponse>, Status> {
        none()
    }
    async fn start_instance(
        &self,
        _: Request<apb::StartInstanceRequest>,
    ) -> Result<Response<apb::StartInstanceResponse>, Status> {
        none()
    }
    async fn stop_instance(
        &self,
        _: Request<apb::StopInstanceRequest>,
    ) -> Result<Response<apb::StopInstanceResponse>, Status> {
        none()
    }
    async fn list_instances(
        &self,
        _: Request<apb::ListInstancesRequest>,
    ) -> Result<Response<apb::ListInstancesResponse>, Status> {
        none()
    }
    async fn stream_logs(
        &self,
        _: Request<apb::StreamLogsRequest>,
    ) -> Result<Response<Self::StreamLogsStream>, Status> {
        none()
    }
    async fn deploy_function(
        &self,
        req: Request<apb::DeployFunctionRequest>,
    ) -> Result<Response<apb::DeployFunctionResponse>, Status> {
        let node = self.node(&req)?.clone();
        let spec = req.into_inner().function.ok_or_else(|| Status::invalid_argument("no spec"))?;
        node.functions.lock().unwrap().insert(spec.name, (spec.provisioned, spec.memory_mb));
        Ok(Response::new(apb::DeployFunctionResponse::default()))
    }
    async fn update_function(
        &self,
        req: Request<apb::UpdateFunctionRequest>,
    ) -> Result<Response<apb::UpdateFunctionResponse>, Status> {
        let node = self.node(&req)?.clone();
        let spec = req.into_inner().function.ok_or_else(|| Status::invalid_argument("no spec"))?;
        node.functions.lock().unwrap().insert(spec.name, (spec.provisioned, spec.memory_mb));
        Ok(Response::new(apb::UpdateFunctionResponse::default()))
    }
    async fn remove_function(
        &self,
        req: Request<apb::RemoveFunctionRequest>,
    ) -> Result<Response<apb::RemoveFunctionResponse>, Status> {
        let node = self.node(&req)?.clone();
        node.functions.lock().unwrap().remove(&req.into_inner().name);
        Ok(Response::new(apb::RemoveFunctionResponse::default()))
    }
    async fn list_functions(
        &self,
        _: Request<apb::ListFunctionsRequest>,
    ) -> Result<Response<apb::ListFunctionsResponse>, Status> {
        none()
    }
    async fn invoke(&self, _: Request<apb::InvokeRequest>) -> Result<Response<apb::InvokeResponse>, Status> {
        none()
    }
}

/// A node's report: 64 CPUs and 256 GiB, what it was asked to run (warm, and counted
/// against its memory as a real agent counts it).
fn report(node: &Node) -> cpb::Report {
    let running = node.functions.lock().unwrap();
    let functions = running
        .iter()
        .map(|(name, (n, _))| cpb::FunctionLoad { name: name.clone(), ready: *n, ..Default::default() })
        .collect();
    let reserved: u64 = running.values().map(|(n, mb)| u64::from((*n).max(1)) * u64::from(*mb)).sum();
    cpb::Report {
        architecture: "amd64".into(),
        cpus: 64,
        memory_bytes: 256 << 30,
        memory_reserved_mb: reserved,
        functions,
        room_instances: Some(100_000 - running.len() as u32),
        ..Default::default()
    }
}

/// Registers node `i` and heartbeats until the process ends.
async fn agent(cp: String, i: usize, node: Arc<Node>, api: SocketAddr) {
    let channel = tonic::transport::Endpoint::from_shared(cp).unwrap().connect_lazy();
    let token = fnrt_proto::connect::Bearer::new(CLUSTER_TOKEN).unwrap();
    let mut client = cpb::control_plane_client::ControlPlaneClient::with_interceptor(channel, token);
    let name = format!("sim-{i:04}");
    let node_id = format!("sim-node-id-{i:04}");
    loop {
        let reg = cpb::RegisterRequest {
            node: name.clone(),
            grpc_endpoint: format!("http://{api}"),
            dataplane_address: format!("127.0.0.1:{}", 20000 + i),
            report: Some(report(&node)),
            node_id: node_id.clone(),
            dataplane_tls: false,
        };
        let Ok(r) = client.register(reg).await else {
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        };
        let every = Duration::from_millis(u64::from(r.into_inner().heartbeat_interval_ms.max(100)));
        // Spread the heartbeats over the interval.
        tokio::time::sleep(every.mul_f64((i % 100) as f64 / 100.0)).await;
        loop {
            tokio::time::sleep(every).await;
            let hb = cpb::HeartbeatRequest {
                node: name.clone(),
                report: Some(report(&node)),
                node_id: node_id.clone(),
            };
            if client.heartbeat(hb).await.is_err() {
                break;
            }
        }
    }
}

/// `n` function records (min_scale 1, deployed) and their namespace, into etcd.
async fn seed(store: &EtcdStore, n: usize) {
    let now = chrono::Utc::now();
    let ns = Namespace {
        registry_credentials: None,
        id: "fleet-ns".into(),
        name: "fleet".into(),
        description: String::new(),
        project_id: String::new(),
        environment_variables: BTreeMap::new(),
        secrets: vec![],
        tags: vec![],
        created_at: now,
        updated_at: now,
        sandbox_class: fnrt_function::SandboxClass::Runc,
    };
    let mut ops = vec![Op::Put(format!("namespaces/{}", ns.id), serde_json::to_vec(&ns).unwrap())];
    for i in 0..n {
        let id = format!("00000000-0000-4000-8000-{i:012}");
        let mut f = Function {
            id: id.clone(),
            name: format!("f{i}"),
            namespace_id: ns.id.clone(),
            description: String::new(),
            registry_image: "127.0.0.1:5000/fnrt/echo@sha256:0000000000000000000000000000000000000000000000000000000000000000".into(),
            image_acceleration: false,
            environment_variables: BTreeMap::new(),
            secrets: vec![],
            min_scale: 1,
            max_scale: 2,
            memory_limit: 128,
            timeout_s: 30,
            privacy: "public".into(),
            http_option: "enabled".into(),
            runtime: String::new(),
            sandbox_class: None,
            sandbox: "v2".into(),
            handler: String::new(),
            tags: vec![],
            status: FunctionStatus::Ready,
            error_message: None,
            deploys: 1,
            created_at: now,
            updated_at: now,
            ready_at: Some(now),
            deployed: None,
            pushed_digest: None,
            code_digest: None,
            build_message: None,
            process: Default::default(),
            runtime_message: None,
            event: false,
        };
        f.deployed = Some(Deployed::of(&f, &ns));
        ops.push(Op::Put(format!("functions/{id}"), serde_json::to_vec(&f).unwrap()));
        if ops.len() >= 100 {
            store.apply(std::mem::take(&mut ops)).await.unwrap();
        }
    }
    if !ops.is_empty() {
        store.apply(ops).await.unwrap();
    }
}

fn rss_mb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    kb / 1024
}

/// The store's revision (etcd's, over its JSON gateway).
async fn etcd_revision(endpoint: &str) -> i64 {
    let r = fnrt_tests::http()
        .post(format!("{endpoint}/v3/kv/range"))
        .body(r#"{"key": "ZmxlZXQvfnJldg=="}"#)
        .send()
        .await
        .unwrap();
    let v: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    v["header"]["revision"].as_str().unwrap_or("0").parse().unwrap()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let agents: usize = std::env::args().nth(1).map_or(1000, |a| a.parse().unwrap());
    let functions: usize = std::env::args().nth(2).map_or(100_000, |a| a.parse().unwrap());
    println!("simulated fleet: {agents} agents, {functions} functions (min_scale 1 each)");
    let etcd = fnrt_tests::etcd::Etcd::start(1).await;
    let settings =
        EtcdSettings { endpoints: etcd.endpoints.clone(), prefix: PREFIX.into(), ..Default::default() };
    let store = EtcdStore::connect(&settings).await.unwrap();
    let t = Instant::now();
    seed(&store, functions).await;
    println!("seeded {functions} records into etcd in {:.1} s", t.elapsed().as_secs_f64());

    // The fake agents' API: one listener per node on loopback.
    let mut nodes = HashMap::new();
    let mut listeners = Vec::new();
    let mut addrs = Vec::new();
    for _ in 0..agents {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = l.local_addr().unwrap();
        nodes.insert(a, Arc::new(Node::default()));
        addrs.push(a);
        listeners.push(tokio_stream::wrappers::TcpListenerStream::new(l));
    }
    let fleet_nodes: Vec<Arc<Node>> = addrs.iter().map(|a| nodes[a].clone()).collect();
    let incoming = futures_util::stream::select_all(listeners);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(apb::agent_server::AgentServer::new(Fleet { nodes }))
            .serve_with_incoming(incoming),
    );

    // The release control plane, as a process.
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("controlplane.log");
    let started = Instant::now();
    let mut cp = std::process::Command::new(fnrt_tests::shipped::release_bin("fnrt-controlplane"))
        .args(["--set", "store=etcd", "--set", &format!("etcd_endpoints={}", etcd.endpoints[0])])
        .args(["--set", &format!("etcd_prefix={PREFIX}"), "--set", &format!("cluster_token={CLUSTER_TOKEN}")])
        .args(["--set", &format!("state_dir={}", dir.path().join("state").display())])
        .args(["--set", "api_listen=127.0.0.1:0", "--set", "gateway_listen=127.0.0.1:0"])
        .args(["--set", "grpc_listen=127.0.0.1:0", "--set", "registry=127.0.0.1:5000"])
        .args(["--set", "metrics_listen=127.0.0.1:0"])
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::OpenOptions::new().append(true).open(&log).unwrap())
        .env("RUST_LOG", "warn,fnrt_controlplane=info")
        .spawn()
        .unwrap();
    let line = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(l) = text.lines().find(|l| l.contains("control plane started")) {
            break fnrt_tests::shipped::plain(l);
        }
        assert!(cp.try_wait().unwrap().is_none(), "the control plane exited: {text}");
        assert!(started.elapsed() < Duration::from_secs(300), "the control plane did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let start_took = started.elapsed();
    let field = |k: &str| fnrt_tests::shipped::field(&line, k).unwrap().to_string();
    let (api, grpc) = (format!("http://{}", field("api")), format!("http://{}", field("grpc")));
    let token = std::fs::read_to_string(dir.path().join("state/admin-token")).unwrap().trim().to_string();
    println!(
        "control plane started (every record loaded) in {:.2} s; RSS {} MB",
        start_took.as_secs_f64(),
        rss_mb(cp.id())
    );

    let t = Instant::now();
    for (i, node) in fleet_nodes.iter().enumerate() {
        tokio::spawn(agent(grpc.clone(), i, node.clone(), addrs[i]));
    }
    let rev0 = etcd_revision(&etcd.endpoints[0]).await;
    let placed = |nodes: &[Arc<Node>]| nodes.iter().map(|n| n.functions.lock().unwrap().len()).sum::<usize>();
    while placed(&fleet_nodes) < functions {
        assert!(t.elapsed() < Duration::from_secs(1800), "placed {} of {functions}", placed(&fleet_nodes));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let place_took = t.elapsed();
    let per_node: Vec<usize> = fleet_nodes.iter().map(|n| n.functions.lock().unwrap().len()).collect();
    println!(
        "every function on an agent {:.1} s after the agents started to join ({} to {} per agent); etcd writes meanwhile: {}",
        place_took.as_secs_f64(),
        per_node.iter().min().unwrap(),
        per_node.iter().max().unwrap(),
        etcd_revision(&etcd.endpoints[0]).await - rev0
    );

    let http = fnrt_tests::http();
    let get = |path: String| {
        let (http, token) = (http.clone(), token.clone());
        async move {
            let r = http.get(path).header("X-Auth-Token", token).send().await.unwrap();
            assert!(r.status().is_success());
            serde_json::from_slice::<Value>(&r.bytes().await.unwrap()).unwrap()
        }
    };
    // Steady state: every pass of 20 s with nothing to change (the leader's own timing).
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut passes = Vec::new();
    let mut seen = 0;
    let window = Instant::now();
    while window.elapsed() < Duration::from_secs(20) {
        let r = get(format!("{api}/fnrt/v1/replica")).await;
        let n = r["reconcile_passes"].as_u64().unwrap();
        if n != seen {
            if seen > 0 {
                passes.push(Duration::from_micros(r["last_reconcile_us"].as_u64().unwrap()));
            }
            seen = n;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    passes.sort();
    println!(
        "reconcile pass in steady state ({} passes in 20 s): p50 {} max {}",
        passes.len(),
        ms(percentile(&passes, 0.5)),
        ms(passes[passes.len() - 1])
    );

    // API latency: reads of one function, and compare-and-swap writes (a description).
    let region = format!("{api}/functions/v1beta1/regions/fr-par");
    let mut reads = Vec::new();
    for i in 0..500 {
        let id = format!("00000000-0000-4000-8000-{:012}", (i * 7919) % functions);
        let t = Instant::now();
        get(format!("{region}/functions/{id}")).await;
        reads.push(t.elapsed());
    }
    reads.sort();
    let rev1 = etcd_revision(&etcd.endpoints[0]).await;
    let mut writes = Vec::new();
    let wt = Instant::now();
    for i in 0..300 {
        let id = format!("00000000-0000-4000-8000-{:012}", (i * 104_729) % functions);
        let t = Instant::now();
        let r = http
            .patch(format!("{region}/functions/{id}"))
            .header("X-Auth-Token", &token)
            .header("content-type", "application/json")
            .body(format!(r#"{{"description": "write {i}"}}"#))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.text().await.unwrap());
        writes.push(t.elapsed());
    }
    let write_secs = wt.elapsed().as_secs_f64();
    let write_revs = etcd_revision(&etcd.endpoints[0]).await - rev1;
    writes.sort();
    println!("API GET function: p50 {} p99 {}", ms(percentile(&reads, 0.5)), ms(percentile(&reads, 0.99)));
    println!(
        "API PATCH function (one client, a CAS write each): p50 {} p99 {}; {:.0} etcd writes/s",
        ms(percentile(&writes, 0.5)),
        ms(percentile(&writes, 0.99)),
        write_revs as f64 / write_secs
    );
    println!("control plane RSS with the fleet joined: {} MB", rss_mb(cp.id()));
    // FLEET_HOLD=<seconds>: keep the fleet up that long (to profile the control plane).
    if let Some(hold) = std::env::var("FLEET_HOLD").ok().and_then(|s| s.parse().ok()) {
        tokio::time::sleep(Duration::from_secs(hold)).await;
    }
    let text = fnrt_tests::shipped::plain(&std::fs::read_to_string(&log).unwrap_or_default());
    for l in text.lines().filter(|l| l.contains("reconcile pass took")).rev().take(3) {
        println!("  control plane: {l}");
    }
    let _ = cp.kill();
    let _ = cp.wait();
}
