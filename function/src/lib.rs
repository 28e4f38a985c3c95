//! One description of a function, shared by the control plane and the agents, so that the
//! rules they must agree on live once (firecracker's `vmm_config` is the model: the types
//! with their conversions beside them):
//!
//! - [`keepalive`]: how long idle instances are kept and when they are started ahead of
//!   calls, learned from a function's calls;
//! - [`naming`]: what a function may be called, and the name a control-plane function has
//!   on the agents (`fn-<id>`);
//! - [`policy`]: how memory becomes an instance's CPU and pids limits (agents report their
//!   policy so that placement reserves what they will);
//! - [`sandbox`]: the sandbox classes an agent offers and a function runs in;
//! - [`spec`]: a function as deployed on a node, checked, with its defaults;
//! - [`proto`]: the conversions to and from `fnrt.agent.v1.FunctionSpec`.

pub mod keepalive;
pub mod naming;
pub mod policy;
pub mod proto;
pub mod sandbox;
pub mod spec;

pub use policy::{Limits, Policy};
pub use sandbox::SandboxClass;
pub use spec::{FunctionSpec, Kind, Process, PullCredentials, RawSpec, SpecError};
