//! Which registries may be reached, and where their redirects and token realms may lead.
//!
//! An image reference is outside input: without a policy, `127.0.0.1:2379/x` makes the
//! node send requests to its own services, and a registry's redirect or token realm can
//! point anywhere. The rules:
//! - a registry is reached only when `allowed_registries` lists it (`host` or
//!   `host:port`, exactly as references name it), or when the list holds `*` and its host
//!   is not a loopback, link-local or private address; names that resolve to such
//!   addresses are refused for registries not listed by name (see [`PublicResolver`]);
//! - a redirect may not go from HTTPS to plain HTTP (unless the target host is one the
//!   operator configured for plain HTTP), nor to a loopback, link-local or private address
//!   unless the registry itself is in that same scope; at most 5 redirects;
//! - a token realm must be HTTPS (plain HTTP only when the registry was configured for
//!   it) on the registry's own site (the same address, or the same last two name labels:
//!   `auth.docker.io` for `registry-1.docker.io`).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;

use fnrt_common::net::{host_scope, scope, Scope};

use crate::reference::ImageRef;

/// The most redirects followed for one request.
const MAX_REDIRECTS: usize = 5;

/// The registry policy of one node or control plane.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    /// Registries as references name them (`host` or `host:port`), lowercased.
    listed: HashSet<String>,
    /// `*` was listed: any registry on a public address.
    any_public: bool,
    /// Hosts (without port) spoken to over plain HTTP.
    plain_http_hosts: Vec<String>,
}

/// A registry the policy does not allow.
#[derive(Debug, thiserror::Error)]
#[error("registry {registry} is not allowed here: {reason} (allowed_registries: {allowed})")]
pub struct NotAllowed {
    /// The registry as the reference names it.
    pub registry: String,
    /// Why.
    pub reason: String,
    /// The setting's entries.
    pub allowed: String,
}

impl Policy {
    /// A policy allowing `allowed` (`host`, `host:port` or `*`), speaking plain HTTP to
    /// `plain_http_hosts`.
    pub fn new(allowed: &[String], plain_http_hosts: &[String]) -> Policy {
        let mut listed: HashSet<String> = allowed.iter().map(|a| a.trim().to_ascii_lowercase()).collect();
        let any_public = listed.remove("*");
        let plain_http_hosts = plain_http_hosts.iter().map(|h| h.to_ascii_lowercase()).collect();
        Policy { listed, any_public, plain_http_hosts }
    }

    /// Whether `host` (without port) is spoken to over plain HTTP.
    pub fn plain_http(&self, host: &str) -> bool {
        self.plain_http_hosts.iter().any(|h| h.eq_ignore_ascii_case(host))
    }

    /// Whether `registry` (`host` or `host:port`) is listed by name.
    fn listed(&self, registry: &str) -> bool {
        self.listed.contains(&registry.to_ascii_lowercase())
    }

    /// Allows `image`'s registry, or says why not.
    pub fn check(&self, image: &ImageRef) -> Result<(), NotAllowed> {
        let registry = image.registry();
        if self.listed(registry) {
            return Ok(());
        }
        let reason = if !self.any_public {
            "it is not listed".to_string()
        } else {
            match host_scope(image.host()) {
                None | Some(Scope::Public) => return Ok(()),
                Some(s) => format!("its address is {} and only listed registries may be", scope_name(s)),
            }
        };
        let mut allowed: Vec<&str> = self.listed.iter().map(String::as_str).collect();
        allowed.sort_unstable();
        if self.any_public {
            allowed.push("*");
        }
        let allowed = if allowed.is_empty() { "none".to_string() } else { allowed.join(", ") };
        Err(NotAllowed { registry: registry.to_string(), reason, allowed })
    }

    /// Whether a request that started at `origin` may follow a redirect to `target`.
    pub fn redirect(&self, origin: &reqwest::Url, target: &reqwest::Url, hops: usize) -> Result<(), String> {
        if hops > MAX_REDIRECTS {
            return Err(format!("more than {MAX_REDIRECTS} redirects"));
        }
        let host = target.host_str().unwrap_or("");
        match target.scheme() {
            "https" => {}
            "http" if origin.scheme() == "http" || self.plain_http(host) => {}
            other => return Err(format!("redirect from {origin} to a {other}: URL ({target}) refused")),
        }
        let own = origin.host_str().and_then(host_scope).unwrap_or(Scope::Public);
        match host_scope(host) {
            Some(s) if s != Scope::Public && s != own => Err(format!(
                "redirect to {host}, a {} address, refused: the registry is not there itself",
                scope_name(s)
            )),
            _ => Ok(()),
        }
    }

    /// Whether a registry at `image` may send credentials and token requests to `realm`.
    pub fn realm(&self, image: &ImageRef, realm: &reqwest::Url) -> Result<(), String> {
        let plain_ok = self.plain_http(image.host());
        match realm.scheme() {
            "https" => {}
            "http" if plain_ok => {}
            other => return Err(format!("its token realm {realm} is {other}:, not HTTPS; refused")),
        }
        let host = realm.host_str().unwrap_or("").trim_start_matches('[').trim_end_matches(']');
        let own = image.host().trim_start_matches('[').trim_end_matches(']');
        match site(host) == site(own) {
            true => Ok(()),
            false => {
                Err(format!("its token realm {realm} is not on the registry's own site ({own}); refused"))
            }
        }
    }

    /// A resolver for the client: names of registries not listed by host resolve to
    /// public addresses only.
    pub fn resolver(&self) -> PublicResolver {
        let hosts = self.listed.iter().map(|r| host_of(r).to_string()).collect();
        PublicResolver { listed_hosts: Arc::new(hosts) }
    }
}

/// `host` of `host:port` (an IPv6 literal keeps its brackets).
fn host_of(registry: &str) -> &str {
    match registry.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) && !h.is_empty() => h,
        _ => registry,
    }
}

/// The part of a host name that one owner controls, roughly: an address is its own site,
/// a name is its last two labels.
fn site(host: &str) -> String {
    let lower = host.to_ascii_lowercase();
    if lower.parse::<std::net::IpAddr>().is_ok() {
        return lower;
    }
    let labels: Vec<&str> = lower.trim_end_matches('.').rsplit('.').take(2).collect();
    labels.into_iter().rev().collect::<Vec<_>>().join(".")
}

fn scope_name(s: Scope) -> &'static str {
    match s {
        Scope::Public => "public",
        Scope::Loopback => "loopback",
        Scope::LinkLocal => "link-local",
        Scope::Private => "private",
        Scope::Multicast => "multicast",
    }
}

/// Resolves names with the system's resolver, keeping only public addresses unless a
/// listed registry has that name.
#[derive(Clone, Debug)]
pub struct PublicResolver {
    listed_hosts: Arc<HashSet<String>>,
}

impl reqwest::dns::Resolve for PublicResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_ascii_lowercase();
        let listed = self.listed_hosts.contains(&host);
        Box::pin(async move {
            let all: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let kept: Vec<SocketAddr> =
                all.iter().copied().filter(|a| listed || scope(a.ip()) == Scope::Public).collect();
            if kept.is_empty() && !all.is_empty() {
                let msg = format!(
                    "{host} resolves only to loopback, link-local or private addresses; \
                     a registry there must be listed in allowed_registries"
                );
                return Err(msg.into());
            }
            Ok(Box::new(kept.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn url(s: &str) -> reqwest::Url {
        reqwest::Url::parse(s).unwrap()
    }

    #[test]
    fn registries_are_allowed_when_listed_or_public_under_a_star() {
        let p = Policy::new(&["127.0.0.1:5050".into(), "*".into()], &["127.0.0.1".into()]);
        for ok in ["127.0.0.1:5050/a:b", "ghcr.io/x/y:1", "registry.example.com:8443/a", "8.8.8.8/a"] {
            p.check(&ImageRef::parse(ok).unwrap()).unwrap();
        }
        for (bad, why) in [
            ("127.0.0.1:2379/a", "loopback"),
            ("localhost:5050/a", "loopback"),
            ("169.254.169.254/latest", "link-local"),
            ("10.0.0.1:5000/a", "private"),
        ] {
            let err = p.check(&ImageRef::parse(bad).unwrap()).unwrap_err().to_string();
            assert!(err.contains(why) && err.contains("127.0.0.1:5050, *"), "{bad}: {err}");
        }
        let only = Policy::new(&["127.0.0.1:5050".into()], &[]);
        let err = only.check(&ImageRef::parse("ghcr.io/x/y").unwrap()).unwrap_err().to_string();
        assert!(err.contains("ghcr.io is not allowed here: it is not listed"), "{err}");
        let none = Policy::new(&[], &[]);
        assert!(none
            .check(&ImageRef::parse("ghcr.io/x/y").unwrap())
            .unwrap_err()
            .to_string()
            .contains("none"));
    }

    #[test]
    fn redirects_keep_to_https_and_to_the_registrys_own_scope() {
        let p = Policy::new(&["*".into()], &["plain.example".into()]);
        let public = url("https://registry.example/v2/a/blobs/x");
        p.redirect(&public, &url("https://cdn.example.net/blob"), 1).unwrap();
        for (target, why) in [
            ("http://cdn.example.net/blob", "http:"),
            ("https://127.0.0.1:2379/", "loopback"),
            ("https://169.254.169.254/latest/meta-data", "link-local"),
            ("https://10.0.0.7/", "private"),
            ("https://[::1]/", "loopback"),
            ("https://localhost/", "loopback"),
            ("file:///etc/passwd", "file:"),
        ] {
            let err = p.redirect(&public, &url(target), 1).unwrap_err();
            assert!(err.contains(why), "{target}: {err}");
        }
        assert!(p
            .redirect(&public, &url("https://cdn.example.net/"), 6)
            .unwrap_err()
            .contains("more than 5"));
        p.redirect(&public, &url("http://plain.example/blob"), 1).unwrap();
        let local = url("http://127.0.0.1:5050/v2/a/blobs/x");
        p.redirect(&local, &url("http://127.0.0.1:9999/blob"), 1).unwrap();
        let err = p.redirect(&local, &url("http://169.254.169.254/"), 1).unwrap_err();
        assert!(err.contains("link-local"), "{err}");
    }

    #[test]
    fn token_realms_are_https_on_the_registrys_own_site() {
        let p = Policy::new(&["*".into()], &["127.0.0.1".into()]);
        let hub = ImageRef::parse("registry-1.docker.io/library/alpine").unwrap();
        p.realm(&hub, &url("https://auth.docker.io/token")).unwrap();
        let err = p.realm(&hub, &url("http://auth.docker.io/token")).unwrap_err();
        assert!(err.contains("not HTTPS"), "{err}");
        let err = p.realm(&hub, &url("https://evil.example/token")).unwrap_err();
        assert!(err.contains("not on the registry's own site"), "{err}");
        let local = ImageRef::parse("127.0.0.1:5050/a").unwrap();
        p.realm(&local, &url("http://127.0.0.1:6000/token")).unwrap();
        assert!(p.realm(&local, &url("http://127.0.0.2:6000/token")).is_err());
    }
}
