//! Pools of functions whose instances an operator starts and stops (StartInstance,
//! StopInstance): the calls to such a function go through its pool like a deployed
//! function's (SCF headers, timeout, metrics), spread over its instances.

use std::sync::Arc;
use std::time::Duration;

use super::{locked, spec_of_started, FunctionSpec, Owner, Pool, Pools, Slot, State};
use crate::error::Error;
use crate::instance::{Instance, StartRequest};

impl Pools {
    /// The spec calls to instances started with `req` are served with: no instance kept
    /// warm, none reaped, any number of calls at once on each.
    fn started_spec(&self, req: &StartRequest) -> Result<FunctionSpec, Error> {
        let mut spec = spec_of_started(req, &self.policy)?;
        spec.concurrency = u32::MAX;
        spec.keep_alive = Duration::MAX;
        Ok(spec)
    }

    /// Starts an instance of a function that is not deployed; it takes the function's
    /// calls, with the others started for it. Refused for a deployed function.
    pub async fn start_instance(
        self: &Arc<Self>,
        req: StartRequest,
    ) -> Result<(Instance, Option<String>), Error> {
        if self.deployed(&req.function).is_some() {
            return Err(Error::FunctionDeployed(req.function));
        }
        let spec = Arc::new(self.started_spec(&req)?);
        let (inst, advice) = self.ops.start(req).await?;
        let key = spec.instance_key();
        let slot = Slot::of(inst.clone(), key);
        let pool = {
            let mut map = locked(&self.started);
            let known = map.get(&spec.name).filter(|p| p.owner == Owner::Started { restartable: true });
            match known {
                Some(p) => p.clone(),
                None => {
                    // New, or rebuilt after a restart: now that a start says how, calls may
                    // start instances of it again; adopted instances keep serving.
                    let state = State {
                        slots: map.remove(&spec.name).map(|p| take_slots(&p)).unwrap_or_default(),
                        ..State::default()
                    };
                    let pool = Arc::new(Pool::new(
                        Owner::Started { restartable: true },
                        self.served(spec.clone()),
                        state,
                    ));
                    map.insert(spec.name.clone(), pool.clone());
                    pool
                }
            }
        };
        // Calls are served as the last instance was started, and a call that finds none
        // starts one like it.
        if pool.served().key != key || pool.spec().timeout != spec.timeout {
            pool.set_served(self.served(spec));
        }
        pool.state().slots.push(slot);
        pool.changed.notify_waiters();
        Ok((inst, advice))
    }

    /// Stops an instance. Once the operator has stopped the last instance of a function
    /// started on its own, its calls get 404 again.
    pub async fn stop_instance(&self, id: &str) -> Result<(), Error> {
        // Out of its pool first: the pools' care must not see it end and count it as a
        // crash, nor a call start another in its place.
        {
            let mut map = locked(&self.started);
            let mut emptied = None;
            for (name, pool) in map.iter() {
                let mut st = pool.state();
                let before = st.slots.len();
                st.slots.retain(|s| &*s.id != id);
                if st.slots.len() < before && st.live() == 0 && st.starting == 0 {
                    st.removed = true;
                    emptied = Some(name.clone());
                }
            }
            if let Some(pool) = emptied.and_then(|name| map.remove(&name)) {
                pool.changed.notify_waiters();
            }
        }
        self.ops.stop(id, None).await
    }

    /// After a restart: the running instances of no saved function become the pools of
    /// functions started on their own, served with what their labels recorded. Their
    /// variables and secrets were not kept, so no call starts another.
    pub(super) fn restore_started(&self, running: Vec<Instance>) {
        for inst in running {
            let req = StartRequest {
                function: inst.function.clone(),
                display_name: inst.call.display_name.clone(),
                image: inst.image.clone(),
                env: Default::default(),
                secrets: Default::default(),
                version: inst.call.version.clone(),
                namespace: inst.call.namespace.clone(),
                memory_mb: inst.limits.memory_mb,
                timeout_ms: inst.call.timeout_ms,
                // Not recorded: no call starts another of these (see above).
                process: Default::default(),
                credentials: None,
                class: inst.class,
            };
            let spec = match self.started_spec(&req) {
                Ok(s) => Arc::new(s),
                Err(e) => {
                    tracing::warn!(instance = %inst.id, error = %e, "an adopted instance's labels are not a valid spec");
                    continue;
                }
            };
            let key = spec.instance_key();
            let mut map = locked(&self.started);
            let pool = map.entry(spec.name.clone()).or_insert_with(|| {
                let served = self.served(spec.clone());
                Arc::new(Pool::new(Owner::Started { restartable: false }, served, State::default()))
            });
            pool.state().slots.push(Slot::of(inst, key));
        }
    }

    /// Drops the pools of functions started on their own that can no longer serve: no
    /// instance runs and none may be started.
    pub(super) fn forget_started(&self) {
        locked(&self.started).retain(|_, p| {
            let st = p.state();
            let gone =
                p.owner == (Owner::Started { restartable: false }) && st.slots.is_empty() && st.starting == 0;
            drop(st);
            if gone {
                p.changed.notify_waiters();
            }
            !gone
        });
    }
}

/// The slots of a pool that is being replaced.
fn take_slots(pool: &Pool) -> Vec<Slot> {
    std::mem::take(&mut pool.state().slots)
}
