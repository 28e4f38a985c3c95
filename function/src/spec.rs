//! A function as deployed on a node: [`RawSpec`] as a request gives it, [`FunctionSpec`]
//! once checked with its defaults filled in.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::time::Duration;

use fnrt_common::secret::Secrets;

use crate::policy::Policy;
use crate::sandbox::SandboxClass;

/// A spec that cannot be deployed: the field and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {reason}")]
pub struct SpecError {
    /// The field.
    pub field: &'static str,
    /// What is wrong and what is allowed.
    pub reason: String,
}

/// How a function is called.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Kind {
    /// Requests are passed through.
    Http,
    /// `POST /event-invoke` with the event as body.
    Event,
}

/// A function as deployed on the node.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct FunctionSpec {
    /// Name (the data plane's route).
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Version.
    pub version: String,
    /// Image reference.
    pub image: String,
    /// HTTP or event.
    pub kind: Kind,
    /// Memory in MB.
    pub memory_mb: u32,
    /// Longest a call may take.
    pub timeout: Duration,
    /// Variables.
    pub env: BTreeMap<String, String>,
    /// Secret variables.
    pub secrets: Secrets,
    /// Instances kept ready.
    pub provisioned: u32,
    /// Most instances at once.
    pub max_instances: u32,
    /// Calls one instance takes at once.
    pub concurrency: u32,
    /// How long an idle instance above the provisioned count is kept.
    pub keep_alive: Duration,
    /// Calls that may wait for an instance.
    pub queue_max: u32,
    /// Longest a call waits for an instance.
    pub queue_timeout: Duration,
    /// The name instances see; empty: `name` (see [`FunctionSpec::scf_name`]).
    #[serde(default)]
    pub display_name: String,
    /// The start command, when not the image's.
    #[serde(default)]
    pub process: Process,
    /// Image acceleration: the node cache keeps its image while it is deployed.
    #[serde(default)]
    pub keep_image: bool,
    /// Credentials for its image's registry; in memory only: never serialized, so never
    /// in the agent's store.
    #[serde(skip)]
    pub pull_credentials: Option<PullCredentials>,
    /// The sandbox its instances run in.
    #[serde(default, skip_serializing_if = "SandboxClass::is_default")]
    pub sandbox_class: SandboxClass,
}

/// A namespace's credentials for one registry (`Debug` shows no password).
#[derive(Clone, PartialEq, Eq)]
pub struct PullCredentials {
    /// The registry (host[:port]) they are for.
    pub registry: String,
    /// The user name.
    pub username: String,
    /// The password or token.
    pub password: fnrt_common::secret::Secret,
}

impl std::fmt::Debug for PullCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PullCredentials {{ registry: {:?}, username: {:?}, password: <secret> }}",
            self.registry, self.username
        )
    }
}

/// How an instance's process is started when not as its image says (SCF's Command and
/// Args): `command` replaces the image's Entrypoint and Cmd, `args` its Cmd. Kubernetes
/// reads its `command` and `args` the same way.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Process {
    /// Replaces the image's Entrypoint (and its Cmd) when not empty.
    #[serde(default)]
    pub command: Vec<String>,
    /// Replaces the image's Cmd when not empty.
    #[serde(default)]
    pub args: Vec<String>,
}

/// The most items of a command or its arguments, and the longest item.
pub const MAX_PROCESS_ITEMS: usize = 64;
/// See [`MAX_PROCESS_ITEMS`].
pub const MAX_PROCESS_ITEM_BYTES: usize = 4096;

impl Process {
    /// Whether it changes nothing of the image's.
    pub fn is_empty(&self) -> bool {
        self.command.is_empty() && self.args.is_empty()
    }

    /// The process arguments of an instance of an image with `entrypoint` and `cmd`.
    pub fn argv(&self, entrypoint: &[String], cmd: &[String]) -> Vec<String> {
        let head = if self.command.is_empty() { entrypoint } else { &self.command };
        let tail = match (self.args.is_empty(), self.command.is_empty()) {
            (false, _) => &self.args[..],
            (true, true) => cmd,
            (true, false) => &[],
        };
        head.iter().chain(tail).cloned().collect()
    }

    /// Checks the items' count, lengths and bytes; the error names what is allowed.
    pub fn check(&self) -> Result<(), SpecError> {
        for (field, items) in [("command", &self.command), ("args", &self.args)] {
            if items.len() > MAX_PROCESS_ITEMS {
                return Err(invalid(field, format!("{} items: at most {MAX_PROCESS_ITEMS}", items.len())));
            }
            if let Some(bad) = items.iter().find(|i| i.len() > MAX_PROCESS_ITEM_BYTES || i.contains('\0')) {
                return Err(invalid(
                    field,
                    format!(
                        "an item of {} bytes: each is at most {MAX_PROCESS_ITEM_BYTES} bytes, without NUL",
                        bad.len()
                    ),
                ));
            }
        }
        if self.command.first().is_some_and(String::is_empty) {
            return Err(invalid("command", "its first item is the program: it cannot be empty".into()));
        }
        Ok(())
    }
}

/// The limits of the counts a spec may ask for.
pub const MAX_INSTANCES: u32 = 1000;
/// See [`MAX_INSTANCES`].
pub const MAX_CONCURRENCY: u32 = 100;
/// Longest timeout, 15 minutes (SCF's limit for event functions).
pub const MAX_TIMEOUT_MS: u32 = 900_000;

/// What the request gave, before defaults.
#[derive(Clone, Debug, Default)]
pub struct RawSpec {
    /// See [`FunctionSpec`]; zero values mean the default.
    pub name: String,
    #[allow(missing_docs)]
    pub namespace: String,
    #[allow(missing_docs)]
    pub version: String,
    #[allow(missing_docs)]
    pub image: String,
    #[allow(missing_docs)]
    pub event: bool,
    #[allow(missing_docs)]
    pub memory_mb: u32,
    #[allow(missing_docs)]
    pub timeout_ms: u32,
    #[allow(missing_docs)]
    pub env: BTreeMap<String, String>,
    #[allow(missing_docs)]
    pub secrets: BTreeMap<String, String>,
    #[allow(missing_docs)]
    pub provisioned: u32,
    #[allow(missing_docs)]
    pub max_instances: u32,
    #[allow(missing_docs)]
    pub concurrency: u32,
    #[allow(missing_docs)]
    pub keep_alive_s: u32,
    #[allow(missing_docs)]
    pub queue_max: u32,
    #[allow(missing_docs)]
    pub queue_timeout_ms: u32,
    #[allow(missing_docs)]
    pub display_name: String,
    #[allow(missing_docs)]
    pub process: Process,
    #[allow(missing_docs)]
    pub keep_image: bool,
    #[allow(missing_docs)]
    pub pull_credentials: Option<PullCredentials>,
    /// A sandbox class name; empty: `runc`.
    pub sandbox_class: String,
}

fn invalid(field: &'static str, reason: String) -> SpecError {
    SpecError { field, reason }
}

/// Registry credentials: a registry host, a user name and a password, bounded and
/// printable (they go into an HTTP header).
pub fn check_credentials(c: &PullCredentials) -> Result<(), SpecError> {
    let field = "registry_credentials";
    let host_ok = !c.registry.is_empty()
        && c.registry.len() <= 255
        && c.registry
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'));
    if !host_ok {
        return Err(invalid(field, format!("registry {:?} is not a registry host[:port]", c.registry)));
    }
    let printable =
        |v: &str| (1..=4096).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_graphic() || b == b' ');
    if !printable(&c.username) || c.username.contains(':') {
        return Err(invalid(
            field,
            "the username must be 1 to 4096 printable ASCII characters without ':'".into(),
        ));
    }
    if !printable(c.password.expose()) {
        return Err(invalid(field, "the password must be 1 to 4096 printable ASCII characters".into()));
    }
    Ok(())
}

impl RawSpec {
    /// Checks the spec and fills in the defaults; every error names the field and what is
    /// allowed.
    pub fn check(self, policy: &Policy) -> Result<FunctionSpec, SpecError> {
        crate::naming::check("function name", &self.name).map_err(|e| invalid("function", e.to_string()))?;
        if self.display_name.len() > 128
            || !self.display_name.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
        {
            return Err(invalid(
                "display_name",
                "at most 128 visible ASCII characters (it becomes SCF_FUNCTIONNAME and X-Scf-Name)".into(),
            ));
        }
        if self.image.is_empty() {
            return Err(invalid("image", "an image reference is required".into()));
        }
        self.process.check()?;
        let sandbox_class = SandboxClass::from_wire(&self.sandbox_class)
            .map_err(|e| invalid("sandbox_class", e.to_string()))?;
        if let Some(c) = &self.pull_credentials {
            check_credentials(c)?;
        }
        let memory_mb =
            policy.limits(self.memory_mb).map_err(|e| invalid("memory_mb", e.to_string()))?.memory_mb;
        let timeout_ms = if self.timeout_ms == 0 { 3000 } else { self.timeout_ms };
        if timeout_ms > MAX_TIMEOUT_MS {
            return Err(invalid("timeout_ms", format!("{timeout_ms} is over {MAX_TIMEOUT_MS} (15 minutes)")));
        }
        let max_instances =
            if self.max_instances == 0 { self.provisioned.max(10) } else { self.max_instances };
        if max_instances > MAX_INSTANCES {
            return Err(invalid("max_instances", format!("{max_instances} is over {MAX_INSTANCES}")));
        }
        if self.provisioned > max_instances {
            return Err(invalid(
                "provisioned",
                format!("{} is over max_instances ({max_instances})", self.provisioned),
            ));
        }
        let concurrency = if self.concurrency == 0 { 1 } else { self.concurrency };
        if concurrency > MAX_CONCURRENCY {
            return Err(invalid("concurrency", format!("{concurrency} is over {MAX_CONCURRENCY}")));
        }
        let queue_max = if self.queue_max == 0 { 100 } else { self.queue_max };
        if queue_max > 100_000 {
            return Err(invalid("queue_max", format!("{queue_max} is over 100000")));
        }
        let queue_timeout_ms = if self.queue_timeout_ms == 0 { 10_000 } else { self.queue_timeout_ms };
        if queue_timeout_ms > MAX_TIMEOUT_MS {
            return Err(invalid("queue_timeout_ms", format!("{queue_timeout_ms} is over {MAX_TIMEOUT_MS}")));
        }
        Ok(FunctionSpec {
            name: self.name,
            namespace: if self.namespace.is_empty() { "default".into() } else { self.namespace },
            version: if self.version.is_empty() { "$LATEST".into() } else { self.version },
            image: self.image,
            kind: if self.event { Kind::Event } else { Kind::Http },
            memory_mb,
            timeout: Duration::from_millis(u64::from(timeout_ms)),
            env: self.env,
            secrets: Secrets(self.secrets),
            provisioned: self.provisioned,
            max_instances,
            concurrency,
            keep_alive: Duration::from_secs(u64::from(if self.keep_alive_s == 0 {
                60
            } else {
                self.keep_alive_s
            })),
            queue_max,
            queue_timeout: Duration::from_millis(u64::from(queue_timeout_ms)),
            display_name: self.display_name,
            process: self.process,
            keep_image: self.keep_image,
            pull_credentials: self.pull_credentials,
            sandbox_class,
        })
    }
}

impl FunctionSpec {
    /// A digest of what an instance is started with: instances of another digest are of
    /// an older spec.
    pub fn instance_key(&self) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (&self.namespace, &self.version, &self.image, self.memory_mb, &self.env, &self.secrets.0)
            .hash(&mut h);
        // Hashed only when set, so that specs saved before it keep their instances.
        if !self.display_name.is_empty() {
            self.display_name.hash(&mut h);
        }
        if !self.process.is_empty() {
            self.process.hash(&mut h);
        }
        if !self.sandbox_class.is_default() {
            self.sandbox_class.hash(&mut h);
        }
        h.finish()
    }

    /// The name its instances see (SCF_FUNCTIONNAME, X-Scf-Name).
    pub fn scf_name(&self) -> &str {
        if self.display_name.is_empty() {
            &self.name
        } else {
            &self.display_name
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy { mb_per_vcpu: 1792, min_cpu_millis: 100, pids: 1024 }
    }

    #[test]
    fn defaults_are_filled_in() {
        let s =
            RawSpec { name: "f".into(), image: "r/i".into(), ..Default::default() }.check(&policy()).unwrap();
        assert_eq!((s.memory_mb, s.timeout.as_millis(), s.max_instances, s.concurrency), (128, 3000, 10, 1));
        assert_eq!((s.namespace.as_str(), s.version.as_str(), s.kind), ("default", "$LATEST", Kind::Http));
        assert_eq!((s.keep_alive.as_secs(), s.queue_max, s.queue_timeout.as_millis()), (60, 100, 10_000));
    }

    #[test]
    fn bad_specs_name_the_field() {
        let base = RawSpec { name: "f".into(), image: "r/i".into(), ..Default::default() };
        for (raw, field) in [
            (RawSpec { name: "F".into(), ..base.clone() }, "function"),
            (RawSpec { image: String::new(), ..base.clone() }, "image"),
            (RawSpec { memory_mb: 10, ..base.clone() }, "memory_mb"),
            (RawSpec { timeout_ms: 900_001, ..base.clone() }, "timeout_ms"),
            (RawSpec { provisioned: 5, max_instances: 2, ..base.clone() }, "provisioned"),
            (RawSpec { concurrency: 101, ..base.clone() }, "concurrency"),
            (RawSpec { display_name: "a\nb".into(), ..base.clone() }, "display_name"),
            (RawSpec { display_name: "é".into(), ..base.clone() }, "display_name"),
            (RawSpec { display_name: "n".repeat(129), ..base.clone() }, "display_name"),
            (RawSpec { max_instances: 1001, ..base.clone() }, "max_instances"),
            (RawSpec { sandbox_class: "kata".into(), ..base.clone() }, "sandbox_class"),
        ] {
            let e = raw.check(&policy()).unwrap_err().to_string();
            assert!(e.contains(field), "{field}: {e}");
        }
    }

    #[test]
    fn instance_key_follows_what_instances_are_started_with() {
        let a =
            RawSpec { name: "f".into(), image: "r/i".into(), ..Default::default() }.check(&policy()).unwrap();
        let mut b = a.clone();
        b.provisioned = 3;
        assert_eq!(a.instance_key(), b.instance_key());
        b.env.insert("A".into(), "1".into());
        assert_ne!(a.instance_key(), b.instance_key());
        let mut c = a.clone();
        c.sandbox_class = SandboxClass::Gvisor;
        assert_ne!(a.instance_key(), c.instance_key(), "a new class replaces the instances");
    }
}
