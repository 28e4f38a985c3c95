//! `agentctl cluster agents|placement`: the control plane's view of the cluster, for the
//! operator (users manage functions with Scaleway's SDKs or CLI against its API).

use clap::{Args, Subcommand};
use serde_json::Value;

use crate::output;
use crate::{CliError, Output};

/// Where the control plane is.
#[derive(Args, Debug)]
pub struct ClusterArgs {
    /// The control plane's management API.
    #[arg(long, env = "FNRT_CONTROLPLANE_URL", default_value = "http://127.0.0.1:8090")]
    pub controlplane: String,
    /// The admin secret key (X-Auth-Token); `<state_dir>/admin-token` of the control plane.
    #[arg(long, env = "FNRT_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: String,
    /// What to show.
    #[command(subcommand)]
    pub command: ClusterCommand,
}

/// Cluster commands.
#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// The agents that joined: state, capacity, functions.
    Agents,
    /// Each function and the agents that run it.
    Placement,
}

async fn get(args: &ClusterArgs, path: &str) -> Result<Value, CliError> {
    let url = format!("{}{path}", args.controlplane.trim_end_matches('/'));
    let resp = fnrt_common::tls::default_http_client()
        .map_err(|e| CliError::Call(e.to_string()))?
        .get(&url)
        .header("X-Auth-Token", &args.admin_token)
        .send()
        .await
        .map_err(|e| CliError::Call(format!("cannot reach the control plane at {url}: {e}")))?;
    let status = resp.status();
    let body = resp.bytes().await.map_err(|e| CliError::Call(format!("reading the answer of {url}: {e}")))?;
    let v: Value = serde_json::from_slice(&body).map_err(|_| {
        CliError::Call(format!("{url} answered {status} with {}", String::from_utf8_lossy(&body)))
    })?;
    if !status.is_success() {
        let message = v["message"].as_str().unwrap_or("no message").to_string();
        return Err(CliError::Call(format!("the control plane answered {status}: {message}")));
    }
    Ok(v)
}

/// A JSON array of strings as `a, b`; `-` for none (a control plane older than the field).
fn strings(v: &Value) -> String {
    let items: Vec<&str> = v.as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    if items.is_empty() {
        "-".into()
    } else {
        items.join(", ")
    }
}

/// Runs a cluster command.
pub async fn run(args: ClusterArgs, out: Output) -> Result<(), CliError> {
    match args.command {
        ClusterCommand::Agents => {
            let v = get(&args, "/fnrt/v1/agents").await?;
            if out == Output::Json {
                output::json(&v);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = v["agents"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|a| {
                    vec![
                        a["node"].as_str().unwrap_or_default().to_string(),
                        a["state"].as_str().unwrap_or_default().to_string(),
                        a["dataplane"].as_str().unwrap_or_default().to_string(),
                        format!("{}/{}", a["memory_reserved_mb"], a["memory_mb"]),
                        a["cpus"].to_string(),
                        a["functions"].as_array().map_or(0, Vec::len).to_string(),
                        a["images"].to_string(),
                        strings(&a["sandbox_classes"]),
                        format!("{} ms", a["last_seen_ms_ago"]),
                    ]
                })
                .collect();
            output::table(
                &[
                    "NODE",
                    "STATE",
                    "DATA PLANE",
                    "MEMORY MB",
                    "CPUS",
                    "FUNCTIONS",
                    "IMAGES",
                    "SANDBOXES",
                    "SEEN",
                ],
                &rows,
            );
        }
        ClusterCommand::Placement => {
            let v = get(&args, "/fnrt/v1/placement").await?;
            if out == Output::Json {
                output::json(&v);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = v["functions"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|f| {
                    let on: Vec<String> = f["agents"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|a| format!("{}({} ready)", a["node"].as_str().unwrap_or_default(), a["ready"]))
                        .collect();
                    vec![
                        format!(
                            "{}/{}",
                            f["namespace"].as_str().unwrap_or_default(),
                            f["name"].as_str().unwrap_or_default()
                        ),
                        f["status"].as_str().unwrap_or_default().to_string(),
                        f["sandbox_class"].as_str().unwrap_or("-").to_string(),
                        format!("{}..{}", f["min_scale"], f["max_scale"]),
                        if on.is_empty() { "-".into() } else { on.join(", ") },
                    ]
                })
                .collect();
            output::table(&["FUNCTION", "STATUS", "SANDBOX", "SCALE", "AGENTS"], &rows);
        }
    }
    Ok(())
}
