//! `agentctl function deploy|update|rm|ls`: functions deployed on the agent, served from
//! pools.

use clap::{Args, Subcommand};
use fnrt_proto::agent::v1::{
    agent_client::AgentClient, DeployFunctionRequest, Function, FunctionSpec, FunctionType,
    ListFunctionsRequest, RemoveFunctionRequest, UpdateFunctionRequest,
};
use serde_json::{json, Value};
use tonic::transport::Channel;

use super::instance::key_values;
use crate::output;
use crate::{CliError, Output};

/// Function commands.
#[derive(Subcommand, Debug)]
pub enum FunctionCommand {
    /// Deploy a function: pull its image, start its provisioned instances.
    Deploy(SpecArgs),
    /// Replace a deployed function's spec (a new image, version, memory or environment
    /// rolls; counts only scale).
    Update(SpecArgs),
    /// Remove a function; its instances stop once their calls finish.
    Rm {
        /// Function name.
        name: String,
    },
    /// List deployed functions and their pools.
    Ls,
}

/// A function's spec on the command line; unset numbers take the agent's defaults.
#[derive(Args, Debug)]
pub struct SpecArgs {
    /// Function name (a-z, 0-9, '-').
    pub name: String,
    /// Image reference.
    pub image: String,
    /// An event function (called with POST /event-invoke) instead of an HTTP one.
    #[arg(long)]
    pub event: bool,
    /// Memory in MB (64 to 32768; default 128).
    #[arg(long, short = 'm', default_value_t = 0)]
    pub memory: u32,
    /// Longest a call may take, in ms (default 3000).
    #[arg(long, default_value_t = 0)]
    pub timeout_ms: u32,
    /// Environment variable, KEY=VALUE; repeatable.
    #[arg(long = "env", short = 'e', value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Secret environment variable, KEY=VALUE; repeatable; never shown back.
    #[arg(long = "secret", value_name = "KEY=VALUE")]
    pub secret: Vec<String>,
    /// Instances kept ready (provisioned concurrency).
    #[arg(long, default_value_t = 0)]
    pub provisioned: u32,
    /// Most instances at once (default max(provisioned, 10)).
    #[arg(long = "max", default_value_t = 0)]
    pub max_instances: u32,
    /// Calls one instance takes at once (default 1).
    #[arg(long, default_value_t = 0)]
    pub concurrency: u32,
    /// Seconds an idle on-demand instance is kept (default 60).
    #[arg(long, default_value_t = 0)]
    pub keep_alive: u32,
    /// Version (SCF_FUNCTIONVERSION; default $LATEST).
    #[arg(long, default_value = "")]
    pub version: String,
    /// Namespace (SCF_NAMESPACE; default "default").
    #[arg(long, default_value = "")]
    pub namespace: String,
    /// The sandbox class its instances run in, runc or gvisor (one the node offers: `node
    /// status` lists them); runc if unset.
    #[arg(long, value_name = "CLASS")]
    pub sandbox_class: Option<fnrt_function::SandboxClass>,
}

impl SpecArgs {
    fn spec(self) -> Result<FunctionSpec, CliError> {
        Ok(FunctionSpec {
            env: key_values("--env", self.env, true)?,
            secrets: key_values("--secret", self.secret, false)?,
            name: self.name,
            namespace: self.namespace,
            version: self.version,
            image: self.image,
            r#type: if self.event { FunctionType::Event } else { FunctionType::Http } as i32,
            memory_mb: self.memory,
            timeout_ms: self.timeout_ms,
            provisioned: self.provisioned,
            max_instances: self.max_instances,
            concurrency: self.concurrency,
            keep_alive_s: self.keep_alive,
            sandbox_class: self.sandbox_class.map(|c| c.as_str().to_string()).unwrap_or_default(),
            ..Default::default()
        })
    }
}

/// Runs a function command.
pub async fn run(
    agent: &mut AgentClient<Channel>,
    cmd: FunctionCommand,
    out: Output,
) -> Result<(), CliError> {
    let shown = match cmd {
        FunctionCommand::Deploy(args) => {
            let r = agent.deploy_function(DeployFunctionRequest { function: Some(args.spec()?) }).await?;
            let r = r.into_inner();
            for w in &r.warnings {
                eprintln!("warning: {w}");
            }
            vec![r.function.unwrap_or_default()]
        }
        FunctionCommand::Update(args) => {
            let r = agent.update_function(UpdateFunctionRequest { function: Some(args.spec()?) }).await?;
            vec![r.into_inner().function.unwrap_or_default()]
        }
        FunctionCommand::Rm { name } => {
            agent.remove_function(RemoveFunctionRequest { name: name.clone() }).await?;
            match out {
                Output::Json => output::json(&json!({ "removed": name })),
                Output::Table => println!("removed {name}"),
            }
            return Ok(());
        }
        FunctionCommand::Ls => agent.list_functions(ListFunctionsRequest {}).await?.into_inner().functions,
    };
    match out {
        Output::Json => output::json(&Value::Array(shown.iter().map(function_json).collect())),
        Output::Table => output::table(
            &[
                "NAME",
                "TYPE",
                "SANDBOX",
                "IMAGE",
                "MEMORY",
                "TIMEOUT",
                "PROVISIONED",
                "MAX",
                "READY",
                "STARTING",
                "IN FLIGHT",
                "QUEUED",
                "LAST ERROR",
            ],
            &shown.iter().map(function_row).collect::<Vec<_>>(),
        ),
    }
    Ok(())
}

fn kind(s: &FunctionSpec) -> &'static str {
    if s.r#type == FunctionType::Event as i32 {
        "event"
    } else {
        "http"
    }
}

fn function_json(f: &Function) -> Value {
    let s = f.spec.clone().unwrap_or_default();
    json!({
        "name": s.name, "namespace": s.namespace, "version": s.version, "image": s.image,
        "type": kind(&s), "memory_mb": s.memory_mb, "timeout_ms": s.timeout_ms, "env": s.env,
        "secret_names": f.secret_names, "provisioned": s.provisioned, "max_instances": s.max_instances,
        "concurrency": s.concurrency, "keep_alive_s": s.keep_alive_s, "queue_max": s.queue_max,
        "queue_timeout_ms": s.queue_timeout_ms, "ready": f.ready, "starting": f.starting,
        "in_flight": f.in_flight, "queued": f.queued, "instances": f.instances, "last_error": f.last_error,
        "sandbox_class": output::sandbox_class(&s.sandbox_class),
    })
}

fn function_row(f: &Function) -> Vec<String> {
    let s = f.spec.clone().unwrap_or_default();
    vec![
        s.name.clone(),
        kind(&s).into(),
        output::sandbox_class(&s.sandbox_class).to_string(),
        s.image.clone(),
        format!("{} MB", s.memory_mb),
        format!("{} ms", s.timeout_ms),
        s.provisioned.to_string(),
        s.max_instances.to_string(),
        f.ready.to_string(),
        f.starting.to_string(),
        f.in_flight.to_string(),
        f.queued.to_string(),
        f.last_error.clone(),
    ]
}
