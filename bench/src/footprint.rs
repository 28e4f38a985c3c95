//! The agent's footprint beside the parts it drives: the release agent's resident memory
//! idle (its image pulled, no instance) and with 100 running instances, side by side with
//! containerd's own and with what each instance's containerd shim costs (RSS, and PSS,
//! which shares the shim's common pages out among the shims).
//!
//! Run it with scripts/bench (which starts containerd and the registry, builds the release
//! agent and sets the environment); `footprint [instances]`, 100 by default.
#![allow(clippy::unwrap_used, clippy::too_many_lines)]

use fnrt_proto::agent::v1::{StartInstanceRequest, StopInstanceRequest};
use fnrt_tests::image;

#[path = "release_agent.rs"]
mod release_agent;
use release_agent::{containerd_pid, proc_kib, ReleaseAgent};

#[tokio::main]
async fn main() {
    let n: usize =
        std::env::args().nth(1).map(|a| a.parse().expect("instances must be a number")).unwrap_or(100);
    let mut agent = ReleaseAgent::start("footprint", |cfg| {
        // Room for every instance's 512 MiB /tmp (sparse: they take little of the disk).
        cfg.scratch_budget_bytes = (n as u64 + 4) << 29;
        cfg.log_budget_bytes = (n as u64 + 4) << 25;
    })
    .await;
    let (agent_pid, containerd_pid) = (agent.pid, containerd_pid());
    let echo = image("echo");
    fnrt_tests::pull_image(&mut agent.client, &echo).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let namespace = agent.cfg.namespace.clone();
    let idle = (mem(agent_pid), mem(containerd_pid), shims(&namespace));

    let http = fnrt_tests::http();
    let mut ids = Vec::new();
    let mut failed = None;
    for i in 0..n {
        let function = format!("fp{i}");
        let req = StartInstanceRequest {
            function: function.clone(),
            image: echo.clone(),
            memory_mb: 64,
            ..Default::default()
        };
        match agent.client.start_instance(req).await {
            Ok(r) => ids.push(r.into_inner().instance.unwrap().id),
            Err(e) => {
                failed = Some(format!("instance {i}: {e}"));
                break;
            }
        }
        let url = format!("http://{}/function/{function}/", agent.cfg.dataplane_listen);
        let status = http.get(&url).send().await.map(|r| r.status().as_u16());
        if status.as_ref().ok() != Some(&200) {
            failed = Some(format!("instance {i}'s call: {status:?}"));
            break;
        }
    }
    if let Some(why) = &failed {
        println!("stopped early: {why}");
    }
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let busy = (mem(agent_pid), mem(containerd_pid), shims(&namespace));

    println!("\nfootprint: the release agent idle and with {n} running instances (each called once)");
    println!("{:<34} {:>14} {:>14}", "", "RSS (KiB)", "PSS (KiB)");
    let row = |name: &str, (rss, pss): (u64, u64)| println!("{name:<34} {rss:>14} {pss:>14}");
    row("agent, idle", idle.0);
    row(&format!("agent, {n} instances"), busy.0);
    row("containerd, idle", idle.1);
    row(&format!("containerd, {n} instances"), busy.1);
    let (count, shim_rss, shim_pss) = busy.2;
    row(&format!("{count} containerd shims, together"), (shim_rss, shim_pss));
    let per = |v: u64| v / count.max(1) as u64;
    row("one shim", (per(shim_rss), per(shim_pss)));
    let agent_per = (busy.0 .1 as f64 - idle.0 .1 as f64) / n as f64;
    println!(
        "agent PSS per instance: {agent_per:.0} KiB; one shim's PSS: {} KiB ({:.2}x of the agent's per-instance cost)",
        per(shim_pss),
        per(shim_pss) as f64 / agent_per.max(1.0)
    );

    for id in ids {
        agent.client.stop_instance(StopInstanceRequest { id }).await.unwrap();
    }
    agent.stop().await;
    assert!(failed.is_none(), "not every instance started");
    assert_eq!(idle.2 .0, 0, "shims of this namespace before any instance");
}

/// (VmRSS, Pss) of a process in KiB (0 if it cannot be read).
fn mem(pid: u32) -> (u64, u64) {
    (proc_kib(pid, "status", "VmRSS:"), proc_kib(pid, "smaps_rollup", "Pss:"))
}

/// The containerd shims of `namespace`'s containers: how many, their RSS and PSS together.
fn shims(namespace: &str) -> (usize, u64, u64) {
    let mut found = (0, 0, 0);
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let is_shim = args.first().is_some_and(|a| a.ends_with(b"containerd-shim-runc-v2"));
        let ours = args.windows(2).any(|w| w[0] == b"-namespace" && w[1] == namespace.as_bytes());
        if is_shim && ours {
            let (rss, pss) = mem(pid);
            found = (found.0 + 1, found.1 + rss, found.2 + pss);
        }
    }
    found
}
