//! The agent's error: every module's errors rolled up, for the API edge to map.

pub use fnrt_common::chain;

use crate::containerd::ContainerdError;
use crate::health::NotListening;
use crate::image::ImageError;
use crate::logs::LogError;
use crate::network::NetworkError;
use crate::runtime::RuntimeError;

/// Anything an agent operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed.
    #[error("invalid {field}: {reason}")]
    InvalidArgument {
        /// The field that is wrong.
        field: &'static str,
        /// What is wrong and what is allowed.
        reason: String,
    },
    /// No such instance on this node.
    #[error("instance {0:?} not found on this node; agentctl instance ls lists them")]
    InstanceNotFound(String),
    /// No such function deployed on this node.
    #[error("function {0:?} is not deployed on this node; agentctl function ls lists them")]
    FunctionNotFound(String),
    /// The function is deployed already.
    #[error("function {0:?} is already deployed on this node; use UpdateFunction (agentctl function update) to change it")]
    FunctionExists(String),
    /// StartInstance of a deployed function.
    #[error(
        "function {0:?} is deployed: its pool starts its instances (UpdateFunction changes provisioned)"
    )]
    FunctionDeployed(String),
    /// The image cannot be removed: instances use it.
    #[error("image {reference} is used by instances {}; stop them first", .instances.join(", "))]
    ImageInUse {
        /// The image.
        reference: String,
        /// The instances using it.
        instances: Vec<String>,
    },
    /// Pulling or reading an image failed.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The instance's network failed.
    #[error(transparent)]
    Network(#[from] NetworkError),
    /// The instance's container failed.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The instance did not listen on :9000 in time.
    #[error(transparent)]
    NotListening(#[from] NotListening),
    /// containerd failed.
    #[error(transparent)]
    Containerd(#[from] ContainerdError),
    /// The instance's process ended before it listened on :9000.
    #[error(
        "the instance ended before listening on :9000: {reason}{}",
        if .output.is_empty() { String::new() } else { format!("; its last output: {}", .output.join(" | ")) }
    )]
    ExitedAtStart {
        /// How it ended.
        reason: String,
        /// Its last lines of output.
        output: Vec<String>,
    },
    /// A file of the agent's own could not be written or removed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What it was for.
        what: &'static str,
        /// The path.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The request's function spec cannot be deployed.
    #[error(transparent)]
    Spec(#[from] fnrt_function::SpecError),
    /// The instance's log could not be set up.
    #[error(transparent)]
    Logs(#[from] LogError),
    /// A start past one of the node's budgets.
    #[error(transparent)]
    Exhausted(#[from] crate::admission::Exhausted),
}
