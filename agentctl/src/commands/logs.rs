//! `agentctl logs`: instance output, by function, instance or call.

use clap::Args;
use fnrt_proto::agent::v1::{agent_client::AgentClient, LogLine, StreamLogsRequest};
use serde_json::json;
use tonic::transport::Channel;

use crate::{CliError, Output};

/// What `agentctl logs` shows.
#[derive(Args, Debug)]
pub struct LogsArgs {
    /// Only this function's lines.
    pub function: Option<String>,
    /// Only this instance's lines.
    #[arg(long, short = 'i')]
    pub instance: Option<String>,
    /// Only the lines printed during this call (its X-Scf-Request-Id).
    #[arg(long = "request", short = 'r', value_name = "REQUEST_ID")]
    pub request_id: Option<String>,
    /// Keep printing new lines as they come.
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Only lines since this time: a duration back from now (30s, 10m, 2h) or RFC 3339.
    #[arg(long)]
    pub since: Option<String>,
    /// Read the function's lines from every agent through this control plane's API (the
    /// function is then the control plane's function id), not from this node.
    #[arg(long, value_name = "URL")]
    pub controlplane: Option<String>,
    /// The control plane's admin secret key (with --controlplane).
    #[arg(long, env = "FNRT_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
}

/// `--controlplane`: the function's lines from every agent, through the control plane.
pub async fn run_controlplane(args: LogsArgs, out: Output) -> Result<(), CliError> {
    let base = args.controlplane.clone().unwrap_or_default();
    let id = args.function.clone().ok_or_else(|| {
        CliError::Usage(
            "with --controlplane, give the function's id (as the control plane's API shows it)".into(),
        )
    })?;
    let token = args.admin_token.clone().ok_or_else(|| {
        CliError::Usage("with --controlplane, give --admin-token (or FNRT_ADMIN_TOKEN)".into())
    })?;
    let mut query = vec![("follow", args.follow.to_string())];
    if let Some(r) = &args.request_id {
        query.push(("request_id", r.clone()));
    }
    if let Some(s) = &args.since {
        query.push(("since", since(s)?));
    }
    let url = format!("{}/fnrt/v1/functions/{id}/logs", base.trim_end_matches('/'));
    let with_query = reqwest::Url::parse_with_params(&url, &query)
        .map_err(|e| CliError::Usage(format!("--controlplane {base:?} is not a URL: {e}")))?;
    let mut resp = fnrt_common::tls::default_http_client()
        .map_err(|e| CliError::Call(e.to_string()))?
        .get(with_query)
        .header("X-Auth-Token", token)
        .send()
        .await
        .map_err(|e| CliError::Call(format!("cannot reach the control plane at {url}: {e}")))?;
    let status = resp.status();
    if !status.is_success() {
        let body = resp.text().await.unwrap_or_default();
        return Err(CliError::Call(format!("the control plane answered {status}: {body}")));
    }
    let show = |v: &serde_json::Value| match out {
        Output::Json => println!("{v}"),
        Output::Table => println!(
            "{} {} {} {}",
            v["time"].as_str().unwrap_or_default(),
            v["node"].as_str().unwrap_or_default(),
            v["instance"].as_str().unwrap_or_default(),
            v["line"].as_str().unwrap_or_default()
        ),
    };
    if !args.follow {
        let body =
            resp.bytes().await.map_err(|e| CliError::Call(format!("reading the answer of {url}: {e}")))?;
        let v: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| CliError::Call(format!("the answer of {url} is not JSON: {e}")))?;
        v["logs"].as_array().into_iter().flatten().for_each(show);
        return Ok(());
    }
    let mut pending = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| CliError::Call(format!("reading {url}: {e}")))? {
        pending.extend_from_slice(&chunk);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let raw: Vec<u8> = pending.drain(..=end).collect();
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&raw) {
                show(&v);
            }
        }
    }
    Ok(())
}

/// Prints the lines, then (with --follow) new ones until interrupted.
pub async fn run(agent: &mut AgentClient<Channel>, args: LogsArgs, out: Output) -> Result<(), CliError> {
    let since = match args.since {
        None => String::new(),
        Some(s) => since(&s)?,
    };
    let req = StreamLogsRequest {
        function: args.function.unwrap_or_default(),
        instance: args.instance.unwrap_or_default(),
        request_id: args.request_id.unwrap_or_default(),
        follow: args.follow,
        since,
    };
    let mut stream = agent.stream_logs(req).await?.into_inner();
    while let Some(line) = stream.message().await? {
        print(&line, out);
    }
    Ok(())
}

/// `--since` as RFC 3339: a duration is counted back from now.
fn since(s: &str) -> Result<String, CliError> {
    if let Ok(d) = humantime::parse_duration(s) {
        let t = std::time::SystemTime::now().checked_sub(d).unwrap_or(std::time::UNIX_EPOCH);
        return Ok(humantime::format_rfc3339_seconds(t).to_string());
    }
    humantime::parse_rfc3339_weak(s).map(|_| s.to_string()).map_err(|_| {
        CliError::Usage(format!(
            "--since {s:?} is neither a duration (30s, 10m, 2h) nor an RFC 3339 time (2026-01-02T03:04:05Z)"
        ))
    })
}

fn print(l: &LogLine, out: Output) {
    match out {
        Output::Json => println!(
            "{}",
            json!({
                "time": l.time, "stream": l.stream, "instance": l.instance, "function": l.function,
                "request_ids": l.request_ids, "line": l.line,
            })
        ),
        Output::Table => {
            let req = if l.request_ids.is_empty() { "-".to_string() } else { l.request_ids.join(",") };
            println!("{} {} {} {} {}", l.time, l.instance, l.stream, req, l.line);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_durations_and_times() {
        assert_eq!(since("2026-01-02T03:04:05Z").unwrap(), "2026-01-02T03:04:05Z");
        let back = since("10m").unwrap();
        let t = humantime::parse_rfc3339(&back).unwrap();
        let ago = std::time::SystemTime::now().duration_since(t).unwrap().as_secs();
        assert!((599..=601).contains(&ago), "{ago}");
        assert!(since("yesterday").unwrap_err().to_string().contains("RFC 3339"));
    }
}
