//! A host of the test's own on this machine, for what must never reach the real one.
#![allow(clippy::unwrap_used)]

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::process::Command;
use std::time::Duration;

/// A host of the test's own: a network namespace (held by a thread of this test, not
/// under /run/netns) carrying `address`, reached from the node through a veth pair and a
/// /32 route, as an outside address would be; it listens on `address:80`. It is gone,
/// veth pair and route with it, when the thread ends and its sockets are closed. It
/// listens on `address:80` (TCP) and `address:53` (UDP), sockets made in its namespace.
pub struct TestHost {
    /// Its address.
    pub address: Ipv4Addr,
    /// Its TCP listener on `address:80`.
    pub listener: TcpListener,
    /// Its UDP socket on `address:53`.
    pub dns: std::net::UdpSocket,
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Runs a command that must succeed.
pub fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

impl TestHost {
    /// Makes it.
    pub fn start(address: Ipv4Addr) -> TestHost {
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let (ready_tx, ready) = std::sync::mpsc::channel();
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            tid_tx.send(nix::unistd::gettid().as_raw()).unwrap();
            go_rx.recv().unwrap();
            let listener = TcpListener::bind((address, 80)).unwrap();
            let dns = std::net::UdpSocket::bind((address, 53)).unwrap();
            ready_tx.send((listener, dns)).unwrap();
            let _ = stopped.recv();
        });
        let tid = tid_rx.recv_timeout(Duration::from_secs(5)).unwrap().to_string();
        let netns = format!("--net=/proc/{tid}/ns/net");
        let tag = format!("{:04x}", rand::random::<u16>());
        let (outer, inner) = (format!("fnrtth{tag}"), format!("fnrtti{tag}"));
        let addr = address.to_string();
        sh(&["ip", "link", "add", &outer, "type", "veth", "peer", "name", &inner]);
        sh(&["ip", "link", "set", &inner, "netns", &tid]);
        for args in [
            vec!["ip", "link", "set", "lo", "up"],
            vec!["ip", "link", "set", &inner, "up"],
            vec!["ip", "addr", "add", &format!("{addr}/32"), "dev", &inner],
            vec!["ip", "route", "add", "default", "dev", &inner],
        ] {
            sh(&[&["nsenter", &netns][..], &args].concat());
        }
        sh(&["ip", "link", "set", &outer, "up"]);
        sh(&["sysctl", "-q", &format!("net.ipv4.conf.{outer}.proxy_arp=1")]);
        // Another test's host may carry the same address still (tests run side by side):
        // its route goes with it, and this one waits for that, 30 s at most.
        let route = format!("{addr}/32");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let out = Command::new("ip").args(["route", "add", &route, "dev", &outer]).output().unwrap();
            if out.status.success() {
                break;
            }
            let why = String::from_utf8_lossy(&out.stderr);
            assert!(
                why.contains("File exists") && std::time::Instant::now() < deadline,
                "ip route add {route}: {why}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        go_tx.send(()).unwrap();
        let (listener, dns) = ready.recv_timeout(Duration::from_secs(5)).unwrap();
        TestHost { address, listener, dns, stop: Some(stop), thread: Some(thread) }
    }

    /// `address:80`.
    pub fn target(&self) -> SocketAddr {
        SocketAddr::from((self.address, 80))
    }

    /// Removes it (the veth pair and route go with its namespace).
    pub fn remove(mut self) {
        drop(self.stop.take());
        self.thread.take().unwrap().join().unwrap();
    }

    /// Answers the DNS queries that reach it, each with one A record, `answer`, until
    /// `stop` is set.
    pub fn serve_dns(
        &self,
        answer: Ipv4Addr,
        stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ) -> std::thread::JoinHandle<u32> {
        let sock = self.dns.try_clone().unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        std::thread::spawn(move || {
            let mut answered = 0;
            let mut buf = [0u8; 512];
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok((n, from)) = sock.recv_from(&mut buf) else { continue };
                if n < 12 {
                    continue;
                }
                let mut reply = buf[..n].to_vec();
                reply[2..12].copy_from_slice(&[0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0]);
                reply.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
                reply.extend_from_slice(&answer.octets());
                let _ = sock.send_to(&reply, from);
                answered += 1;
            }
            answered
        })
    }
}
