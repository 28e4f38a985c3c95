//! Cold start of a pulled image: `StartInstance` until the first successful call through
//! the data plane, against `ctr run --cni` of the same image (same containerd, namespace,
//! snapshots) until the first successful call on its :9000. Runs alternate between the
//! two, and the ratio of the medians is printed.
//!
//! Run it with scripts/bench (which starts containerd and the registry and sets the
//! environment); `coldstart [runs]`, 20 runs by default.
#![allow(clippy::unwrap_used, clippy::too_many_lines)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use fnrt_proto::agent::v1::{StartInstanceRequest, StopInstanceRequest};
use fnrt_tests::{image, real_parts, TestAgent};

const CTR_NET: &str = "fnrt-bench";
const CTR_BRIDGE: &str = "fnrt-bench0";
const CTR_SUBNET: &str = "10.203.0.0/16";
const CNI_CONF: &str = "/etc/cni/net.d/00-fnrt-bench.conflist";

#[tokio::main]
async fn main() {
    let runs: usize =
        std::env::args().nth(1).map(|a| a.parse().expect("runs must be a number")).unwrap_or(20);
    let parts = real_parts();
    let echo = image("echo");
    // FNRT_BENCH_SANDBOX=off: no user namespace, seccomp filter or firewall, to measure
    // what they cost (the bridge's nftables table must be removed beforehand).
    let sandbox = std::env::var("FNRT_BENCH_SANDBOX").map_or(true, |v| v != "off");
    let mut agent = TestAgent::start_with(|c| {
        if !sandbox {
            c.userns_base = 0;
            c.seccomp = false;
            c.firewall = false;
        }
    })
    .await;
    println!("sandbox: {}", if sandbox { "on" } else { "off" });
    fnrt_tests::pull_image(&mut agent.client, &echo).await.unwrap();
    let ns = agent.cfg.namespace.clone();
    let ctr_dir = parts.state_dir.join("ctr-cni");
    let _conf = CtrCni::install(&ctr_dir);

    // One unmeasured round of each warms the page cache and the shim binary.
    ours(&mut agent, &echo).await;
    baseline(&parts.containerd_socket, &ns, &echo, &ctr_dir, "warm");

    let (mut a, mut b, mut phases) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..runs {
        if i % 2 == 0 {
            let (took, p) = ours(&mut agent, &echo).await;
            a.push(took);
            phases.push(p);
            b.push(baseline(&parts.containerd_socket, &ns, &echo, &ctr_dir, &format!("b{i}")));
        } else {
            b.push(baseline(&parts.containerd_socket, &ns, &echo, &ctr_dir, &format!("b{i}")));
            let (took, p) = ours(&mut agent, &echo).await;
            a.push(took);
            phases.push(p);
        }
    }
    agent.cleanup().await;
    report(runs, &a, &b);
    anatomy(&phases);
}

/// The median of each start phase over the runs (the agent's own record of them), and
/// what is left of the measured time: the first call after the instance listens.
fn anatomy(runs: &[Vec<(String, f64)>]) {
    println!("where fnrt's cold start went (median ms of {} runs, as StartInstance reports it):", runs.len());
    let Some(first) = runs.first() else { return };
    for (i, (name, _)) in first.iter().enumerate() {
        let mut v: Vec<f64> = runs.iter().filter_map(|r| r.get(i).map(|p| p.1)).collect();
        v.sort_by(f64::total_cmp);
        println!("  {name:<10} {:>8.1}", v[v.len() / 2]);
    }
}

/// StartInstance, then GET through the data plane until 200; then StopInstance (not timed).
/// The time, and the start's phases as the agent recorded them.
async fn ours(agent: &mut TestAgent, echo: &str) -> (Duration, Vec<(String, f64)>) {
    let dp = agent.handle.dataplane_address;
    let t0 = Instant::now();
    let req = StartInstanceRequest {
        function: "bench".into(),
        image: echo.into(),
        env: Default::default(),
        memory_mb: 0,
        ..Default::default()
    };
    let inst = agent.client.start_instance(req).await.unwrap().into_inner().instance.unwrap();
    let phases = inst.start_phases.iter().map(|p| (p.name.clone(), p.ms)).collect();
    let took = tokio::task::spawn_blocking(move || {
        first_ok(dp, "/function/bench/");
        t0.elapsed()
    })
    .await
    .unwrap();
    agent.client.stop_instance(StopInstanceRequest { id: inst.id }).await.unwrap();
    (took, phases)
}

/// `ctr run -d --cni`, then GET on the container's :9000 until 200; then kill and remove
/// it and release its address (ctr never calls CNI DEL itself).
fn baseline(socket: &Path, ns: &str, echo: &str, cni_dir: &Path, id: &str) -> Duration {
    let ctr = |args: &[&str]| {
        let out = Command::new("ctr")
            .arg("--address")
            .arg(socket)
            .arg("--namespace")
            .arg(ns)
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "ctr {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let t0 = Instant::now();
    ctr(&["run", "-d", "--cni", echo, id]);
    let ip = ctr_ip(cni_dir, &format!("{ns}-{id}"));
    first_ok(SocketAddr::new(ip.parse().unwrap(), 9000), "/");
    let took = t0.elapsed();
    ctr(&["task", "kill", "-s", "SIGKILL", id]);
    for _ in 0..200 {
        let out = Command::new("ctr")
            .arg("--address")
            .arg(socket)
            .arg("--namespace")
            .arg(ns)
            .args(["task", "rm", id])
            .output()
            .unwrap();
        if out.status.success() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    ctr(&["container", "rm", id]);
    CtrCni::release(cni_dir, &format!("{ns}-{id}"));
    took
}

/// Polls until `GET path` answers 200, retrying every millisecond.
fn first_ok(addr: SocketAddr, path: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            let req = format!("GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n");
            let mut resp = String::new();
            if s.write_all(req.as_bytes()).is_ok()
                && s.read_to_string(&mut resp).is_ok()
                && resp.starts_with("HTTP/1.1 200")
            {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    panic!("no 200 from {addr}{path} within 30 s");
}

/// host-local writes one file per address holding the container id; find ours.
fn ctr_ip(cni_dir: &Path, cni_id: &str) -> String {
    let dir = cni_dir.join(CTR_NET);
    for _ in 0..1000 {
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                if std::fs::read_to_string(e.path()).unwrap_or_default().starts_with(cni_id) {
                    return e.file_name().to_string_lossy().into_owned();
                }
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    panic!("no address for {cni_id} in {}", dir.display());
}

/// The CNI network of the ctr baseline: a conflist in /etc/cni/net.d (where ctr looks;
/// it cannot be told elsewhere), removed again with its bridge when dropped.
struct CtrCni;

impl CtrCni {
    fn install(dir: &Path) -> CtrCni {
        std::fs::create_dir_all("/etc/cni/net.d").unwrap();
        let conf = serde_json::json!({
            "cniVersion": "1.0.0", "name": CTR_NET,
            "plugins": [{
                "type": "bridge", "bridge": CTR_BRIDGE, "isGateway": true, "ipMasq": false,
                "ipam": { "type": "host-local", "ranges": [[{ "subnet": CTR_SUBNET }]], "dataDir": dir }
            }]
        });
        std::fs::write(CNI_CONF, conf.to_string()).unwrap();
        CtrCni
    }

    /// CNI DEL for a container whose netns is gone: releases its address.
    fn release(dir: &Path, cni_id: &str) {
        let conf = serde_json::json!({
            "cniVersion": "1.0.0", "name": CTR_NET, "type": "bridge", "bridge": CTR_BRIDGE,
            "ipam": { "type": "host-local", "ranges": [[{ "subnet": CTR_SUBNET }]], "dataDir": dir }
        });
        let mut child = Command::new(PathBuf::from("/usr/lib/cni/bridge"))
            .env("CNI_COMMAND", "DEL")
            .env("CNI_CONTAINERID", cni_id)
            .env("CNI_NETNS", "")
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", "/usr/lib/cni")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(conf.to_string().as_bytes()).unwrap();
        assert!(child.wait().unwrap().success(), "CNI DEL of {cni_id}");
    }
}

impl Drop for CtrCni {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(CNI_CONF);
        let _ = Command::new("ip").args(["link", "del", CTR_BRIDGE]).status();
    }
}

fn report(runs: usize, ours: &[Duration], base: &[Duration]) {
    let stats = |v: &[Duration]| {
        let mut ms: Vec<f64> = v.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
        ms.sort_by(|a, b| a.total_cmp(b));
        let p = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
        (p(0.5), ms.iter().sum::<f64>() / ms.len() as f64, ms[0], p(0.9), ms[ms.len() - 1])
    };
    let (a, b) = (stats(ours), stats(base));
    println!("cold start of a pulled image until the first successful call, {runs} runs each, alternating");
    println!("{:<44} {:>8} {:>8} {:>8} {:>8} {:>8}", "", "p50 ms", "mean", "min", "p90", "max");
    println!(
        "{:<44} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>8.1}",
        "fnrt StartInstance + call via data plane", a.0, a.1, a.2, a.3, a.4
    );
    println!(
        "{:<44} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>8.1}",
        "ctr run -d --cni + call on :9000", b.0, b.1, b.2, b.3, b.4
    );
    println!("ratio fnrt/ctr: p50 {:.2}x, mean {:.2}x (target: at most 1.2x)", a.0 / b.0, a.1 / b.1);
}
