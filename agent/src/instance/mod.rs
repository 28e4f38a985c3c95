//! The node's instances: one file per operation — [`start`](self::start) (image, network,
//! container, readiness), [`stop`](self::stop), [`adopt`](self::adopt) (rebuilding the
//! table after a restart and removing what a crash left half made), [`exits`](self::exits)
//! (containerd's exit and OOM events) — and the node's [`image_cache`].
//!
//! The table in memory is rebuilt from containerd's labels when the agent starts; a lock
//! is held only to read or change the table, never across a containerd or CNI call. The
//! pools drive instances through [`InstanceOps`], so that their logic can be tested with a
//! fake.

mod adopt;
mod exits;
pub mod image_cache;
mod marks;
pub mod phases;
mod start;
mod stop;

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures_util::future::BoxFuture;

use crate::env::Identity;
use crate::error::Error;
use crate::image::{ImageInfo, Progress};
use crate::logs::Logs;
use crate::network::Network;
use crate::runtime::Runtime;
use crate::stats::Usage;
use fnrt_function::policy::{Limits, Policy};
use fnrt_function::PullCredentials;

pub use image_cache::{ImageCache, NodeImage};
pub use start::{validate_function_name, StartRequest};

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
    /// Its network namespace (a path under /run/netns): the data plane connects to it on
    /// the namespace's own loopback, not across the bridge.
    pub netns: Option<Arc<std::path::Path>>,
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
    /// What its calls are served with (recorded in its labels, read back on adoption).
    pub call: CallSettings,
    /// Cleared the moment it ends or is stopped: a pool then gives it no more calls, before
    /// its care drops it.
    pub alive: Alive,
    /// Where its start's time went (empty for an instance adopted after a restart).
    pub phases: phases::StartPhases,
    /// Its sandbox class.
    pub class: fnrt_function::SandboxClass,
}

/// Whether an instance still runs, shared by the instance table and the pools.
#[derive(Clone, Debug)]
pub struct Alive(Arc<std::sync::atomic::AtomicBool>);

impl Alive {
    /// A running instance's.
    pub fn new() -> Alive {
        Alive(Arc::new(std::sync::atomic::AtomicBool::new(true)))
    }

    /// Whether it runs.
    pub fn get(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Acquire)
    }

    /// It ended.
    pub fn clear(&self) {
        self.0.store(false, std::sync::atomic::Ordering::Release);
    }
}

impl Default for Alive {
    fn default() -> Alive {
        Alive::new()
    }
}

/// Two instances are equal by what they are; the flag is not part of it.
impl PartialEq for Alive {
    fn eq(&self, _: &Alive) -> bool {
        true
    }
}

impl Eq for Alive {}

/// What calls to an instance are served with, besides its function's name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CallSettings {
    /// Its function's version.
    pub version: String,
    /// Its function's namespace.
    pub namespace: String,
    /// The name it shows (SCF_FUNCTIONNAME); empty: the function's.
    pub display_name: String,
    /// Longest a call may take, in ms (0: the default).
    pub timeout_ms: u32,
}

/// How many ended instances ListInstances shows, and for how long.
const ENDED_MAX: usize = 100;
const ENDED_KEPT: Duration = Duration::from_secs(3600);

/// What the pools need of the node's instances (a fake stands in for it in their tests).
pub trait InstanceOps: Send + Sync + 'static {
    /// Starts an instance; see [`Instances::start`].
    fn start(&self, req: StartRequest) -> BoxFuture<'_, Result<(Instance, Option<String>), Error>>;
    /// Stops an instance; with `why`, it is listed as ended for that reason.
    fn stop<'a>(&'a self, id: &'a str, why: Option<&'a str>) -> BoxFuture<'a, Result<(), Error>>;
    /// Pulls an image into the node cache, with `credentials` for its registry if given.
    fn pull_image<'a>(
        &'a self,
        reference: &'a str,
        credentials: Option<&'a PullCredentials>,
    ) -> BoxFuture<'a, Result<ImageInfo, Error>>;
    /// Whether the instance runs.
    fn is_live(&self, id: &str) -> bool;
    /// Why an instance ended, while it is listed.
    fn ended_reason(&self, id: &str) -> Option<String>;
    /// The running instances.
    fn running(&self) -> Vec<Instance>;
    /// Who the node runs functions for.
    fn identity(&self) -> &Identity;
    /// Keeps function `function`'s image in the node cache (image acceleration), or not.
    fn keep_image(&self, function: &str, image: Option<&str>);
    /// The size of an image the node cache has, without asking its registry.
    fn cached_image_size<'a>(&'a self, reference: &'a str) -> BoxFuture<'a, Option<u64>>;
    /// Whether the node offers sandbox class `class` (refused before anything starts).
    fn check_class(&self, class: fnrt_function::SandboxClass) -> Result<(), Error>;
}

/// The parts an [`Instances`] drives.
pub struct Parts {
    /// The node's image cache.
    pub images: Arc<ImageCache>,
    /// Network namespaces and addresses.
    pub network: Network,
    /// Containers and tasks.
    pub runtime: Runtime,
    /// The :9000 deadline.
    pub health_timeout: Duration,
    /// Memory → CPU and pids.
    pub policy: Policy,
    /// Who the node runs functions for.
    pub identity: Identity,
    /// Instance output.
    pub logs: Arc<Logs>,
    /// The directory of instance marks.
    pub marks: std::path::PathBuf,
    /// The node's budgets and what instances claim of them.
    pub ledger: Arc<crate::admission::Ledger>,
    /// The log disk one instance may take (`log_max_bytes` × `log_files`).
    pub log_bytes: u64,
}

/// Owns the node's instances.
pub struct Instances {
    parts: Parts,
    /// The agent's main runtime: teardowns of ended instances run there.
    rt: tokio::runtime::Handle,
    table: Mutex<HashMap<String, Instance>>,
    /// Instances that ended, newest last, for ListInstances.
    ended: Mutex<VecDeque<(SystemTime, Instance)>>,
    /// Instances whose cgroup reported an OOM kill, until their exit arrives.
    oom_seen: Mutex<HashSet<String>>,
    /// Instances being started: their exit, if it comes before they listen, ends the start.
    exits_at_start: Mutex<HashMap<String, tokio::sync::oneshot::Sender<(u32, bool)>>>,
}

impl std::fmt::Debug for Instances {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Instances").field("instances", &self.lock().len()).finish_non_exhaustive()
    }
}

impl Instances {
    /// What an instance with `limits` claims of the node's budgets.
    pub(crate) fn claim_of(&self, limits: &Limits) -> crate::admission::Claim {
        crate::admission::Claim {
            memory_mb: u64::from(limits.memory_mb),
            scratch_bytes: crate::runtime::SCRATCH_BYTES,
            log_bytes: self.parts.log_bytes,
        }
    }

    /// The node's memory budget (MB) and how many more instances its other budgets take
    /// (count, /tmp disk, log disk), for the control plane's placement.
    pub fn room(&self) -> (u64, u32) {
        let ledger = &self.parts.ledger;
        let (b, (count, _, scratch, logs)) = (ledger.budgets(), ledger.used());
        let per = self.claim_of(&Limits { memory_mb: 0, cpu_millis: 0, pids: 0 });
        let left = |budget: u64, used: u64, each: u64| budget.saturating_sub(used) / each.max(1);
        let room = [
            u64::from(b.instances.saturating_sub(count)),
            left(b.scratch_bytes, scratch, per.scratch_bytes),
            left(b.log_bytes, logs, per.log_bytes),
        ];
        (b.memory_mb, room.into_iter().min().unwrap_or(0).min(u64::from(u32::MAX)) as u32)
    }

    /// The instance owner over `parts`; call it on the agent's main runtime.
    pub fn new(parts: Parts) -> Instances {
        Instances {
            parts,
            rt: tokio::runtime::Handle::current(),
            table: Mutex::new(HashMap::new()),
            ended: Mutex::new(VecDeque::new()),
            oom_seen: Mutex::new(HashSet::new()),
            exits_at_start: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instance>> {
        // A panic while holding this lock cannot leave the map half-changed.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The images running instances use.
    fn images_in_use(&self) -> HashSet<String> {
        self.lock().values().map(|i| i.image.clone()).collect()
    }

    /// Pulls an image into the node cache (evicting what no longer fits).
    pub async fn pull_image(&self, reference: &str, progress: &Progress) -> Result<ImageInfo, Error> {
        self.parts.images.pull(reference, None, progress, self.images_in_use()).await
    }

    /// Fills the node cache with an image ahead of use; a pinned one is never evicted.
    pub async fn prefetch(
        &self,
        reference: &str,
        pin: bool,
        credentials: Option<&PullCredentials>,
        progress: &Progress,
    ) -> Result<ImageInfo, Error> {
        self.parts.images.prefetch(reference, pin, credentials, progress, self.images_in_use()).await
    }

    /// The node cache: its images with their users, the bytes they take and the budget.
    pub async fn cached_images(&self) -> Result<(Vec<NodeImage>, u64, u64), Error> {
        self.parts.images.list(&self.users()).await
    }

    /// Removes an image from the node; refused while instances use it.
    pub async fn remove_image(&self, reference: &str) -> Result<(), Error> {
        let name = crate::image::ImageRef::parse(reference).map_err(crate::image::ImageError::from)?.name();
        let users = self.users().remove(&name).unwrap_or_default();
        self.parts.images.remove(&name, users).await
    }

    /// Instance ids by the image they run.
    fn users(&self) -> HashMap<String, Vec<String>> {
        let mut out: HashMap<String, Vec<String>> = HashMap::new();
        for i in self.lock().values() {
            out.entry(i.image.clone()).or_default().push(i.id.clone());
        }
        out
    }

    /// The instances' logs.
    pub fn logs(&self) -> &Arc<Logs> {
        &self.parts.logs
    }

    /// The instances, with their task states read from containerd.
    pub async fn list(&self, function: Option<&str>) -> Result<Vec<Instance>, Error> {
        let records = self.parts.runtime.list().await?;
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
        let cgroups: Vec<String> = out.iter().map(|i| self.parts.runtime.cgroup_path(&i.id)).collect();
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

    /// Lists an ended instance (with its state and reason set) for ListInstances.
    fn push_ended(&self, at: SystemTime, inst: Instance) {
        let mut ended = self.ended.lock().unwrap_or_else(|p| p.into_inner());
        ended.push_back((at, inst));
        let horizon = SystemTime::now() - ENDED_KEPT;
        while ended.len() > ENDED_MAX || ended.front().is_some_and(|(t, _)| *t < horizon) {
            ended.pop_front();
        }
    }
}

impl InstanceOps for Instances {
    fn start(&self, req: StartRequest) -> BoxFuture<'_, Result<(Instance, Option<String>), Error>> {
        Box::pin(Instances::start(self, req))
    }

    fn stop<'a>(&'a self, id: &'a str, why: Option<&'a str>) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(Instances::stop(self, id, why))
    }

    fn pull_image<'a>(
        &'a self,
        reference: &'a str,
        credentials: Option<&'a PullCredentials>,
    ) -> BoxFuture<'a, Result<ImageInfo, Error>> {
        Box::pin(async move {
            self.parts.images.pull(reference, credentials, &Progress::none(), self.images_in_use()).await
        })
    }

    fn is_live(&self, id: &str) -> bool {
        self.lock().contains_key(id)
    }

    fn keep_image(&self, function: &str, image: Option<&str>) {
        self.parts.images.keep(function, image);
    }

    fn cached_image_size<'a>(&'a self, reference: &'a str) -> BoxFuture<'a, Option<u64>> {
        Box::pin(self.parts.images.cached_size(reference))
    }

    fn ended_reason(&self, id: &str) -> Option<String> {
        let ended = self.ended.lock().unwrap_or_else(|p| p.into_inner());
        ended.iter().rev().find(|(_, i)| i.id == id).map(|(_, i)| i.reason.clone())
    }

    fn running(&self) -> Vec<Instance> {
        self.lock().values().cloned().collect()
    }

    fn identity(&self) -> &Identity {
        &self.parts.identity
    }

    fn check_class(&self, class: fnrt_function::SandboxClass) -> Result<(), Error> {
        Instances::check_class(self, class)
    }
}
