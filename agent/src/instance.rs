//! The node's instances: starting one (image, network, container, readiness), stopping
//! one, listing them, and picking one for a call.
//!
//! The table in memory is rebuilt from containerd's labels when the agent starts; a lock
//! is held only to read or change the table, never across a containerd or CNI call.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;

use crate::containerd::Containerd;
use crate::env::{Identity, Secrets};
use crate::error::Error;
use crate::events::{self, TaskEvent};
use crate::health::{self, FUNCTION_PORT};
use crate::image::{CachedImage, ImageError, ImageInfo, ImageRef, ImageStore, Progress};
use crate::logs::Logs;
use crate::network::Network;
use crate::runtime::{labels, NewInstance, Runtime};
use crate::stats::Usage;
use fnrt_function::policy::{memory_advice, Limits, Policy};

/// One instance as the agent knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instance {
    /// Unique id, `<function>-<8 hex>`.
    pub id: String,
    /// The function it serves.
    pub function: String,
    /// Its image reference.
    pub image: String,
    /// Where it listens.
    pub address: SocketAddr,
    /// Its task state ("running", ...).
    pub state: String,
    /// Its init process on the node.
    pub pid: u32,
    /// When it was started.
    pub created_at: SystemTime,
    /// Its memory, CPU and pids limits.
    pub limits: Limits,
    /// What it uses, as of the last listing.
    pub usage: Usage,
    /// Why it ended ("" while it runs).
    pub reason: String,
}

/// How many ended instances ListInstances shows, and for how long.
const ENDED_MAX: usize = 100;
const ENDED_KEPT: Duration = Duration::from_secs(3600);

/// A request to start an instance, checked.
#[derive(Clone, Debug)]
pub struct StartRequest {
    /// Function name, validated by [`validate_function_name`].
    pub function: String,
    /// The name the instance sees as SCF_FUNCTIONNAME; `function` when empty.
    pub display_name: String,
    /// Image reference.
    pub image: String,
    /// The function's variables.
    pub env: BTreeMap<String, String>,
    /// Its secret variables (never logged).
    pub secrets: Secrets,
    /// Its version ("$LATEST" when empty).
    pub version: String,
    /// Its namespace ("default" when empty).
    pub namespace: String,
    /// Memory in MB; 0 for the default.
    pub memory_mb: u32,
    /// Longest a call may take, in ms; 0 for the default (3000). Used by the data plane
    /// for calls to instances started on their own.
    pub timeout_ms: u32,
}

/// Checks a function name (see [`fnrt_function::naming::check`]).
pub fn validate_function_name(name: &str) -> Result<(), Error> {
    fnrt_function::naming::check("function name", name)
        .map_err(|e| Error::InvalidArgument { field: "function", reason: e.to_string() })
}

/// Owns the node's instances.
#[derive(Debug)]
pub struct Instances {
    images: ImageStore,
    network: Network,
    runtime: Runtime,
    health_timeout: Duration,
    cache_budget: u64,
    policy: Policy,
    identity: Identity,
    logs: Arc<Logs>,
    /// One empty file per instance from before its first resource is made until the last
    /// is removed: what a crashed agent left half made is found by these.
    marks: std::path::PathBuf,
    metrics: Arc<crate::metrics::Metrics>,
    /// The agent's main runtime: cold starts run there, not on the data plane's thread.
    rt: tokio::runtime::Handle,
    table: Mutex<HashMap<String, Instance>>,
    /// Instances that ended on their own, newest last, for ListInstances.
    ended: Mutex<VecDeque<(SystemTime, Instance)>>,
    /// Instances whose cgroup reported an OOM kill, until their exit arrives.
    oom_seen: Mutex<HashSet<String>>,
    /// How each function's instances were last started, for the cold start of the next
    /// one when a call finds none running (after a crash or an OOM kill). Dropped when the
    /// operator stops a function's last instance. In memory only (it holds secrets).
    templates: Mutex<HashMap<String, Template>>,
    /// Counts template changes (each start records one): the data plane's view of a
    /// template is made again when its number changes.
    template_changes: AtomicU64,
    /// One cold start at a time per function: calls that find no instance wait for it.
    cold_starts: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Instances being started: their exit, if it comes before they listen, ends the start.
    exits_at_start: Mutex<HashMap<String, tokio::sync::oneshot::Sender<(u32, bool)>>>,
    /// Images that starts in flight use (reference → count): not to be evicted.
    starting: Mutex<HashMap<String, usize>>,
    next: AtomicUsize,
}

/// How a function's instances were last started.
#[derive(Clone, Debug)]
pub struct Template {
    /// Its change number (see `Instances::template_changes`).
    pub change: u64,
    /// The request.
    pub req: StartRequest,
    /// Whether another instance may be started from it: not when it was rebuilt from an
    /// adopted instance's labels after a restart (its variables and secrets are not kept).
    pub restartable: bool,
}

/// An image of the node cache and the instances that use it.
#[derive(Clone, Debug)]
pub struct NodeImage {
    /// The image.
    pub image: CachedImage,
    /// Ids of the instances started from it.
    pub used_by: Vec<String>,
}

/// Marks an image as in use by a start in flight, until dropped.
struct Starting<'a> {
    map: &'a Mutex<HashMap<String, usize>>,
    name: String,
}

impl Drop for Starting<'_> {
    fn drop(&mut self) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.name) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.name);
            }
        }
    }
}

impl Instances {
    /// The instance owner over the given parts; call it on the agent's main runtime.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        images: ImageStore,
        network: Network,
        runtime: Runtime,
        health_timeout: Duration,
        cache_budget: u64,
        policy: Policy,
        identity: Identity,
        logs: Arc<Logs>,
        marks: std::path::PathBuf,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Instances {
        Instances {
            rt: tokio::runtime::Handle::current(),
            metrics,
            marks,
            images,
            network,
            runtime,
            health_timeout,
            cache_budget,
            policy,
            identity,
            logs,
            table: Mutex::new(HashMap::new()),
            ended: Mutex::new(VecDeque::new()),
            oom_seen: Mutex::new(HashSet::new()),
            exits_at_start: Mutex::new(HashMap::new()),
            templates: Mutex::new(HashMap::new()),
            template_changes: AtomicU64::new(0),
            cold_starts: Mutex::new(HashMap::new()),
            starting: Mutex::new(HashMap::new()),
            next: AtomicUsize::new(0),
        }
    }

    fn mark_starting(&self, name: &str) -> Starting<'_> {
        *self.starting.lock().unwrap_or_else(|p| p.into_inner()).entry(name.to_string()).or_default() += 1;
        Starting { map: &self.starting, name: name.to_string() }
    }

    /// The images instances use or are being started from.
    fn images_in_use(&self) -> HashSet<String> {
        let mut set: HashSet<String> = self.lock().values().map(|i| i.image.clone()).collect();
        set.extend(self.starting.lock().unwrap_or_else(|p| p.into_inner()).keys().cloned());
        set
    }

    /// Pulls an image into the node cache, then evicts what no longer fits the budget.
    pub async fn pull_image(&self, reference: &str, progress: &Progress) -> Result<ImageInfo, Error> {
        let info = self.images.pull(reference, progress).await?;
        self.evict(&info.reference).await;
        Ok(info)
    }

    /// Brings the cache back under its budget, sparing `keep`. A failure here does not
    /// undo the pull that called it: the next pull tries again.
    async fn evict(&self, keep: &str) {
        if let Err(e) = self.images.evict(self.cache_budget, &self.images_in_use(), keep).await {
            tracing::warn!(error = %e, "evicting images from the node cache");
        }
    }

    /// Fills the node cache with an image ahead of use; a pinned one is never evicted.
    pub async fn prefetch(
        &self,
        reference: &str,
        pin: bool,
        progress: &Progress,
    ) -> Result<ImageInfo, Error> {
        let info = self.images.pull(reference, progress).await?;
        self.images.pin(&info.reference, pin).await?;
        self.evict(&info.reference).await;
        Ok(info)
    }

    /// The node cache: its images with their users, the bytes they take and the budget.
    pub async fn cached_images(&self) -> Result<(Vec<NodeImage>, u64, u64), Error> {
        let images = self.images.cached().await?;
        let total = crate::image::cache_bytes(&images);
        let table = self.lock().clone();
        let out = images
            .into_iter()
            .map(|image| {
                let mut used_by: Vec<String> = table
                    .values()
                    .filter(|i| i.image == image.info.reference)
                    .map(|i| i.id.clone())
                    .collect();
                used_by.sort();
                NodeImage { image, used_by }
            })
            .collect();
        Ok((out, total, self.cache_budget))
    }

    /// Removes an image from the node; refused while instances use it.
    pub async fn remove_image(&self, reference: &str) -> Result<(), Error> {
        let name = ImageRef::parse(reference).map_err(ImageError::from)?.name();
        let mut users: Vec<String> =
            self.lock().values().filter(|i| i.image == name).map(|i| i.id.clone()).collect();
        if users.is_empty() && self.images_in_use().contains(&name) {
            users.push("(one being started)".into());
        }
        if !users.is_empty() {
            users.sort();
            return Err(Error::ImageInUse { reference: name, instances: users });
        }
        self.images.remove(&name).await?;
        Ok(())
    }

    /// Who the node runs functions for.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The instances' logs.
    pub fn logs(&self) -> &Arc<Logs> {
        &self.logs
    }

    /// The image store the instances come from.
    pub fn images(&self) -> &ImageStore {
        &self.images
    }

    /// The limits an instance was started with, from its labels; the default policy's for
    /// what a label does not say.
    fn recorded_limits(&self, l: &HashMap<String, String>) -> Limits {
        let default = self.policy.limits(0).unwrap_or(Limits { memory_mb: 128, cpu_millis: 100, pids: 1024 });
        let get = |k: &str, d: u32| l.get(k).and_then(|v| v.parse().ok()).unwrap_or(d);
        Limits {
            memory_mb: get(labels::MEMORY_MB, default.memory_mb),
            cpu_millis: get(labels::CPU_MILLIS, default.cpu_millis),
            pids: get(labels::PIDS, default.pids),
        }
    }

    /// Rebuilds the table from containerd: running instances are adopted (and their
    /// output read again); the rest (no task, or a task that is not running) are removed
    /// with all they own, and so is any /tmp or FIFO no adopted instance owns.
    /// Instances marked but not running (a start or stop cut short by a crash) lose
    /// their network namespace, address, cgroup and root filesystem the same way.
    pub async fn adopt(&self) -> Result<(), Error> {
        tokio::fs::create_dir_all(&self.marks).await.map_err(|source| self.mark_error(source))?;
        self.adopt_containers().await?;
        let keep: HashSet<String> = self.lock().keys().cloned().collect();
        let mut orphans = self.marked().await;
        // Addresses of instances the marks do not know (made before them); their network
        // namespaces go with them.
        for id in self.network.holders() {
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
        self.runtime.sweep_snapshots().await?;
        self.runtime.sweep_scratch(&keep).await;
        self.logs.sweep_fifos(&keep).await;
        Ok(())
    }

    fn mark_error(&self, source: std::io::Error) -> Error {
        Error::Io { what: "instance marks", path: self.marks.display().to_string(), source }
    }

    async fn mark(&self, id: &str) -> Result<(), Error> {
        tokio::fs::write(self.marks.join(id), b"").await.map_err(|e| self.mark_error(e))
    }

    async fn marked(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Ok(mut dir) = tokio::fs::read_dir(&self.marks).await {
            while let Ok(Some(e)) = dir.next_entry().await {
                out.push(e.file_name().to_string_lossy().into_owned());
            }
        }
        out
    }

    async fn adopt_containers(&self) -> Result<(), Error> {
        for rec in self.runtime.list().await? {
            let address = rec.labels.get(labels::ADDRESS).and_then(|a| a.parse().ok());
            match (rec.state, address) {
                (Some("running"), Some(address)) => {
                    let inst = Instance {
                        function: rec.labels.get(labels::FUNCTION).cloned().unwrap_or_default(),
                        image: rec.labels.get(labels::IMAGE).cloned().unwrap_or_default(),
                        address,
                        state: "running".into(),
                        pid: rec.pid,
                        created_at: rec.created_at.unwrap_or(SystemTime::UNIX_EPOCH),
                        limits: self.recorded_limits(&rec.labels),
                        usage: Usage::default(),
                        reason: String::new(),
                        id: rec.id.clone(),
                    };
                    if let Err(e) = self.logs.attach(&inst.id, &inst.function).await {
                        tracing::warn!(instance = %rec.id, error = %e, "its output cannot be read");
                    }
                    tracing::info!(instance = %rec.id, "re-adopted running instance");
                    if self.template(&inst.function).is_none() {
                        // Calls get the headers and timeout it was started with; its
                        // variables and secrets were not kept, so none is started from it.
                        let label = |k: &str| rec.labels.get(k).cloned().unwrap_or_default();
                        let req = StartRequest {
                            function: inst.function.clone(),
                            display_name: label(labels::DISPLAY_NAME),
                            image: inst.image.clone(),
                            env: BTreeMap::new(),
                            secrets: crate::env::Secrets::default(),
                            version: label(labels::VERSION),
                            namespace: label(labels::NAMESPACE),
                            memory_mb: inst.limits.memory_mb,
                            timeout_ms: label(labels::TIMEOUT_MS).parse().unwrap_or(0),
                        };
                        self.set_template(req, false);
                    }
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

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instance>> {
        // A panic while holding this lock cannot leave the map half-changed.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts an instance and returns once it accepts connections on :9000, with a warning
    /// when its memory is below what its image's size calls for. On any failure nothing of
    /// it is left.
    pub async fn start(&self, req: StartRequest) -> Result<(Instance, Option<String>), Error> {
        validate_function_name(&req.function)?;
        let template = req.clone();
        let limits = self
            .policy
            .limits(req.memory_mb)
            .map_err(|e| Error::InvalidArgument { field: "memory_mb", reason: e.to_string() })?;
        let version = if req.version.is_empty() { "$LATEST" } else { &req.version };
        let namespace = if req.namespace.is_empty() { "default" } else { &req.namespace };
        let shown = if req.display_name.is_empty() { &req.function } else { &req.display_name };
        let env = crate::env::build(&self.identity, shown, version, namespace, &req.env, &req.secrets)
            .map_err(|e| Error::InvalidArgument { field: "env", reason: e.to_string() })?;
        let name = ImageRef::parse(&req.image).map_err(ImageError::from)?.name();
        let _starting = self.mark_starting(&name);
        let image = match self.images.runnable(&name).await {
            Ok(img) => {
                self.metrics.image_cache_hits.inc();
                img
            }
            Err(ImageError::NotPulled { .. }) => {
                self.metrics.image_cache_misses.inc();
                self.pull_image(&name, &Progress::none()).await?;
                self.images.runnable(&name).await?
            }
            Err(e) => return Err(e.into()),
        };
        // Recording the use is off the cold-start path.
        let images = self.images.clone();
        tokio::spawn(async move {
            if let Err(e) = images.touch(&name).await {
                tracing::warn!(image = %name, error = %e, "recording the image's last use");
            }
        });
        let id = format!("{}-{:08x}", req.function, rand::random::<u32>());
        self.mark(&id).await?;
        let attached = match self.network.attach(&id).await {
            Ok(a) => a,
            Err(e) => {
                if let Err(cleanup) = self.teardown(&id).await {
                    tracing::warn!(instance = %id, error = %cleanup, "cleanup after a failed start");
                }
                return Err(e.into());
            }
        };
        let address = SocketAddr::new(attached.ip, FUNCTION_PORT);
        let address_text = address.to_string();
        let io = match self.logs.attach(&id, &req.function).await {
            Ok(io) => io,
            Err(e) => {
                if let Err(cleanup) = self.teardown(&id).await {
                    tracing::warn!(instance = %id, error = %cleanup, "cleanup after a failed start");
                }
                return Err(e.into());
            }
        };
        let more_labels = [
            (labels::VERSION, version.to_string()),
            (labels::NAMESPACE, namespace.to_string()),
            (labels::DISPLAY_NAME, req.display_name.clone()),
            (labels::TIMEOUT_MS, req.timeout_ms.to_string()),
        ];
        let new = NewInstance {
            id: &id,
            function: &req.function,
            image: &image,
            netns: &attached.netns,
            address: &address_text,
            env: &env,
            limits: &limits,
            io: &io,
            more_labels: &more_labels,
        };
        let secret_values: Vec<&str> = req.secrets.0.values().map(String::as_str).collect();
        let pid = match self.launch(&new, address, &secret_values).await {
            Ok(pid) => pid,
            Err(e) => {
                if let Err(cleanup) = self.teardown(&id).await {
                    tracing::warn!(instance = %id, error = %cleanup, "cleanup after a failed start");
                }
                return Err(e);
            }
        };
        let inst = Instance {
            id: id.clone(),
            function: req.function,
            image: image.info.reference,
            address,
            state: "running".into(),
            pid,
            created_at: SystemTime::now(),
            limits,
            usage: Usage::default(),
            reason: String::new(),
        };
        self.lock().insert(id, inst.clone());
        self.set_template(template, true);
        let advice = memory_advice(image.info.size_bytes, limits.memory_mb);
        if let Some(a) = &advice {
            tracing::warn!(instance = %inst.id, image = %inst.image, "{a}");
        }
        Ok((inst, advice))
    }

    /// Starts the instance's task and waits until it listens on :9000, or until it exits
    /// (a function that crashes at start fails its start at once, with its last output).
    async fn launch(
        &self,
        new: &NewInstance<'_>,
        address: SocketAddr,
        secrets: &[&str],
    ) -> Result<u32, Error> {
        let (tx, exited) = tokio::sync::oneshot::channel();
        self.exits_at_start.lock().unwrap_or_else(|p| p.into_inner()).insert(new.id.to_string(), tx);
        let result = async {
            let pid = self.runtime.start(new).await?;
            tokio::select! {
                waited = health::wait_listening(address, self.health_timeout) => {
                    let waited = waited?;
                    tracing::info!(instance = %new.id, %address, ready_ms = waited.as_millis() as u64, "instance ready");
                    Ok(pid)
                }
                Ok((status, oom)) = exited => Err(self.exited_at_start(new, status, oom, secrets).await),
            }
        }
        .await;
        self.exits_at_start.lock().unwrap_or_else(|p| p.into_inner()).remove(new.id);
        result
    }

    async fn exited_at_start(
        &self,
        new: &NewInstance<'_>,
        status: u32,
        oom: bool,
        secrets: &[&str],
    ) -> Error {
        let (_, reason) = events::reason(Some(status), oom, new.limits.memory_mb);
        // What it printed last usually says why; the pump reads it a moment after the exit.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let filter = crate::logs::Filter { instance: Some(new.id.to_string()), ..Default::default() };
        let logs = self.logs.clone();
        let lines = tokio::task::spawn_blocking(move || logs.read(&filter)).await.unwrap_or_default();
        // The agent's answers never carry a secret, even one the function printed.
        let redact = |line: &str| {
            secrets.iter().filter(|s| !s.is_empty()).fold(line.to_string(), |l, s| l.replace(s, "<redacted>"))
        };
        let last: Vec<String> = lines.iter().rev().take(5).rev().map(|l| redact(&l.line)).collect();
        tracing::warn!(instance = %new.id, %reason, "instance ended before listening on :9000");
        Error::ExitedAtStart { reason, output: last }
    }

    /// Stops an instance and removes all it owned.
    /// Stops an instance and removes all it owned. Once the operator has stopped a
    /// function's last instance, calls no longer start one.
    pub async fn stop(&self, id: &str) -> Result<(), Error> {
        let removed = {
            let mut table = self.lock();
            let removed = table.remove(id);
            if let Some(inst) = &removed {
                if !table.values().any(|i| i.function == inst.function) {
                    self.templates.lock().unwrap_or_else(|p| p.into_inner()).remove(&inst.function);
                }
            }
            removed
        };
        if removed.is_none() && !self.runtime.list().await?.iter().any(|r| r.id == id) {
            return Err(Error::InstanceNotFound(id.to_string()));
        }
        self.teardown(id).await
    }

    async fn teardown(&self, id: &str) -> Result<(), Error> {
        let removed = self.runtime.remove(id).await;
        // After the task is gone: what it printed last is still read.
        self.logs.detach(id).await;
        let detached = self.network.detach(id).await;
        removed?;
        detached?;
        match tokio::fs::remove_file(self.marks.join(id)).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.mark_error(e)),
        }
    }

    /// The instances, with their task states read from containerd.
    pub async fn list(&self, function: Option<&str>) -> Result<Vec<Instance>, Error> {
        let records = self.runtime.list().await?;
        let table = self.lock().clone();
        let mut out: Vec<Instance> = records
            .into_iter()
            .filter_map(|r| {
                let mut inst = table.get(&r.id)?.clone();
                inst.state = r.state.unwrap_or("created").to_string();
                inst.pid = r.pid;
                Some(inst)
            })
            .filter(|i| function.is_none_or(|f| i.function == f))
            .collect();
        // Usage of the live ones only: an ended instance's cgroup is gone.
        let cgroups: Vec<String> = out.iter().map(|i| self.runtime.cgroup_path(&i.id)).collect();
        let usage =
            tokio::task::spawn_blocking(move || cgroups.iter().map(|c| crate::stats::read(c)).collect())
                .await
                .unwrap_or_else(|_| Vec::new());
        for (inst, u) in out.iter_mut().zip(usage) {
            inst.usage = u;
        }
        let ended: Vec<Instance> =
            self.ended.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|(_, i)| i.clone()).collect();
        out.extend(ended.into_iter().filter(|i| function.is_none_or(|f| i.function == f)));
        out.sort_by(|a, b| a.created_at.cmp(&b.created_at).then_with(|| a.id.cmp(&b.id)));
        Ok(out)
    }

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
        if !oom {
            // The OOM event may have been missed; the cgroup still counts the kills.
            let cgroup = self.runtime.cgroup_path(&container);
            let killed = tokio::task::spawn_blocking(move || crate::stats::oom_kills(&cgroup)).await;
            oom = killed.unwrap_or(0) > 0;
        }
        self.record_end(inst, status, oom, at);
        let this = self.clone();
        tokio::spawn(async move {
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

    /// Lists an ended instance (with its state and reason set) for ListInstances.
    fn push_ended(&self, at: SystemTime, inst: Instance) {
        let mut ended = self.ended.lock().unwrap_or_else(|p| p.into_inner());
        ended.push_back((at, inst));
        let horizon = SystemTime::now() - ENDED_KEPT;
        while ended.len() > ENDED_MAX || ended.front().is_some_and(|(t, _)| *t < horizon) {
            ended.pop_front();
        }
    }

    /// After a gap in the events: instances whose task no longer runs are ended now.
    async fn reconcile(self: &Arc<Self>) {
        let records = match self.runtime.list().await {
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

    /// An instance of `function` for a call: a running one, else (when the function ran
    /// here before and its instances ended on their own) a new one, started like the last.
    /// `Ok(None)` when the node knows no way to run the function.
    pub async fn pick_or_start(self: &Arc<Self>, function: &str) -> Result<Option<Instance>, Error> {
        if let Some(i) = self.pick(function) {
            return Ok(Some(i));
        }
        if !self.template(function).is_some_and(|t| t.restartable) {
            return Ok(None);
        }
        let gate = self
            .cold_starts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(function.to_string())
            .or_default()
            .clone();
        let _one_at_a_time = gate.lock().await;
        // A call that waited here finds the instance the one before it started.
        if let Some(i) = self.pick(function) {
            return Ok(Some(i));
        }
        let Some(template) = self.template(function).filter(|t| t.restartable).map(|t| t.req) else {
            return Ok(None);
        };
        tracing::info!(function, "cold start: a call found no running instance");
        // On a task of its own: a caller that goes away must not cut the start half-way.
        let this = self.clone();
        let started =
            self.rt.spawn(async move { this.start(template).await }).await.map_err(|e| Error::Io {
                what: "cold start task",
                path: function.to_string(),
                source: std::io::Error::other(e),
            })?;
        Ok(Some(started?.0))
    }

    /// How `function`'s instances were last started (see [`Instances::pick_or_start`]).
    pub fn template(&self, function: &str) -> Option<Template> {
        self.templates.lock().unwrap_or_else(|p| p.into_inner()).get(function).cloned()
    }

    fn set_template(&self, req: StartRequest, restartable: bool) {
        let change = self.template_changes.fetch_add(1, Ordering::Relaxed);
        let t = Template { change, restartable, req };
        self.templates.lock().unwrap_or_else(|p| p.into_inner()).insert(t.req.function.clone(), t);
    }

    /// Stops an instance that overran a call's timeout. Unlike [`Instances::stop`], its
    /// function's template stays: the next call starts another instance like it.
    pub fn recycle(self: &Arc<Self>, id: &str) {
        let Some(mut inst) = self.lock().remove(id) else { return };
        tracing::warn!(instance = id, function = %inst.function, "stopping an instance that overran a call's timeout");
        inst.state = "stopped".into();
        inst.reason = "stopped by the agent: a call overran the function's timeout".into();
        inst.pid = 0;
        self.push_ended(SystemTime::now(), inst);
        let this = self.clone();
        let id = id.to_string();
        // On the main runtime, not the data plane's thread that noticed the overrun.
        self.rt.spawn(async move {
            if let Err(e) = this.teardown(&id).await {
                tracing::warn!(instance = %id, error = %e, "stopping an instance that overran");
            }
        });
    }

    /// The running instances of `function`.
    pub fn running_of(&self, function: &str) -> Vec<Instance> {
        self.lock().values().filter(|i| i.function == function).cloned().collect()
    }

    /// Why instance `id` ended, while ListInstances still shows it.
    pub fn ended_reason(&self, id: &str) -> Option<String> {
        let ended = self.ended.lock().unwrap_or_else(|p| p.into_inner());
        ended.iter().rev().find(|(_, i)| i.id == id).map(|(_, i)| i.reason.clone())
    }

    /// Whether instance `id` is running (in the table).
    pub fn is_live(&self, id: &str) -> bool {
        self.lock().contains_key(id)
    }

    /// Picks a running instance of `function` for a call, round robin.
    pub fn pick(&self, function: &str) -> Option<Instance> {
        let table = self.lock();
        let mut candidates: Vec<&Instance> = table.values().filter(|i| i.function == function).collect();
        if candidates.is_empty() {
            return None;
        }
        candidates.sort_by(|a, b| a.id.cmp(&b.id));
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        Some(candidates[n % candidates.len()].clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn function_names_follow_the_rule_and_the_error_says_it() {
        for good in ["echo", "a", "fn-2", &"a".repeat(63)] {
            validate_function_name(good).expect(good);
        }
        for bad in ["", "Echo", "1fn", "fn-", "a_b", "a/b", &"a".repeat(64)] {
            let e = validate_function_name(bad).expect_err(bad).to_string();
            assert!(e.contains("1 to 63 characters"), "{e}");
        }
    }
}
