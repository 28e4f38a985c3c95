//! Whether a registry answers at all: `GET /v2/`, the distribution API's base endpoint
//! (`check-config` asks it of the registries a daemon is configured with).

use std::time::Duration;

use reqwest::StatusCode;

use crate::client::{Registry, RegistryError};
use crate::reference::{BadReference, ImageRef};

/// How long a registry has to answer `GET /v2/`.
const PING_TIMEOUT: Duration = Duration::from_secs(10);

/// A registry that did not answer as one.
#[derive(Debug, thiserror::Error)]
pub enum PingError {
    /// The name is not a registry's.
    #[error("{name:?} is not a registry name (host or host:port): {source}")]
    BadName {
        /// The name given.
        name: String,
        /// Why.
        #[source]
        source: BadReference,
    },
    /// The request failed or the answer was not a registry's.
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

impl Registry {
    /// Asks `registry` (`host` or `host:port`) for `/v2/` through the same policy, TLS
    /// roots and plain-HTTP hosts as every pull: 200, or 401 (it wants credentials, which
    /// pulls then present), is a registry's answer and is returned.
    pub async fn ping(&self, registry: &str) -> Result<StatusCode, PingError> {
        let image = ImageRef::parse(&format!("{registry}/fnrt-check"))
            .map_err(|source| PingError::BadName { name: registry.to_string(), source })?;
        self.allows(&image).map_err(RegistryError::from)?;
        let url = format!("{}/v2/", self.origin(&image));
        let registry = image.registry().to_string();
        let resp = self
            .http()
            .get(&url)
            .timeout(PING_TIMEOUT)
            .send()
            .await
            .map_err(|source| RegistryError::Unreachable { registry: registry.clone(), source })?;
        match resp.status() {
            s @ (StatusCode::OK | StatusCode::UNAUTHORIZED) => Ok(s),
            status => Err(RegistryError::Status {
                registry,
                url,
                status,
                detail: ": a registry answers 200 or 401 there (is this an OCI distribution registry?)"
                    .into(),
            }
            .into()),
        }
    }
}
