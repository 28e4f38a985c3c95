//! The gRPC API of the fnrt agent, compiled from `proto/agent.proto`.
//!
//! The API is versioned by package: `fnrt.agent.v1` lives in [`agent::v1`]. Every message
//! and field is documented in the .proto file.

/// The agent's API.
pub mod agent {
    /// Version 1 of the agent API.
    #[allow(missing_docs, clippy::all)]
    pub mod v1 {
        tonic::include_proto!("fnrt.agent.v1");
    }
}
