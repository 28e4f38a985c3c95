//! The product as shipped: the release binaries (`fnrt-controlplane`, `fnrt-agent`,
//! `agentctl`) started as processes with `--set` flags, the way scripts/demo and the
//! README start them. A process-wide setting that only a test harness makes (a TLS crypto
//! provider, a signal handler) cannot hide a start-up bug from the tests built on these.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fnrt_agent::Config;
use fnrt_proto::agent::v1::agent_client::AgentClient;
use fnrt_proto::agent::v1::{ListFunctionsRequest, ListInstancesRequest, RemoveFunctionRequest};
use tokio::process::{Child, Command};
use tonic::transport::Channel;

use crate::process::{ready, spawn_agent};
use crate::{assert_nothing_left, real_parts, remove_namespace, test_config};

/// A release binary, as `cargo build --release` (scripts/test) left it; `FNRT_RELEASE_DIR`
/// names another directory.
pub fn release_bin(name: &str) -> PathBuf {
    let dir = std::env::var_os("FNRT_RELEASE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release"));
    let bin = dir.join(name);
    assert!(
        bin.exists(),
        "{} is missing: run scripts/test, which builds the release binaries (cargo build --release --bins)",
        bin.display()
    );
    bin
}

/// A log's text without the terminal colour codes tracing writes.
pub fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// What follows `key=` on `line`, up to the next space.
pub fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let at = line.find(&format!(" {key}="))? + key.len() + 2;
    line[at..].split_whitespace().next()
}

/// Stops a child with SIGTERM, as systemd or an operator would; SIGKILL after 10 s.
pub async fn terminate(child: &mut Child, what: &str, log: &Path) {
    if let Some(pid) = child.id() {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::SIGTERM);
    }
    match tokio::time::timeout(Duration::from_secs(10), child.wait()).await {
        Ok(_) => {}
        Err(_) => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            panic!(
                "{what} did not stop within 10 s of SIGTERM; its log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
    }
}

/// `fnrt-controlplane` as a process: every port on 127.0.0.1:0 (read back from its start
/// line), state in a directory of its own, the test registry.
pub struct ShippedControlPlane {
    /// `http://<api>`.
    pub api: String,
    /// `http://<gateway>`.
    pub gateway: String,
    /// Where agents join.
    pub grpc: SocketAddr,
    /// `http://<metrics>`, where `/metrics` is served.
    pub metrics: String,
    /// The admin secret key it made at its first start.
    pub admin_token: String,
    /// The cluster token agents join with.
    pub cluster_token: String,
    /// The data plane key the gateway signs calls with.
    pub dataplane_key: String,
    /// Its state directory and log.
    pub dir: tempfile::TempDir,
    /// The cluster CA it was given (`fnrt-controlplane ca init`), in `dir`.
    pub ca: PathBuf,
    log: PathBuf,
    child: Child,
}

/// `fnrt-controlplane ca <args>` (the release binary); fails the test if it fails.
pub fn ca(args: &[&str]) {
    let out =
        std::process::Command::new(release_bin("fnrt-controlplane")).arg("ca").args(args).output().unwrap();
    assert!(out.status.success(), "fnrt-controlplane ca {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

impl ShippedControlPlane {
    /// Starts it with the test settings plus `extra` (`key=value`), and waits until it serves.
    pub async fn start(extra: &[String]) -> ShippedControlPlane {
        Self::start_on(extra, &[]).await
    }

    /// As [`ShippedControlPlane::start`], its certificate also naming `sans` (addresses
    /// beyond loopback it is reached at).
    pub async fn start_on(extra: &[String], sans: &[&str]) -> ShippedControlPlane {
        let dir = tempfile::tempdir().unwrap();
        let cluster_token = format!("cluster-token-{:032x}", rand::random::<u128>());
        // Cluster links over TLS, as README "Cluster TLS" sets them up.
        let ca_dir = dir.path().join("ca");
        let ca_path = ca_dir.display().to_string();
        ca(&["init", "--dir", &ca_path]);
        ca(&[
            "issue",
            "--dir",
            &ca_path,
            "--role",
            "controlplane",
            "--name",
            "controlplane",
            "--san",
            "127.0.0.1",
        ]
        .into_iter()
        .chain(sans.iter().flat_map(|s| ["--san", s]))
        .collect::<Vec<_>>());
        let dataplane_key = format!("dataplane-key-{:032x}", rand::random::<u128>());
        Self::launch(dir, ca_dir, cluster_token, dataplane_key, extra).await
    }

    /// Another replica of this one's cluster (same CA, tokens and data plane key), with
    /// `extra` settings and a state directory of its own.
    pub async fn replica(&self, extra: &[String]) -> ShippedControlPlane {
        let dir = tempfile::tempdir().unwrap();
        let (token, key) = (self.cluster_token.clone(), self.dataplane_key.clone());
        Self::launch(dir, self.ca.clone(), token, key, extra).await
    }

    async fn launch(
        dir: tempfile::TempDir,
        ca_dir: PathBuf,
        cluster_token: String,
        dataplane_key: String,
        extra: &[String],
    ) -> ShippedControlPlane {
        let log = dir.path().join("controlplane.log");
        let state = dir.path().join("state");
        let mut settings = vec![
            format!("dataplane_key={dataplane_key}"),
            format!("tls_ca_file={}", ca_dir.join("ca.pem").display()),
            format!("tls_cert_file={}", ca_dir.join("controlplane.pem").display()),
            format!("tls_key_file={}", ca_dir.join("controlplane.key").display()),
            format!("state_dir={}", state.display()),
            format!("cluster_token={cluster_token}"),
            "api_listen=127.0.0.1:0".into(),
            "gateway_listen=127.0.0.1:0".into(),
            "grpc_listen=127.0.0.1:0".into(),
            "metrics_listen=127.0.0.1:0".into(),
            format!("registry={}", real_parts().registry),
            "heartbeat_interval_ms=200".into(),
            "lost_after_ms=2000".into(),
        ];
        settings.extend(extra.iter().cloned());
        let out = std::fs::File::create(&log).unwrap();
        let mut child = Command::new(release_bin("fnrt-controlplane"))
            .args(settings.iter().flat_map(|s| ["--set".to_string(), s.clone()]))
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let line = loop {
            let text = plain(&std::fs::read_to_string(&log).unwrap_or_default());
            if let Some(l) = text.lines().find(|l| l.contains("control plane started")) {
                break l.to_string();
            }
            if let Some(status) = child.try_wait().unwrap() {
                panic!("fnrt-controlplane exited ({status}); its log:\n{text}");
            }
            assert!(Instant::now() < deadline, "fnrt-controlplane did not start in 20 s; its log:\n{text}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let addr = |k: &str| field(&line, k).unwrap_or_else(|| panic!("no {k}= in {line:?}")).to_string();
        let admin_token = std::fs::read_to_string(state.join("admin-token")).unwrap().trim().to_string();
        ShippedControlPlane {
            api: format!("http://{}", addr("api")),
            gateway: format!("http://{}", addr("gateway")),
            grpc: addr("grpc").parse().unwrap(),
            metrics: format!("http://{}", addr("metrics")),
            admin_token,
            cluster_token,
            dataplane_key,
            dir,
            ca: ca_dir,
            log,
            child,
        }
    }

    /// The base of the region's API, `http://<api>/functions/v1beta1/regions/fr-par`.
    pub fn region_url(&self) -> String {
        format!("{}/functions/v1beta1/regions/fr-par", self.api)
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        plain(&std::fs::read_to_string(&self.log).unwrap_or_default())
    }

    /// Stops it (SIGTERM) and starts it again on the same addresses with `extra`.
    pub async fn restart(mut self, extra: &[String]) -> ShippedControlPlane {
        terminate(&mut self.child, "fnrt-controlplane", &self.log).await;
        let mut settings = extra.to_vec();
        settings.push(format!("api_listen={}", self.api.trim_start_matches("http://")));
        settings.push(format!("gateway_listen={}", self.gateway.trim_start_matches("http://")));
        settings.push(format!("grpc_listen={}", self.grpc));
        settings.push(format!("metrics_listen={}", self.metrics.trim_start_matches("http://")));
        let ShippedControlPlane { dir, ca, cluster_token, dataplane_key, .. } = self;
        Self::launch(dir, ca, cluster_token, dataplane_key, &settings).await
    }

    /// Kills it (SIGKILL), as a crash would; what it made stays (its directory holds the
    /// CA the others use).
    pub async fn kill(&mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }

    /// Whether it still runs.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Stops it with SIGTERM and fails if it had died before, or logged a panic.
    pub async fn stop(mut self) {
        assert!(self.running(), "fnrt-controlplane died during the test; its log:\n{}", self.log());
        terminate(&mut self.child, "fnrt-controlplane", &self.log).await;
        let log = self.log();
        assert!(!log.contains("panicked"), "fnrt-controlplane panicked; its log:\n{log}");
    }
}

/// `fnrt-agent` as a process, joined to a control plane, in a containerd namespace, netns
/// prefix and state directory of its own (the test agents' settings).
pub struct ShippedAgent {
    /// Its configuration (as passed with --set).
    pub cfg: Config,
    /// A client on its socket.
    pub client: AgentClient<Channel>,
    /// Its state directory and log.
    pub dir: tempfile::TempDir,
    log: PathBuf,
    child: Child,
}

impl ShippedAgent {
    /// Starts it, joined to `cp`, and waits until the control plane lists it.
    pub async fn start(cp: &ShippedControlPlane) -> ShippedAgent {
        Self::start_with(cp, |_| {}).await
    }

    /// As [`ShippedAgent::start`], with its configuration changed by `tweak` last.
    pub async fn start_with(cp: &ShippedControlPlane, tweak: impl FnOnce(&mut Config)) -> ShippedAgent {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = test_config(dir.path());
        cfg.controlplane_url = Some(format!("https://{}", cp.grpc));
        cfg.controlplane_token = Some(cp.cluster_token.clone().into());
        cfg.node_name = cfg.namespace.clone();
        // Its data plane beyond loopback (TLS, calls signed by the gateway) and its API on
        // TCP with TLS, so the control plane calls it as it would another host's.
        cfg.dataplane_listen = ([0, 0, 0, 0], 0).into();
        cfg.dataplane_key = Some(cp.dataplane_key.clone().into());
        cfg.tcp_listen = Some(([127, 0, 0, 1], 0).into());
        cfg.tcp_token = Some(cp.cluster_token.clone().into());
        let out = dir.path().join("node");
        let ca_path = cp.ca.display().to_string();
        let out_path = out.display().to_string();
        ca(&["issue", "--dir", &ca_path, "--role", "node", "--name", &cfg.node_name, "--out", &out_path]);
        cfg.tls_ca_file = Some(cp.ca.join("ca.pem"));
        cfg.tls_cert_file = Some(out.with_extension("pem"));
        cfg.tls_key_file = Some(out.with_extension("key"));
        tweak(&mut cfg);
        let log = dir.path().join("agent.log");
        let mut child = spawn_agent(&release_bin("fnrt-agent"), &cfg, &log);
        let client = ready(&mut child, &cfg, &log).await;
        let http = crate::http();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let agents = http
                .get(format!("{}/fnrt/v1/agents", cp.api))
                .header("X-Auth-Token", &cp.admin_token)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            if agents.contains(&cfg.node_name) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the agent did not join in 20 s: {agents}\nits log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        ShippedAgent { cfg, client, dir, log, child }
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        plain(&std::fs::read_to_string(&self.log).unwrap_or_default())
    }

    /// Kills it (SIGKILL), as a crash would; its instances keep running.
    pub async fn kill(&mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }

    /// Stops it with SIGTERM, as systemd would, and waits until it exits (it drains its
    /// calls first); fails if it takes over 10 s.
    pub async fn stop_gracefully(&mut self) {
        terminate(&mut self.child, "fnrt-agent", &self.log).await;
    }

    /// Starts it again with the same settings (its log goes on), as a restart would, and
    /// waits until it answers on its socket.
    pub async fn start_again(&mut self) {
        let mut child = spawn_agent(&release_bin("fnrt-agent"), &self.cfg, &self.log);
        self.client = ready(&mut child, &self.cfg, &self.log).await;
        self.child = child;
    }

    /// `agentctl` (the release binary) on this agent's socket, with `args`; its exit code,
    /// stdout and stderr.
    pub async fn agentctl(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(release_bin("agentctl"))
            .arg("--socket")
            .arg(&self.cfg.socket)
            .args(args)
            .output()
            .await
            .unwrap();
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
    }

    /// Removes what is left on it (run after its control plane stopped), stops it with
    /// SIGTERM, and fails if it had died or anything of it is left on the node.
    pub async fn cleanup(mut self) {
        assert!(self.child.try_wait().unwrap().is_none(), "fnrt-agent died; its log:\n{}", self.log());
        let fns = self.client.list_functions(ListFunctionsRequest {}).await.unwrap().into_inner().functions;
        for f in fns {
            let name = f.spec.unwrap().name;
            let _ = self.client.remove_function(RemoveFunctionRequest { name }).await;
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let list =
                self.client.list_instances(ListInstancesRequest::default()).await.unwrap().into_inner();
            let running: Vec<String> =
                list.instances.into_iter().filter(|i| i.reason.is_empty()).map(|i| i.id).collect();
            if running.is_empty() {
                break;
            }
            // Instances started on their own are stopped; a removed function's stop once idle.
            for id in running {
                let req = fnrt_proto::agent::v1::StopInstanceRequest { id };
                let _ = self.client.stop_instance(req).await;
            }
            assert!(Instant::now() < deadline, "instances still run");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        terminate(&mut self.child, "fnrt-agent", &self.log).await;
        let log = self.log();
        assert!(!log.contains("panicked"), "fnrt-agent panicked; its log:\n{log}");
        remove_namespace(&self.cfg.containerd_socket, &self.cfg.namespace).await;
        assert_nothing_left(&self.cfg.namespace).await;
    }
}
