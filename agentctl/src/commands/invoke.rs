//! `agentctl invoke`: a call of a function on the node.

use std::io::Write;

use clap::Args;
use fnrt_proto::agent::v1::{agent_client::AgentClient, InvokeRequest};
use tonic::transport::Channel;

use crate::CliError;

/// Arguments of `invoke`.
#[derive(Args, Debug)]
pub struct InvokeArgs {
    /// Function name.
    pub function: String,
    /// Path (and query) to call on the function.
    #[arg(long, default_value = "/")]
    pub path: String,
    /// HTTP method; POST when --data is given, else GET.
    #[arg(long, short = 'X')]
    pub method: Option<String>,
    /// Request body.
    #[arg(long, short = 'd')]
    pub data: Option<String>,
    /// Request header, "Name: value"; repeatable.
    #[arg(long = "header", short = 'H')]
    pub headers: Vec<String>,
}

/// Calls the function through the agent's API (the data plane's path, SCF headers and
/// timeout included, without the data plane's port, which may serve only the gateway) and
/// prints the answer's body (its request id on stderr); a non-2xx answer fails the command.
pub async fn run(agent: &mut AgentClient<Channel>, args: InvokeArgs) -> Result<(), CliError> {
    let path = if args.path.starts_with('/') { args.path.clone() } else { format!("/{}", args.path) };
    let method =
        args.method.clone().unwrap_or_else(|| if args.data.is_some() { "POST" } else { "GET" }.into());
    let mut headers = std::collections::HashMap::new();
    for h in &args.headers {
        let (k, v) = h
            .split_once(':')
            .ok_or_else(|| CliError::Usage(format!("--header {h:?}: expected \"Name: value\"")))?;
        headers.insert(k.trim().to_string(), v.trim().to_string());
    }
    let req = InvokeRequest {
        function: args.function.clone(),
        payload: args.data.unwrap_or_default().into_bytes(),
        method,
        path: path.clone(),
        headers,
        ..Default::default()
    };
    let answer = agent.invoke(req).await?.into_inner();
    // To stderr: stdout carries the body alone. `agentctl logs --request <id>` finds what
    // the call printed.
    eprintln!("request id: {}", answer.request_id);
    let mut stdout = std::io::stdout();
    let _ = stdout.write_all(&answer.body);
    if !answer.body.ends_with(b"\n") {
        let _ = stdout.write_all(b"\n");
    }
    let what = format!("{} {path} answered {}", args.function, answer.status);
    match answer.status {
        200..=299 => Ok(()),
        404 => Err(CliError::Api(tonic::Status::not_found(what))),
        _ => Err(CliError::Call(what)),
    }
}
