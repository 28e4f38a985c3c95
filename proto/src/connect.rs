//! Channels to an agent's API: over its Unix socket (`unix:///path`) or TCP
//! (`http://host:port`), and the interceptor that adds a bearer token to every call. The one
//! place these are written; agentctl, the control plane and the tests use them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};

/// An endpoint that is not one.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Neither `unix://` nor `http(s)://`.
    #[error("{0:?} is not an endpoint: use http://host:port or unix:///path/to/agent.sock")]
    BadEndpoint(String),
    /// The transport refused it.
    #[error("{endpoint}: {source}")]
    Transport {
        /// The endpoint.
        endpoint: String,
        /// Why.
        #[source]
        source: tonic::transport::Error,
    },
    /// An `https://` endpoint and no TLS set up to reach it.
    #[error("{0} is https:// but no cluster TLS is configured (tls_ca_file, tls_cert_file, tls_key_file)")]
    NoTls(String),
    /// A token that cannot be a header value.
    #[error("the token cannot be sent as an authorization header (it holds characters headers cannot)")]
    BadToken,
}

// tonic needs a URI even for a Unix socket; it is never dialled.
const PLACEHOLDER: &str = "http://[::]:50051";

fn unix_endpoint() -> Result<Endpoint, ConnectError> {
    Endpoint::try_from(PLACEHOLDER)
        .map_err(|source| ConnectError::Transport { endpoint: PLACEHOLDER.into(), source })
}

fn unix_connector(
    path: PathBuf,
) -> impl tower::Service<
    tonic::transport::Uri,
    Response = hyper_util::rt::TokioIo<tokio::net::UnixStream>,
    Error = std::io::Error,
    Future = impl Send,
> + Clone {
    tower::service_fn(move |_| {
        let path = path.clone();
        async move { Ok(hyper_util::rt::TokioIo::new(tokio::net::UnixStream::connect(path).await?)) }
    })
}

/// A channel to the agent whose Unix socket is `socket`, connected now (an error says why
/// not).
pub async fn unix(socket: &Path) -> Result<Channel, ConnectError> {
    unix_endpoint()?.connect_with_connector(unix_connector(socket.to_path_buf())).await.map_err(|source| {
        ConnectError::Transport { endpoint: format!("unix://{}", socket.display()), source }
    })
}

/// A channel to `endpoint` (`unix:///path` or `http(s)://host:port`) that connects on first
/// use (5 s at most for TCP); `https://` endpoints need `tls` (see [`crate::tls::client`]).
pub fn lazy(endpoint: &str, tls: Option<tonic::transport::ClientTlsConfig>) -> Result<Channel, ConnectError> {
    if let Some(path) = endpoint.strip_prefix("unix://") {
        return Ok(unix_endpoint()?.connect_with_connector_lazy(unix_connector(PathBuf::from(path))));
    }
    if !endpoint.starts_with("http://") && !endpoint.starts_with("https://") {
        return Err(ConnectError::BadEndpoint(endpoint.to_string()));
    }
    let err = |source| ConnectError::Transport { endpoint: endpoint.to_string(), source };
    let mut ep = Endpoint::from_shared(endpoint.to_string()).map_err(err)?;
    match tls {
        Some(tls) if endpoint.starts_with("https://") => ep = ep.tls_config(tls).map_err(err)?,
        None if endpoint.starts_with("https://") => return Err(ConnectError::NoTls(endpoint.to_string())),
        _ => {}
    }
    Ok(ep.connect_timeout(Duration::from_secs(5)).connect_lazy())
}

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct Bearer(MetadataValue<Ascii>);

impl Bearer {
    /// The interceptor of `token`.
    pub fn new(token: &str) -> Result<Bearer, ConnectError> {
        format!("Bearer {token}").parse().map(Bearer).map_err(|_| ConnectError::BadToken)
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        req.metadata_mut().insert("authorization", self.0.clone());
        Ok(req)
    }
}
