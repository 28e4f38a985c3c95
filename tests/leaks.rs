//! Run by scripts/test after the whole suite: nothing of any test agent is left on the
//! node or in containerd (containers, tasks, snapshots, leases, network namespaces, CNI
//! addresses, mounts, cgroups), nor of the cluster test (network namespaces, links,
//! node daemons), nor the Debian packages tests/package.rs installs. Ignored in a plain
//! `cargo test`, where other tests may still be running.
#![allow(missing_docs, clippy::unwrap_used, clippy::too_many_lines)]

use fnrt_tests::{namespaces_with_prefix, node_leftovers, real_parts, TEST_PREFIX};

#[tokio::test]
#[ignore = "run by scripts/test after the suite: `cargo test --test leaks -- --ignored`"]
async fn nothing_of_the_suite_is_left_behind() {
    let parts = real_parts();
    let namespaces = namespaces_with_prefix(&parts.containerd_socket, TEST_PREFIX).await;
    let mut left: Vec<String> = namespaces.iter().map(|n| format!("containerd namespace {n}")).collect();
    left.extend(node_leftovers(TEST_PREFIX));
    let commands: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .collect();
    let shims = commands.iter().filter(|c| c.contains("containerd-shim") && c.contains(TEST_PREFIX)).count();
    if shims > 0 {
        left.push(format!("{shims} containerd-shim processes of test namespaces"));
    }
    // The tests' etcd members (tests/support/etcd.rs names their cluster fnrt-test-*).
    let etcds = commands
        .iter()
        .filter(|c| c.starts_with("etcd ") && c.contains("--initial-cluster-token fnrt-test-"))
        .count();
    if etcds > 0 {
        left.push(format!("{etcds} etcd members of test clusters"));
    }
    // tests/package.rs installs the packages and purges them, whatever happens.
    for package in ["fnrt-agent", "fnrt-controlplane", "agentctl"] {
        let status =
            std::process::Command::new("dpkg-query").args(["-W", "-f=${Status}", package]).output().unwrap();
        if String::from_utf8_lossy(&status.stdout).contains("installed") {
            left.push(format!("Debian package {package} (dpkg --purge {package})"));
        }
    }
    // The cluster test's nodes: their namespaces and links, containerds and agents.
    left.extend(fnrt_tests::cluster::leftovers());
    let node_daemons = commands
        .iter()
        .filter(|c| {
            (c.starts_with("containerd ") && c.contains("containerd.toml"))
                || (c.contains("fnrt-agent") && c.contains(&format!("namespace={TEST_PREFIX}cl")))
        })
        .count();
    if node_daemons > 0 {
        left.push(format!("{node_daemons} containerd or agent processes of cluster nodes"));
    }
    assert!(left.is_empty(), "the suite left behind: {left:#?}");
}
