//! Namespaces: create, change, delete (with all their functions, tokens and crons).

use std::collections::BTreeMap;

use chrono::Utc;
use serde::Deserialize;

use crate::error::Error;
use crate::model::{check_env_key, check_name, merge_secrets, Namespace};
use crate::state::{Change, State};

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
    #[serde(default)]
    secret_environment_variables: Option<Vec<SecretInput>>,
    #[serde(default)]
    tags: Option<Vec<String>>,
}

/// Scaleway's UpdateNamespaceRequest.
#[derive(Debug, Deserialize)]
pub struct UpdateNamespace {
    #[serde(default)]
    environment_variables: Option<BTreeMap<String, String>>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    secret_environment_variables: Option<Vec<SecretInput>>,
    #[serde(default)]
    tags: Option<Vec<String>>,
}

fn secrets_of(input: Option<Vec<SecretInput>>) -> Vec<(String, Option<String>)> {
    input.unwrap_or_default().into_iter().map(|s| (s.key, s.value)).collect()
}

/// Creates a namespace.
pub async fn create(state: &State, req: CreateNamespace) -> Result<Namespace, Error> {
    let name =
        req.name.clone().unwrap_or_else(|| format!("ns-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]));
    let mut errors = Vec::new();
    if let Err(m) = check_name(&name) {
        errors.push(("name".into(), m));
    }
    check_vars(req.environment_variables.as_ref(), req.secret_environment_variables.as_deref(), &mut errors);
    if !errors.is_empty() {
        return Err(Error::Invalid(errors));
    }
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
    };
    merge_secrets(&mut ns.secrets, secrets_of(req.secret_environment_variables));
    state
        .write(|d| {
            if d.namespaces.values().any(|n| n.name == ns.name) {
                return Err(Error::Conflict {
                    resource: "namespace",
                    message: format!("a namespace named {:?} exists already", ns.name),
                });
            }
            Ok((vec![Change::Namespace(ns.clone())], ns))
        })
        .await
}

/// The namespace `id`.
pub fn get(state: &State, id: &str) -> Result<Namespace, Error> {
    state
        .read(|d| d.namespaces.get(id).cloned())
        .ok_or_else(|| Error::NotFound { resource: "namespace", id: id.to_string() })
}

/// Changes a namespace; its functions get the new variables at their next deploy.
pub async fn update(state: &State, id: &str, req: UpdateNamespace) -> Result<Namespace, Error> {
    let mut errors = Vec::new();
    check_vars(req.environment_variables.as_ref(), req.secret_environment_variables.as_deref(), &mut errors);
    if !errors.is_empty() {
        return Err(Error::Invalid(errors));
    }
    state
        .write(|d| {
            let mut ns = d
                .namespaces
                .get(id)
                .cloned()
                .ok_or_else(|| Error::NotFound { resource: "namespace", id: id.to_string() })?;
            if let Some(env) = req.environment_variables {
                ns.environment_variables = env;
            }
            if let Some(desc) = req.description {
                ns.description = desc;
            }
            if let Some(tags) = req.tags {
                ns.tags = tags;
            }
            merge_secrets(&mut ns.secrets, secrets_of(req.secret_environment_variables));
            ns.updated_at = Utc::now();
            Ok((vec![Change::Namespace(ns.clone())], ns))
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
