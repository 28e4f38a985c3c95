//! The control plane's configuration: defaults, then a TOML file, then `FNRT_CP_*`
//! variables, then `--set key=value` flags; checked once, all problems reported together.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The configuration.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The management API (Scaleway Functions v1beta1).
    pub api_listen: SocketAddr,
    /// The gateway for function calls.
    pub gateway_listen: SocketAddr,
    /// The gRPC port agents join on.
    pub grpc_listen: SocketAddr,
    /// Where the store lives (`<state_dir>/state.redb`).
    pub state_dir: PathBuf,
    /// The region served (`fr-par`, as Scaleway's SDKs default to).
    pub region: String,
    /// The admin secret key, checked in `X-Auth-Token` (Scaleway's SDKs want a UUID).
    /// Empty: made at first start and kept in `<state_dir>/admin-token` (0600).
    pub admin_token: String,
    /// Shared by agents and the control plane: agents present it to join, and the
    /// control plane presents it to their API (their `tcp_token`).
    pub cluster_token: String,
    /// Function endpoints are `<namespace>-<function>.<domain>`.
    pub domain: String,
    /// The registry's notifications present it as `Authorization: Bearer <token>` on
    /// `POST /fnrt/v1/registry-events`; empty: push-then-deploy is off.
    pub webhook_token: String,
    /// Base image of the python311 runtime (default `<registry>/fnrt/runtime-python311:latest`).
    pub python311_image: String,
    /// Base image of the custom runtime (default `<registry>/fnrt/runtime-custom:latest`).
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
    pub registry: String,
    /// Registry credentials (Docker's `config.json` format) for pushing code images and
    /// pinning tags to digests; the agents' own file serves their pulls.
    pub registry_auth_file: Option<PathBuf>,
    /// PEM CAs trusted for registries besides the system's.
    pub registry_ca_file: Option<PathBuf>,
    /// Registry hosts (no port) spoken to over plain HTTP (default: the loopback names).
    pub plain_http_registries: Vec<String>,
    /// How often agents report, in ms.
    pub heartbeat_interval_ms: u32,
    /// After this long without a report an agent is lost, in ms.
    pub lost_after_ms: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            api_listen: SocketAddr::from(([127, 0, 0, 1], 8090)),
            gateway_listen: SocketAddr::from(([127, 0, 0, 1], 8091)),
            grpc_listen: SocketAddr::from(([127, 0, 0, 1], 8092)),
            state_dir: PathBuf::from("/var/lib/fnrt-controlplane"),
            region: "fr-par".into(),
            admin_token: String::new(),
            cluster_token: String::new(),
            domain: "functions.localhost".into(),
            webhook_token: String::new(),
            nats_url: String::new(),
            python311_image: String::new(),
            custom_image: String::new(),
            public_url: String::new(),
            url_key: Vec::new(),
            registry: "127.0.0.1:5000".into(),
            registry_auth_file: None,
            registry_ca_file: None,
            plain_http_registries: vec!["localhost".into(), "127.0.0.1".into(), "[::1]".into()],
            heartbeat_interval_ms: 2000,
            lost_after_ms: 10_000,
        }
    }
}

// Tokens are secrets: Debug never prints them.
impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("api_listen", &self.api_listen)
            .field("gateway_listen", &self.gateway_listen)
            .field("grpc_listen", &self.grpc_listen)
            .field("state_dir", &self.state_dir)
            .field("region", &self.region)
            .field("admin_token", &"<redacted>")
            .field("cluster_token", &"<redacted>")
            .field("webhook_token", &"<redacted>")
            .field("nats_url", &self.nats_url)
            .field("python311_image", &self.python311_image)
            .field("custom_image", &self.custom_image)
            .field("public_url", &self.public_url)
            .field("domain", &self.domain)
            .field("registry", &self.registry)
            .field("registry_auth_file", &self.registry_auth_file)
            .field("registry_ca_file", &self.registry_ca_file)
            .field("plain_http_registries", &self.plain_http_registries)
            .field("heartbeat_interval_ms", &self.heartbeat_interval_ms)
            .field("lost_after_ms", &self.lost_after_ms)
            .finish()
    }
}

/// Every problem found while loading the configuration.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  {}", .0.join("\n  "))]
pub struct ConfigError(pub Vec<String>);

impl Config {
    /// Loads the defaults, then `file`, then `FNRT_CP_*` variables of `env`.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut cfg = match file {
            None => Config::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| ConfigError(vec![format!("{}: {e}", path.display())]))?;
                toml::from_str(&text)
                    .map_err(|e| ConfigError(vec![format!("{}: {}", path.display(), e.message())]))?
            }
        };
        let mut errors = Vec::new();
        for (key, value) in env {
            let Some(field) = key.strip_prefix("FNRT_CP_") else { continue };
            if let Err(e) = cfg.set(&field.to_ascii_lowercase(), &value) {
                errors.push(format!("{key}: {e}"));
            }
        }
        if errors.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigError(errors))
        }
    }

    /// Sets one field by name from text.
    pub fn set(&mut self, field: &str, value: &str) -> Result<(), String> {
        fn parse<T: std::str::FromStr>(v: &str) -> Result<T, String>
        where
            T::Err: std::fmt::Display,
        {
            v.parse().map_err(|e| format!("{v:?}: {e}"))
        }
        match field {
            "api_listen" => self.api_listen = parse(value)?,
            "gateway_listen" => self.gateway_listen = parse(value)?,
            "grpc_listen" => self.grpc_listen = parse(value)?,
            "state_dir" => self.state_dir = value.into(),
            "region" => self.region = value.into(),
            "admin_token" => self.admin_token = value.into(),
            "cluster_token" => self.cluster_token = value.into(),
            "domain" => self.domain = value.into(),
            "webhook_token" => self.webhook_token = value.into(),
            "nats_url" => self.nats_url = value.into(),
            "python311_image" => self.python311_image = value.into(),
            "custom_image" => self.custom_image = value.into(),
            "public_url" => self.public_url = value.into(),
            "registry" => self.registry = value.into(),
            "registry_auth_file" => self.registry_auth_file = Some(value.into()),
            "registry_ca_file" => self.registry_ca_file = Some(value.into()),
            "plain_http_registries" => {
                self.plain_http_registries =
                    value.split(',').map(str::trim).filter(|h| !h.is_empty()).map(str::to_string).collect()
            }
            "heartbeat_interval_ms" => self.heartbeat_interval_ms = parse(value)?,
            "lost_after_ms" => self.lost_after_ms = parse(value)?,
            other => return Err(format!("unknown setting {other:?}")),
        }
        Ok(())
    }

    /// Checks what can be checked before starting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut errors = Vec::new();
        if self.cluster_token.len() < 16 {
            errors.push("cluster_token must be set, at least 16 characters: agents join with it".to_string());
        }
        if self.heartbeat_interval_ms < 100 || self.lost_after_ms < 2 * self.heartbeat_interval_ms {
            errors.push(format!(
                "heartbeat_interval_ms ({}) must be at least 100 and lost_after_ms ({}) at least twice it",
                self.heartbeat_interval_ms, self.lost_after_ms
            ));
        }
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
    /// The base image of a code runtime, if it is one.
    pub fn runtime_image(&self, runtime: &str) -> Option<String> {
        let (set, name) = match runtime {
            "python311" => (&self.python311_image, "python311"),
            "custom" => (&self.custom_image, "custom"),
            _ => return None,
        };
        Some(if set.is_empty() {
            format!("{}/fnrt/runtime-{name}:latest", self.registry)
        } else {
            set.clone()
        })
    }
}
