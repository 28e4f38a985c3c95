//! The scheduler: places functions on the agents that joined, keeps `min_scale` warm
//! instances across them, moves a lost agent's share elsewhere, and picks the agent for
//! each call.
//!
//! The agents run the pools (warm instances, on-demand starts, queueing); the scheduler
//! decides which agents run a function and with which share of its scales, and keeps
//! that true: a reconcile pass runs every heartbeat interval and whenever something
//! changes.

pub mod agents;
mod breaker;
mod deploy;
mod error;
pub mod link;
pub mod logs;
mod nats;
mod pass;
pub mod placement;
pub mod queue;
pub mod timer;
mod view;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use fnrt_proto::agent::v1 as apb;
use tokio::sync::Notify;

use crate::model::{Deployed, Function, FunctionStatus, Namespace};
use crate::state::State;
use crate::Config;
use agents::Agent;
pub use error::ScheduleError;
use placement::{place, Candidate, Share};

/// The scheduler.
pub struct Scheduler {
    /// The configuration.
    pub cfg: Arc<Config>,
    /// The registry client code builds and the runtimes check use.
    pub registry: fnrt_registry::Registry,
    state: Arc<State>,
    agents: Mutex<HashMap<String, Agent>>,
    /// What the scheduler last put on (node, agent function name).
    applied: Mutex<HashMap<(String, String), apb::FunctionSpec>>,
    /// The gateway's calls in flight by (node, agent function name).
    in_flight: Arc<Mutex<HashMap<(String, String), u32>>>,
    /// The last delivery error of each trigger that has one.
    trigger_errors: Mutex<HashMap<String, String>>,
    /// Why each cron whose last run failed failed.
    cron_errors: Mutex<HashMap<String, String>>,
    /// Code functions whose image is being built.
    building: Mutex<std::collections::HashSet<String>>,
    /// Each agent's circuit breaker.
    breakers: breaker::Breakers,
    /// Agents whose last pass's calls still run (a pass leaves them out).
    busy: Arc<Mutex<HashSet<String>>>,
    /// The tasks of those calls, stopped with the control plane.
    calls: Mutex<Vec<tokio::task::AbortHandle>>,
    /// The JetStream context async invocations are queued on, while connected.
    queue: Mutex<Option<async_nats::jetstream::Context>>,
    kick: Notify,
    /// Reconcile passes run, and how long the last one took (µs).
    passes: std::sync::atomic::AtomicU64,
    last_pass_us: std::sync::atomic::AtomicU64,
    /// The control plane's metrics (the API's and the gateway's too: every server holds
    /// the scheduler).
    pub metrics: Arc<crate::metrics::Metrics>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The agent spec of function `f` for one share.
pub fn spec_of(f: &Function, ns: &Namespace, d: &Deployed, share: &Share) -> apb::FunctionSpec {
    fnrt_function::RawSpec {
        name: f.agent_name(),
        namespace: ns.name.clone(),
        version: d.version.clone(),
        image: d.image.clone(),
        event: d.event,
        memory_mb: d.memory_mb,
        timeout_ms: d.timeout_s * 1000,
        env: d.env.clone(),
        secrets: d.secrets.clone(),
        provisioned: share.provisioned,
        max_instances: share.max_instances,
        concurrency: 1,
        display_name: f.name.clone(),
        process: d.process.clone(),
        keep_image: d.accelerated,
        pull_credentials: credentials_for(ns, &d.image).map(|c| c.for_agents()),
        sandbox_class: d.sandbox_class.as_str().to_string(),
        ..Default::default()
    }
    .into()
}

/// The namespace's registry credentials when `image` is on their registry (agents get
/// no credentials they do not need).
pub fn credentials_for<'a>(ns: &'a Namespace, image: &str) -> Option<&'a crate::model::RegistryCredentials> {
    // Parsed only when there are credentials: this runs for every function every pass.
    let credentials = ns.registry_credentials.as_ref()?;
    let host = fnrt_registry::ImageRef::parse(image).ok()?.registry().to_string();
    Some(credentials).filter(|c| c.registry == host)
}

/// A call routed by the gateway: the agent's data plane; counts as in flight until dropped.
pub struct Route {
    /// The agent's data plane, `host:port`.
    pub dataplane: String,
    /// Whether it serves TLS.
    pub tls: bool,
    /// The function's name on the agent.
    pub name: String,
    key: (String, String),
    in_flight: Arc<Mutex<HashMap<(String, String), u32>>>,
}

impl Drop for Route {
    fn drop(&mut self) {
        let mut m = lock(&self.in_flight);
        if let Some(n) = m.get_mut(&self.key) {
            *n = n.saturating_sub(1);
        }
    }
}

impl Scheduler {
    /// A scheduler with no agents yet.
    pub fn new(cfg: Arc<Config>, state: Arc<State>, registry: fnrt_registry::Registry) -> Scheduler {
        Scheduler {
            cfg,
            registry,
            state,
            agents: Mutex::new(HashMap::new()),
            applied: Mutex::new(HashMap::new()),
            in_flight: Arc::new(Mutex::new(HashMap::new())),
            trigger_errors: Mutex::new(HashMap::new()),
            cron_errors: Mutex::new(HashMap::new()),
            building: Mutex::default(),
            queue: Mutex::default(),
            breakers: breaker::Breakers::default(),
            busy: Arc::default(),
            calls: Mutex::default(),
            kick: Notify::new(),
            passes: Default::default(),
            last_pass_us: Default::default(),
            metrics: Arc::default(),
        }
    }

    pub(crate) fn agents_mut(&self) -> MutexGuard<'_, HashMap<String, Agent>> {
        lock(&self.agents)
    }

    /// The agents, lost ones included.
    pub fn agents(&self) -> Vec<Agent> {
        let mut v: Vec<Agent> = lock(&self.agents).values().cloned().collect();
        v.sort_by(|a, b| a.node.cmp(&b.node));
        v
    }

    /// The last start failure agents report for function `name` (agent name), with the
    /// node it was on.
    pub fn start_failure(&self, name: &str) -> Option<String> {
        lock(&self.agents).values().filter(|a| !a.lost).find_map(|a| {
            let load = a.report.functions.iter().find(|l| l.name == name && !l.last_error.is_empty())?;
            Some(format!("on {}: {}", a.node, load.last_error))
        })
    }

    /// The agents not lost: marked by the leader's passes, or (on any replica) silent
    /// for longer than `lost_after_ms`.
    pub(crate) fn live(&self) -> Vec<Agent> {
        let lost_after = Duration::from_millis(u64::from(self.cfg.lost_after_ms));
        self.agents().into_iter().filter(|a| !a.lost && a.last_seen.elapsed() <= lost_after).collect()
    }

    /// Forgets what was put on every agent (leadership changed: what another leader put
    /// there meanwhile is not known here).
    pub(crate) fn forget_all_applied(&self) {
        lock(&self.applied).clear();
    }

    /// Asks for a reconcile pass now (the agents changed; the state's own changes are
    /// published by the state).
    pub(crate) fn kick(&self) {
        self.kick.notify_one();
    }

    /// Starts the deploy of function `id` (already marked pending) on a task of its own.
    pub fn deploy(self: &Arc<Self>, id: &str) {
        let me = self.clone();
        let id = id.to_string();
        tokio::spawn(async move { me.run_deploy(&id).await });
    }

    fn hosts(&self, a: &Agent, name: &str) -> bool {
        a.hosts(name) || lock(&self.applied).contains_key(&(a.node.clone(), name.to_string()))
    }

    fn view(&self, live: &[Agent]) -> view::View {
        view::View::of(live, lock(&self.applied).keys())
    }

    fn candidates(&self, live: &[Agent], name: &str, d: &Deployed) -> Vec<Candidate> {
        self.view(live).candidates(name, usize::MAX, &d.image, d.memory_mb, d.sandbox_class)
    }

    /// The sandbox classes the live agents offer (what a function or namespace may ask for).
    pub(crate) fn offered(&self) -> crate::sandbox::Offered {
        crate::sandbox::Offered::of(self.live().iter().map(Agent::classes))
    }

    /// Puts `spec` on agent `a`: a deploy where it is new, else an update when it changed.
    /// Puts `spec` on agent `a` (a deploy or an update); the agent's warnings.
    async fn apply(&self, a: &Agent, spec: apb::FunctionSpec) -> Result<Vec<String>, tonic::Status> {
        let key = (a.node.clone(), spec.name.clone());
        let known = self.hosts(a, &spec.name);
        if known && lock(&self.applied).get(&key) == Some(&spec) {
            return Ok(vec![]);
        }
        let link = &a.link;
        let result = if known { link.update(spec.clone()).await } else { link.deploy(spec.clone()).await };
        let result = match result {
            Err(s) if s.code() == tonic::Code::NotFound && known => link.deploy(spec.clone()).await,
            Err(s) if s.code() == tonic::Code::AlreadyExists => link.update(spec.clone()).await,
            other => other,
        };
        if result.is_ok() {
            lock(&self.applied).insert(key, spec);
        }
        result
    }

    /// Forgets what was put on `node`, so the next pass puts every spec there again: an
    /// agent registers when it starts, and a restarted one has only what it saved, not
    /// what it keeps in memory alone (its functions' registry credentials).
    pub(crate) fn forget_applied(&self, node: &str) {
        lock(&self.applied).retain(|(n, _), _| n != node);
    }

    /// Takes function `name` off agent `a`.
    async fn remove(&self, a: &Agent, name: &str) -> Result<(), tonic::Status> {
        match a.link.remove(name).await {
            Ok(_) => tracing::info!(node = %a.node, function = name, "function removed from agent"),
            Err(s) if s.code() == tonic::Code::NotFound => {}
            Err(s) => {
                tracing::warn!(node = %a.node, function = name, error = %s.message(), "cannot remove function");
                return Err(s);
            }
        }
        lock(&self.applied).remove(&(a.node.clone(), name.to_string()));
        Ok(())
    }

    /// One reconcile pass: every deployed function on the agents its placement says, with
    /// its share; what is no longer wanted removed.
    pub async fn reconcile(self: &Arc<Self>) {
        let started = std::time::Instant::now();
        agents::mark_lost(&mut self.agents_mut(), Duration::from_millis(u64::from(self.cfg.lost_after_ms)));
        let live = self.live();
        type Read = (Vec<(Function, Arc<Namespace>)>, HashSet<String>);
        let (functions, pending): Read = self.state.read(|d| {
            // Each namespace copied once, not once per function.
            let namespaces: HashMap<&str, Arc<Namespace>> =
                d.namespaces.iter().map(|(id, n)| (id.as_str(), Arc::new(n.clone()))).collect();
            let f = d
                .functions
                .values()
                .filter(|f| f.deployed.is_some())
                .filter(|f| !matches!(f.status, FunctionStatus::Pending | FunctionStatus::Deleting))
                .filter_map(|f| Some((f.clone(), namespaces.get(f.namespace_id.as_str())?.clone())))
                .collect();
            let p = d
                .functions
                .values()
                .filter(|f| f.status == crate::model::FunctionStatus::Pending)
                .map(Function::agent_name)
                .collect();
            (f, p)
        });
        let mut wanted: HashSet<(String, String)> = HashSet::new();
        let mut plan: HashMap<String, Vec<pass::Action>> = HashMap::new();
        let mut view = self.view(&live);
        for (f, ns) in &functions {
            let Some(d) = &f.deployed else { continue };
            let name = f.agent_name();
            let k = f.min_scale.max(1).min(f.max_scale.max(1)) as usize;
            let shares = match place(
                f.min_scale,
                f.max_scale,
                d.memory_mb,
                d.sandbox_class,
                &view.candidates(&name, k, &d.image, d.memory_mb, d.sandbox_class),
            ) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(function = %f.id, error = %e, "cannot place function");
                    for node in view.hosts(&name) {
                        wanted.insert((node.to_string(), name.clone()));
                    }
                    continue;
                }
            };
            view.reserve(&name, &shares, d.memory_mb);
            for share in shares {
                wanted.insert((share.node.clone(), name.clone()));
                let spec = spec_of(f, ns, d, &share);
                plan.entry(share.node.clone()).or_default().push(pass::Action::Apply(Box::new(spec)));
            }
        }
        self.plan_removals(&live, &pending, &wanted, &mut plan);
        let planned = started.elapsed();
        self.carry_out(&live, plan).await;
        let carried = started.elapsed();
        self.finish_deletes(&live).await;
        if started.elapsed() > Duration::from_secs(1) {
            tracing::warn!(
                functions = functions.len(),
                agents = live.len(),
                planned_ms = planned.as_millis() as u64,
                calls_ms = (carried - planned).as_millis() as u64,
                total_ms = started.elapsed().as_millis() as u64,
                "a reconcile pass took over a second"
            );
        }
    }

    /// Adds to `plan` the removal of every function of ours an agent runs (or was given)
    /// that is neither `wanted` there nor `pending`.
    fn plan_removals(
        &self,
        live: &[Agent],
        pending: &HashSet<String>,
        wanted: &HashSet<(String, String)>,
        plan: &mut HashMap<String, Vec<pass::Action>>,
    ) {
        // What the scheduler put on each node, read once (not once per agent).
        let mut put: HashMap<String, Vec<String>> = HashMap::new();
        for (node, name) in lock(&self.applied).keys() {
            put.entry(node.clone()).or_default().push(name.clone());
        }
        for a in live {
            let mut names: HashSet<String> = a.report.functions.iter().map(|f| f.name.clone()).collect();
            names.extend(put.remove(&a.node).unwrap_or_default());
            for name in names {
                // Functions deployed by an operator (not fn-<uuid>) are left alone.
                let ours = fnrt_function::naming::is_from_control_plane(&name);
                if ours && !pending.contains(&name) && !wanted.contains(&(a.node.clone(), name.clone())) {
                    plan.entry(a.node.clone()).or_default().push(pass::Action::Remove(name));
                }
            }
        }
    }

    /// Deletes the records of the functions being deleted that no live agent runs any
    /// more (a lost agent's are gone with it).
    async fn finish_deletes(&self, live: &[Agent]) {
        let deleting: Vec<Function> = self.state.read(|d| {
            d.functions.values().filter(|f| f.status == FunctionStatus::Deleting).cloned().collect()
        });
        for f in deleting {
            let name = f.agent_name();
            if live.iter().any(|a| self.hosts(a, &name)) {
                continue;
            }
            let id = f.id.clone();
            let done = self
                .state
                .write(|d| {
                    let still = d.functions.get(&id).is_some_and(|f| f.status == FunctionStatus::Deleting);
                    Ok((
                        if still { vec![crate::state::Change::DeleteFunction(id.clone())] } else { vec![] },
                        (),
                    ))
                })
                .await;
            match done {
                Ok(()) => tracing::info!(function = %id, "function deleted: no agent runs it"),
                Err(e) => tracing::warn!(function = %id, error = %e, "cannot delete the function's record"),
            }
        }
    }

    /// Runs reconcile passes until the process ends: after every change of the state,
    /// every change of the agents (a join, a lost agent) and every heartbeat interval.
    pub async fn run(self: Arc<Self>) {
        let every = Duration::from_millis(u64::from(self.cfg.heartbeat_interval_ms));
        let mut changes = self.state.subscribe();
        loop {
            let started = std::time::Instant::now();
            self.reconcile().await;
            let elapsed = started.elapsed();
            self.metrics.reconcile.observe(elapsed.as_secs_f64());
            let took = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
            self.last_pass_us.store(took, std::sync::atomic::Ordering::Relaxed);
            self.passes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tokio::select! {
                _ = changes.changed() => {}
                () = self.kick.notified() => {}
                () = tokio::time::sleep(every) => {}
            }
        }
    }

    /// Reconcile passes run by this replica, and how long the last one took (µs).
    pub fn passes(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.passes.load(Relaxed), self.last_pass_us.load(Relaxed))
    }

    /// The agent for a call to function `name`: the one with the most ready instances not
    /// busy with the gateway's calls; when none is free, the one with the fewest calls (its
    /// pool starts an instance).
    pub fn route(&self, name: &str) -> Option<Route> {
        let lost_after = Duration::from_millis(u64::from(self.cfg.lost_after_ms));
        // Under the locks, without copying the agents: this runs for every call.
        let agents = lock(&self.agents);
        let applied = lock(&self.applied);
        let mut in_flight = lock(&self.in_flight);
        let best = agents
            .values()
            .filter(|a| !a.lost && a.last_seen.elapsed() <= lost_after)
            .filter(|a| a.hosts(name) || applied.contains_key(&(a.node.clone(), name.to_string())))
            .map(|a| {
                let busy = in_flight.get(&(a.node.clone(), name.to_string())).copied().unwrap_or(0);
                let ready = a.report.functions.iter().find(|f| f.name == name).map_or(0, |f| f.ready);
                (i64::from(ready) - i64::from(busy), std::cmp::Reverse(busy), a)
            })
            .max_by(|x, y| (x.0, x.1).cmp(&(y.0, y.1)).then_with(|| x.2.node.cmp(&y.2.node)))?
            .2;
        let key = (best.node.clone(), name.to_string());
        *in_flight.entry(key.clone()).or_insert(0) += 1;
        Some(Route {
            dataplane: best.dataplane.clone(),
            tls: best.dataplane_tls,
            name: name.to_string(),
            key,
            in_flight: self.in_flight.clone(),
        })
    }

    /// Calls function `function_id` through an agent's Invoke with `payload` as the event
    /// and `source` as X-Scf-Trigger-Src; the function's status code.
    pub async fn invoke(
        &self,
        function_id: &str,
        payload: Vec<u8>,
        source: &str,
    ) -> Result<u32, ScheduleError> {
        self.call(function_id, payload, source).await.map(|r| r.status)
    }

    /// As [`Scheduler::invoke`]; the whole answer (status, body, request id, logs).
    pub async fn call(
        &self,
        function_id: &str,
        payload: Vec<u8>,
        source: &str,
    ) -> Result<apb::InvokeResponse, ScheduleError> {
        self.call_as(function_id, payload, source, "").await
    }

    /// As [`Scheduler::call`], with request id `request_id` (empty: the agent makes one).
    pub async fn call_as(
        &self,
        function_id: &str,
        payload: Vec<u8>,
        source: &str,
        request_id: &str,
    ) -> Result<apb::InvokeResponse, ScheduleError> {
        let name = fnrt_function::naming::on_agents(function_id);
        let route = self.route(&name).ok_or_else(|| ScheduleError::NotRunning(function_id.to_string()))?;
        let link = self.link_for(&route).ok_or_else(|| ScheduleError::AgentGone(function_id.to_string()))?;
        let req = apb::InvokeRequest {
            function: name,
            payload,
            trigger_source: source.to_string(),
            request_id: request_id.to_string(),
            ..Default::default()
        };
        link.invoke(req).await.map_err(|s| ScheduleError::Call {
            agent: route.dataplane.clone(),
            message: s.message().to_string(),
        })
    }

    /// The node whose data plane is at `address` (`host:port`), for checking its
    /// certificate.
    pub fn node_at(&self, address: &str) -> Option<String> {
        lock(&self.agents).values().find(|a| a.dataplane == address && !a.lost).map(|a| a.node.clone())
    }

    /// The link to the agent a route goes to.
    fn link_for(&self, route: &Route) -> Option<Arc<dyn link::AgentLink>> {
        lock(&self.agents).get(&route.key.0).map(|a| a.link.clone())
    }
}

#[cfg(test)]
mod tests;
