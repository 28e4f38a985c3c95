//! The gRPC APIs of fnrt, compiled from `proto/*.proto`.
//!
//! The APIs are versioned by package: `fnrt.agent.v1` lives in [`agent::v1`] (the agent's
//! API, for cluster schedulers and agentctl) and `fnrt.controlplane.v1` in
//! [`controlplane::v1`] (how agents join a control plane). Every message and field is
//! documented in the .proto files. [`connect`] makes channels to an agent; [`tls`] secures cluster links.

pub mod connect;
pub mod tls;

/// The agent's API.
pub mod agent {
    /// Version 1 of the agent API.
    #[allow(missing_docs, clippy::all)]
    pub mod v1 {
        tonic::include_proto!("fnrt.agent.v1");
    }
}

/// The API agents use to join a control plane.
pub mod controlplane {
    /// Version 1 of the control plane API.
    #[allow(missing_docs, clippy::all)]
    pub mod v1 {
        tonic::include_proto!("fnrt.controlplane.v1");
    }
}
