//! Tokens for private functions: made once, kept as a hash, checked by the gateway.

use base64::Engine;
use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::error::Error;
use crate::model::{token_hash, Token};
use crate::state::{Change, State};

/// Scaleway's CreateTokenRequest (one of function_id or namespace_id).
#[derive(Debug, Deserialize)]
pub struct CreateToken {
    #[serde(default)]
    function_id: Option<String>,
    #[serde(default)]
    namespace_id: Option<String>,
    #[serde(default)]
    description: Option<String>,
    /// `expires_at` as the SDKs send it; `expire_at` as Scaleway's seed names it.
    #[serde(default, alias = "expire_at")]
    expires_at: Option<String>,
}

/// Parses an ISO 8601 time as the SDKs send it (with an offset, or none meaning UTC).
pub fn parse_time(field: &str, text: &str) -> Result<DateTime<Utc>, Error> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f").map(|n| n.and_utc()).map_err(|_| {
        Error::invalid(field, format!("{text:?} is not an ISO 8601 time, e.g. 2026-01-31T12:00:00Z"))
    })
}

/// Creates a token; the second value is the token itself, answered this once only.
pub async fn create(state: &State, req: CreateToken) -> Result<(Token, String), Error> {
    let (function_id, namespace_id) = match (req.function_id, req.namespace_id) {
        (Some(f), None) => (Some(f), None),
        (None, Some(n)) => (None, Some(n)),
        _ => {
            return Err(Error::invalid(
                "function_id",
                "give exactly one of function_id (a token for that function) or namespace_id (for all \
                 functions of the namespace)",
            ))
        }
    };
    let expires_at = req.expires_at.as_deref().map(|t| parse_time("expires_at", t)).transpose()?;
    if expires_at.is_some_and(|t| t <= Utc::now()) {
        return Err(Error::invalid("expires_at", "the expiry is in the past"));
    }
    let secret = format!(
        "fnrt_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
    );
    let token = Token {
        id: uuid::Uuid::new_v4().to_string(),
        hash: token_hash(&secret),
        function_id,
        namespace_id,
        description: req.description.unwrap_or_default(),
        expires_at,
        created_at: Utc::now(),
    };
    state
        .write(|d| {
            if let Some(f) = &token.function_id {
                if !crate::functions::live_in(d, f) {
                    return Err(Error::NotFound { resource: "function", id: f.clone() });
                }
            }
            if let Some(n) = &token.namespace_id {
                if !d.namespaces.contains_key(n) {
                    return Err(Error::NotFound { resource: "namespace", id: n.clone() });
                }
            }
            Ok((vec![Change::Token(token.clone())], (token.clone(), secret.clone())))
        })
        .await
}

/// The token `id` (without its secret).
pub fn get(state: &State, id: &str) -> Result<Token, Error> {
    state
        .read(|d| d.tokens.get(id).cloned())
        .ok_or_else(|| Error::NotFound { resource: "token", id: id.to_string() })
}

/// Revokes a token: it is forgotten, so the gateway refuses it from now on.
pub async fn delete(state: &State, id: &str) -> Result<Token, Error> {
    state
        .write(|d| {
            let t = d
                .tokens
                .get(id)
                .cloned()
                .ok_or_else(|| Error::NotFound { resource: "token", id: id.to_string() })?;
            Ok((vec![Change::DeleteToken(id.to_string())], t))
        })
        .await
}

/// Whether `secret` is a valid, unexpired token of function `function_id` or of its namespace.
pub fn allows(state: &State, secret: &str, function_id: &str, namespace_id: &str) -> bool {
    let hash = token_hash(secret);
    let now = Utc::now();
    state.read(|d| {
        d.tokens.values().any(|t| {
            // Hashes are compared, never the secret itself; both are fixed-length hex.
            t.hash == hash
                && t.expires_at.is_none_or(|e| e > now)
                && (t.function_id.as_deref() == Some(function_id)
                    || t.namespace_id.as_deref() == Some(namespace_id))
        })
    })
}
