//! `agentctl instance start|stop|ls`.

use clap::Subcommand;
use fnrt_proto::agent::v1::{
    agent_client::AgentClient, ListInstancesRequest, StartInstanceRequest, StopInstanceRequest,
};
use serde_json::json;
use tonic::transport::Channel;

use crate::output::{self, instance_json, instance_row, INSTANCE_HEADER};
use crate::{CliError, Output};

/// Instance commands.
#[derive(Subcommand, Debug)]
pub enum InstanceCommand {
    /// Start an instance of a function and wait until it listens on :9000.
    Start {
        /// Function name (a-z, 0-9, '-').
        function: String,
        /// Image reference.
        image: String,
        /// Environment variable for the instance, KEY=VALUE; repeatable.
        #[arg(long = "env", short = 'e', value_name = "KEY=VALUE")]
        env: Vec<String>,
        /// Memory in MB (64 to 32768; CPU follows from it); the agent's default (128) if unset.
        #[arg(long, short = 'm', value_name = "MB", default_value_t = 0)]
        memory: u32,
        /// Secret environment variable, KEY=VALUE; repeatable; never shown back.
        #[arg(long = "secret", value_name = "KEY=VALUE")]
        secret: Vec<String>,
        /// Longest a call may take, in ms (504 past it); 3000 if unset.
        #[arg(long, value_name = "MS", default_value_t = 0)]
        timeout_ms: u32,
        /// The start command, replacing the image's Entrypoint and Cmd; repeat it for each
        /// word (`--command /bin/app --command serve`).
        #[arg(long = "command", value_name = "WORD")]
        command: Vec<String>,
        /// An argument replacing the image's Cmd; repeatable.
        #[arg(long = "arg", value_name = "WORD")]
        args: Vec<String>,
        /// The sandbox class to run it in, runc or gvisor (one the node offers: `node
        /// status` lists them); runc if unset.
        #[arg(long, value_name = "CLASS")]
        sandbox_class: Option<fnrt_function::SandboxClass>,
    },
    /// Stop an instance and remove all it owned.
    Stop {
        /// Instance id.
        id: String,
    },
    /// List instances.
    Ls {
        /// Only this function's.
        #[arg(long)]
        function: Option<String>,
    },
}

/// Runs an instance command.
pub async fn run(
    agent: &mut AgentClient<Channel>,
    cmd: InstanceCommand,
    out: Output,
) -> Result<(), CliError> {
    match cmd {
        InstanceCommand::Start {
            function,
            image,
            env,
            memory,
            secret,
            timeout_ms,
            command,
            args,
            sandbox_class,
        } => {
            let env = key_values("--env", env, true)?;
            let secrets = key_values("--secret", secret, false)?;
            let req = StartInstanceRequest {
                function,
                image,
                env,
                memory_mb: memory,
                secrets,
                timeout_ms,
                command,
                args,
                sandbox_class: sandbox_class.map(|c| c.as_str().to_string()).unwrap_or_default(),
                ..Default::default()
            };
            let started = agent.start_instance(req).await?.into_inner();
            for w in &started.warnings {
                eprintln!("warning: {w}");
            }
            let inst = started.instance.unwrap_or_default();
            match out {
                Output::Json => output::json(&instance_json(&inst)),
                Output::Table => output::table(INSTANCE_HEADER, &[instance_row(&inst)]),
            }
        }
        InstanceCommand::Stop { id } => {
            agent.stop_instance(StopInstanceRequest { id: id.clone() }).await?;
            match out {
                Output::Json => output::json(&json!({ "stopped": id })),
                Output::Table => println!("stopped {id}"),
            }
        }
        InstanceCommand::Ls { function } => {
            let req = ListInstancesRequest { function: function.unwrap_or_default() };
            let list = agent.list_instances(req).await?.into_inner().instances;
            match out {
                Output::Json => output::json(&json!(list.iter().map(instance_json).collect::<Vec<_>>())),
                Output::Table => {
                    output::table(INSTANCE_HEADER, &list.iter().map(instance_row).collect::<Vec<_>>())
                }
            }
        }
    }
    Ok(())
}

/// KEY=VALUE arguments as a map; a malformed one is a usage error that shows the value
/// only when it is not secret.
pub(crate) fn key_values(
    flag: &str,
    args: Vec<String>,
    show: bool,
) -> Result<std::collections::HashMap<String, String>, CliError> {
    let mut out = std::collections::HashMap::new();
    for kv in args {
        let (k, v) = kv.split_once('=').ok_or_else(|| {
            let shown = if show { format!("{kv:?}") } else { "(value hidden)".into() };
            CliError::Usage(format!("{flag} {shown}: expected KEY=VALUE"))
        })?;
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}
