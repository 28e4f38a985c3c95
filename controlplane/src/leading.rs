//! What only the leader runs: the scheduler's reconcile passes, cron firing and the
//! trigger subscriptions. Every replica serves the API, the gateway and the join
//! service, follows the store and takes async invocations off the queue; the one that
//! leads (always the only one on the embedded store) also runs these, from the moment it
//! is elected until it steps down.

use std::sync::Arc;

use crate::task::Owned;
use tokio::sync::watch;

use crate::model::FunctionStatus;
use crate::scheduler::Scheduler;
use crate::state::State;
use crate::store::Fence;

/// This replica's name in the leader key: its host and API address.
pub fn replica_name(api: std::net::SocketAddr) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{}@{api}", host.trim())
}

/// Runs the leader's tasks while `lead` says this replica leads.
pub async fn supervise(
    scheduler: Arc<Scheduler>,
    state: Arc<State>,
    mut lead: watch::Receiver<Option<Fence>>,
) {
    loop {
        let fence = *lead.borrow_and_update();
        let mut running = Vec::new();
        scheduler.forget_all_applied();
        if let Some(f) = fence {
            tracing::info!(term = f.rev, "leader: running the scheduler, crons and triggers");
            running.push(Owned::spawn(scheduler.clone().run()));
            running.push(Owned::spawn(scheduler.clone().run_timer(f)));
            running.push(Owned::spawn(scheduler.clone().run_triggers()));
            // Deploys a stop (or a lost replica) cut short start again: their calls are idempotent.
            let pending: Vec<String> = state.read(|d| {
                d.functions
                    .values()
                    .filter(|f| f.status == FunctionStatus::Pending)
                    .map(|f| f.id.clone())
                    .collect()
            });
            for id in pending {
                scheduler.deploy(&id);
            }
        }
        if lead.changed().await.is_err() {
            return;
        }
        drop(running);
        scheduler.stop_calls().await;
    }
}
