//! Stopping an instance: its task and container, root filesystem, /tmp, output, network
//! namespace and address, and its mark, in that order.

use std::time::SystemTime;

use super::Instances;
use crate::error::Error;

impl Instances {
    /// Stops an instance and removes all it owned. With `why` (the agent stopped it, e.g.
    /// it overran a call's timeout) it is listed as ended, state `stopped`, for that reason.
    pub async fn stop(&self, id: &str, why: Option<&str>) -> Result<(), Error> {
        let removed = self.lock().remove(id);
        if let Some(inst) = &removed {
            inst.alive.clear();
        }
        match (removed, why) {
            (Some(mut inst), Some(why)) => {
                tracing::warn!(instance = id, function = %inst.function, reason = why, "stopping an instance");
                inst.state = "stopped".into();
                inst.reason = format!("stopped by the agent: {why}");
                inst.pid = 0;
                self.push_ended(SystemTime::now(), inst);
            }
            (Some(_), None) => {}
            (None, _) => {
                if !self.parts.runtime.list().await?.iter().any(|r| r.id == id) {
                    return Err(Error::InstanceNotFound(id.to_string()));
                }
            }
        }
        self.teardown(id).await
    }

    /// Removes everything of instance `id` there is (a part that is not there is fine).
    pub(super) async fn teardown(&self, id: &str) -> Result<(), Error> {
        let removed = self.parts.runtime.remove(id).await;
        // After the task is gone: what it printed last is still read.
        self.parts.logs.detach(id).await;
        let detached = self.parts.network.detach(id).await;
        // Its share of the node's budgets goes back whatever else failed: what is left is
        // the cleanup's to remove, not a start's to wait for.
        self.parts.ledger.release(id);
        removed?;
        detached?;
        self.unmark(id).await
    }
}
