//! An instance's environment: the function's variables and secrets, checked, and the
//! built-in SCF variables the platform sets (which a function cannot override).
//!
//! Secret values only ever go into the OCI spec given to containerd; they are kept in a
//! type whose `Debug` prints no value, so no log line or error can carry one.

use std::collections::BTreeMap;

/// Names the platform sets on every instance.
pub const BUILT_IN: &[&str] = &[
    "TENCENTCLOUD_RUNENV",
    "USER_CODE_ROOT",
    "USER",
    "SCF_FUNCTIONNAME",
    "SCF_FUNCTIONVERSION",
    "SCF_NAMESPACE",
    "TENCENTCLOUD_REGION",
    "TENCENTCLOUD_APPID",
    "TENCENTCLOUD_UIN",
];

/// Who the node runs functions for, from the agent's config.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Identity {
    /// Region name (`TENCENTCLOUD_REGION`).
    pub region: String,
    /// Account app id (`TENCENTCLOUD_APPID`).
    pub appid: String,
    /// Account uin (`TENCENTCLOUD_UIN`).
    pub uin: String,
}

pub use fnrt_common::secret::Secrets;

/// A variable that cannot be set.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvError {
    /// Not a valid name.
    #[error("environment variable name {0:?} is not valid: use letters, digits and '_', not starting with a digit")]
    BadName(String),
    /// A name the platform sets.
    #[error("environment variable {0} is set by the platform and cannot be overridden")]
    BuiltIn(String),
    /// A name given both as a variable and as a secret.
    #[error("{0} is given both as a variable and as a secret; give it once")]
    Twice(String),
    /// A value with a NUL byte (names it, never shows the value).
    #[error("the value of {0} contains a NUL byte")]
    Nul(String),
}

/// The environment of an instance of `function` at `version` in `namespace`: the
/// function's variables and secrets, then the built-in ones.
pub fn build(
    identity: &Identity,
    function: &str,
    version: &str,
    namespace: &str,
    vars: &BTreeMap<String, String>,
    secrets: &Secrets,
) -> Result<BTreeMap<String, String>, EnvError> {
    let mut env = BTreeMap::new();
    for (k, v) in vars.iter().chain(&secrets.0) {
        check(k, v)?;
        if env.insert(k.clone(), v.clone()).is_some() {
            return Err(EnvError::Twice(k.clone()));
        }
    }
    let built_in = [
        ("TENCENTCLOUD_RUNENV", "SCF"),
        ("USER_CODE_ROOT", "/var/user/"),
        ("USER", "qcloud"),
        ("SCF_FUNCTIONNAME", function),
        ("SCF_FUNCTIONVERSION", version),
        ("SCF_NAMESPACE", namespace),
        ("TENCENTCLOUD_REGION", &identity.region),
        ("TENCENTCLOUD_APPID", &identity.appid),
        ("TENCENTCLOUD_UIN", &identity.uin),
    ];
    env.extend(built_in.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    Ok(env)
}

fn check(name: &str, value: &str) -> Result<(), EnvError> {
    let valid = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        return Err(EnvError::BadName(name.into()));
    }
    if BUILT_IN.contains(&name) {
        return Err(EnvError::BuiltIn(name.into()));
    }
    if value.contains('\0') {
        return Err(EnvError::Nul(name.into()));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn id() -> Identity {
        Identity { region: "ap-local".into(), appid: "1250000000".into(), uin: "100000000001".into() }
    }

    #[test]
    fn variables_secrets_and_built_ins_are_all_there() {
        let vars = BTreeMap::from([("GREETING".to_string(), "hi".to_string())]);
        let secrets = Secrets(BTreeMap::from([("API_KEY".to_string(), "s3cret".to_string())]));
        let env = build(&id(), "echo", "$LATEST", "default", &vars, &secrets).unwrap();
        assert_eq!(env["GREETING"], "hi");
        assert_eq!(env["API_KEY"], "s3cret");
        assert_eq!(env["TENCENTCLOUD_RUNENV"], "SCF");
        assert_eq!(env["USER_CODE_ROOT"], "/var/user/");
        assert_eq!(env["SCF_FUNCTIONNAME"], "echo");
        assert_eq!(env["TENCENTCLOUD_UIN"], "100000000001");
        for name in BUILT_IN {
            assert!(env.contains_key(*name), "{name}");
        }
    }

    #[test]
    fn bad_names_built_ins_and_repeats_are_refused_without_the_value() {
        let none = Secrets::default();
        let one = |k: &str, v: &str| BTreeMap::from([(k.to_string(), v.to_string())]);
        let e = build(&id(), "f", "1", "d", &one("1X", "v"), &none).unwrap_err();
        assert!(matches!(e, EnvError::BadName(_)));
        let e = build(&id(), "f", "1", "d", &one("USER", "v"), &none).unwrap_err();
        assert_eq!(
            e.to_string(),
            "environment variable USER is set by the platform and cannot be overridden"
        );
        let secrets = Secrets(one("K", "hidden-value"));
        let e = build(&id(), "f", "1", "d", &one("K", "x"), &secrets).unwrap_err();
        assert!(!e.to_string().contains("hidden-value"));
        let e = build(&id(), "f", "1", "d", &BTreeMap::new(), &Secrets(one("K", "a\0hidden"))).unwrap_err();
        assert!(!e.to_string().contains("hidden"));
        assert!(!format!("{secrets:?}").contains("hidden-value"));
    }
}
