//! After a restart: the table is rebuilt from containerd's labels. Running instances are
//! adopted (their output read again); everything else of the agent's — containers
//! without a running task, marked instances that never finished starting or stopping,
//! addresses no instance holds, stray snapshots, /tmp images and FIFOs — is removed.

use std::collections::{HashMap, HashSet};
use std::time::SystemTime;

use fnrt_function::policy::Limits;

use super::{CallSettings, Instance, Instances};
use crate::error::Error;
use crate::runtime::labels;
use crate::stats::Usage;

impl Instances {
    /// Rebuilds the table from containerd: running instances are adopted (and their
    /// output read again); the rest (no task, or a task that is not running) are removed
    /// with all they own, and so is any /tmp or FIFO no adopted instance owns.
    /// Instances marked but not running (a start or stop cut short by a crash) lose
    /// their network namespace, address, cgroup and root filesystem the same way.
    pub async fn adopt(&self) -> Result<(), Error> {
        self.mark_dir().await?;
        self.adopt_containers().await?;
        let keep: HashSet<String> = self.lock().keys().cloned().collect();
        let mut orphans = self.marked().await;
        // Addresses of instances the marks do not know (made before them); their network
        // namespaces go with them.
        for id in self.parts.network.holders() {
            if !orphans.contains(&id) {
                orphans.push(id);
            }
        }
        for id in orphans {
            if !keep.contains(&id) {
                tracing::info!(instance = %id, "removing what a start or stop cut short left");
                self.teardown(&id).await?;
            }
        }
        for id in &keep {
            // Adopted instances of an agent from before the marks.
            self.mark(id).await?;
        }
        self.parts.runtime.sweep_snapshots().await?;
        self.parts.runtime.sweep_scratch(&keep).await;
        self.parts.logs.sweep_fifos(&keep).await;
        Ok(())
    }

    async fn adopt_containers(&self) -> Result<(), Error> {
        for rec in self.parts.runtime.list().await? {
            let address = rec.labels.get(labels::ADDRESS).and_then(|a| a.parse().ok());
            match (rec.state, address) {
                (Some("running"), Some(address)) => {
                    let label = |k: &str| rec.labels.get(k).cloned().unwrap_or_default();
                    let inst = Instance {
                        function: label(labels::FUNCTION),
                        image: label(labels::IMAGE),
                        address,
                        netns: Some(self.parts.network.netns_path(&rec.id).into()),
                        state: "running".into(),
                        pid: rec.pid,
                        created_at: rec.created_at.unwrap_or(SystemTime::UNIX_EPOCH),
                        limits: self.recorded_limits(&rec.labels),
                        usage: Usage::default(),
                        reason: String::new(),
                        id: rec.id.clone(),
                        alive: super::Alive::new(),
                        phases: Default::default(),
                        class: fnrt_function::SandboxClass::from_wire(&label(labels::SANDBOX_CLASS))
                            .unwrap_or_default(),
                        call: CallSettings {
                            version: label(labels::VERSION),
                            namespace: label(labels::NAMESPACE),
                            display_name: label(labels::DISPLAY_NAME),
                            timeout_ms: label(labels::TIMEOUT_MS).parse().unwrap_or(0),
                        },
                    };
                    if let Err(e) = self.parts.logs.attach(&inst.id, &inst.function).await {
                        tracing::warn!(instance = %rec.id, error = %e, "its output cannot be read");
                    }
                    self.parts.ledger.force(&inst.id, self.claim_of(&inst.limits));
                    if let Err(e) = self.parts.runtime.set_cpu_share(&inst.id, &inst.limits).await {
                        tracing::warn!(instance = %rec.id, error = %e, "its CPU stays as it was");
                    }
                    tracing::info!(instance = %rec.id, "re-adopted running instance");
                    self.lock().insert(rec.id, inst);
                }
                _ => {
                    tracing::info!(instance = %rec.id, state = ?rec.state, "removing instance that is not running");
                    self.teardown(&rec.id).await?;
                }
            }
        }
        Ok(())
    }

    fn recorded_limits(&self, l: &HashMap<String, String>) -> Limits {
        let default =
            self.parts.policy.limits(0).unwrap_or(Limits { memory_mb: 128, cpu_millis: 100, pids: 1024 });
        let get = |k: &str, d: u32| l.get(k).and_then(|v| v.parse().ok()).unwrap_or(d);
        Limits {
            memory_mb: get(labels::MEMORY_MB, default.memory_mb),
            cpu_millis: get(labels::CPU_MILLIS, default.cpu_millis),
            pids: get(labels::PIDS, default.pids),
        }
    }
}
