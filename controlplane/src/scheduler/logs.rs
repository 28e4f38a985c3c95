//! A function's log lines from every agent that has some: the scheduler asks each live
//! agent at once (StreamLogs of the function's name there) and hands back their streams,
//! each with its node.

use fnrt_proto::agent::v1 as apb;
use futures_util::future::join_all;

use super::link::LogStream;
use super::Scheduler;

/// What lines to ask for.
#[derive(Debug, Default, Clone)]
pub struct LogQuery {
    /// Only those printed during this call.
    pub request_id: String,
    /// Only those at or after this time (RFC 3339).
    pub since: String,
    /// Then new lines as they come.
    pub follow: bool,
}

impl Scheduler {
    /// The log streams of function `function_id` on each live agent, with the node; an
    /// agent that cannot be asked is left out (logged).
    pub async fn logs(&self, function_id: &str, q: &LogQuery) -> Vec<(String, LogStream)> {
        let name = fnrt_function::naming::on_agents(function_id);
        let asks = self.live().into_iter().map(|a| {
            let req = apb::StreamLogsRequest {
                function: name.clone(),
                request_id: q.request_id.clone(),
                since: q.since.clone(),
                follow: q.follow,
                ..Default::default()
            };
            async move {
                match a.link.logs(req).await {
                    Ok(s) => Some((a.node.clone(), s)),
                    Err(e) => {
                        tracing::warn!(node = %a.node, error = %e.message(), "cannot read the agent's logs");
                        None
                    }
                }
            }
        });
        join_all(asks).await.into_iter().flatten().collect()
    }
}
