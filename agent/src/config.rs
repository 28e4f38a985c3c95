//! The agent's configuration: defaults, then a TOML file, then `FNRT_AGENT_*`
//! environment variables, then flags (the loader is `fnrt_common::config`).
//!
//! Loaded once by `main` and passed in; nothing reads a global.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fnrt_common::secret::Secret;
use fnrt_function::Policy;
use serde::{Deserialize, Serialize};
use smart_default::SmartDefault;

/// Default path of the agent's gRPC Unix socket; `agentctl` looks here without flags.
pub const DEFAULT_SOCKET: &str = "/run/fnrt/agent.sock";

/// How long an instance has to accept connections on :9000, as SCF gives it.
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(30);

/// Everything the agent can be configured with; each key is declared here once, with
/// its default. Secrets are [`Secret`]s, so `Debug` shows every key and never a token.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, SmartDefault)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// containerd's gRPC socket.
    #[default(PathBuf::from("/run/containerd/containerd.sock"))]
    pub containerd_socket: PathBuf,
    /// The containerd namespace the agent keeps its images and containers in.
    #[default("fnrt".into())]
    pub namespace: String,
    /// Unix socket of the agent's gRPC API.
    #[default(PathBuf::from(DEFAULT_SOCKET))]
    pub socket: PathBuf,
    /// Also serve the gRPC API on this TCP address (requires `tcp_token`).
    pub tcp_listen: Option<SocketAddr>,
    /// Bearer token every call over TCP must carry. Never logged.
    pub tcp_token: Option<Secret>,
    /// Address of the HTTP data plane that forwards calls to instances.
    #[default(SocketAddr::from(([127, 0, 0, 1], 8088)))]
    pub dataplane_listen: SocketAddr,
    /// Directory of the agent's own files (instance logs, CNI allocations).
    #[default(PathBuf::from("/var/lib/fnrt"))]
    pub state_dir: PathBuf,
    /// Where the CNI plugin executables are (Debian installs them in /usr/lib/cni).
    #[default(PathBuf::from("/usr/lib/cni"))]
    pub cni_bin_dir: PathBuf,
    /// Where host-local IPAM keeps its allocations; defaults to `<state_dir>/cni`.
    pub cni_data_dir: Option<PathBuf>,
    /// Name of the Linux bridge the instances are attached to.
    #[default("fnrt0".into())]
    pub bridge: String,
    /// The instances' subnet on the bridge (the bridge takes its first address).
    #[default("10.201.0.0/16".into())]
    pub subnet: String,
    /// containerd snapshotter for image layers and instance root filesystems.
    #[default("overlayfs".into())]
    pub snapshotter: String,
    /// containerd runtime (shim) for instances: runc's v2 shim, which runs both sandbox
    /// classes (gvisor through runsc as its OCI runtime).
    #[default("io.containerd.runc.v2".into())]
    pub runtime: String,
    /// The sandbox classes this node offers (`runc`, `gvisor`); empty: runc, and gvisor
    /// when `gvisor_runsc` is an executable file. A class listed here that cannot be
    /// offered (gvisor without runsc) stops the agent at start.
    pub sandbox_classes: Vec<fnrt_function::SandboxClass>,
    /// gVisor's runsc, for the gvisor class.
    #[default(PathBuf::from("/usr/bin/runsc"))]
    pub gvisor_runsc: PathBuf,
    /// gVisor's platform: `systrap` (runsc's default since 2023), `ptrace` (before), or
    /// `kvm` (needs /dev/kvm and hardware virtualization); empty: runsc's default.
    pub gvisor_platform: String,
    /// gVisor's network: `host` (default: the instance's own network namespace, through
    /// the node's kernel, so the node's firewall rules for instances apply as for runc) or
    /// `sandbox` (gVisor's own network stack over that namespace's interfaces; runsc
    /// releases before about August 2024 refuse every network namespace on Linux 6.x with
    /// "cannot run with network enabled in root network namespace").
    #[default("host".into())]
    pub gvisor_network: String,
    /// More runsc flags (each `--name=value`), e.g. `--debug-log=/var/log/runsc/`.
    pub gvisor_flags: Vec<String>,
    /// How long an instance has to accept connections on :9000, in milliseconds.
    #[default(DEFAULT_HEALTH_TIMEOUT.as_millis() as u64)]
    pub health_timeout_ms: u64,
    /// Byte budget of the node's image cache (compressed blobs, each counted once); least
    /// recently used images no instance uses are evicted past it.
    #[default(20 << 30)]
    pub image_cache_bytes: u64,
    /// The most bytes one image may unpack to (its layers' uncompressed tars together).
    #[default(crate::image::UnpackLimits::default().max_bytes)]
    pub image_max_unpacked_bytes: u64,
    /// The most files, directories and links one image may unpack to.
    #[default(crate::image::UnpackLimits::default().max_entries)]
    pub image_max_unpacked_entries: u64,
    /// Registry credentials, a file in the format of Docker's config.json (`auths`).
    pub registry_auth_file: Option<PathBuf>,
    /// CA certificates (PEM) trusted for registries besides the system's.
    pub registry_ca_file: Option<PathBuf>,
    /// Registry hosts (without port) spoken to over plain HTTP; all others use HTTPS.
    #[default(vec!["localhost".into(), "127.0.0.1".into(), "[::1]".into()])]
    pub plain_http_registries: Vec<String>,
    /// Registries (`host` or `host:port`, as image references name them) images may come
    /// from; `*`: any registry on a public address. Registries on loopback, link-local or
    /// private addresses must be listed by name.
    #[default(vec!["*".into()])]
    pub allowed_registries: Vec<String>,
    /// A registry transfer that goes this long without a byte is given up, in seconds.
    #[default(30)]
    pub registry_idle_timeout_s: u64,
    /// The longest one blob's transfer may take, in seconds.
    #[default(600)]
    pub registry_transfer_timeout_s: u64,
    /// The longest a data plane request's headers may take to arrive (or a connection may
    /// idle), in ms.
    #[default(10_000)]
    pub http_header_timeout_ms: u64,
    /// Connections the data plane keeps open at once (all its threads together); more are
    /// closed as they arrive.
    #[default(10_000)]
    pub dataplane_max_connections: u32,
    /// On SIGTERM, how long the data plane lets the calls in flight finish, in ms, after it
    /// has stopped taking new ones (its listeners closed); calls still running then are cut.
    #[default(10_000)]
    pub drain_timeout_ms: u64,
    /// The largest request body the data plane forwards, in bytes (6 MB, the synchronous
    /// limit of SCF and Scaleway); larger ones get 413.
    #[default(6_000_000)]
    pub max_body_bytes: u64,
    /// Memory that buys an instance one whole vCPU, in MB; CPU is shared in proportion.
    #[default(Policy::default().mb_per_vcpu)]
    pub mb_per_vcpu: u32,
    /// The least CPU an instance gets, in thousandths of a vCPU.
    #[default(Policy::default().min_cpu_millis)]
    pub min_cpu_millis: u32,
    /// CPU an instance may use while it starts, in thousandths of a vCPU: its CFS quota
    /// until it first answers its health check, then its share (its weight under
    /// contention is its share throughout). 0: no boost. As Lambda's init phase, this
    /// takes an interpreter's start off a small function's 0.1-0.2 vCPU.
    #[default(1000)]
    pub startup_cpu_millis: u32,
    /// Processes and threads an instance may have.
    #[default(Policy::default().pids)]
    pub pids_limit: u32,
    /// Region name given to functions (`TENCENTCLOUD_REGION`).
    #[default("local".into())]
    pub region: String,
    /// Account app id given to functions (`TENCENTCLOUD_APPID`).
    #[default("0".into())]
    pub appid: String,
    /// Account uin given to functions (`TENCENTCLOUD_UIN`).
    #[default("0".into())]
    pub uin: String,
    /// Bytes of an instance's log file before it rotates.
    #[default(10 << 20)]
    pub log_max_bytes: u64,
    /// Log files kept per instance, the current one included.
    #[default(3)]
    pub log_files: u32,
    /// Seconds the logs of an ended instance are kept.
    #[default(3600)]
    pub log_retention_s: u64,
    /// The control plane to join, `http://host:port` (its grpc_listen); none: standalone.
    /// Several replicas, comma-separated: the agent joins every one (each serves the
    /// gateway; the leader places functions).
    pub controlplane_url: Option<String>,
    /// The cluster token presented to the control plane (default: `tcp_token`, which the
    /// control plane presents back when it calls this agent).
    pub controlplane_token: Option<Secret>,
    /// This node's name in the cluster (default: the host name).
    #[default(host_name())]
    pub node_name: String,
    /// Where the control plane reaches this agent's API (default: `http://<tcp_listen>`
    /// when TCP is on, else `unix://<socket>`, which only works on the same host).
    pub advertise_grpc: Option<String>,
    /// Where the gateway reaches the data plane, `host:port` (default: `dataplane_listen`).
    pub advertise_dataplane: Option<String>,
    /// First host uid and gid of the instances' user namespace: uid 0..userns_size inside
    /// an instance is userns_base.. on the host, so an instance's root is not the host's.
    /// 0 turns user namespaces off (instances then share the host's ids; not for shared
    /// nodes). Changing it needs an empty image cache (layers are unpacked for it).
    #[default(100_000)]
    pub userns_base: u32,
    /// Ids in the instances' range (65536 holds every id an ordinary image uses).
    #[default(65_536)]
    pub userns_size: u32,
    /// Where instances may connect beyond the node: "none" (default) or "internet"
    /// (public addresses only, masqueraded). Never other instances, the node, private or
    /// link-local (metadata) ranges.
    #[default(crate::firewall::Egress::None)]
    pub egress: crate::firewall::Egress,
    /// Name servers of instances when egress is "internet" (default: the node's, from
    /// /etc/resolv.conf, loopback ones left out). Instances reach them on port 53 only.
    pub dns_servers: Vec<std::net::IpAddr>,
    /// Install the instances' network policy (nftables) on the bridge. false leaves
    /// instances able to reach each other, the node and its networks: only for nodes that
    /// run one tenant's functions.
    #[default(true)]
    pub firewall: bool,
    /// Run instances under the seccomp filter. false only to measure what it costs or to
    /// find which call a function needs: it opens the calls kernel exploits use.
    #[default(true)]
    pub seccomp: bool,
    /// Budget: instances at once.
    #[default(500)]
    pub max_instances: u32,
    /// Budget: the sum of the instances' memory limits, MB (0: the node's memory less 1 GiB).
    pub memory_budget_mb: u64,
    /// Budget: the instances' /tmp files (528 MiB each), bytes (0: four fifths of 90% of
    /// the free space of state_dir's filesystem at start).
    pub scratch_budget_bytes: u64,
    /// Budget: the instances' logs (log_max_bytes × log_files each), bytes (0: one fifth
    /// of 90% of that free space).
    pub log_budget_bytes: u64,
    /// The cluster's data plane key (at least 32 characters; the control plane's
    /// `dataplane_key`): calls must then be signed by the gateway. Required when
    /// dataplane_listen is not a loopback address.
    pub dataplane_key: Option<Secret>,
    /// Where `/metrics` (Prometheus text) is served.
    #[default(SocketAddr::from(([127, 0, 0, 1], 9464)))]
    pub metrics_listen: SocketAddr,
    /// The cluster CA's certificate (PEM, `fnrt-controlplane ca init`): with the two
    /// below, the TCP API serves TLS and takes only callers holding a certificate of
    /// this CA, and the agent joins an `https://` controlplane_url with its certificate.
    pub tls_ca_file: Option<PathBuf>,
    /// This node's certificate (`fnrt-controlplane ca issue --role node --name <node_name>`).
    pub tls_cert_file: Option<PathBuf>,
    /// Its private key.
    pub tls_key_file: Option<PathBuf>,
    /// Allow cluster links beyond loopback without TLS (tcp_listen, an `http://`
    /// controlplane_url). Anyone on the path then reads every function's secrets and can
    /// change calls; logged as a warning at start.
    pub insecure: bool,
}

pub use fnrt_common::config::ConfigError;

impl Config {
    /// Loads the defaults, then `file` (if any), then `FNRT_AGENT_*` variables from `env`.
    /// Flags are applied by the caller with [`Config::set`] before [`Config::validate`].
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        fnrt_common::config::load(&Config::default(), file, "FNRT_AGENT_", env)
    }

    /// Sets one field by its name, from text (as environment and flags give it).
    pub fn set(&mut self, field: &str, value: &str) -> Result<(), String> {
        fnrt_common::config::set(self, field, value)
    }

    /// Checks the tokens and keys: lengths, and a key wherever the data plane is reachable
    /// beyond loopback.
    fn check_secrets(&self, errors: &mut Vec<String>) {
        let short = |t: &Option<Secret>| t.as_ref().is_some_and(|t| !t.is_empty() && t.expose().len() < 32);
        if short(&self.tcp_token) || short(&self.controlplane_token) {
            errors.push(
                "tcp_token and controlplane_token must be at least 32 characters (a random one: \
                 openssl rand -hex 32)"
                    .to_string(),
            );
        }
        if self.tcp_listen.is_some() && self.tcp_token.as_ref().is_none_or(Secret::is_empty) {
            errors.push(
                "tcp_listen is set but tcp_token is empty: the API runs arbitrary images, so \
                 TCP needs a token"
                    .to_string(),
            );
        }
        match &self.dataplane_key {
            Some(k) if k.expose().len() < fnrt_common::signature::MIN_KEY_LEN => errors.push(format!(
                "dataplane_key must be at least {} characters (a random one: openssl rand -hex 32)",
                fnrt_common::signature::MIN_KEY_LEN
            )),
            None if !self.dataplane_listen.ip().is_loopback() => errors.push(format!(
                "dataplane_listen {} is beyond loopback, so dataplane_key must be set: without it \
                 anyone who reaches the port could call any function, private ones included",
                self.dataplane_listen
            )),
            _ => {}
        }
    }

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

    /// Whether the data plane serves TLS: with the cluster TLS files, when it listens
    /// beyond loopback (on loopback no packet leaves the node).
    pub fn dataplane_tls(&self) -> bool {
        self.tls_files().is_some() && !self.dataplane_listen.ip().is_loopback()
    }

    /// The links beyond loopback that run without TLS (empty when none does).
    pub fn plain_links(&self) -> Vec<String> {
        let mut plain = Vec::new();
        if let Some(a) = self.tcp_listen.filter(|a| !a.ip().is_loopback() && self.tls_files().is_none()) {
            plain.push(format!("tcp_listen {a}"));
        }
        if !self.dataplane_listen.ip().is_loopback() && !self.dataplane_tls() {
            plain.push(format!("dataplane_listen {}", self.dataplane_listen));
        }
        for url in self.controlplane_urls().into_iter().filter(|u| u.starts_with("http://")) {
            if !fnrt_proto::tls::is_local(&url) {
                plain.push(format!("controlplane_url {url}"));
            }
        }
        plain
    }

    /// The control-plane replicas to join (`controlplane_url`, comma-separated).
    pub fn controlplane_urls(&self) -> Vec<String> {
        let urls = self.controlplane_url.as_deref().unwrap_or_default().split(',');
        urls.map(str::trim).filter(|u| !u.is_empty()).map(str::to_string).collect()
    }

    /// Checks the cluster links: TLS files all or none, and TLS (or `insecure`) beyond
    /// loopback.
    fn check_links(&self, errors: &mut Vec<String>) {
        if let Err(e) = self.tls_setting() {
            errors.push(e);
        }
        let https = self.controlplane_urls().iter().any(|u| u.starts_with("https://"));
        if https && self.tls_files().is_none() {
            errors.push(
                "controlplane_url is https:// but tls_ca_file, tls_cert_file and tls_key_file are not set"
                    .into(),
            );
        }
        if !self.insecure {
            for link in self.plain_links() {
                errors.push(format!(
                    "{link} is beyond loopback without TLS: set tls_ca_file, tls_cert_file and tls_key_file \
                     (certificates from `fnrt-controlplane ca`, README \"Cluster TLS\") and use https://, or \
                     set insecure = true to accept plain TCP"
                ));
            }
        }
    }

    /// Checks the values that can be checked without touching the node.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut errors = Vec::new();
        self.check_secrets(&mut errors);
        self.check_links(&mut errors);
        if self.namespace.is_empty() {
            errors.push("namespace must not be empty".into());
        }
        let bridge_chars = self.bridge.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if self.bridge.is_empty() || self.bridge.len() > 15 || !bridge_chars {
            errors.push(format!(
                "bridge {:?} must be 1 to 15 characters among letters, digits, '-', '_' and '.'",
                self.bridge
            ));
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
            && self.controlplane_token.as_ref().or(self.tcp_token.as_ref()).is_none_or(Secret::is_empty)
        {
            errors.push(
                "controlplane_url is set but neither controlplane_token nor tcp_token is: the control \
                 plane only takes agents that present the cluster token"
                    .into(),
            );
        }
        if self.userns_base != 0
            && (self.userns_size < 1024 || self.userns_base.checked_add(self.userns_size).is_none())
        {
            errors.push(format!(
                "userns_size ({}) must be at least 1024 and userns_base + userns_size ({} + {}) below 2^32",
                self.userns_size, self.userns_base, self.userns_size
            ));
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

    /// The node's admission budgets, from the settings or (0) from the node.
    pub fn budgets(&self) -> crate::admission::Budgets {
        let (memory, scratch, logs) = crate::admission::node_defaults(&self.state_dir);
        let or = |set: u64, node: u64| if set == 0 { node } else { set };
        crate::admission::Budgets {
            instances: self.max_instances,
            memory_mb: or(self.memory_budget_mb, memory),
            scratch_bytes: or(self.scratch_budget_bytes, scratch),
            log_bytes: or(self.log_budget_bytes, logs),
        }
    }

    /// The instances' user-namespace range.
    pub fn ids(&self) -> crate::idmap::IdMap {
        match self.userns_base {
            0 => crate::idmap::IdMap::HOST,
            base => crate::idmap::IdMap { base, size: self.userns_size },
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

    /// How the gvisor class runs.
    pub fn gvisor(&self) -> crate::runtime::GvisorSettings {
        crate::runtime::GvisorSettings {
            runsc: self.gvisor_runsc.clone(),
            platform: self.gvisor_platform.clone(),
            network: self.gvisor_network.clone(),
            flags: self.gvisor_flags.clone(),
        }
    }

    /// The sandbox classes, checked (gvisor's wrapper written under the state directory).
    pub fn sandbox_classes(&self) -> Result<crate::runtime::Classes, crate::runtime::ClassError> {
        crate::runtime::Classes::new(
            &self.runtime,
            self.listed_classes(),
            &self.gvisor(),
            &self.state_dir.join("sandbox"),
        )
    }

    /// `sandbox_classes` when set.
    pub fn listed_classes(&self) -> Option<&[fnrt_function::SandboxClass]> {
        (!self.sandbox_classes.is_empty()).then_some(self.sandbox_classes.as_slice())
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

/// The host's name, lower case (`node` when it has none).
fn host_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_ascii_lowercase())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".into())
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
        let short = cfg.validate().expect_err("shorter than 32 characters").to_string();
        assert!(short.contains("at least 32 characters") && !short.contains("s3cret-value"), "{short}");
        cfg.set("tcp_token", "s3cret-value-of-thirty-two-chars").expect("set");
        cfg.validate().expect("valid");
        assert!(!format!("{cfg:?}").contains("s3cret-value"));
    }

    #[test]
    fn plain_cluster_links_beyond_loopback_need_tls_or_insecure() {
        let mut cfg = Config::default();
        cfg.set("tcp_listen", "0.0.0.0:7000").expect("set");
        cfg.set("tcp_token", "s3cret-value-of-thirty-two-chars").expect("set");
        cfg.set("controlplane_url", "http://10.0.0.1:8092").expect("set");
        let e = cfg.validate().expect_err("plain beyond loopback").to_string();
        assert!(e.contains("tcp_listen 0.0.0.0:7000 is beyond loopback without TLS"), "{e}");
        assert!(e.contains("controlplane_url http://10.0.0.1:8092 is beyond loopback"), "{e}");
        cfg.set("insecure", "true").expect("set");
        cfg.validate().expect("insecure = true takes plain TCP");
        assert_eq!(cfg.plain_links().len(), 2, "and start warns of both");
        cfg.set("dataplane_listen", "0.0.0.0:8088").expect("set");
        cfg.set("dataplane_key", "k".repeat(32).as_str()).expect("set");
        assert_eq!(cfg.plain_links().len(), 3, "a plain data plane beyond loopback is one too");

        let mut cfg = Config::default();
        cfg.set("controlplane_url", "https://cp.example:8092").expect("set");
        cfg.set("controlplane_token", "s3cret-value-of-thirty-two-chars").expect("set");
        cfg.set("tls_ca_file", "/etc/fnrt/ca.pem").expect("set");
        let e = cfg.validate().expect_err("half the TLS files").to_string();
        assert!(e.contains("go together") && e.contains("controlplane_url is https://"), "{e}");
        cfg.set("tls_cert_file", "/etc/fnrt/node.pem").expect("set");
        cfg.set("tls_key_file", "/etc/fnrt/node.key").expect("set");
        cfg.validate().expect("TLS beyond loopback");
        assert!(cfg.plain_links().is_empty());
    }
}
