//! Namespaces: create, change, delete (with all their functions, tokens and crons).

use std::collections::BTreeMap;

use chrono::Utc;
use serde::Deserialize;

use crate::error::Error;
use crate::model::{check_env_key, check_name, merge_secrets, Namespace, SecretVar};
use crate::sandbox::Offered;
use crate::state::{Change, State};
use fnrt_function::SandboxClass;

pub mod credentials;

/// A secret as Scaleway's API sends it: a value sets it, none removes it.
#[derive(Debug, Clone, Deserialize)]
pub struct SecretInput {
    /// Variable name.
    pub key: String,
    /// Value; absent or null removes the key on update.
    #[serde(default)]
    pub value: Option<String>,
}

/// Checks variables and secrets; returns the problems found.
pub fn check_vars(
    env: Option<&BTreeMap<String, String>>,
    secrets: Option<&[SecretInput]>,
    errors: &mut Vec<(String, String)>,
) {
    for k in env.into_iter().flat_map(|e| e.keys()) {
        if let Err(m) = check_env_key(k) {
            errors.push(("environment_variables".into(), m));
        }
    }
    for s in secrets.unwrap_or_default() {
        if let Err(m) = check_env_key(&s.key) {
            errors.push(("secret_environment_variables".into(), m));
        }
    }
}

/// Scaleway's CreateNamespaceRequest.
#[derive(Debug, Deserialize)]
pub struct CreateNamespace {
    /// Name (generated when absent).
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    environment_variables: Option<BTreeMap<String, String>>,
    #[serde(default)]
    project_id: Option<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default, deserialize_with = "crate::json::opt_objects")]
    secret_environment_variables: Option<Vec<SecretInput>>,
    #[serde(default)]
    tags: Option<Vec<String>>,
    /// Extension: see [`credentials::read`].
    #[serde(default, deserialize_with = "credentials::given")]
    registry_credentials: Option<serde_json::Value>,
    /// Extension: the sandbox class of its functions that name none; absent, null or
    /// `""`: `runc`.
    #[serde(default)]
    sandbox_class: Option<String>,
}

/// Scaleway's UpdateNamespaceRequest.
#[derive(Debug, Deserialize)]
pub struct UpdateNamespace {
    #[serde(default)]
    environment_variables: Option<BTreeMap<String, String>>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default, deserialize_with = "crate::json::opt_objects")]
    secret_environment_variables: Option<Vec<SecretInput>>,
    #[serde(default)]
    tags: Option<Vec<String>>,
    #[serde(default, deserialize_with = "credentials::given")]
    registry_credentials: Option<serde_json::Value>,
    /// Extension: a new default sandbox class; absent, null or `""`: unchanged.
    #[serde(default)]
    sandbox_class: Option<String>,
}

/// Hashes the secrets of a request (argon2id, on a blocking thread): a key with its
/// [`SecretVar`], or none to remove it.
pub async fn hash_secrets(
    input: Option<Vec<SecretInput>>,
) -> Result<Vec<(String, Option<SecretVar>)>, Error> {
    let input = input.unwrap_or_default();
    if input.iter().all(|s| s.value.is_none()) {
        return Ok(input.into_iter().map(|s| (s.key, None)).collect());
    }
    tokio::task::spawn_blocking(move || {
        input
            .into_iter()
            .map(|s| match s.value {
                Some(v) => SecretVar::new(s.key.clone(), v).map(|h| (s.key, Some(h))),
                None => Ok((s.key, None)),
            })
            .collect::<Result<Vec<_>, String>>()
    })
    .await
    .map_err(|e| Error::Internal(format!("hashing task failed: {e}")))?
    .map_err(Error::Internal)
}

/// The sandbox class a request names, refused when unknown or when no live agent offers
/// it (`offered`); `current` is let through as it is (a client sending its whole object
/// back is not refused for the class its functions run in already).
fn sandbox_class(
    value: Option<&str>,
    current: Option<SandboxClass>,
    offered: &Offered,
    errors: &mut Vec<(String, String)>,
) -> Option<SandboxClass> {
    let class = crate::sandbox::parse(value).unwrap_or_else(|e| {
        errors.push(("sandbox_class".into(), e));
        None
    })?;
    if Some(class) != current {
        if let Err(e) = offered.check(class) {
            errors.push(("sandbox_class".into(), e));
        }
    }
    Some(class)
}

/// Creates a namespace; its default sandbox class must be one a live agent offers
/// (`offered`).
pub async fn create(state: &State, req: CreateNamespace, offered: &Offered) -> Result<Namespace, Error> {
    let name =
        req.name.clone().unwrap_or_else(|| format!("ns-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]));
    let mut errors = Vec::new();
    if let Err(m) = check_name(&name) {
        errors.push(("name".into(), m));
    }
    check_vars(req.environment_variables.as_ref(), req.secret_environment_variables.as_deref(), &mut errors);
    let class = sandbox_class(req.sandbox_class.as_deref(), None, offered, &mut errors);
    if !errors.is_empty() {
        return Err(Error::Invalid(errors));
    }
    let credentials = credentials::read(req.registry_credentials).await?;
    let now = Utc::now();
    let mut ns = Namespace {
        id: uuid::Uuid::new_v4().to_string(),
        name,
        description: req.description.unwrap_or_default(),
        project_id: req.project_id.unwrap_or_default(),
        environment_variables: req.environment_variables.unwrap_or_default(),
        secrets: Vec::new(),
        tags: req.tags.unwrap_or_default(),
        created_at: now,
        updated_at: now,
        registry_credentials: None,
        sandbox_class: class.unwrap_or_default(),
    };
    if let Some(Some(c)) = credentials {
        ns.registry_credentials = Some(c);
    }
    merge_secrets(&mut ns.secrets, hash_secrets(req.secret_environment_variables).await?);
    state
        .write(|d| {
            if let Some(n) = d.namespaces.values().find(|n| n.name == ns.name) {
                return Err(Error::AlreadyExists {
                    resource: "namespace",
                    id: n.id.clone(),
                    message: format!(
                        "a namespace named {:?} exists already (id {}): choose another name or update it",
                        ns.name, n.id
                    ),
                });
            }
            Ok((vec![Change::Namespace(ns.clone())], ns.clone()))
        })
        .await
}

/// The namespace `id`.
pub fn get(state: &State, id: &str) -> Result<Namespace, Error> {
    state
        .read(|d| d.namespaces.get(id).cloned())
        .ok_or_else(|| Error::NotFound { resource: "namespace", id: id.to_string() })
}

/// Changes a namespace; the second value says whether its variables, secrets,
/// credentials or default sandbox class changed (its deployed functions are then deployed
/// again to get them). A new default sandbox class must be one a live agent offers
/// (`offered`).
pub async fn update(
    state: &State,
    id: &str,
    req: UpdateNamespace,
    offered: &Offered,
) -> Result<(Namespace, bool), Error> {
    let mut errors = Vec::new();
    check_vars(req.environment_variables.as_ref(), req.secret_environment_variables.as_deref(), &mut errors);
    // Unknown names are refused before anything is read or hashed; whether the class is
    // offered needs the namespace's current one, below.
    if let Err(e) = crate::sandbox::parse(req.sandbox_class.as_deref()) {
        errors.push(("sandbox_class".into(), e));
    }
    if !errors.is_empty() {
        return Err(Error::Invalid(errors));
    }
    let secrets = hash_secrets(req.secret_environment_variables).await?;
    let credentials = credentials::read(req.registry_credentials).await?;
    state
        .write(|d| {
            let mut ns = d
                .namespaces
                .get(id)
                .cloned()
                .ok_or_else(|| Error::NotFound { resource: "namespace", id: id.to_string() })?;
            let before = (ns.environment_variables.clone(), ns.secrets.clone());
            let mut errors = Vec::new();
            let class =
                sandbox_class(req.sandbox_class.as_deref(), Some(ns.sandbox_class), offered, &mut errors);
            if !errors.is_empty() {
                return Err(Error::Invalid(errors));
            }
            let class_changed = class.is_some_and(|c| c != ns.sandbox_class);
            ns.sandbox_class = class.unwrap_or(ns.sandbox_class);
            if let Some(env) = req.environment_variables.clone() {
                ns.environment_variables = env;
            }
            if let Some(desc) = req.description.clone() {
                ns.description = desc;
            }
            if let Some(tags) = req.tags.clone() {
                ns.tags = tags;
            }
            merge_secrets(&mut ns.secrets, secrets.clone());
            let credentials_changed = match credentials.clone() {
                Some(c) if !credentials::same(c.as_ref(), ns.registry_credentials.as_ref()) => {
                    ns.registry_credentials = c;
                    true
                }
                _ => false,
            };
            let values =
                |s: &[SecretVar]| s.iter().map(|s| (s.key.clone(), s.value.clone())).collect::<Vec<_>>();
            let changed = before.0 != ns.environment_variables
                || values(&before.1) != values(&ns.secrets)
                || credentials_changed
                || class_changed;
            ns.updated_at = Utc::now();
            Ok((vec![Change::Namespace(ns.clone())], (ns, changed)))
        })
        .await
}

/// Deletes a namespace with its functions, their tokens and crons, in one batch.
pub async fn delete(state: &State, id: &str) -> Result<Namespace, Error> {
    state
        .write(|d| {
            let ns = d
                .namespaces
                .get(id)
                .cloned()
                .ok_or_else(|| Error::NotFound { resource: "namespace", id: id.to_string() })?;
            let functions: Vec<&String> =
                d.functions.values().filter(|f| f.namespace_id == id).map(|f| &f.id).collect();
            let mut changes = vec![Change::DeleteNamespace(id.to_string())];
            for f in &functions {
                changes.push(Change::DeleteFunction((*f).clone()));
            }
            for c in d.crons.values().filter(|c| functions.contains(&&c.function_id)) {
                changes.push(Change::DeleteCron(c.id.clone()));
            }
            for x in d.domains.values().filter(|x| functions.contains(&&x.function_id)) {
                changes.push(Change::DeleteDomain(x.id.clone()));
            }
            for t in d.triggers.values().filter(|t| functions.contains(&&t.function_id)) {
                changes.push(Change::DeleteTrigger(t.id.clone()));
            }
            for t in d.tokens.values().filter(|t| {
                t.namespace_id.as_deref() == Some(id)
                    || t.function_id.as_ref().is_some_and(|f| functions.contains(&f))
            }) {
                changes.push(Change::DeleteToken(t.id.clone()));
            }
            Ok((changes, ns))
        })
        .await
}

/// Hashes again, as argon2id, the secrets a store of an earlier version kept with another
/// hash (`sha256:`); the number of records rewritten. Run once at start.
pub async fn upgrade_secret_hashes(state: &State) -> Result<usize, Error> {
    let (mut namespaces, mut functions) = state.read(|d| {
        let ns: Vec<Namespace> = d
            .namespaces
            .values()
            .filter(|n| n.secrets.iter().any(SecretVar::needs_rehash))
            .cloned()
            .collect();
        let fs: Vec<crate::model::Function> =
            d.functions.values().filter(|f| f.secrets.iter().any(SecretVar::needs_rehash)).cloned().collect();
        (ns, fs)
    });
    if namespaces.is_empty() && functions.is_empty() {
        return Ok(0);
    }
    let rehash = |secrets: &mut Vec<SecretVar>| -> Result<(), String> {
        for s in secrets.iter_mut().filter(|s| s.needs_rehash()) {
            *s = SecretVar::new(s.key.clone(), std::mem::take(&mut s.value))?;
        }
        Ok(())
    };
    (namespaces, functions) = tokio::task::spawn_blocking(move || {
        namespaces.iter_mut().try_for_each(|n| rehash(&mut n.secrets))?;
        functions.iter_mut().try_for_each(|f| rehash(&mut f.secrets))?;
        Ok::<_, String>((namespaces, functions))
    })
    .await
    .map_err(|e| Error::Internal(format!("hashing task failed: {e}")))?
    .map_err(Error::Internal)?;
    let n = namespaces.len() + functions.len();
    state
        .write(|d| {
            // Only records still there and unchanged since they were read.
            let mut changes = Vec::new();
            for ns in namespaces.iter().cloned() {
                if d.namespaces.get(&ns.id).is_some_and(|o| o.updated_at == ns.updated_at) {
                    changes.push(Change::Namespace(ns));
                }
            }
            for f in functions.iter().cloned() {
                if d.functions.get(&f.id).is_some_and(|o| o.updated_at == f.updated_at) {
                    changes.push(Change::Function(f));
                }
            }
            Ok((changes, ()))
        })
        .await?;
    tracing::info!(records = n, "secret hashes of an earlier version made again as argon2id");
    Ok(n)
}
