//! The JSON shapes of Scaleway's Functions v1beta1 API, made from the stored records.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};

use crate::model::{Cron, Domain, Function, FunctionStatus, Namespace, SecretVar, Token, Trigger};

/// Times as the API gives them: RFC 3339 / ISO 8601 in UTC.
pub fn time(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn secrets(s: &[SecretVar]) -> Value {
    s.iter().map(|s| json!({ "key": s.key, "hashed_value": s.hashed_value })).collect()
}

/// What a view needs besides the record.
pub struct Site<'a> {
    /// The region served.
    pub region: &'a str,
    /// The gateway's domain (function endpoints are `<namespace>-<function>.<domain>`).
    pub domain: &'a str,
    /// The registry namespaces' endpoint prefix.
    pub registry: &'a str,
}

/// A namespace.
pub fn namespace(n: &Namespace, site: &Site, status: &str) -> Value {
    json!({
        "id": n.id,
        "name": n.name,
        "environment_variables": n.environment_variables,
        "organization_id": n.project_id,
        "project_id": n.project_id,
        "status": status,
        "registry_namespace_id": n.id,
        "error_message": null,
        "registry_endpoint": format!("{}/{}", site.registry, n.name),
        "description": n.description,
        "secret_environment_variables": secrets(&n.secrets),
        "region": site.region,
        "tags": n.tags,
        "created_at": time(&n.created_at),
        "updated_at": time(&n.updated_at),
        "vpc_integration_activated": false,
        "registry_credentials": crate::namespaces::credentials::view(n.registry_credentials.as_ref()),
        "sandbox_class": n.sandbox_class,
    })
}

/// A function's status as the API names it.
pub fn status(f: &Function) -> &'static str {
    match f.status {
        FunctionStatus::Created => "created",
        FunctionStatus::Pending => "pending",
        FunctionStatus::Ready => "ready",
        FunctionStatus::Error => "error",
        FunctionStatus::Deleting => "deleting",
    }
}

/// A function; `namespace_name` makes its domain name, `class` is the sandbox class it
/// runs in (its own, or its namespace's default).
pub fn function(
    f: &Function,
    namespace_name: &str,
    class: fnrt_function::SandboxClass,
    site: &Site,
    status: Option<&str>,
) -> Value {
    let status = status.unwrap_or(self::status(f));
    json!({
        "id": f.id,
        "name": f.name,
        "namespace_id": f.namespace_id,
        "status": status,
        "environment_variables": f.environment_variables,
        "min_scale": f.min_scale,
        "max_scale": f.max_scale,
        "runtime": f.runtime,
        "memory_limit": f.memory_limit,
        "cpu_limit": f.cpu_limit(),
        "timeout": format!("{}s", f.timeout_s),
        "handler": f.handler,
        "error_message": f.error_message,
        "build_message": f.build_message,
        "privacy": f.privacy,
        "description": f.description,
        "domain_name": format!("{namespace_name}-{}.{}", f.name, site.domain),
        "secret_environment_variables": secrets(&f.secrets),
        "region": site.region,
        "http_option": f.http_option,
        "runtime_message": f.runtime_message.as_deref().unwrap_or_default(),
        "sandbox": f.sandbox,
        "tags": f.tags,
        "created_at": time(&f.created_at),
        "updated_at": time(&f.updated_at),
        "ready_at": f.ready_at.as_ref().map(time),
        "private_network_id": null,
        "registry_image": f.registry_image,
        "image_acceleration": f.image_acceleration,
        "scf_type": if f.event { "event" } else { "http" },
        "command": f.process.command,
        "args": f.process.args,
        "sandbox_class": class,
    })
}

/// A token; `secret` only in the answer to its creation.
pub fn token(t: &Token, secret: Option<&str>, status: &str) -> Value {
    json!({
        "id": t.id,
        "token": secret,
        "function_id": t.function_id,
        "namespace_id": t.namespace_id,
        "public_key": null,
        "status": status,
        "description": t.description,
        "expires_at": t.expires_at.as_ref().map(time),
        "created_at": time(&t.created_at),
    })
}

/// A cron; `error` is why its last run failed (then its status is `error`), an
/// extension field `error_message` as a trigger's.
pub fn cron(c: &Cron, status: &str, error: Option<String>) -> Value {
    let status = if status == "ready" && error.is_some() { "error" } else { status };
    json!({
        "id": c.id,
        "function_id": c.function_id,
        "schedule": c.schedule,
        "args": c.args,
        "status": status,
        "name": c.name,
        "error_message": error,
    })
}

/// A custom domain (served over HTTP by the gateway; no certificate is made).
pub fn domain(x: &Domain, status: &str) -> Value {
    json!({
        "id": x.id,
        "hostname": x.hostname,
        "function_id": x.function_id,
        "url": format!("http://{}", x.hostname),
        "status": status,
        "error_message": null,
    })
}

/// A NATS trigger; `error` is its last delivery failure, if any.
pub fn trigger(t: &Trigger, error: Option<String>, deleting: bool) -> Value {
    let status = if deleting {
        "deleting"
    } else if error.is_some() {
        "error"
    } else {
        "ready"
    };
    json!({
        "id": t.id,
        "name": t.name,
        "description": t.description,
        "function_id": t.function_id,
        "input_type": "scw_nats",
        "status": status,
        "error_message": error,
        "scw_nats_config": {
            "subject": t.subject,
            "mnq_nats_account_id": t.nats_account_id,
            "mnq_project_id": t.project_id,
            "mnq_region": t.region,
            "mnq_credential_id": null,
        },
        "scw_sqs_config": null,
        "sqs_config": null,
    })
}
