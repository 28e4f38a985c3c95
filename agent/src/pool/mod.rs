//! Pools: per function, the instances that serve its calls — every call goes through a
//! pool, whether the function was deployed or its instances were started with
//! StartInstance (see [`Owner`]).
//!
//! A deployed function's provisioned instances are started at deploy and kept (one that
//! dies is replaced); when no ready instance has room for a call, the call waits in a
//! bounded queue while on-demand instances start (no more cold starts than the waiting
//! calls need, never past max_instances); idle instances above the provisioned count stop
//! after the keep-alive, so a function without provisioned concurrency scales to zero. A
//! change of what instances are started with rolls: new instances first, then the old
//! retire once their calls are done.
//!
//! Pools drive instances through [`InstanceOps`], so that this logic has fast tests with
//! a fake (`tests.rs`) beside the integration tests on the real parts.

mod acquire;
mod deploy;
#[allow(clippy::module_inception)]
mod pool;
mod prewarm;
mod requests;
pub mod store;
mod tend;
#[cfg(test)]
mod tests;
mod unmanaged;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use hyper::header::{HeaderName, HeaderValue};

use crate::instance::InstanceOps;
use crate::metrics::{InstanceState, Metrics, Outcome};
use fnrt_function::Policy;

pub use acquire::AcquireError;
pub use fnrt_function::{FunctionSpec, Kind, RawSpec};
pub use pool::{Lease, Owner, Pool, Served};
use pool::{Slot, State};
use requests::{spec_of_started, start_request};

/// What ListFunctions shows of a pool.
#[derive(Clone, Debug)]
pub struct FunctionView {
    /// The spec.
    pub spec: Arc<FunctionSpec>,
    /// Instances ready for calls.
    pub ready: u32,
    /// Instances starting.
    pub starting: u32,
    /// Calls in flight.
    pub in_flight: u32,
    /// Calls waiting.
    pub queued: u32,
    /// Its instances' ids.
    pub instances: Vec<String>,
    /// The last failure to start an instance.
    pub last_error: String,
}

/// The node's pools.
pub struct Pools {
    ops: Arc<dyn InstanceOps>,
    metrics: Arc<Metrics>,
    policy: Policy,
    /// Deployed functions, by name.
    deployed: Mutex<HashMap<String, Arc<Pool>>>,
    /// Functions with instances started on their own, by name (a deployed one of the same
    /// name takes the calls).
    started: Mutex<HashMap<String, Arc<Pool>>>,
    store: store::Store,
    /// The agent's main runtime: starts run there, not on the data plane's thread.
    rt: tokio::runtime::Handle,
    /// Removed functions whose instances still finish calls.
    draining: Mutex<Vec<Arc<Pool>>>,
}

impl std::fmt::Debug for Pools {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pools").field("deployed", &self.map().len()).finish_non_exhaustive()
    }
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Pools {
    /// No functions yet; deployed ones are saved under `store_dir`. Call it on the agent's
    /// main runtime.
    pub fn new(
        ops: Arc<dyn InstanceOps>,
        metrics: Arc<Metrics>,
        policy: Policy,
        store_dir: std::path::PathBuf,
    ) -> Pools {
        Pools {
            ops,
            metrics,
            policy,
            store: store::Store::new(store_dir),
            rt: tokio::runtime::Handle::current(),
            deployed: Mutex::new(HashMap::new()),
            started: Mutex::new(HashMap::new()),
            draining: Mutex::new(Vec::new()),
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Pool>>> {
        locked(&self.deployed)
    }

    /// What the calls of `spec` share.
    fn served(&self, spec: Arc<FunctionSpec>) -> Served {
        let id = self.ops.identity();
        let mut headers = Vec::new();
        for (name, value) in [
            ("x-scf-memory", spec.memory_mb.to_string()),
            ("x-scf-timeout", spec.timeout.as_millis().to_string()),
            ("x-scf-version", spec.version.clone()),
            ("x-scf-name", spec.scf_name().to_string()),
            ("x-scf-namespace", spec.namespace.clone()),
            ("x-scf-region", id.region.clone()),
            ("x-scf-appid", id.appid.clone()),
            ("x-scf-uin", id.uin.clone()),
            // No credential service yet: present and empty, as SCF sends them without a role.
            ("x-scf-session-token", String::new()),
            ("x-scf-secret-id", String::new()),
            ("x-scf-secret-key", String::new()),
        ] {
            if let Ok(v) = HeaderValue::from_str(&value) {
                headers.push((HeaderName::from_static(name), v));
            }
        }
        let f = Metrics::f(&spec.name);
        let m = &self.metrics;
        Served {
            headers,
            warm_hits: m.warm_hits.get_or_create(&f).clone(),
            cold_starts: m.cold_starts.get_or_create(&f).clone(),
            queue_wait: m.queue_wait.get_or_create(&f).clone(),
            duration: m.call_duration.get_or_create(&f).clone(),
            ok: m.calls.get_or_create(&Outcome { function: spec.name.clone(), code: "200".into() }).clone(),
            key: spec.instance_key(),
            spec,
        }
    }

    /// The pool that takes calls to `name`: the deployed function's, else the one of its
    /// instances started on their own.
    pub fn get(&self, name: &str) -> Option<Arc<Pool>> {
        self.map().get(name).cloned().or_else(|| locked(&self.started).get(name).cloned())
    }

    /// The pool of a deployed function.
    pub fn deployed(&self, name: &str) -> Option<Arc<Pool>> {
        self.map().get(name).cloned()
    }

    /// The metrics calls are counted in.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The deployed functions, by name.
    pub fn list(&self) -> Vec<FunctionView> {
        let mut out: Vec<FunctionView> = self.map().values().map(|p| view(p)).collect();
        out.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
        out
    }

    /// Sets the instance gauges of the deployed functions (before a scrape).
    pub fn observe(&self) {
        for pool in self.map().values() {
            let spec = pool.spec();
            let st = pool.state();
            let busy = st.slots.iter().filter(|s| s.in_flight > 0).count() as i64;
            let idle = st.slots.len() as i64 - busy;
            for (state, n) in [("idle", idle), ("busy", busy), ("starting", i64::from(st.starting))] {
                let labels = InstanceState { function: spec.name.clone(), state: state.into() };
                self.metrics.instances.get_or_create(&labels).set(n);
            }
        }
    }
}

fn view(pool: &Pool) -> FunctionView {
    let spec = pool.spec();
    let st = pool.state();
    FunctionView {
        ready: st.live(),
        starting: st.starting,
        in_flight: st.slots.iter().map(|s| s.in_flight).sum(),
        queued: st.waiting,
        instances: st.slots.iter().map(|s| s.id.to_string()).collect(),
        last_error: match (&st.crash_loop, &st.last_error) {
            (Some(c), _) => c.why.clone(),
            (None, Some((_, e))) => e.clone(),
            (None, None) => String::new(),
        },
        spec,
    }
}
