//! Registry authentication, as registries ask for it: a `401` with a `WWW-Authenticate`
//! challenge, answered with Basic credentials or with a bearer token fetched from the
//! realm the challenge names (the Docker token protocol, which OCI registries use).
//!
//! Credentials come from a file in the format of Docker's `config.json`:
//! `{"auths": {"registry.example:5000": {"auth": "<base64 of user:password>"}}}`
//! (or `"username"` and `"password"`). They never appear in logs, errors or answers.

use std::collections::HashMap;
use std::path::Path;

use base64::Engine;

/// A user name and password for one registry (`Debug` shows no password).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    /// The user name.
    pub username: String,
    /// The password or token; secret.
    pub password: fnrt_common::secret::Secret,
}

impl Credentials {
    /// A digest that tells these credentials apart (kept in memory only: it is as good
    /// as the password for a guess checked offline).
    pub fn identity(&self) -> String {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(self.username.as_bytes());
        h.update([0]);
        h.update(self.password.expose().as_bytes());
        format!("{:x}", h.finalize())
    }

    /// The value of an `Authorization: Basic` header.
    pub fn basic_header(&self) -> String {
        let raw = format!("{}:{}", self.username, self.password.expose());
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(raw))
    }
}

/// A credentials file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("registry credentials file {path}: {reason}; expected {{\"auths\": {{\"host:port\": {{\"auth\": \"<base64 of user:password>\"}}}}}}")]
pub struct AuthFileError {
    /// The file.
    pub path: String,
    /// What is wrong (never the secret itself).
    pub reason: String,
}

/// Reads a credentials file: registry host → credentials.
pub fn load(path: &Path) -> Result<HashMap<String, Credentials>, AuthFileError> {
    let err = |reason: String| AuthFileError { path: path.display().to_string(), reason };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| err(format!("not JSON: {e}")))?;
    let auths =
        v.get("auths").and_then(|a| a.as_object()).ok_or_else(|| err("no \"auths\" object".into()))?;
    let mut out = HashMap::new();
    for (host, entry) in auths {
        let creds = if let Some(auth) = entry.get("auth").and_then(|a| a.as_str()) {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(auth)
                .map_err(|_| err(format!("the \"auth\" of {host} is not base64")))?;
            let raw =
                String::from_utf8(raw).map_err(|_| err(format!("the \"auth\" of {host} is not UTF-8")))?;
            let (u, p) = raw
                .split_once(':')
                .ok_or_else(|| err(format!("the \"auth\" of {host} is not user:password")))?;
            Credentials { username: u.into(), password: p.into() }
        } else {
            let field = |k: &str| entry.get(k).and_then(|x| x.as_str()).map(str::to_string);
            match (field("username"), field("password")) {
                (Some(username), Some(password)) => Credentials { username, password: password.into() },
                _ => {
                    return Err(err(format!("{host} has neither \"auth\" nor \"username\" and \"password\"")))
                }
            }
        };
        let host = host.trim_start_matches("https://").trim_start_matches("http://").trim_end_matches('/');
        out.insert(host.to_string(), creds);
    }
    Ok(out)
}

/// What a registry asked for in `WWW-Authenticate`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Challenge {
    /// Basic credentials.
    Basic,
    /// A bearer token from `realm`, for `service` and `scope`.
    Bearer {
        /// Where tokens are issued.
        realm: String,
        /// The service to name.
        service: Option<String>,
        /// The scope to ask for.
        scope: Option<String>,
    },
}

/// Parses a `WWW-Authenticate` header value.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let (scheme, params) = header.trim().split_once(' ').unwrap_or((header.trim(), ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let mut map = HashMap::new();
    let mut rest = params;
    while let Some((key, after)) = rest.split_once('=') {
        let key = key.trim().trim_start_matches(',').trim().to_ascii_lowercase();
        let (value, next) = if let Some(quoted) = after.strip_prefix('"') {
            let end = quoted.find('"')?;
            (&quoted[..end], &quoted[end + 1..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        map.insert(key, value.to_string());
        rest = next;
    }
    Some(Challenge::Bearer {
        realm: map.remove("realm")?,
        service: map.remove("service"),
        scope: map.remove("scope"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_and_basic_challenges() {
        let h = r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:fnrt/echo:pull""#;
        assert_eq!(
            parse_challenge(h),
            Some(Challenge::Bearer {
                realm: "https://auth.example/token".into(),
                service: Some("registry.example".into()),
                scope: Some("repository:fnrt/echo:pull".into()),
            })
        );
        assert_eq!(parse_challenge(r#"Basic realm="registry""#), Some(Challenge::Basic));
        assert_eq!(parse_challenge("Negotiate"), None);
    }

    #[test]
    fn loads_both_forms_and_never_prints_the_password() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("auth.json");
        let auth = base64::engine::general_purpose::STANDARD.encode("alice:s3cret-pw");
        let text = format!(
            r#"{{"auths": {{"https://r1.example/": {{"auth": "{auth}"}}, "r2:5000": {{"username": "bob", "password": "pw2"}}}}}}"#
        );
        std::fs::write(&path, text).expect("write");
        let creds = load(&path).expect("load");
        assert_eq!(creds["r1.example"].username, "alice");
        assert_eq!(creds["r2:5000"].password.expose(), "pw2");
        assert!(!format!("{:?}", creds["r1.example"]).contains("s3cret-pw"));

        std::fs::write(&path, r#"{"auths": {"r": {"auth": "!!"}}}"#).expect("write");
        let e = load(&path).expect_err("bad base64").to_string();
        assert!(e.contains("not base64") && e.contains("expected {\"auths\""), "{e}");
    }
}
