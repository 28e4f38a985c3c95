//! A call's instance: a ready one with room, else a wait in the bounded queue while one
//! starts or frees up.

use std::sync::Arc;

use tokio::time::Instant;

use super::{start_request, FunctionSpec, Lease, Owner, Pool, Pools, Slot};
use crate::error::Error;

/// Why a call got no instance.
#[derive(Debug, thiserror::Error)]
pub enum AcquireError {
    /// Too many calls wait already.
    #[error("function {function:?} is at capacity: {max} calls already wait for an instance (queue_max); try again later")]
    QueueFull {
        /// The function.
        function: String,
        /// Its queue bound.
        max: u32,
    },
    /// No instance had room within the queue timeout.
    #[error("function {function:?} is at capacity: no instance was free within {waited_ms} ms (queue_timeout_ms; max_instances {max_instances})")]
    QueueTimeout {
        /// The function.
        function: String,
        /// How long the call waited.
        waited_ms: u128,
        /// Its instance bound.
        max_instances: u32,
    },
    /// Starting an instance for the call failed.
    #[error("function {function:?} has no instance and starting one failed: {reason}")]
    StartFailed {
        /// The function.
        function: String,
        /// Why.
        reason: String,
    },
    /// The function was removed while the call waited.
    #[error("function {0:?} was removed")]
    Removed(String),
    /// Its instances were started on their own, none runs and none can be started.
    #[error("function {0:?} is not deployed and has no running instance on this node; deploy it with agentctl function deploy {0} <image>")]
    NoInstance(String),
}

/// Marks a call as waiting until dropped.
struct Waiting<'a>(&'a Pool);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut st = self.0.state();
        st.waiting = st.waiting.saturating_sub(1);
    }
}

impl Pools {
    /// An instance for a call: a ready one with room, else a wait in the queue while one
    /// starts or frees up.
    pub async fn acquire(self: &Arc<Self>, pool: &Arc<Pool>) -> Result<Lease, AcquireError> {
        let arrived = Instant::now();
        let served = pool.served();
        let spec = &served.spec;
        let key = served.key;
        if let Some(lease) = pool.try_lease(key, spec.concurrency, arrived, Some(&spec.name)) {
            served.warm_hits.inc();
            served.queue_wait.observe(0.0);
            return Ok(lease);
        }
        self.enqueue(pool, spec)?;
        let _waiting = Waiting(pool);
        let deadline = arrived + spec.queue_timeout;
        loop {
            let notified = pool.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(lease) = pool.try_lease(key, spec.concurrency, arrived, None) {
                if lease.cold {
                    served.cold_starts.inc();
                } else {
                    served.warm_hits.inc();
                }
                served.queue_wait.observe(arrived.elapsed().as_secs_f64());
                return Ok(lease);
            }
            self.check_waiting(pool, spec, arrived)?;
            self.start_for_waiters(pool, spec);
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(AcquireError::QueueTimeout {
                    function: spec.name.clone(),
                    waited_ms: arrived.elapsed().as_millis(),
                    max_instances: spec.max_instances,
                });
            }
        }
    }

    /// Counts the call as waiting, or refuses it.
    fn enqueue(&self, pool: &Pool, spec: &FunctionSpec) -> Result<(), AcquireError> {
        let mut st = pool.state();
        if st.removed {
            return Err(AcquireError::Removed(spec.name.clone()));
        }
        if pool.owner == (Owner::Started { restartable: false }) && st.live() == 0 && st.starting == 0 {
            return Err(AcquireError::NoInstance(spec.name.clone()));
        }
        if st.waiting >= spec.queue_max {
            return Err(AcquireError::QueueFull { function: spec.name.clone(), max: spec.queue_max });
        }
        st.waiting += 1;
        Ok(())
    }

    /// Whether a waiting call should give up: the pool went, or a start for it failed.
    fn check_waiting(&self, pool: &Pool, spec: &FunctionSpec, arrived: Instant) -> Result<(), AcquireError> {
        let st = pool.state();
        if st.removed {
            return Err(AcquireError::Removed(spec.name.clone()));
        }
        match &st.last_error {
            Some((at, reason)) if *at >= arrived => {
                Err(AcquireError::StartFailed { function: spec.name.clone(), reason: reason.clone() })
            }
            _ => Ok(()),
        }
    }

    /// Starts an instance when the waiting calls need more than the starting ones will
    /// take, and the pool is below max_instances. A pool of instances started on their
    /// own starts one only when none runs, and only when it may.
    fn start_for_waiters(self: &Arc<Self>, pool: &Arc<Pool>, spec: &Arc<FunctionSpec>) {
        let mut st = pool.state();
        let live = st.live();
        let wanted = match pool.owner {
            Owner::Deployed => {
                st.starting * spec.concurrency < st.waiting && live + st.starting < spec.max_instances
            }
            Owner::Started { restartable } => restartable && live == 0 && st.starting == 0 && st.waiting > 0,
        };
        if wanted {
            st.starting += 1;
            drop(st);
            self.spawn_start(pool.clone(), spec.clone());
        }
    }

    /// Starts one instance of `spec` for `pool` in the background (its `starting` count
    /// already raised).
    pub(super) fn spawn_start(self: &Arc<Self>, pool: Arc<Pool>, spec: Arc<FunctionSpec>) {
        let this = self.clone();
        self.rt.spawn(async move {
            if matches!(pool.owner, Owner::Started { .. }) {
                tracing::info!(function = %spec.name, "cold start: a call found no running instance");
            }
            let result = this.ops.start(start_request(&spec)).await;
            let mut orphan = None;
            {
                let mut st = pool.state();
                st.starting = st.starting.saturating_sub(1);
                match result {
                    Ok((inst, _)) if st.removed => orphan = Some(inst.id),
                    Ok((inst, _)) => st.slots.push(Slot::of(inst, spec.instance_key())),
                    Err(e) => {
                        let reason = crate::error::chain(&e);
                        tracing::warn!(function = %spec.name, %reason, "starting an instance failed");
                        let now = Instant::now();
                        st.failed(now, format!("starting an instance failed: {reason}"));
                        st.last_error = Some((now, reason));
                    }
                }
            }
            pool.changed.notify_waiters();
            if let Some(id) = orphan {
                this.stop_instance_quietly(&id, None).await;
            }
        });
    }

    /// Stops an instance of a pool; one already gone is fine.
    pub(super) async fn stop_instance_quietly(&self, id: &str, why: Option<&str>) {
        match self.ops.stop(id, why).await {
            Ok(()) | Err(Error::InstanceNotFound(_)) => {}
            Err(e) => tracing::warn!(instance = id, error = %e, "stopping a pool's instance"),
        }
    }
}
