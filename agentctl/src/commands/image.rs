//! `agentctl image pull`.

use clap::Subcommand;
use fnrt_proto::agent::v1::{agent_client::AgentClient, PullImageRequest};
use tonic::transport::Channel;

use crate::output::{self, image_json, image_row, IMAGE_HEADER};
use crate::{CliError, Output};

/// Image commands.
#[derive(Subcommand, Debug)]
pub enum ImageCommand {
    /// Pull an image from its registry onto the node.
    Pull {
        /// Image reference, e.g. 127.0.0.1:5000/fnrt/echo:latest.
        reference: String,
    },
}

/// Runs an image command.
pub async fn run(agent: &mut AgentClient<Channel>, cmd: ImageCommand, out: Output) -> Result<(), CliError> {
    match cmd {
        ImageCommand::Pull { reference } => {
            let resp = agent.pull_image(PullImageRequest { reference }).await?.into_inner();
            let img = resp.image.unwrap_or_default();
            match out {
                Output::Json => output::json(&image_json(&img)),
                Output::Table => output::table(IMAGE_HEADER, &[image_row(&img)]),
            }
        }
    }
    Ok(())
}
