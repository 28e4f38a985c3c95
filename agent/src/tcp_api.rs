//! The agent's gRPC API on TCP, for the control plane and cluster schedulers: a bearer
//! token on every call and, with the cluster TLS files, mutual TLS where only holders of
//! a control plane's or a client's certificate of the cluster CA are served. Another
//! node's certificate is refused: a node taken over cannot drive its neighbours.

use std::net::SocketAddr;
use std::sync::Arc;

use fnrt_common::pki::{ClusterTls, Role};
use fnrt_proto::agent::v1::agent_server::AgentServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Server;

use crate::{api, Config, Node, StartError};

/// Serves the gRPC API on TCP when both an address and a token are configured.
pub(crate) async fn serve(
    cfg: &Config,
    tls: Option<&ClusterTls>,
    node: &Arc<Node>,
    rx: &watch::Receiver<bool>,
    tasks: &mut Vec<JoinHandle<()>>,
) -> Result<Option<SocketAddr>, StartError> {
    let (Some(addr), Some(token)) = (cfg.tcp_listen, cfg.tcp_token.clone()) else {
        return Ok(None);
    };
    let listener = TcpListener::bind(addr).await.map_err(|source| StartError::Io {
        what: "bind gRPC TCP",
        path: addr.to_string(),
        source,
    })?;
    let tcp_address = listener.local_addr().ok();
    let svc =
        AgentServer::with_interceptor(api::Api::new(node.clone()), check(token.expose(), tls.is_some()));
    let mut server = Server::builder();
    if let Some(tls) = tls {
        server = server
            .tls_config(fnrt_proto::tls::server(tls))
            .map_err(|e| StartError::ClusterTls(e.to_string()))?;
    }
    let router = server.add_service(svc);
    tasks.push(crate::spawn_server(router, TcpListenerStream::new(listener), rx.clone(), "TCP"));
    Ok(tcp_address)
}

/// The TCP API's check: `authorization: Bearer <token>` (compared as sha256 digests, so
/// the time taken does not depend on where the first differing byte is) and, over TLS, a
/// caller certificate of a control plane or a client.
fn check(
    token: &str,
    tls: bool,
) -> impl Fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Clone {
    let expected = fnrt_common::bearer::Expected::bearer(token);
    move |req: tonic::Request<()>| {
        if tls {
            match fnrt_proto::tls::peer(&req) {
                Some(p) if p.role != Role::Node => {}
                Some(p) => {
                    return Err(tonic::Status::permission_denied(format!(
                        "{:?} holds a node certificate: this API serves control planes and clients \
                         (fnrt-controlplane ca issue --role client)",
                        p.name
                    )))
                }
                None => {
                    return Err(tonic::Status::unauthenticated(
                        "this agent's TCP API needs a client certificate of the cluster CA",
                    ))
                }
            }
        }
        if expected.matches(req.metadata().get("authorization").map(|v| v.as_bytes())) {
            Ok(req)
        } else {
            Err(tonic::Status::unauthenticated(
                "this agent's TCP API needs `authorization: Bearer <token>` with the configured tcp_token",
            ))
        }
    }
}

/// The cluster TLS material the configuration names, checked against the node's name;
/// a warning for each link that runs in plain beyond loopback (`insecure = true`).
pub(crate) fn load_tls(cfg: &Config) -> Result<Option<ClusterTls>, StartError> {
    for link in cfg.plain_links() {
        tracing::warn!(%link, "insecure = true: this cluster link runs without TLS; anyone on the path can read and change it");
    }
    let Some((ca, cert, key)) = cfg.tls_files() else {
        return Ok(None);
    };
    let tls =
        ClusterTls::load(ca, cert, key, Role::Node).map_err(|e| StartError::ClusterTls(e.to_string()))?;
    if tls.own.name != cfg.node_name {
        return Err(StartError::ClusterTls(format!(
            "{} names node {:?} but node_name is {:?}: a node's certificate must name it \
             (fnrt-controlplane ca issue --role node --name {})",
            cert.display(),
            tls.own.name,
            cfg.node_name,
            cfg.node_name
        )));
    }
    Ok(Some(tls))
}
