//! A client of the OCI distribution API: manifests and blobs over HTTP.
//!
//! Anonymous access over plain HTTP to loopback registries. HTTPS and authentication come
//! with the image pipeline's hardening; until then such registries get a clear refusal.

use bytes::Bytes;
use futures_util::{Stream, TryStreamExt};
use reqwest::StatusCode;
use sha2::{Digest, Sha256};

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
    /// The registry asked for credentials.
    #[error(
        "registry {registry} requires authentication for {reference}; this agent pulls anonymously only"
    )]
    Unauthorized {
        /// The image asked for.
        reference: String,
        /// host:port of the registry.
        registry: String,
    },
    /// HTTPS registries are not spoken to yet.
    #[error("registry {registry} would need HTTPS, which this agent does not speak yet; use a registry on 127.0.0.1 or localhost")]
    HttpsUnsupported {
        /// host:port of the registry.
        registry: String,
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

/// The registry client. Cheap to clone; connections are pooled.
#[derive(Clone, Debug, Default)]
pub struct Registry {
    http: reqwest::Client,
}

impl Registry {
    /// A client with the agent's user agent.
    pub fn new() -> Registry {
        let http = reqwest::Client::builder()
            .user_agent(concat!("fnrt-agent/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(std::time::Duration::from_secs(10))
            .build()
            .unwrap_or_default();
        Registry { http }
    }

    fn base(&self, image: &ImageRef) -> Result<String, RegistryError> {
        if !image.plain_http() {
            return Err(RegistryError::HttpsUnsupported { registry: image.registry().into() });
        }
        Ok(format!("http://{}/v2/{}", image.registry(), image.repository()))
    }

    async fn get(
        &self,
        image: &ImageRef,
        url: &str,
        accept: &str,
    ) -> Result<reqwest::Response, RegistryError> {
        let registry = image.registry().to_string();
        let resp = self
            .http
            .get(url)
            .header(reqwest::header::ACCEPT, accept)
            .send()
            .await
            .map_err(|source| RegistryError::Unreachable { registry: registry.clone(), source })?;
        match resp.status() {
            s if s.is_success() => Ok(resp),
            StatusCode::NOT_FOUND => Err(RegistryError::NotFound { reference: image.name(), registry }),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                Err(RegistryError::Unauthorized { reference: image.name(), registry })
            }
            status => {
                let body = resp.text().await.unwrap_or_default();
                let body: String = body.chars().take(200).collect();
                Err(RegistryError::Status { registry, url: url.to_string(), status, body })
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
