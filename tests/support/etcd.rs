//! An etcd cluster of the test's own (Debian's etcd-server): `n` members on free loopback
//! ports, their data in a directory of their own; killed (SIGKILL) when dropped.

use std::time::{Duration, Instant};

/// The cluster.
pub struct Etcd {
    members: Vec<std::process::Child>,
    /// The client URLs (`http://127.0.0.1:<port>`).
    pub endpoints: Vec<String>,
    _dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Etcd {
    /// Starts `n` members and waits until each says it is healthy.
    pub async fn start(n: usize) -> Etcd {
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let cluster = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("n{i}=http://127.0.0.1:{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let token = format!("fnrt-test-{:08x}", rand::random::<u32>());
        let mut members = Vec::new();
        for (i, (client, peer)) in ports.iter().enumerate() {
            let client_url = format!("http://127.0.0.1:{client}");
            let peer_url = format!("http://127.0.0.1:{peer}");
            let child = std::process::Command::new("etcd")
                .args(["--name", &format!("n{i}")])
                .arg("--data-dir")
                .arg(dir.path().join(format!("n{i}")))
                .args(["--listen-client-urls", &client_url, "--advertise-client-urls", &client_url])
                .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
                .args(["--initial-cluster", &cluster, "--initial-cluster-token", &token])
                .args([
                    "--initial-cluster-state",
                    "new",
                    "--heartbeat-interval",
                    "50",
                    "--election-timeout",
                    "500",
                ])
                .args([
                    "--max-txn-ops",
                    "1024",
                    "--logger",
                    "zap",
                    "--log-outputs",
                    "stderr",
                    "--log-level",
                    "error",
                ])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("etcd runs (scripts/test installs Debian's etcd-server)");
            members.push(child);
        }
        let endpoints: Vec<String> = ports.iter().map(|(c, _)| format!("http://127.0.0.1:{c}")).collect();
        let http = crate::http();
        let deadline = Instant::now() + Duration::from_secs(20);
        for e in &endpoints {
            loop {
                let healthy = match http.get(format!("{e}/health")).send().await {
                    Ok(r) => r.text().await.unwrap_or_default().contains("\"true\""),
                    Err(_) => false,
                };
                if healthy {
                    break;
                }
                assert!(Instant::now() < deadline, "etcd member {e} did not become healthy in 20 s");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Etcd { members, endpoints, _dir: dir }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for m in &mut self.members {
            let _ = m.kill();
            let _ = m.wait();
        }
    }
}
