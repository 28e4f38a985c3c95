//! Which part of the address space an address is in, for the checks that keep outside
//! input (a registry's redirect, a name that resolves) away from the node's own and its
//! network's services.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The kind of network an address belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Reachable across the internet (documentation ranges included: tests use them).
    Public,
    /// This host: 127.0.0.0/8, ::1, and the unspecified addresses (which connect here).
    Loopback,
    /// 169.254.0.0/16 and fe80::/10, where cloud metadata services live.
    LinkLocal,
    /// RFC 1918, 100.64.0.0/10 (carrier-grade NAT), fc00::/7, 0.0.0.0/8.
    Private,
    /// Multicast and broadcast.
    Multicast,
}

/// The scope of `ip` (an IPv4-mapped IPv6 address by its IPv4 address).
pub fn scope(ip: IpAddr) -> Scope {
    match ip {
        IpAddr::V4(v4) => scope_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => scope_v4(v4),
            None => scope_v6(v6),
        },
    }
}

fn scope_v4(ip: Ipv4Addr) -> Scope {
    let [a, b, ..] = ip.octets();
    if ip.is_loopback() || ip.is_unspecified() {
        Scope::Loopback
    } else if ip.is_link_local() {
        Scope::LinkLocal
    } else if ip.is_private() || a == 0 || (a == 100 && (64..128).contains(&b)) {
        Scope::Private
    } else if ip.is_multicast() || ip.is_broadcast() || a >= 240 {
        Scope::Multicast
    } else {
        Scope::Public
    }
}

fn scope_v6(ip: Ipv6Addr) -> Scope {
    let first = ip.segments()[0];
    if ip.is_loopback() || ip.is_unspecified() {
        Scope::Loopback
    } else if first & 0xffc0 == 0xfe80 {
        Scope::LinkLocal
    } else if first & 0xfe00 == 0xfc00 {
        Scope::Private
    } else if ip.is_multicast() {
        Scope::Multicast
    } else {
        Scope::Public
    }
}

/// The scope of a URL or reference host: an IP literal (IPv6 in brackets or not) by its
/// address, `localhost` as loopback; `None` for other names, which only resolving tells.
pub fn host_scope(host: &str) -> Option<Scope> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Some(scope(ip));
    }
    let lower = host.to_ascii_lowercase();
    (lower == "localhost" || lower.ends_with(".localhost")).then_some(Scope::Loopback)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn addresses_fall_in_their_scopes() {
        for (ip, want) in [
            ("127.0.0.1", Scope::Loopback),
            ("0.0.0.0", Scope::Loopback),
            ("::1", Scope::Loopback),
            ("::ffff:127.0.0.1", Scope::Loopback),
            ("169.254.169.254", Scope::LinkLocal),
            ("fe80::1", Scope::LinkLocal),
            ("10.1.2.3", Scope::Private),
            ("172.16.0.1", Scope::Private),
            ("192.168.1.1", Scope::Private),
            ("100.64.0.1", Scope::Private),
            ("fd00::1", Scope::Private),
            ("224.0.0.1", Scope::Multicast),
            ("255.255.255.255", Scope::Multicast),
            ("8.8.8.8", Scope::Public),
            ("203.0.113.10", Scope::Public),
            ("2001:4860::8888", Scope::Public),
        ] {
            assert_eq!(scope(ip.parse().unwrap()), want, "{ip}");
        }
        assert_eq!(host_scope("[::1]"), Some(Scope::Loopback));
        assert_eq!(host_scope("LocalHost"), Some(Scope::Loopback));
        assert_eq!(host_scope("registry.example.com"), None);
    }
}
