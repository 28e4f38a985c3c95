//! Why the scheduler could not place, deploy or call a function; the words are what the
//! function's `error_message` and the trigger's error show.

/// A scheduler failure.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    /// No agent is connected.
    #[error("no agent is connected: start an agent with controlplane_url set")]
    NoAgent,
    /// No connected agent has room for one instance.
    #[error("no agent has {memory_mb} MB and {cpu_millis} milli-CPUs free for an instance ({agents} agents connected)")]
    NoRoom {
        /// The function's memory.
        memory_mb: u32,
        /// The fewest milli-CPUs an agent's policy gives that memory.
        cpu_millis: u32,
        /// Agents connected.
        agents: usize,
    },
    /// No connected agent offers the function's sandbox class.
    #[error("no agent offers sandbox class {class} ({agents} agents connected, offering {offered})")]
    NoClass {
        /// The function's class.
        class: fnrt_function::SandboxClass,
        /// What the connected agents offer, e.g. `runc`.
        offered: String,
        /// Agents connected.
        agents: usize,
    },
    /// The function was deleted while it was being deployed.
    #[error("function {0} was deleted during its deploy")]
    Deleted(String),
    /// The code image could not be built.
    #[error("build failed: {0}")]
    Build(#[from] crate::build::BuildError),
    /// The image could not be pinned to a digest.
    #[error("image {image}: {source}")]
    Image {
        /// The image.
        image: String,
        /// Why.
        #[source]
        source: crate::build::image::PushError,
    },
    /// Agents refused or failed the function (one entry per agent).
    #[error("{}", .0.iter().map(|(node, m)| format!("agent {node}: {m}")).collect::<Vec<_>>().join("; "))]
    Agents(Vec<(String, String)>),
    /// The deploy task panicked.
    #[error("internal error: the deploy task failed ({0}); the control plane's log has more")]
    Task(String),
    /// The function runs on no agent.
    #[error("function {0} runs on no agent: is it deployed?")]
    NotRunning(String),
    /// The agent of a route left.
    #[error("agent of function {0} is gone")]
    AgentGone(String),
    /// An agent's call failed.
    #[error("agent {agent}: {message}")]
    Call {
        /// The agent (its data plane address).
        agent: String,
        /// What it said.
        message: String,
    },
}
