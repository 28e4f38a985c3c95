//! A namespace's `registry_credentials` (extension) as requests give them:
//! `{"registry": "host[:port]", "username": "...", "password": "..."}` sets them, `null`
//! or `{}` removes them, absent leaves them as they are.

use serde_json::Value;

use crate::error::Error;
use crate::model::{RegistryCredentials, SecretVar};

const FIELD: &str = "registry_credentials";

/// The field as given, `null` included (serde would read `null` as absent).
pub fn given<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    <Value as serde::Deserialize>::deserialize(d).map(Some)
}

/// What a request says: `None` unchanged, `Some(None)` removed, `Some(Some(_))` set (the
/// password hashed).
pub async fn read(input: Option<Value>) -> Result<Option<Option<RegistryCredentials>>, Error> {
    let o = match input {
        None => return Ok(None),
        Some(Value::Null) => return Ok(Some(None)),
        Some(Value::Object(o)) if o.is_empty() => return Ok(Some(None)),
        Some(Value::Object(o)) => o,
        Some(_) => {
            return Err(Error::invalid(FIELD, "an object {registry, username, password}, or null to remove"))
        }
    };
    if let Some(k) = o.keys().find(|k| !matches!(k.as_str(), "registry" | "username" | "password")) {
        return Err(Error::invalid(
            FIELD,
            format!("unknown field {k:?}: the fields are registry, username, password"),
        ));
    }
    let text = |k: &str| o.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
    let (registry, username, password) = (text("registry"), text("username"), text("password"));
    // The agents check them the same way.
    let given = fnrt_function::PullCredentials {
        registry: registry.clone(),
        username: username.clone(),
        password: password.clone().into(),
    };
    fnrt_function::spec::check_credentials(&given).map_err(|e| Error::invalid(FIELD, e.reason))?;
    let hashed = tokio::task::spawn_blocking(move || SecretVar::new(FIELD.into(), password))
        .await
        .map_err(|e| Error::Internal(format!("hashing task failed: {e}")))?
        .map_err(Error::Internal)?;
    Ok(Some(Some(RegistryCredentials {
        registry,
        username,
        password: hashed.value,
        hashed_password: hashed.hashed_value,
    })))
}

/// Whether `a` and `b` are the same credentials (their hashes aside: each is salted).
pub fn same(a: Option<&RegistryCredentials>, b: Option<&RegistryCredentials>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => {
            (&a.registry, &a.username, &a.password) == (&b.registry, &b.username, &b.password)
        }
        _ => false,
    }
}

/// As answers show them: never the password.
pub fn view(c: Option<&RegistryCredentials>) -> Value {
    c.map_or(Value::Null, |c| {
        serde_json::json!({ "registry": c.registry, "username": c.username, "hashed_password": c.hashed_password })
    })
}
