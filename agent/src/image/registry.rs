//! A client of the OCI distribution API: manifests and blobs over HTTP.
//!
//! HTTPS (rustls, the system's roots plus any CA the operator adds) for every registry
//! but those listed as plain HTTP (by default the loopback hosts). Registries that ask
//! for authentication get it (see [`super::auth`]).

use bytes::Bytes;
use futures_util::{Stream, TryStreamExt};
use reqwest::StatusCode;
use sha2::{Digest, Sha256};

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::auth::{self, Challenge, Credentials};
use super::reference::ImageRef;

/// Media types the agent asks for and understands.
pub const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
     application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.docker.distribution.manifest.v2+json";

/// A failure to get something from a registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The registry did not answer at all.
    #[error("registry {registry} is unreachable: {source}")]
    Unreachable {
        /// host:port of the registry.
        registry: String,
        /// The connection error.
        #[source]
        source: reqwest::Error,
    },
    /// The registry does not have the image.
    #[error("image {reference} not found in registry {registry}")]
    NotFound {
        /// The image asked for.
        reference: String,
        /// host:port of the registry.
        registry: String,
    },
    /// The registry asked for credentials that the agent does not have, or refused them.
    #[error("registry {registry} refused access to {reference}: {reason}")]
    Unauthorized {
        /// The image asked for.
        reference: String,
        /// host:port of the registry.
        registry: String,
        /// What happened (never a secret).
        reason: String,
    },
    /// Any other answer than the expected one.
    #[error("registry {registry} answered {status} for {url}: {body}")]
    Status {
        /// host:port of the registry.
        registry: String,
        /// The URL asked.
        url: String,
        /// The HTTP status.
        status: StatusCode,
        /// The start of the answer's body.
        body: String,
    },
    /// The connection broke while reading.
    #[error("reading {url} from registry {registry}: {source}")]
    Read {
        /// host:port of the registry.
        registry: String,
        /// The URL being read.
        url: String,
        /// The error.
        #[source]
        source: reqwest::Error,
    },
}

/// A manifest or index as the registry sent it.
pub struct RawManifest {
    /// The exact bytes (their sha256 is the digest).
    pub bytes: Bytes,
    /// `sha256:<hex>` of the bytes.
    pub digest: String,
}

/// How the agent reaches registries.
#[derive(Clone, Debug, Default)]
pub struct RegistrySettings {
    /// Credentials per registry host (host:port).
    pub credentials: HashMap<String, Credentials>,
    /// CA certificates trusted besides the system's, PEM.
    pub extra_roots_pem: Vec<u8>,
    /// Hosts (without port) spoken to over plain HTTP.
    pub plain_http_hosts: Vec<String>,
}

/// The registry client cannot be set up.
#[derive(Debug, thiserror::Error)]
#[error("registry TLS set-up (registry_ca_file): {0}")]
pub struct TlsSetupError(String);

/// The registry client. Cheap to clone; connections are pooled.
#[derive(Clone, Debug)]
pub struct Registry {
    http: reqwest::Client,
    credentials: Arc<HashMap<String, Credentials>>,
    plain_http_hosts: Arc<Vec<String>>,
    /// The `Authorization` value that worked, per registry and repository.
    authorized: Arc<Mutex<HashMap<String, String>>>,
}

impl Registry {
    /// A client with the agent's user agent and `settings`.
    pub fn new(settings: RegistrySettings) -> Result<Registry, TlsSetupError> {
        // The crypto provider is named in the TLS configuration: no process-wide one needed.
        let http = fnrt_common::tls::http_client(&settings.extra_roots_pem)
            .map_err(|e| TlsSetupError(e.to_string()))?
            .user_agent(concat!("fnrt-agent/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(std::time::Duration::from_secs(10))
            .build()
            .map_err(|e| TlsSetupError(e.to_string()))?;
        Ok(Registry {
            http,
            credentials: Arc::new(settings.credentials),
            plain_http_hosts: Arc::new(settings.plain_http_hosts),
            authorized: Arc::default(),
        })
    }

    fn base(&self, image: &ImageRef) -> Result<String, RegistryError> {
        let scheme = if self.plain_http_hosts.iter().any(|h| h == image.host()) { "http" } else { "https" };
        Ok(format!("{scheme}://{}/v2/{}", image.registry(), image.repository()))
    }

    async fn send(
        &self,
        image: &ImageRef,
        url: &str,
        accept: &str,
        authorization: Option<&str>,
    ) -> Result<reqwest::Response, RegistryError> {
        let mut req = self.http.get(url).header(reqwest::header::ACCEPT, accept);
        if let Some(a) = authorization {
            req = req.header(reqwest::header::AUTHORIZATION, a);
        }
        req.send()
            .await
            .map_err(|source| RegistryError::Unreachable { registry: image.registry().to_string(), source })
    }

    async fn get(
        &self,
        image: &ImageRef,
        url: &str,
        accept: &str,
    ) -> Result<reqwest::Response, RegistryError> {
        let key = format!("{}/{}", image.registry(), image.repository());
        let known = self.authorized.lock().unwrap_or_else(|p| p.into_inner()).get(&key).cloned();
        let mut resp = self.send(image, url, accept, known.as_deref()).await?;
        if resp.status() == StatusCode::UNAUTHORIZED {
            let challenge = resp
                .headers()
                .get(reqwest::header::WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .and_then(auth::parse_challenge);
            let authorization = self.authorize(image, challenge).await?;
            resp = self.send(image, url, accept, Some(&authorization)).await?;
            if resp.status() == StatusCode::UNAUTHORIZED {
                return Err(self.unauthorized(image, "the credentials for it were refused"));
            }
            self.authorized.lock().unwrap_or_else(|p| p.into_inner()).insert(key, authorization);
        }
        let registry = image.registry().to_string();
        match resp.status() {
            s if s.is_success() => Ok(resp),
            StatusCode::NOT_FOUND => Err(RegistryError::NotFound { reference: image.name(), registry }),
            StatusCode::FORBIDDEN => Err(self.unauthorized(image, "it answered 403 Forbidden")),
            status => {
                let body = resp.text().await.unwrap_or_default();
                let body: String = body.chars().take(200).collect();
                Err(RegistryError::Status { registry, url: url.to_string(), status, body })
            }
        }
    }

    fn unauthorized(&self, image: &ImageRef, reason: &str) -> RegistryError {
        RegistryError::Unauthorized {
            reference: image.name(),
            registry: image.registry().into(),
            reason: reason.into(),
        }
    }

    /// The `Authorization` value that answers `challenge`.
    async fn authorize(
        &self,
        image: &ImageRef,
        challenge: Option<Challenge>,
    ) -> Result<String, RegistryError> {
        let creds = self.credentials.get(image.registry());
        let no_creds =
            "it asks for credentials and the agent's registry_auth_file has none for this registry";
        match challenge {
            None => Err(self.unauthorized(image, "it answered 401 without a Basic or Bearer challenge")),
            Some(Challenge::Basic) => {
                creds.map(Credentials::basic_header).ok_or_else(|| self.unauthorized(image, no_creds))
            }
            Some(Challenge::Bearer { realm, service, scope }) => {
                let scope = scope.unwrap_or_else(|| format!("repository:{}:pull", image.repository()));
                let mut query = vec![("scope", scope)];
                if let Some(service) = service {
                    query.push(("service", service));
                }
                let url = reqwest::Url::parse_with_params(&realm, &query).map_err(|e| {
                    self.unauthorized(image, &format!("its token realm {realm:?} is not a URL: {e}"))
                })?;
                let mut req = self.http.get(url);
                if let Some(c) = creds {
                    req = req.header(reqwest::header::AUTHORIZATION, c.basic_header());
                }
                let resp = req
                    .send()
                    .await
                    .map_err(|source| RegistryError::Unreachable { registry: realm.clone(), source })?;
                if !resp.status().is_success() {
                    let reason = match (resp.status(), creds) {
                        (StatusCode::UNAUTHORIZED, None) => no_creds.to_string(),
                        (status, _) => format!("its token server {realm} answered {status}"),
                    };
                    return Err(self.unauthorized(image, &reason));
                }
                let bytes = resp.bytes().await.map_err(|source| RegistryError::Read {
                    registry: image.registry().into(),
                    url: realm.clone(),
                    source,
                })?;
                let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
                let token = body.get("token").or_else(|| body.get("access_token")).and_then(|t| t.as_str());
                token.map(|t| format!("Bearer {t}")).ok_or_else(|| {
                    self.unauthorized(image, &format!("its token server {realm} sent no token"))
                })
            }
        }
    }

    /// Fetches a manifest or index by tag or digest.
    pub async fn manifest(&self, image: &ImageRef, reference: &str) -> Result<RawManifest, RegistryError> {
        let url = format!("{}/manifests/{reference}", self.base(image)?);
        let resp = self.get(image, &url, ACCEPT).await?;
        let bytes = resp.bytes().await.map_err(|source| RegistryError::Read {
            registry: image.registry().into(),
            url,
            source,
        })?;
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
        Ok(RawManifest { bytes, digest })
    }

    /// Opens a blob for streaming.
    pub async fn blob(
        &self,
        image: &ImageRef,
        digest: &str,
    ) -> Result<impl Stream<Item = Result<Bytes, RegistryError>> + use<>, RegistryError> {
        let url = format!("{}/blobs/{digest}", self.base(image)?);
        let resp = self.get(image, &url, "*/*").await?;
        let registry = image.registry().to_string();
        Ok(resp.bytes_stream().map_err(move |source| RegistryError::Read {
            registry: registry.clone(),
            url: url.clone(),
            source,
        }))
    }
}
