//! Start/stop cycles on the release agent, run as a process of its own: each cycle starts
//! an instance, calls it once through the data plane and stops it. Printed side by side:
//! the agent's resident memory and open file descriptors after a warm-up and every 50
//! cycles, containerd's resident memory over the same cycles (the peer doing the same
//! work), and afterwards what is left on the node and in containerd (the leak check).
//!
//! Run it with scripts/bench (which starts containerd and the registry, builds the release
//! agent and sets the environment); `cycles [n]`, 200 cycles by default.
#![allow(clippy::unwrap_used, clippy::too_many_lines)]

use std::path::Path;
use std::time::{Duration, Instant};

use fnrt_agent::Containerd;
use fnrt_proto::agent::v1::{StartInstanceRequest, StopInstanceRequest};
use fnrt_tests::{image, namespace_contents, node_leftovers};

#[path = "release_agent.rs"]
mod release_agent;
use release_agent::{containerd_pid, proc_kib, ReleaseAgent};

const WARMUP: usize = 10;

#[tokio::main]
async fn main() {
    let cycles: usize =
        std::env::args().nth(1).map(|a| a.parse().expect("cycles must be a number")).unwrap_or(200);
    let agent = ReleaseAgent::start("cycles", |_| {}).await;
    let (agent_pid, containerd_pid) = (agent.pid, containerd_pid());
    let (cfg, mut client) = (agent.cfg.clone(), agent.client.clone());
    let echo = image("echo");
    fnrt_tests::pull_image(&mut client, &echo).await.unwrap();

    let http = fnrt_tests::http();
    let url = format!("http://{}/function/cycle/", cfg.dataplane_listen);
    let mut samples = Vec::new();
    let mut took = Vec::new();
    for i in 1..=cycles + WARMUP {
        let t0 = Instant::now();
        let req =
            StartInstanceRequest { function: "cycle".into(), image: echo.clone(), ..Default::default() };
        let inst = client.start_instance(req).await.unwrap().into_inner().instance.unwrap();
        let status = http.get(&url).send().await.unwrap().status();
        assert_eq!(status, 200, "cycle {i}");
        client.stop_instance(StopInstanceRequest { id: inst.id }).await.unwrap();
        took.push(t0.elapsed());
        let done = i.saturating_sub(WARMUP);
        if i == WARMUP || (done > 0 && done % 50 == 0) || i == cycles + WARMUP {
            samples.push((done, rss_kib(agent_pid), fds(agent_pid), rss_kib(containerd_pid)));
        }
    }

    // The leak check: the node, containerd and the agent's own directories.
    let cd = Containerd::connect(&cfg.containerd_socket, &cfg.namespace).await.unwrap();
    let prefix = format!("{}-", cfg.namespace);
    let mut left = node_leftovers(&prefix);
    left.extend(
        namespace_contents(&cd)
            .await
            .into_iter()
            // The image's committed layers stay in the cache: they are not per instance.
            .filter(|c| !c.starts_with("snapshot sha256:")),
    );
    for sub in ["instances", "io", "scratch"] {
        left.extend(entries(&cfg.state_dir.join(sub)).into_iter().map(|e| format!("{sub}/{e}")));
    }
    let logs = entries(&cfg.state_dir.join("logs/cycle")).len();

    took.drain(..WARMUP);
    took.sort();
    println!("\nstart/stop cycles: {cycles} after {WARMUP} of warm-up (release agent as its own process)");
    println!("{:>8} {:>16} {:>10} {:>20}", "cycles", "agent RSS (KiB)", "agent fds", "containerd RSS (KiB)");
    for (n, rss, fd, cd_rss) in &samples {
        println!("{n:>8} {rss:>16} {fd:>10} {cd_rss:>20}");
    }
    let (first, last) = (samples[0], samples[samples.len() - 1]);
    println!(
        "agent RSS growth: {:+} KiB ({:.3}x); containerd: {:+} KiB ({:.3}x); agent fds {} -> {}",
        last.1 as i64 - first.1 as i64,
        last.1 as f64 / first.1 as f64,
        last.3 as i64 - first.3 as i64,
        last.3 as f64 / first.3.max(1) as f64,
        first.2,
        last.2
    );
    println!(
        "cycle (start + call + stop): p50 {:.1} ms, p99 {:.1} ms",
        ms(took[took.len() / 2]),
        ms(took[(took.len() * 99 / 100).min(took.len() - 1)])
    );
    println!("left behind after the cycles: {} {left:?}", left.len());
    println!("instance log files kept for log_retention_s: {logs}");

    agent.stop().await;
    assert!(left.is_empty(), "the cycles left things behind");
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// VmRSS of a process in KiB (0 if it cannot be read).
fn rss_kib(pid: u32) -> u64 {
    proc_kib(pid, "status", "VmRSS:")
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}
