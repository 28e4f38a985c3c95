//! The OCI runtime spec of an instance, from its image config and the agent's rules.

use std::collections::BTreeMap;
use std::path::Path;

use oci_spec::image::ImageConfiguration;
use oci_spec::runtime::{
    LinuxCpuBuilder, LinuxDeviceCgroup, LinuxIdMappingBuilder, LinuxMemoryBuilder, LinuxNamespace,
    LinuxNamespaceType, LinuxPidsBuilder, MountBuilder, Spec, UserBuilder,
};

use fnrt_function::policy::{Limits, CPU_PERIOD_US};
use fnrt_function::SandboxClass;

use super::seccomp;
use crate::idmap::IdMap;

/// The image config cannot be turned into a runnable process.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// Neither Entrypoint nor Cmd.
    #[error("image {image} has neither Entrypoint nor Cmd, so there is nothing to run")]
    NoCommand {
        /// The image.
        image: String,
    },
    /// A user that is not numeric.
    #[error("image {image} runs as user {user:?}; only numeric uid[:gid] users within the node's user namespace range are supported for now")]
    User {
        /// The image.
        image: String,
        /// Its user.
        user: String,
    },
    /// oci-spec refused a value.
    #[error("building the runtime spec: {0}")]
    Build(#[from] oci_spec::OciSpecError),
}

/// What the spec of one instance is made of.
pub struct InstanceSpec<'a> {
    /// Instance id (also its hostname).
    pub id: &'a str,
    /// Image reference, for error messages.
    pub image: &'a str,
    /// The image's config.
    pub config: &'a ImageConfiguration,
    /// Path of the instance's network namespace.
    pub netns: &'a Path,
    /// Its cgroup path, relative to the cgroup roots.
    pub cgroup: &'a str,
    /// Environment added to the image's.
    pub env: &'a BTreeMap<String, String>,
    /// Memory, CPU and pids limits.
    pub limits: &'a Limits,
    /// CPU it may use until it is ready (see [`Limits::startup_cpu_quota_us`]).
    pub startup_cpu_millis: u32,
    /// The instance's own /tmp filesystem, mounted on the node.
    pub tmp: &'a Path,
    /// The node's user-namespace range (the image was unpacked with it).
    pub ids: IdMap,
    /// Whether the seccomp filter applies (always, but for measuring what it costs).
    pub seccomp: bool,
    /// The node's resolv.conf for instances (egress "internet"), mounted read-only.
    pub resolv_conf: Option<&'a Path>,
    /// The function's start command when not the image's.
    pub process: &'a fnrt_function::Process,
    /// Its sandbox class (the seccomp filter differs a little: see [`seccomp`]).
    pub class: SandboxClass,
}

/// The runtime's default mounts, with the instance's own /tmp and (egress "internet") the
/// node's resolv.conf, read-only.
fn mounts(
    mut mounts: Vec<oci_spec::runtime::Mount>,
    s: &InstanceSpec,
) -> Result<Vec<oci_spec::runtime::Mount>, SpecError> {
    mounts.retain(|m| m.destination() != Path::new("/tmp"));
    mounts.push(
        MountBuilder::default()
            .destination("/tmp")
            .typ("bind")
            .source(s.tmp)
            .options(["rbind", "rw", "nosuid", "nodev"].map(String::from).to_vec())
            .build()?,
    );
    if let Some(resolv) = s.resolv_conf {
        mounts.push(
            MountBuilder::default()
                .destination("/etc/resolv.conf")
                .typ("bind")
                .source(resolv)
                .options(["rbind", "ro", "nosuid", "nodev", "noexec"].map(String::from).to_vec())
                .build()?,
        );
    }
    Ok(mounts)
}

/// Builds the runtime spec of an instance: the image's process in its own namespaces (a
/// user namespace over the node's range among them), the prepared network namespace, a
/// read-only root, its own cgroup, the seccomp filter, no new privileges and the default
/// three capabilities (AUDIT_WRITE, KILL, NET_BIND_SERVICE, in its user namespace).
pub fn build(s: &InstanceSpec) -> Result<Spec, SpecError> {
    let ic = s.config.config().clone().unwrap_or_default();
    let args = s
        .process
        .argv(ic.entrypoint().as_deref().unwrap_or_default(), ic.cmd().as_deref().unwrap_or_default());
    if args.is_empty() {
        return Err(SpecError::NoCommand { image: s.image.into() });
    }
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    env.insert("PATH".into(), "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    for kv in ic.env().clone().unwrap_or_default() {
        if let Some((k, v)) = kv.split_once('=') {
            env.insert(k.into(), v.into());
        }
    }
    env.extend(s.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    let (uid, gid) = parse_user(ic.user().as_deref().unwrap_or("")).ok_or_else(|| SpecError::User {
        image: s.image.into(),
        user: ic.user().clone().unwrap_or_default(),
    })?;
    for id in [uid, gid] {
        s.ids
            .host(u64::from(id))
            .map_err(|e| SpecError::User { image: s.image.into(), user: e.to_string() })?;
    }

    let mut spec = Spec::default();
    spec.set_hostname(Some(s.id.to_string()));
    if let Some(p) = spec.process_mut() {
        p.set_args(Some(args));
        p.set_env(Some(env.into_iter().map(|(k, v)| format!("{k}={v}")).collect()));
        let cwd = ic.working_dir().clone().filter(|d| !d.is_empty()).unwrap_or_else(|| "/".into());
        p.set_cwd(cwd.into());
        p.set_user(UserBuilder::default().uid(uid).gid(gid).build()?);
    }
    spec.set_mounts(Some(mounts(spec.mounts().clone().unwrap_or_default(), s)?));
    sandbox(&mut spec, s.ids, s.seccomp, s.class)?;
    if let Some(linux) = spec.linux_mut() {
        let namespaces = linux.namespaces().clone().unwrap_or_default().into_iter().map(|ns| {
            if ns.typ() == LinuxNamespaceType::Network {
                let mut n = LinuxNamespace::default();
                n.set_typ(LinuxNamespaceType::Network);
                n.set_path(Some(s.netns.to_path_buf()));
                n
            } else {
                ns
            }
        });
        linux.set_namespaces(Some(namespaces.collect()));
        linux.set_cgroups_path(Some(s.cgroup.into()));
        if let Some(res) = linux.resources_mut() {
            let mut deny_all = LinuxDeviceCgroup::default();
            deny_all.set_allow(false);
            deny_all.set_access(Some("rwm".into()));
            res.set_devices(Some(vec![deny_all]));
            let l = s.limits;
            // Swap equal to the limit: memory plus swap may not pass it, so no swap at all.
            let memory =
                LinuxMemoryBuilder::default().limit(l.memory_bytes()).swap(l.memory_bytes()).build()?;
            res.set_memory(Some(memory));
            let cpu = LinuxCpuBuilder::default()
                .quota(l.startup_cpu_quota_us(s.startup_cpu_millis))
                .period(CPU_PERIOD_US)
                .shares(l.cpu_shares())
                .build()?;
            res.set_cpu(Some(cpu));
            res.set_pids(Some(LinuxPidsBuilder::default().limit(i64::from(l.pids)).build()?));
        }
    }
    Ok(spec)
}

/// The sandbox of every instance: the seccomp filter, no new privileges, and (with a
/// range) its own user namespace over the node's range, without /sys.
fn sandbox(spec: &mut Spec, ids: IdMap, seccomp: bool, class: SandboxClass) -> Result<(), SpecError> {
    if ids.remapped() {
        // sysfs cannot be mounted from a user namespace over a network namespace it does
        // not own, and a bind of the host's /sys would show the host: /sys is an empty
        // tmpfs (made read-only once runc has mounted the instance's cgroups under it, so
        // runtimes still read their limits in /sys/fs/cgroup).
        let mut mounts = spec.mounts().clone().unwrap_or_default();
        for m in mounts.iter_mut().filter(|m| m.destination() == Path::new("/sys")) {
            m.set_typ(Some("tmpfs".into()));
            m.set_source(Some("tmpfs".into()));
            m.set_options(Some(
                ["nosuid", "noexec", "nodev", "size=64k", "mode=755"].map(String::from).to_vec(),
            ));
        }
        spec.set_mounts(Some(mounts));
        if let Some(linux) = spec.linux_mut() {
            let mut ro = linux.readonly_paths().clone().unwrap_or_default();
            ro.push("/sys".into());
            linux.set_readonly_paths(Some(ro));
        }
    }
    if let Some(p) = spec.process_mut() {
        p.set_no_new_privileges(Some(true));
    }
    let Some(linux) = spec.linux_mut() else { return Ok(()) };
    if seccomp {
        linux.set_seccomp(Some(seccomp::profile(class)?));
    }
    if ids.remapped() {
        let mut user = LinuxNamespace::default();
        user.set_typ(LinuxNamespaceType::User);
        let mut ns = linux.namespaces().clone().unwrap_or_default();
        ns.push(user);
        linux.set_namespaces(Some(ns));
        let map =
            LinuxIdMappingBuilder::default().container_id(0u32).host_id(ids.base).size(ids.size).build()?;
        linux.set_uid_mappings(Some(vec![map]));
        linux.set_gid_mappings(Some(vec![map]));
    }
    Ok(())
}

fn parse_user(user: &str) -> Option<(u32, u32)> {
    if user.is_empty() {
        return Some((0, 0));
    }
    match user.split_once(':') {
        None => {
            let uid = user.parse().ok()?;
            Some((uid, uid))
        }
        Some((u, g)) => Some((u.parse().ok()?, g.parse().ok()?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::image::{ConfigBuilder, ImageConfigurationBuilder};

    const LIMITS: Limits = Limits { memory_mb: 448, cpu_millis: 250, pids: 1024 };

    fn image(entry: &[&str], cmd: &[&str], user: &str) -> ImageConfiguration {
        let cfg = ConfigBuilder::default()
            .entrypoint(entry.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .cmd(cmd.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .env(vec!["A=image".to_string(), "B=image".to_string()])
            .user(user.to_string())
            .build()
            .expect("config");
        ImageConfigurationBuilder::default().config(cfg).build().expect("image")
    }

    #[test]
    fn process_comes_from_the_image_and_env_overrides_it() {
        let ic = image(&["/fixture"], &["echo"], "1000:1000");
        let env = BTreeMap::from([("B".to_string(), "mine".to_string())]);
        let s = InstanceSpec {
            id: "f-1",
            image: "img",
            config: &ic,
            netns: Path::new("/run/netns/fnrt-f-1"),
            cgroup: "/fnrt/fnrt-f-1",
            env: &env,
            limits: &LIMITS,
            startup_cpu_millis: 0,
            tmp: Path::new("/var/lib/fnrt/scratch/x"),
            ids: IdMap { base: 100_000, size: 65_536 },
            seccomp: true,
            resolv_conf: Some(Path::new("/var/lib/fnrt/resolv.conf")),
            process: &Default::default(),
            class: SandboxClass::Runc,
        };
        // SCF's Command and Args: the command replaces Entrypoint and Cmd, args the Cmd.
        let cmd = |command: &[&str], args: &[&str]| {
            let process = fnrt_function::Process {
                command: command.iter().map(|s| s.to_string()).collect(),
                args: args.iter().map(|s| s.to_string()).collect(),
            };
            let spec = build(&InstanceSpec { process: &process, ..s }).expect("spec");
            spec.process().as_ref().and_then(|p| p.args().clone()).unwrap_or_default()
        };
        assert_eq!(cmd(&["/bin/app"], &[]), ["/bin/app"]);
        assert_eq!(cmd(&["/bin/app"], &["-v"]), ["/bin/app", "-v"]);
        assert_eq!(cmd(&[], &["serve"]), ["/fixture", "serve"]);
        let spec = build(&s).expect("spec");
        let resolv = spec
            .mounts()
            .as_ref()
            .expect("mounts")
            .iter()
            .find(|m| m.destination() == Path::new("/etc/resolv.conf"));
        let options = resolv.and_then(|m| m.options().clone()).unwrap_or_default();
        assert!(options.contains(&"ro".to_string()), "the node's resolv.conf, read-only: {options:?}");
        let p = spec.process().as_ref().expect("process");
        assert_eq!(p.args().as_ref().expect("args"), &vec!["/fixture".to_string(), "echo".to_string()]);
        let e = p.env().as_ref().expect("env");
        assert!(e.contains(&"A=image".to_string()) && e.contains(&"B=mine".to_string()), "{e:?}");
        assert_eq!(p.user().uid(), 1000);
        assert_eq!(spec.root().as_ref().and_then(|r| r.readonly()), Some(true));
        let linux = spec.linux().as_ref().expect("linux");
        let net =
            linux.namespaces().as_ref().expect("ns").iter().find(|n| n.typ() == LinuxNamespaceType::Network);
        assert_eq!(net.and_then(|n| n.path().clone()), Some("/run/netns/fnrt-f-1".into()));
        assert_eq!(
            linux.cgroups_path().as_ref().map(|p| p.display().to_string()),
            Some("/fnrt/fnrt-f-1".into())
        );
        let res = linux.resources().as_ref().expect("resources");
        let mem = res.memory().as_ref().expect("memory");
        assert_eq!((mem.limit(), mem.swap()), (Some(448 << 20), Some(448 << 20)));
        let cpu = res.cpu().as_ref().expect("cpu");
        assert_eq!((cpu.quota(), cpu.period(), cpu.shares()), (Some(25_000), Some(100_000), Some(256)));
        // Boosted while it starts: the quota (a cap) is raised, the shares (its weight) are not.
        let boosted = build(&InstanceSpec { startup_cpu_millis: 1000, ..s }).expect("spec");
        let cpu = boosted.linux().as_ref().and_then(|l| l.resources().as_ref()).and_then(|r| r.cpu().clone());
        assert_eq!(cpu.map(|c| (c.quota(), c.shares())), Some((Some(100_000), Some(256))));
        assert_eq!(res.pids().as_ref().map(|p| p.limit()), Some(1024));
        let user =
            linux.namespaces().as_ref().expect("ns").iter().any(|n| n.typ() == LinuxNamespaceType::User);
        assert!(user, "an instance has its own user namespace");
        let map = linux.uid_mappings().as_ref().expect("uid map")[0];
        assert_eq!((map.container_id(), map.host_id(), map.size()), (0, 100_000, 65_536));
        assert!(linux.seccomp().is_some(), "an instance runs under the seccomp filter");
        assert_eq!(p.no_new_privileges(), Some(true));
        let mounts = spec.mounts().as_ref().expect("mounts");
        let sys = mounts.iter().find(|m| m.destination() == Path::new("/sys")).expect("/sys");
        assert_eq!(sys.typ().as_deref(), Some("tmpfs"), "no sysfs in a user namespace");
        let tmp =
            spec.mounts().as_ref().expect("mounts").iter().find(|m| m.destination() == Path::new("/tmp"));
        assert_eq!(tmp.and_then(|m| m.source().clone()), Some("/var/lib/fnrt/scratch/x".into()));
    }

    #[test]
    fn an_image_without_command_or_with_a_named_user_is_refused() {
        let env = BTreeMap::new();
        let ic = image(&[], &[], "");
        let s = InstanceSpec {
            id: "f-1",
            image: "img",
            config: &ic,
            netns: Path::new("/x"),
            cgroup: "/x",
            env: &env,
            limits: &LIMITS,
            startup_cpu_millis: 0,
            tmp: Path::new("/var/lib/fnrt/scratch/x"),
            ids: IdMap { base: 100_000, size: 65_536 },
            seccomp: true,
            resolv_conf: None,
            process: &Default::default(),
            class: SandboxClass::Runc,
        };
        assert!(matches!(build(&s), Err(SpecError::NoCommand { .. })));
        let ic = image(&["/x"], &[], "nobody");
        let s = InstanceSpec {
            id: "f-1",
            image: "img",
            config: &ic,
            netns: Path::new("/x"),
            cgroup: "/x",
            env: &env,
            limits: &LIMITS,
            startup_cpu_millis: 0,
            tmp: Path::new("/var/lib/fnrt/scratch/x"),
            ids: IdMap { base: 100_000, size: 65_536 },
            seccomp: true,
            resolv_conf: None,
            process: &Default::default(),
            class: SandboxClass::Runc,
        };
        assert!(matches!(build(&s), Err(SpecError::User { .. })));
    }
}
