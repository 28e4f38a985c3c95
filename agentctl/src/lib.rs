//! agentctl, the operator's CLI for one fnrt agent, and for the cluster's view of the
//! control plane.
//!
//! It talks to the agent's gRPC API on its Unix socket (by default the one the dev stack
//! and a production agent use, /run/fnrt/agent.sock), for `invoke` to its data plane, and
//! for `cluster` to the control plane's management API.
//!
//! Exit codes: 0 success, 1 failure, 2 bad usage, 3 not found.

mod client;
mod commands;
mod output;

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

pub use client::connect;

/// The default socket of the agent.
pub const DEFAULT_SOCKET: &str = "/run/fnrt/agent.sock";

/// Command line of agentctl.
#[derive(Parser, Debug)]
#[command(
    name = "agentctl",
    version,
    about = "Operate an fnrt agent: images, functions, instances, calls, logs"
)]
pub struct Cli {
    /// The agent's gRPC Unix socket.
    #[arg(long, global = true, env = "FNRT_AGENT_SOCKET", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Output format.
    #[arg(long, short, global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// How answers are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Tables for people.
    Table,
    /// JSON for scripts.
    Json,
}

/// The commands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// The node: versions, instances, images.
    Node {
        /// What about the node.
        #[command(subcommand)]
        command: commands::node::NodeCommand,
    },
    /// Images on the node.
    Image {
        /// What to do with images.
        #[command(subcommand)]
        command: commands::image::ImageCommand,
    },
    /// Functions deployed on the agent, served from pools.
    Function {
        /// What to do with functions.
        #[command(subcommand)]
        command: commands::function::FunctionCommand,
    },
    /// Instances of functions.
    Instance {
        /// What to do with instances.
        #[command(subcommand)]
        command: commands::instance::InstanceCommand,
    },
    /// Call a function through the agent's data plane and print the answer's body.
    Invoke(commands::invoke::InvokeArgs),
    /// Print what instances wrote to stdout and stderr (by function, instance or call).
    Logs(commands::logs::LogsArgs),
    /// The control plane's view: agents and where functions run.
    Cluster(commands::cluster::ClusterArgs),
}

/// A failed command.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The agent could not be reached.
    #[error("cannot reach the agent at {socket}: {reason}; is it running? (scripts/demo starts one, --socket or FNRT_AGENT_SOCKET point elsewhere)")]
    Connect {
        /// The socket tried.
        socket: PathBuf,
        /// Why.
        reason: String,
    },
    /// The agent answered with an error.
    #[error("{}", .0.message())]
    Api(tonic::Status),
    /// Bad usage not caught by the parser.
    #[error("{0}")]
    Usage(String),
    /// A call through the data plane failed.
    #[error("{0}")]
    Call(String),
}

impl CliError {
    /// The documented exit code.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Api(s) if s.code() == tonic::Code::NotFound => 3,
            CliError::Api(s) if s.code() == tonic::Code::InvalidArgument => 2,
            CliError::Usage(_) => 2,
            CliError::Api(_) | CliError::Connect { .. } | CliError::Call(_) => 1,
        }
    }
}

impl From<tonic::Status> for CliError {
    fn from(s: tonic::Status) -> Self {
        CliError::Api(s)
    }
}

/// Runs one command line.
pub async fn run(cli: Cli) -> Result<(), CliError> {
    let command = match cli.command {
        Command::Cluster(args) => return commands::cluster::run(args, cli.output).await,
        Command::Logs(args) if args.controlplane.is_some() => {
            return commands::logs::run_controlplane(args, cli.output).await
        }
        other => other,
    };
    let cli = Cli { command, ..cli };
    let mut agent = connect(&cli.socket).await?;
    match cli.command {
        Command::Node { command } => commands::node::run(&mut agent, command, cli.output).await,
        Command::Image { command } => commands::image::run(&mut agent, command, cli.output).await,
        Command::Function { command } => commands::function::run(&mut agent, command, cli.output).await,
        Command::Instance { command } => commands::instance::run(&mut agent, command, cli.output).await,
        Command::Invoke(args) => commands::invoke::run(&mut agent, args).await,
        Command::Logs(args) => commands::logs::run(&mut agent, args, cli.output).await,
        Command::Cluster(_) => Err(CliError::Usage("cluster commands do not use the agent".into())),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::{Cli, Command};

    #[test]
    fn a_sandbox_class_is_checked_before_anything_is_sent() {
        let parse = |args: &[&str]| Cli::try_parse_from([&["agentctl"], args].concat());
        let e = parse(&["instance", "start", "f", "img", "--sandbox-class", "kata"]).expect_err("kata");
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("\"kata\" is not a sandbox class: use runc or gvisor"), "{e}");
        // clap shows the value given once; the class's own error keeps 64 characters of it.
        let huge = "x".repeat(10_000);
        let e = parse(&["function", "deploy", "f", "img", "--sandbox-class", &huge]).expect_err("huge");
        assert_eq!(e.exit_code(), 2);
        assert_eq!(e.to_string().matches(&huge).count(), 1, "{}", e.to_string().len());
        let cli = parse(&["function", "deploy", "f", "img", "--sandbox-class", "gvisor"]).expect("parses");
        let Command::Function { command: super::commands::function::FunctionCommand::Deploy(spec) } =
            cli.command
        else {
            panic!("not a deploy: {:?}", cli.command)
        };
        assert_eq!(spec.sandbox_class, Some(fnrt_function::SandboxClass::Gvisor));
    }
}
