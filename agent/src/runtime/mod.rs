//! Instances as containerd containers and tasks: create from an image's snapshot, start,
//! and remove with everything they own. containerd's labels hold the agent's record of
//! each instance, so a restarted agent can find them again.

mod class;
mod scratch;
mod seccomp;
mod spec;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use containerd_client::services::v1::snapshots::{
    Kind as SnapshotKind, ListSnapshotsRequest, PrepareSnapshotRequest,
};
use containerd_client::services::v1::{
    Container, CreateContainerRequest, CreateTaskRequest, DeleteContainerRequest, DeleteTaskRequest,
    GetRequest, KillRequest, ListContainersRequest, ListTasksRequest, StartRequest, WaitRequest,
};
use containerd_client::types::v1::Status as TaskStatus;

pub use class::{ClassError, Classes, GvisorSettings};
pub use scratch::{ScratchError, SCRATCH_BYTES};
pub use spec::SpecError;

use crate::containerd::{call_err, Containerd, ContainerdError};
use crate::idmap::IdMap;
use crate::image::{remove_snapshot, RunnableImage};
use fnrt_function::policy::Limits;
use fnrt_function::SandboxClass;

/// Label keys of the agent's containers.
pub mod labels {
    /// The function an instance serves; every container of the agent has it.
    pub const FUNCTION: &str = "fnrt.function";
    /// The image reference it was started from.
    pub const IMAGE: &str = "fnrt.image";
    /// Its address, ip:9000.
    pub const ADDRESS: &str = "fnrt.address";
    /// Its memory limit in MB.
    pub const MEMORY_MB: &str = "fnrt.memory-mb";
    /// Its CPU limit in thousandths of a vCPU.
    pub const CPU_MILLIS: &str = "fnrt.cpu-millis";
    /// Its pids limit.
    pub const PIDS: &str = "fnrt.pids";
    /// Its function's version, namespace, shown name and call timeout (ms): what calls to
    /// an instance started on its own are served with after a restart.
    pub const VERSION: &str = "fnrt.version";
    /// See [`VERSION`].
    pub const NAMESPACE: &str = "fnrt.namespace";
    /// See [`VERSION`].
    pub const DISPLAY_NAME: &str = "fnrt.display-name";
    /// See [`VERSION`].
    pub const TIMEOUT_MS: &str = "fnrt.timeout-ms";
    /// Its sandbox class (`runc` when absent: instances from before classes).
    pub const SANDBOX_CLASS: &str = "fnrt.sandbox-class";
}

/// A failure to create, run or remove an instance's container.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The image cannot be run as it is.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// containerd failed.
    #[error(transparent)]
    Containerd(#[from] ContainerdError),
    /// The instance's /tmp could not be made or removed.
    #[error(transparent)]
    Scratch(#[from] ScratchError),
    /// The spec could not be encoded.
    #[error("encoding the runtime spec of {id}: {source}")]
    Encode {
        /// The instance.
        id: String,
        /// The error.
        #[source]
        source: serde_json::Error,
    },
    /// The root filesystem could not be given to the instance's user namespace.
    #[error("root filesystem of {id}: chown {path} to the instance's root: {source}")]
    Chown {
        /// The instance.
        id: String,
        /// The directory.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A ready instance's CPU could not be dropped from its start-up quota to its share.
    #[error("instance {id}: setting its CPU quota to its share: {reason}")]
    SettleCpu {
        /// The instance.
        id: String,
        /// Why.
        reason: String,
    },
}

/// What is needed to create an instance's container.
pub struct NewInstance<'a> {
    /// Its id (container id, snapshot key, cgroup and netns name).
    pub id: &'a str,
    /// Its function.
    pub function: &'a str,
    /// Its image.
    pub image: &'a RunnableImage,
    /// Its network namespace.
    pub netns: &'a std::path::Path,
    /// Its /tmp, made and mounted (see [`Runtime::make_scratch`]).
    pub tmp: &'a std::path::Path,
    /// Its address, recorded in the labels.
    pub address: &'a str,
    /// Environment added to the image's.
    pub env: &'a BTreeMap<String, String>,
    /// Its limits.
    pub limits: &'a Limits,
    /// The FIFOs its stdout and stderr go to.
    pub io: &'a crate::logs::Io,
    /// More labels to record (see [`labels::VERSION`]).
    pub more_labels: &'a [(&'static str, String)],
    /// Its start command when not the image's.
    pub process: &'a fnrt_function::Process,
    /// Where the start's time goes (container and process are marked here).
    pub timeline: &'a crate::instance::phases::Timeline,
    /// Its sandbox class (one the node offers: see [`Classes::check`]).
    pub class: SandboxClass,
}

/// One container of the agent as containerd has it.
#[derive(Clone, Debug)]
pub struct ContainerRecord {
    /// Container id (= instance id).
    pub id: String,
    /// Its labels.
    pub labels: HashMap<String, String>,
    /// Its task's state, "running", "created", "stopped", "paused" or "unknown"; None
    /// when it has no task.
    pub state: Option<&'static str>,
    /// Its task's pid (0 without a task).
    pub pid: u32,
    /// When the container was made.
    pub created_at: Option<std::time::SystemTime>,
}

/// Creates and removes instance containers in the agent's namespace.
#[derive(Clone, Debug)]
pub struct Runtime {
    cd: Containerd,
    ids: IdMap,
    seccomp: bool,
    snapshotter: String,
    classes: Classes,
    scratch: scratch::Scratch,
    /// Mounted read-only on every instance's /etc/resolv.conf (egress "internet").
    pub resolv_conf: Option<PathBuf>,
    /// CPU an instance may use until it is ready, in thousandths of a vCPU (0: its share).
    pub startup_cpu_millis: u32,
}

impl Runtime {
    /// A runtime over `cd`, running the sandbox `classes`, with the instances' /tmp
    /// filesystems under `scratch_dir`.
    pub fn new(
        cd: Containerd,
        snapshotter: &str,
        classes: Classes,
        scratch_dir: PathBuf,
        ids: IdMap,
        seccomp: bool,
    ) -> Runtime {
        let scratch = scratch::Scratch::new(scratch_dir);
        Runtime {
            cd,
            ids,
            seccomp,
            snapshotter: snapshotter.into(),
            classes,
            scratch,
            resolv_conf: None,
            startup_cpu_millis: 0,
        }
    }

    /// The sandbox classes this node offers.
    pub fn classes(&self) -> &Classes {
        &self.classes
    }

    /// The node-unique name of an instance's cgroup and /tmp: `<namespace>-<id>`.
    fn node_name(&self, id: &str) -> String {
        format!("{}-{id}", self.cd.namespace())
    }

    /// Removes the /tmp filesystems of instances not in `keep` (left by a crashed agent).
    pub async fn sweep_scratch(&self, keep: &std::collections::HashSet<String>) {
        for name in self.scratch.names().await {
            let Some(id) = name.strip_prefix(&format!("{}-", self.cd.namespace())) else { continue };
            if keep.contains(id) {
                continue;
            }
            match self.scratch.remove(&name).await {
                Ok(()) => tracing::info!(instance = id, "removed a /tmp no instance owns"),
                Err(e) => tracing::warn!(instance = id, error = %e, "removing an orphan /tmp"),
            }
        }
    }

    /// An instance's cgroup, relative to the cgroup roots: `/fnrt/<namespace>-<id>`.
    pub fn cgroup_path(&self, id: &str) -> String {
        format!("/fnrt/{}", self.node_name(id))
    }

    /// Drops a ready instance from its start-up CPU to its share (a no-op without a boost).
    pub async fn settle_cpu(&self, id: &str, limits: &Limits) -> Result<(), RuntimeError> {
        if limits.startup_cpu_quota_us(self.startup_cpu_millis) == limits.cpu_quota_us() {
            return Ok(());
        }
        self.set_cpu_share(id, limits).await
    }

    /// Sets an instance's CPU quota to its share (an adopted instance may have been
    /// boosted by an agent that stopped before it was ready).
    pub async fn set_cpu_share(&self, id: &str, limits: &Limits) -> Result<(), RuntimeError> {
        let (cgroup, quota) = (self.cgroup_path(id), limits.cpu_quota_us());
        let set = tokio::task::spawn_blocking(move || crate::stats::set_cpu_quota(&cgroup, quota)).await;
        set.unwrap_or_else(|e| Err(e.to_string()))
            .map_err(|reason| RuntimeError::SettleCpu { id: id.into(), reason })
    }

    /// Creates and starts the container of a new instance; returns its pid. On failure,
    /// whatever this made is removed again.
    pub async fn start(&self, n: &NewInstance<'_>) -> Result<u32, RuntimeError> {
        let result = self.create_and_start(n).await;
        if result.is_err() {
            if let Err(e) = self.remove(n.id).await {
                tracing::warn!(instance = n.id, error = %e, "cleanup after a failed start");
            }
        }
        result
    }

    /// The OCI runtime spec of `n`, as containerd takes it.
    fn spec_json(&self, n: &NewInstance<'_>, tmp: &std::path::Path) -> Result<Vec<u8>, RuntimeError> {
        let spec = spec::build(&spec::InstanceSpec {
            id: n.id,
            image: &n.image.info.reference,
            config: &n.image.config,
            netns: n.netns,
            cgroup: &self.cgroup_path(n.id),
            env: n.env,
            limits: n.limits,
            startup_cpu_millis: self.startup_cpu_millis,
            tmp,
            ids: self.ids,
            seccomp: self.seccomp,
            resolv_conf: self.resolv_conf.as_deref(),
            process: n.process,
            class: n.class,
        })?;
        serde_json::to_vec(&spec).map_err(|source| RuntimeError::Encode { id: n.id.into(), source })
    }

    /// Gives the top of a new root filesystem (the overlay's upper directory, or the
    /// bound directory) to the instance's root, so that runc, inside the user namespace,
    /// can make the mount points an image lacks (/proc, /dev, /tmp).
    fn own_root(&self, id: &str, mounts: &[containerd_client::types::Mount]) -> Result<(), RuntimeError> {
        if !self.ids.remapped() {
            return Ok(());
        }
        let top = mounts.iter().find_map(|m| match m.r#type.as_str() {
            "overlay" => m.options.iter().find_map(|o| o.strip_prefix("upperdir=")).map(str::to_string),
            "bind" => Some(m.source.clone()),
            _ => None,
        });
        let Some(top) = top else { return Ok(()) };
        let root = Some(self.ids.base);
        std::os::unix::fs::chown(&top, root, root).map_err(|source| RuntimeError::Chown {
            id: id.into(),
            path: top.clone(),
            source,
        })
    }

    /// Makes and mounts the /tmp of instance `id` (removed with it by [`Runtime::remove`]).
    pub async fn make_scratch(&self, id: &str) -> Result<PathBuf, RuntimeError> {
        Ok(self.scratch.create(&self.node_name(id)).await?)
    }

    async fn create_and_start(&self, n: &NewInstance<'_>) -> Result<u32, RuntimeError> {
        let cd = &self.cd;
        let spec = self.spec_json(n, n.tmp)?;
        let labels: HashMap<String, String> = [
            (labels::FUNCTION, n.function.to_string()),
            (labels::IMAGE, n.image.info.reference.clone()),
            (labels::ADDRESS, n.address.to_string()),
            (labels::MEMORY_MB, n.limits.memory_mb.to_string()),
            (labels::CPU_MILLIS, n.limits.cpu_millis.to_string()),
            (labels::PIDS, n.limits.pids.to_string()),
            (labels::SANDBOX_CLASS, n.class.to_string()),
        ]
        .into_iter()
        .chain(n.more_labels.iter().cloned())
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let container = Container {
            id: n.id.into(),
            labels,
            image: n.image.info.reference.clone(),
            runtime: Some(self.classes.containerd_runtime(n.class)),
            spec: Some(prost_types::Any {
                type_url: "types.containerd.io/opencontainers/runtime-spec/1/Spec".into(),
                value: spec,
            }),
            snapshotter: self.snapshotter.clone(),
            snapshot_key: n.id.into(),
            created_at: None,
            updated_at: None,
            extensions: HashMap::new(),
            sandbox: String::new(),
        };
        cd.containers()
            .create(cd.req(CreateContainerRequest { container: Some(container) }))
            .await
            .map_err(call_err(format!("create container {}", n.id)))?;
        // The container is made first: it is what keeps the root filesystem from containerd's
        // garbage collector, which another client's deletion can trigger at any moment.
        let prep = PrepareSnapshotRequest {
            snapshotter: self.snapshotter.clone(),
            key: n.id.into(),
            parent: n.image.top_snapshot.clone(),
            labels: HashMap::new(),
        };
        let mounts = cd
            .snapshots()
            .prepare(cd.req(prep))
            .await
            .map_err(call_err(format!("prepare root filesystem of {}", n.id)))?
            .into_inner()
            .mounts;
        self.own_root(n.id, &mounts)?;
        n.timeline.mark("container");
        // The shim opens the FIFOs for writing; the agent reads them (crate::logs).
        let task = CreateTaskRequest {
            container_id: n.id.into(),
            rootfs: mounts,
            stdout: n.io.stdout.display().to_string(),
            stderr: n.io.stderr.display().to_string(),
            // As the container's: containerd 1.6 gives the shim these when set.
            options: self.classes.containerd_runtime(n.class).options,
            ..Default::default()
        };
        let pid = cd
            .tasks()
            .create(cd.req(task))
            .await
            .map_err(call_err(format!("create task {}", n.id)))?
            .into_inner()
            .pid;
        cd.tasks()
            .start(cd.req(StartRequest { container_id: n.id.into(), exec_id: String::new() }))
            .await
            .map_err(call_err(format!("start task {}", n.id)))?;
        n.timeline.mark("process");
        Ok(pid)
    }

    /// Kills and removes an instance's task, container, root filesystem and /tmp. What is
    /// already gone is skipped, so this also cleans up half-made instances.
    pub async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        let cd = &self.cd;
        let kill = KillRequest { container_id: id.into(), exec_id: String::new(), signal: 9, all: true };
        match cd.tasks().kill(cd.req(kill)).await {
            Ok(_) => {
                let wait = WaitRequest { container_id: id.into(), exec_id: String::new() };
                ignore_not_found(cd.tasks().wait(cd.req(wait)).await, format!("wait for task {id}"))?;
            }
            Err(s) if matches!(s.code(), tonic::Code::NotFound | tonic::Code::FailedPrecondition) => {}
            // runsc answers a kill of a sandbox that has ended with an error containerd's
            // shim does not recognise ("sandbox is not running"): the task's own state says.
            Err(s) if self.task_stopped(id).await => {
                tracing::debug!(instance = id, error = %s.message(), "kill of an ended task");
            }
            Err(s) => return Err(call_err(format!("kill task {id}"))(s).into()),
        }
        ignore_not_found(
            cd.tasks().delete(cd.req(DeleteTaskRequest { container_id: id.into() })).await,
            format!("delete task {id}"),
        )?;
        ignore_not_found(
            cd.containers().delete(cd.req(DeleteContainerRequest { id: id.into() })).await,
            format!("delete container {id}"),
        )?;
        remove_snapshot(cd, &self.snapshotter, id).await?;
        self.scratch.remove(&self.node_name(id)).await?;
        let cgroup = self.cgroup_path(id);
        let removed = tokio::task::spawn_blocking(move || crate::stats::remove(&cgroup)).await;
        if let Ok(Err(e)) = removed {
            tracing::warn!(instance = id, error = %e, "removing the instance's cgroup");
        }
        Ok(())
    }

    /// Whether the task of `id` has ended (or is gone).
    async fn task_stopped(&self, id: &str) -> bool {
        let cd = &self.cd;
        match cd.tasks().get(cd.req(GetRequest { container_id: id.into(), exec_id: String::new() })).await {
            Ok(r) => r.into_inner().process.is_some_and(|p| p.status == TaskStatus::Stopped as i32),
            Err(s) => s.code() == tonic::Code::NotFound,
        }
    }

    /// Removes the root filesystems (active snapshots) no container owns: left by an
    /// agent that crashed between preparing one and creating its container, or during a
    /// pull. Only called while no start or pull is in flight.
    pub async fn sweep_snapshots(&self) -> Result<(), ContainerdError> {
        let cd = &self.cd;
        let containers: std::collections::HashSet<String> =
            self.list().await?.into_iter().map(|c| c.id).collect();
        let req = ListSnapshotsRequest { snapshotter: self.snapshotter.clone(), filters: vec![] };
        let mut stream =
            cd.snapshots().list(cd.req(req)).await.map_err(call_err("list snapshots"))?.into_inner();
        let mut orphans = Vec::new();
        while let Some(page) = stream.message().await.map_err(call_err("list snapshots"))? {
            orphans.extend(
                page.info
                    .into_iter()
                    .filter(|i| i.kind == SnapshotKind::Active as i32 && !containers.contains(&i.name))
                    .map(|i| i.name),
            );
        }
        for key in orphans {
            tracing::info!(snapshot = %key, "removing a root filesystem no instance owns");
            remove_snapshot(cd, &self.snapshotter, &key).await?;
        }
        Ok(())
    }

    /// The agent's containers with their task states.
    pub async fn list(&self) -> Result<Vec<ContainerRecord>, ContainerdError> {
        let cd = &self.cd;
        let containers = cd
            .containers()
            .list(cd.req(ListContainersRequest { filters: vec![] }))
            .await
            .map_err(call_err("list containers"))?
            .into_inner()
            .containers;
        let tasks = cd
            .tasks()
            .list(cd.req(ListTasksRequest { filter: String::new() }))
            .await
            .map_err(call_err("list tasks"))?
            .into_inner()
            .tasks;
        let tasks: HashMap<String, (i32, u32)> =
            tasks.into_iter().map(|t| (t.id, (t.status, t.pid))).collect();
        Ok(containers
            .into_iter()
            .filter(|c| c.labels.contains_key(labels::FUNCTION))
            .map(|c| {
                let task = tasks.get(&c.id);
                ContainerRecord {
                    state: task.map(|(s, _)| state_name(*s)),
                    pid: task.map_or(0, |(_, p)| *p),
                    created_at: c.created_at.and_then(|t| std::time::SystemTime::try_from(t).ok()),
                    id: c.id,
                    labels: c.labels,
                }
            })
            .collect())
    }
}

fn state_name(status: i32) -> &'static str {
    match TaskStatus::try_from(status) {
        Ok(TaskStatus::Created) => "created",
        Ok(TaskStatus::Running) => "running",
        Ok(TaskStatus::Stopped) => "stopped",
        Ok(TaskStatus::Paused) | Ok(TaskStatus::Pausing) => "paused",
        Ok(TaskStatus::Unknown) | Err(_) => "unknown",
    }
}

fn ignore_not_found<T>(r: Result<T, tonic::Status>, op: String) -> Result<(), ContainerdError> {
    match r {
        Ok(_) => Ok(()),
        Err(s) if s.code() == tonic::Code::NotFound => Ok(()),
        Err(s) => Err(call_err(op)(s)),
    }
}
