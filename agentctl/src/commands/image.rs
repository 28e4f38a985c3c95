//! `agentctl image pull|prefetch|ls|rm`.

use std::collections::HashMap;

use clap::Subcommand;
use fnrt_proto::agent::v1::{
    agent_client::AgentClient, ListImagesRequest, PrefetchImageRequest, PullImageRequest, PullProgress,
    RemoveImageRequest,
};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use tonic::transport::Channel;
use tonic::Streaming;

use crate::output::{self, human_bytes, image_json, image_row, IMAGE_HEADER};
use crate::{CliError, Output};

/// Image commands.
#[derive(Subcommand, Debug)]
pub enum ImageCommand {
    /// Pull an image from its registry into the node cache, with a progress bar.
    Pull {
        /// Image reference, e.g. 127.0.0.1:5000/fnrt/echo:latest.
        reference: String,
    },
    /// Pull an image ahead of use (image acceleration); --pin keeps it from eviction.
    Prefetch {
        /// Image reference.
        reference: String,
        /// Never evict it.
        #[arg(long)]
        pin: bool,
    },
    /// List the node cache: size, last use, pin, readiness, users.
    Ls,
    /// Remove an image from the node (refused while instances use it).
    Rm {
        /// Image reference.
        reference: String,
    },
}

/// Runs an image command.
pub async fn run(agent: &mut AgentClient<Channel>, cmd: ImageCommand, out: Output) -> Result<(), CliError> {
    match cmd {
        ImageCommand::Pull { reference } => {
            let stream = agent.pull_image(PullImageRequest { reference }).await?.into_inner();
            show_pull(stream, out).await
        }
        ImageCommand::Prefetch { reference, pin } => {
            let stream = agent
                .prefetch_image(PrefetchImageRequest { reference, pin, registry_credentials: None })
                .await?
                .into_inner();
            show_pull(stream, out).await
        }
        ImageCommand::Ls => {
            let r = agent.list_images(ListImagesRequest {}).await?.into_inner();
            match out {
                Output::Json => output::json(&json!({
                    "images": r.images.iter().map(image_json).collect::<Vec<_>>(),
                    "cache_bytes": r.cache_bytes,
                    "budget_bytes": r.budget_bytes,
                })),
                Output::Table => {
                    output::table(IMAGE_HEADER, &r.images.iter().map(image_row).collect::<Vec<_>>());
                    println!("\ncache: {} of {}", human_bytes(r.cache_bytes), human_bytes(r.budget_bytes));
                }
            }
            Ok(())
        }
        ImageCommand::Rm { reference } => {
            agent.remove_image(RemoveImageRequest { reference: reference.clone() }).await?;
            match out {
                Output::Json => output::json(&json!({ "removed": reference })),
                Output::Table => println!("removed {reference}"),
            }
            Ok(())
        }
    }
}

/// Shows a pull's progress as one bar over all layers' bytes, then the image.
async fn show_pull(mut stream: Streaming<PullProgress>, out: Output) -> Result<(), CliError> {
    let bar = if out == Output::Table { ProgressBar::new(0) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template("{msg:12} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let mut layers: HashMap<String, u64> = HashMap::new();
    while let Some(msg) = stream.message().await? {
        match msg.phase.as_str() {
            "resolved" => {
                bar.set_length(msg.layers.iter().map(|l| l.total).sum());
                bar.set_message("downloading");
            }
            "downloading" => {
                if let Some(l) = msg.layer {
                    layers.insert(l.digest, l.bytes);
                    bar.set_position(layers.values().sum());
                }
            }
            "unpacking" => bar.set_message("unpacking"),
            "done" => {
                bar.finish_and_clear();
                let img = msg.image.unwrap_or_default();
                match out {
                    Output::Json => output::json(&image_json(&img)),
                    Output::Table => output::table(IMAGE_HEADER, &[image_row(&img)]),
                }
                return Ok(());
            }
            _ => {}
        }
    }
    bar.abandon();
    Err(CliError::Call("the agent ended the pull without an answer".into()))
}
