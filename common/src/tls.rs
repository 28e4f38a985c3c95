//! HTTPS clients with an explicit crypto provider (ring) and the system's trust roots,
//! plus any the operator adds.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

/// The TLS set-up failed.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The extra trust roots are not PEM certificates.
    #[error("extra trust roots: {0}; give PEM certificates (-----BEGIN CERTIFICATE-----)")]
    Roots(String),
    /// The system's trust store or the TLS configuration could not be set up.
    #[error("TLS set-up: {0}")]
    Setup(String),
}

/// The crypto every fnrt TLS connection uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Makes ring the process's default crypto provider, for code that builds TLS
/// configurations without naming one. Binaries call it first thing; a second call (or a
/// provider installed before) changes nothing.
pub fn install_default_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A client TLS configuration: ring, TLS 1.2 and 1.3, the platform's roots and
/// `extra_roots_pem` (PEM certificates; may be empty).
pub fn client_config(extra_roots_pem: &[u8]) -> Result<rustls::ClientConfig, TlsError> {
    let mut extra = Vec::new();
    if !extra_roots_pem.is_empty() {
        for cert in CertificateDer::pem_slice_iter(extra_roots_pem) {
            extra.push(cert.map_err(|e| TlsError::Roots(e.to_string()))?);
        }
        if extra.is_empty() {
            return Err(TlsError::Roots("no certificate found".into()));
        }
    }
    let provider = provider();
    let verifier = rustls_platform_verifier::Verifier::new_with_extra_roots(extra, provider.clone())
        .map_err(|e| TlsError::Setup(e.to_string()))?;
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Setup(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth())
}

/// A reqwest client builder whose TLS is [`client_config`]: use it for every HTTP client
/// (clippy refuses `reqwest::Client::new` and `reqwest::Client::builder` in this
/// workspace, since they need a process-wide provider).
pub fn http_client(extra_roots_pem: &[u8]) -> Result<reqwest::ClientBuilder, TlsError> {
    #[allow(clippy::disallowed_methods)]
    let builder = reqwest::Client::builder();
    Ok(builder.tls_backend_preconfigured(client_config(extra_roots_pem)?))
}

/// A plain client ([`http_client`] with the system's roots only), built.
pub fn default_http_client() -> Result<reqwest::Client, TlsError> {
    http_client(&[])?.build().map_err(|e| TlsError::Setup(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Built in a process where no default provider was installed (unit tests of this
    /// crate install none): building must not panic.
    #[test]
    fn clients_build_without_a_process_default_provider() {
        assert!(CryptoProvider::get_default().is_none());
        let client = default_http_client();
        assert!(client.is_ok(), "{:?}", client.err());
        assert!(CryptoProvider::get_default().is_none(), "building a client installed nothing");
    }

    #[test]
    fn bad_extra_roots_say_what_is_wanted() {
        let e = client_config(b"not a certificate").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("PEM certificates"), "{e}");
    }
}
