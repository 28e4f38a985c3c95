//! The gRPC client over the agent's Unix socket.

use std::path::Path;

use fnrt_proto::agent::v1::agent_client::AgentClient;
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint};

use crate::CliError;

/// Connects to the agent at `socket`.
pub async fn connect(socket: &Path) -> Result<AgentClient<Channel>, CliError> {
    let path = socket.to_path_buf();
    let err = |reason: String| CliError::Connect { socket: socket.to_path_buf(), reason };
    let endpoint = Endpoint::try_from("http://[::]:50051").map_err(|e| err(e.to_string()))?;
    let channel = endpoint
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?)) }
        }))
        .await
        .map_err(|e| {
            let mut reason = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                let text = s.to_string();
                if !reason.contains(&text) {
                    reason = format!("{reason}: {text}");
                }
                src = s.source();
            }
            err(reason)
        })?;
    Ok(AgentClient::new(channel))
}
