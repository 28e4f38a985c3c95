//! `cluster <info file>`: the cluster of tests/cluster.rs, up for a person to try (run by
//! `scripts/cluster up`): three nodes as network namespaces, each with its containerd and
//! release agent, three control-plane replicas on a three-member etcd. It writes where
//! everything is to the info file, and takes everything down on SIGTERM or SIGINT
//! (`scripts/cluster down`).
#![allow(clippy::unwrap_used)]

use std::fmt::Write as _;

use fnrt_tests::cluster::Cluster;

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let info = std::env::args().nth(1).expect("usage: cluster <info file>");
    let mut cluster = Cluster::start(3, 3).await;
    let mut text = String::new();
    let admin = cluster.cps[0].admin_token.clone();
    writeln!(text, "admin token (X-Auth-Token): {admin}").unwrap();
    writeln!(text, "etcd: {}", cluster.etcd.endpoints.join(",")).unwrap();
    for (i, cp) in cluster.live().iter().enumerate() {
        writeln!(text, "replica {i}: API {} gateway {} join {}", cp.api, cp.gateway, cp.grpc).unwrap();
        writeln!(text, "  API base: {}", cp.region_url()).unwrap();
    }
    for n in &cluster.nodes {
        writeln!(
            text,
            "node {}: address {} (network namespace {}), agentctl --socket {}",
            n.name,
            n.ip,
            n.ns,
            n.cfg.socket.display()
        )
        .unwrap();
    }
    std::fs::write(&info, &text).unwrap();
    print!("{text}");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap();
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    println!("taking the cluster down");
    let _ = std::fs::remove_file(&info);
    cluster.take_down().await;
    println!("the cluster is down; nothing of it is left");
}
