//! The agents that joined: where to reach them, what they last reported, and the gRPC
//! service they join and report through (`proto/controlplane.proto`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fnrt_proto::agent::v1::agent_client::AgentClient;
use fnrt_proto::controlplane::v1 as pb;
use tonic::{Request, Response, Status};

use super::Scheduler;

use fnrt_common::pki::{ClusterTls, Role};
use fnrt_proto::connect::Bearer;

/// One agent as the control plane knows it.
#[derive(Clone)]
pub struct Agent {
    /// Its node name.
    pub node: String,
    /// Its identity (the agent's `node-id`): a live node's name is not taken by another.
    pub node_id: String,
    /// Its data plane, `host:port`.
    pub dataplane: String,
    /// Whether its data plane serves TLS (the gateway then calls it over https).
    pub dataplane_tls: bool,
    /// Its last report.
    pub report: pb::Report,
    /// The functions its last report lists, by name.
    pub names: Arc<std::collections::HashSet<String>>,
    /// When it last reported.
    pub last_seen: Instant,
    /// Marked lost after missing heartbeats.
    pub lost: bool,
    /// Its API.
    pub link: Arc<dyn super::link::AgentLink>,
}

impl Agent {
    /// Free memory in MB by its limits, within its memory budget.
    pub fn free_memory_mb(&self) -> u64 {
        let budget = match self.report.memory_budget_mb {
            0 => self.report.memory_bytes >> 20,
            b => b,
        };
        budget.saturating_sub(self.report.memory_reserved_mb)
    }

    /// How many more instances its budgets take (unbounded when it does not say).
    pub fn room_instances(&self) -> u32 {
        self.report.room_instances.unwrap_or(u32::MAX)
    }

    /// Free milli-CPUs by its limits.
    pub fn free_cpu_millis(&self) -> u64 {
        (u64::from(self.report.cpus) * 1000).saturating_sub(self.report.cpu_reserved_millis)
    }

    /// How it turns an instance's memory into CPU and pids (as it reported).
    pub fn policy(&self) -> fnrt_function::Policy {
        let r = &self.report;
        if r.mb_per_vcpu == 0 || r.min_cpu_millis == 0 || r.pids_limit == 0 {
            return fnrt_function::Policy::default();
        }
        fnrt_function::Policy {
            mb_per_vcpu: r.mb_per_vcpu,
            min_cpu_millis: r.min_cpu_millis,
            pids: r.pids_limit,
        }
    }

    /// The sandbox classes it offers (an agent older than classes: `runc`).
    pub fn classes(&self) -> Vec<fnrt_function::SandboxClass> {
        fnrt_function::sandbox::offered(&self.report.sandbox_classes)
    }

    /// Whether its report lists the function `name`.
    pub fn hosts(&self, name: &str) -> bool {
        self.names.contains(name)
    }

    /// Takes `report` as its last.
    pub fn set_report(&mut self, report: pb::Report) {
        self.names = Arc::new(report.functions.iter().map(|f| f.name.clone()).collect());
        self.report = report;
    }
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
    /// The cluster TLS material, when the join service serves TLS.
    pub tls: Option<ClusterTls>,
}

impl Join {
    /// Over TLS, the caller must hold a node certificate naming `node`.
    fn check_peer<T>(&self, req: &Request<T>, node: &str) -> Result<(), Status> {
        if self.tls.is_none() {
            return Ok(());
        }
        match fnrt_proto::tls::peer(req) {
            Some(p) if p.role == Role::Node && p.name == node => Ok(()),
            Some(p) => Err(Status::permission_denied(format!(
                "this connection holds the {} certificate of {:?}, not a node certificate for {node:?}: \
                 a node joins with a certificate naming it (fnrt-controlplane ca issue --role node --name {node})",
                p.role.as_str(),
                p.name
            ))),
            None => Err(Status::unauthenticated("agents join with a node certificate of the cluster CA")),
        }
    }

    /// A data plane in plain beyond loopback only with `insecure`; one serving TLS only
    /// when this control plane has the cluster's TLS to call it.
    fn check_dataplane(&self, dataplane: std::net::SocketAddr, tls: bool) -> Result<(), Status> {
        if tls && self.tls.is_none() {
            return Err(Status::failed_precondition(
                "the agent's data plane serves TLS but this control plane has no cluster TLS to call it \
                 (tls_ca_file, tls_cert_file, tls_key_file)",
            ));
        }
        if !tls && !dataplane.ip().is_loopback() && !self.scheduler.cfg.insecure {
            return Err(Status::invalid_argument(format!(
                "data plane {dataplane} is plain HTTP beyond loopback: give the agent the cluster TLS \
                 files, or set insecure = true on the control plane"
            )));
        }
        Ok(())
    }

    /// The link to the agent at `endpoint`: over TLS when it is https://, checked to hold
    /// `node`'s certificate; plain only on this host or with `insecure`.
    fn link(&self, node: &str, endpoint: &str) -> Result<Arc<dyn super::link::AgentLink>, Status> {
        let cfg = &self.scheduler.cfg;
        let plain = endpoint.starts_with("http://");
        if plain && !cfg.insecure && !fnrt_proto::tls::is_local(endpoint) {
            return Err(Status::invalid_argument(format!(
                "grpc_endpoint {endpoint:?} is plain TCP beyond loopback: serve the agent's API with TLS \
                 (tls_ca_file, tls_cert_file, tls_key_file) and register https://, or set insecure = true \
                 on the control plane"
            )));
        }
        let tls = self.tls.as_ref().map(|t| fnrt_proto::tls::client(t, Some(node)));
        let channel = fnrt_proto::connect::lazy(endpoint, tls)
            .map_err(|e| Status::invalid_argument(fnrt_common::chain(&e)))?;
        let token = Bearer::new(cfg.cluster_token.expose())
            .map_err(|_| Status::internal("the cluster token is not valid in a header"))?;
        Ok(Arc::new(super::link::Grpc(AgentClient::with_interceptor(channel, token))))
    }

    fn authorize<T>(&self, req: &Request<T>) -> Result<(), Status> {
        let want = fnrt_common::bearer::Expected::bearer(self.scheduler.cfg.cluster_token.expose());
        if want.matches(req.metadata().get("authorization").map(|v| v.as_bytes())) {
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
        self.check_peer(&req, &req.get_ref().node)?;
        let r = req.into_inner();
        check_node(&r.node)?;
        let Ok(dataplane) = r.dataplane_address.parse::<std::net::SocketAddr>() else {
            return Err(Status::invalid_argument(format!(
                "dataplane_address {:?} must be host:port with an IP address",
                r.dataplane_address
            )));
        };
        self.check_dataplane(dataplane, r.dataplane_tls)?;
        let link = self.link(&r.node, &r.grpc_endpoint)?;
        let mut agent = Agent {
            node: r.node.clone(),
            node_id: r.node_id,
            dataplane: r.dataplane_address,
            dataplane_tls: r.dataplane_tls,
            report: pb::Report::default(),
            names: Arc::default(),
            last_seen: Instant::now(),
            lost: false,
            link,
        };
        agent.set_report(r.report.unwrap_or_default());
        {
            let mut agents = self.scheduler.agents_mut();
            if let Some(live) = agents.get(&r.node).filter(|a| !a.lost && a.node_id != agent.node_id) {
                tracing::warn!(node = %live.node, endpoint = %r.grpc_endpoint, "refused a registration under a live node's name from another identity");
                return Err(Status::already_exists(format!(
                    "node {:?} is live and registered by another agent (another node-id): a second agent \
                     cannot take its name; it is free once that node misses heartbeats for lost_after_ms",
                    r.node
                )));
            }
            agents.insert(r.node.clone(), agent);
        }
        self.scheduler.forget_applied(&r.node);
        tracing::info!(node = %r.node, endpoint = %r.grpc_endpoint, "agent registered");
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
        self.check_peer(&req, &req.get_ref().node)?;
        let r = req.into_inner();
        let mut agents = self.scheduler.agents_mut();
        let Some(a) = agents.get_mut(&r.node).filter(|a| !a.lost && a.node_id == r.node_id) else {
            return Err(Status::not_found(format!("node {:?} is not registered: register again", r.node)));
        };
        a.set_report(r.report.unwrap_or_default());
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
