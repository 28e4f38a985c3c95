//! Warm calls through the data plane against the same instance called directly and
//! through nginx as a reverse proxy (keep-alive to the upstream, as one would set it up),
//! side by side in one run: latency (p50, p99) with 1 client and requests per second with
//! 1 and 32 clients. The release agent runs as a process of its own; the function has one
//! instance with 2 vCPU (3584 MB) and room for 64 calls at once, so the instance is not
//! the limit. Rounds alternate between the three targets.
//!
//! Run it with scripts/bench (which starts containerd and the registry, builds the release
//! agent and installs nginx); `dataplane [seconds per round]`, 3 by default.
#![allow(clippy::unwrap_used, clippy::too_many_lines)]

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::time::{Duration, Instant};

use fnrt_proto::agent::v1::{DeployFunctionRequest, FunctionSpec, ListInstancesRequest};
use fnrt_tests::image;

#[path = "load.rs"]
mod load;
#[path = "release_agent.rs"]
mod release_agent;
use load::{load, us};
use release_agent::ReleaseAgent;

const ROUNDS: usize = 3;
const PATH: &str = "/_fixture/sleep?ms=0";

#[tokio::main]
async fn main() {
    let secs: u64 =
        std::env::args().nth(1).map(|a| a.parse().expect("seconds must be a number")).unwrap_or(3);
    let agent = ReleaseAgent::start("dp-bench", |_| {}).await;
    let (cfg, mut client, dir) = (agent.cfg.clone(), agent.client.clone(), agent.dir.clone());
    let spec = FunctionSpec {
        name: "dp".into(),
        image: image("echo"),
        memory_mb: 3584,
        provisioned: 1,
        max_instances: 1,
        concurrency: 64,
        ..Default::default()
    };
    client.deploy_function(DeployFunctionRequest { function: Some(spec) }).await.unwrap();
    let inst = client.list_instances(ListInstancesRequest { function: "dp".into() }).await.unwrap();
    let instance = inst.into_inner().instances[0].address.clone();
    let nginx_addr = free_port();
    let mut nginx = Nginx::start(&dir, nginx_addr, &instance);

    let targets = [
        ("fnrt data plane", format!("http://{}/function/dp{PATH}", cfg.dataplane_listen)),
        ("direct to the instance", format!("http://{instance}{PATH}")),
        ("nginx reverse proxy", format!("http://{nginx_addr}{PATH}")),
    ];
    // Warm-up: connections, instance, page cache.
    for (_, url) in &targets {
        load(url, 8, Duration::from_millis(500)).await;
    }
    let mut results = Vec::new();
    // (target, user ticks, system ticks, calls) of the two proxies, over every round.
    let mut cpu: Vec<(usize, u64, u64, usize)> = vec![(0, 0, 0, 0), (2, 0, 0, 0)];
    for clients in [1usize, 32] {
        let mut per: Vec<(Vec<Duration>, usize, Duration)> =
            vec![(Vec::new(), 0, Duration::ZERO); targets.len()];
        for round in 0..ROUNDS {
            for k in 0..targets.len() {
                let t = (k + round) % targets.len();
                // The proxy's own CPU time over its rounds (fnrt: the agent; nginx: its
                // workers), as user and system per call.
                let proxy = match t {
                    0 => vec![agent.pid],
                    2 => nginx.workers(),
                    _ => Vec::new(),
                };
                let before = cpu_ticks(&proxy);
                let (lat, elapsed) = load(&targets[t].1, clients, Duration::from_secs(secs)).await;
                let after = cpu_ticks(&proxy);
                if let Some(c) = cpu.iter_mut().find(|c| c.0 == t) {
                    (c.1, c.2, c.3) = (c.1 + after.0 - before.0, c.2 + after.1 - before.1, c.3 + lat.len());
                }
                per[t].1 += lat.len();
                per[t].2 += elapsed;
                per[t].0.extend(lat);
            }
        }
        for (t, (mut lat, n, elapsed)) in per.into_iter().enumerate() {
            lat.sort();
            let rps = n as f64 / elapsed.as_secs_f64();
            results.push((targets[t].0, clients, rps, lat[lat.len() / 2], lat[lat.len() * 99 / 100]));
        }
    }
    println!("\nwarm calls, {ROUNDS} rounds of {secs} s per target and client count, alternating");
    println!("{:<24} {:>8} {:>12} {:>10} {:>10}", "target", "clients", "req/s", "p50 µs", "p99 µs");
    for (name, clients, rps, p50, p99) in &results {
        println!("{name:<24} {clients:>8} {rps:>12.0} {:>10.1} {:>10.1}", us(*p50), us(*p99));
    }
    let get = |name: &str, c: usize| *results.iter().find(|r| r.0 == name && r.1 == c).unwrap();
    let (ours1, direct1, nginx1) = (get(targets[0].0, 1), get(targets[1].0, 1), get(targets[2].0, 1));
    let (ours32, direct32, nginx32) = (get(targets[0].0, 32), get(targets[1].0, 32), get(targets[2].0, 32));
    println!(
        "added p50 (1 client): fnrt {:+.1} µs, nginx {:+.1} µs (target: fnrt under 100 µs)",
        us(ours1.3) - us(direct1.3),
        us(nginx1.3) - us(direct1.3)
    );
    println!(
        "req/s at 32 clients vs direct: fnrt {:.2}x, nginx {:.2}x (target: fnrt at least 0.9x); fnrt/nginx {:.2}x",
        ours32.2 / direct32.2,
        nginx32.2 / direct32.2,
        ours32.2 / nginx32.2
    );
    println!(
        "req/s at 1 client: fnrt/direct {:.2}x, fnrt/nginx {:.2}x",
        ours1.2 / direct1.2,
        ours1.2 / nginx1.2
    );

    let tick_us = 1e6 / nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).unwrap().unwrap() as f64;
    let per_call = |t: usize| {
        let c = cpu.iter().find(|c| c.0 == t).unwrap();
        (c.1 as f64 * tick_us / c.3 as f64, c.2 as f64 * tick_us / c.3 as f64)
    };
    let ((fu, fs), (nu, ns)) = (per_call(0), per_call(2));
    println!(
        "proxy CPU per call, user + system: fnrt agent {fu:.1} + {fs:.1} µs, nginx workers {nu:.1} + {ns:.1} µs; fnrt/nginx {:.2}x",
        (fu + fs) / (nu + ns)
    );

    nginx.stop();
    client.remove_function(fnrt_proto::agent::v1::RemoveFunctionRequest { name: "dp".into() }).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !client
        .list_instances(ListInstancesRequest { function: "dp".into() })
        .await
        .unwrap()
        .into_inner()
        .instances
        .is_empty()
    {
        assert!(Instant::now() < deadline, "the function's instance did not stop");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Removal finishes in the background: wait until containerd and the node hold nothing of it.
    let cd = fnrt_agent::Containerd::connect(&cfg.containerd_socket, &cfg.namespace).await.unwrap();
    let prefix = format!("{}-", cfg.namespace);
    while fnrt_tests::namespace_contents(&cd).await.iter().any(|c| c.starts_with("container "))
        || !fnrt_tests::node_leftovers(&prefix).is_empty()
    {
        assert!(Instant::now() < deadline, "the function's container was not removed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    agent.stop().await;
}

/// nginx as a reverse proxy to the instance, with keep-alive to it: its master in the
/// foreground (`daemon off`) as this process's child, in a process group of its own with
/// its workers, so that all of them end with it.
struct Nginx(std::process::Child);

impl Nginx {
    fn start(dir: &Path, listen: std::net::SocketAddr, upstream: &str) -> Nginx {
        let prefix = dir.join("nginx");
        std::fs::create_dir_all(prefix.join("logs")).unwrap();
        let conf = prefix.join("nginx.conf");
        std::fs::write(
            &conf,
            format!(
                "daemon off;\nworker_processes auto;\npid {p}/nginx.pid;\nerror_log {p}/logs/error.log;\n\
                 events {{ worker_connections 1024; }}\n\
                 http {{\n  access_log off;\n  client_body_temp_path {p}/body;\n  proxy_temp_path {p}/proxy;\n\
                 upstream fn {{ server {upstream}; keepalive 64; }}\n\
                 server {{\n    listen {listen};\n    location / {{\n      proxy_pass http://fn;\n\
                 proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n    }}\n  }}\n}}\n",
                p = prefix.display()
            ),
        )
        .unwrap();
        let child = std::process::Command::new("nginx")
            .args(["-p", &prefix.display().to_string(), "-c", &conf.display().to_string()])
            .process_group(0)
            .spawn()
            .expect("nginx (scripts/bench installs nginx-light)");
        let mut nginx = Nginx(child);
        for _ in 0..100 {
            if std::net::TcpStream::connect(listen).is_ok() {
                return nginx;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        nginx.kill_group();
        panic!("nginx did not listen on {listen}");
    }

    /// Its worker processes: the others of its process group.
    fn workers(&self) -> Vec<u32> {
        let master = self.0.id();
        let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
        dir.flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|&pid| {
                pid != master && stat_fields(pid).and_then(|f| f.get(2).cloned()) == Some(master.to_string())
            })
            .collect()
    }

    fn group(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.0.id() as i32)
    }

    /// Whether any process of its group (master or worker) is alive.
    fn group_alive(&self) -> bool {
        nix::sys::signal::killpg(self.group(), None).is_ok()
    }

    fn kill_group(&mut self) {
        let _ = nix::sys::signal::killpg(self.group(), nix::sys::signal::SIGKILL);
        let _ = self.0.wait();
    }

    /// Stops nginx gracefully (SIGQUIT: the workers finish and exit, then the master) and
    /// fails unless every process of it is gone within 10 s.
    fn stop(&mut self) {
        let _ = nix::sys::signal::kill(self.group(), nix::sys::signal::SIGQUIT);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.0.try_wait().unwrap().is_none() || self.group_alive() {
            if Instant::now() > deadline {
                self.kill_group();
                panic!("nginx (process group {}) did not end within 10 s of SIGQUIT", self.group());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // A bench that fails half-way still leaves no nginx behind.
        if self.group_alive() {
            self.kill_group();
        }
    }
}

fn free_port() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// The fields of /proc/<pid>/stat after the command name: [0] is the state, [2] the
/// process group, [11] and [12] user and system time in clock ticks.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// User and system CPU time of `pids` (all their threads), in clock ticks.
fn cpu_ticks(pids: &[u32]) -> (u64, u64) {
    pids.iter().filter_map(|&pid| stat_fields(pid)).fold((0, 0), |(u, s), f| {
        let tick = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        (u + tick(11), s + tick(12))
    })
}
