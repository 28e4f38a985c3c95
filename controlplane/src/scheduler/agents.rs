//! The agents that joined: where to reach them, what they last reported, and the gRPC
//! service they join and report through (`proto/controlplane.proto`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fnrt_proto::agent::v1::agent_client::AgentClient;
use fnrt_proto::controlplane::v1 as pb;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use super::Scheduler;

/// Adds the cluster token to every call to an agent.
#[derive(Clone)]
pub struct Bearer(tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        req.metadata_mut().insert("authorization", self.0.clone());
        Ok(req)
    }
}

/// A client of an agent's gRPC API.
pub type Client = AgentClient<InterceptedService<Channel, Bearer>>;

/// One agent as the control plane knows it.
#[derive(Clone)]
pub struct Agent {
    /// Its node name.
    pub node: String,
    /// Its data plane, `host:port`.
    pub dataplane: String,
    /// Its last report.
    pub report: pb::Report,
    /// When it last reported.
    pub last_seen: Instant,
    /// Marked lost after missing heartbeats.
    pub lost: bool,
    /// Its API.
    pub client: Client,
}

impl Agent {
    /// Free memory in MB by its limits.
    pub fn free_memory_mb(&self) -> u64 {
        (self.report.memory_bytes >> 20).saturating_sub(self.report.memory_reserved_mb)
    }

    /// Free milli-CPUs by its limits.
    pub fn free_cpu_millis(&self) -> u64 {
        (u64::from(self.report.cpus) * 1000).saturating_sub(self.report.cpu_reserved_millis)
    }

    /// Whether its report lists the function `name`.
    pub fn hosts(&self, name: &str) -> bool {
        self.report.functions.iter().any(|f| f.name == name)
    }
}

fn channel(endpoint: &str) -> Result<Channel, String> {
    if let Some(path) = endpoint.strip_prefix("unix://") {
        let path = std::path::PathBuf::from(path);
        let ep = Endpoint::try_from("http://[::]:50051").map_err(|e| e.to_string())?;
        return Ok(ep.connect_with_connector_lazy(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(path).await?,
                ))
            }
        })));
    }
    if !endpoint.starts_with("http://") && !endpoint.starts_with("https://") {
        return Err(format!(
            "{endpoint:?} is not an endpoint: use http://host:port or unix:///path/to/agent.sock"
        ));
    }
    let ep = Endpoint::from_shared(endpoint.to_string()).map_err(|e| format!("{endpoint:?}: {e}"))?;
    Ok(ep.connect_timeout(Duration::from_secs(5)).connect_lazy())
}

fn check_node(node: &str) -> Result<(), Status> {
    let ok = !node.is_empty()
        && node.len() <= 63
        && node.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
    if ok {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!("node {node:?} must be 1 to 63 of a-z, 0-9, '-' and '.'")))
    }
}

/// The join service, on the control plane's gRPC port.
pub struct Join {
    /// The scheduler agents join.
    pub scheduler: Arc<Scheduler>,
}

impl Join {
    fn authorize<T>(&self, req: &Request<T>) -> Result<(), Status> {
        let want = format!("Bearer {}", self.scheduler.cfg.cluster_token);
        let given = req.metadata().get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default();
        use sha2::{Digest, Sha256};
        if Sha256::digest(given.as_bytes()) == Sha256::digest(want.as_bytes()) {
            Ok(())
        } else {
            Err(Status::unauthenticated(
                "missing or wrong cluster token: send authorization: Bearer <cluster_token>",
            ))
        }
    }
}

#[tonic::async_trait]
impl pb::control_plane_server::ControlPlane for Join {
    async fn register(
        &self,
        req: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        self.authorize(&req)?;
        let r = req.into_inner();
        check_node(&r.node)?;
        if r.dataplane_address.parse::<std::net::SocketAddr>().is_err() {
            return Err(Status::invalid_argument(format!(
                "dataplane_address {:?} must be host:port with an IP address",
                r.dataplane_address
            )));
        }
        let channel = channel(&r.grpc_endpoint).map_err(Status::invalid_argument)?;
        let token = format!("Bearer {}", self.scheduler.cfg.cluster_token)
            .parse()
            .map_err(|_| Status::internal("the cluster token is not valid in a header"))?;
        let agent = Agent {
            node: r.node.clone(),
            dataplane: r.dataplane_address,
            report: r.report.unwrap_or_default(),
            last_seen: Instant::now(),
            lost: false,
            client: AgentClient::with_interceptor(channel, Bearer(token)),
        };
        tracing::info!(node = %r.node, endpoint = %r.grpc_endpoint, "agent registered");
        self.scheduler.agents_mut().insert(r.node, agent);
        self.scheduler.kick();
        let cfg = &self.scheduler.cfg;
        Ok(Response::new(pb::RegisterResponse {
            heartbeat_interval_ms: cfg.heartbeat_interval_ms,
            lost_after_ms: cfg.lost_after_ms,
        }))
    }

    async fn heartbeat(
        &self,
        req: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        self.authorize(&req)?;
        let r = req.into_inner();
        let mut agents = self.scheduler.agents_mut();
        let Some(a) = agents.get_mut(&r.node).filter(|a| !a.lost) else {
            return Err(Status::not_found(format!("node {:?} is not registered: register again", r.node)));
        };
        a.report = r.report.unwrap_or_default();
        a.last_seen = Instant::now();
        Ok(Response::new(pb::HeartbeatResponse {}))
    }
}

/// Marks agents that missed heartbeats as lost; true when one was.
pub fn mark_lost(agents: &mut HashMap<String, Agent>, lost_after: Duration) -> bool {
    let mut any = false;
    for a in agents.values_mut().filter(|a| !a.lost && a.last_seen.elapsed() > lost_after) {
        tracing::warn!(node = %a.node, "agent missed its heartbeats: marked lost, its functions go elsewhere");
        a.lost = true;
        any = true;
    }
    any
}
