//! The resources the control plane keeps: namespaces, functions, tokens and crons, as
//! stored (JSON records), with the rules their fields must follow.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use fnrt_function::SandboxClass;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Memory sizes a function may have, in MB (as Scaleway offers).
pub const MEMORY_LIMITS: [u32; 7] = [128, 256, 512, 1024, 2048, 3072, 4096];
/// The longest timeout, in seconds (SCF's and Scaleway's 15 minutes).
pub const MAX_TIMEOUT_S: u32 = 900;
/// The most instances of one function.
pub const MAX_SCALE: u32 = 100;

/// A secret environment variable: the value reaches instances only; answers carry its hash.
#[derive(Clone, Serialize, Deserialize)]
pub struct SecretVar {
    /// The variable name.
    pub key: String,
    /// The value (kept in the store, which only its owner can read; never answered).
    pub value: String,
    /// An argon2id hash of the value in PHC form (`$argon2id$v=19$m=...`), as Scaleway
    /// answers it: clients such as the Serverless Framework's plugin verify a value they
    /// hold against it to tell whether it changed. What answers show.
    pub hashed_value: String,
}

impl std::fmt::Debug for SecretVar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretVar").field("key", &self.key).finish_non_exhaustive()
    }
}

impl SecretVar {
    /// A secret with its argon2id hash (a salt of its own; Argon2's default cost, some
    /// tens of ms: call it off the async threads, see `namespaces::hash_secrets`).
    pub fn new(key: String, value: String) -> Result<SecretVar, String> {
        use argon2::password_hash::{rand_core::OsRng, PasswordHasher, SaltString};
        let salt = SaltString::generate(&mut OsRng);
        let hashed_value = argon2::Argon2::default()
            .hash_password(value.as_bytes(), &salt)
            .map_err(|e| format!("hashing secret {key}: {e}"))?
            .to_string();
        Ok(SecretVar { key, value, hashed_value })
    }

    /// Whether its hash is of an older form (before argon2id) and must be made again.
    pub fn needs_rehash(&self) -> bool {
        !self.hashed_value.starts_with("$argon2id$")
    }
}

/// Applies a Scaleway secret update: a key with a value sets it, a key without one
/// (absent or null) removes it, keys not named stay.
pub fn merge_secrets(current: &mut Vec<SecretVar>, changes: Vec<(String, Option<SecretVar>)>) {
    for (key, value) in changes {
        current.retain(|s| s.key != key);
        if let Some(v) = value {
            current.push(v);
        }
    }
    current.sort_by(|a, b| a.key.cmp(&b.key));
}

/// A namespace: a group of functions with shared variables.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Namespace {
    /// UUID.
    pub id: String,
    /// Unique in the region.
    pub name: String,
    /// Free text.
    pub description: String,
    /// The owner's project (as given; the control plane has one tenant).
    pub project_id: String,
    /// Variables every function of the namespace gets.
    pub environment_variables: BTreeMap<String, String>,
    /// Secret variables every function gets.
    pub secrets: Vec<SecretVar>,
    /// Labels.
    pub tags: Vec<String>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// Credentials its functions' images are pulled with from one registry (extension).
    #[serde(default)]
    pub registry_credentials: Option<RegistryCredentials>,
    /// The sandbox class of its functions that name none (extension; records from before
    /// classes: `runc`).
    #[serde(default)]
    pub sandbox_class: SandboxClass,
}

/// A namespace's credentials for one registry: agents get them with the specs of its
/// functions whose image is there, for those pulls only. The password is kept in the
/// store (as secret values are) and never answered; answers carry its argon2id hash.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryCredentials {
    /// The registry, `host[:port]` as image references name it.
    pub registry: String,
    /// The user name.
    pub username: String,
    /// The password or token.
    pub password: String,
    /// Its argon2id hash, what answers show.
    pub hashed_password: String,
}

impl std::fmt::Debug for RegistryCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryCredentials")
            .field("registry", &self.registry)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

impl RegistryCredentials {
    /// As the agents take them.
    pub fn for_agents(&self) -> fnrt_function::PullCredentials {
        fnrt_function::PullCredentials {
            registry: self.registry.clone(),
            username: self.username.clone(),
            password: self.password.clone().into(),
        }
    }

    /// The control plane's registry client answering with them for their registry.
    pub fn client(&self, registry: &fnrt_registry::Registry) -> fnrt_registry::Registry {
        let creds = fnrt_registry::Credentials {
            username: self.username.clone(),
            password: self.password.clone().into(),
        };
        registry.with_credentials(&self.registry, &creds)
    }
}

/// Where a function stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FunctionStatus {
    /// Never deployed.
    Created,
    /// A deploy is under way.
    Pending,
    /// Deployed and served.
    Ready,
    /// The last deploy failed (error_message says why).
    Error,
    /// Deleted: kept until no agent runs it, then gone.
    Deleting,
}

/// A function: an image and how to run it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Function {
    /// UUID.
    pub id: String,
    /// Unique in its namespace.
    pub name: String,
    /// The namespace's id.
    pub namespace_id: String,
    /// Free text.
    pub description: String,
    /// The image to run (Scaleway containers' `registry_image`).
    pub registry_image: String,
    /// Prefetch the image on every agent at deploy.
    pub image_acceleration: bool,
    /// Variables, over the namespace's.
    pub environment_variables: BTreeMap<String, String>,
    /// Secret variables, over the namespace's.
    pub secrets: Vec<SecretVar>,
    /// Instances kept warm across agents.
    pub min_scale: u32,
    /// Most instances across agents.
    pub max_scale: u32,
    /// MB, one of [`MEMORY_LIMITS`].
    pub memory_limit: u32,
    /// Seconds a call may take.
    pub timeout_s: u32,
    /// `public` or `private`.
    pub privacy: String,
    /// `enabled` or `redirected`.
    pub http_option: String,
    /// As given (image functions need none).
    pub runtime: String,
    /// Scaleway's sandbox generation, `v1` or `v2` (default): kept and answered; every
    /// instance here runs in the same sandbox whichever is chosen.
    #[serde(default = "default_sandbox")]
    pub sandbox: String,
    /// As given.
    pub handler: String,
    /// Labels.
    pub tags: Vec<String>,
    /// Where it stands.
    pub status: FunctionStatus,
    /// Why the last deploy failed.
    pub error_message: Option<String>,
    /// Deploys so far; the agents' function version.
    pub deploys: u64,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// When the last deploy became ready.
    pub ready_at: Option<DateTime<Utc>>,
    /// What the last successful deploy put on the agents.
    #[serde(default)]
    pub deployed: Option<Deployed>,
    /// The digest its tag was last pushed at (from the registry's notifications); deploys
    /// pin the image to it.
    #[serde(default)]
    pub pushed_digest: Option<String>,
    /// The digest of its uploaded zip, when the zip is shared with other replicas through
    /// the registry (`store = "etcd"`).
    #[serde(default)]
    pub code_digest: Option<String>,
    /// What the last build of a code function did (or why it failed).
    #[serde(default)]
    pub build_message: Option<String>,
    /// Its start command and arguments when not its image's (extension fields `command`
    /// and `args`, SCF's Command and Args).
    #[serde(default)]
    pub process: fnrt_function::Process,
    /// What the agents said of its last deploy (the memory its image's size calls for).
    #[serde(default)]
    pub runtime_message: Option<String>,
    /// An event function (extension field `scf_type` `"event"`): every call, crons' and
    /// triggers' included, is `POST /event-invoke` with the event as the body; the gateway
    /// takes no HTTP calls for it.
    #[serde(default)]
    pub event: bool,
    /// The sandbox class it asked for (extension field `sandbox_class`); none: its
    /// namespace's. Not Scaleway's `sandbox`, which is kept apart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox_class: Option<SandboxClass>,
}

fn default_sandbox() -> String {
    "v2".into()
}

/// The part of a function that a deploy fixes (scales apply at once, these at a deploy).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct Deployed {
    /// The image.
    pub image: String,
    /// The agents' function version (the deploy count).
    pub version: String,
    /// Namespace variables, then the function's.
    pub env: BTreeMap<String, String>,
    /// Namespace secrets, then the function's (values).
    pub secrets: BTreeMap<String, String>,
    /// MB.
    pub memory_mb: u32,
    /// Seconds.
    pub timeout_s: u32,
    /// The start command when not the image's.
    #[serde(default)]
    pub process: fnrt_function::Process,
    /// An event function.
    #[serde(default)]
    pub event: bool,
    /// Image acceleration: agents keep the image while they run the function.
    #[serde(default)]
    pub accelerated: bool,
    /// The sandbox class its instances run in (deploys from before classes: `runc`).
    #[serde(default)]
    pub sandbox_class: SandboxClass,
}

impl std::fmt::Debug for Deployed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deployed")
            .field("image", &self.image)
            .field("version", &self.version)
            .field("env", &self.env)
            .field("secrets", &self.secrets.keys().collect::<Vec<_>>())
            .field("memory_mb", &self.memory_mb)
            .field("timeout_s", &self.timeout_s)
            .field("process", &self.process)
            .field("event", &self.event)
            .field("accelerated", &self.accelerated)
            .field("sandbox_class", &self.sandbox_class)
            .finish()
    }
}

impl Deployed {
    /// What deploying `f` of namespace `ns` puts on agents.
    pub fn of(f: &Function, ns: &Namespace) -> Deployed {
        let mut env = ns.environment_variables.clone();
        env.extend(f.environment_variables.clone());
        let mut secrets: BTreeMap<String, String> =
            ns.secrets.iter().map(|s| (s.key.clone(), s.value.clone())).collect();
        secrets.extend(f.secrets.iter().map(|s| (s.key.clone(), s.value.clone())));
        let image = match &f.pushed_digest {
            Some(digest) => format!("{}@{digest}", f.registry_image),
            None => f.registry_image.clone(),
        };
        Deployed {
            image,
            version: f.deploys.to_string(),
            env,
            secrets,
            memory_mb: f.memory_limit,
            timeout_s: f.timeout_s,
            process: f.process.clone(),
            event: f.event,
            accelerated: f.image_acceleration,
            sandbox_class: f.sandbox_class_in(ns),
        }
    }
}

impl Function {
    /// The function's name on agents: unique in the cluster, valid as an agent name.
    pub fn agent_name(&self) -> String {
        fnrt_function::naming::on_agents(&self.id)
    }

    /// The sandbox class it runs in as a function of namespace `ns`: its own, else the
    /// namespace's.
    pub fn sandbox_class_in(&self, ns: &Namespace) -> SandboxClass {
        crate::sandbox::effective(self.sandbox_class, Some(ns.sandbox_class))
    }

    /// The milli-vCPUs its memory buys by the agents' default policy (1 vCPU per 1792 MB,
    /// at least 100 milli-vCPUs; an agent configured otherwise gives what its policy says).
    pub fn cpu_limit(&self) -> u32 {
        fnrt_function::Policy::default().limits(self.memory_limit).map_or(0, |l| l.cpu_millis)
    }
}

/// A token that calls a private function (of one function, or of every function of a namespace).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Token {
    /// UUID.
    pub id: String,
    /// sha256 hex of the token; the token itself is answered once, at creation.
    pub hash: String,
    /// The function it is for, if any.
    pub function_id: Option<String>,
    /// The namespace it is for, if any.
    pub namespace_id: Option<String>,
    /// Free text.
    pub description: String,
    /// After this, refused.
    pub expires_at: Option<DateTime<Utc>>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
}

/// Hash of a token as kept.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A schedule that calls a function with `args` as the event.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Cron {
    /// UUID.
    pub id: String,
    /// The function it calls.
    pub function_id: String,
    /// Five-field UNIX cron schedule, in UTC.
    pub schedule: String,
    /// The event (a JSON object).
    pub args: serde_json::Map<String, serde_json::Value>,
    /// Its name.
    pub name: String,
    /// Creation time.
    pub created_at: DateTime<Utc>,
}

/// A trigger: messages on a NATS subject call a function, each message the event.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Trigger {
    /// UUID.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Free text.
    pub description: String,
    /// The function it calls.
    pub function_id: String,
    /// The NATS subject it listens to.
    pub subject: String,
    /// As given (the control plane's NATS server stands for every account).
    pub nats_account_id: String,
    /// As given.
    pub project_id: String,
    /// As given.
    pub region: String,
    /// Creation time.
    pub created_at: DateTime<Utc>,
}

/// A custom host name the gateway routes to a function.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Domain {
    /// UUID.
    pub id: String,
    /// The host name, lowercase.
    pub hostname: String,
    /// The function it routes to.
    pub function_id: String,
    /// Creation time.
    pub created_at: DateTime<Utc>,
}

/// Checks a host name: dot-separated labels of 1 to 63 of a-z, 0-9 and '-' (not at a
/// label's ends), at least two labels, 253 characters at most.
pub fn check_hostname(host: &str) -> Result<(), String> {
    let labels: Vec<&str> = host.split('.').collect();
    let ok = host.len() <= 253
        && labels.len() >= 2
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{host:?} is not a host name: give lowercase labels of a-z, 0-9 and '-' separated by dots, e.g. \
             api.example.com"
        ))
    }
}

/// Checks a namespace or function name (see [`fnrt_function::naming::check`]).
pub fn check_name(name: &str) -> Result<(), String> {
    fnrt_function::naming::check("name", name).map_err(|e| e.to_string())
}

/// Checks environment variable names (and that they do not collide with the built-in SCF ones).
pub fn check_env_key(key: &str) -> Result<(), String> {
    let ok = !key.is_empty()
        && key.len() <= 256
        && !key.starts_with(|c: char| c.is_ascii_digit())
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !ok {
        return Err(format!(
            "{key:?} is not a valid variable name: use 1 to 256 of A-Z, a-z, 0-9 and '_', not starting \
             with a digit"
        ));
    }
    Ok(())
}

/// Checks a memory limit against [`MEMORY_LIMITS`].
pub fn check_memory(mb: u32) -> Result<(), String> {
    if MEMORY_LIMITS.contains(&mb) {
        Ok(())
    } else {
        Err(format!("{mb} MB is not offered: memory_limit must be one of {MEMORY_LIMITS:?} (MB)"))
    }
}

/// Parses a timeout as Scaleway sends it (`"300s"`, `"1.5s"`), 1 to [`MAX_TIMEOUT_S`] seconds.
pub fn parse_timeout(text: &str) -> Result<u32, String> {
    let secs: f64 = text
        .strip_suffix('s')
        .and_then(|n| n.parse().ok())
        .filter(|n: &f64| n.is_finite())
        .ok_or_else(|| format!("{text:?} is not a duration: write seconds with an 's', e.g. \"300s\""))?;
    let whole = secs.ceil();
    if !(1.0..=f64::from(MAX_TIMEOUT_S)).contains(&whole) {
        return Err(format!("{text:?} is out of range: timeout must be 1s to {MAX_TIMEOUT_S}s"));
    }
    Ok(whole as u32)
}

/// Checks min and max scale together.
pub fn check_scale(min: u32, max: u32) -> Result<(), String> {
    if max == 0 || max > MAX_SCALE {
        return Err(format!("max_scale {max} is out of range: it must be 1 to {MAX_SCALE}"));
    }
    if min > max {
        return Err(format!("min_scale {min} is above max_scale {max}"));
    }
    Ok(())
}

/// Checks a five-field cron schedule (minute hour day-of-month month day-of-week), UTC.
pub fn parse_schedule(schedule: &str) -> Result<croner::Cron, String> {
    if schedule.split_whitespace().count() != 5 {
        return Err(format!(
            "{schedule:?} is not a cron schedule: give five fields, minute hour day-of-month month \
             day-of-week, e.g. \"*/5 * * * *\""
        ));
    }
    schedule.parse::<croner::Cron>().map_err(|e| format!("{schedule:?} is not a cron schedule: {e}"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn names_memory_timeouts_scales_and_schedules_are_checked() {
        for ok in ["a", "my-fn-2", &"a".repeat(63)] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "A", "1a", "a-", "a_b", "a.b", &"a".repeat(64)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        assert!(check_memory(256).is_ok());
        assert!(check_memory(100).unwrap_err().contains("128, 256"));
        assert_eq!(parse_timeout("300s"), Ok(300));
        assert_eq!(parse_timeout("1.5s"), Ok(2));
        assert!(parse_timeout("0s").is_err());
        assert!(parse_timeout("901s").is_err());
        assert!(parse_timeout("5m").is_err());
        assert!(check_scale(0, 1).is_ok());
        assert!(check_scale(2, 1).is_err());
        assert!(check_scale(0, 0).is_err());
        assert!(parse_schedule("*/5 * * * *").is_ok());
        assert!(parse_schedule("* * * *").is_err());
        assert!(parse_schedule("61 * * * *").is_err());
        assert!(parse_schedule("every minute").is_err());
        assert!(check_env_key("A_1").is_ok());
        assert!(check_env_key("1A").is_err());
        assert!(check_env_key("A-B").is_err());
        assert!(check_hostname("api.example.com").is_ok());
        for bad in ["localhost", "API.example.com", "-a.example.com", "a..b", "a b.com"] {
            assert!(check_hostname(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn secrets_merge_and_hash_as_argon2id_that_verifies() {
        use argon2::password_hash::{PasswordHash, PasswordVerifier};
        let mut s = vec![SecretVar::new("A".into(), "x".into()).unwrap()];
        let b = SecretVar::new("B".into(), "zq9".into()).unwrap();
        merge_secrets(&mut s, vec![("B".into(), Some(b)), ("A".into(), None), ("C".into(), None)]);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].key, "B");
        assert!(s[0].hashed_value.starts_with("$argon2id$v=19$"), "{}", s[0].hashed_value);
        assert!(!s[0].needs_rehash());
        let parsed = PasswordHash::new(&s[0].hashed_value).unwrap();
        assert!(argon2::Argon2::default().verify_password(b"zq9", &parsed).is_ok());
        assert!(argon2::Argon2::default().verify_password(b"zq8", &parsed).is_err());
        assert!(!format!("{s:?}").contains("zq9"));
        let other = SecretVar::new("B".into(), "zq9".into()).unwrap();
        assert_ne!(other.hashed_value, s[0].hashed_value, "each hash has a salt of its own");
    }
}
