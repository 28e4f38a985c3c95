//! `agentctl node status`.

use clap::Subcommand;
use fnrt_proto::agent::v1::{agent_client::AgentClient, NodeStatusRequest};
use serde_json::json;
use tonic::transport::Channel;

use crate::output::{
    self, image_json, image_row, instance_json, instance_row, IMAGE_HEADER, INSTANCE_HEADER,
};
use crate::{CliError, Output};

/// Node commands.
#[derive(Subcommand, Debug)]
pub enum NodeCommand {
    /// Versions, architecture, data plane address, sandbox classes offered, instances and
    /// images.
    Status,
}

/// Runs a node command.
pub async fn run(agent: &mut AgentClient<Channel>, cmd: NodeCommand, out: Output) -> Result<(), CliError> {
    match cmd {
        NodeCommand::Status => {
            let s = agent.node_status(NodeStatusRequest {}).await?.into_inner();
            match out {
                Output::Json => output::json(&json!({
                    "agent_version": s.agent_version,
                    "containerd_version": s.containerd_version,
                    "architecture": s.architecture,
                    "namespace": s.namespace,
                    "dataplane_address": s.dataplane_address,
                    "sandbox_classes": output::sandbox_classes(&s.sandbox_classes),
                    "instances": s.instances.iter().map(instance_json).collect::<Vec<_>>(),
                    "images": s.images.iter().map(image_json).collect::<Vec<_>>(),
                })),
                Output::Table => {
                    println!("agent:       {}", s.agent_version);
                    println!("containerd:  {}", s.containerd_version);
                    println!("arch:        {}", s.architecture);
                    println!("namespace:   {}", s.namespace);
                    println!("data plane:  http://{}/function/<name>/", s.dataplane_address);
                    println!("sandboxes:   {}", output::sandbox_classes(&s.sandbox_classes).join(", "));
                    println!("\ninstances ({}):", s.instances.len());
                    output::table(INSTANCE_HEADER, &s.instances.iter().map(instance_row).collect::<Vec<_>>());
                    println!("\nimages ({}):", s.images.len());
                    output::table(IMAGE_HEADER, &s.images.iter().map(image_row).collect::<Vec<_>>());
                }
            }
        }
    }
    Ok(())
}
