//! Functions: create, change, delete, and the start of a deploy (the scheduler does the rest).

use std::collections::BTreeMap;

use chrono::Utc;
use serde::Deserialize;

use crate::error::Error;
use crate::model::{
    check_memory, check_name, check_scale, merge_secrets, parse_timeout, Function, FunctionStatus, Namespace,
};
use crate::namespaces::{check_vars, hash_secrets, SecretInput};
use crate::sandbox::Offered;
use crate::state::{Change, State};

/// Defaults of Scaleway: 0 to 20 instances, 256 MB, 300 s, public.
const DEFAULT_MAX_SCALE: u32 = 20;
const DEFAULT_MEMORY: u32 = 256;
const DEFAULT_TIMEOUT_S: u32 = 300;

/// The fields of Scaleway's Create/UpdateFunctionRequest, plus `registry_image` and
/// `image_acceleration` for image functions.
#[derive(Debug, Default, Clone, Deserialize)]
pub struct FunctionInput {
    /// Name (create only; generated when absent).
    #[serde(default)]
    pub name: Option<String>,
    /// Namespace (create only).
    #[serde(default)]
    pub namespace_id: Option<String>,
    #[serde(default)]
    environment_variables: Option<BTreeMap<String, String>>,
    #[serde(default)]
    min_scale: Option<u32>,
    #[serde(default)]
    max_scale: Option<u32>,
    #[serde(default)]
    runtime: Option<String>,
    #[serde(default)]
    memory_limit: Option<u32>,
    #[serde(default)]
    timeout: Option<String>,
    #[serde(default)]
    handler: Option<String>,
    #[serde(default)]
    privacy: Option<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default, deserialize_with = "crate::json::opt_objects")]
    secret_environment_variables: Option<Vec<SecretInput>>,
    #[serde(default)]
    http_option: Option<String>,
    #[serde(default)]
    tags: Option<Vec<String>>,
    #[serde(default)]
    registry_image: Option<String>,
    #[serde(default)]
    image_acceleration: Option<bool>,
    #[serde(default)]
    sandbox: Option<String>,
    /// Extension: the start command (replaces the image's Entrypoint and Cmd).
    #[serde(default)]
    command: Option<Vec<String>>,
    /// Extension: its arguments (replace the image's Cmd).
    #[serde(default)]
    args: Option<Vec<String>>,
    /// Extension: `"http"` (the default) or `"event"` (SCF's function types).
    #[serde(default)]
    scf_type: Option<String>,
    #[serde(default)]
    private_network_id: Option<String>,
    /// Extension: the sandbox class, `"runc"` or `"gvisor"`; absent, null or `""`: its
    /// namespace's (on update: unchanged).
    #[serde(default)]
    sandbox_class: Option<String>,
    /// Update only: deploy after the change.
    #[serde(default)]
    pub redeploy: Option<bool>,
}

/// A Scaleway enum as sent: its zero value `unknown_*` (what the Go SDK sends for a field
/// left unset) and an empty string mean "not set".
fn enum_value(value: Option<String>, zero: &str) -> Option<String> {
    value.filter(|v| !v.is_empty() && v != zero)
}

fn one_of(field: &str, value: &Option<String>, allowed: &[&str], errors: &mut Vec<(String, String)>) {
    if let Some(v) = value {
        if !allowed.contains(&v.as_str()) {
            errors.push((field.into(), format!("{v:?} is not allowed: use one of {allowed:?}")));
        }
    }
}

/// Applies `input` onto `f`, collecting every problem.
/// Refuses a `registry_image` that is not a reference, or whose registry `registry`'s
/// policy does not allow (`allowed_registries`).
pub fn check_image(registry: &fnrt_registry::Registry, input: &FunctionInput) -> Result<(), Error> {
    let Some(image) = input.registry_image.as_deref().filter(|i| !i.is_empty()) else { return Ok(()) };
    let image =
        fnrt_registry::ImageRef::parse(image).map_err(|e| Error::invalid("registry_image", e.to_string()))?;
    registry.allows(&image).map_err(|e| Error::invalid("registry_image", e.to_string()))
}

fn apply(f: &mut Function, mut input: FunctionInput, secrets: Secrets) -> Result<(), Error> {
    input.privacy = enum_value(input.privacy, "unknown_privacy");
    input.http_option = enum_value(input.http_option, "unknown_http_option");
    input.runtime = enum_value(input.runtime, "unknown_runtime");
    input.sandbox = enum_value(input.sandbox, "unknown_sandbox");
    // Request objects marshalled whole carry 0 for numbers left unset; 0 MB or a
    // max_scale of 0 is no setting anyone could mean.
    input.memory_limit = input.memory_limit.filter(|m| *m != 0);
    input.max_scale = input.max_scale.filter(|m| *m != 0);
    let mut errors = Vec::new();
    if input.private_network_id.as_deref().is_some_and(|p| !p.is_empty()) {
        errors.push((
            "private_network_id".into(),
            "private networks are not offered by this control plane: leave private_network_id unset".into(),
        ));
    }
    check_vars(
        input.environment_variables.as_ref(),
        input.secret_environment_variables.as_deref(),
        &mut errors,
    );
    one_of("privacy", &input.privacy, &["public", "private"], &mut errors);
    one_of("http_option", &input.http_option, &["enabled", "redirected"], &mut errors);
    one_of("sandbox", &input.sandbox, &["v1", "v2"], &mut errors);
    one_of("runtime", &input.runtime, &crate::runtimes::names(), &mut errors);
    input.scf_type = enum_value(input.scf_type, "unknown_scf_type");
    one_of("scf_type", &input.scf_type, &["http", "event"], &mut errors);
    if let Some(m) = input.memory_limit {
        if let Err(e) = check_memory(m) {
            errors.push(("memory_limit".into(), e));
        }
    }
    let timeout = match input.timeout.as_deref().map(parse_timeout) {
        Some(Err(e)) => {
            errors.push(("timeout".into(), e));
            None
        }
        Some(Ok(t)) => Some(t),
        None => None,
    };
    let (min, max) = (input.min_scale.unwrap_or(f.min_scale), input.max_scale.unwrap_or(f.max_scale));
    if let Err(e) = check_scale(min, max) {
        errors.push((if min > max { "min_scale" } else { "max_scale" }.into(), e));
    }
    let process = check_image_and_process(f, &mut input, &mut errors);
    let class = crate::sandbox::parse(input.sandbox_class.as_deref()).unwrap_or_else(|e| {
        errors.push(("sandbox_class".into(), e));
        None
    });
    if !errors.is_empty() {
        return Err(Error::Invalid(errors));
    }
    if class.is_some() {
        f.sandbox_class = class;
    }
    f.process = process;
    if let Some(kind) = &input.scf_type {
        f.event = kind == "event";
    }
    if let Some(v) = input.environment_variables {
        f.environment_variables = v;
    }
    merge_secrets(&mut f.secrets, secrets);
    f.min_scale = min;
    f.max_scale = max;
    f.memory_limit = input.memory_limit.unwrap_or(f.memory_limit);
    f.timeout_s = timeout.unwrap_or(f.timeout_s);
    f.privacy = input.privacy.unwrap_or(std::mem::take(&mut f.privacy));
    f.http_option = input.http_option.unwrap_or(std::mem::take(&mut f.http_option));
    f.runtime = input.runtime.unwrap_or(std::mem::take(&mut f.runtime));
    f.sandbox = input.sandbox.unwrap_or(std::mem::take(&mut f.sandbox));
    f.handler = input.handler.unwrap_or(std::mem::take(&mut f.handler));
    f.description = input.description.unwrap_or(std::mem::take(&mut f.description));
    f.tags = input.tags.unwrap_or(std::mem::take(&mut f.tags));
    if let Some(image) = input.registry_image {
        if image != f.registry_image {
            // A new image: the digest seen for the old one's tag no longer applies.
            f.pushed_digest = None;
        }
        f.registry_image = image;
    }
    f.image_acceleration = input.image_acceleration.unwrap_or(f.image_acceleration);
    f.updated_at = Utc::now();
    Ok(())
}

/// Checks the image reference given, and the start command as it will be; the latter.
fn check_image_and_process(
    f: &Function,
    input: &mut FunctionInput,
    errors: &mut Vec<(String, String)>,
) -> fnrt_function::Process {
    if let Some(image) = &input.registry_image {
        if image.is_empty() || image.len() > 512 || image.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            errors.push((
                "registry_image".into(),
                format!("{image:?} is not an image reference: give host/repository:tag or @sha256:<digest>"),
            ));
        }
    }
    let process = fnrt_function::Process {
        command: input.command.take().unwrap_or_else(|| f.process.command.clone()),
        args: input.args.take().unwrap_or_else(|| f.process.args.clone()),
    };
    if let Err(e) = process.check() {
        errors.push((e.field.into(), e.reason));
    }
    process
}

/// A request's secrets, hashed (see `namespaces::hash_secrets`).
type Secrets = Vec<(String, Option<crate::model::SecretVar>)>;

/// Refuses `f` with image acceleration when its namespace has `max` accelerated
/// functions besides it already.
fn check_acceleration(d: &crate::state::Data, f: &Function, max: u32) -> Result<(), Error> {
    if !f.image_acceleration {
        return Ok(());
    }
    let others = d
        .functions
        .values()
        .filter(|o| o.namespace_id == f.namespace_id && o.id != f.id && o.image_acceleration)
        .filter(|o| o.status != FunctionStatus::Deleting)
        .count();
    if others >= max as usize {
        return Err(Error::invalid(
            "image_acceleration",
            format!(
                "namespace {} has {others} functions with image acceleration, the most allowed \
                 (max_accelerated_functions): turn it off on one first",
                f.namespace_id
            ),
        ));
    }
    Ok(())
}

/// Refuses the sandbox class `f` runs in as a function of `ns` when no live agent offers
/// it (`offered`).
fn check_class(f: &Function, ns: &Namespace, offered: &Offered) -> Result<(), Error> {
    offered.check(f.sandbox_class_in(ns)).map_err(|mut m| {
        if f.sandbox_class.is_none() {
            m.push_str(&format!(
                " (the default of namespace {}: give the function a sandbox_class, or change the namespace's)",
                ns.name
            ));
        }
        Error::invalid("sandbox_class", m)
    })
}

/// Creates a function (status `created`; nothing runs until it is deployed); at most
/// `accelerated_max` of a namespace's functions have image acceleration; its sandbox
/// class must be one a live agent offers (`offered`).
pub async fn create(
    state: &State,
    mut input: FunctionInput,
    accelerated_max: u32,
    offered: &Offered,
) -> Result<Function, Error> {
    let namespace_id = input
        .namespace_id
        .take()
        .ok_or_else(|| Error::invalid("namespace_id", "a function needs its namespace_id"))?;
    let name = input
        .name
        .take()
        .unwrap_or_else(|| format!("fn-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]));
    check_name(&name).map_err(|m| Error::invalid("name", m))?;
    let now = Utc::now();
    let mut f = Function {
        id: uuid::Uuid::new_v4().to_string(),
        name,
        namespace_id,
        description: String::new(),
        registry_image: String::new(),
        image_acceleration: false,
        environment_variables: BTreeMap::new(),
        secrets: Vec::new(),
        min_scale: 0,
        max_scale: DEFAULT_MAX_SCALE,
        memory_limit: DEFAULT_MEMORY,
        timeout_s: DEFAULT_TIMEOUT_S,
        privacy: "public".into(),
        http_option: "enabled".into(),
        runtime: "unknown_runtime".into(),
        sandbox: "v2".into(),
        handler: String::new(),
        tags: Vec::new(),
        status: FunctionStatus::Created,
        error_message: None,
        deploys: 0,
        created_at: now,
        updated_at: now,
        ready_at: None,
        deployed: None,
        pushed_digest: None,
        code_digest: None,
        build_message: None,
        process: Default::default(),
        runtime_message: None,
        event: false,
        sandbox_class: None,
    };
    let secrets = hash_secrets(input.secret_environment_variables.clone()).await?;
    apply(&mut f, input, secrets)?;
    state
        .write(|d| {
            let Some(ns) = d.namespaces.get(&f.namespace_id) else {
                return Err(Error::NotFound { resource: "namespace", id: f.namespace_id.clone() });
            };
            let namespace = ns.name.clone();
            check_class(&f, ns, offered)?;
            if let Some(o) = d.functions.values().find(|o| o.namespace_id == f.namespace_id && o.name == f.name)
            {
                return Err(Error::AlreadyExists {
                    resource: "function",
                    id: o.id.clone(),
                    message: format!(
                        "a function named {:?} exists already in namespace {} (id {}): choose another name or update it",
                        f.name, f.namespace_id, o.id
                    ),
                });
            }
            check_host(d, &namespace, &f.name)?;
            check_acceleration(d, &f, accelerated_max)?;
            Ok((vec![Change::Function(f.clone())], f.clone()))
        })
        .await
}

/// Refuses a function whose gateway host label, `<namespace>-<function>`, would be longer
/// than a DNS label (63) or the same as another function's (`a-b` + `c` and `a` + `b-c`).
fn check_host(d: &crate::state::Data, namespace: &str, name: &str) -> Result<(), Error> {
    let label = format!("{namespace}-{name}");
    if label.len() > 63 {
        let why = format!(
            "the function's host label {label:?} would be {} characters; namespace and function names \
             together may have 62 (a DNS label holds 63)",
            label.len()
        );
        return Err(Error::invalid("name", why));
    }
    let clash = d.functions.values().find(|o| {
        d.namespaces.get(&o.namespace_id).is_some_and(|n| format!("{}-{}", n.name, o.name) == label)
    });
    match clash {
        Some(o) => Err(Error::AlreadyExists {
            resource: "function",
            id: o.id.clone(),
            message: format!(
                "function {} already answers on the host label {label:?} (namespace and function names \
                 joined by '-'): choose another name",
                o.id
            ),
        }),
        None => Ok(()),
    }
}

/// The function `id`.
pub fn get(state: &State, id: &str) -> Result<Function, Error> {
    state
        .read(|d| d.functions.get(id).cloned())
        .ok_or_else(|| Error::NotFound { resource: "function", id: id.to_string() })
}

/// Changes a function. Scales apply at once to a deployed function; the image,
/// variables, memory, timeout and sandbox class at the next deploy (`redeploy: true`
/// starts it). A change of sandbox class must be to one a live agent offers (`offered`).
pub async fn update(
    state: &State,
    id: &str,
    input: FunctionInput,
    accelerated_max: u32,
    offered: &Offered,
) -> Result<(Function, bool), Error> {
    let redeploy = input.redeploy.unwrap_or(false);
    if input.name.is_some() || input.namespace_id.is_some() {
        return Err(Error::invalid("name", "a function's name and namespace_id cannot change"));
    }
    let secrets = hash_secrets(input.secret_environment_variables.clone()).await?;
    state
        .write(|d| {
            let mut f = d
                .functions
                .get(id)
                .cloned()
                .ok_or_else(|| Error::NotFound { resource: "function", id: id.to_string() })?;
            not_deleting(&f)?;
            let before = f.sandbox_class;
            apply(&mut f, input.clone(), secrets.clone())?;
            if let Some(ns) = d.namespaces.get(&f.namespace_id) {
                // Only a change is checked: a client sending its whole object back is not
                // refused for a class it runs in already.
                if crate::sandbox::effective(before, Some(ns.sandbox_class)) != f.sandbox_class_in(ns) {
                    check_class(&f, ns, offered)?;
                }
            }
            check_acceleration(d, &f, accelerated_max)?;
            Ok((vec![Change::Function(f.clone())], (f, redeploy)))
        })
        .await
}

/// Refuses a change to `f` while it is being deleted.
fn not_deleting(f: &Function) -> Result<(), Error> {
    if f.status == FunctionStatus::Deleting {
        return Err(Error::TransientState { resource: "function", id: f.id.clone(), state: "deleting" });
    }
    Ok(())
}

/// Whether function `id` exists and is not being deleted (what may refer to it).
pub fn live_in(d: &crate::state::Data, id: &str) -> bool {
    d.functions.get(id).is_some_and(|f| f.status != FunctionStatus::Deleting)
}

/// The function `id`, unless it is being deleted (for what would change or call it).
pub fn get_live(state: &State, id: &str) -> Result<Function, Error> {
    let f = get(state, id)?;
    not_deleting(&f)?;
    Ok(f)
}

/// Deletes a function: its tokens, crons, domains and triggers at once; the function is
/// `deleting` until the scheduler has taken it off every agent, then gone.
pub async fn delete(state: &State, id: &str) -> Result<Function, Error> {
    state
        .write(|d| {
            let mut f = d
                .functions
                .get(id)
                .cloned()
                .ok_or_else(|| Error::NotFound { resource: "function", id: id.to_string() })?;
            f.status = FunctionStatus::Deleting;
            f.updated_at = Utc::now();
            let mut changes = vec![Change::Function(f.clone())];
            changes.extend(
                d.crons.values().filter(|c| c.function_id == id).map(|c| Change::DeleteCron(c.id.clone())),
            );
            changes.extend(
                d.domains
                    .values()
                    .filter(|x| x.function_id == id)
                    .map(|x| Change::DeleteDomain(x.id.clone())),
            );
            changes.extend(
                d.triggers
                    .values()
                    .filter(|t| t.function_id == id)
                    .map(|t| Change::DeleteTrigger(t.id.clone())),
            );
            changes.extend(
                d.tokens
                    .values()
                    .filter(|t| t.function_id.as_deref() == Some(id))
                    .map(|t| Change::DeleteToken(t.id.clone())),
            );
            Ok((changes, f))
        })
        .await
}

/// Marks a deploy as started (status `pending`); refused without an image (or, for a code
/// function, `has_code` false) or while one runs.
pub async fn start_deploy(
    state: &State,
    id: &str,
    has_code: impl Fn(&Function) -> bool,
) -> Result<Function, Error> {
    state
        .write(|d| {
            let mut f = d
                .functions
                .get(id)
                .cloned()
                .ok_or_else(|| Error::NotFound { resource: "function", id: id.to_string() })?;
            if f.registry_image.is_empty() && !has_code(&f) {
                return Err(Error::Precondition(format!(
                    "function {id} has nothing to deploy: set a registry_image, or give it runtime python311 \
                     or custom and upload its code to the upload-url"
                )));
            }
            not_deleting(&f)?;
            if f.status == FunctionStatus::Pending {
                return Err(Error::TransientState {
                    resource: "function",
                    id: id.to_string(),
                    state: "pending",
                });
            }
            f.status = FunctionStatus::Pending;
            f.error_message = None;
            f.deploys += 1;
            f.updated_at = Utc::now();
            Ok((vec![Change::Function(f.clone())], f.clone()))
        })
        .await
}
