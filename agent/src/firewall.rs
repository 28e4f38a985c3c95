//! The node's network policy for instances, in nftables (`nft`, Debian's nftables).
//!
//! One `inet` table per function bridge, `fnrt_<bridge>`, replaced as a whole (one `nft -f`
//! transaction) every time an agent starts, so it is always what this code says: packets
//! from the bridge to the host itself (any of its addresses) are dropped unless they answer
//! a connection the host opened (the data plane's and health checks' calls to :9000);
//! packets the host would route from the bridge are dropped when they go to private,
//! loopback, link-local (metadata), shared, multicast or reserved ranges, and to the
//! outside unless egress is `internet` (then masqueraded); nothing is routed into the
//! bridge but answers. Instances on one bridge do not reach each other at layer 2 either:
//! every port of the bridge is isolated (see `network`), which needs no kernel module that
//! nftables' bridge family would (`meta ibrname`).
//!
//! The table is left when the agent stops (like the bridge, other agents on the node may
//! use it); `scripts/demo down` and the test suite's scrub remove it.

use std::process::Stdio;

use tokio::io::AsyncWriteExt;

/// Where instances may connect to beyond the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Egress {
    /// Nowhere.
    None,
    /// Public addresses, masqueraded behind the node's.
    Internet,
}

/// Ranges an instance never reaches through the node, whatever the egress.
const FORBIDDEN_V4: &[&str] = &[
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "224.0.0.0/3",
];

/// The policy could not be installed or removed.
#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    /// nft could not be run.
    #[error("cannot run nft ({source}); install Debian's nftables package, or set firewall = false on a node whose instances need no isolation")]
    Missing {
        /// Why.
        source: std::io::Error,
    },
    /// nft refused the rules.
    #[error("nft refused the instances' network policy for bridge {bridge}: {stderr}")]
    Refused {
        /// The bridge.
        bridge: String,
        /// What nft said.
        stderr: String,
    },
}

/// The network policy of one function bridge.
#[derive(Clone, Debug)]
pub struct Firewall {
    bridge: String,
    subnet: String,
    egress: Egress,
    dns: Vec<std::net::IpAddr>,
}

impl Firewall {
    /// The policy of `bridge` (carrying `subnet`).
    pub fn new(bridge: &str, subnet: &str, egress: Egress) -> Firewall {
        Firewall { bridge: bridge.to_string(), subnet: subnet.to_string(), egress, dns: Vec::new() }
    }

    /// Lets instances reach `servers` on port 53 (UDP and TCP) when egress is `internet`,
    /// whatever range they are in.
    pub fn with_dns(mut self, servers: &[std::net::IpAddr]) -> Firewall {
        self.dns = servers.iter().filter(|s| s.is_ipv4()).copied().collect();
        self
    }

    /// The name of the table.
    pub fn table(bridge: &str) -> String {
        format!("fnrt_{}", bridge.replace(['-', '.'], "_"))
    }

    /// The nft script that replaces the table.
    pub fn script(&self) -> String {
        let (t, b, s) = (Self::table(&self.bridge), &self.bridge, &self.subnet);
        let forbidden = FORBIDDEN_V4.join(", ");
        let (egress, nat) = match self.egress {
            Egress::None => ("drop", String::new()),
            Egress::Internet => (
                "accept",
                format!(
                    "  chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n    \
                     ip saddr {s} oifname != \"{b}\" masquerade\n  }}\n"
                ),
            ),
        };
        let dns = match (self.egress, self.dns.is_empty()) {
            (Egress::Internet, false) => {
                let servers = self.dns.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
                format!("iifname \"{b}\" ip daddr {{ {servers} }} meta l4proto {{ tcp, udp }} th dport 53 accept\n    ")
            }
            _ => String::new(),
        };
        format!(
            "table inet {t}\ndelete table inet {t}\n\
             table inet {t} {{\n  set forbidden {{\n    type ipv4_addr; flags interval;\n    elements = {{ {forbidden} }}\n  }}\n  \
             chain input {{\n    type filter hook input priority filter; policy accept;\n    \
             iifname \"{b}\" ct state established,related accept\n    iifname \"{b}\" drop\n  }}\n  \
             chain forward {{\n    type filter hook forward priority filter; policy accept;\n    \
             oifname \"{b}\" ct state established,related accept\n    oifname \"{b}\" drop\n    \
             {dns}iifname \"{b}\" ip daddr @forbidden drop\n    iifname \"{b}\" meta nfproto ipv6 drop\n    \
             iifname \"{b}\" {egress}\n  }}\n{nat}}}\n"
        )
    }

    /// Installs (or replaces) the policy, in one transaction.
    pub async fn install(&self) -> Result<(), FirewallError> {
        nft(&self.bridge, &self.script()).await
    }
}

async fn nft(bridge: &str, script: &str) -> Result<(), FirewallError> {
    let mut child = tokio::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| FirewallError::Missing { source })?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(script.as_bytes()).await;
    }
    let out = child.wait_with_output().await.map_err(|source| FirewallError::Missing { source })?;
    if out.status.success() {
        return Ok(());
    }
    Err(FirewallError::Refused {
        bridge: bridge.to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_isolates_the_bridge_and_opens_egress_only_when_asked() {
        let none = Firewall::new("fnrt-test0", "10.202.0.0/16", Egress::None).script();
        assert!(none.contains("table inet fnrt_fnrt_test0 {"), "{none}");
        assert!(none.contains("169.254.0.0/16"), "{none}");
        assert!(none.contains("iifname \"fnrt-test0\" drop\n  }"), "{none}");
        assert!(!none.contains("masquerade"), "{none}");
        let open = Firewall::new("fnrt0", "10.201.0.0/16", Egress::Internet).script();
        assert!(open.contains("iifname \"fnrt0\" accept"), "{open}");
        assert!(open.contains("ip saddr 10.201.0.0/16 oifname != \"fnrt0\" masquerade"), "{open}");
        let dns = Firewall::new("fnrt0", "10.201.0.0/16", Egress::Internet)
            .with_dns(&["10.0.0.2".parse().unwrap_or(std::net::IpAddr::from([0; 4]))])
            .script();
        let accept = dns.find("ip daddr { 10.0.0.2 } meta l4proto { tcp, udp } th dport 53 accept");
        assert!(accept.is_some_and(|a| dns.find("@forbidden drop").is_some_and(|f| a < f)), "{dns}");
        let closed = Firewall::new("fnrt0", "10.201.0.0/16", Egress::None)
            .with_dns(&[std::net::IpAddr::from([10, 0, 0, 2])]);
        assert!(!closed.script().contains("dport 53"), "no DNS without egress");
    }
}
