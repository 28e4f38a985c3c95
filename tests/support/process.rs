//! The agent as a process of its own (to kill it with SIGKILL, or to measure its memory
//! alone), configured like an in-process test agent.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fnrt_agent::Config;
use fnrt_proto::agent::v1::agent_client::AgentClient;
use fnrt_proto::agent::v1::NodeStatusRequest;
use tonic::transport::Channel;

/// The agent binary scripts/test builds (debug).
pub fn agent_bin() -> PathBuf {
    let bin = std::env::var_os("FNRT_TEST_AGENT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/fnrt-agent"));
    assert!(bin.exists(), "{} is missing: run scripts/test, which builds it", bin.display());
    bin
}

/// Runs the agent binary `bin` with `cfg`; its output goes to `log`. It is killed when
/// the handle is dropped.
pub fn spawn_agent(bin: &Path, cfg: &Config, log: &Path) -> tokio::process::Child {
    spawn_agent_in(None, bin, cfg, log)
}

/// As [`spawn_agent`], in network namespace `netns` (a name under /run/netns) when given.
pub fn spawn_agent_in(netns: Option<&str>, bin: &Path, cfg: &Config, log: &Path) -> tokio::process::Child {
    let set = |k: &str, v: String| ["--set".to_string(), format!("{k}={v}")];
    let mut args = Vec::new();
    args.extend(set("containerd_socket", cfg.containerd_socket.display().to_string()));
    args.extend(set("namespace", cfg.namespace.clone()));
    args.extend(set("socket", cfg.socket.display().to_string()));
    args.extend(set("dataplane_listen", cfg.dataplane_listen.to_string()));
    args.extend(set("metrics_listen", cfg.metrics_listen.to_string()));
    args.extend(set("state_dir", cfg.state_dir.display().to_string()));
    args.extend(set("cni_data_dir", cfg.cni_data_dir().display().to_string()));
    args.extend(set("bridge", cfg.bridge.clone()));
    args.extend(set("subnet", cfg.subnet.clone()));
    args.extend(set("health_timeout_ms", cfg.health_timeout_ms.to_string()));
    args.extend(set("allowed_registries", cfg.allowed_registries.join(",")));
    args.extend(set("http_header_timeout_ms", cfg.http_header_timeout_ms.to_string()));
    args.extend(set("scratch_budget_bytes", cfg.scratch_budget_bytes.to_string()));
    args.extend(set("log_budget_bytes", cfg.log_budget_bytes.to_string()));
    args.extend(set("memory_budget_mb", cfg.memory_budget_mb.to_string()));
    args.extend(set("startup_cpu_millis", cfg.startup_cpu_millis.to_string()));
    if !cfg.sandbox_classes.is_empty() {
        let classes: Vec<&str> = cfg.sandbox_classes.iter().map(|c| c.as_str()).collect();
        args.extend(set("sandbox_classes", classes.join(",")));
    }
    if let Some(url) = &cfg.controlplane_url {
        args.extend(set("controlplane_url", url.clone()));
        args.extend(set("node_name", cfg.node_name.clone()));
    }
    if let Some(token) = &cfg.controlplane_token {
        args.extend(set("controlplane_token", token.expose().to_string()));
    }
    if let Some(key) = &cfg.dataplane_key {
        args.extend(set("dataplane_key", key.expose().to_string()));
    }
    if let (Some(addr), Some(token)) = (cfg.tcp_listen, &cfg.tcp_token) {
        args.extend(set("tcp_listen", addr.to_string()));
        args.extend(set("tcp_token", token.expose().to_string()));
    }
    if let Some((ca, cert, key)) = cfg.tls_files() {
        args.extend(set("tls_ca_file", ca.display().to_string()));
        args.extend(set("tls_cert_file", cert.display().to_string()));
        args.extend(set("tls_key_file", key.display().to_string()));
    }
    let out = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    let mut command = match netns {
        // The network namespace only (`ip netns exec` would also remount /sys, and with it
        // the cgroup hierarchy the agent and runc need).
        Some(ns) => {
            let mut c = tokio::process::Command::new("nsenter");
            c.arg(format!("--net=/run/netns/{ns}")).arg(bin);
            c
        }
        None => tokio::process::Command::new(bin),
    };
    command.args(args).stdout(out.try_clone().unwrap()).stderr(out).kill_on_drop(true).spawn().unwrap()
}

/// A client once the agent answers, within 20 s.
pub async fn ready(agent: &mut tokio::process::Child, cfg: &Config, log: &Path) -> AgentClient<Channel> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = agent.try_wait().unwrap() {
            panic!(
                "the agent exited ({status}); its log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        if cfg.socket.exists() {
            if let Ok(Ok(mut c)) =
                tokio::time::timeout(Duration::from_secs(1), try_connect(&cfg.socket)).await
            {
                if c.node_status(NodeStatusRequest {}).await.is_ok() {
                    return c;
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "the agent did not answer in 20 s; its log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn try_connect(socket: &Path) -> Result<AgentClient<Channel>, fnrt_proto::connect::ConnectError> {
    Ok(AgentClient::new(fnrt_proto::connect::unix(socket).await?))
}
