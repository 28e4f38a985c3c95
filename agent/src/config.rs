//! The agent's configuration: defaults, then a TOML file, then environment, then flags.
//!
//! Loaded once by `main` and passed in; nothing reads a global.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Default path of the agent's gRPC Unix socket; `agentctl` looks here without flags.
pub const DEFAULT_SOCKET: &str = "/run/fnrt/agent.sock";

/// How long an instance has to accept connections on :9000, as SCF gives it.
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(30);

/// Everything the agent can be configured with.
#[derive(Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// containerd's gRPC socket.
    pub containerd_socket: PathBuf,
    /// The containerd namespace the agent keeps its images and containers in.
    pub namespace: String,
    /// Unix socket of the agent's gRPC API.
    pub socket: PathBuf,
    /// Also serve the gRPC API on this TCP address (requires `tcp_token`).
    pub tcp_listen: Option<SocketAddr>,
    /// Bearer token every call over TCP must carry. Never logged.
    pub tcp_token: Option<String>,
    /// Address of the HTTP data plane that forwards calls to instances.
    pub dataplane_listen: SocketAddr,
    /// Directory of the agent's own files (instance logs, CNI allocations).
    pub state_dir: PathBuf,
    /// Where the CNI plugin executables are (Debian installs them in /usr/lib/cni).
    pub cni_bin_dir: PathBuf,
    /// Where host-local IPAM keeps its allocations; defaults to `<state_dir>/cni`.
    pub cni_data_dir: Option<PathBuf>,
    /// Name of the Linux bridge the instances are attached to.
    pub bridge: String,
    /// The instances' subnet on the bridge (the bridge takes its first address).
    pub subnet: String,
    /// containerd snapshotter for image layers and instance root filesystems.
    pub snapshotter: String,
    /// containerd runtime (shim) for instances.
    pub runtime: String,
    /// How long an instance has to accept connections on :9000, in milliseconds.
    pub health_timeout_ms: u64,
    /// Byte budget of the node's image cache (compressed blobs, each counted once); least
    /// recently used images no instance uses are evicted past it.
    pub image_cache_bytes: u64,
    /// Registry credentials, a file in the format of Docker's config.json (`auths`).
    pub registry_auth_file: Option<PathBuf>,
    /// CA certificates (PEM) trusted for registries besides the system's.
    pub registry_ca_file: Option<PathBuf>,
    /// Registry hosts (without port) spoken to over plain HTTP; all others use HTTPS.
    pub plain_http_registries: Vec<String>,
    /// Memory that buys an instance one whole vCPU, in MB; CPU is shared in proportion.
    pub mb_per_vcpu: u32,
    /// The least CPU an instance gets, in thousandths of a vCPU.
    pub min_cpu_millis: u32,
    /// Processes and threads an instance may have.
    pub pids_limit: u32,
    /// Region name given to functions (`TENCENTCLOUD_REGION`).
    pub region: String,
    /// Account app id given to functions (`TENCENTCLOUD_APPID`).
    pub appid: String,
    /// Account uin given to functions (`TENCENTCLOUD_UIN`).
    pub uin: String,
    /// Bytes of an instance's log file before it rotates.
    pub log_max_bytes: u64,
    /// Log files kept per instance, the current one included.
    pub log_files: u32,
    /// Seconds the logs of an ended instance are kept.
    pub log_retention_s: u64,
    /// The control plane to join, `http://host:port` (its grpc_listen); none: standalone.
    pub controlplane_url: Option<String>,
    /// The cluster token presented to the control plane (default: `tcp_token`, which the
    /// control plane presents back when it calls this agent).
    pub controlplane_token: Option<String>,
    /// This node's name in the cluster (default: the host name).
    pub node_name: String,
    /// Where the control plane reaches this agent's API (default: `http://<tcp_listen>`
    /// when TCP is on, else `unix://<socket>`, which only works on the same host).
    pub advertise_grpc: Option<String>,
    /// Where the gateway reaches the data plane, `host:port` (default: `dataplane_listen`).
    pub advertise_dataplane: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            containerd_socket: PathBuf::from("/run/containerd/containerd.sock"),
            namespace: "fnrt".into(),
            socket: PathBuf::from(DEFAULT_SOCKET),
            tcp_listen: None,
            tcp_token: None,
            dataplane_listen: SocketAddr::from(([127, 0, 0, 1], 8088)),
            state_dir: PathBuf::from("/var/lib/fnrt"),
            cni_bin_dir: PathBuf::from("/usr/lib/cni"),
            cni_data_dir: None,
            bridge: "fnrt0".into(),
            subnet: "10.201.0.0/16".into(),
            snapshotter: "overlayfs".into(),
            runtime: "io.containerd.runc.v2".into(),
            health_timeout_ms: DEFAULT_HEALTH_TIMEOUT.as_millis() as u64,
            image_cache_bytes: 20 << 30,
            registry_auth_file: None,
            registry_ca_file: None,
            plain_http_registries: vec!["localhost".into(), "127.0.0.1".into(), "[::1]".into()],
            mb_per_vcpu: 1792,
            min_cpu_millis: 100,
            pids_limit: 1024,
            region: "local".into(),
            appid: "0".into(),
            uin: "0".into(),
            log_max_bytes: 10 << 20,
            log_files: 3,
            log_retention_s: 3600,
            controlplane_url: None,
            controlplane_token: None,
            node_name: std::fs::read_to_string("/etc/hostname")
                .map(|h| h.trim().to_ascii_lowercase())
                .ok()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "node".into()),
            advertise_grpc: None,
            advertise_dataplane: None,
        }
    }
}

// The token is a secret: Debug must never print it.
impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("containerd_socket", &self.containerd_socket)
            .field("namespace", &self.namespace)
            .field("socket", &self.socket)
            .field("tcp_listen", &self.tcp_listen)
            .field("tcp_token", &self.tcp_token.as_ref().map(|_| "<redacted>"))
            .field("dataplane_listen", &self.dataplane_listen)
            .field("state_dir", &self.state_dir)
            .field("cni_bin_dir", &self.cni_bin_dir)
            .field("cni_data_dir", &self.cni_data_dir)
            .field("bridge", &self.bridge)
            .field("subnet", &self.subnet)
            .field("snapshotter", &self.snapshotter)
            .field("runtime", &self.runtime)
            .field("health_timeout_ms", &self.health_timeout_ms)
            .field("image_cache_bytes", &self.image_cache_bytes)
            .field("registry_auth_file", &self.registry_auth_file)
            .field("registry_ca_file", &self.registry_ca_file)
            .field("plain_http_registries", &self.plain_http_registries)
            .field("mb_per_vcpu", &self.mb_per_vcpu)
            .field("min_cpu_millis", &self.min_cpu_millis)
            .field("pids_limit", &self.pids_limit)
            .field("region", &self.region)
            .field("appid", &self.appid)
            .field("uin", &self.uin)
            .field("log_max_bytes", &self.log_max_bytes)
            .field("log_files", &self.log_files)
            .field("log_retention_s", &self.log_retention_s)
            .field("controlplane_url", &self.controlplane_url)
            .field("controlplane_token", &self.controlplane_token.as_ref().map(|_| "<redacted>"))
            .field("node_name", &self.node_name)
            .field("advertise_grpc", &self.advertise_grpc)
            .field("advertise_dataplane", &self.advertise_dataplane)
            .finish()
    }
}

/// Every problem found while loading the configuration, reported together.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  {}", .0.join("\n  "))]
pub struct ConfigError(pub Vec<String>);

impl Config {
    /// Loads the defaults, then `file` (if any), then `FNRT_AGENT_*` variables from `env`.
    /// Flags are applied by the caller with [`Config::set`] before [`Config::validate`].
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut errors = Vec::new();
        let mut cfg = match file {
            None => Config::default(),
            Some(path) => match std::fs::read_to_string(path) {
                Err(e) => return Err(ConfigError(vec![format!("{}: {e}", path.display())])),
                Ok(text) => toml::from_str(&text)
                    .map_err(|e| ConfigError(vec![format!("{}: {}", path.display(), e.message())]))?,
            },
        };
        for (key, value) in env {
            let Some(field) = key.strip_prefix("FNRT_AGENT_") else { continue };
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

    /// Sets one field by its name, from text (as environment and flags give it).
    pub fn set(&mut self, field: &str, value: &str) -> Result<(), String> {
        fn parse<T: std::str::FromStr>(v: &str) -> Result<T, String>
        where
            T::Err: std::fmt::Display,
        {
            v.parse().map_err(|e| format!("{v:?}: {e}"))
        }
        match field {
            "containerd_socket" => self.containerd_socket = value.into(),
            "namespace" => self.namespace = value.into(),
            "socket" => self.socket = value.into(),
            "tcp_listen" => self.tcp_listen = Some(parse(value)?),
            "tcp_token" => self.tcp_token = Some(value.into()),
            "dataplane_listen" => self.dataplane_listen = parse(value)?,
            "state_dir" => self.state_dir = value.into(),
            "cni_bin_dir" => self.cni_bin_dir = value.into(),
            "cni_data_dir" => self.cni_data_dir = Some(value.into()),
            "bridge" => self.bridge = value.into(),
            "subnet" => self.subnet = value.into(),
            "snapshotter" => self.snapshotter = value.into(),
            "runtime" => self.runtime = value.into(),
            "health_timeout_ms" => self.health_timeout_ms = parse(value)?,
            "image_cache_bytes" => self.image_cache_bytes = parse(value)?,
            "registry_auth_file" => self.registry_auth_file = Some(value.into()),
            "registry_ca_file" => self.registry_ca_file = Some(value.into()),
            "plain_http_registries" => {
                self.plain_http_registries =
                    value.split(',').map(str::trim).filter(|h| !h.is_empty()).map(str::to_string).collect()
            }
            "mb_per_vcpu" => self.mb_per_vcpu = parse(value)?,
            "min_cpu_millis" => self.min_cpu_millis = parse(value)?,
            "pids_limit" => self.pids_limit = parse(value)?,
            "region" => self.region = value.into(),
            "appid" => self.appid = value.into(),
            "uin" => self.uin = value.into(),
            "log_max_bytes" => self.log_max_bytes = parse(value)?,
            "log_files" => self.log_files = parse(value)?,
            "log_retention_s" => self.log_retention_s = parse(value)?,
            "controlplane_url" => self.controlplane_url = Some(value.into()),
            "controlplane_token" => self.controlplane_token = Some(value.into()),
            "node_name" => self.node_name = value.into(),
            "advertise_grpc" => self.advertise_grpc = Some(value.into()),
            "advertise_dataplane" => self.advertise_dataplane = Some(value.into()),
            other => return Err(format!("unknown setting {other:?}")),
        }
        Ok(())
    }

    /// Checks the values that can be checked without touching the node.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut errors = Vec::new();
        if self.tcp_listen.is_some() && self.tcp_token.as_deref().unwrap_or("").is_empty() {
            errors.push(
                "tcp_listen is set but tcp_token is empty: the API runs arbitrary images, so \
                 TCP needs a token"
                    .to_string(),
            );
        }
        if self.namespace.is_empty() {
            errors.push("namespace must not be empty".into());
        }
        if self.bridge.is_empty() || self.bridge.len() > 15 {
            errors.push(format!("bridge {:?} must be 1 to 15 characters", self.bridge));
        }
        if self.subnet.split_once('/').is_none() {
            errors.push(format!("subnet {:?} must be in CIDR form, e.g. 10.201.0.0/16", self.subnet));
        }
        if self.snapshotter != "overlayfs" {
            errors.push(format!(
                "snapshotter {:?} is not supported: the agent unpacks layers into overlayfs upper \
                 directories, so it must be \"overlayfs\"",
                self.snapshotter
            ));
        }
        if self.mb_per_vcpu == 0 || self.min_cpu_millis == 0 || self.pids_limit < 8 {
            errors.push(format!(
                "mb_per_vcpu ({}) and min_cpu_millis ({}) must be above 0 and pids_limit ({}) at least 8",
                self.mb_per_vcpu, self.min_cpu_millis, self.pids_limit
            ));
        }
        if self.log_max_bytes < 4096 || self.log_files == 0 {
            errors.push(format!(
                "log_max_bytes ({}) must be at least 4096 and log_files ({}) at least 1",
                self.log_max_bytes, self.log_files
            ));
        }
        if self.controlplane_url.is_some()
            && self.controlplane_token.as_deref().or(self.tcp_token.as_deref()).unwrap_or("").is_empty()
        {
            errors.push(
                "controlplane_url is set but neither controlplane_token nor tcp_token is: the control \
                 plane only takes agents that present the cluster token"
                    .into(),
            );
        }
        if self.health_timeout_ms == 0 {
            errors.push("health_timeout_ms must be above 0".into());
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigError(errors))
        }
    }

    /// How memory settings become instance limits.
    pub fn limits_policy(&self) -> fnrt_function::policy::Policy {
        fnrt_function::policy::Policy {
            mb_per_vcpu: self.mb_per_vcpu,
            min_cpu_millis: self.min_cpu_millis,
            pids: self.pids_limit,
        }
    }

    /// Who the node runs functions for, as the built-in environment tells them.
    pub fn identity(&self) -> crate::env::Identity {
        crate::env::Identity { region: self.region.clone(), appid: self.appid.clone(), uin: self.uin.clone() }
    }

    /// Size cap, rotation and retention of instance logs.
    pub fn log_settings(&self) -> crate::logs::Settings {
        crate::logs::Settings {
            max_bytes: self.log_max_bytes,
            files: self.log_files,
            retention: Duration::from_secs(self.log_retention_s),
        }
    }

    /// The health-check deadline.
    pub fn health_timeout(&self) -> Duration {
        Duration::from_millis(self.health_timeout_ms)
    }

    /// Where host-local IPAM keeps its allocations.
    pub fn cni_data_dir(&self) -> PathBuf {
        self.cni_data_dir.clone().unwrap_or_else(|| self.state_dir.join("cni"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_health_deadline_is_30_seconds() {
        assert_eq!(Config::default().health_timeout(), Duration::from_secs(30));
    }

    #[test]
    fn file_then_env_override_and_unknown_keys_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("agent.toml");
        std::fs::write(&file, "namespace = \"a\"\nhealth_timeout_ms = 500\n").expect("write");
        let env = vec![("FNRT_AGENT_NAMESPACE".to_string(), "b".to_string())];
        let cfg = Config::load(Some(&file), env).expect("load");
        assert_eq!(cfg.namespace, "b");
        assert_eq!(cfg.health_timeout_ms, 500);

        std::fs::write(&file, "nmespace = \"a\"\n").expect("write");
        let err = Config::load(Some(&file), vec![]).expect_err("unknown key");
        assert!(err.to_string().contains("nmespace"), "{err}");
    }

    #[test]
    fn all_env_errors_are_reported_at_once() {
        let env = vec![
            ("FNRT_AGENT_HEALTH_TIMEOUT_MS".to_string(), "soon".to_string()),
            ("FNRT_AGENT_DATAPLANE_LISTEN".to_string(), "nowhere".to_string()),
        ];
        let err = Config::load(None, env).expect_err("bad values");
        assert_eq!(err.0.len(), 2, "{err}");
    }

    #[test]
    fn tcp_without_token_is_refused_and_token_is_never_printed() {
        let mut cfg = Config::default();
        cfg.set("tcp_listen", "127.0.0.1:7000").expect("set");
        assert!(cfg.validate().is_err());
        cfg.set("tcp_token", "s3cret-value").expect("set");
        cfg.validate().expect("valid");
        assert!(!format!("{cfg:?}").contains("s3cret-value"));
    }
}
