//! Cluster links over mutual TLS: the tonic server and client configurations made from a
//! binary's [`ClusterTls`], and who a caller's verified certificate names. Only the
//! cluster CA is trusted on these links, never the system's roots.

use fnrt_common::pki::{ClusterTls, Peer};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// A server that presents `tls`'s certificate and takes only callers holding a
/// certificate of the cluster CA.
pub fn server(tls: &ClusterTls) -> ServerTlsConfig {
    ServerTlsConfig::new()
        .identity(Identity::from_pem(&tls.cert_pem, &tls.key_pem))
        .client_ca_root(Certificate::from_pem(&tls.ca_pem))
}

/// A client that presents `tls`'s certificate and takes only a server holding a
/// certificate of the cluster CA for `server_name` (none: the endpoint's host).
pub fn client(tls: &ClusterTls, server_name: Option<&str>) -> ClientTlsConfig {
    let c = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&tls.ca_pem))
        .identity(Identity::from_pem(&tls.cert_pem, &tls.key_pem));
    match server_name {
        Some(n) => c.domain_name(n),
        None => c,
    }
}

/// Who the caller of `req` is, by the certificate the TLS layer verified; none on a
/// connection without TLS.
pub fn peer<T>(req: &tonic::Request<T>) -> Option<Peer> {
    let certs = req.peer_certs()?;
    fnrt_common::pki::peer(certs.first()?.as_ref()).ok()
}

/// Whether `endpoint` (`scheme://host:port...`) names this host: a loopback address,
/// `localhost` or a Unix socket. Traffic to it never leaves the machine.
pub fn is_local(endpoint: &str) -> bool {
    if endpoint.starts_with("unix://") {
        return true;
    }
    let Ok(uri) = endpoint.parse::<tonic::transport::Uri>() else {
        return false;
    };
    let Some(host) = uri.host() else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_endpoints() {
        for yes in ["http://127.0.0.1:1", "http://[::1]:2", "https://localhost:3", "unix:///run/a.sock"] {
            assert!(is_local(yes), "{yes}");
        }
        for no in ["http://10.0.0.1:1", "https://cp.example:443", "http://127.0.0.1.example:1", "junk"] {
            assert!(!is_local(no), "{no}");
        }
    }
}
