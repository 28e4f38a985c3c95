//! A client of the OCI distribution API: manifests and blobs over HTTP.
//!
//! HTTPS (rustls, the system's roots plus any CA the operator adds) for every registry
//! but those listed as plain HTTP (by default the loopback hosts). Registries that ask
//! for authentication get it (see [`crate::auth`]).

use bytes::Bytes;
use futures_util::{Stream, TryStreamExt};
use reqwest::StatusCode;
use sha2::{Digest, Sha256};

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::auth::{self, Challenge, Credentials};
use crate::policy::{NotAllowed, Policy};
use crate::reference::ImageRef;

/// The largest manifest or index read (what containerd allows too).
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;

/// The largest token server answer read.
const MAX_TOKEN_BYTES: u64 = 64 << 10;

/// The longest a request for something small (a manifest, a config, a token) may take.
const SMALL_TIMEOUT: Duration = Duration::from_secs(60);

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
    #[error("registry {registry} answered {status} for {url}{detail}")]
    Status {
        /// host:port of the registry.
        registry: String,
        /// The URL asked.
        url: String,
        /// The HTTP status.
        status: StatusCode,
        /// What else was wrong, as the client saw it (never the registry's own words).
        detail: String,
    },
    /// The registry's policy refuses it.
    #[error(transparent)]
    NotAllowed(#[from] NotAllowed),
    /// A redirect the policy refuses.
    #[error("registry {registry}: {reason}")]
    Redirect {
        /// host:port of the registry.
        registry: String,
        /// Why.
        reason: String,
    },
    /// An answer larger than the client reads.
    #[error("registry {registry} sent more than {limit} bytes for {url}; refused")]
    TooLarge {
        /// host:port of the registry.
        registry: String,
        /// The URL asked.
        url: String,
        /// The limit.
        limit: u64,
    },
    /// A blob whose bytes do not have its digest.
    #[error("registry {registry} sent bytes for {url} that do not hash to {digest}")]
    Digest {
        /// host:port of the registry.
        registry: String,
        /// The URL asked.
        url: String,
        /// The digest asked for.
        digest: String,
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
    /// A local file to upload could not be read.
    #[error("reading {path} to upload it: {source}")]
    File {
        /// The file.
        path: std::path::PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// A manifest or index as the registry sent it.
pub struct RawManifest {
    /// The exact bytes (their sha256 is the digest).
    pub bytes: Bytes,
    /// `sha256:<hex>` of the bytes.
    pub digest: String,
    /// The media type the registry named (`Content-Type`), when it named one.
    pub media_type: Option<String>,
}

/// How registries are reached.
#[derive(Clone, Debug)]
pub struct RegistrySettings {
    /// Credentials per registry host (host:port).
    pub credentials: HashMap<String, Credentials>,
    /// CA certificates trusted besides the system's, PEM.
    pub extra_roots_pem: Vec<u8>,
    /// Hosts (without port) spoken to over plain HTTP.
    pub plain_http_hosts: Vec<String>,
    /// Registries that may be reached (see [`crate::policy`]).
    pub allowed_registries: Vec<String>,
    /// How long a transfer may go without a byte before it is given up.
    pub idle_timeout: Duration,
    /// How long one blob's transfer may take in all.
    pub transfer_timeout: Duration,
}

impl Default for RegistrySettings {
    fn default() -> RegistrySettings {
        RegistrySettings {
            credentials: HashMap::new(),
            extra_roots_pem: Vec::new(),
            plain_http_hosts: Vec::new(),
            allowed_registries: Vec::new(),
            idle_timeout: Duration::from_secs(30),
            transfer_timeout: Duration::from_secs(600),
        }
    }
}

/// Registry settings that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The credentials file is unusable.
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthFileError),
    /// The CA file cannot be read.
    #[error("registry_ca_file {path}: {source}")]
    Ca {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl RegistrySettings {
    /// Settings from an operator's configuration: a credentials file in Docker's
    /// `config.json` format, a PEM file of CAs trusted besides the system's, and the
    /// hosts (without port) spoken to over plain HTTP.
    pub fn load(
        auth_file: Option<&std::path::Path>,
        ca_file: Option<&std::path::Path>,
        plain_http_hosts: Vec<String>,
    ) -> Result<RegistrySettings, SettingsError> {
        let credentials = match auth_file {
            Some(path) => crate::auth::load(path)?,
            None => HashMap::new(),
        };
        let extra_roots_pem = match ca_file {
            Some(path) => std::fs::read(path)
                .map_err(|source| SettingsError::Ca { path: path.display().to_string(), source })?,
            None => Vec::new(),
        };
        Ok(RegistrySettings { credentials, extra_roots_pem, plain_http_hosts, ..RegistrySettings::default() })
    }
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
    policy: Arc<Policy>,
    transfer_timeout: Duration,
    /// The `Authorization` value that worked, per credentials, registry and repository.
    authorized: Arc<Mutex<HashMap<String, String>>>,
    /// Whose credentials this client answers challenges with: empty for the node's file,
    /// else a digest of one caller's (see [`Registry::with_credentials`]). Keys the cache
    /// of authorizations, so one caller's token never serves another's request.
    identity: String,
}

impl Registry {
    /// A client with `settings`, naming itself `user_agent`.
    pub fn new(settings: RegistrySettings, user_agent: &str) -> Result<Registry, TlsSetupError> {
        let policy = Arc::new(Policy::new(&settings.allowed_registries, &settings.plain_http_hosts));
        let redirects = policy.clone();
        // The crypto provider is named in the TLS configuration: no process-wide one needed.
        let http = fnrt_common::tls::http_client(&settings.extra_roots_pem)
            .map_err(|e| TlsSetupError(e.to_string()))?
            .user_agent(user_agent)
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(settings.idle_timeout)
            .dns_resolver(policy.resolver())
            .redirect(reqwest::redirect::Policy::custom(move |attempt| {
                let origin = attempt.previous().first().cloned();
                let hops = attempt.previous().len();
                let verdict = match &origin {
                    Some(o) => redirects.redirect(o, attempt.url(), hops),
                    None => Ok(()),
                };
                match verdict {
                    Ok(()) => attempt.follow(),
                    Err(reason) => attempt.error(reason),
                }
            }))
            .build()
            .map_err(|e| TlsSetupError(e.to_string()))?;
        Ok(Registry {
            http,
            credentials: Arc::new(settings.credentials),
            policy,
            transfer_timeout: settings.transfer_timeout,
            authorized: Arc::default(),
            identity: String::new(),
        })
    }

    /// This client answering `registry`'s challenges with `credentials` instead of the
    /// node's (for one tenant's pulls); the authorizations it gets are kept apart from
    /// those of the node's credentials and of other tenants'.
    pub fn with_credentials(&self, registry: &str, credentials: &Credentials) -> Registry {
        let mut map = (*self.credentials).clone();
        map.insert(registry.to_string(), credentials.clone());
        Registry { credentials: Arc::new(map), identity: credentials.identity(), ..self.clone() }
    }

    pub(crate) fn base_url(&self, image: &ImageRef) -> String {
        format!("{}/v2/{}", self.origin(image), image.repository())
    }

    /// The scheme and host of `image`'s registry (for a relative upload location).
    pub(crate) fn origin(&self, image: &ImageRef) -> String {
        let scheme = if self.policy.plain_http(image.host()) { "http" } else { "https" };
        format!("{scheme}://{}", image.registry())
    }

    /// Whether the policy allows `image`'s registry.
    pub fn allows(&self, image: &ImageRef) -> Result<(), NotAllowed> {
        self.policy.check(image)
    }

    /// The HTTP client (for requests that are not an image's, e.g. [`Registry::ping`]).
    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// The policy this client keeps to.
    pub(crate) fn policy(&self) -> &Policy {
        &self.policy
    }

    /// What a failed request says: a refused redirect or a timeout by name.
    fn failed(&self, image: &ImageRef, url: &str, source: reqwest::Error) -> RegistryError {
        let registry = image.registry().to_string();
        if source.is_redirect() {
            return RegistryError::Redirect { registry, reason: fnrt_common::chain(&source) };
        }
        if source.is_timeout() {
            let detail = format!(
                ": the transfer went past its deadline ({} s in all, registry_transfer_timeout_s) \
                 or stalled (registry_idle_timeout_s)",
                self.transfer_timeout.as_secs()
            );
            let status = StatusCode::GATEWAY_TIMEOUT;
            return RegistryError::Status { registry, url: url.to_string(), status, detail };
        }
        RegistryError::Unreachable { registry, source }
    }

    /// Reads `resp`'s body whole, refusing more than `limit` bytes.
    pub(crate) async fn read_capped(
        &self,
        image: &ImageRef,
        url: &str,
        mut resp: reqwest::Response,
        limit: u64,
    ) -> Result<Bytes, RegistryError> {
        let registry = image.registry().to_string();
        let too_large =
            || RegistryError::TooLarge { registry: registry.clone(), url: url.to_string(), limit };
        if resp.content_length().is_some_and(|n| n > limit) {
            return Err(too_large());
        }
        let mut out = Vec::new();
        loop {
            match resp.chunk().await {
                Ok(Some(chunk)) if out.len() as u64 + chunk.len() as u64 > limit => return Err(too_large()),
                Ok(Some(chunk)) => out.extend_from_slice(&chunk),
                Ok(None) => return Ok(Bytes::from(out)),
                Err(e) if e.is_timeout() => return Err(self.failed(image, url, e)),
                Err(source) => {
                    return Err(RegistryError::Read {
                        registry: registry.clone(),
                        url: url.to_string(),
                        source,
                    })
                }
            }
        }
    }

    async fn send(
        &self,
        image: &ImageRef,
        req: &Req<'_>,
        authorization: Option<&str>,
    ) -> Result<reqwest::Response, RegistryError> {
        let timeout = if req.long { self.transfer_timeout } else { SMALL_TIMEOUT.min(self.transfer_timeout) };
        let mut r = self.http.request(req.method.clone(), req.url).timeout(timeout);
        for (k, v) in &req.headers {
            r = r.header(*k, v.as_str());
        }
        if let Some(a) = authorization {
            r = r.header(reqwest::header::AUTHORIZATION, a);
        }
        if let Some(b) = &req.body {
            r = r.body(b.clone());
        }
        r.send().await.map_err(|source| self.failed(image, req.url, source))
    }

    /// Sends `req`, answering an authentication challenge once, and returns any answer
    /// (the caller judges its status).
    pub(crate) async fn exchange(
        &self,
        image: &ImageRef,
        req: &Req<'_>,
    ) -> Result<reqwest::Response, RegistryError> {
        self.policy.check(image)?;
        let key =
            format!("{}@{}/{}/{}", self.identity, image.registry(), image.repository(), req.action.as_str());
        let known = self.authorized.lock().unwrap_or_else(|p| p.into_inner()).get(&key).cloned();
        let mut resp = self.send(image, req, known.as_deref()).await?;
        if resp.status() == StatusCode::UNAUTHORIZED {
            let challenge = resp
                .headers()
                .get(reqwest::header::WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .and_then(auth::parse_challenge);
            let authorization = self.authorize(image, challenge, req.action).await?;
            resp = self.send(image, req, Some(&authorization)).await?;
            if resp.status() == StatusCode::UNAUTHORIZED {
                return Err(self.unauthorized(image, "the credentials for it were refused"));
            }
            self.authorized.lock().unwrap_or_else(|p| p.into_inner()).insert(key, authorization);
        }
        Ok(resp)
    }

    /// Sends `req` and turns any answer but a success into an error.
    pub(crate) async fn request(
        &self,
        image: &ImageRef,
        req: &Req<'_>,
    ) -> Result<reqwest::Response, RegistryError> {
        let resp = self.exchange(image, req).await?;
        let registry = image.registry().to_string();
        match resp.status() {
            s if s.is_success() => Ok(resp),
            StatusCode::NOT_FOUND => Err(RegistryError::NotFound { reference: image.name(), registry }),
            StatusCode::FORBIDDEN => Err(self.unauthorized(image, "it answered 403 Forbidden")),
            // The registry's words are not passed on: they may say anything to anyone.
            status => Err(RegistryError::Status {
                registry,
                url: req.url.to_string(),
                status,
                detail: String::new(),
            }),
        }
    }

    async fn get(
        &self,
        image: &ImageRef,
        url: &str,
        accept: &str,
        long: bool,
    ) -> Result<reqwest::Response, RegistryError> {
        self.request(image, &Req { long, ..Req::get(url, accept) }).await
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
        action: Action,
    ) -> Result<String, RegistryError> {
        let creds = self.credentials.get(image.registry());
        let no_creds = "it asks for credentials and there are none for this registry (the namespace's registry_credentials or the node's registry_auth_file)";
        match challenge {
            None => Err(self.unauthorized(image, "it answered 401 without a Basic or Bearer challenge")),
            Some(Challenge::Basic) => {
                creds.map(Credentials::basic_header).ok_or_else(|| self.unauthorized(image, no_creds))
            }
            Some(Challenge::Bearer { realm, service, scope }) => {
                let scope =
                    scope.unwrap_or_else(|| format!("repository:{}:{}", image.repository(), action.as_str()));
                let mut query = vec![("scope", scope)];
                if let Some(service) = service {
                    query.push(("service", service));
                }
                let url = reqwest::Url::parse_with_params(&realm, &query).map_err(|e| {
                    self.unauthorized(image, &format!("its token realm {realm:?} is not a URL: {e}"))
                })?;
                self.policy.realm(image, &url).map_err(|reason| self.unauthorized(image, &reason))?;
                let mut req = self.http.get(url).timeout(SMALL_TIMEOUT.min(self.transfer_timeout));
                if let Some(c) = creds {
                    req = req.header(reqwest::header::AUTHORIZATION, c.basic_header());
                }
                let resp = req.send().await.map_err(|source| self.failed(image, &realm, source))?;
                if !resp.status().is_success() {
                    let reason = match (resp.status(), creds) {
                        (StatusCode::UNAUTHORIZED, None) => no_creds.to_string(),
                        (status, _) => format!("its token server {realm} answered {status}"),
                    };
                    return Err(self.unauthorized(image, &reason));
                }
                let bytes = self.read_capped(image, &realm, resp, MAX_TOKEN_BYTES).await?;
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
        let url = format!("{}/manifests/{reference}", self.base_url(image));
        let resp = self.get(image, &url, ACCEPT, false).await?;
        let media_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|t| t.split(';').next().unwrap_or(t).trim().to_string());
        let bytes = self.read_capped(image, &url, resp, MAX_MANIFEST_BYTES).await?;
        let digest = sha256(&bytes);
        Ok(RawManifest { bytes, digest, media_type })
    }

    /// Opens a blob for streaming.
    pub async fn blob(
        &self,
        image: &ImageRef,
        digest: &str,
    ) -> Result<impl Stream<Item = Result<Bytes, RegistryError>> + use<>, RegistryError> {
        let url = format!("{}/blobs/{digest}", self.base_url(image));
        let resp = self.get(image, &url, "*/*", true).await?;
        let this = self.clone();
        let image = image.clone();
        Ok(resp.bytes_stream().map_err(move |source| match source.is_timeout() {
            true => this.failed(&image, &url, source),
            false => RegistryError::Read { registry: image.registry().into(), url: url.clone(), source },
        }))
    }
}

/// What a request needs of the registry's token server.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Action {
    Pull,
    Push,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Action::Pull => "pull",
            Action::Push => "pull,push",
        }
    }
}

/// One request, kept whole so that it can be sent again after a challenge.
pub(crate) struct Req<'a> {
    pub(crate) method: reqwest::Method,
    pub(crate) url: &'a str,
    pub(crate) headers: Vec<(&'static str, String)>,
    pub(crate) body: Option<Bytes>,
    pub(crate) action: Action,
    /// A blob's transfer (registry_transfer_timeout_s), not a small request.
    pub(crate) long: bool,
}

impl<'a> Req<'a> {
    pub(crate) fn get(url: &'a str, accept: &str) -> Req<'a> {
        Req {
            method: reqwest::Method::GET,
            url,
            headers: vec![("accept", accept.to_string())],
            body: None,
            action: Action::Pull,
            long: false,
        }
    }
}

impl Registry {
    /// Whether `image`'s repository holds blob `digest`.
    pub async fn has_blob(&self, image: &ImageRef, digest: &str) -> Result<bool, RegistryError> {
        let url = format!("{}/blobs/{digest}", self.base_url(image));
        let req = Req {
            method: reqwest::Method::HEAD,
            url: &url,
            headers: vec![],
            body: None,
            action: Action::Pull,
            long: false,
        };
        let resp = self.exchange(image, &req).await?;
        Ok(resp.status().is_success())
    }

    /// Reads a blob of at most `limit` bytes whole, checking its digest.
    pub async fn blob_bytes(
        &self,
        image: &ImageRef,
        digest: &str,
        limit: u64,
    ) -> Result<Bytes, RegistryError> {
        let url = format!("{}/blobs/{digest}", self.base_url(image));
        let resp = self.get(image, &url, "*/*", true).await?;
        let bytes = self.read_capped(image, &url, resp, limit).await?;
        if sha256(&bytes) != digest {
            let (registry, digest) = (image.registry().into(), digest.to_string());
            return Err(RegistryError::Digest { registry, url, digest });
        }
        Ok(bytes)
    }
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}
