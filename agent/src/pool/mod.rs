//! Pools: per deployed function, the instances that serve its calls. Provisioned
//! instances are started at deploy and kept (one that dies is replaced); when no ready
//! instance has room for a call, the call waits in a bounded queue while on-demand
//! instances start (no more cold starts than the waiting calls need, never past
//! max_instances); idle instances above the provisioned count stop after the keep-alive,
//! so a function without provisioned concurrency scales to zero. A change of what
//! instances are started with rolls: new instances first, then the old retire once their
//! calls are done.

mod requests;
pub mod store;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::header::{HeaderName, HeaderValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::Notify;

use crate::error::Error;
use crate::image::Progress;
use crate::instance::{Instance, Instances};
use crate::metrics::{InstanceState, Metrics, Outcome};
use fnrt_function::policy::{memory_advice, Policy};
pub use fnrt_function::{FunctionSpec, Kind, RawSpec};
use requests::{spec_of_started, start_request};

/// How often pools are looked after (replacements, idle instances, retired ones).
const TICK: Duration = Duration::from_millis(200);
/// Crash-loop back-off of provisioned instances: after `n` failures in a row (starts that
/// failed, instances that ended within [`STABLE`] of their start) the pool waits
/// `BACKOFF_FIRST * 2^(n-1)`, at most [`BACKOFF_MAX`], before it starts another.
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
/// See [`BACKOFF_FIRST`].
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// An instance that ran this long was not crash-looping: the failure count starts again.
const STABLE: Duration = Duration::from_secs(10);

/// How long provisioned starts wait after `failures` failures in a row.
fn backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    BACKOFF_FIRST.saturating_mul(1 << doublings).min(BACKOFF_MAX)
}

/// One instance of a pool.
#[derive(Debug)]
struct Slot {
    id: Arc<str>,
    address: SocketAddr,
    /// The address as a Host header.
    host: HeaderValue,
    key: u64,
    in_flight: u32,
    started: Instant,
    last_used: Instant,
    retired: bool,
}

#[derive(Debug, Default)]
struct State {
    slots: Vec<Slot>,
    starting: u32,
    waiting: u32,
    last_error: Option<(Instant, String)>,
    /// Provisioned instances that failed in a row, the last failure and when the pool may
    /// start provisioned instances again.
    crash_loop: Option<CrashLoop>,
    removed: bool,
    /// The deploy is starting the provisioned instances itself.
    deploying: bool,
}

/// A pool's provisioned instances failing in a row.
#[derive(Debug)]
struct CrashLoop {
    failures: u32,
    why: String,
    retry_at: Instant,
}

impl State {
    /// Counts one more failure in a row and backs off.
    fn failed(&mut self, now: Instant, why: String) {
        let failures = self.crash_loop.as_ref().map_or(0, |c| c.failures) + 1;
        let wait = backoff(failures);
        let why = format!(
            "{why}; provisioned instances start again in {} s ({failures} failures in a row)",
            wait.as_secs()
        );
        self.crash_loop = Some(CrashLoop { failures, why, retry_at: now + wait });
    }
}

/// What every call of one spec shares, made once per spec: the static SCF headers and
/// the function's metric handles (no label lookups per call).
#[derive(Debug)]
pub struct Served {
    /// The spec.
    pub spec: Arc<FunctionSpec>,
    /// Its instance key.
    pub key: u64,
    /// X-Scf-* headers but the request id.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Calls that found a ready instance.
    pub warm_hits: Counter,
    /// Calls that waited for a new instance.
    pub cold_starts: Counter,
    /// Time calls waited for an instance.
    pub queue_wait: Histogram,
    /// Time to the answer's headers.
    pub duration: Histogram,
    /// Calls answered 200.
    pub ok: Counter,
}

/// One function's pool.
#[derive(Debug)]
pub struct Pool {
    spec: Mutex<Arc<Served>>,
    state: Mutex<State>,
    changed: Notify,
}

impl Pool {
    /// The spec calls are served with now.
    pub fn spec(&self) -> Arc<FunctionSpec> {
        self.served().spec.clone()
    }

    /// The spec with what its calls share.
    pub fn served(&self) -> Arc<Served> {
        self.spec.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set_served(&self, served: Served) {
        *self.spec.lock().unwrap_or_else(|p| p.into_inner()) = Arc::new(served);
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A ready instance with room for a call: of the current spec if there is one, else
    /// of an older one not yet retired (during a rolling change). The busiest first, so
    /// the others go idle and can be reaped.
    fn try_lease(self: &Arc<Self>, key: u64, concurrency: u32, arrived: Instant) -> Option<Lease> {
        let mut st = self.state();
        let pick = |current: bool| {
            st.slots
                .iter()
                .enumerate()
                .filter(|(_, s)| !s.retired && s.in_flight < concurrency && (s.key == key) == current)
                .max_by_key(|(_, s)| (s.in_flight, s.last_used))
                .map(|(i, _)| i)
        };
        let i = pick(true).or_else(|| pick(false))?;
        let slot = &mut st.slots[i];
        slot.in_flight += 1;
        Some(Lease {
            pool: self.clone(),
            id: slot.id.clone(),
            address: slot.address,
            host: slot.host.clone(),
            cold: slot.started > arrived,
            recycle: false,
        })
    }
}

/// A call's hold on an instance, until dropped.
#[derive(Debug)]
pub struct Lease {
    pool: Arc<Pool>,
    /// The instance.
    pub id: Arc<str>,
    /// Its address.
    pub address: SocketAddr,
    /// Its address as a Host header.
    pub host: HeaderValue,
    /// Whether the instance was started for this call (or while it waited).
    pub cold: bool,
    recycle: bool,
}

impl Lease {
    /// The instance is not to take another call (it overran its timeout): it is stopped
    /// and, if provisioned, replaced.
    pub fn recycle(&mut self) {
        self.recycle = true;
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        {
            let mut st = self.pool.state();
            if let Some(s) = st.slots.iter_mut().find(|s| s.id == self.id) {
                s.in_flight = s.in_flight.saturating_sub(1);
                s.last_used = Instant::now();
                s.retired |= self.recycle;
            }
        }
        self.pool.changed.notify_waiters();
    }
}

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
}

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

/// The node's deployed functions.
#[derive(Debug)]
pub struct Pools {
    instances: Arc<Instances>,
    metrics: Arc<Metrics>,
    policy: Policy,
    pools: Mutex<HashMap<String, Arc<Pool>>>,
    store: store::Store,
    /// The agent's main runtime: starts run there, not on the data plane's thread.
    rt: tokio::runtime::Handle,
    /// Removed functions whose instances still finish calls.
    draining: Mutex<Vec<Arc<Pool>>>,
    /// What calls to functions that are not deployed but have instances started on their
    /// own share, by function, with the change number of the template it was made from.
    started: Mutex<HashMap<String, (u64, Arc<Served>)>>,
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
    /// No functions yet; deployed ones are saved under `store_dir`. Call it on the agent's
    /// main runtime.
    pub fn new(
        instances: Arc<Instances>,
        metrics: Arc<Metrics>,
        policy: Policy,
        store_dir: std::path::PathBuf,
    ) -> Pools {
        Pools {
            instances,
            metrics,
            policy,
            store: store::Store::new(store_dir),
            rt: tokio::runtime::Handle::current(),
            pools: Mutex::new(HashMap::new()),
            draining: Mutex::new(Vec::new()),
            started: Mutex::new(HashMap::new()),
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Pool>>> {
        self.pools.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What the calls of `spec` share.
    fn served(&self, spec: Arc<FunctionSpec>) -> Served {
        let id = self.instances.identity();
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

    /// Checks a StartInstance request as the spec its calls will be served with.
    pub fn check_started(&self, req: &crate::instance::StartRequest) -> Result<(), Error> {
        spec_of_started(req, &self.policy).map(drop)
    }

    /// What calls to `function` share when it is not deployed but has instances started on
    /// their own (StartInstance): made from how they were last started, so that such calls
    /// get the SCF headers and timeout a deployed function's calls get. None when the node
    /// knows no way to run it.
    pub fn started(&self, function: &str) -> Option<Arc<Served>> {
        let mut cache = self.started.lock().unwrap_or_else(|p| p.into_inner());
        let Some(crate::instance::Template { change: n, req: template, .. }) =
            self.instances.template(function)
        else {
            cache.remove(function);
            return None;
        };
        if let Some((seen, served)) = cache.get(function) {
            if *seen == n {
                return Some(served.clone());
            }
        }
        // The template was checked when its instance started; a failure here is a bug.
        let spec = match spec_of_started(&template, &self.policy) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(function, error = %e, "the start template of a function is not a valid spec");
                return None;
            }
        };
        let served = Arc::new(self.served(Arc::new(spec)));
        cache.insert(function.to_string(), (n, served.clone()));
        Some(served)
    }

    /// The pool of a deployed function.
    pub fn get(&self, name: &str) -> Option<Arc<Pool>> {
        self.map().get(name).cloned()
    }

    /// The metrics calls are counted in.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The node's instances.
    pub fn instances(&self) -> &Arc<Instances> {
        &self.instances
    }

    /// Deploys a function: pulls its image and starts its provisioned instances. On any
    /// failure nothing of it is left.
    pub async fn deploy(self: &Arc<Self>, raw: RawSpec) -> Result<(FunctionView, Vec<String>), Error> {
        let spec = Arc::new(raw.check(&self.policy)?);
        let pool = Arc::new(Pool {
            spec: Mutex::new(Arc::new(self.served(spec.clone()))),
            state: Mutex::new(State { deploying: true, ..State::default() }),
            changed: Notify::new(),
        });
        {
            let mut map = self.map();
            if map.contains_key(&spec.name) {
                return Err(Error::FunctionExists(spec.name.clone()));
            }
            map.insert(spec.name.clone(), pool.clone());
        }
        match self.prepare(&spec).await {
            Ok((slots, warnings)) => {
                if let Err(e) = self.store.save(&spec) {
                    tracing::warn!(function = %spec.name, error = %e, "saving the function: a restarted agent will not know it");
                }
                let mut st = pool.state();
                st.slots.extend(slots);
                st.deploying = false;
                drop(st);
                tracing::info!(function = %spec.name, provisioned = spec.provisioned, "function deployed");
                Ok((view(&pool), warnings))
            }
            Err(e) => {
                self.map().remove(&spec.name);
                Err(e)
            }
        }
    }

    /// Pulls a spec's image and starts its provisioned instances (all or none).
    async fn prepare(&self, spec: &FunctionSpec) -> Result<(Vec<Slot>, Vec<String>), Error> {
        let info = self.instances.pull_image(&spec.image, &Progress::none()).await?;
        let warnings: Vec<String> = memory_advice(info.size_bytes, spec.memory_mb).into_iter().collect();
        let slots = self.start_n(spec, spec.provisioned).await?;
        Ok((slots, warnings))
    }

    /// Starts `n` instances of `spec` at once; if one fails, the others are stopped.
    async fn start_n(&self, spec: &FunctionSpec, n: u32) -> Result<Vec<Slot>, Error> {
        let starts = (0..n).map(|_| self.instances.start(start_request(spec)));
        let results = futures_util::future::join_all(starts).await;
        let key = spec.instance_key();
        let mut slots = Vec::new();
        let mut failure = None;
        for r in results {
            match r {
                Ok((inst, _)) => slots.push(slot(inst, key)),
                Err(e) => failure = failure.or(Some(e)),
            }
        }
        if let Some(e) = failure {
            for s in slots {
                if let Err(stop) = self.instances.stop(&s.id).await {
                    tracing::warn!(instance = %s.id, error = %stop, "stopping after a failed start");
                }
            }
            return Err(e);
        }
        Ok(slots)
    }

    /// Changes a function. When what its instances are started with changes, instances of
    /// the new spec are started first (as many as are provisioned, at least one if it has
    /// instances); if they fail, the old spec stays and keeps serving.
    pub async fn update(self: &Arc<Self>, raw: RawSpec) -> Result<FunctionView, Error> {
        let spec = Arc::new(raw.check(&self.policy)?);
        let pool = self.get(&spec.name).ok_or_else(|| Error::FunctionNotFound(spec.name.clone()))?;
        let old = pool.spec();
        // Saved only once it serves: a restarted agent must not bring back a spec whose
        // instances failed to start while the old one kept serving.
        let save = |spec: &FunctionSpec| {
            if let Err(e) = self.store.save(spec) {
                tracing::warn!(function = %spec.name, error = %e, "saving the function: a restarted agent will not know this change");
            }
        };
        if old.instance_key() == spec.instance_key() {
            save(&spec);
            pool.set_served(self.served(spec));
            pool.changed.notify_waiters();
            return Ok(view(&pool));
        }
        if old.image != spec.image {
            self.instances.pull_image(&spec.image, &Progress::none()).await?;
        }
        let has_instances = pool.state().slots.iter().any(|s| !s.retired);
        let target = if has_instances { spec.provisioned.max(1) } else { spec.provisioned };
        let slots = self.start_n(&spec, target).await?;
        save(&spec);
        {
            let mut st = pool.state();
            for s in st.slots.iter_mut() {
                s.retired = true;
            }
            st.slots.extend(slots);
            // The new spec's instances started: the old one's failures are not theirs.
            st.crash_loop = None;
            pool.set_served(self.served(spec.clone()));
        }
        pool.changed.notify_waiters();
        tracing::info!(function = %spec.name, version = %spec.version, "function updated; old instances retire");
        Ok(view(&pool))
    }

    /// Removes a function: its instances stop once their calls finish.
    pub fn remove(&self, name: &str) -> Result<(), Error> {
        let pool = self.map().remove(name).ok_or_else(|| Error::FunctionNotFound(name.to_string()))?;
        self.store.remove(name)?;
        {
            let mut st = pool.state();
            st.removed = true;
            for s in st.slots.iter_mut() {
                s.retired = true;
            }
        }
        pool.changed.notify_waiters();
        self.draining.lock().unwrap_or_else(|p| p.into_inner()).push(pool);
        Ok(())
    }

    /// Serves the saved functions again (after a restart), with the running instances of
    /// each as its pool; the pools' care then starts what is missing.
    pub fn restore(&self) {
        for spec in self.store.load() {
            let spec = Arc::new(spec);
            let key = spec.instance_key();
            let slots: Vec<Slot> =
                self.instances.running_of(&spec.name).into_iter().map(|i| slot(i, key)).collect();
            tracing::info!(function = %spec.name, instances = slots.len(), "serving a saved function again");
            let pool = Arc::new(Pool {
                spec: Mutex::new(Arc::new(self.served(spec.clone()))),
                state: Mutex::new(State { slots, ..State::default() }),
                changed: Notify::new(),
            });
            self.map().insert(spec.name.clone(), pool);
        }
    }

    /// The deployed functions, by name.
    pub fn list(&self) -> Vec<FunctionView> {
        let mut out: Vec<FunctionView> = self.map().values().map(|p| view(p)).collect();
        out.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
        out
    }

    /// An instance for a call: a ready one with room, else a wait in the queue while one
    /// starts or frees up.
    pub async fn acquire(self: &Arc<Self>, pool: &Arc<Pool>) -> Result<Lease, AcquireError> {
        let arrived = Instant::now();
        let served = pool.served();
        let spec = &served.spec;
        let key = served.key;
        if let Some(lease) = pool.try_lease(key, spec.concurrency, arrived) {
            served.warm_hits.inc();
            served.queue_wait.observe(0.0);
            return Ok(lease);
        }
        {
            let mut st = pool.state();
            if st.removed {
                return Err(AcquireError::Removed(spec.name.clone()));
            }
            if st.waiting >= spec.queue_max {
                return Err(AcquireError::QueueFull { function: spec.name.clone(), max: spec.queue_max });
            }
            st.waiting += 1;
        }
        let _waiting = Waiting(pool);
        let deadline = tokio::time::Instant::from_std(arrived + spec.queue_timeout);
        loop {
            let notified = pool.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(lease) = pool.try_lease(key, spec.concurrency, arrived) {
                if lease.cold {
                    served.cold_starts.inc();
                } else {
                    served.warm_hits.inc();
                }
                served.queue_wait.observe(arrived.elapsed().as_secs_f64());
                return Ok(lease);
            }
            {
                let st = pool.state();
                if st.removed {
                    return Err(AcquireError::Removed(spec.name.clone()));
                }
                if let Some((at, reason)) = &st.last_error {
                    if *at >= arrived {
                        return Err(AcquireError::StartFailed {
                            function: spec.name.clone(),
                            reason: reason.clone(),
                        });
                    }
                }
            }
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

    /// Starts an instance when the waiting calls need more than the starting ones will
    /// take, and the pool is below max_instances.
    fn start_for_waiters(self: &Arc<Self>, pool: &Arc<Pool>, spec: &Arc<FunctionSpec>) {
        let mut st = pool.state();
        let live = st.slots.iter().filter(|s| !s.retired).count() as u32;
        if st.starting * spec.concurrency < st.waiting && live + st.starting < spec.max_instances {
            st.starting += 1;
            drop(st);
            self.spawn_start(pool.clone(), spec.clone());
        }
    }

    /// Starts one instance of `spec` for `pool` in the background (its `starting` count
    /// already raised).
    fn spawn_start(self: &Arc<Self>, pool: Arc<Pool>, spec: Arc<FunctionSpec>) {
        let this = self.clone();
        self.rt.spawn(async move {
            let result = this.instances.start(start_request(&spec)).await;
            let mut orphan = None;
            {
                let mut st = pool.state();
                st.starting = st.starting.saturating_sub(1);
                match result {
                    Ok((inst, _)) if st.removed => orphan = Some(inst.id),
                    Ok((inst, _)) => st.slots.push(slot(inst, spec.instance_key())),
                    Err(e) => {
                        let reason = crate::error::chain(&e);
                        tracing::warn!(function = %spec.name, %reason, "starting an instance failed");
                        st.failed(Instant::now(), format!("starting an instance failed: {reason}"));
                        st.last_error = Some((Instant::now(), reason));
                    }
                }
            }
            pool.changed.notify_waiters();
            if let Some(id) = orphan {
                this.stop_instance(&id).await;
            }
        });
    }

    async fn stop_instance(&self, id: &str) {
        match self.instances.stop(id).await {
            Ok(()) | Err(Error::InstanceNotFound(_)) => {}
            Err(e) => tracing::warn!(instance = id, error = %e, "stopping a pool's instance"),
        }
    }

    /// Looks after the pools until `shutdown`: drops instances that ended, stops retired
    /// and idle ones, starts provisioned ones that are missing.
    pub async fn maintain(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(TICK) => {}
                _ = shutdown.changed() => return,
            }
            let mut pools: Vec<Arc<Pool>> = self.map().values().cloned().collect();
            pools.extend(self.draining.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned());
            for pool in pools {
                self.tend(&pool).await;
            }
            self.draining.lock().unwrap_or_else(|p| p.into_inner()).retain(|p| {
                let st = p.state();
                !(st.slots.is_empty() && st.starting == 0)
            });
        }
    }

    async fn tend(self: &Arc<Self>, pool: &Arc<Pool>) {
        let spec = pool.spec();
        let key = spec.instance_key();
        let now = Instant::now();
        let (to_stop, to_start) = {
            let mut st = pool.state();
            // Instances that ended on their own (crash, OOM kill) are gone from the node; one
            // that ended soon after its start counts towards the crash-loop back-off.
            let mut short_lived = Vec::new();
            st.slots.retain(|s| {
                let live = self.instances.is_live(&s.id);
                if !live && !s.retired && now.duration_since(s.started) < STABLE {
                    short_lived.push((s.id.clone(), now.duration_since(s.started)));
                }
                live
            });
            for (id, lived) in short_lived {
                let reason = self.instances.ended_reason(&id).unwrap_or_else(|| "it ended".into());
                tracing::warn!(function = %spec.name, instance = %id, %reason, "instance ended soon after its start");
                st.failed(
                    now,
                    format!("instance {id} ended {} ms after its start: {reason}", lived.as_millis()),
                );
            }
            if st.crash_loop.is_some()
                && st
                    .slots
                    .iter()
                    .any(|s| !s.retired && s.key == key && now.duration_since(s.started) >= STABLE)
            {
                st.crash_loop = None;
            }
            // Idle ones above the provisioned count, after the keep-alive, oldest idle first.
            let mut current = st.slots.iter().filter(|s| !s.retired && s.key == key).count() as u32;
            let mut idle: Vec<usize> = (0..st.slots.len())
                .filter(|&i| {
                    let s = &st.slots[i];
                    !s.retired && s.in_flight == 0 && now.duration_since(s.last_used) >= spec.keep_alive
                })
                .collect();
            idle.sort_by_key(|&i| st.slots[i].last_used);
            for i in idle {
                let is_current = st.slots[i].key == key;
                if is_current && current <= spec.provisioned {
                    continue;
                }
                st.slots[i].retired = true;
                if is_current {
                    current -= 1;
                }
            }
            let mut stop = Vec::new();
            st.slots.retain(|s| {
                let done = s.retired && s.in_flight == 0;
                if done {
                    stop.push(s.id.to_string());
                }
                !done
            });
            let backing_off = st.crash_loop.as_ref().is_some_and(|c| now < c.retry_at);
            let mut start = 0;
            if !st.removed && !st.deploying && !backing_off {
                let live = st.slots.iter().filter(|s| !s.retired).count() as u32;
                let missing = spec.provisioned.saturating_sub(current + st.starting);
                start = missing.min(spec.max_instances.saturating_sub(live + st.starting));
                st.starting += start;
            }
            (stop, start)
        };
        for _ in 0..to_start {
            self.spawn_start(pool.clone(), spec.clone());
        }
        for id in to_stop {
            self.stop_instance(&id).await;
        }
    }

    /// Sets the instance gauges (before a scrape).
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

fn slot(inst: Instance, key: u64) -> Slot {
    let now = Instant::now();
    Slot {
        id: inst.id.into(),
        host: HeaderValue::try_from(inst.address.to_string())
            .unwrap_or(HeaderValue::from_static("localhost")),
        address: inst.address,
        key,
        in_flight: 0,
        started: now,
        last_used: now,
        retired: false,
    }
}

fn view(pool: &Pool) -> FunctionView {
    let spec = pool.spec();
    let st = pool.state();
    FunctionView {
        ready: st.slots.iter().filter(|s| !s.retired).count() as u32,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_loop_back_off_doubles_up_to_a_minute() {
        let waits: Vec<u64> = (1..=9).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(backoff(u32::MAX), BACKOFF_MAX);
        let mut st = State::default();
        let now = Instant::now();
        st.failed(now, "instance x ended 300 ms after its start: exited with status 7".into());
        st.failed(now, "instance y ended 310 ms after its start: exited with status 7".into());
        let c = st.crash_loop.as_ref().map(|c| (c.failures, c.retry_at - now, c.why.clone()));
        assert_eq!(
            c,
            Some((
                2,
                Duration::from_secs(2),
                "instance y ended 310 ms after its start: exited with status 7; provisioned instances start again in 2 s (2 failures in a row)".into()
            ))
        );
    }
}
