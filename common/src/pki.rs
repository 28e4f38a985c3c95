//! The cluster's certificates: a CA the operator makes once (`fnrt-controlplane ca init`),
//! the certificates it issues to nodes, control planes and clients (`ca issue`), the files
//! a binary loads them from, and who a peer's certificate names.
//!
//! A certificate names its holder twice: the common name is the name (a node's is its node
//! name) and the organizational unit its role. Every certificate also carries its name as
//! a DNS subject alternative name, so a control plane dialling a node can verify that the
//! server it reached holds that node's certificate, whatever address the node registered.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, SanType,
};

/// What a certificate's holder is in the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// An agent: serves its API and data plane, joins the control plane.
    Node,
    /// A control plane: serves the join service, calls agents' APIs and data planes.
    ControlPlane,
    /// An operator's or a cluster scheduler's client of the agents' API.
    Client,
}

impl Role {
    /// Its name in certificates and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Node => "node",
            Role::ControlPlane => "controlplane",
            Role::Client => "client",
        }
    }

    /// The role named `s`.
    pub fn parse(s: &str) -> Result<Role, PkiError> {
        match s {
            "node" => Ok(Role::Node),
            "controlplane" => Ok(Role::ControlPlane),
            "client" => Ok(Role::Client),
            _ => Err(PkiError::Bad(format!("role {s:?}: use node, controlplane or client"))),
        }
    }
}

/// Who a verified certificate names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    /// Its role (organizational unit).
    pub role: Role,
    /// Its name (common name).
    pub name: String,
}

/// A certificate and its private key, PEM.
#[derive(Clone)]
pub struct Pair {
    /// The certificate.
    pub cert_pem: String,
    /// The private key (PKCS#8). Never shown by `Debug`.
    pub key_pem: String,
}

impl std::fmt::Debug for Pair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pair(<certificate and key>)")
    }
}

/// Making, issuing or reading certificates failed.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// An input that cannot be.
    #[error("{0}")]
    Bad(String),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// rcgen refused.
    #[error("certificate: {0}")]
    Cert(#[from] rcgen::Error),
}

const CA_DAYS: i64 = 3650;

fn validity(params: &mut CertificateParams, days: i64) {
    let now = time::OffsetDateTime::now_utc();
    // A little back, for clocks a minute behind.
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + time::Duration::days(days);
}

/// Whether `name` can be a node, control plane or client name: 1 to 63 of a-z, 0-9, '-'
/// and '.', starting with a letter or digit (a DNS name, as node names are).
pub fn check_name(name: &str) -> Result<(), PkiError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && name.parse::<IpAddr>().is_err();
    if ok {
        Ok(())
    } else {
        Err(PkiError::Bad(format!(
            "name {name:?} must be 1 to 63 of a-z, 0-9, '-' and '.', start with a letter or digit, and not be an IP address"
        )))
    }
}

/// A new cluster CA named `name`, valid ten years.
pub fn new_ca(name: &str) -> Result<Pair, PkiError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn.push(DnType::OrganizationName, "fnrt cluster");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut params, CA_DAYS);
    let cert = params.self_signed(&key)?;
    Ok(Pair { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

/// A certificate for `name` in `role`, signed by `ca`, valid `days`; `extra` are further
/// subject alternative names (IP addresses or DNS names the holder is reached at).
pub fn issue(ca: &Pair, role: Role, name: &str, extra: &[String], days: u32) -> Result<Pair, PkiError> {
    check_name(name)?;
    if days == 0 {
        return Err(PkiError::Bad("days must be at least 1".into()));
    }
    let ca_key = KeyPair::from_pem(&ca.key_pem)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn.push(DnType::OrganizationalUnitName, role.as_str());
    params.distinguished_name = dn;
    let mut sans = vec![SanType::DnsName(name.try_into()?)];
    for s in extra {
        sans.push(match s.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(
                s.as_str()
                    .try_into()
                    .map_err(|_| PkiError::Bad(format!("{s:?} is neither an IP address nor a DNS name")))?,
            ),
        });
    }
    params.subject_alt_names = sans;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = match role {
        Role::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
        Role::Node | Role::ControlPlane => {
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth]
        }
    };
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, i64::from(days));
    let cert = params.signed_by(&key, &issuer)?;
    Ok(Pair { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

/// Who the DER certificate `der` names: its organizational unit must be a role and its
/// common name a name. Only meaningful for a certificate the TLS layer has verified.
pub fn peer(der: &[u8]) -> Result<Peer, PkiError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| PkiError::Bad(format!("not an X.509 certificate: {e}")))?;
    let subject = cert.subject();
    let one = |it: &mut dyn Iterator<Item = &x509_parser::x509::AttributeTypeAndValue>, what: &str| {
        it.next().and_then(|a| a.as_str().ok()).map(str::to_string).ok_or_else(|| {
            PkiError::Bad(format!(
                "the certificate names no {what}: issue it with `fnrt-controlplane ca issue`"
            ))
        })
    };
    let role = one(&mut subject.iter_organizational_unit(), "role (organizational unit)")?;
    let name = one(&mut subject.iter_common_name(), "name (common name)")?;
    Ok(Peer { role: Role::parse(&role)?, name })
}

/// The first certificate of the PEM text `pem`, DER.
pub fn first_der(pem: &[u8]) -> Result<Vec<u8>, PkiError> {
    CertificateDer::pem_slice_iter(pem)
        .next()
        .and_then(Result::ok)
        .map(|c| c.to_vec())
        .ok_or_else(|| PkiError::Bad("no PEM certificate (-----BEGIN CERTIFICATE-----) found".into()))
}

/// A binary's TLS material on cluster links: the cluster CA, its own certificate and key,
/// and who its certificate names. `Debug` shows no key.
#[derive(Clone)]
pub struct ClusterTls {
    /// The cluster CA's certificate, PEM: the only root trusted on cluster links.
    pub ca_pem: Vec<u8>,
    /// This binary's certificate, PEM.
    pub cert_pem: Vec<u8>,
    /// Its private key, PEM.
    pub key_pem: Vec<u8>,
    /// Who its certificate names.
    pub own: Peer,
}

impl std::fmt::Debug for ClusterTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterTls").field("own", &self.own).finish_non_exhaustive()
    }
}

impl ClusterTls {
    /// Loads the three files; the certificate must be the CA's and name `want`'s role.
    pub fn load(ca: &Path, cert: &Path, key: &Path, want: Role) -> Result<ClusterTls, PkiError> {
        let read =
            |p: &Path| std::fs::read(p).map_err(|source| PkiError::Io { path: p.to_path_buf(), source });
        let (ca_pem, cert_pem, key_pem) = (read(ca)?, read(cert)?, read(key)?);
        let in_file = |p: &Path, e: PkiError| PkiError::Bad(format!("{}: {e}", p.display()));
        let ca_der = first_der(&ca_pem).map_err(|e| in_file(ca, e))?;
        let own_der = first_der(&cert_pem).map_err(|e| in_file(cert, e))?;
        let own = peer(&own_der).map_err(|e| in_file(cert, e))?;
        if own.role != want {
            return Err(PkiError::Bad(format!(
                "{} is a {} certificate; this needs a {} one (fnrt-controlplane ca issue --role {})",
                cert.display(),
                own.role.as_str(),
                want.as_str(),
                want.as_str()
            )));
        }
        signed_by(&own_der, &ca_der).map_err(|e| in_file(cert, e))?;
        KeyPair::from_pem(&String::from_utf8_lossy(&key_pem))
            .map_err(|e| PkiError::Bad(format!("{}: not a PEM private key: {e}", key.display())))?;
        Ok(ClusterTls { ca_pem, cert_pem, key_pem, own })
    }
}

impl ClusterTls {
    fn parts(
        &self,
    ) -> Result<(rustls::RootCertStore, Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), PkiError> {
        let bad = |what: &str, e: String| PkiError::Bad(format!("{what}: {e}"));
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(&self.ca_pem) {
            roots
                .add(c.map_err(|e| bad("cluster CA", e.to_string()))?)
                .map_err(|e| bad("cluster CA", e.to_string()))?;
        }
        let chain = CertificateDer::pem_slice_iter(&self.cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad("certificate", e.to_string()))?;
        let key =
            PrivateKeyDer::from_pem_slice(&self.key_pem).map_err(|e| bad("private key", e.to_string()))?;
        Ok((roots, chain, key))
    }

    /// A rustls server that presents this certificate and takes only callers holding a
    /// certificate of the cluster CA (the caller's role is checked by the server).
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, PkiError> {
        let (roots, chain, key) = self.parts()?;
        let provider = crate::tls::provider();
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|e| PkiError::Bad(format!("client verifier: {e}")))?;
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| PkiError::Bad(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .map_err(|e| PkiError::Bad(format!("certificate and key: {e}")))?;
        Ok(Arc::new(config))
    }

    /// A rustls client that trusts only the cluster CA and presents this certificate.
    pub fn client_config(&self) -> Result<rustls::ClientConfig, PkiError> {
        let (roots, chain, key) = self.parts()?;
        rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| PkiError::Bad(e.to_string()))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|e| PkiError::Bad(format!("certificate and key: {e}")))
    }
}

/// The three cluster TLS settings (`tls_ca_file`, `tls_cert_file`, `tls_key_file`) of a
/// configuration: all set, none (`Ok(None)`), or some, which is an error saying so.
pub fn files<'a>(
    ca: Option<&'a Path>,
    cert: Option<&'a Path>,
    key: Option<&'a Path>,
) -> Result<Option<(&'a Path, &'a Path, &'a Path)>, String> {
    match (ca, cert, key) {
        (Some(ca), Some(cert), Some(key)) => Ok(Some((ca, cert, key))),
        (None, None, None) => Ok(None),
        _ => Err("tls_ca_file, tls_cert_file and tls_key_file go together: set all three or none".into()),
    }
}

/// Whether `cert` (DER) was signed by `ca` (DER), so a wrong CA file is named at start and
/// not as a handshake failure later.
fn signed_by(cert: &[u8], ca: &[u8]) -> Result<(), PkiError> {
    let bad = |e: String| PkiError::Bad(e);
    let (_, cert) = x509_parser::parse_x509_certificate(cert).map_err(|e| bad(e.to_string()))?;
    let (_, ca) = x509_parser::parse_x509_certificate(ca).map_err(|e| bad(e.to_string()))?;
    cert.verify_signature(Some(ca.public_key()))
        .map_err(|_| bad("this certificate was not issued by the configured cluster CA (tls_ca_file)".into()))
}

/// Writes `text` to `path`, which must not exist yet; `private` files are 0600.
pub fn write_new(path: &Path, text: &str, private: bool) -> Result<(), PkiError> {
    let mode = if private { 0o600 } else { 0o644 };
    crate::durable::write_new(path, text.as_bytes(), mode)
        .map_err(|source| PkiError::Io { path: path.to_path_buf(), source })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn issued_certificates_name_their_holder_and_role() {
        let ca = new_ca("test-ca").unwrap();
        let node = issue(&ca, Role::Node, "node-a", &["10.0.0.1".into(), "a.example".into()], 30).unwrap();
        let p = peer(&first_der(node.cert_pem.as_bytes()).unwrap()).unwrap();
        assert_eq!(p, Peer { role: Role::Node, name: "node-a".into() });
        assert!(!format!("{node:?}").contains("PRIVATE"));

        let dir = tempfile::tempdir().unwrap();
        let f = |n: &str| dir.path().join(n);
        write_new(&f("ca.pem"), &ca.cert_pem, false).unwrap();
        write_new(&f("n.pem"), &node.cert_pem, false).unwrap();
        write_new(&f("n.key"), &node.key_pem, true).unwrap();
        assert!(write_new(&f("n.key"), "x", true).is_err(), "an existing file is never overwritten");
        let tls = ClusterTls::load(&f("ca.pem"), &f("n.pem"), &f("n.key"), Role::Node).unwrap();
        assert_eq!(tls.own.name, "node-a");
        assert!(tls.server_config().is_ok() && tls.client_config().is_ok());
        let e = ClusterTls::load(&f("ca.pem"), &f("n.pem"), &f("n.key"), Role::ControlPlane).unwrap_err();
        assert!(e.to_string().contains("is a node certificate"), "{e}");

        let other = new_ca("other").unwrap();
        write_new(&f("other.pem"), &other.cert_pem, false).unwrap();
        let e = ClusterTls::load(&f("other.pem"), &f("n.pem"), &f("n.key"), Role::Node).unwrap_err();
        assert!(e.to_string().contains("not issued by the configured cluster CA"), "{e}");
    }

    #[test]
    fn bad_names_and_roles_say_what_is_allowed() {
        let ca = new_ca("test-ca").unwrap();
        for bad in ["", "Node", "a b", "-x", "1.2.3.4", &"x".repeat(64)] {
            let e = issue(&ca, Role::Node, bad, &[], 30).unwrap_err().to_string();
            assert!(e.contains("must be 1 to 63"), "{bad}: {e}");
        }
        assert!(Role::parse("admin").unwrap_err().to_string().contains("node, controlplane or client"));
        assert!(peer(b"junk").is_err());
    }
}
