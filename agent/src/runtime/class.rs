//! The sandbox classes this node offers, and how containerd runs each.
//!
//! Both classes go through containerd's runc v2 shim; they differ in the OCI runtime it
//! calls. `runc` is the shim's own; `gvisor` is `runsc`, which takes runc's command line
//! and also needs its own flags (platform, network), so the shim is given a small wrapper
//! that the agent writes from its settings at start: `exec runsc <flags> "$@"`. runsc
//! keeps its state apart from runc's (the shim's `root` option).

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use containerd_client::services::v1::container::Runtime as CdRuntime;
use fnrt_function::SandboxClass;

/// Where runsc keeps its containers' state (one directory per containerd namespace).
const RUNSC_ROOT: &str = "/run/containerd/runsc";

/// How gVisor runs, from the agent's `gvisor_*` settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GvisorSettings {
    /// The runsc executable.
    pub runsc: PathBuf,
    /// Its platform (`systrap`, `ptrace`, `kvm`); empty: runsc's default.
    pub platform: String,
    /// Its network: `host` (the instance's network namespace through the node's kernel)
    /// or `sandbox` (gVisor's own network stack over the namespace's interfaces).
    pub network: String,
    /// More flags, passed as they are.
    pub flags: Vec<String>,
}

/// A class that cannot be offered, or an instance asking for one that is not.
#[derive(Debug, thiserror::Error)]
pub enum ClassError {
    /// The node does not offer the class.
    #[error("sandbox class {class} is not offered by this node (it offers {offered}); see the agent's sandbox_classes setting")]
    NotOffered {
        /// The class asked for.
        class: SandboxClass,
        /// What the node offers, comma-separated.
        offered: String,
    },
    /// gVisor is configured but runsc is not there.
    #[error("sandbox class gvisor: {path} is not an executable file ({reason}); install gVisor (Debian: apt-get install -t bookworm-backports runsc) or set gvisor_runsc")]
    NoRunsc {
        /// The runsc path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A setting runsc would not take.
    #[error("sandbox class gvisor: {0}")]
    Setting(String),
    /// The wrapper could not be written.
    #[error("sandbox class gvisor: writing {path}: {source}")]
    Write {
        /// The wrapper's path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// The classes offered, and what containerd is told for each.
#[derive(Clone, Debug)]
pub struct Classes {
    offered: Vec<SandboxClass>,
    shim: String,
    runsc_wrapper: Option<PathBuf>,
}

/// runc v2 shim options (containerd's `containerd.runc.v1.Options`); only the two fields
/// the agent sets are declared.
#[derive(Clone, PartialEq, prost::Message)]
struct RuncOptions {
    /// The OCI runtime the shim calls instead of `runc`.
    #[prost(string, tag = "6")]
    binary_name: String,
    /// That runtime's state directory.
    #[prost(string, tag = "7")]
    root: String,
}

impl Classes {
    /// The classes of a node whose `shim` is containerd's runtime (the runc v2 shim):
    /// see [`Classes::resolve`]. Offering gvisor writes its wrapper under `dir`.
    pub fn new(
        shim: &str,
        offered: Option<&[SandboxClass]>,
        gvisor: &GvisorSettings,
        dir: &Path,
    ) -> Result<Classes, ClassError> {
        let classes = Classes::resolve(offered, gvisor)?;
        let runsc_wrapper = if classes.contains(&SandboxClass::Gvisor) {
            Some(write_wrapper(dir, &wrapper_text(gvisor)?)?)
        } else {
            None
        };
        Ok(Classes { offered: classes, shim: shim.into(), runsc_wrapper })
    }

    /// The classes offered, checked without changing anything: `offered` when set, else
    /// runc and, when `gvisor.runsc` is an executable file, gvisor.
    pub fn resolve(
        offered: Option<&[SandboxClass]>,
        gvisor: &GvisorSettings,
    ) -> Result<Vec<SandboxClass>, ClassError> {
        let mut classes: Vec<SandboxClass> = match offered {
            Some(list) => list.to_vec(),
            None => {
                let mut auto = vec![SandboxClass::Runc];
                if runsc_usable(&gvisor.runsc).is_ok() {
                    auto.push(SandboxClass::Gvisor);
                }
                auto
            }
        };
        classes.sort();
        classes.dedup();
        if classes.contains(&SandboxClass::Gvisor) {
            runsc_usable(&gvisor.runsc)
                .map_err(|reason| ClassError::NoRunsc { path: gvisor.runsc.clone(), reason })?;
            wrapper_text(gvisor)?;
        }
        Ok(classes)
    }

    /// Only runc, without checks (tests and tools that start no gVisor instance).
    pub fn runc_only(shim: &str) -> Classes {
        Classes { offered: vec![SandboxClass::Runc], shim: shim.into(), runsc_wrapper: None }
    }

    /// The classes offered, in order.
    pub fn offered(&self) -> &[SandboxClass] {
        &self.offered
    }

    /// Whether `class` is offered; the error names what is.
    pub fn check(&self, class: SandboxClass) -> Result<(), ClassError> {
        if self.offered.contains(&class) {
            return Ok(());
        }
        let offered = self.offered.iter().map(|c| c.as_str()).collect::<Vec<_>>().join(", ");
        Err(ClassError::NotOffered { class, offered })
    }

    /// What containerd is told to run an instance of `class` with.
    pub fn containerd_runtime(&self, class: SandboxClass) -> CdRuntime {
        let options = match (class, &self.runsc_wrapper) {
            (SandboxClass::Gvisor, Some(wrapper)) => Some(prost_types::Any {
                type_url: "containerd.runc.v1.Options".into(),
                value: prost::Message::encode_to_vec(&RuncOptions {
                    binary_name: wrapper.display().to_string(),
                    root: RUNSC_ROOT.into(),
                }),
            }),
            _ => None,
        };
        CdRuntime { name: self.shim.clone(), options }
    }
}

/// Whether `path` is an executable regular file; the reason when not.
fn runsc_usable(path: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err("not executable".into());
    }
    Ok(())
}

/// The wrapper's text: runsc with the settings' flags, then what the shim passes.
fn wrapper_text(g: &GvisorSettings) -> Result<String, ClassError> {
    if !matches!(g.network.as_str(), "host" | "sandbox") {
        return Err(ClassError::Setting(format!("gvisor_network {:?}: use host or sandbox", g.network)));
    }
    if !g.platform.is_empty() && !g.platform.bytes().all(|b| b.is_ascii_lowercase()) {
        return Err(ClassError::Setting(format!(
            "gvisor_platform {:?}: a name such as systrap, ptrace or kvm",
            g.platform
        )));
    }
    if let Some(bad) = g.flags.iter().find(|f| !f.starts_with("--") || f.contains('\0')) {
        return Err(ClassError::Setting(format!("gvisor_flags: {bad:?} is not a --flag")));
    }
    // The instance's own seccomp filter also applies inside gVisor's kernel.
    let mut flags = vec![format!("--network={}", g.network), "--oci-seccomp".to_string()];
    if !g.platform.is_empty() {
        flags.push(format!("--platform={}", g.platform));
    }
    flags.extend(g.flags.iter().cloned());
    let words: Vec<String> =
        std::iter::once(g.runsc.display().to_string()).chain(flags).map(|w| shell_quote(&w)).collect();
    Ok(format!(
        "#!/bin/sh\n# Written by fnrt-agent from its gvisor_* settings: containerd's runc shim runs\n# this as the OCI runtime of the instances of sandbox class gvisor.\nexec {} \"$@\"\n",
        words.join(" ")
    ))
}

/// `w` in single quotes, for /bin/sh.
fn shell_quote(w: &str) -> String {
    format!("'{}'", w.replace('\'', r"'\''"))
}

/// Writes the wrapper under `dir` (replacing an older one whole) and returns its path.
fn write_wrapper(dir: &Path, text: &str) -> Result<PathBuf, ClassError> {
    let path = dir.join("runsc-gvisor");
    let write = || -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let tmp = dir.join(".runsc-gvisor.new");
        let mut f =
            std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o755).open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
        std::fs::rename(&tmp, &path)
    };
    write().map_err(|source| ClassError::Write { path: path.clone(), source })?;
    Ok(path)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn settings(runsc: &Path) -> GvisorSettings {
        GvisorSettings {
            runsc: runsc.into(),
            platform: "systrap".into(),
            network: "host".into(),
            flags: vec!["--debug-log=/x y/it's".into()],
        }
    }

    fn fake_runsc(dir: &Path) -> PathBuf {
        std::fs::create_dir_all(dir).unwrap();
        let p = dir.join("runsc");
        std::fs::write(&p, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    #[test]
    fn gvisor_is_offered_when_runsc_is_there_and_its_wrapper_quotes_every_flag() {
        let dir = std::env::temp_dir().join(format!("fnrt-class-{}", std::process::id()));
        let runsc = fake_runsc(&dir);
        let classes = Classes::new("io.containerd.runc.v2", None, &settings(&runsc), &dir).unwrap();
        assert_eq!(classes.offered(), [SandboxClass::Runc, SandboxClass::Gvisor]);
        let text = std::fs::read_to_string(dir.join("runsc-gvisor")).unwrap();
        assert!(
            text.contains(
                "'--network=host' '--oci-seccomp' '--platform=systrap' '--debug-log=/x y/it'\\''s' \"$@\""
            ),
            "{text}"
        );
        let rt = classes.containerd_runtime(SandboxClass::Gvisor);
        let opts: RuncOptions = prost::Message::decode(rt.options.unwrap().value.as_slice()).unwrap();
        assert_eq!((opts.binary_name.ends_with("runsc-gvisor"), opts.root.as_str()), (true, RUNSC_ROOT));
        assert!(classes.containerd_runtime(SandboxClass::Runc).options.is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn gvisor_asked_for_without_runsc_or_with_bad_settings_is_refused() {
        let dir = std::env::temp_dir().join(format!("fnrt-class-bad-{}", std::process::id()));
        let missing = settings(Path::new("/nonexistent/runsc"));
        let auto = Classes::new("shim", None, &missing, &dir).unwrap();
        assert_eq!(auto.offered(), [SandboxClass::Runc], "not offered without runsc");
        let e = auto.check(SandboxClass::Gvisor).unwrap_err().to_string();
        assert!(e.contains("not offered by this node (it offers runc)"), "{e}");
        let e = Classes::new("shim", Some(&[SandboxClass::Gvisor]), &missing, &dir).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/runsc is not an executable file"), "{e}");
        let runsc = fake_runsc(&dir);
        for (bad, says) in [
            (GvisorSettings { network: "bridge".into(), ..settings(&runsc) }, "use host or sandbox"),
            (GvisorSettings { platform: "kvm; rm -rf /".into(), ..settings(&runsc) }, "gvisor_platform"),
            (GvisorSettings { flags: vec!["-x".into()], ..settings(&runsc) }, "is not a --flag"),
        ] {
            let e = Classes::new("shim", Some(&[SandboxClass::Gvisor]), &bad, &dir).unwrap_err().to_string();
            assert!(e.contains(says), "{e}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
