//! The control plane's configuration: defaults, then a TOML file, then `FNRT_CP_*`
//! variables, then `--set key=value` flags (the loader is `fnrt_common::config`);
//! checked once, all problems reported together.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use fnrt_common::secret::Secret;
use serde::{Deserialize, Serialize};
use smart_default::SmartDefault;

/// The configuration; each key is declared here once, with its default. Tokens are
/// [`Secret`]s, so `Debug` shows every key and never a token.
#[derive(Clone, Debug, Deserialize, Serialize, SmartDefault)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The management API (Scaleway Functions v1beta1).
    #[default(SocketAddr::from(([127, 0, 0, 1], 8090)))]
    pub api_listen: SocketAddr,
    /// The gateway for function calls.
    #[default(SocketAddr::from(([127, 0, 0, 1], 8091)))]
    pub gateway_listen: SocketAddr,
    /// The gRPC port agents join on.
    #[default(SocketAddr::from(([127, 0, 0, 1], 8092)))]
    pub grpc_listen: SocketAddr,
    /// Prometheus metrics at `/metrics`, on a port of their own (neither the API's, which
    /// takes the admin key, nor the gateway's, which the functions' clients reach).
    #[default(SocketAddr::from(([127, 0, 0, 1], 8094)))]
    pub metrics_listen: SocketAddr,
    /// Where the state lives (`<state_dir>/state.redb` with the redb store) and the
    /// control plane's own files (admin token, URL key, code zips).
    #[default(PathBuf::from("/var/lib/fnrt-controlplane"))]
    pub state_dir: PathBuf,
    /// The store: `redb` (a file in state_dir, one machine) or `etcd`.
    #[default("redb".into())]
    pub store: String,
    /// etcd's client URLs (`http://host:2379`, `https://` with TLS), for store = "etcd".
    pub etcd_endpoints: Vec<String>,
    /// The prefix of every key the control plane keeps in etcd (ends with '/').
    #[default("fnrt/".into())]
    pub etcd_prefix: String,
    /// An etcd user (its authentication), with etcd_password.
    pub etcd_username: String,
    /// Its password.
    pub etcd_password: Secret,
    /// PEM CA etcd's certificates are checked against (TLS).
    pub etcd_ca_file: Option<PathBuf>,
    /// A client certificate for etcd (PEM), with etcd_key_file.
    pub etcd_cert_file: Option<PathBuf>,
    /// Its key.
    pub etcd_key_file: Option<PathBuf>,
    /// The region served (`fr-par`, as Scaleway's SDKs default to).
    #[default("fr-par".into())]
    pub region: String,
    /// The admin secret key, checked in `X-Auth-Token` (Scaleway's SDKs want a UUID).
    /// Empty: made at first start and kept in `<state_dir>/admin-token` (0600).
    pub admin_token: Secret,
    /// Shared by agents and the control plane: agents present it to join, and the
    /// control plane presents it to their API (their `tcp_token`).
    pub cluster_token: Secret,
    /// The cluster's data plane key (the agents' `dataplane_key`, at least 32
    /// characters): the gateway signs every call it forwards to a data plane with it.
    /// Empty: calls go unsigned, which only agents whose data plane listens on loopback take.
    pub dataplane_key: Secret,
    /// Function endpoints are `<namespace>-<function>.<domain>`.
    #[default("functions.localhost".into())]
    pub domain: String,
    /// The registry's notifications present it as `Authorization: Bearer <token>` on
    /// `POST /fnrt/v1/registry-events`; empty: push-then-deploy is off.
    pub webhook_token: Secret,
    /// Base image of the python311 runtime (default `<registry>/fnrt/runtime-python311:latest`).
    pub python311_image: String,
    /// Base image of the node18 runtime (default `<registry>/fnrt/runtime-node18:latest`).
    pub node18_image: String,
    /// Base image of the custom runtime, which go119's compiled code runs on too (default
    /// `<registry>/fnrt/runtime-custom:latest`).
    pub custom_image: String,
    /// How clients reach the API, for upload and download URLs (default `http://<api_listen>`
    /// as bound).
    pub public_url: String,
    /// Signs upload and download URLs (from `<state_dir>/url-key`; never configured).
    #[serde(skip)]
    pub url_key: Vec<u8>,
    /// The NATS server `scw_nats_config` triggers subscribe on (`nats://host:port`);
    /// empty: no NATS triggers.
    pub nats_url: String,
    /// The registry shown as the namespaces' `registry_endpoint`, where code images go.
    #[default("127.0.0.1:5000".into())]
    pub registry: String,
    /// Registry credentials (Docker's `config.json` format) for pushing code images and
    /// pinning tags to digests; the agents' own file serves their pulls.
    pub registry_auth_file: Option<PathBuf>,
    /// PEM CAs trusted for registries besides the system's.
    pub registry_ca_file: Option<PathBuf>,
    /// Registry hosts (no port) spoken to over plain HTTP (default: the loopback names).
    #[default(vec!["localhost".into(), "127.0.0.1".into(), "[::1]".into()])]
    pub plain_http_registries: Vec<String>,
    /// Registries (`host` or `host:port`) function images may come from besides `registry`
    /// and the runtimes' base images' registries, which are always allowed; `*`: any
    /// registry on a public address.
    pub allowed_registries: Vec<String>,
    /// Connections the API and the gateway each keep open at once; more are closed.
    #[default(10_000)]
    pub http_max_connections: u32,
    /// The longest a request's headers may take to arrive, or a connection may idle, in ms.
    #[default(10_000)]
    pub http_header_timeout_ms: u64,
    /// The longest a request to the API or the gateway may take until its answer starts,
    /// in seconds (a function's timeout is at most 900 s).
    #[default(960)]
    pub http_request_timeout_s: u64,
    /// The largest request body the gateway forwards, in bytes (6 MB, the synchronous limit
    /// of SCF and Scaleway); larger ones get 413.
    #[default(6_000_000)]
    pub max_body_bytes: u64,
    /// How long the gateway holds a call, in ms, while no agent can take it: its function's
    /// agent refuses connections (restarting) or none that runs it is connected. The call is
    /// retried (a body only up to 1 MiB; a larger one is sent once) until one takes it.
    #[default(5000)]
    pub gateway_hold_ms: u64,
    /// The most functions of one namespace with image acceleration (SCF's default limit, 5).
    #[default(5)]
    pub max_accelerated_functions: u32,
    /// How often agents report, in ms.
    #[default(2000)]
    pub heartbeat_interval_ms: u32,
    /// After this long without a report an agent is lost, in ms.
    #[default(10_000)]
    pub lost_after_ms: u32,
    /// The cluster CA's certificate (PEM, `fnrt-controlplane ca init`): with the two
    /// below, the join service serves TLS and takes only agents holding a node
    /// certificate of this CA that names the node they register as, and agents are called
    /// back over TLS, checked to hold that node's certificate.
    pub tls_ca_file: Option<PathBuf>,
    /// This control plane's certificate (`fnrt-controlplane ca issue --role controlplane`).
    pub tls_cert_file: Option<PathBuf>,
    /// Its private key.
    pub tls_key_file: Option<PathBuf>,
    /// Allow cluster links beyond loopback without TLS (grpc_listen, agents registering
    /// `http://` endpoints). Anyone on the path then reads every function's secrets.
    pub insecure: bool,
}

pub use fnrt_common::config::ConfigError;

impl Config {
    /// Loads the defaults, then `file`, then `FNRT_CP_*` variables of `env`.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        fnrt_common::config::load(&Config::default(), file, "FNRT_CP_", env)
    }

    /// Sets one field by name from text.
    pub fn set(&mut self, field: &str, value: &str) -> Result<(), String> {
        fnrt_common::config::set(self, field, value)
    }

    /// Checks what can be checked before starting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut errors = Vec::new();
        if self.cluster_token.expose().len() < 32 {
            errors.push(
                "cluster_token must be set, at least 32 characters (a random one: openssl rand -hex 32): \
                 agents join with it"
                    .to_string(),
            );
        }
        let key = self.dataplane_key.expose().len();
        if key != 0 && key < fnrt_common::signature::MIN_KEY_LEN {
            errors.push(format!(
                "dataplane_key must be at least {} characters (a random one: openssl rand -hex 32)",
                fnrt_common::signature::MIN_KEY_LEN
            ));
        }
        if self.heartbeat_interval_ms < 100 || self.lost_after_ms < 2 * self.heartbeat_interval_ms {
            errors.push(format!(
                "heartbeat_interval_ms ({}) must be at least 100 and lost_after_ms ({}) at least twice it",
                self.heartbeat_interval_ms, self.lost_after_ms
            ));
        }
        self.check_links(&mut errors);
        self.check_store(&mut errors);
        if self.region.is_empty() || self.domain.is_empty() {
            errors.push("region and domain must not be empty".into());
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigError(errors))
        }
    }
}

impl Config {
    /// The cluster TLS files (CA, certificate, key) when all three are set.
    pub fn tls_files(&self) -> Option<(&Path, &Path, &Path)> {
        self.tls_setting().ok().flatten()
    }

    fn tls_setting(&self) -> Result<Option<(&Path, &Path, &Path)>, String> {
        fnrt_common::pki::files(
            self.tls_ca_file.as_deref(),
            self.tls_cert_file.as_deref(),
            self.tls_key_file.as_deref(),
        )
    }

    /// Whether the join service runs in plain TCP beyond loopback.
    pub fn plain_grpc(&self) -> bool {
        self.tls_files().is_none() && !self.grpc_listen.ip().is_loopback()
    }

    fn check_store(&self, errors: &mut Vec<String>) {
        match self.store.as_str() {
            "redb" => {}
            "etcd" => {
                if self.etcd_endpoints.is_empty() {
                    errors.push("store = \"etcd\" needs etcd_endpoints (e.g. http://127.0.0.1:2379)".into());
                }
                if self.etcd_prefix.is_empty() || !self.etcd_prefix.ends_with('/') {
                    errors.push(format!("etcd_prefix {:?} must end with '/', e.g. fnrt/", self.etcd_prefix));
                }
                if self.etcd_username.is_empty() != self.etcd_password.expose().is_empty() {
                    errors.push("etcd_username and etcd_password go together".into());
                }
                if self.etcd_cert_file.is_some() != self.etcd_key_file.is_some() {
                    errors.push("etcd_cert_file and etcd_key_file go together".into());
                }
            }
            other => errors.push(format!("store {other:?} is not redb or etcd")),
        }
    }

    /// How to reach etcd (store = "etcd").
    pub fn etcd_settings(&self) -> crate::store::EtcdSettings {
        crate::store::EtcdSettings {
            endpoints: self.etcd_endpoints.clone(),
            prefix: self.etcd_prefix.clone(),
            username: self.etcd_username.clone(),
            password: self.etcd_password.clone(),
            ca_file: self.etcd_ca_file.clone(),
            cert_file: self.etcd_cert_file.clone(),
            key_file: self.etcd_key_file.clone(),
        }
    }

    fn check_links(&self, errors: &mut Vec<String>) {
        if let Err(e) = self.tls_setting() {
            errors.push(e);
        }
        if self.plain_grpc() && !self.insecure {
            errors.push(format!(
                "grpc_listen {} is beyond loopback without TLS: set tls_ca_file, tls_cert_file and \
                 tls_key_file (fnrt-controlplane ca, README \"Cluster TLS\"), or insecure = true to \
                 accept plain TCP",
                self.grpc_listen
            ));
        }
    }

    /// The limits of the API's and the gateway's listeners.
    pub fn http_limits(&self) -> crate::serve::Limits {
        crate::serve::Limits {
            max_connections: self.http_max_connections.max(1) as usize,
            header_timeout: std::time::Duration::from_millis(self.http_header_timeout_ms.max(1)),
            request_timeout: std::time::Duration::from_secs(self.http_request_timeout_s.max(1)),
        }
    }

    /// The registries images may come from: `allowed_registries`, `registry` and the
    /// registries of the runtimes' base images.
    pub fn registries_allowed(&self) -> Vec<String> {
        let mut out = self.allowed_registries.clone();
        out.push(self.registry.clone());
        for runtime in crate::runtimes::names() {
            let base = self.runtime_image(runtime).and_then(|i| fnrt_registry::ImageRef::parse(&i).ok());
            out.extend(base.map(|b| b.registry().to_string()));
        }
        out
    }

    /// The base image of a code runtime, if it is one.
    pub fn runtime_image(&self, runtime: &str) -> Option<String> {
        let name = crate::runtimes::find(runtime)?.base;
        let set = match name {
            "python311" => &self.python311_image,
            "node18" => &self.node18_image,
            _ => &self.custom_image,
        };
        Some(if set.is_empty() {
            format!("{}/fnrt/runtime-{name}:latest", self.registry)
        } else {
            set.clone()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_join_service_beyond_loopback_needs_tls_or_insecure() {
        let mut cfg = Config { cluster_token: "t".repeat(32).into(), ..Config::default() };
        cfg.validate().expect("loopback without TLS");
        cfg.grpc_listen = SocketAddr::from(([0, 0, 0, 0], 8092));
        let e = cfg.validate().err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("grpc_listen 0.0.0.0:8092 is beyond loopback without TLS"), "{e}");
        cfg.insecure = true;
        assert!(cfg.validate().is_ok());
        cfg.tls_ca_file = Some("/etc/fnrt/ca.pem".into());
        let e = cfg.validate().err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("go together"), "{e}");
    }
}
