//! A nats-server of the test's own on a free loopback port, with JetStream, its store in
//! a directory of its own; killed when dropped.

use std::time::{Duration, Instant};

/// The server.
pub struct Nats {
    child: std::process::Child,
    /// `nats://127.0.0.1:<port>`.
    pub url: String,
    _store: tempfile::TempDir,
}

impl Nats {
    /// Starts it and waits until it takes connections.
    pub async fn start() -> Nats {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let store = tempfile::tempdir().unwrap();
        let child = std::process::Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(store.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("nats-server runs (scripts/test installs Debian's nats-server)");
        let url = format!("nats://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            assert!(Instant::now() < deadline, "nats-server did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Nats { child, url, _store: store }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
