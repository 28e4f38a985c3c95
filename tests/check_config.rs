//! `check-config` of the release binaries, as an operator runs it after editing a node's
//! settings (README "Installing on a node"): a good configuration passes (exit 0), a bad
//! key is a bad configuration (exit 2, the key named), and an unreachable containerd, a
//! missing CNI directory or an unreachable registry fail their check (exit 1, the line
//! naming the setting and what is allowed).
#![allow(missing_docs, clippy::unwrap_used)]

use std::path::Path;
use std::process::Output;

use fnrt_tests::shipped::release_bin;
use fnrt_tests::{real_parts, test_config};

fn run(bin: &str, args: &[&str]) -> Output {
    std::process::Command::new(release_bin(bin)).arg("check-config").args(args).output().unwrap()
}

fn text(out: &Output) -> (String, String) {
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// The line of `stdout` about `setting`.
fn line<'a>(stdout: &'a str, setting: &str) -> &'a str {
    stdout
        .lines()
        .find(|l| l.starts_with(setting))
        .unwrap_or_else(|| panic!("no {setting} line in:\n{stdout}"))
}

/// The test agent's settings as a file an operator would write.
fn agent_file(dir: &Path) -> std::path::PathBuf {
    let cfg = test_config(dir);
    let file = dir.join("agent.toml");
    let text = format!(
        "containerd_socket = {:?}\nnamespace = {:?}\nsocket = {:?}\nstate_dir = {:?}\ncni_data_dir = {:?}\n\
         bridge = {:?}\nsubnet = {:?}\ndataplane_listen = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\n\
         allowed_registries = [{:?}, \"*\"]\n",
        cfg.containerd_socket,
        cfg.namespace,
        cfg.socket,
        cfg.state_dir,
        cfg.cni_data_dir(),
        cfg.bridge,
        cfg.subnet,
        real_parts().registry,
    );
    std::fs::write(&file, text).unwrap();
    file
}

#[test]
fn agent_check_config_passes_a_good_node_and_names_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let file = agent_file(dir.path());
    let file = file.to_str().unwrap();

    let out = run("fnrt-agent", &["--config", file]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(line(&stdout, "containerd_socket").contains(": ok (containerd "), "{stdout}");
    assert!(
        line(&stdout, "cni_bin_dir /usr/lib/cni").ends_with("ok (bridge, host-local, loopback)"),
        "{stdout}"
    );
    assert!(line(&stdout, &format!("registry {}", real_parts().registry)).contains("ok (/v2/ answered"));
    assert!(!dir.path().join("state").exists(), "the check makes no directory");

    std::fs::write(dir.path().join("bad.toml"), "nmespace = \"x\"\n").unwrap();
    let bad = dir.path().join("bad.toml");
    let out = run("fnrt-agent", &["--config", bad.to_str().unwrap()]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "a bad key is a bad configuration: {stdout}{stderr}");
    assert!(stderr.contains("nmespace"), "the key is named: {stderr}");

    let out =
        run("fnrt-agent", &["--config", file, "--set", "containerd_socket=/nonexistent/containerd.sock"]);
    let (stdout, _) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let l = line(&stdout, "containerd_socket /nonexistent/containerd.sock: error:");
    assert!(l.contains("must be the gRPC socket of a running containerd"), "{l}");

    let out = run("fnrt-agent", &["--config", file, "--set", "cni_bin_dir=/nonexistent/cni"]);
    let (stdout, _) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let l = line(&stdout, "cni_bin_dir /nonexistent/cni: error: no such directory");
    assert!(l.contains("bridge, host-local, loopback") && l.contains("containernetworking-plugins"), "{l}");
    assert!(line(&stdout, "containerd_socket").contains(": ok"), "the other checks still run: {stdout}");

    // Sandbox classes: gvisor offered with its runsc's version (scripts/test installs
    // runsc); asked for without runsc, the line names the path and how to install it.
    let out = run("fnrt-agent", &["--config", file]);
    let (stdout, _) = text(&out);
    let l = line(&stdout, "sandbox_classes");
    assert!(l.contains("ok (runc, gvisor (gvisor: runsc version"), "{l}");
    let out = run(
        "fnrt-agent",
        &["--config", file, "--set", "sandbox_classes=gvisor", "--set", "gvisor_runsc=/nonexistent/runsc"],
    );
    let (stdout, _) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let l = line(&stdout, "sandbox_classes: error:");
    assert!(
        l.contains("/nonexistent/runsc is not an executable file") && l.contains("bookworm-backports"),
        "{l}"
    );
    let out = run("fnrt-agent", &["--config", file, "--set", "sandbox_classes=kata"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "an unknown class is a bad configuration: {stdout}{stderr}");
    assert!(stderr.contains("kata"), "{stderr}");
}

#[test]
fn controlplane_check_config_passes_a_good_node_and_names_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let base = [
        format!("state_dir={}", state.display()),
        format!("registry={}", real_parts().registry),
        format!("cluster_token={}", "t".repeat(32)),
        "api_listen=127.0.0.1:0".into(),
        "gateway_listen=127.0.0.1:0".into(),
        "grpc_listen=127.0.0.1:0".into(),
        "metrics_listen=127.0.0.1:0".into(),
    ];
    let run_with = |extra: &[&str]| {
        let sets = base.iter().map(String::as_str).chain(extra.iter().copied());
        let args: Vec<&str> = sets.flat_map(|s| ["--set", s]).collect();
        run("fnrt-controlplane", &args)
    };

    let out = run_with(&[]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(line(&stdout, "store redb").contains("made at first start"), "{stdout}");
    assert!(!state.exists(), "the check makes no directory and no store");

    let out = run_with(&["cluster_token=short"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("cluster_token must be set, at least 32 characters"), "{stderr}");

    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let out = run_with(&[&format!("registry=127.0.0.1:{port}")]);
    let (stdout, _) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let l =
        line(&stdout, &format!("registry 127.0.0.1:{port}: error: registry 127.0.0.1:{port} is unreachable"));
    assert!(l.contains("OCI distribution registry"), "{l}");
}
