//! The fnrt control plane: the Scaleway Functions v1beta1 API users manage functions
//! with (`rest`), the gateway their clients call (`gateway`), and the scheduler that
//! places functions on the agents that joined (`scheduler`). State lives in a store
//! (`store`: redb on one machine, or etcd, which several replicas share); every replica
//! follows it (`state`), and the one that leads runs the scheduler, crons and triggers
//! (`leading`).

pub(crate) mod build;
pub mod ca;
pub mod check;
pub mod config;
pub(crate) mod crons;
pub(crate) mod domains;
pub(crate) mod error;
pub(crate) mod functions;
pub(crate) mod gateway;
pub mod json;
pub mod leading;
pub mod metrics;
pub mod model;
pub(crate) mod namespaces;
pub(crate) mod rest;
pub(crate) mod route_index;
pub(crate) mod runtimes;
pub(crate) mod sandbox;
pub mod scheduler;
pub(crate) mod scrape;
pub(crate) mod serve;
pub mod state;
pub mod store;
pub(crate) mod task;
pub mod tokens;
pub(crate) mod triggers;
pub(crate) mod webhook;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use config::Config;
use scheduler::Scheduler;
use state::State;

/// What the servers share.
pub struct Ctx {
    /// The configuration (admin token resolved).
    pub cfg: Arc<Config>,
    /// The resources.
    pub state: Arc<State>,
    /// The scheduler.
    pub scheduler: Arc<Scheduler>,
    /// Upload URLs already used (they serve once).
    pub used_uploads: rest::code::UsedUrls,
    /// Whether this replica leads, and in which term.
    pub leading: watch::Receiver<Option<store::Fence>>,
}

/// Why the control plane could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// The state directory or admin token file.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: std::path::PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The store.
    #[error(transparent)]
    State(#[from] error::Error),
    /// The HTTPS client set-up.
    #[error(transparent)]
    Tls(#[from] fnrt_registry::TlsSetupError),
    /// The registry credentials or CA file cannot be used.
    #[error(transparent)]
    Registry(#[from] fnrt_registry::SettingsError),
    /// The cluster TLS files cannot be used.
    #[error("cluster TLS: {0}")]
    ClusterTls(String),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
}

/// A running control plane.
pub struct Handle {
    /// The management API's address.
    pub api_address: SocketAddr,
    /// The gateway's address.
    pub gateway_address: SocketAddr,
    /// The gRPC address agents join on.
    pub grpc_address: SocketAddr,
    /// Where `/metrics` is served.
    pub metrics_address: SocketAddr,
    /// The shared context.
    pub ctx: Arc<Ctx>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Handle {
    /// Stops the servers and the scheduler and waits for them.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks.drain(..) {
            t.abort();
            let _ = t.await;
        }
        self.ctx.scheduler.stop_calls().await;
        // The others need not wait for this replica's lease to expire.
        self.ctx.state.store().resign().await;
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StartError + '_ {
    move |source| StartError::Io { path: path.to_path_buf(), source }
}

/// A secret every replica shares: kept in the store under `key` (made by the first
/// replica to start; the others read it).
async fn shared_secret(
    store: &dyn store::Store,
    key: &str,
    make: impl FnOnce() -> Vec<u8>,
) -> Result<Vec<u8>, StartError> {
    if let Some(v) = store.get(key).await.map_err(error::Error::from)? {
        return Ok(v);
    }
    let v = make();
    let first = vec![store::Cond::Value(key.to_string(), None)];
    match store
        .apply_if(first, vec![store::Op::Put(key.to_string(), v.clone())])
        .await
        .map_err(error::Error::from)?
    {
        store::Applied::Done(_) => Ok(v),
        store::Applied::Conflict(_) => Ok(store.get(key).await.map_err(error::Error::from)?.unwrap_or(v)),
    }
}

/// The admin token: configured, or kept in `<state_dir>/admin-token` (made at first start;
/// on etcd, shared by the replicas through the store and copied to that file).
async fn admin_token(cfg: &Config, store: &dyn store::Store) -> Result<String, StartError> {
    if !cfg.admin_token.is_empty() {
        return Ok(cfg.admin_token.expose().to_string());
    }
    let path = cfg.state_dir.join("admin-token");
    if cfg.store == "etcd" {
        let made = || uuid::Uuid::new_v4().to_string().into_bytes();
        let token =
            String::from_utf8_lossy(&shared_secret(store, "~secret/admin-token", made).await?).to_string();
        fnrt_common::durable::write(&path, token.as_bytes(), 0o600).map_err(io(&path))?;
        return Ok(token);
    }
    let made = match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => return Ok(t.trim().to_string()),
        // Empty only if an older version crashed while writing it: no one can hold it.
        Ok(_) => "made the admin secret key (X-Auth-Token) again: the file was empty",
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => "made the admin secret key (X-Auth-Token)",
        Err(e) => return Err(io(&path)(e)),
    };
    let token = uuid::Uuid::new_v4().to_string();
    fnrt_common::durable::write(&path, token.as_bytes(), 0o600).map_err(io(&path))?;
    tracing::info!(path = %path.display(), "{made}");
    Ok(token)
}

/// The key that signs upload and download URLs: `<state_dir>/url-key` (made at first
/// start; on etcd, shared by the replicas through the store).
async fn url_key(cfg: &Config, store: &dyn store::Store) -> Result<Vec<u8>, StartError> {
    if cfg.store == "etcd" {
        return shared_secret(store, "~secret/url-key", || rand::random::<[u8; 32]>().to_vec()).await;
    }
    let path = cfg.state_dir.join("url-key");
    match std::fs::read(&path) {
        Ok(k) if k.len() >= 32 => Ok(k),
        Ok(_) | Err(_) => {
            let key = rand::random::<[u8; 32]>().to_vec();
            fnrt_common::durable::write(&path, &key, 0o600).map_err(io(&path))?;
            Ok(key)
        }
    }
}

async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, StartError> {
    tokio::net::TcpListener::bind(addr).await.map_err(|source| StartError::Listen { addr, source })
}

/// Opens the store and starts the API, the gateway, the join service, the scheduler
/// and the cron timer.
pub async fn start(mut cfg: Config) -> Result<Handle, StartError> {
    cfg.validate()?;
    let state = open_state(&cfg).await?;
    cfg.admin_token = admin_token(&cfg, state.store().as_ref()).await?.into();
    let api = bind(cfg.api_listen).await?;
    if cfg.public_url.is_empty() {
        let addr = api.local_addr().map_err(|source| StartError::Listen { addr: cfg.api_listen, source })?;
        cfg.public_url = format!("http://{addr}");
    }
    cfg.url_key = url_key(&cfg, state.store().as_ref()).await?;
    let cfg = Arc::new(cfg);
    let scheduler = Arc::new(Scheduler::new(cfg.clone(), state.clone(), registry(&cfg)?));
    let api_addr = api.local_addr().map_err(|source| StartError::Listen { addr: cfg.api_listen, source })?;
    // Campaigns from here on (the embedded store always leads).
    let leading = state.store().lead(&leading::replica_name(api_addr));
    let ctx = Arc::new(Ctx {
        cfg: cfg.clone(),
        state,
        scheduler: scheduler.clone(),
        used_uploads: Default::default(),
        leading,
    });
    let (shutdown, stop) = watch::channel(false);
    let tls = cluster_tls(&cfg)?;
    let gw = bind(cfg.gateway_listen).await?;
    let grpc = bind(cfg.grpc_listen).await?;
    let metrics = bind(cfg.metrics_listen).await?;
    let metrics_address =
        metrics.local_addr().map_err(|source| StartError::Listen { addr: cfg.metrics_listen, source })?;
    let (api_address, gateway_address, grpc_address) = (
        api.local_addr().map_err(|source| StartError::Listen { addr: cfg.api_listen, source })?,
        gw.local_addr().map_err(|source| StartError::Listen { addr: cfg.gateway_listen, source })?,
        grpc.local_addr().map_err(|source| StartError::Listen { addr: cfg.grpc_listen, source })?,
    );
    let mut tasks = vec![
        serve::spawn(api, rest::router(ctx.clone()), cfg.http_limits(), stop.clone()),
        serve::spawn(
            gw,
            gateway::router(ctx.clone(), gateway_tls(tls.as_ref())?),
            cfg.http_limits(),
            stop.clone(),
        ),
        tokio::spawn(leading::supervise(scheduler.clone(), ctx.state.clone(), ctx.leading.clone())),
        tokio::spawn(scheduler.clone().run_queue()),
        serve::spawn(metrics, scrape::router(scheduler.clone()), cfg.http_limits(), stop.clone()),
    ];
    let mut server = tonic::transport::Server::builder();
    if let Some(tls) = &tls {
        server = server
            .tls_config(fnrt_proto::tls::server(tls))
            .map_err(|e| StartError::ClusterTls(e.to_string()))?;
    }
    let join = fnrt_proto::controlplane::v1::control_plane_server::ControlPlaneServer::new(
        scheduler::agents::Join { scheduler: scheduler.clone(), tls },
    );
    let mut stop_grpc = stop.clone();
    tasks.push(tokio::spawn(async move {
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(grpc);
        let shutdown = async move {
            let _ = stop_grpc.wait_for(|s| *s).await;
        };
        if let Err(e) = server.add_service(join).serve_with_incoming_shutdown(incoming, shutdown).await {
            tracing::error!(error = %e, "gRPC server failed");
        }
    }));
    tracing::info!(api = %api_address, gateway = %gateway_address, grpc = %grpc_address, metrics = %metrics_address, "control plane started");
    Ok(Handle { api_address, gateway_address, grpc_address, metrics_address, ctx, shutdown, tasks })
}

/// The state directory (what a crash left half written swept away) and the store in it.
async fn open_state(cfg: &Config) -> Result<Arc<State>, StartError> {
    std::fs::create_dir_all(&cfg.state_dir).map_err(io(&cfg.state_dir))?;
    for dir in [cfg.state_dir.clone(), cfg.state_dir.join("code")] {
        let swept = fnrt_common::durable::sweep(&dir);
        if swept > 0 {
            tracing::warn!(dir = %dir.display(), files = swept, "removed files a crash left half written");
        }
    }
    let state = State::open(open_store(cfg).await?).await?;
    namespaces::upgrade_secret_hashes(&state).await?;
    Ok(state)
}

/// The store the configuration names.
pub async fn open_store(cfg: &Config) -> Result<Arc<dyn store::Store>, StartError> {
    let store: Arc<dyn store::Store> = if cfg.store == "etcd" {
        Arc::new(store::EtcdStore::connect(&cfg.etcd_settings()).await.map_err(error::Error::from)?)
    } else {
        let db = cfg.state_dir.join("state.redb");
        let redb = tokio::task::spawn_blocking(move || store::RedbStore::open(&db))
            .await
            .map_err(|e| error::Error::Internal(e.to_string()))?
            .map_err(error::Error::from)?;
        Arc::new(redb)
    };
    Ok(store)
}

/// The registry client the configuration asks for.
pub(crate) fn registry(cfg: &Config) -> Result<fnrt_registry::Registry, StartError> {
    let settings = fnrt_registry::RegistrySettings {
        allowed_registries: cfg.registries_allowed(),
        ..fnrt_registry::RegistrySettings::load(
            cfg.registry_auth_file.as_deref(),
            cfg.registry_ca_file.as_deref(),
            cfg.plain_http_registries.clone(),
        )?
    };
    Ok(fnrt_registry::Registry::new(settings, concat!("fnrt-controlplane/", env!("CARGO_PKG_VERSION")))?)
}

/// The cluster TLS material the configuration names (a warning when the join service
/// runs in plain beyond loopback, which `insecure = true` allowed).
pub(crate) fn cluster_tls(cfg: &Config) -> Result<Option<fnrt_common::pki::ClusterTls>, StartError> {
    if cfg.plain_grpc() {
        tracing::warn!(grpc = %cfg.grpc_listen, "insecure = true: agents join without TLS; anyone on the path can read and change the cluster's traffic");
    }
    let Some((ca, cert, key)) = cfg.tls_files() else {
        return Ok(None);
    };
    fnrt_common::pki::ClusterTls::load(ca, cert, key, fnrt_common::pki::Role::ControlPlane)
        .map(Some)
        .map_err(|e| StartError::ClusterTls(e.to_string()))
}

/// How the gateway calls data planes that serve TLS: as this control plane, trusting only
/// the cluster CA (without cluster TLS, agents cannot register such data planes).
fn gateway_tls(tls: Option<&fnrt_common::pki::ClusterTls>) -> Result<rustls::ClientConfig, StartError> {
    match tls {
        Some(t) => t.client_config().map_err(|e| StartError::ClusterTls(e.to_string())),
        None => fnrt_common::tls::client_config(&[]).map_err(|e| StartError::ClusterTls(e.to_string())),
    }
}

/// Runs the control plane until SIGINT or SIGTERM.
pub async fn run(cfg: Config) -> Result<(), StartError> {
    let handle = start(cfg).await?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|source| StartError::Io { path: "SIGTERM".into(), source })?;
    // Only now: its store is open, its listeners bound, and SIGTERM is handled.
    fnrt_common::service::ready(&format!("serving; API on {}", handle.api_address));
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    fnrt_common::service::stopping("stopping");
    tracing::info!("stopping");
    handle.shutdown().await;
    Ok(())
}
