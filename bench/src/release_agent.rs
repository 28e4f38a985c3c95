//! What the benchmarks that drive the release agent as a process share: starting it on a
//! directory of its own with the test settings, stopping it with the leak check, and the
//! memory of a process.
// Each benchmark that includes this file uses a part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use fnrt_agent::Config;
use fnrt_proto::agent::v1::agent_client::AgentClient;
use fnrt_tests::process::{ready, spawn_agent};
use fnrt_tests::{assert_nothing_left, remove_namespace, test_config};
use tonic::transport::Channel;

/// The release agent as a process of its own.
pub struct ReleaseAgent {
    pub child: tokio::process::Child,
    pub pid: u32,
    pub client: AgentClient<Channel>,
    pub cfg: Config,
    pub dir: PathBuf,
}

impl ReleaseAgent {
    /// Starts target/release/fnrt-agent on a directory named after `bench`, with the test
    /// settings, a free data plane port and `tweak`; waits until it serves.
    pub async fn start(bench: &str, tweak: impl FnOnce(&mut Config)) -> ReleaseAgent {
        let dir = std::env::temp_dir().join(format!("fnrt-{bench}-{:08x}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut cfg = test_config(&dir);
        cfg.dataplane_listen = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        tweak(&mut cfg);
        let bin = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/fnrt-agent");
        assert!(bin.exists(), "{} is missing: scripts/bench builds it", bin.display());
        let log = dir.join("agent.log");
        let mut child = spawn_agent(&bin, &cfg, &log);
        let pid = child.id().unwrap();
        let client = ready(&mut child, &cfg, &log).await;
        ReleaseAgent { child, pid, client, cfg, dir }
    }

    /// Kills it, removes its containerd namespace and directory, and checks that nothing
    /// of it is left on the node.
    pub async fn stop(mut self) {
        self.child.start_kill().unwrap();
        self.child.wait().await.unwrap();
        remove_namespace(&self.cfg.containerd_socket, &self.cfg.namespace).await;
        assert_nothing_left(&self.cfg.namespace).await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The pid of the stack's containerd (0 if unknown).
pub fn containerd_pid() -> u32 {
    std::fs::read_to_string(fnrt_tests::real_parts().state_dir.join("containerd/pid"))
        .map(|p| p.trim().parse().unwrap_or(0))
        .unwrap_or(0)
}

/// A `kB` field of /proc/<pid>/<file> (e.g. `status`, `VmRSS:`), 0 if it cannot be read.
pub fn proc_kib(pid: u32, file: &str, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/{file}")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}
