//! The gRPC client over the agent's Unix socket.

use std::path::Path;

use fnrt_proto::agent::v1::agent_client::AgentClient;
use tonic::transport::Channel;

use crate::CliError;

/// Connects to the agent at `socket`.
pub async fn connect(socket: &Path) -> Result<AgentClient<Channel>, CliError> {
    let channel = fnrt_proto::connect::unix(socket)
        .await
        .map_err(|e| CliError::Connect { socket: socket.to_path_buf(), reason: fnrt_common::chain(&e) })?;
    Ok(AgentClient::new(channel))
}
