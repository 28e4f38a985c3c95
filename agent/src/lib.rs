//! The fnrt agent: the per-node owner of function containers.
//!
//! It pulls function images into containerd, runs instances of them (each in its own
//! network namespace on the node's function bridge), waits for them to listen on :9000,
//! and forwards calls to them through its HTTP data plane. Its gRPC API (`proto/agent.proto`)
//! is served on a Unix socket, and on TCP only with a bearer token.
//!
//! [`start`] brings a node up and returns a handle that knows its addresses and shuts the
//! servers down when dropped; [`run`] is what the binary calls.

pub(crate) mod admission;
pub(crate) mod api;
pub mod check;
pub(crate) mod config;
pub(crate) mod containerd;
pub(crate) mod dataplane;
pub(crate) mod deadline;
pub(crate) mod dns;
pub(crate) mod env;
pub(crate) mod error;
pub(crate) mod events;
pub(crate) mod firewall;
pub(crate) mod health;
pub(crate) mod idmap;
pub(crate) mod image;
pub(crate) mod instance;
pub(crate) mod join;
pub(crate) mod logs;
pub(crate) mod metrics;
pub(crate) mod neighbor;
pub(crate) mod network;
pub(crate) mod pool;
pub(crate) mod request_id;
pub(crate) mod runtime;
pub(crate) mod stats;
pub(crate) mod tcp_api;
pub(crate) mod upstream;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fnrt_proto::agent::v1::agent_server::AgentServer;
use futures_util::Stream;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::server::{Connected, Router};
use tonic::transport::Server;

pub use config::{Config, ConfigError};
pub use containerd::Containerd;
pub use error::{chain, Error};
pub use firewall::Egress;
pub use image::chain_ids;
pub use network::Network;

use image::ImageStore;
use instance::{ImageCache, Instance, Instances, NodeImage};
use runtime::Runtime;

/// A node: the agent's core, shared by the gRPC API and the data plane.
pub struct Node {
    cd: Containerd,
    /// The node's instances.
    pub instances: Arc<Instances>,
    /// The deployed functions.
    pub pools: Arc<pool::Pools>,
    /// The data plane (the gRPC Invoke goes through it).
    pub dataplane: Arc<dataplane::Dataplane>,
    dataplane_address: SocketAddr,
    /// How instance limits follow from memory.
    pub policy: fnrt_function::Policy,
}

/// What `NodeStatus` reports.
#[derive(Debug)]
pub struct NodeStatus {
    /// The agent's version.
    pub agent_version: String,
    /// containerd's version.
    pub containerd_version: String,
    /// The node's architecture, in OCI terms.
    pub architecture: String,
    /// The agent's containerd namespace.
    pub namespace: String,
    /// The data plane's address.
    pub dataplane_address: String,
    /// The instances.
    pub instances: Vec<Instance>,
    /// The images.
    pub images: Vec<NodeImage>,
    /// CPUs of the node.
    pub cpus: u32,
    /// Memory of the node, in bytes.
    pub memory_bytes: u64,
    /// The sandbox classes it offers.
    pub sandbox_classes: Vec<fnrt_function::SandboxClass>,
}

impl Node {
    /// The node's status.
    pub async fn status(&self) -> Result<NodeStatus, Error> {
        Ok(NodeStatus {
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            containerd_version: self.cd.version().await?,
            architecture: oci_arch(std::env::consts::ARCH).to_string(),
            namespace: self.cd.namespace().to_string(),
            dataplane_address: self.dataplane_address.to_string(),
            instances: self.instances.list(None).await?,
            images: self.instances.cached_images().await?.0,
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
            memory_bytes: node_memory_bytes(),
            sandbox_classes: self.instances.sandbox_classes(),
        })
    }
}

/// MemTotal of /proc/meminfo; 0 if it cannot be read.
fn node_memory_bytes() -> u64 {
    let info = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    info.lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn oci_arch(rust_arch: &str) -> &str {
    match rust_arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// Failures that keep the agent from starting.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// The registry credentials or CA file cannot be used.
    #[error(transparent)]
    Registry(#[from] fnrt_registry::SettingsError),
    /// The registry CA file cannot be used.
    #[error(transparent)]
    Tls(#[from] image::TlsSetupError),
    /// The network policy could not be installed.
    #[error(transparent)]
    Firewall(#[from] firewall::FirewallError),
    /// The user namespace range does not fit the image cache.
    #[error(transparent)]
    IdRange(#[from] idmap::RangeError),
    /// A sandbox class cannot be offered.
    #[error(transparent)]
    Sandbox(#[from] runtime::ClassError),
    /// The cluster TLS files cannot be used.
    #[error("cluster TLS: {0}")]
    ClusterTls(String),
    /// The core could not start (containerd unreachable, cleanup failed...).
    #[error(transparent)]
    Core(#[from] Error),
    /// A listener or directory could not be set up.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path or address.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// A running agent. Dropping it stops its servers (instances keep running: they belong
/// to containerd, and the next agent adopts them).
pub struct AgentHandle {
    /// The core.
    pub node: Arc<Node>,
    /// Path of the gRPC Unix socket.
    pub socket: PathBuf,
    /// The data plane's address.
    pub dataplane_address: SocketAddr,
    /// Where `/metrics` is served.
    pub metrics_address: SocketAddr,
    /// The gRPC TCP address, when enabled.
    pub tcp_address: Option<SocketAddr>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl AgentHandle {
    /// Stops the servers and waits for them.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

impl Drop for AgentHandle {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

/// Makes the agent's directories, checks the user namespace range against the image cache, installs the instances'
/// network policy and isolates the bridge's ports (those of adopted instances included).
async fn prepare_node(cfg: &Config) -> Result<(idmap::IdMap, Option<PathBuf>), StartError> {
    for dir in [&cfg.state_dir.join("logs"), &cfg.cni_data_dir()] {
        std::fs::create_dir_all(dir).map_err(|source| StartError::Io {
            what: "create directory",
            path: dir.display().to_string(),
            source,
        })?;
    }
    // What a crash left half written (the state files are replaced whole; see durable).
    for dir in [cfg.state_dir.clone(), cfg.state_dir.join("functions")] {
        let swept = fnrt_common::durable::sweep(&dir);
        if swept > 0 {
            tracing::warn!(dir = %dir.display(), files = swept, "removed files a crash left half written");
        }
    }
    let ids = cfg.ids();
    ids.check_recorded(&cfg.state_dir)?;
    let dns = match cfg.egress {
        firewall::Egress::None => Vec::new(),
        firewall::Egress::Internet => dns::servers(&cfg.dns_servers),
    };
    let resolv_conf = if cfg.egress == firewall::Egress::Internet {
        if dns.is_empty() {
            tracing::warn!("egress = \"internet\" but no name server an instance can reach: set dns_servers");
        }
        let path = dns::write(&cfg.state_dir, &dns).map_err(|source| StartError::Io {
            what: "write",
            path: "resolv.conf".into(),
            source,
        })?;
        Some(path)
    } else {
        None
    };
    if cfg.firewall {
        firewall::Firewall::new(&cfg.bridge, &cfg.subnet, cfg.egress).with_dns(&dns).install().await?;
    } else {
        tracing::warn!(bridge = %cfg.bridge, "firewall = false: instances can reach each other and the node");
    }
    let network =
        Network::new(&cfg.cni_bin_dir, &cfg.cni_data_dir(), &cfg.bridge, &cfg.subnet, &cfg.namespace);
    network.isolate_ports().map_err(Error::from)?;
    Ok((ids, resolv_conf))
}

/// Starts an agent: connects to containerd, adopts the instances it already has, and
/// serves the gRPC API and the data plane.
pub async fn start(cfg: Config) -> Result<AgentHandle, StartError> {
    cfg.validate()?;
    // The socket first: it refuses to start beside a live agent, before the data plane's
    // port (shared with SO_REUSEPORT) could take any of that agent's callers.
    let unix = bind_unix(&cfg.socket)?;
    let dataplane_listeners = bind_dataplanes(&cfg)?;
    let tls = tcp_api::load_tls(&cfg)?;
    let cd = Containerd::connect(&cfg.containerd_socket, &cfg.namespace).await.map_err(Error::from)?;
    let log_dir = cfg.state_dir.join("logs");
    let (ids, resolv_conf) = prepare_node(&cfg).await?;
    let limits = image::UnpackLimits {
        max_bytes: cfg.image_max_unpacked_bytes,
        max_entries: cfg.image_max_unpacked_entries,
    };
    let images =
        ImageStore::new(cd.clone(), &cfg.snapshotter, registry(&cfg)?, ids).with_unpack_limits(limits);
    let network =
        Network::new(&cfg.cni_bin_dir, &cfg.cni_data_dir(), &cfg.bridge, &cfg.subnet, &cfg.namespace);
    let scratch_dir = cfg.state_dir.join("scratch");
    let classes = cfg.sandbox_classes()?;
    let mut runtime = Runtime::new(cd.clone(), &cfg.snapshotter, classes, scratch_dir, ids, cfg.seccomp);
    runtime.resolv_conf = resolv_conf;
    runtime.startup_cpu_millis = cfg.startup_cpu_millis;
    let logs = Arc::new(logs::Logs::new(log_dir, cfg.state_dir.join("io"), cfg.log_settings()));
    let metrics = Arc::new(metrics::Metrics::default());
    let instances = Arc::new(Instances::new(instance::Parts {
        images: Arc::new(ImageCache::new(images, cfg.image_cache_bytes, metrics.clone())),
        network,
        runtime,
        health_timeout: cfg.health_timeout(),
        policy: cfg.limits_policy(),
        identity: cfg.identity(),
        logs: logs.clone(),
        marks: cfg.state_dir.join("instances"),
        ledger: Arc::new(admission::Ledger::new(cfg.budgets())),
        log_bytes: cfg.log_max_bytes * u64::from(cfg.log_files),
    }));
    let pools = Arc::new(pool::Pools::new(
        instances.clone(),
        metrics,
        cfg.limits_policy(),
        cfg.state_dir.join("functions"),
    ));
    let (shutdown, rx) = watch::channel(false);
    let mut tasks = Vec::new();
    // Watching before adopting: an instance that ends meanwhile is not missed.
    tasks.push(tokio::spawn(instances.clone().watch(cd.clone(), rx.clone())));
    instances.adopt().await?;
    pools.restore();
    tasks.push(tokio::spawn(logs.clone().sweep_loop(rx.clone())));

    let dataplane_tls = tls.as_ref().filter(|_| cfg.dataplane_tls());
    let (dataplane_address, dp) =
        serve_dataplanes(&cfg, dataplane_listeners, dataplane_tls, &pools, &logs, &rx, &mut tasks)?;
    let metrics_address = serve_metrics(&cfg, &pools, &logs, &rx, &mut tasks)?;
    tasks.push(tokio::spawn(pools.clone().maintain(rx.clone())));

    let node = Arc::new(Node {
        cd,
        instances,
        pools,
        dataplane: dp,
        dataplane_address,
        policy: cfg.limits_policy(),
    });
    let router = Server::builder().add_service(AgentServer::new(api::Api::new(node.clone())));
    tasks.push(spawn_server(router, UnixListenerStream::new(unix), rx.clone(), "Unix socket"));

    let tcp_address = tcp_api::serve(&cfg, tls.as_ref(), &node, &rx, &mut tasks).await?;
    for join in join::Join::configured(&cfg, tls.as_ref(), tcp_address, dataplane_address)? {
        tasks.push(tokio::spawn(join::run(node.clone(), join, rx.clone())));
    }
    tracing::info!(socket = %cfg.socket.display(), dataplane = %dataplane_address, namespace = %cfg.namespace, "agent ready");
    Ok(AgentHandle {
        node,
        socket: cfg.socket.clone(),
        dataplane_address,
        metrics_address,
        tcp_address,
        shutdown,
        tasks,
    })
}

/// Binds the data plane: one listener per core on one port (SO_REUSEPORT), each data plane
/// thread accepting its own. Bound first thing at start, so that during a restart callers'
/// connections wait in the listen queue until the agent serves them, not refused.
fn bind_dataplanes(cfg: &Config) -> Result<Vec<std::net::TcpListener>, StartError> {
    let bind_err = |what| {
        let path = cfg.dataplane_listen.to_string();
        move |source| StartError::Io { what, path, source }
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let first = reuseport_listener(cfg.dataplane_listen).map_err(bind_err("bind data plane"))?;
    let address = first.local_addr().map_err(bind_err("data plane address"))?;
    let mut listeners = vec![first];
    for _ in 1..threads {
        listeners.push(reuseport_listener(address).map_err(bind_err("bind data plane"))?);
    }
    Ok(listeners)
}

/// Serves the data plane on `listeners`, each on a thread of its own; returns its address
/// and the data plane the gRPC Invoke uses.
fn serve_dataplanes(
    cfg: &Config,
    listeners: Vec<std::net::TcpListener>,
    tls: Option<&fnrt_common::pki::ClusterTls>,
    pools: &Arc<pool::Pools>,
    logs: &Arc<logs::Logs>,
    rx: &watch::Receiver<bool>,
    tasks: &mut Vec<JoinHandle<()>>,
) -> Result<(SocketAddr, Arc<dataplane::Dataplane>), StartError> {
    let dataplane_address =
        listeners.first().and_then(|l| l.local_addr().ok()).ok_or_else(|| StartError::Io {
            what: "data plane address",
            path: cfg.dataplane_listen.to_string(),
            source: std::io::Error::other("no listener"),
        })?;
    // Each thread its own client too: a pooled connection to an instance then lives on the
    // thread that uses it. (The gRPC Invoke has one of its own on the main runtime.)
    let key = cfg.dataplane_key.as_ref().map(|k| fnrt_common::signature::Key::new(k.expose()));
    let tls =
        tls.map(|t| t.server_config().map_err(|e| StartError::ClusterTls(e.to_string()))).transpose()?;
    let limits = dataplane::Limits {
        header_timeout: std::time::Duration::from_millis(cfg.http_header_timeout_ms.max(1)),
        max_body_bytes: cfg.max_body_bytes,
        connections: Arc::new(tokio::sync::Semaphore::new(cfg.dataplane_max_connections.max(1) as usize)),
        drain: std::time::Duration::from_millis(cfg.drain_timeout_ms),
    };
    for (i, l) in listeners.into_iter().enumerate() {
        let mut dp =
            dataplane::Dataplane::new(pools.clone(), logs.clone(), dataplane::Role::Calls, key.clone())
                .with_limits(limits.clone());
        if let Some(tls) = &tls {
            dp = dp.with_tls(tls.clone());
        }
        let dp = Arc::new(dp);
        tasks.push(serve_dataplane(dp, l, rx.clone(), i)?);
    }
    let dp = Arc::new(dataplane::Dataplane::new(pools.clone(), logs.clone(), dataplane::Role::Calls, key));
    Ok((dataplane_address, dp))
}

/// Serves `/metrics` on `metrics_listen`, apart from the calls.
fn serve_metrics(
    cfg: &Config,
    pools: &Arc<pool::Pools>,
    logs: &Arc<logs::Logs>,
    rx: &watch::Receiver<bool>,
    tasks: &mut Vec<JoinHandle<()>>,
) -> Result<SocketAddr, StartError> {
    let bind_err = |what| {
        let path = cfg.metrics_listen.to_string();
        move |source| StartError::Io { what, path, source }
    };
    let listener = std::net::TcpListener::bind(cfg.metrics_listen).map_err(bind_err("bind metrics"))?;
    listener.set_nonblocking(true).map_err(bind_err("metrics listener"))?;
    let address = listener.local_addr().map_err(bind_err("metrics address"))?;
    let dp = Arc::new(dataplane::Dataplane::new(pools.clone(), logs.clone(), dataplane::Role::Metrics, None));
    let listener = TcpListener::from_std(listener).map_err(bind_err("metrics listener"))?;
    tasks.push(tokio::spawn(dp.serve(listener, rx.clone())));
    Ok(address)
}

/// A listening socket on `addr` that other sockets may share (SO_REUSEPORT).
fn reuseport_listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket =
        if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    let listener = socket.listen(1024)?;
    listener.into_std()
}

/// Runs a data plane listener on a thread of its own with a single-threaded runtime: a
/// call's server side and its connection to the instance then wake each other on one
/// thread, not across the agent's worker threads (cross-thread wake-ups were the largest
/// cost of a proxied call on 2 cores; see BENCHMARKS.md).
fn serve_dataplane(
    dp: Arc<dataplane::Dataplane>,
    std_listener: std::net::TcpListener,
    shutdown: watch::Receiver<bool>,
    n: usize,
) -> Result<JoinHandle<()>, StartError> {
    let io = |source| StartError::Io { what: "data plane thread", path: String::new(), source };
    std_listener.set_nonblocking(true).map_err(io)?;
    let thread = std::thread::Builder::new()
        .name(format!("fnrt-dataplane-{n}"))
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => return tracing::error!(error = %e, "data plane runtime"),
            };
            rt.block_on(async move {
                match TcpListener::from_std(std_listener) {
                    Ok(l) => dp.serve(l, shutdown).await,
                    Err(e) => tracing::error!(error = %e, "data plane listener"),
                }
            });
        })
        .map_err(io)?;
    Ok(tokio::task::spawn_blocking(move || {
        let _ = thread.join();
    }))
}

/// The registry client the configuration asks for.
pub(crate) fn registry(cfg: &Config) -> Result<image::Registry, StartError> {
    let settings = fnrt_registry::RegistrySettings {
        allowed_registries: cfg.allowed_registries.clone(),
        idle_timeout: std::time::Duration::from_secs(cfg.registry_idle_timeout_s),
        transfer_timeout: std::time::Duration::from_secs(cfg.registry_transfer_timeout_s),
        ..fnrt_registry::RegistrySettings::load(
            cfg.registry_auth_file.as_deref(),
            cfg.registry_ca_file.as_deref(),
            cfg.plain_http_registries.clone(),
        )?
    };
    Ok(image::Registry::new(settings, concat!("fnrt-agent/", env!("CARGO_PKG_VERSION")))?)
}

/// Serves `router` on `incoming` until `stop` turns true.
pub(crate) fn spawn_server<I, IO, IE>(
    router: Router,
    incoming: I,
    mut stop: watch::Receiver<bool>,
    what: &'static str,
) -> JoinHandle<()>
where
    I: Stream<Item = Result<IO, IE>> + Send + 'static,
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
    IE: Into<Box<dyn std::error::Error + Send + Sync>> + Send,
{
    tokio::spawn(async move {
        let res = router
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = stop.changed().await;
            })
            .await;
        if let Err(e) = res {
            tracing::error!(error = %e, "gRPC server on {what}");
        }
    })
}

fn bind_unix(path: &Path) -> Result<UnixListener, StartError> {
    let io = |what, source| StartError::Io { what, path: path.display().to_string(), source };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| io("create socket directory", e))?;
    }
    if path.exists() {
        // A socket nobody answers on is left over from an agent that died.
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(io(
                "bind gRPC socket",
                std::io::Error::new(std::io::ErrorKind::AddrInUse, "another agent is serving on it"),
            ));
        }
        std::fs::remove_file(path).map_err(|e| io("remove stale socket", e))?;
    }
    UnixListener::bind(path).map_err(|e| io("bind gRPC socket", e))
}

/// Runs an agent until SIGINT or SIGTERM.
pub async fn run(cfg: Config) -> Result<(), StartError> {
    let handle = start(cfg).await?;
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).map_err(|source| {
            StartError::Io { what: "install signal handler", path: "SIGTERM".into(), source }
        })?;
    // Only now: its sockets are bound, its instances adopted, and SIGTERM is handled.
    fnrt_common::service::ready(&format!("serving; data plane on {}", handle.dataplane_address));
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
    fnrt_common::service::stopping("draining; instances keep running for the next agent");
    tracing::info!("shutting down; instances keep running and are adopted by the next agent");
    handle.shutdown().await;
    Ok(())
}
