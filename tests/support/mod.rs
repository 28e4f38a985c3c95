//! Shared support of the integration tests: the real parts' addresses, an in-process agent
//! in a containerd namespace of its own, and the checks that nothing was left behind.
//!
//! The tests need the private containerd and registry that `scripts/test` starts; without
//! them they fail with the command that sets them up.
#![allow(missing_docs, clippy::unwrap_used)]

pub mod cluster;
pub mod etcd;
pub mod fake_registry;
pub mod nats;
pub mod process;
pub mod proxy;
pub mod push;
pub mod shipped;
pub mod testhost;

use std::path::{Path, PathBuf};
use std::time::Duration;

use containerd_client::services::v1::snapshots::ListSnapshotsRequest;
use containerd_client::services::v1::{
    DeleteImageRequest, DeleteNamespaceRequest, ListContainersRequest, ListImagesRequest,
    ListNamespacesRequest, ListRequest as ListLeasesRequest, ListTasksRequest,
};
use fnrt_agent::Containerd;
use fnrt_agent::{AgentHandle, Config};
use fnrt_proto::agent::v1::agent_client::AgentClient;
use fnrt_proto::agent::v1::ListInstancesRequest;
use tonic::transport::Channel;

/// Prefix of every test agent's containerd namespace (and so of its netns, cgroups and
/// CNI ids).
pub const TEST_PREFIX: &str = "fnrt-test-";
/// The test agents' bridge and subnet, apart from the dev stack's.
pub const TEST_BRIDGE: &str = "fnrt-test0";
/// See [`TEST_BRIDGE`].
pub const TEST_SUBNET: &str = "10.202.0.0/16";

/// Where the real parts are, from the variables scripts/test sets.
pub struct RealParts {
    pub containerd_socket: PathBuf,
    pub registry: String,
    pub state_dir: PathBuf,
}

/// An HTTP client (TLS with an explicit crypto provider, as the binaries build theirs).
pub fn http() -> reqwest::Client {
    fnrt_common::tls::default_http_client().expect("an HTTP client")
}

/// The real parts, or a panic that says how to get them.
pub fn real_parts() -> RealParts {
    let var = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| {
            panic!("{name} is not set: these tests need the private containerd and registry; run them with scripts/test (it installs and starts everything)")
        })
    };
    let parts = RealParts {
        containerd_socket: var("FNRT_CONTAINERD_SOCKET").into(),
        registry: var("FNRT_REGISTRY"),
        state_dir: var("FNRT_TEST_STATE").into(),
    };
    assert!(
        parts.containerd_socket.exists(),
        "containerd socket {} does not exist; run scripts/test, which starts containerd",
        parts.containerd_socket.display()
    );
    parts
}

/// The reference of a fixture image of `images/`, as scripts/test pushed it.
pub fn image(name: &str) -> String {
    format!("{}/fnrt/{name}:latest", real_parts().registry)
}

/// The CNI allocation directory shared by all test agents (host-local locks it, so
/// agents in parallel never hand out one address twice).
pub fn cni_data_dir() -> PathBuf {
    real_parts().state_dir.join("cni")
}

/// A configuration for a test agent in a fresh namespace, with files under `dir`.
pub fn test_config(dir: &Path) -> Config {
    let parts = real_parts();
    Config {
        containerd_socket: parts.containerd_socket,
        namespace: format!("{TEST_PREFIX}{:08x}", rand::random::<u32>()),
        socket: dir.join("agent.sock"),
        dataplane_listen: "127.0.0.1:0".parse().unwrap(),
        metrics_listen: "127.0.0.1:0".parse().unwrap(),
        state_dir: dir.join("state"),
        cni_data_dir: Some(cni_data_dir()),
        bridge: TEST_BRIDGE.into(),
        subnet: TEST_SUBNET.into(),
        health_timeout_ms: 5_000,
        // The node default is a share of the disk free when the agent starts, which on a CI
        // machine after the build can be below four instances' 528 MiB: CI failed with a
        // scratch budget of 1.85 GiB. Test instances' scratch files are sparse and only one
        // test fills its /tmp, so the tests fix the budgets.
        scratch_budget_bytes: 8 << 30,
        log_budget_bytes: 2 << 30,
        // The stack's registry is on loopback: listed by name, as an operator would.
        allowed_registries: vec![parts.registry.clone(), "*".into()],
        ..Config::default()
    }
}

/// An agent running in this process, with a gRPC client on its socket.
pub struct TestAgent {
    pub handle: AgentHandle,
    pub client: AgentClient<Channel>,
    pub cfg: Config,
    pub dir: tempfile::TempDir,
}

impl TestAgent {
    /// Starts an agent with the test configuration, changed by `tweak`.
    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> TestAgent {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = test_config(dir.path());
        tweak(&mut cfg);
        let handle = fnrt_agent::start(cfg.clone()).await.expect("agent starts");
        let client = connect(&handle.socket).await;
        TestAgent { handle, client, cfg, dir }
    }

    /// Starts an agent that offers sandbox class `class` ("runc" or "gvisor"), with the
    /// test configuration changed by `tweak`. For gvisor, the agent is told to offer it, so
    /// a node without runsc fails here with the command that installs it.
    pub async fn start_class(class: &str, tweak: impl FnOnce(&mut Config)) -> TestAgent {
        let class: fnrt_function::SandboxClass = class.parse().expect("a sandbox class");
        Self::start_with(|c| {
            if class == fnrt_function::SandboxClass::Gvisor {
                c.sandbox_classes = vec![fnrt_function::SandboxClass::Runc, class];
                // FNRT_DEBUG_RUNSC=<dir>: runsc's debug logs of the test's sandboxes go there.
                if let Ok(dir) = std::env::var("FNRT_DEBUG_RUNSC") {
                    c.gvisor_flags = vec!["--debug".into(), format!("--debug-log={dir}/")];
                }
            }
            tweak(c);
        })
        .await
    }

    /// Starts an agent with the test configuration.
    pub async fn start() -> TestAgent {
        Self::start_with(|_| {}).await
    }

    /// Calls `function` through the data plane.
    pub async fn call(&self, function: &str, path_and_query: &str, body: &str) -> (u16, String) {
        let url = format!("http://{}/function/{function}{path_and_query}", self.handle.dataplane_address);
        let resp = http().post(&url).body(body.to_string()).send().await.expect("data plane answers");
        let status = resp.status().as_u16();
        (status, resp.text().await.unwrap())
    }

    /// Stops every running instance, stops the agent, removes the namespace and everything in it,
    /// and fails if anything of this agent is left on the node.
    pub async fn cleanup(mut self) {
        let list = self.client.list_instances(ListInstancesRequest::default()).await.unwrap().into_inner();
        // Instances that ended are listed with their cause, but are already removed.
        for i in list.instances.into_iter().filter(|i| i.reason.is_empty()) {
            self.client.stop_instance(fnrt_proto::agent::v1::StopInstanceRequest { id: i.id }).await.unwrap();
        }
        self.handle.shutdown().await;
        remove_namespace(&self.cfg.containerd_socket, &self.cfg.namespace).await;
        assert_nothing_left(&self.cfg.namespace).await;
        // The agent's own records: instance marks, FIFOs and /tmp images.
        for sub in ["instances", "io", "scratch"] {
            let dir = self.cfg.state_dir.join(sub);
            let left: Vec<String> = std::fs::read_dir(&dir)
                .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
                .unwrap_or_default();
            assert!(left.is_empty(), "left in {}: {left:?}", dir.display());
        }
    }
}

/// Where runsc keeps its state, one directory per containerd namespace (the agent's
/// `containerd.runc.v1.Options.root` for the gvisor class).
pub const RUNSC_ROOT: &str = "/run/containerd/runsc";

/// Runs an async test `fn name(class: &'static str)` once per sandbox class, as the tests
/// `name::runc` and `name::gvisor`.
#[macro_export]
macro_rules! each_class {
    ($($name:ident),* $(,)?) => { $(
        mod $name {
            #[tokio::test(flavor = "multi_thread")]
            async fn runc() {
                super::$name("runc").await
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn gvisor() {
                super::$name("gvisor").await
            }
        }
    )* };
}

/// A gRPC client on an agent's Unix socket.
pub async fn connect(socket: &Path) -> AgentClient<Channel> {
    AgentClient::new(fnrt_proto::connect::unix(socket).await.expect("connect to the agent's socket"))
}

/// Deletes a test namespace: its images first (with a synchronous garbage collection, so
/// content and snapshots go too), then the namespace, which containerd refuses while
/// anything is left in it.
pub async fn remove_namespace(socket: &Path, namespace: &str) {
    let cd = Containerd::connect(socket, namespace).await.unwrap();
    let images =
        cd.images().list(cd.req(ListImagesRequest { filters: vec![] })).await.unwrap().into_inner().images;
    for img in images {
        cd.images()
            .delete(cd.req(DeleteImageRequest { name: img.name, sync: true, target: None }))
            .await
            .unwrap();
    }
    let leftovers = namespace_contents(&cd).await;
    assert!(leftovers.is_empty(), "namespace {namespace} still holds: {leftovers:?}");
    match cd.namespaces().delete(cd.req(DeleteNamespaceRequest { name: namespace.into() })).await {
        Ok(_) => {}
        // A namespace is made on first use; an agent that made nothing never made it.
        Err(e) if e.code() == tonic::Code::NotFound => {}
        Err(e) => panic!("delete namespace {namespace}: {}", e.message()),
    }
    // runsc's directory of the namespace (empty once its containers are deleted).
    let _ = std::fs::remove_dir(Path::new(RUNSC_ROOT).join(namespace));
}

/// What a namespace still holds: containers, tasks, snapshots, leases.
pub async fn namespace_contents(cd: &Containerd) -> Vec<String> {
    let mut out = Vec::new();
    let containers = cd.containers().list(cd.req(ListContainersRequest { filters: vec![] })).await.unwrap();
    out.extend(containers.into_inner().containers.into_iter().map(|c| format!("container {}", c.id)));
    let tasks = cd.tasks().list(cd.req(ListTasksRequest { filter: String::new() })).await.unwrap();
    out.extend(tasks.into_inner().tasks.into_iter().map(|t| format!("task {}", t.id)));
    let leases = cd.leases().list(cd.req(ListLeasesRequest { filters: vec![] })).await.unwrap();
    out.extend(leases.into_inner().leases.into_iter().map(|l| format!("lease {}", l.id)));
    let req = ListSnapshotsRequest { snapshotter: "overlayfs".into(), filters: vec![] };
    let mut snaps = cd.snapshots().list(cd.req(req)).await.unwrap().into_inner();
    while let Ok(Some(part)) = snaps.message().await {
        out.extend(part.info.into_iter().map(|s| format!("snapshot {}", s.name)));
    }
    out
}

/// The containerd namespaces whose names start with `prefix`.
pub async fn namespaces_with_prefix(socket: &Path, prefix: &str) -> Vec<String> {
    let cd = Containerd::connect(socket, "default").await.unwrap();
    let list = cd.namespaces().list(cd.req(ListNamespacesRequest { filter: String::new() })).await.unwrap();
    list.into_inner().namespaces.into_iter().map(|n| n.name).filter(|n| n.starts_with(prefix)).collect()
}

/// What of the node outside containerd carries `prefix` in its name: network namespaces,
/// CNI address allocations, mounts, cgroups.
pub fn node_leftovers(prefix: &str) -> Vec<String> {
    let mut out: Vec<String> =
        named_netns(prefix).into_iter().map(|n| format!("network namespace /run/netns/{n}")).collect();
    let alloc_dir = cni_data_dir().join("fnrt");
    if let Ok(entries) = std::fs::read_dir(&alloc_dir) {
        for e in entries.flatten() {
            let owner = std::fs::read_to_string(e.path()).unwrap_or_default();
            if owner.starts_with(prefix) {
                out.push(format!(
                    "CNI address {} held by {}",
                    e.file_name().to_string_lossy(),
                    owner.lines().next().unwrap_or("")
                ));
            }
        }
    }
    // gVisor's state (containerd's runc shim with runsc keeps it under its own root).
    if let Ok(namespaces) = std::fs::read_dir(RUNSC_ROOT) {
        for ns in namespaces.flatten() {
            for e in std::fs::read_dir(ns.path()).into_iter().flatten().flatten() {
                let name =
                    format!("{}-{}", ns.file_name().to_string_lossy(), e.file_name().to_string_lossy());
                if name.starts_with(prefix) {
                    out.push(format!("runsc state {}", e.path().display()));
                }
            }
        }
    }
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    out.extend(mounts.lines().filter(|l| l.contains(prefix)).map(|l| format!("mount {l}")));
    for root in cgroup_roots() {
        let dir = root.join("fnrt");
        if let Ok(entries) = std::fs::read_dir(&dir) {
            out.extend(
                entries
                    .flatten()
                    .filter(|e| e.path().is_dir())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with(prefix))
                    .map(|n| format!("cgroup {}/{n}", dir.display())),
            );
        }
    }
    out
}

/// The names under /run/netns that start with `prefix`.
pub fn named_netns(prefix: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/run/netns") else { return vec![] };
    entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(prefix))
        .collect()
}

fn cgroup_roots() -> Vec<PathBuf> {
    let mut roots = vec![PathBuf::from("/sys/fs/cgroup")];
    if let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") {
        roots.extend(entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
    }
    roots
}

/// Fails if anything of the agent with `namespace` is left: in containerd or on the node.
pub async fn assert_nothing_left(namespace: &str) {
    let prefix = format!("{namespace}-");
    // Teardown is synchronous, but give the shim a moment to unmount after it exits.
    let mut left = node_leftovers(&prefix);
    for _ in 0..20 {
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        left = node_leftovers(&prefix);
    }
    assert!(left.is_empty(), "left behind by {namespace}: {left:#?}");
}

/// The digests in a namespace's content store.
pub async fn content_digests(socket: &Path, namespace: &str) -> Vec<String> {
    let cd = Containerd::connect(socket, namespace).await.unwrap();
    let req = containerd_client::services::v1::ListContentRequest { filters: vec![] };
    let mut stream = cd.content().list(cd.req(req)).await.unwrap().into_inner();
    let mut out = Vec::new();
    while let Ok(Some(part)) = stream.message().await {
        out.extend(part.info.into_iter().map(|i| i.digest));
    }
    out
}

/// The config and layer digests of an image's manifest, straight from the registry.
pub async fn blob_digests(repository: &str) -> Vec<String> {
    let url = format!("http://{}/v2/{repository}/manifests/latest", real_parts().registry);
    let text = http()
        .get(url)
        .header("Accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let m: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut out = vec![m["config"]["digest"].as_str().unwrap().to_string()];
    out.extend(m["layers"].as_array().unwrap().iter().map(|l| l["digest"].as_str().unwrap().to_string()));
    out
}

/// Pulls through the agent's streaming PullImage: the image of the last message and
/// every progress message, or the status the stream ended with.
pub async fn pull_image(
    client: &mut AgentClient<Channel>,
    reference: &str,
) -> Result<(fnrt_proto::agent::v1::Image, Vec<fnrt_proto::agent::v1::PullProgress>), tonic::Status> {
    let req = fnrt_proto::agent::v1::PullImageRequest { reference: reference.into() };
    let mut stream = client.pull_image(req).await?.into_inner();
    let mut messages = Vec::new();
    while let Some(m) = stream.message().await? {
        let image = m.image.clone();
        messages.push(m);
        if let Some(image) = image {
            return Ok((image, messages));
        }
    }
    Err(tonic::Status::internal("the pull stream ended without an image"))
}

/// A control plane configuration for tests: every port on 127.0.0.1:0, state under `dir`,
/// the test registry, `cluster_token`, heartbeats every 200 ms, lost after 2 s.
pub fn controlplane_config(dir: &Path, cluster_token: &str) -> fnrt_controlplane::Config {
    fnrt_controlplane::Config {
        api_listen: "127.0.0.1:0".parse().unwrap(),
        gateway_listen: "127.0.0.1:0".parse().unwrap(),
        grpc_listen: "127.0.0.1:0".parse().unwrap(),
        metrics_listen: "127.0.0.1:0".parse().unwrap(),
        state_dir: dir.to_path_buf(),
        cluster_token: cluster_token.into(),
        registry: real_parts().registry,
        heartbeat_interval_ms: 200,
        lost_after_ms: 2000,
        ..Default::default()
    }
}
