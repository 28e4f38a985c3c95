//! `fnrt-controlplane check-config`: the configuration validated as a start validates it
//! (all problems at once), then what a start needs, one line each: the state directory,
//! the store, the listen addresses, the cluster TLS files, the registry, NATS and the Go
//! toolchain. Nothing is changed: no directory made, no record written.
//!
//! The redb store is opened read-only, and only when no control plane holds it: a live
//! control plane's file is reported in use (as are its ports), so the check can be run on
//! a running node after editing its configuration. (A control plane that starts in the
//! very millisecond the check reads the file finds it held and fails; start it again.)

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use fnrt_common::check::{self, Outcome, Report};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

use crate::Config;

/// How long a server (etcd, NATS, the running control plane) has to answer.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Runs every check of `cfg`, loaded from `file` and validated.
pub async fn run(cfg: &Config, file: Option<&Path>) -> Report {
    let mut r = Report::default();
    let source = file.map_or_else(|| "(defaults, environment, flags)".into(), |f| f.display().to_string());
    r.push(format!("configuration {source}"), Outcome::Ok("valid".into()));
    r.push(format!("state_dir {}", cfg.state_dir.display()), check::directory(&cfg.state_dir));
    let store = store(cfg).await;
    let in_use = matches!(store, Outcome::InUse(_)) || api_answers(cfg.api_listen).await;
    r.push(format!("store {}", cfg.store), store);
    let held = in_use.then_some("the running control plane");
    for (key, addr) in [
        ("api_listen", cfg.api_listen),
        ("gateway_listen", cfg.gateway_listen),
        ("grpc_listen", cfg.grpc_listen),
        ("metrics_listen", cfg.metrics_listen),
    ] {
        r.push(format!("{key} {addr}"), check::listen(addr, held));
    }
    if cfg.tls_files().is_some() {
        let outcome = match crate::cluster_tls(cfg) {
            Ok(_) => Outcome::Ok(String::new()),
            Err(e) => Outcome::Error(e.to_string()),
        };
        r.push("cluster TLS (tls_ca_file, tls_cert_file, tls_key_file)", outcome);
    }
    r.push(format!("registry {}", cfg.registry), registry(cfg).await);
    if !cfg.nats_url.is_empty() {
        r.push(format!("nats_url {}", cfg.nats_url), nats(&cfg.nats_url).await);
    }
    let go = match crate::build::golang::toolchain() {
        Some(go) => Outcome::Ok(format!("{}: go119 code can be built", go.display())),
        None => Outcome::Ok("not on PATH: go119 functions cannot be built (Debian's golang-go)".into()),
    };
    r.push("go", go);
    r
}

/// The store answers: redb's file opens read-only (or a running control plane holds it,
/// or it is yet to be made); etcd answers at connect.
async fn store(cfg: &Config) -> Outcome {
    if cfg.store == "etcd" {
        let settings = cfg.etcd_settings();
        return match tokio::time::timeout(TIMEOUT, crate::store::EtcdStore::connect(&settings)).await {
            Ok(Ok(_)) => Outcome::Ok(format!("etcd answers at {}", cfg.etcd_endpoints.join(","))),
            Ok(Err(e)) => Outcome::Error(format!(
                "{e}; etcd_endpoints must list the client URLs of a running etcd (http://host:2379, \
                 https:// with etcd_ca_file)"
            )),
            Err(_) => Outcome::Error(format!("etcd did not answer within {} s", TIMEOUT.as_secs())),
        };
    }
    let path = cfg.state_dir.join("state.redb");
    tokio::task::spawn_blocking(move || redb_file(&path))
        .await
        .unwrap_or_else(|e| Outcome::Error(format!("the check of the store failed: {e}")))
}

/// Whether the redb file at `path` can be read, without ever opening it for writing.
fn redb_file(path: &Path) -> Outcome {
    if !path.exists() {
        return Outcome::Ok(format!("{} does not exist yet: made at first start", path.display()));
    }
    match redb::ReadOnlyDatabase::open(path) {
        Ok(db) => {
            drop(db);
            Outcome::Ok(format!("{} opens", path.display()))
        }
        Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
            Outcome::InUse(format!("a running control plane holds {}; not opened", path.display()))
        }
        Err(redb::DatabaseError::RepairAborted) => Outcome::Ok(format!(
            "{} was not closed cleanly: the next start repairs it",
            path.display()
        )),
        Err(e) => Outcome::Error(format!(
            "cannot open {}: {e}; state_dir must hold this control plane's own store (or set store = \"etcd\")",
            path.display()
        )),
    }
}

/// Whether a control plane already answers HTTP on `addr` (its API): then the ports it
/// holds are reported in use, not as taken by another program.
async fn api_answers(addr: SocketAddr) -> bool {
    if addr.port() == 0 {
        return false;
    }
    let ask = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(b"GET /fnrt/v1/replica HTTP/1.0\r\n\r\n").await?;
        let mut head = [0u8; 8];
        s.read_exact(&mut head).await?;
        Ok::<bool, std::io::Error>(head.starts_with(b"HTTP/1."))
    };
    matches!(tokio::time::timeout(Duration::from_secs(2), ask).await, Ok(Ok(true)))
}

/// The registry code images are pushed to answers `/v2/`.
async fn registry(cfg: &Config) -> Outcome {
    let client = match crate::registry(cfg) {
        Ok(c) => c,
        Err(e) => {
            return Outcome::Error(format!(
                "registry settings (registry_auth_file, registry_ca_file): {}",
                fnrt_common::chain(&e)
            ))
        }
    };
    match client.ping(&cfg.registry).await {
        Ok(status) => Outcome::Ok(format!("/v2/ answered {status}")),
        Err(e) => Outcome::Error(format!(
            "{}; registry must be the host:port of an OCI distribution registry (plain HTTP only for \
             hosts in plain_http_registries)",
            fnrt_common::chain(&e)
        )),
    }
}

/// Every server of `url` (`nats://host:port`, comma-separated) greets with NATS's `INFO`.
async fn nats(url: &str) -> Outcome {
    let mut answered = Vec::new();
    for server in url.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let rest = server.split_once("://").map_or(server, |(_, r)| r);
        let host_port = rest.rsplit_once('@').map_or(rest, |(_, h)| h).trim_end_matches('/');
        let addr = if host_port.contains(':') { host_port.to_string() } else { format!("{host_port}:4222") };
        let greet = async {
            let stream = tokio::net::TcpStream::connect(&addr).await?;
            let mut line = String::new();
            tokio::io::BufReader::new(stream).take(64 * 1024).read_line(&mut line).await?;
            Ok::<String, std::io::Error>(line)
        };
        match tokio::time::timeout(TIMEOUT, greet).await {
            Ok(Ok(line)) if line.starts_with("INFO ") => answered.push(addr),
            Ok(Ok(_)) => {
                return Outcome::Error(format!(
                    "{addr} answered, but not as a NATS server (no INFO greeting)"
                ))
            }
            Ok(Err(e)) => {
                return Outcome::Error(format!(
                    "cannot connect to {addr}: {e}; nats_url must name a running NATS server \
                     (nats://host:port), or be empty for no NATS triggers"
                ))
            }
            Err(_) => return Outcome::Error(format!("{addr} did not greet within {} s", TIMEOUT.as_secs())),
        }
    }
    Outcome::Ok(format!("NATS answers at {}", answered.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_store_is_in_use_and_never_opened_and_a_free_one_opens_read_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.redb");
        assert!(matches!(redb_file(&path), Outcome::Ok(d) if d.contains("made at first start")));
        assert!(!path.exists(), "the check makes no store");
        let held = crate::store::RedbStore::open(&path).expect("open");
        let before = std::fs::read(&path).expect("read");
        assert!(matches!(redb_file(&path), Outcome::InUse(d) if d.contains("running control plane")));
        assert_eq!(std::fs::read(&path).expect("read"), before, "the file is untouched");
        drop(held);
        assert!(matches!(redb_file(&path), Outcome::Ok(d) if d.ends_with("opens")));
        std::fs::write(&path, b"not a database").expect("write");
        assert!(matches!(redb_file(&path), Outcome::Error(e) if e.contains("own store")));
    }

    #[tokio::test]
    async fn nats_must_greet_with_info() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            for greeting in [&b"INFO {}\r\n"[..], &b"HTTP/1.1 400\r\n"[..]] {
                let (mut s, _) = listener.accept().await.expect("accept");
                s.write_all(greeting).await.expect("write");
            }
        });
        let url = format!("nats://user:pass@{addr}");
        assert!(matches!(nats(&url).await, Outcome::Ok(_)));
        assert!(matches!(nats(&url).await, Outcome::Error(e) if e.contains("not as a NATS server")));
        server.await.expect("server");
        assert!(matches!(nats(&url).await, Outcome::Error(e) if e.contains("cannot connect")));
    }

    #[tokio::test]
    async fn only_an_http_answer_counts_as_a_running_control_plane() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            s.write_all(b"HTTP/1.1 401 Unauthorized\r\n\r\n").await.expect("write");
        });
        assert!(api_answers(addr).await);
        server.await.expect("server");
        assert!(!api_answers(addr).await, "nobody listens now");
    }
}
