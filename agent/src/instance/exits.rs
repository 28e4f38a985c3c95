//! Instances that end on their own: containerd's task events (exits, OOM kills) are
//! followed; an instance whose process ends is listed with the cause and removed with all
//! it owned. A gap in the events (containerd restarted) is closed by checking every task.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;

use super::{Instance, Instances};
use crate::containerd::Containerd;
use crate::events::{self, TaskEvent};

impl Instances {
    /// Follows containerd's task events until `shutdown`: an instance whose process exits,
    /// crashes or is OOM-killed is recorded with the cause and removed with all it owned.
    /// When the event stream breaks (containerd restarted), it subscribes again and checks
    /// every instance's task, so no exit goes unseen.
    pub async fn watch(self: Arc<Self>, cd: Containerd, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let mut first = true;
        loop {
            // containerd answers a subscription only with its first event, so the wait for
            // it must give way to a shutdown too.
            let subscribed = tokio::select! {
                s = events::subscribe(&cd) => s,
                _ = shutdown.changed() => return,
            };
            let stream = match subscribed {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "subscribing to task events; retrying in 1 s");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        _ = shutdown.changed() => return,
                    }
                }
            };
            if !first {
                self.reconcile().await;
            }
            first = false;
            let mut stream = std::pin::pin!(stream);
            loop {
                tokio::select! {
                    next = stream.next() => match next {
                        Some(Ok(event)) => self.on_event(event).await,
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, "task event stream broke; subscribing again");
                            break;
                        }
                        None => break,
                    },
                    _ = shutdown.changed() => return,
                }
            }
        }
    }

    async fn on_event(self: &Arc<Self>, event: TaskEvent) {
        match event {
            TaskEvent::Oom { container } => {
                self.oom_seen.lock().unwrap_or_else(|p| p.into_inner()).insert(container);
            }
            TaskEvent::Exit { container, status, at } => {
                let starting =
                    self.exits_at_start.lock().unwrap_or_else(|p| p.into_inner()).remove(&container);
                match starting {
                    Some(tx) => {
                        let oom = self.oom_seen.lock().unwrap_or_else(|p| p.into_inner()).remove(&container);
                        let _ = tx.send((status, oom));
                    }
                    None => self.end(container, Some(status), at).await,
                }
            }
        }
    }

    /// Records that `container` ended (with `status`, or unknown after an event gap) and
    /// removes it with all it owned. One the agent stopped itself is no longer in the table.
    async fn end(self: &Arc<Self>, container: String, status: Option<u32>, at: SystemTime) {
        let mut oom = self.oom_seen.lock().unwrap_or_else(|p| p.into_inner()).remove(&container);
        let Some(inst) = self.lock().remove(&container) else { return };
        inst.alive.clear();
        if !oom {
            // The OOM event may have been missed; the cgroup still counts the kills.
            let cgroup = self.parts.runtime.cgroup_path(&container);
            let killed = tokio::task::spawn_blocking(move || crate::stats::oom_kills(&cgroup)).await;
            oom = killed.unwrap_or(0) > 0;
        }
        self.record_end(inst, status, oom, at);
        let this = self.clone();
        self.rt.spawn(async move {
            if let Err(e) = this.teardown(&container).await {
                tracing::warn!(instance = %container, error = %e, "removing an ended instance");
            }
        });
    }

    fn record_end(&self, mut inst: Instance, status: Option<u32>, oom: bool, at: SystemTime) {
        let (state, reason) = events::reason(status, oom, inst.limits.memory_mb);
        tracing::warn!(instance = %inst.id, function = %inst.function, state, %reason, "instance ended");
        inst.state = state.into();
        inst.reason = reason;
        inst.pid = 0;
        self.push_ended(at, inst);
    }

    /// After a gap in the events: instances whose task no longer runs are ended now.
    async fn reconcile(self: &Arc<Self>) {
        let records = match self.parts.runtime.list().await {
            Ok(r) => r,
            Err(e) => return tracing::warn!(error = %e, "checking instances after an event gap"),
        };
        let running: HashSet<String> =
            records.into_iter().filter(|r| r.state == Some("running")).map(|r| r.id).collect();
        let gone: Vec<String> = self.lock().keys().filter(|id| !running.contains(*id)).cloned().collect();
        for id in gone {
            self.end(id, None, SystemTime::now()).await;
        }
    }
}
