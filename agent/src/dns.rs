//! Name resolution for instances when egress is `internet`: the name servers (configured,
//! or the node's own from /etc/resolv.conf without loopback ones, which an instance
//! cannot reach), written to `<state_dir>/resolv.conf` and bind-mounted read-only on every
//! instance's /etc/resolv.conf. The network policy lets instances reach these servers on
//! port 53 only, even when they sit in a private range (a cloud's VPC resolver).

use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// The name servers of `resolv_conf` (the text of a resolv.conf) that an instance can
/// reach: IPv4 (instances have no IPv6) and not loopback.
pub fn servers_of(resolv_conf: &str) -> Vec<IpAddr> {
    resolv_conf
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|v| v.trim().parse::<IpAddr>().ok())
        .filter(|ip| ip.is_ipv4() && !ip.is_loopback() && !ip.is_unspecified())
        .collect()
}

/// The servers instances use: `configured`, else the node's.
pub fn servers(configured: &[IpAddr]) -> Vec<IpAddr> {
    if !configured.is_empty() {
        return configured.to_vec();
    }
    servers_of(&std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default())
}

/// Writes the instances' resolv.conf under `state_dir` (replaced atomically); its path.
pub fn write(state_dir: &Path, servers: &[IpAddr]) -> std::io::Result<PathBuf> {
    let mut text = String::from("# Written by fnrt-agent for its instances (egress = \"internet\").\n");
    for s in servers {
        text.push_str(&format!("nameserver {s}\n"));
    }
    let path = state_dir.join("resolv.conf");
    fnrt_common::durable::write(&path, text.as_bytes(), 0o644)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_and_ipv6_servers_are_left_out() {
        let text = "# x\nnameserver 127.0.0.53\nnameserver 10.0.0.2\nnameserver ::1\nnameserver 2001:db8::1\nsearch a\nnameserver 192.0.2.1 \n";
        let want: Vec<IpAddr> =
            vec!["10.0.0.2".parse().unwrap_or(IpAddr::from([0; 4])), IpAddr::from([192, 0, 2, 1])];
        assert_eq!(servers_of(text), want);
    }
}
