//! `agentctl invoke`: a call through the agent's data plane.

use std::io::Write;

use clap::Args;
use fnrt_proto::agent::v1::{agent_client::AgentClient, NodeStatusRequest};
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

/// Calls the function and prints the answer's body (its request id on stderr); a non-2xx
/// answer fails the command.
pub async fn run(agent: &mut AgentClient<Channel>, args: InvokeArgs) -> Result<(), CliError> {
    let dp = agent.node_status(NodeStatusRequest {}).await?.into_inner().dataplane_address;
    let path = if args.path.starts_with('/') { args.path.clone() } else { format!("/{}", args.path) };
    let url = format!("http://{dp}/function/{}{path}", args.function);
    let method =
        args.method.clone().unwrap_or_else(|| if args.data.is_some() { "POST" } else { "GET" }.into());
    let method = reqwest::Method::from_bytes(method.as_bytes())
        .map_err(|_| CliError::Usage(format!("--method {method:?} is not an HTTP method")))?;
    let mut req = fnrt_common::tls::default_http_client()
        .map_err(|e| CliError::Call(e.to_string()))?
        .request(method, &url);
    for h in &args.headers {
        let (k, v) = h
            .split_once(':')
            .ok_or_else(|| CliError::Usage(format!("--header {h:?}: expected \"Name: value\"")))?;
        req = req.header(k.trim(), v.trim());
    }
    if let Some(d) = args.data {
        req = req.body(d);
    }
    let resp = req.send().await.map_err(|e| CliError::Call(format!("calling {url}: {e}")))?;
    let status = resp.status();
    // To stderr: stdout carries the body alone. `agentctl logs --request <id>` finds what
    // the call printed.
    if let Some(id) = resp.headers().get("x-scf-request-id").and_then(|v| v.to_str().ok()) {
        eprintln!("request id: {id}");
    }
    let body = resp.bytes().await.map_err(|e| CliError::Call(format!("reading the answer of {url}: {e}")))?;
    let mut stdout = std::io::stdout();
    let _ = stdout.write_all(&body);
    if !body.ends_with(b"\n") {
        let _ = stdout.write_all(b"\n");
    }
    if status.is_success() {
        Ok(())
    } else if status == reqwest::StatusCode::NOT_FOUND {
        Err(CliError::Api(tonic::Status::not_found(format!("{url} answered {status}"))))
    } else {
        Err(CliError::Call(format!("{url} answered {status}")))
    }
}
