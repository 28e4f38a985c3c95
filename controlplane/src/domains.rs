//! Custom domains: a host name the gateway routes to a function.

use chrono::Utc;
use serde::Deserialize;

use crate::error::Error;
use crate::model::{check_hostname, Domain};
use crate::state::{Change, State};

/// Scaleway's CreateDomainRequest.
#[derive(Debug, Deserialize)]
pub struct CreateDomain {
    #[serde(default)]
    hostname: Option<String>,
    #[serde(default)]
    function_id: Option<String>,
}

/// Creates a domain; a host name routes to one function only, and never one under
/// `generated` (the domain of the functions' own host names) nor an IP address.
pub async fn create(state: &State, req: CreateDomain, generated: &str) -> Result<Domain, Error> {
    let hostname = req.hostname.ok_or_else(|| Error::invalid("hostname", "a domain needs its hostname"))?;
    check_hostname(&hostname).map_err(|m| Error::invalid("hostname", m))?;
    if hostname == generated || hostname.ends_with(&format!(".{generated}")) {
        let why = format!("{hostname:?} is under {generated:?}, where the functions' own host names are");
        return Err(Error::invalid("hostname", why));
    }
    if hostname.rsplit('.').next().is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit())) {
        return Err(Error::invalid("hostname", format!("{hostname:?} is an IP address, not a host name")));
    }
    let function_id =
        req.function_id.ok_or_else(|| Error::invalid("function_id", "a domain needs its function_id"))?;
    let domain =
        Domain { id: uuid::Uuid::new_v4().to_string(), hostname, function_id, created_at: Utc::now() };
    state
        .write(|d| {
            if !crate::functions::live_in(d, &domain.function_id) {
                return Err(Error::NotFound { resource: "function", id: domain.function_id.clone() });
            }
            if let Some(x) = d.domains.values().find(|x| x.hostname == domain.hostname) {
                return Err(Error::AlreadyExists {
                    resource: "domain",
                    id: x.id.clone(),
                    message: format!(
                        "host name {:?} routes to function {} already (domain {}): delete that domain first",
                        domain.hostname, x.function_id, x.id
                    ),
                });
            }
            Ok((vec![Change::Domain(domain.clone())], domain.clone()))
        })
        .await
}

/// The domain `id`.
pub fn get(state: &State, id: &str) -> Result<Domain, Error> {
    state
        .read(|d| d.domains.get(id).cloned())
        .ok_or_else(|| Error::NotFound { resource: "domain", id: id.to_string() })
}

/// Deletes a domain: the gateway stops routing its host name.
pub async fn delete(state: &State, id: &str) -> Result<Domain, Error> {
    state
        .write(|d| {
            let x = d
                .domains
                .get(id)
                .cloned()
                .ok_or_else(|| Error::NotFound { resource: "domain", id: id.to_string() })?;
            Ok((vec![Change::DeleteDomain(id.to_string())], x))
        })
        .await
}
