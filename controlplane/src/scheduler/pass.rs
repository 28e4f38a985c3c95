//! How a reconcile pass carries out what it decided: each agent's calls in order on a
//! task of its own, all agents at once. The pass waits for them at most `PASS_WAIT`: an
//! agent that is slow or hangs keeps its task (the following passes leave it out while
//! it runs) and delays no other agent; its circuit breaker stops calls to an agent whose
//! calls keep failing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fnrt_proto::agent::v1 as apb;

use super::agents::Agent;
use super::breaker::is_agent_failure;
use super::{lock, Scheduler};

/// The longest a pass waits for the agents' calls.
const PASS_WAIT: Duration = Duration::from_secs(2);

/// One call a pass makes on an agent.
pub enum Action {
    /// Put the spec there (a deploy or an update).
    Apply(Box<apb::FunctionSpec>),
    /// Take the function off.
    Remove(String),
}

/// Marks an agent busy while its calls run, however its task ends.
struct Busy {
    set: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    node: String,
}

impl Drop for Busy {
    fn drop(&mut self) {
        lock(&self.set).remove(&self.node);
    }
}

impl Scheduler {
    /// Runs `plan` (actions by node) on the live agents.
    pub(super) async fn carry_out(
        self: &Arc<Self>,
        live: &[Agent],
        plan: std::collections::HashMap<String, Vec<Action>>,
    ) {
        let mut tasks = Vec::new();
        for (node, actions) in plan {
            let Some(a) = live.iter().find(|a| a.node == node).cloned() else { continue };
            if self.breakers.is_open(&node, Instant::now()) {
                tracing::debug!(node = %node, "agent's breaker is open: no calls this pass");
                continue;
            }
            if !lock(&self.busy).insert(node.clone()) {
                tracing::debug!(node = %node, "agent still busy with an earlier pass's calls");
                continue;
            }
            let busy = Busy { set: self.busy.clone(), node };
            let me = self.clone();
            let task = tokio::spawn(async move {
                let _busy = busy;
                for action in actions {
                    let result = match action {
                        Action::Apply(spec) => {
                            let function = spec.name.clone();
                            me.apply(&a, *spec).await.map(|_| ()).inspect_err(|s| {
                                tracing::warn!(node = %a.node, function, error = %s.message(), "cannot place function on agent");
                            })
                        }
                        Action::Remove(name) => me.remove(&a, &name).await,
                    };
                    let failed = result.as_ref().is_err_and(|s| is_agent_failure(s.code()));
                    me.breakers.record(&a.node, failed, Instant::now());
                    if me.breakers.is_open(&a.node, Instant::now()) {
                        break;
                    }
                }
            });
            {
                let mut calls = lock(&self.calls);
                calls.retain(|c| !c.is_finished());
                calls.push(task.abort_handle());
            }
            tasks.push(task);
        }
        let _ = tokio::time::timeout(PASS_WAIT, futures_util::future::join_all(tasks)).await;
    }

    /// Stops the agents' calls still running (when the control plane stops), and waits
    /// (a second at most) until they have let go of what they hold.
    pub async fn stop_calls(&self) {
        let calls: Vec<tokio::task::AbortHandle> = lock(&self.calls).drain(..).collect();
        for c in &calls {
            c.abort();
        }
        let deadline = Instant::now() + Duration::from_secs(1);
        while calls.iter().any(|c| !c.is_finished()) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
