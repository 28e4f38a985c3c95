//! Joining a control plane: the agent registers (where to reach its API and data plane)
//! and then reports its capacity, functions and cached images every heartbeat interval
//! (`proto/controlplane.proto`). It registers again when the control plane no longer
//! knows it (a restart, or it was marked lost), and keeps trying while it is unreachable.

use std::sync::Arc;
use std::time::Duration;

use fnrt_proto::controlplane::v1 as pb;
use fnrt_proto::controlplane::v1::control_plane_client::ControlPlaneClient;
use tokio::sync::watch;
use tonic::transport::Channel;

use crate::Node;

/// Where and how to join (`Debug` shows no token).
#[derive(Clone, Debug)]
pub struct Join {
    /// The control plane's gRPC URL, `http://host:port`.
    pub url: String,
    /// The cluster token.
    pub token: fnrt_common::secret::Secret,
    /// This node's name in the cluster.
    pub node: String,
    /// This node's identity ([`node_id`]).
    pub node_id: String,
    /// The cluster TLS material, for an `https://` url.
    pub tls: Option<fnrt_common::pki::ClusterTls>,
    /// Where the control plane reaches this agent's API.
    pub grpc_endpoint: String,
    /// Where the gateway reaches this agent's data plane.
    pub dataplane: String,
    /// Whether the data plane serves TLS.
    pub dataplane_tls: bool,
}

impl Join {
    /// How to join each control plane `controlplane_url` names: the endpoints to advertise
    /// (https when the API serves TLS) and this node's identity.
    pub fn configured(
        cfg: &crate::Config,
        tls: Option<&fnrt_common::pki::ClusterTls>,
        tcp_address: Option<std::net::SocketAddr>,
        dataplane_address: std::net::SocketAddr,
    ) -> Result<Vec<Join>, crate::StartError> {
        let urls = cfg.controlplane_urls();
        if urls.is_empty() {
            return Ok(vec![]);
        }
        let node_id = node_id(&cfg.state_dir)?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        Ok(urls
            .into_iter()
            .map(|url| Join {
                url,
                token: cfg.controlplane_token.clone().or(cfg.tcp_token.clone()).unwrap_or_default(),
                node: cfg.node_name.clone(),
                node_id: node_id.clone(),
                tls: tls.cloned(),
                grpc_endpoint: cfg.advertise_grpc.clone().unwrap_or_else(|| match tcp_address {
                    Some(a) => format!("{scheme}://{a}"),
                    None => format!("unix://{}", cfg.socket.display()),
                }),
                dataplane: cfg.advertise_dataplane.clone().unwrap_or_else(|| dataplane_address.to_string()),
                dataplane_tls: cfg.dataplane_tls(),
            })
            .collect())
    }
}

/// What the node has and runs now.
async fn report(node: &Node) -> pb::Report {
    let status = match node.status().await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %crate::error::chain(&e), "cannot read the node's status for the heartbeat");
            return pb::Report::default();
        }
    };
    let live: Vec<_> = status.instances.iter().filter(|i| i.reason.is_empty()).collect();
    let (memory_budget_mb, room_instances) = node.instances.room();
    pb::Report {
        memory_budget_mb,
        room_instances: Some(room_instances),
        architecture: status.architecture,
        cpus: status.cpus,
        memory_bytes: status.memory_bytes,
        memory_reserved_mb: live.iter().map(|i| u64::from(i.limits.memory_mb)).sum(),
        cpu_reserved_millis: live.iter().map(|i| u64::from(i.limits.cpu_millis)).sum(),
        functions: node
            .pools
            .list()
            .into_iter()
            .map(|f| pb::FunctionLoad {
                name: f.spec.name.clone(),
                ready: f.ready,
                starting: f.starting,
                in_flight: f.in_flight,
                queued: f.queued,
                last_error: f.last_error.clone(),
            })
            .collect(),
        images: status
            .images
            .iter()
            .filter(|i| i.image.ready)
            .map(|i| i.image.info.reference.clone())
            .collect(),
        sandbox_classes: status.sandbox_classes.iter().map(|c| c.to_string()).collect(),
        mb_per_vcpu: node.policy.mb_per_vcpu,
        min_cpu_millis: node.policy.min_cpu_millis,
        pids_limit: node.policy.pids,
    }
}

fn request<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.set_timeout(Duration::from_secs(10));
    if let Ok(v) = format!("Bearer {token}").parse() {
        req.metadata_mut().insert("authorization", v);
    }
    req
}

async fn register(
    client: &mut ControlPlaneClient<Channel>,
    node: &Node,
    join: &Join,
) -> Result<Duration, tonic::Status> {
    let r = client
        .register(request(
            pb::RegisterRequest {
                node: join.node.clone(),
                grpc_endpoint: join.grpc_endpoint.clone(),
                dataplane_address: join.dataplane.clone(),
                report: Some(report(node).await),
                node_id: join.node_id.clone(),
                dataplane_tls: join.dataplane_tls,
            },
            join.token.expose(),
        ))
        .await?
        .into_inner();
    tracing::info!(controlplane = %join.url, node = %join.node, "joined the control plane");
    Ok(Duration::from_millis(u64::from(r.heartbeat_interval_ms.max(100))))
}

/// Registers and heartbeats until `stop`.
pub async fn run(node: Arc<Node>, join: Join, mut stop: watch::Receiver<bool>) {
    let tls = join.tls.as_ref().map(|t| fnrt_proto::tls::client(t, None));
    let channel = match fnrt_proto::connect::lazy(&join.url, tls) {
        Ok(c) => c,
        Err(e) => {
            return tracing::error!(url = %join.url, error = %fnrt_common::chain(&e), "controlplane_url cannot be used")
        }
    };
    let mut client = ControlPlaneClient::new(channel);
    let mut retry = Duration::from_millis(200);
    loop {
        let interval = match register(&mut client, &node, &join).await {
            Ok(i) => i,
            Err(s) => {
                tracing::warn!(controlplane = %join.url, error = %s.message(), "cannot join the control plane; retrying");
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => return,
                    () = tokio::time::sleep(retry) => {}
                }
                retry = (retry * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        retry = Duration::from_millis(200);
        loop {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                () = tokio::time::sleep(interval) => {}
            }
            let beat = pb::HeartbeatRequest {
                node: join.node.clone(),
                report: Some(report(&node).await),
                node_id: join.node_id.clone(),
            };
            match client.heartbeat(request(beat, join.token.expose())).await {
                Ok(_) => {}
                Err(s) if s.code() == tonic::Code::NotFound => break,
                Err(s) => tracing::warn!(controlplane = %join.url, error = %s.message(), "heartbeat failed"),
            }
        }
    }
}

/// Whether the control plane at `url` answers this node with `token`, for `check-config`,
/// changing nothing there: a heartbeat for an identity no node has (node ids are 32
/// characters) is refused as unknown once the connection, its TLS, the token and the
/// node's certificate were all accepted, and refused otherwise for the reason that failed.
pub(crate) async fn probe(
    url: &str,
    token: &str,
    node: &str,
    tls: Option<&fnrt_common::pki::ClusterTls>,
) -> Result<(), String> {
    let tls = tls.map(|t| fnrt_proto::tls::client(t, None));
    let channel = fnrt_proto::connect::lazy(url, tls).map_err(|e| fnrt_common::chain(&e))?;
    let beat = pb::HeartbeatRequest { node: node.to_string(), report: None, node_id: String::new() };
    let mut client = ControlPlaneClient::new(channel);
    match tokio::time::timeout(Duration::from_secs(10), client.heartbeat(request(beat, token))).await {
        Err(_) => Err("no answer within 10 s".into()),
        Ok(Err(s)) if s.code() == tonic::Code::NotFound => Ok(()),
        Ok(Err(s)) if s.code() == tonic::Code::Unauthenticated => Err(format!(
            "the control plane refused the token ({}): controlplane_token (or tcp_token) must be its cluster_token",
            s.message()
        )),
        Ok(Err(s)) if s.code() == tonic::Code::Unavailable => {
            let mut cause: &dyn std::error::Error = &s;
            while let Some(next) = cause.source() {
                cause = next;
            }
            Err(format!("cannot connect ({}): {cause}", s.message()))
        }
        Ok(Err(s)) => Err(format!("{:?}: {}", s.code(), s.message())),
        Ok(Ok(_)) => Err("the control plane took a heartbeat of no node: is this an fnrt control plane?".into()),
    }
}

/// This node's identity in the cluster: random, made at the first join and kept in
/// `<state_dir>/node-id`, so a restarted agent is the same node and another machine
/// claiming its name while it is live is not.
pub fn node_id(state_dir: &std::path::Path) -> Result<String, crate::StartError> {
    let path = state_dir.join("node-id");
    let io = |source| crate::StartError::Io { what: "node id", path: path.display().to_string(), source };
    match std::fs::read_to_string(&path) {
        Ok(id) if id.trim().len() == 32 => return Ok(id.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    let id = format!("{:032x}", rand::random::<u128>());
    fnrt_common::durable::write(&path, id.as_bytes(), 0o644).map_err(io)?;
    Ok(id)
}
