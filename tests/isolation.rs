//! Strangers kept apart, tried from inside an instance against the real containerd, runc,
//! CNI and nftables: the instance is not host root, the calls kernel exploit chains need
//! are refused, and it reaches neither another instance, nor the node, nor the metadata
//! address (carried by a network namespace this test makes, routed as the outside would
//! be). No packet leaves the machine: every address here is the test's own.
#![allow(missing_docs, clippy::unwrap_used, clippy::too_many_lines)]

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use fnrt_proto::agent::v1::{Instance, StartInstanceRequest};
use fnrt_tests::testhost::TestHost;
use fnrt_tests::{image, TestAgent};

/// The system calls kernel exploits need (the fixture's `syscall?name=` actions).
const EXPLOIT_CALLS: [&str; 9] = [
    "unshare_user",
    "clone_user",
    "io_uring_setup",
    "keyctl",
    "add_key",
    "mount",
    "userfaultfd",
    "bpf",
    "perf_event_open",
];

async fn start(agent: &mut TestAgent, class: &str, function: &str) -> Instance {
    let req = StartInstanceRequest {
        function: function.into(),
        sandbox_class: class.into(),
        image: image("echo"),
        env: HashMap::new(),
        memory_mb: 128,
        timeout_ms: 10_000,
        ..Default::default()
    };
    agent.client.start_instance(req).await.unwrap().into_inner().instance.unwrap()
}

async fn act(agent: &TestAgent, function: &str, action: &str) -> serde_json::Value {
    let (status, body) = agent.call(function, &format!("/_fixture/{action}"), "").await;
    assert_eq!(status, 200, "{action}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{action}: {e}: {body}"))
}

/// Whether the instance behind `function` can open a TCP connection to `to`.
async fn connects(agent: &TestAgent, function: &str, to: SocketAddr) -> serde_json::Value {
    act(agent, function, &format!("connect?to={to}&ms=700")).await
}

#[tokio::test(flavor = "multi_thread")]
async fn an_instance_is_not_host_root_and_the_calls_exploits_need_are_refused() {
    let mut agent = TestAgent::start().await;
    let inst = start(&mut agent, "runc", "sandbox").await;

    let map = act(&agent, "sandbox", "read?path=/proc/self/uid_map").await;
    let fields: Vec<u64> =
        map["text"].as_str().unwrap().split_whitespace().map(|f| f.parse().unwrap()).collect();
    assert_eq!(fields, vec![0, 100_000, 65_536], "uid 0 inside is 100000 on the host: {map}");

    // A control first: an ordinary call goes through the filter.
    assert!(act(&agent, "sandbox", "syscall?name=getpid").await["ok"].as_i64().is_some());
    for call in EXPLOIT_CALLS {
        let r = act(&agent, "sandbox", &format!("syscall?name={call}")).await;
        assert_eq!(r["errno"], "EPERM", "{call}: {r}");
    }

    // No sysfs of the host: /sys is empty but for the instance's cgroups, and read-only.
    let net = act(&agent, "sandbox", "read?path=/sys/class/net/eth0/address").await;
    assert!(net["error"].is_string(), "the host's sysfs is visible: {net}");
    let w = act(&agent, "sandbox", "write?path=/sys/x&mb=0").await;
    assert_eq!(w["error"], "EROFS", "{w}");
    let w = act(&agent, "sandbox", "write?path=/tmp/mine&mb=1").await;
    assert_eq!(w["error"], "", "{w}");
    let on_host = std::fs::metadata(format!("/proc/{}/root/tmp/mine", inst.pid)).unwrap();
    assert_eq!(
        (on_host.uid(), on_host.gid()),
        (100_000, 100_000),
        "the file belongs to the instance's range"
    );
    let status = std::fs::read_to_string(format!("/proc/{}/status", inst.pid)).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(uid_line.split_whitespace().skip(1).all(|u| u == "100000"), "{uid_line}");
    let no_new_privs = status.lines().find(|l| l.starts_with("NoNewPrivs:")).unwrap();
    assert!(no_new_privs.ends_with('1'), "{no_new_privs}");
    let seccomp = status.lines().find(|l| l.starts_with("Seccomp:")).unwrap();
    assert!(seccomp.ends_with('2'), "filter mode: {seccomp}");
    agent.cleanup().await;
}

/// The host processes of an instance: those of its cgroup (pids controller, v1 or v2).
fn cgroup_processes(namespace: &str, id: &str) -> Vec<u32> {
    for dir in [
        format!("/sys/fs/cgroup/pids/fnrt/{namespace}-{id}"),
        format!("/sys/fs/cgroup/fnrt/{namespace}-{id}"),
    ] {
        if let Ok(text) = std::fs::read_to_string(format!("{dir}/cgroup.procs")) {
            return text.lines().filter_map(|l| l.trim().parse().ok()).collect();
        }
    }
    panic!("no cgroup of instance {id}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gvisor_instance_talks_to_gvisors_kernel_and_its_host_processes_are_not_root() {
    let mut agent = TestAgent::start_class("gvisor", |_| {}).await;
    let inst = start(&mut agent, "gvisor", "walled").await;
    assert_eq!(inst.sandbox_class, "gvisor");
    let version = act(&agent, "walled", "read?path=/proc/version").await;
    assert!(
        version["text"].as_str().unwrap().starts_with("Linux version 4.4.0"),
        "gVisor's kernel: {version}"
    );
    // The calls exploits need: gVisor's kernel does not offer them, or the instance's own
    // filter (loaded inside gVisor) refuses them.
    assert!(act(&agent, "walled", "syscall?name=getpid").await["ok"].as_i64().is_some());
    for call in EXPLOIT_CALLS {
        let r = act(&agent, "walled", &format!("syscall?name={call}")).await;
        let errno = r["errno"].as_str().unwrap_or_default();
        assert!(matches!(errno, "EPERM" | "ENOSYS"), "{call}: {r}");
    }
    let w = act(&agent, "walled", "write?path=/root-file&mb=0").await;
    assert_eq!(w["error"], "EROFS", "{w}");
    let net = act(&agent, "walled", "read?path=/sys/class/net/eth0/address").await;
    assert!(net["error"].is_string(), "the host's sysfs is visible: {net}");
    // On the node, every process of the sandbox (gVisor's kernel and its file server) runs
    // as the instance range's first id, under a seccomp filter, without new privileges.
    let procs = cgroup_processes(&agent.cfg.namespace, &inst.id);
    assert!(!procs.is_empty());
    for pid in procs {
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else { continue };
        let line = |key: &str| status.lines().find(|l| l.starts_with(key)).unwrap_or_default().to_string();
        let uid = line("Uid:");
        assert!(uid.split_whitespace().skip(1).all(|u| u == "100000"), "pid {pid}: {uid}");
        assert!(line("Seccomp:").ends_with('2'), "pid {pid}: {}", line("Seccomp:"));
        assert!(line("NoNewPrivs:").ends_with('1'), "pid {pid}: {}", line("NoNewPrivs:"));
    }
    agent.cleanup().await;
}

async fn instances_reach_neither_each_other_nor_the_node_nor_the_metadata_address(class: &'static str) {
    let mut agent = TestAgent::start_class(class, |_| {}).await;
    let a = start(&mut agent, class, "tenant-a").await;
    let b = start(&mut agent, class, "tenant-b").await;
    let b_addr: SocketAddr =
        b.address.parse().unwrap_or_else(|_| format!("{}:9000", b.address).parse().unwrap());
    assert_eq!(b_addr.port(), 9000, "{}", b.address);
    // The node reaches b (the data plane does), so what stops a is the policy.
    TcpStream::connect_timeout(&b_addr, Duration::from_secs(2)).expect("the node reaches an instance");
    let r = connects(&agent, "tenant-a", b_addr).await;
    assert_eq!(r["connected"], false, "instance a reached instance b: {r}");

    // A listener on every host address, the bridge's included.
    let host = TcpListener::bind("0.0.0.0:0").unwrap();
    let gateway: Ipv4Addr = "10.202.0.1".parse().unwrap();
    let on_bridge = SocketAddr::from((gateway, host.local_addr().unwrap().port()));
    TcpStream::connect_timeout(&on_bridge, Duration::from_secs(2)).expect("the listener is up");
    let r = connects(&agent, "tenant-a", on_bridge).await;
    assert_eq!(r["connected"], false, "an instance reached the node on its bridge address: {r}");
    let dataplane = SocketAddr::from((gateway, agent.handle.dataplane_address.port()));
    let r = connects(&agent, "tenant-a", dataplane).await;
    assert_eq!(r["connected"], false, "an instance reached the node's data plane port: {r}");

    // The node routes (as it must for egress) and the test host answers the node, so only
    // the policy keeps the instance from the metadata address.
    assert_eq!(std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap().trim(), "1");
    let metadata = TestHost::start("169.254.169.254".parse().unwrap());
    let reached = TcpStream::connect_timeout(&metadata.target(), Duration::from_secs(2));
    let r = connects(&agent, "tenant-a", metadata.target()).await;
    metadata.remove();
    reached.expect("the node reaches the test host");
    assert_eq!(r["connected"], false, "an instance reached 169.254.169.254: {r}");
    let _ = a;
    agent.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn with_egress_internet_instances_reach_the_outside_masqueraded_and_resolve_names() {
    // Its own bridge and subnet: the egress setting is the bridge's policy.
    const BRIDGE: &str = "fnrt-test1";
    let outside = TestHost::start("203.0.113.10".parse().unwrap());
    // The name server in a private range, as a cloud's resolver is: reached on port 53 only.
    let resolver = TestHost::start("192.168.254.53".parse().unwrap());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let dns = resolver.serve_dns(outside.address, stop.clone());
    let mut agent = TestAgent::start_with(|c| {
        c.bridge = BRIDGE.into();
        c.subnet = "10.203.0.0/16".into();
        c.egress = fnrt_agent::Egress::Internet;
        c.dns_servers = vec!["192.168.254.53".parse().unwrap()];
    })
    .await;
    let instance = start(&mut agent, "runc", "outbound").await;
    let r = connects(&agent, "outbound", outside.target()).await;
    assert_eq!(r["connected"], true, "egress = internet, yet the outside was not reached: {r}");
    outside.listener.set_nonblocking(true).unwrap();
    let (_, peer) = outside.listener.accept().expect("the connection reached the test host");
    let own: std::net::IpAddr = instance.address.split(':').next().unwrap().parse().unwrap();
    assert_ne!(peer.ip(), own, "the instance's own address left the node: not masqueraded");
    assert!(!peer.ip().to_string().starts_with("10.203."), "{peer}");

    let r = act(&agent, "outbound", "resolve?name=example.test").await;
    assert_eq!(r["address"], "203.0.113.10", "the instance resolves through the node's name server: {r}");
    let r = connects(&agent, "outbound", SocketAddr::from((resolver.address, 80))).await;
    assert_eq!(r["connected"], false, "the name server's private range is open beyond port 53: {r}");
    let metadata = TestHost::start("169.254.169.254".parse().unwrap());
    let r = connects(&agent, "outbound", metadata.target()).await;
    metadata.remove();
    assert_eq!(r["connected"], false, "egress = internet opened the metadata address: {r}");

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(dns.join().unwrap() >= 1);
    outside.remove();
    resolver.remove();
    agent.cleanup().await;
    let table = format!("fnrt_{}", BRIDGE.replace('-', "_"));
    let _ = Command::new("nft").args(["delete", "table", "inet", &table]).status();
    let _ = Command::new("ip").args(["link", "del", BRIDGE]).status();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_data_plane_beyond_loopback_takes_only_calls_the_gateway_signed() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = fnrt_tests::test_config(dir.path());
    cfg.dataplane_listen = "0.0.0.0:0".parse().unwrap();
    let err = fnrt_agent::start(cfg).await.err().expect("no key beyond loopback is refused").to_string();
    assert!(err.contains("dataplane_key must be set"), "{err}");

    let secret = "k".repeat(40);
    // Plain HTTP beyond loopback (the signature alone), as insecure = true allows.
    let mut agent = TestAgent::start_with(|c| {
        c.dataplane_listen = "0.0.0.0:0".parse().unwrap();
        c.dataplane_key = Some(secret.as_str().into());
        c.insecure = true;
    })
    .await;
    start(&mut agent, "runc", "signed").await;
    let port = agent.handle.dataplane_address.port();
    let path = "/function/signed/_fixture/sleep?ms=0";
    let url = format!("http://127.0.0.1:{port}{path}");
    let key = fnrt_common::signature::Key::new(&secret);
    let send = |time: Option<String>, sig: Option<String>, id: &str| {
        let mut req = fnrt_tests::http().get(&url).header("x-scf-request-id", id);
        if let Some(t) = time {
            req = req.header("x-fnrt-time", t);
        }
        if let Some(s) = sig {
            req = req.header("x-fnrt-signature", s);
        }
        req.send()
    };
    let unsigned = send(None, None, "r-1").await.unwrap();
    assert_eq!(unsigned.status().as_u16(), 401);
    assert!(unsigned.text().await.unwrap().contains("signed by the cluster's gateway"));
    let (time, sig) = key.sign("GET", path, "r-2");
    let signed = send(Some(time.clone()), Some(sig.clone()), "r-2").await.unwrap();
    assert_eq!(signed.status().as_u16(), 200, "{}", signed.text().await.unwrap());
    // The same signature for another request id, or from another key, is refused.
    let replayed = send(Some(time), Some(sig), "r-3").await.unwrap();
    assert_eq!(replayed.status().as_u16(), 401);
    let (time, sig) = fnrt_common::signature::Key::new(&"o".repeat(40)).sign("GET", path, "r-4");
    assert_eq!(send(Some(time), Some(sig), "r-4").await.unwrap().status().as_u16(), 401);
    let stale = (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() - 120)
        .to_string();
    assert_eq!(send(Some(stale), Some("00".into()), "r-5").await.unwrap().status().as_u16(), 401);
    // Metrics are not on the calls' port.
    let m = fnrt_tests::http().get(format!("http://127.0.0.1:{port}/metrics")).send().await.unwrap();
    assert_eq!(m.status().as_u16(), 401);
    let m = fnrt_tests::http()
        .get(format!("http://{}/metrics", agent.handle.metrics_address))
        .send()
        .await
        .unwrap();
    assert_eq!(m.status().as_u16(), 200);
    agent.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn starts_past_a_node_budget_fail_with_resource_exhausted_naming_it() {
    let mut agent = TestAgent::start_with(|c| {
        c.max_instances = 2;
        c.memory_budget_mb = 300;
        c.scratch_budget_bytes = 1200 << 20;
        c.log_budget_bytes = 1 << 30;
    })
    .await;
    let try_start = |agent: &mut TestAgent, function: &str, memory_mb: u32| {
        let req = StartInstanceRequest {
            function: function.into(),
            image: image("echo"),
            memory_mb,
            timeout_ms: 10_000,
            ..Default::default()
        };
        let mut client = agent.client.clone();
        async move { client.start_instance(req).await }
    };
    let first = try_start(&mut agent, "budget-a", 128).await.unwrap().into_inner().instance.unwrap();
    let refused = try_start(&mut agent, "budget-b", 256).await.expect_err("past the memory budget");
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    assert!(refused.message().contains("node budget memory exhausted"), "{}", refused.message());
    assert!(refused.message().contains("memory_budget_mb"), "{}", refused.message());
    try_start(&mut agent, "budget-b", 128).await.unwrap();
    let refused = try_start(&mut agent, "budget-c", 64).await.expect_err("past the instance budget");
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    assert!(refused.message().contains("node budget instances exhausted"), "{}", refused.message());
    // A stop gives its share back.
    agent.client.stop_instance(fnrt_proto::agent::v1::StopInstanceRequest { id: first.id }).await.unwrap();
    try_start(&mut agent, "budget-c", 64).await.unwrap();
    agent.cleanup().await;

    // The /tmp disk: two 528 MiB files do not fit in 1000 MiB.
    let mut agent = TestAgent::start_with(|c| c.scratch_budget_bytes = 1000 << 20).await;
    try_start(&mut agent, "disk-a", 64).await.unwrap();
    let refused = try_start(&mut agent, "disk-b", 64).await.expect_err("past the scratch budget");
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    assert!(refused.message().contains("node budget scratch disk exhausted"), "{}", refused.message());
    agent.cleanup().await;
}

const CLUSTER_TOKEN: &str = "cluster-token-for-isolation-tests-0123456789";
const DATAPLANE_KEY: &str = "dataplane-key-for-isolation-tests-0123456789";

/// A cluster CA and the certificates this test needs, made with `fnrt-controlplane ca`'s code.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let dir = tempfile::tempdir().unwrap();
        fnrt_controlplane::ca::init(dir.path(), name).unwrap();
        Pki { dir }
    }

    fn ca(&self) -> std::path::PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// Issues `name` in `role`; its certificate and key files.
    fn issue(&self, role: fnrt_common::pki::Role, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
        let files = fnrt_controlplane::ca::issue(&fnrt_controlplane::ca::IssueArgs {
            dir: self.dir.path().to_path_buf(),
            role,
            name: name.into(),
            sans: vec!["127.0.0.1".into()],
            days: 1,
            out: None,
        })
        .unwrap();
        (files[0].clone(), files[1].clone())
    }
}

/// A TLS client trusting `ca` for `server_name`, presenting `who` (certificate, key) if any.
fn client_tls(
    ca: &Path,
    who: Option<&(std::path::PathBuf, std::path::PathBuf)>,
    server_name: &str,
) -> tonic::transport::ClientTlsConfig {
    use tonic::transport::{Certificate, Identity};
    let mut c = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(ca).unwrap()))
        .domain_name(server_name);
    if let Some((cert, key)) = who {
        c = c.identity(Identity::from_pem(std::fs::read(cert).unwrap(), std::fs::read(key).unwrap()));
    }
    c
}

/// A channel to `url` (TLS when given), or why none could be made.
async fn channel(
    url: &str,
    tls: Option<tonic::transport::ClientTlsConfig>,
) -> Result<tonic::transport::Channel, String> {
    let mut ep = tonic::transport::Endpoint::from_shared(url.to_string())
        .unwrap()
        .connect_timeout(Duration::from_secs(3));
    if let Some(tls) = tls {
        ep = ep.tls_config(tls).unwrap();
    }
    ep.connect().await.map_err(|e| fnrt_common::chain(&e))
}

/// Registers `node` (identity `node_id`) over `url`; the refusal's code, or Ok.
async fn register(
    url: &str,
    tls: Option<tonic::transport::ClientTlsConfig>,
    node: &str,
    node_id: &str,
) -> Result<(), (tonic::Code, String)> {
    use fnrt_proto::controlplane::v1 as pb;
    let channel = channel(url, tls).await.map_err(|e| (tonic::Code::Unavailable, e))?;
    let mut client = pb::control_plane_client::ControlPlaneClient::new(channel);
    let mut req = tonic::Request::new(pb::RegisterRequest {
        node: node.into(),
        grpc_endpoint: "unix:///nonexistent/agent.sock".into(),
        dataplane_address: "127.0.0.1:1".into(),
        report: None,
        node_id: node_id.into(),
        dataplane_tls: false,
    });
    req.metadata_mut().insert("authorization", format!("Bearer {CLUSTER_TOKEN}").parse().unwrap());
    client.register(req).await.map(|_| ()).map_err(|s| (s.code(), s.message().to_string()))
}

/// Lists the functions of the agent API at `url`, with `token`; the refusal's code, or Ok.
async fn list_functions(
    url: &str,
    tls: Option<tonic::transport::ClientTlsConfig>,
    token: Option<&str>,
) -> Result<(), (tonic::Code, String)> {
    let channel = channel(url, tls).await.map_err(|e| (tonic::Code::Unavailable, e))?;
    let mut client = fnrt_proto::agent::v1::agent_client::AgentClient::new(channel);
    let mut req = tonic::Request::new(fnrt_proto::agent::v1::ListFunctionsRequest {});
    if let Some(t) = token {
        req.metadata_mut().insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    client.list_functions(req).await.map(|_| ()).map_err(|s| (s.code(), s.message().to_string()))
}

#[tokio::test(flavor = "multi_thread")]
async fn cluster_links_are_mutual_tls_and_a_node_name_belongs_to_its_certificate() {
    use fnrt_common::pki::Role;
    let pki = Pki::new("test cluster CA");
    let cp_files = pki.issue(Role::ControlPlane, "controlplane");
    let node_a = pki.issue(Role::Node, "tls-node-a");
    let node_b = pki.issue(Role::Node, "tls-node-b");
    let client = pki.issue(Role::Client, "scheduler");
    let rogue = Pki::new("another CA");
    let rogue_a = rogue.issue(Role::Node, "tls-node-a");

    let cp_dir = tempfile::tempdir().unwrap();
    let mut cfg = fnrt_tests::controlplane_config(cp_dir.path(), CLUSTER_TOKEN);
    cfg.dataplane_key = DATAPLANE_KEY.into();
    cfg.tls_ca_file = Some(pki.ca());
    cfg.tls_cert_file = Some(cp_files.0.clone());
    cfg.tls_key_file = Some(cp_files.1.clone());
    let cp = fnrt_controlplane::start(cfg).await.unwrap();
    let join = format!("https://{}", cp.grpc_address);

    let (ca, cert, key) = (pki.ca(), node_a.0.clone(), node_a.1.clone());
    let agent = TestAgent::start_with(move |c| {
        c.controlplane_url = Some(format!("https://{}", cp.grpc_address));
        c.controlplane_token = Some(CLUSTER_TOKEN.into());
        c.node_name = "tls-node-a".into();
        c.tcp_listen = Some(([127, 0, 0, 1], 0).into());
        c.tcp_token = Some(CLUSTER_TOKEN.into());
        // A data plane beyond loopback: TLS, and calls signed by the gateway.
        c.dataplane_listen = ([0, 0, 0, 0], 0).into();
        c.dataplane_key = Some(DATAPLANE_KEY.into());
        c.tls_ca_file = Some(ca);
        c.tls_cert_file = Some(cert);
        c.tls_key_file = Some(key);
    })
    .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let joined = loop {
        if let Some(a) = cp.ctx.scheduler.agents().into_iter().find(|a| a.node == "tls-node-a") {
            break a;
        }
        assert!(std::time::Instant::now() < deadline, "the agent did not join over TLS");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // The control plane calls the agent back over TLS (it registered https://) and the
    // call goes through: the agent's certificate names the node.
    joined.link.prefetch(&image("echo"), None).await.expect("the control plane reaches the agent over TLS");

    // Joining: no TLS, no client certificate, another CA's certificate: refused before a call.
    let id = "0123456789abcdef0123456789abcdef";
    let plain = register(&format!("http://{}", cp.grpc_address), None, "tls-node-x", id).await;
    assert!(plain.is_err(), "a plain connection joined: {plain:?}");
    let anonymous = register(&join, Some(client_tls(&pki.ca(), None, "127.0.0.1")), "tls-node-x", id).await;
    assert!(anonymous.is_err(), "a client without a certificate joined: {anonymous:?}");
    let foreign =
        register(&join, Some(client_tls(&pki.ca(), Some(&rogue_a), "127.0.0.1")), "tls-node-a", id).await;
    assert!(foreign.is_err(), "an agent without the CA's certificate joined: {foreign:?}");
    // Another node's certificate, or a client's, cannot register as tls-node-a.
    let other =
        register(&join, Some(client_tls(&pki.ca(), Some(&node_b), "127.0.0.1")), "tls-node-a", id).await;
    assert_eq!(other.as_ref().map_err(|e| e.0), Err(tonic::Code::PermissionDenied), "{other:?}");
    let role =
        register(&join, Some(client_tls(&pki.ca(), Some(&client), "127.0.0.1")), "scheduler", id).await;
    assert_eq!(role.as_ref().map_err(|e| e.0), Err(tonic::Code::PermissionDenied), "{role:?}");
    // tls-node-a's own certificate from another identity (a copy on a second machine)
    // while the node is live: refused, and the live node stays.
    let twin =
        register(&join, Some(client_tls(&pki.ca(), Some(&node_a), "127.0.0.1")), "tls-node-a", id).await;
    assert_eq!(twin.as_ref().map_err(|e| e.0), Err(tonic::Code::AlreadyExists), "{twin:?}");
    assert!(twin.unwrap_err().1.contains("live"));
    let still = cp.ctx.scheduler.agents().into_iter().find(|a| a.node == "tls-node-a").unwrap();
    assert_eq!(still.node_id, joined.node_id, "the live node was replaced");

    // The agent's TCP API: mutual TLS, and only control planes' and clients' certificates.
    let api = format!("https://{}", agent.handle.tcp_address.unwrap());
    let tls = |who| Some(client_tls(&pki.ca(), who, "tls-node-a"));
    assert!(list_functions(&api.replace("https", "http"), None, Some(CLUSTER_TOKEN)).await.is_err());
    assert!(list_functions(&api, tls(None), Some(CLUSTER_TOKEN)).await.is_err(), "no client certificate");
    assert!(list_functions(
        &api,
        Some(client_tls(&rogue.ca(), Some(&rogue_a), "tls-node-a")),
        Some(CLUSTER_TOKEN)
    )
    .await
    .is_err());
    let neighbour = list_functions(&api, tls(Some(&node_b)), Some(CLUSTER_TOKEN)).await;
    assert_eq!(neighbour.map_err(|e| e.0), Err(tonic::Code::PermissionDenied), "a node drove its neighbour");
    let tokenless = list_functions(&api, tls(Some(&client)), None).await;
    assert_eq!(tokenless.map_err(|e| e.0), Err(tonic::Code::Unauthenticated));
    list_functions(&api, tls(Some(&client)), Some(CLUSTER_TOKEN))
        .await
        .expect("a client certificate and the token");
    list_functions(&api, tls(Some(&cp_files)), Some(CLUSTER_TOKEN))
        .await
        .expect("the control plane's certificate");

    // The gateway calls the data plane over TLS; a private function is reached only
    // through it, with a token.
    let base = format!("http://{}/functions/v1beta1/regions/fr-par", cp.api_address);
    let admin = cp.ctx.cfg.admin_token.expose().to_string();
    let rest = |path: &str, body: serde_json::Value| {
        let (url, admin) = (format!("{base}{path}"), admin.clone());
        async move {
            let r = fnrt_tests::http()
                .post(url)
                .header("X-Auth-Token", admin)
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
                .await
                .unwrap();
            let status = r.status();
            let v: serde_json::Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
            assert!(status.is_success(), "{status}: {v}");
            v
        }
    };
    let ns = rest("/namespaces", serde_json::json!({ "name": "tls" })).await;
    let f = rest(
        "/functions",
        serde_json::json!({ "namespace_id": ns["id"], "name": "echo", "min_scale": 1, "memory_limit": 128,
                            "privacy": "private", "registry_image": image("echo") }),
    )
    .await;
    let id = f["id"].as_str().unwrap().to_string();
    rest(&format!("/functions/{id}/deploy"), serde_json::json!({})).await;
    let token = rest("/tokens", serde_json::json!({ "function_id": id })).await["token"]
        .as_str()
        .unwrap()
        .to_string();
    let gateway = format!("http://{}/tls/echo/hello", cp.gateway_address);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let r = fnrt_tests::http().get(&gateway).header("X-Auth-Token", &token).send().await.unwrap();
        if r.status() == 200 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no answer through the gateway: {}", r.status());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let anonymous = fnrt_tests::http().get(&gateway).send().await.unwrap().status();
    assert_eq!(anonymous, 403, "the gateway keeps private functions private");
    // Straight to the data plane: plain HTTP gets no answer, a node's certificate gets 403,
    // the control plane's certificate without the gateway's signature 401.
    let port = agent.handle.dataplane_address.port();
    let direct = format!("/function/{}/hello", fnrt_function::naming::on_agents(&id));
    let plain = fnrt_tests::http().get(format!("http://127.0.0.1:{port}{direct}")).send().await;
    assert!(plain.map(|r| r.status().as_u16()).unwrap_or(0) != 200, "a plain call reached the function");
    let as_holder = |who: &(std::path::PathBuf, std::path::PathBuf), role| {
        let tls = fnrt_common::pki::ClusterTls::load(&pki.ca(), &who.0, &who.1, role).unwrap();
        #[allow(clippy::disallowed_methods)]
        let builder = reqwest::Client::builder();
        builder.tls_backend_preconfigured(tls.client_config().unwrap()).build().unwrap()
    };
    let url = format!("https://127.0.0.1:{port}{direct}");
    let neighbour = as_holder(&node_b, Role::Node).get(&url).send().await.unwrap().status();
    assert_eq!(neighbour, 403, "another node called a function straight on the data plane");
    let unsigned = as_holder(&cp_files, Role::ControlPlane).get(&url).send().await.unwrap().status();
    assert_eq!(unsigned, 401, "an unsigned call reached a private function");

    cp.shutdown().await;
    agent.cleanup().await;
}

fnrt_tests::each_class!(instances_reach_neither_each_other_nor_the_node_nor_the_metadata_address);
