//! A cluster on this machine: nodes as network namespaces with addresses of their own
//! (veth pairs on a bridge of the cluster's own, `10.213.<n>.0/24`, the host at `.1`),
//! each with its own containerd (its own state, socket and content) and release agent;
//! control-plane replicas (release binaries) on the host, joined by the agents over
//! cluster TLS at the bridge address, on a three-member etcd. A node reaches the test
//! registry at its own 127.0.0.1 through a forwarder to the host's.
//!
//! Everything is made by the cluster and removed when it is taken down (or dropped):
//! namespaces, links, processes, state.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use fnrt_agent::Config;
use fnrt_proto::agent::v1::agent_client::AgentClient;
use fnrt_proto::agent::v1::{ListFunctionsRequest, ListInstancesRequest, RemoveFunctionRequest};
use tokio::process::Child;
use tonic::transport::Channel;

use crate::etcd::Etcd;
use crate::shipped::{ca, release_bin, terminate, ShippedControlPlane};
use crate::testhost::sh;
use crate::{real_parts, test_config};

/// Prefix of the cluster's network namespaces and links.
pub const CLUSTER_PREFIX: &str = "fnrtcl";

/// The network: a bridge on the host and one namespace per node.
pub struct Net {
    /// Its tag (in every name).
    pub tag: String,
    /// The host's address on the bridge.
    pub host: Ipv4Addr,
    bridge: String,
    /// Per node: (namespace, host end of its veth, address).
    pub nodes: Vec<(String, String, Ipv4Addr)>,
}

impl Net {
    /// Makes a bridge and `n` node namespaces on `10.213.<octet>.0/24`.
    pub fn make(n: usize) -> Net {
        let octet = rand::random::<u8>() % 200 + 20;
        let tag = format!("{octet:03}");
        let host = Ipv4Addr::new(10, 213, octet, 1);
        let bridge = format!("{CLUSTER_PREFIX}{tag}br");
        sh(&["ip", "link", "add", &bridge, "type", "bridge"]);
        sh(&["ip", "addr", "add", &format!("{host}/24"), "dev", &bridge]);
        sh(&["ip", "link", "set", &bridge, "up"]);
        let mut net = Net { tag: tag.clone(), host, bridge, nodes: Vec::new() };
        for i in 0..n {
            let ns = format!("{CLUSTER_PREFIX}{tag}n{i}");
            let (outer, inner) = (format!("{CLUSTER_PREFIX}{tag}v{i}"), format!("{CLUSTER_PREFIX}{tag}i{i}"));
            let ip = Ipv4Addr::new(10, 213, octet, 11 + i as u8);
            sh(&["ip", "netns", "add", &ns]);
            net.nodes.push((ns.clone(), outer.clone(), ip));
            sh(&["ip", "link", "add", &outer, "type", "veth", "peer", "name", &inner]);
            sh(&["ip", "link", "set", &inner, "netns", &ns]);
            sh(&["ip", "link", "set", &outer, "master", &net.bridge]);
            sh(&["ip", "link", "set", &outer, "up"]);
            let exec = |args: &[&str]| sh(&[&["ip", "netns", "exec", &ns][..], args].concat());
            exec(&["ip", "link", "set", "lo", "up"]);
            exec(&["ip", "addr", "add", &format!("{ip}/24"), "dev", &inner]);
            exec(&["ip", "link", "set", &inner, "up"]);
            exec(&["ip", "route", "add", "default", "via", &host.to_string()]);
        }
        net
    }

    /// Cuts node `i` off (its link down) or connects it again.
    pub fn cut(&self, i: usize, off: bool) {
        sh(&["ip", "link", "set", &self.nodes[i].1, if off { "down" } else { "up" }]);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for (ns, outer, _) in &self.nodes {
            let _ = Command::new("ip").args(["link", "del", outer]).output();
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        let _ = Command::new("ip").args(["link", "del", &self.bridge]).output();
    }
}

/// What the cluster left on this machine: its namespaces and links.
pub fn leftovers() -> Vec<String> {
    let mut out: Vec<String> = crate::named_netns(CLUSTER_PREFIX)
        .into_iter()
        .map(|n| format!("cluster network namespace {n}"))
        .collect();
    let links = Command::new("ip").args(["-o", "link"]).output().map(|o| o.stdout).unwrap_or_default();
    out.extend(
        String::from_utf8_lossy(&links)
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .filter(|n| n.starts_with(CLUSTER_PREFIX))
            .map(|n| format!("cluster link {n}")),
    );
    out
}

/// Binds `addr` in network namespace `ns` (a thread enters it to make the socket).
fn listen_in(ns: &str, addr: SocketAddr) -> std::net::TcpListener {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let target = std::fs::File::open(path).unwrap();
        nix::sched::setns(&target, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let l = std::net::TcpListener::bind(addr).unwrap();
        l.set_nonblocking(true).unwrap();
        l
    })
    .join()
    .unwrap()
}

/// Forwards connections to `addr` in namespace `ns` to `addr` on the host, until dropped.
fn forward(ns: &str, addr: SocketAddr) -> tokio::task::JoinHandle<()> {
    let listener = tokio::net::TcpListener::from_std(listen_in(ns, addr)).unwrap();
    tokio::spawn(async move {
        while let Ok((mut inside, _)) = listener.accept().await {
            tokio::spawn(async move {
                if let Ok(mut outside) = tokio::net::TcpStream::connect(addr).await {
                    let _ = tokio::io::copy_bidirectional(&mut inside, &mut outside).await;
                }
            });
        }
    })
}

/// One node: its namespace, containerd and agent.
pub struct Node {
    /// Its name (and node_name).
    pub name: String,
    /// Its network namespace.
    pub ns: String,
    /// Its address.
    pub ip: Ipv4Addr,
    /// The agent's configuration.
    pub cfg: Config,
    /// Its state and logs.
    pub dir: tempfile::TempDir,
    containerd: Child,
    agent: Option<Child>,
    forwarder: tokio::task::JoinHandle<()>,
}

impl Node {
    fn log(&self) -> PathBuf {
        self.dir.path().join("agent.log")
    }

    /// The agent's log so far.
    pub fn agent_log(&self) -> String {
        crate::shipped::plain(&std::fs::read_to_string(self.log()).unwrap_or_default())
    }

    async fn start(net: &Net, i: usize, cp: &ShippedControlPlane, urls: &str) -> Node {
        let (ns, _, ip) = net.nodes[i].clone();
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let socket = d.join("containerd.sock");
        let config = format!(
            "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{sock}\"\n[ttrpc]\n  address = \"{sock}.ttrpc\"\n[debug]\n  address = \"\"\n\
             [plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{opt}\"\n",
            root = d.join("root").display(),
            state = d.join("state").display(),
            sock = socket.display(),
            opt = d.join("opt").display(),
        );
        std::fs::write(d.join("containerd.toml"), config).unwrap();
        // nsenter, not `ip netns exec`: that would remount /sys and hide the cgroups.
        let containerd = tokio::process::Command::new("nsenter")
            .args([&format!("--net=/run/netns/{ns}"), "containerd", "--config"])
            .arg(d.join("containerd.toml"))
            .stdout(std::fs::File::create(d.join("containerd.log")).unwrap())
            .stderr(std::fs::File::create(d.join("containerd.err")).unwrap())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !socket.exists() {
            assert!(Instant::now() < deadline, "node {i}'s containerd did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let registry: SocketAddr = real_parts().registry.parse().unwrap();
        let forwarder = forward(&ns, registry);
        let name = format!("node-{}-{i}", net.tag);
        let mut cfg = test_config(d);
        cfg.containerd_socket = socket;
        cfg.namespace = format!("{}cl{}n{i}", crate::TEST_PREFIX, net.tag);
        cfg.node_name = name.clone();
        cfg.controlplane_url = Some(urls.to_string());
        cfg.controlplane_token = Some(cp.cluster_token.clone().into());
        cfg.dataplane_listen = (ip, 0).into();
        cfg.dataplane_key = Some(cp.dataplane_key.clone().into());
        cfg.tcp_listen = Some((ip, 0).into());
        cfg.tcp_token = Some(cp.cluster_token.clone().into());
        let out = d.join("node");
        let (ca_dir, out_path, ip_text) =
            (cp.ca.display().to_string(), out.display().to_string(), ip.to_string());
        ca(&[
            "issue", "--dir", &ca_dir, "--role", "node", "--name", &name, "--san", &ip_text, "--out",
            &out_path,
        ]);
        cfg.tls_ca_file = Some(cp.ca.join("ca.pem"));
        cfg.tls_cert_file = Some(out.with_extension("pem"));
        cfg.tls_key_file = Some(out.with_extension("key"));
        let mut node = Node { name, ns, ip, cfg, dir, containerd, agent: None, forwarder };
        node.start_agent().await;
        node
    }

    /// Starts its agent (again) and waits until it answers on its socket.
    pub async fn start_agent(&mut self) {
        let log = self.log();
        let mut child =
            crate::process::spawn_agent_in(Some(&self.ns), &release_bin("fnrt-agent"), &self.cfg, &log);
        crate::process::ready(&mut child, &self.cfg, &log).await;
        self.agent = Some(child);
    }

    /// Kills its agent (SIGKILL), as a crash would; its instances keep running.
    pub async fn kill_agent(&mut self) {
        if let Some(mut a) = self.agent.take() {
            let _ = a.start_kill();
            let _ = a.wait().await;
        }
    }

    /// Stops its agent with SIGTERM, as a restart would.
    pub async fn stop_agent(&mut self) {
        if let Some(mut a) = self.agent.take() {
            terminate(&mut a, "fnrt-agent", &self.log()).await;
        }
    }

    /// A client on its agent's socket.
    pub async fn client(&self) -> AgentClient<Channel> {
        crate::connect(&self.cfg.socket).await
    }

    /// Removes what runs on it, stops the agent and containerd, and fails if anything of
    /// it is left on the machine.
    pub async fn take_down(mut self) {
        if self.agent.is_some() {
            let mut c = self.client().await;
            let fns = c.list_functions(ListFunctionsRequest {}).await.unwrap().into_inner().functions;
            for f in fns {
                let _ = c.remove_function(RemoveFunctionRequest { name: f.spec.unwrap().name }).await;
            }
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let list = c.list_instances(ListInstancesRequest::default()).await.unwrap().into_inner();
                let running: Vec<String> =
                    list.instances.into_iter().filter(|i| i.reason.is_empty()).map(|i| i.id).collect();
                if running.is_empty() {
                    break;
                }
                for id in running {
                    let _ = c.stop_instance(fnrt_proto::agent::v1::StopInstanceRequest { id }).await;
                }
                assert!(Instant::now() < deadline, "instances still run on {}", self.name);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            self.stop_agent().await;
            let log = self.agent_log();
            assert!(!log.contains("panicked"), "fnrt-agent panicked on {}; its log:\n{log}", self.name);
        }
        crate::remove_namespace(&self.cfg.containerd_socket, &self.cfg.namespace).await;
        crate::assert_nothing_left(&self.cfg.namespace).await;
        self.forwarder.abort();
        terminate(&mut self.containerd, "containerd", &self.dir.path().join("containerd.err")).await;
    }
}

/// The whole cluster.
pub struct Cluster {
    /// The network (dropped last).
    pub nodes: Vec<Node>,
    /// The control-plane replicas (killed ones too: the first holds the CA).
    pub cps: Vec<ShippedControlPlane>,
    /// The settings every replica gets (etcd, listen addresses, certificate).
    pub settings: Vec<String>,
    /// The etcd cluster.
    pub etcd: Etcd,
    /// The network.
    pub net: Net,
}

impl Cluster {
    /// `nodes` nodes and `replicas` control planes on a three-member etcd.
    pub async fn start(nodes: usize, replicas: usize) -> Cluster {
        let net = Net::make(nodes);
        let etcd = Etcd::start(3).await;
        let host = net.host.to_string();
        let settings = vec![
            "store=etcd".to_string(),
            format!("etcd_endpoints={}", etcd.endpoints.join(",")),
            format!("etcd_prefix=cluster{}/", net.tag),
            format!("grpc_listen={host}:0"),
            "lost_after_ms=3000".into(),
            "heartbeat_interval_ms=500".into(),
        ];
        // Its certificate (the others' too: theirs is its) names the bridge address.
        let first = ShippedControlPlane::start_on(&settings, &[&host]).await;
        let mut cps = vec![first];
        for _ in 1..replicas {
            let r = cps[0].replica(&settings).await;
            cps.push(r);
        }
        let urls: Vec<String> = cps.iter().map(|c| format!("https://{}", c.grpc)).collect();
        let mut started = Vec::new();
        for i in 0..nodes {
            started.push(Node::start(&net, i, &cps[0], &urls.join(",")).await);
        }
        Cluster { nodes: started, cps, settings, etcd, net }
    }

    /// The replicas still running.
    pub fn live(&mut self) -> Vec<&ShippedControlPlane> {
        self.cps.iter_mut().filter_map(|c| if c.running() { Some(&*c) } else { None }).collect()
    }

    /// Takes everything down and fails if anything is left.
    pub async fn take_down(self) {
        let Cluster { nodes, cps, net, etcd, .. } = self;
        for mut cp in cps {
            if cp.running() {
                cp.stop().await;
            }
        }
        for n in nodes {
            n.take_down().await;
        }
        drop(etcd);
        drop(net);
        let left = leftovers();
        assert!(left.is_empty(), "the cluster left behind: {left:?}");
    }
}
