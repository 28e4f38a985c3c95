//! The Debian packages (README "Installing on a node"): built with `cargo deb --no-build`
//! from the release binaries, inspected (files, Depends, conffiles, the units), their
//! units checked with `systemd-analyze verify`, installed with dpkg on this machine, the
//! installed daemons run exactly as their unit's `ExecStart` says with `NOTIFY_SOCKET`
//! on a datagram socket of the test's (the settings file the package installed, with the
//! test's settings on top as `FNRT_AGENT_*`/`FNRT_CP_*` variables, which the loader
//! reads after the file; the echo function is started, called and stopped on the agent
//! with the installed agentctl), then purged, leaving nothing behind.
//!
//! PID 1 here is not systemd (a firecracker VM's init), so the units also run under a
//! systemd of the test's own: systemd 252 (the machine's) as PID 1 of a PID and mount
//! namespace (`unshare`), with /run and /proc of its own and an empty default target, on
//! the machine's files, network and containerd. There the control plane must start
//! (`systemctl start` returns on READY=1) as its own user with no capabilities and
//! no_new_privs, answer, and stop cleanly; the agent must start, answer agentctl on the
//! unit's RuntimeDirectory socket, be restarted the graceful way by `dpkg -i` of its
//! package over itself (the postinst's try-restart), and stop cleanly.
//!
//! What is not tested, and why: instances under the systemd-run agent. That systemd's
//! mount namespace is private (so that its /run stays its own), so the network
//! namespaces and /tmp mounts its agent makes are not seen by the machine's containerd
//! and runc; that the agent's unit keeps the host's mount namespace (no ProtectSystem=,
//! PrivateTmp= or the like, which would hide its mounts from containerd the same way) is
//! asserted on the unit instead, and instances surviving an agent restart are covered by
//! tests/restart.rs on the release binary. The image's /usr/sbin/policy-rc.d refuses
//! service actions from maintainer scripts (exit 101, a Docker-image habit), so inside
//! that namespace only it is replaced by one that allows them.
#![allow(missing_docs, clippy::unwrap_used, clippy::too_many_lines)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use fnrt_proto::agent::v1::NodeStatusRequest;
use fnrt_tests::shipped::{field, plain, release_bin};
use fnrt_tests::{connect, real_parts, remove_namespace, test_config};
use tokio::net::UnixDatagram;

const PACKAGES: [&str; 3] = ["fnrt-agent", "fnrt-controlplane", "agentctl"];

/// What the packages may make on the node; none of it may be there before the install
/// test, nor after its purge.
const NODE_PATHS: [&str; 10] = [
    "/etc/fnrt",
    "/var/lib/fnrt",
    "/var/lib/fnrt-controlplane",
    "/usr/bin/fnrt-agent",
    "/usr/bin/fnrt-controlplane",
    "/usr/bin/agentctl",
    "/usr/lib/systemd/system/fnrt-agent.service",
    "/usr/lib/systemd/system/fnrt-controlplane.service",
    "/usr/share/doc/fnrt-agent",
    "/usr/share/doc/fnrt-controlplane",
];

/// The three .debs, built once per run from the release binaries.
fn debs() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        for bin in ["fnrt-agent", "fnrt-controlplane", "agentctl"] {
            release_bin(bin);
        }
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let out = root.join("target/debian-test");
        let _ = std::fs::remove_dir_all(&out);
        for p in PACKAGES {
            // --fast: xz's quick level (CI time); the binaries are the ones tests/shipped.rs runs.
            let status = Command::new("cargo")
                .current_dir(&root)
                .args(["deb", "-p", p, "--no-build", "--fast", "--output"])
                .arg(&out)
                .status()
                .unwrap_or_else(|e| {
                    panic!("cargo deb: {e}; scripts/test installs it (cargo install cargo-deb --locked)")
                });
            assert!(
                status.success(),
                "cargo deb -p {p} --no-build failed; run scripts/test, which installs cargo-deb"
            );
        }
        out
    })
}

fn deb(package: &str) -> PathBuf {
    let dir = debs();
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&format!("{package}_"))))
        .unwrap_or_else(|| panic!("no {package} .deb in {}", dir.display()))
}

fn output(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A file of a .deb's data.
fn deb_file(deb: &Path, path: &str) -> String {
    let tar = Command::new("dpkg-deb").arg("--fsys-tarfile").arg(deb).output().unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("data.tar"), &tar.stdout).unwrap();
    output(Command::new("tar").arg("-xOf").arg(dir.path().join("data.tar")).arg(path))
}

#[test]
fn the_debs_hold_the_binaries_units_settings_and_dependencies() {
    let agent = deb("fnrt-agent");
    let info = output(Command::new("dpkg-deb").arg("-I").arg(&agent));
    let depends = info.lines().find(|l| l.trim_start().starts_with("Depends:")).unwrap();
    for d in ["containerd", "runc", "containernetworking-plugins", "e2fsprogs", "nftables"] {
        assert!(depends.split([',', ':', ' ']).any(|w| w == d), "fnrt-agent must depend on {d}: {depends}");
    }
    let files = output(Command::new("dpkg-deb").arg("-c").arg(&agent));
    for f in ["./usr/bin/fnrt-agent", "./usr/lib/systemd/system/fnrt-agent.service", "./etc/fnrt/agent.toml"]
    {
        assert!(files.lines().any(|l| l.ends_with(f)), "{f} missing from fnrt-agent:\n{files}");
    }
    let conffiles = output(Command::new("dpkg-deb").arg("-I").arg(&agent).arg("conffiles"));
    assert_eq!(conffiles.trim(), "/etc/fnrt/agent.toml");

    let unit = deb_file(&agent, "./usr/lib/systemd/system/fnrt-agent.service");
    for setting in [
        "Type=notify",
        "ExecStart=/usr/bin/fnrt-agent --config /etc/fnrt/agent.toml",
        "Restart=always",
        "KillMode=process",
        "StateDirectory=fnrt",
        "NoNewPrivileges=yes",
    ] {
        assert!(unit.lines().any(|l| l == setting), "fnrt-agent.service lacks {setting}:\n{unit}");
    }
    // The stop must outlast the drain (drain_timeout_ms, 10 s by default).
    let stop: u64 = unit.lines().find_map(|l| l.strip_prefix("TimeoutStopSec=")).unwrap().parse().unwrap();
    assert!(stop > 10, "TimeoutStopSec={stop} must be longer than the agent's drain");
    assert!(
        !unit.lines().any(|l| l.starts_with("ProtectSystem=") || l.starts_with("PrivateTmp=")),
        "a mount namespace of its own would keep the agent's mounts from containerd"
    );

    let cp = deb("fnrt-controlplane");
    let conffiles = output(Command::new("dpkg-deb").arg("-I").arg(&cp).arg("conffiles"));
    assert_eq!(conffiles.trim(), "/etc/fnrt/controlplane.toml");
    let unit = deb_file(&cp, "./usr/lib/systemd/system/fnrt-controlplane.service");
    for setting in [
        "Type=notify",
        "ExecStart=/usr/bin/fnrt-controlplane --config /etc/fnrt/controlplane.toml",
        "Restart=always",
        "User=fnrt-controlplane",
        "StateDirectory=fnrt-controlplane",
        "CapabilityBoundingSet=",
        "ProtectSystem=strict",
        "PrivateTmp=yes",
        "NoNewPrivileges=yes",
    ] {
        assert!(unit.lines().any(|l| l == setting), "fnrt-controlplane.service lacks {setting}:\n{unit}");
    }
    let files = output(Command::new("dpkg-deb").arg("-c").arg(deb("agentctl")));
    assert!(files.lines().any(|l| l.ends_with("./usr/bin/agentctl")), "{files}");

    // The commented examples name real keys: uncommented, each file loads.
    let dir = tempfile::tempdir().unwrap();
    for (deb, path) in [(&agent, "./etc/fnrt/agent.toml"), (&cp, "./etc/fnrt/controlplane.toml")] {
        let example = deb_file(deb, path);
        let keys: String = example
            .lines()
            .filter_map(|l| l.strip_prefix('#'))
            .filter(|l| {
                l.split_once(" = ")
                    .is_some_and(|(k, _)| k.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
            })
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(keys.lines().count() >= 8, "{path} shows its settings:\n{example}");
        let file = dir.path().join("settings.toml");
        std::fs::write(&file, &keys).unwrap();
        let loaded = if path.ends_with("agent.toml") {
            fnrt_agent::Config::load(Some(&file), vec![]).map(drop)
        } else {
            fnrt_controlplane::Config::load(Some(&file), vec![]).map(drop)
        };
        loaded.unwrap_or_else(|e| panic!("{path}, uncommented, does not load: {e}\n{keys}"));
    }
}

fn installed(package: &str) -> bool {
    let out = Command::new("dpkg-query").args(["-W", "-f=${Status}", package]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).contains("ok installed")
}

/// What of the packages is on the node (paths, the user, the statoverride).
fn on_node() -> Vec<String> {
    let mut found: Vec<String> =
        NODE_PATHS.iter().filter(|p| Path::new(p).exists()).map(|p| p.to_string()).collect();
    for db in ["passwd", "group"] {
        if Command::new("getent").args([db, "fnrt-controlplane"]).output().unwrap().status.success() {
            found.push(format!("{db} entry fnrt-controlplane"));
        }
    }
    let overrides = Command::new("dpkg-statoverride").args(["--list", "/etc/fnrt/*"]).output().unwrap();
    found.extend(String::from_utf8_lossy(&overrides.stdout).lines().map(|l| format!("statoverride {l}")));
    for dir in [
        "/etc/systemd/system",
        "/var/lib/systemd/deb-systemd-helper-enabled",
        "/var/lib/systemd/deb-systemd-helper-masked",
    ] {
        let listing = Command::new("find").args([dir, "-name", "fnrt-*"]).output().unwrap();
        found.extend(String::from_utf8_lossy(&listing.stdout).lines().map(str::to_string));
    }
    found
}

/// Purges the packages when dropped, whatever the test did.
struct Purge;

impl Drop for Purge {
    fn drop(&mut self) {
        let _ = Command::new("dpkg").arg("--purge").args(PACKAGES).output();
    }
}

/// The installed unit's `ExecStart`, as argv.
fn exec_start(unit: &str) -> Vec<String> {
    let text = std::fs::read_to_string(format!("/usr/lib/systemd/system/{unit}")).unwrap();
    let line = text.lines().find_map(|l| l.strip_prefix("ExecStart=")).unwrap();
    line.split_whitespace().map(str::to_string).collect()
}

/// The next notification, within `secs`.
async fn notification(socket: &UnixDatagram, secs: u64) -> Option<String> {
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(secs), socket.recv(&mut buf)).await.ok()?.unwrap();
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

fn sigterm(child: &tokio::process::Child) {
    let pid = nix::unistd::Pid::from_raw(child.id().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::SIGTERM).unwrap();
}

/// Runs `argv` with `env`, NOTIFY_SOCKET on a socket of the test's, output to `log`.
fn spawn(argv: &[String], env: &[(String, String)], notify: &Path, log: &Path) -> tokio::process::Child {
    let out = std::fs::File::create(log).unwrap();
    tokio::process::Command::new(&argv[0])
        .args(&argv[1..])
        .envs(env.iter().cloned())
        .env("NOTIFY_SOCKET", notify)
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

async fn exits_cleanly(child: &mut tokio::process::Child, what: &str, log: &Path) {
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
    let log = std::fs::read_to_string(log).unwrap_or_default();
    assert!(
        matches!(status, Ok(Ok(s)) if s.success()),
        "{what} did not exit cleanly on SIGTERM ({status:?}):\n{log}"
    );
}

async fn agent_as_its_unit_says(dir: &Path) {
    let cfg = test_config(dir);
    let env: Vec<(String, String)> = [
        ("CONTAINERD_SOCKET", cfg.containerd_socket.display().to_string()),
        ("NAMESPACE", cfg.namespace.clone()),
        ("SOCKET", cfg.socket.display().to_string()),
        ("STATE_DIR", cfg.state_dir.display().to_string()),
        ("CNI_DATA_DIR", cfg.cni_data_dir().display().to_string()),
        ("BRIDGE", cfg.bridge.clone()),
        ("SUBNET", cfg.subnet.clone()),
        ("DATAPLANE_LISTEN", "127.0.0.1:0".into()),
        ("METRICS_LISTEN", "127.0.0.1:0".into()),
        ("ALLOWED_REGISTRIES", cfg.allowed_registries.join(",")),
        ("SCRATCH_BUDGET_BYTES", cfg.scratch_budget_bytes.to_string()),
        ("LOG_BUDGET_BYTES", cfg.log_budget_bytes.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (format!("FNRT_AGENT_{k}"), v))
    .collect();
    let argv = exec_start("fnrt-agent.service");
    assert_eq!(argv, ["/usr/bin/fnrt-agent", "--config", "/etc/fnrt/agent.toml"]);

    // As an operator would after editing the settings (README): the check passes.
    let check = std::process::Command::new(&argv[0])
        .arg("check-config")
        .args(&argv[1..])
        .envs(env.iter().cloned())
        .output()
        .unwrap();
    assert!(check.status.success(), "fnrt-agent check-config:\n{}", String::from_utf8_lossy(&check.stdout));

    let notify_path = dir.join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    let log = dir.join("agent.log");
    // No containerd: the agent never becomes ready.
    let mut bad_env = env.clone();
    bad_env.push(("FNRT_AGENT_CONTAINERD_SOCKET".into(), dir.join("none.sock").display().to_string()));
    let mut child = spawn(&argv, &bad_env, &notify_path, &log);
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait()).await.unwrap().unwrap();
    assert!(!status.success(), "an agent without containerd must fail");
    assert_eq!(notification(&notify, 1).await, None, "READY=1 from an agent that never served");

    let mut child = spawn(&argv, &env, &notify_path, &log);
    let ready = notification(&notify, 60).await.unwrap_or_else(|| {
        panic!("no READY=1 within 60 s:\n{}", std::fs::read_to_string(&log).unwrap_or_default())
    });
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready}");
    // Ready means serving: the first call is answered, no retry.
    let mut client = connect(&cfg.socket).await;
    let status = client.node_status(NodeStatusRequest {}).await.unwrap().into_inner();
    assert_eq!(status.namespace, cfg.namespace);
    a_function_runs_through_the_installed_agent(&cfg.socket);
    sigterm(&child);
    let stopping = notification(&notify, 10).await.unwrap();
    assert!(stopping.lines().any(|l| l == "STOPPING=1"), "{stopping}");
    exits_cleanly(&mut child, "the agent", &log).await;
    remove_namespace(&real_parts().containerd_socket, &cfg.namespace).await;
}

/// The installed agentctl on the installed agent's `socket`: the echo image's instance
/// started, called and stopped, as an operator would.
fn a_function_runs_through_the_installed_agent(socket: &Path) {
    let agentctl = |args: &[&str]| {
        let out = Command::new("/usr/bin/agentctl").arg("--socket").arg(socket).args(args).output().unwrap();
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        assert!(out.status.success(), "agentctl {args:?}: {}{}", text(&out.stdout), text(&out.stderr));
        text(&out.stdout)
    };
    agentctl(&["instance", "start", "echo", &fnrt_tests::image("echo")]);
    let answer = agentctl(&["invoke", "echo", "--path", "/from-the-package", "-d", "hi"]);
    assert!(answer.contains("/from-the-package") && answer.contains("\"body\":\"hi\""), "{answer}");
    let list: serde_json::Value =
        serde_json::from_str(&agentctl(&["instance", "ls", "--function", "echo", "-o", "json"])).unwrap();
    let ids: Vec<String> = list
        .as_array()
        .or_else(|| list["instances"].as_array())
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 1, "{list}");
    for id in ids {
        agentctl(&["instance", "stop", &id]);
    }
}

async fn controlplane_as_its_unit_says(dir: &Path) {
    let env: Vec<(String, String)> = [
        ("STATE_DIR", dir.join("cp").display().to_string()),
        ("CLUSTER_TOKEN", "c".repeat(32)),
        ("REGISTRY", real_parts().registry),
        ("API_LISTEN", "127.0.0.1:0".into()),
        ("GATEWAY_LISTEN", "127.0.0.1:0".into()),
        ("GRPC_LISTEN", "127.0.0.1:0".into()),
        ("METRICS_LISTEN", "127.0.0.1:0".into()),
    ]
    .into_iter()
    .map(|(k, v)| (format!("FNRT_CP_{k}"), v))
    .collect();
    let argv = exec_start("fnrt-controlplane.service");
    assert_eq!(argv, ["/usr/bin/fnrt-controlplane", "--config", "/etc/fnrt/controlplane.toml"]);
    let notify_path = dir.join("cp-notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    let log = dir.join("cp.log");
    let mut child = spawn(&argv, &env, &notify_path, &log);
    let ready = notification(&notify, 60).await.unwrap_or_else(|| {
        panic!("no READY=1 within 60 s:\n{}", std::fs::read_to_string(&log).unwrap_or_default())
    });
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready}");
    let text = plain(&std::fs::read_to_string(&log).unwrap());
    let api = text.lines().find_map(|l| field(l, "api")).unwrap_or_else(|| panic!("no api= in:\n{text}"));
    let answer = fnrt_tests::http().get(format!("http://{api}/fnrt/v1/replica")).send().await.unwrap();
    assert_eq!(answer.status(), 401, "ready means the API answers (here: no admin token)");
    sigterm(&child);
    let stopping = notification(&notify, 10).await.unwrap();
    assert!(stopping.lines().any(|l| l == "STOPPING=1"), "{stopping}");
    exits_cleanly(&mut child, "the control plane", &log).await;
}

#[tokio::test]
async fn installed_daemons_notify_ready_once_they_serve_and_a_purge_leaves_nothing() {
    for p in PACKAGES {
        assert!(
            !installed(p),
            "{p} is installed on this machine; this test installs and purges the packages: remove them first (dpkg --purge {p})"
        );
    }
    let before = on_node();
    assert!(before.is_empty(), "this machine already has what the packages make: {before:#?}");
    let purge = Purge;
    let debs: Vec<PathBuf> = PACKAGES.iter().map(|p| deb(p)).collect();
    let install = Command::new("dpkg").arg("-i").args(&debs).output().unwrap();
    assert!(
        install.status.success(),
        "dpkg -i: {}{}",
        String::from_utf8_lossy(&install.stdout),
        String::from_utf8_lossy(&install.stderr)
    );

    let verify = Command::new("systemd-analyze")
        .args([
            "verify",
            "/usr/lib/systemd/system/fnrt-agent.service",
            "/usr/lib/systemd/system/fnrt-controlplane.service",
        ])
        .output()
        .unwrap();
    assert!(verify.status.success(), "systemd-analyze verify: {}", String::from_utf8_lossy(&verify.stderr));
    let stat = output(Command::new("stat").args(["-c", "%U:%G %a", "/etc/fnrt/controlplane.toml"]));
    assert_eq!(stat.trim(), "root:fnrt-controlplane 640", "the settings may hold secrets");
    assert!(output(Command::new("/usr/bin/agentctl").arg("--version")).starts_with("agentctl "));

    let dir = tempfile::tempdir().unwrap();
    agent_as_its_unit_says(dir.path()).await;
    controlplane_as_its_unit_says(dir.path()).await;
    // Not under /tmp: the control plane's unit has a /tmp of its own (PrivateTmp=), where
    // systemd would look for the log file of the test's drop-in.
    // (systemd takes only normalized paths: no "..".)
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target").canonicalize().unwrap();
    let dir = tempfile::Builder::new().prefix("package-systemd-").tempdir_in(target).unwrap();
    controlplane_under_systemd(&Systemd::boot(dir.path()), dir.path()).await;
    agent_under_systemd(&Systemd::boot(dir.path()), dir.path()).await;

    drop(purge);
    for p in PACKAGES {
        assert!(!installed(p), "{p} still installed after dpkg --purge");
    }
    let after = on_node();
    assert!(after.is_empty(), "the purge left behind: {after:#?}");
}

/// Masked in the test's systemd (in its own /run): the machine's early-boot and timer
/// units (systemd-tmpfiles-setup, pulled in through sysinit.target, empties /tmp, which
/// this systemd shares with the machine) and the machine's containerd (the agent's unit
/// wants containerd.service; the test's agent uses the test containerd). The test's
/// drop-ins set DefaultDependencies=no, so the units pull none of these targets; the
/// masks make a mistake fail the start instead of touching the machine.
const MASKED: [&str; 8] = [
    "sysinit.target",
    "basic.target",
    "sockets.target",
    "timers.target",
    "paths.target",
    "network-online.target",
    "systemd-tmpfiles-setup.service",
    "containerd.service",
];

/// systemd as PID 1 of a PID and mount namespace of its own (see the file's doc); killed
/// (and everything in its namespace with it) when dropped.
struct Systemd {
    unshare: std::process::Child,
    pid: i32,
}

impl Systemd {
    fn boot(dir: &Path) -> Systemd {
        let script = dir.join("boot.sh");
        let allow = dir.join("policy-rc.d");
        std::fs::write(&allow, "#!/bin/sh\nexit 0\n").unwrap();
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\nset -e\nmount -t proc proc /proc\nmount -t tmpfs tmpfs /run\n\
                 mkdir -p /run/systemd/system\n\
                 printf '[Unit]\\nDescription=empty\\nDefaultDependencies=no\\n' > /run/systemd/system/fnrt-empty.target\n\
                 for u in {MASKED}; do ln -s /dev/null /run/systemd/system/$u; done\n\
                 if [ -e /usr/sbin/policy-rc.d ]; then mount --bind {} /usr/sbin/policy-rc.d; fi\n\
                 export container=fnrt-test\nexec /lib/systemd/systemd --system --unit=fnrt-empty.target\n",
                allow.display(),
                MASKED = MASKED.join(" "),
            ),
        )
        .unwrap();
        for f in [&script, &allow] {
            std::fs::set_permissions(f, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        }
        let log = std::fs::File::create(dir.join("systemd.log")).unwrap();
        let unshare = Command::new("unshare")
            .args(["--pid", "--mount", "--fork", "--propagation", "private"])
            .arg(&script)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let children = format!("/proc/{0}/task/{0}/children", unshare.id());
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let pid = loop {
            let pid = std::fs::read_to_string(&children)
                .ok()
                .and_then(|c| c.split_whitespace().next()?.parse().ok());
            if let Some(pid) = pid {
                break pid;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "unshare started no systemd: {}",
                std::fs::read_to_string(dir.join("systemd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        Systemd::wait_more(Systemd { unshare, pid }, deadline, dir)
    }

    /// `sd` once it runs (its empty target reached).
    fn wait_more(sd: Systemd, deadline: std::time::Instant, dir: &Path) -> Systemd {
        loop {
            let state = sd.run(&["systemctl", "is-system-running"]);
            if ["running", "degraded"].contains(&String::from_utf8_lossy(&state.stdout).trim()) {
                return sd;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "systemd did not come up: {}",
                std::fs::read_to_string(dir.join("systemd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `args` run in systemd's namespaces.
    fn run(&self, args: &[&str]) -> std::process::Output {
        Command::new("nsenter")
            .args(["-t", &self.pid.to_string(), "-m", "-p", "--"])
            .args(args)
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "{args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn show(&self, unit: &str, property: &str) -> String {
        self.ok(&["systemctl", "show", unit, "-p", property, "--value"]).trim().to_string()
    }

    /// A drop-in of `unit` with `body` (in systemd's own /run).
    fn drop_in(&self, dir: &Path, unit: &str, body: &str) {
        let file = dir.join(format!("{unit}.conf"));
        std::fs::write(&file, body).unwrap();
        let target = format!("/run/systemd/system/{unit}.d/test.conf");
        self.ok(&["install", "-D", "-m", "0644", file.to_str().unwrap(), &target]);
        self.ok(&["systemctl", "daemon-reload"]);
    }

    /// Starts `unit` (for Type=notify, `systemctl start` returns once READY=1 came).
    fn start(&self, unit: &str, log: &Path) {
        let out = self.run(&["systemctl", "start", unit]);
        assert!(
            out.status.success(),
            "systemctl start {unit}: {}\n{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.ok(&["journalctl", "-u", unit, "--no-pager"]),
            std::fs::read_to_string(log).unwrap_or_default()
        );
        assert_eq!(self.show(unit, "ActiveState"), "active");
    }

    fn stops_cleanly(&self, unit: &str) {
        self.ok(&["systemctl", "stop", unit]);
        assert_eq!(self.show(unit, "ActiveState"), "inactive");
        assert_eq!(self.show(unit, "Result"), "success", "{unit} did not stop cleanly");
    }
}

impl Drop for Systemd {
    fn drop(&mut self) {
        // The namespace's init: killing it kills everything in the namespace.
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid), nix::sys::signal::SIGKILL);
        let _ = self.unshare.wait();
    }
}

async fn controlplane_under_systemd(sd: &Systemd, dir: &Path) {
    let log = dir.join("cp-systemd.log");
    let body = format!(
        "[Unit]\nDefaultDependencies=no\n[Service]\nEnvironment=FNRT_CP_CLUSTER_TOKEN={} FNRT_CP_REGISTRY={}\n\
         Environment=FNRT_CP_API_LISTEN=127.0.0.1:0 FNRT_CP_GATEWAY_LISTEN=127.0.0.1:0 FNRT_CP_GRPC_LISTEN=127.0.0.1:0 FNRT_CP_METRICS_LISTEN=127.0.0.1:0\n\
         StandardOutput=append:{log}\nStandardError=append:{log}\n",
        "c".repeat(32),
        real_parts().registry,
        log = log.display()
    );
    sd.drop_in(dir, "fnrt-controlplane.service", &body);
    sd.start("fnrt-controlplane.service", &log);
    let status = sd.show("fnrt-controlplane.service", "StatusText");
    let api = status.strip_prefix("serving; API on ").unwrap_or_else(|| panic!("StatusText {status:?}"));
    let pid = sd.show("fnrt-controlplane.service", "MainPID");
    let proc_status = sd.ok(&["cat", &format!("/proc/{pid}/status")]);
    let field = |name: &str| {
        proc_status.lines().find_map(|l| l.strip_prefix(name)).unwrap_or_default().trim().to_string()
    };
    let uid = output(Command::new("id").args(["-u", "fnrt-controlplane"]));
    assert!(field("Uid:").starts_with(uid.trim()), "runs as fnrt-controlplane: {proc_status}");
    assert_eq!(field("CapEff:"), "0000000000000000", "no capabilities");
    assert_eq!(field("NoNewPrivs:"), "1");
    let answer = fnrt_tests::http().get(format!("http://{api}/fnrt/v1/replica")).send().await.unwrap();
    assert_eq!(answer.status(), 401);
    let state = output(Command::new("stat").args(["-c", "%U %a", "/var/lib/fnrt-controlplane/state.redb"]));
    assert_eq!(state.trim(), "fnrt-controlplane 600", "its store in its StateDirectory");
    sd.stops_cleanly("fnrt-controlplane.service");
}

async fn agent_under_systemd(sd: &Systemd, dir: &Path) {
    let cfg = test_config(dir);
    let log = dir.join("agent-systemd.log");
    let body = format!(
        "[Unit]\nDefaultDependencies=no\n[Service]\nEnvironment=FNRT_AGENT_CONTAINERD_SOCKET={} FNRT_AGENT_NAMESPACE={} FNRT_AGENT_BRIDGE={} FNRT_AGENT_SUBNET={}\n\
         Environment=FNRT_AGENT_CNI_DATA_DIR={} FNRT_AGENT_ALLOWED_REGISTRIES={}\n\
         Environment=FNRT_AGENT_DATAPLANE_LISTEN=127.0.0.1:0 FNRT_AGENT_METRICS_LISTEN=127.0.0.1:0\n\
         Environment=FNRT_AGENT_SCRATCH_BUDGET_BYTES={} FNRT_AGENT_LOG_BUDGET_BYTES={}\n\
         StandardOutput=append:{log}\nStandardError=append:{log}\n",
        cfg.containerd_socket.display(),
        cfg.namespace,
        cfg.bridge,
        cfg.subnet,
        cfg.cni_data_dir().display(),
        cfg.allowed_registries.join(","),
        cfg.scratch_budget_bytes,
        cfg.log_budget_bytes,
        log = log.display()
    );
    sd.drop_in(dir, "fnrt-agent.service", &body);
    sd.start("fnrt-agent.service", &log);
    // The unit's own socket (RuntimeDirectory), where agentctl looks without flags.
    let status = sd.ok(&["/usr/bin/agentctl", "node", "status"]);
    assert!(status.contains(&cfg.namespace), "{status}");

    // An upgrade in place (the same package again) restarts a running agent, gracefully.
    let before = sd.show("fnrt-agent.service", "MainPID");
    sd.ok(&["dpkg", "-i", deb("fnrt-agent").to_str().unwrap()]);
    let after = sd.show("fnrt-agent.service", "MainPID");
    assert_ne!(before, after, "the postinst restarts a running agent");
    assert_eq!(sd.show("fnrt-agent.service", "ActiveState"), "active");
    let text = plain(&std::fs::read_to_string(&log).unwrap());
    assert_eq!(text.matches("shutting down; instances keep running").count(), 1, "{text}");
    assert_eq!(text.matches("agent ready").count(), 2, "{text}");
    sd.stops_cleanly("fnrt-agent.service");
    remove_namespace(&real_parts().containerd_socket, &cfg.namespace).await;
}
