//! `fnrt-agent check-config`: the configuration as a start would load it (the binary has
//! validated it by then), then what a start needs of the node, one line each: containerd
//! answers, the CNI plugins and the tools the agent runs are there, its directories are
//! writable, its addresses free, its TLS files usable, and the registries and control
//! planes it names answer. Nothing is changed: no directory made, no containerd
//! namespace touched, no node registered with a control plane.
//!
//! A running agent on the same socket is not an error: its socket and ports are reported
//! in use, so the check can be run on a live node after editing its configuration.

use std::path::Path;
use std::time::Duration;

use fnrt_common::check::{self, Outcome, Report};

use crate::Config;

/// How long containerd has to answer.
const CONTAINERD_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs every check of `cfg`, loaded from `file` and validated.
pub async fn run(cfg: &Config, file: Option<&Path>) -> Report {
    let mut r = Report::default();
    let source = file.map_or_else(|| "(defaults, environment, flags)".into(), |f| f.display().to_string());
    r.push(format!("configuration {source}"), Outcome::Ok("valid".into()));
    r.push(format!("containerd_socket {}", cfg.containerd_socket.display()), containerd(cfg).await);
    r.push(format!("cni_bin_dir {}", cfg.cni_bin_dir.display()), cni_plugins(&cfg.cni_bin_dir));
    r.push("tools", tools(cfg.firewall));
    r.push("sandbox_classes", sandbox_classes(cfg).await);
    r.push(format!("state_dir {}", cfg.state_dir.display()), check::directory(&cfg.state_dir));
    let live = live_agent(&cfg.socket);
    r.push(format!("socket {}", cfg.socket.display()), socket(&cfg.socket, live));
    let held = live.then_some("the running agent");
    r.push(format!("dataplane_listen {}", cfg.dataplane_listen), check::listen(cfg.dataplane_listen, held));
    r.push(format!("metrics_listen {}", cfg.metrics_listen), check::listen(cfg.metrics_listen, held));
    if let Some(addr) = cfg.tcp_listen {
        r.push(format!("tcp_listen {addr}"), check::listen(addr, held));
    }
    let tls = match crate::tcp_api::load_tls(cfg) {
        Ok(tls) => {
            if tls.is_some() {
                r.push("cluster TLS (tls_ca_file, tls_cert_file, tls_key_file)", Outcome::Ok(String::new()));
            }
            tls
        }
        Err(e) => {
            r.push("cluster TLS (tls_ca_file, tls_cert_file, tls_key_file)", Outcome::Error(e.to_string()));
            None
        }
    };
    registries(cfg, &mut r).await;
    let token = cfg.controlplane_token.as_ref().or(cfg.tcp_token.as_ref());
    for url in cfg.controlplane_urls() {
        let token = token.map(|t| t.expose()).unwrap_or_default();
        let outcome = match crate::join::probe(&url, token, &cfg.node_name, tls.as_ref()).await {
            Ok(()) => Outcome::Ok(format!("answers node {:?} with its token", cfg.node_name)),
            Err(e) => Outcome::Error(e),
        };
        r.push(format!("controlplane_url {url}"), outcome);
    }
    r
}

/// containerd answers its version on the socket.
async fn containerd(cfg: &Config) -> Outcome {
    let connect = crate::Containerd::connect(&cfg.containerd_socket, &cfg.namespace);
    match tokio::time::timeout(CONTAINERD_TIMEOUT, async { connect.await?.version().await }).await {
        Ok(Ok(version)) => Outcome::Ok(format!("containerd {version}")),
        Ok(Err(e)) => Outcome::Error(format!(
            "{}; containerd_socket must be the gRPC socket of a running containerd (its config's \
             [grpc] address; Debian's containerd: /run/containerd/containerd.sock)",
            crate::chain(&crate::Error::from(e))
        )),
        Err(_) => Outcome::Error(format!(
            "containerd did not answer within {} s on this socket",
            CONTAINERD_TIMEOUT.as_secs()
        )),
    }
}

/// The classes offered; for gvisor, runsc answers its version.
async fn sandbox_classes(cfg: &Config) -> Outcome {
    let gvisor = cfg.gvisor();
    let classes = match crate::runtime::Classes::resolve(cfg.listed_classes(), &gvisor) {
        Ok(c) => c,
        Err(e) => return Outcome::Error(e.to_string()),
    };
    let names = classes.iter().map(|c| c.as_str()).collect::<Vec<_>>().join(", ");
    if !classes.contains(&fnrt_function::SandboxClass::Gvisor) {
        return Outcome::Ok(format!("{names} (gvisor: no executable {})", gvisor.runsc.display()));
    }
    if gvisor.platform == "kvm" && !Path::new("/dev/kvm").exists() {
        return Outcome::Error("gvisor_platform kvm needs /dev/kvm, which this node does not have".into());
    }
    let version = tokio::process::Command::new(&gvisor.runsc).arg("--version").kill_on_drop(true).output();
    match tokio::time::timeout(CONTAINERD_TIMEOUT, version).await {
        Ok(Ok(out)) if out.status.success() => {
            let text = String::from_utf8_lossy(&out.stdout);
            let first = text.lines().next().unwrap_or_default().trim().to_string();
            Outcome::Ok(format!("{names} (gvisor: {first}, network {})", gvisor.network))
        }
        Ok(Ok(out)) => Outcome::Error(format!("{} --version failed: {}", gvisor.runsc.display(), out.status)),
        Ok(Err(e)) => Outcome::Error(format!("{} --version: {e}", gvisor.runsc.display())),
        Err(_) => Outcome::Error(format!("{} --version did not answer in 5 s", gvisor.runsc.display())),
    }
}

/// Every plugin of [`crate::network::PLUGINS`] is an executable file in `dir`.
fn cni_plugins(dir: &Path) -> Outcome {
    let needed = crate::network::PLUGINS.join(", ");
    let hint = "Debian's containernetworking-plugins installs them in /usr/lib/cni";
    if !dir.is_dir() {
        return Outcome::Error(format!(
            "no such directory; cni_bin_dir must hold the CNI plugins the agent runs ({needed}): {hint}"
        ));
    }
    let missing: Vec<&str> =
        crate::network::PLUGINS.into_iter().filter(|p| !check::executable(&dir.join(p))).collect();
    if missing.is_empty() {
        Outcome::Ok(needed)
    } else {
        Outcome::Error(format!(
            "{} missing or not executable; the agent runs {needed} from cni_bin_dir: {hint}",
            missing.join(", ")
        ))
    }
}

/// The programs the agent runs from `PATH`: mkfs.ext4 and mount for each instance's /tmp,
/// nft for the network policy (when `firewall` is on).
fn tools(firewall: bool) -> Outcome {
    let mut wanted = vec![("mkfs.ext4", "e2fsprogs"), ("mount", "mount")];
    if firewall {
        wanted.push(("nft", "nftables (or set firewall = false)"));
    }
    let missing: Vec<String> = wanted
        .iter()
        .filter(|(program, _)| check::on_path(program).is_none())
        .map(|(program, package)| format!("{program} (Debian's {package})"))
        .collect();
    if missing.is_empty() {
        Outcome::Ok(wanted.iter().map(|(p, _)| *p).collect::<Vec<_>>().join(", "))
    } else {
        Outcome::Error(format!("not found on PATH: {}", missing.join(", ")))
    }
}

/// Whether an agent answers on `socket` now.
fn live_agent(socket: &Path) -> bool {
    std::os::unix::net::UnixStream::connect(socket).is_ok()
}

/// The gRPC socket can be made: its directory is writable, or a live agent holds it.
fn socket(socket: &Path, live: bool) -> Outcome {
    if live {
        return Outcome::InUse("an agent is serving on it; a second one would refuse to start".into());
    }
    match socket.parent() {
        Some(dir) => match check::directory(dir) {
            Outcome::Error(e) => Outcome::Error(format!("the socket's directory: {e}")),
            _ => Outcome::Ok(String::new()),
        },
        None => Outcome::Error("socket must be a file path, e.g. /run/fnrt/agent.sock".into()),
    }
}

/// The registry settings load, and every registry `allowed_registries` names (not `*`)
/// answers `/v2/`.
async fn registries(cfg: &Config, r: &mut Report) {
    let what = "registry settings (registry_auth_file, registry_ca_file)";
    let registry = match crate::registry(cfg) {
        Ok(registry) => registry,
        Err(e) => return r.push(what, Outcome::Error(fnrt_common::chain(&e))),
    };
    if cfg.registry_auth_file.is_some() || cfg.registry_ca_file.is_some() {
        r.push(what, Outcome::Ok(String::new()));
    }
    for name in cfg.allowed_registries.iter().filter(|n| n.as_str() != "*") {
        let outcome = match registry.ping(name).await {
            Ok(status) => Outcome::Ok(format!("/v2/ answered {status}")),
            Err(e) => Outcome::Error(format!(
                "{}; allowed_registries names registries images come from (host or host:port), \
                 and hosts in plain_http_registries are spoken to over HTTP",
                fnrt_common::chain(&e)
            )),
        };
        r.push(format!("registry {name}"), outcome);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cni_plugins_must_all_be_executable_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("none");
        assert!(matches!(cni_plugins(&missing), Outcome::Error(e) if e.contains("no such directory")));
        for p in ["bridge", "loopback"] {
            let f = dir.path().join(p);
            std::fs::write(&f, "").expect("write");
            std::fs::set_permissions(&f, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
        }
        std::fs::write(dir.path().join("host-local"), "").expect("write");
        let e = cni_plugins(dir.path());
        assert!(
            matches!(&e, Outcome::Error(e) if e.starts_with("host-local missing or not executable")),
            "{e:?}"
        );
        std::fs::set_permissions(
            dir.path().join("host-local"),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .expect("chmod");
        assert_eq!(cni_plugins(dir.path()), Outcome::Ok("bridge, host-local, loopback".into()));
    }

    #[tokio::test]
    async fn a_socket_nobody_serves_is_an_error_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = Config { containerd_socket: dir.path().join("containerd.sock"), ..Config::default() };
        let Outcome::Error(e) = containerd(&cfg).await else { panic!("no containerd there") };
        assert!(e.contains("containerd.sock") && e.contains("[grpc] address"), "{e}");
    }

    #[tokio::test]
    async fn a_live_agent_holds_its_socket_and_ports_without_failing_the_check() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("agent.sock");
        assert_eq!(socket(&path, live_agent(&path)), Outcome::Ok(String::new()));
        let _listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        assert!(live_agent(&path));
        assert!(matches!(socket(&path, true), Outcome::InUse(_)));
    }

    #[tokio::test]
    async fn a_registry_that_does_not_answer_is_named() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("port");
        let name = format!("127.0.0.1:{}", port.port());
        let cfg = Config { allowed_registries: vec![name.clone()], ..Config::default() };
        let mut r = Report::default();
        registries(&cfg, &mut r).await;
        let line = r.to_string();
        assert!(
            line.starts_with(&format!("registry {name}: error: registry {name} is unreachable")),
            "{line}"
        );
    }
}
