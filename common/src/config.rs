//! The layered configuration loader every fnrt binary uses: a struct's defaults, then a
//! TOML file, then `<PREFIX><KEY>` environment variables, then `--set key=value` flags.
//!
//! Keys are the struct's own serde fields, so each is declared once (with its default
//! beside it, e.g. with `smart_default`); the struct's `deny_unknown_fields` refuses keys
//! it does not have. Text from the environment and flags takes the type of the key's
//! default (a number, a boolean, a comma-separated list, else a string). Every bad
//! variable is reported, not just the first.

use serde::de::DeserializeOwned;
use serde::Serialize;
use std::path::Path;

/// Every problem found while loading a configuration, reported together.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  {}", .0.join("\n  "))]
pub struct ConfigError(pub Vec<String>);

impl ConfigError {
    /// An error of one problem.
    pub fn one(problem: impl Into<String>) -> ConfigError {
        ConfigError(vec![problem.into()])
    }

    /// `Ok` when `problems` is empty, else all of them.
    pub fn check(problems: Vec<String>) -> Result<(), ConfigError> {
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError(problems))
        }
    }
}

/// `defaults`, then `file`, then the variables of `env` named `<prefix><KEY>`.
pub fn load<T: Serialize + DeserializeOwned>(
    defaults: &T,
    file: Option<&Path>,
    prefix: &str,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<T, ConfigError> {
    let mut table = to_table(defaults)?;
    if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::one(format!("{}: {e}", path.display())))?;
        let from_file: toml::Table = toml::from_str(&text)
            .map_err(|e| ConfigError::one(format!("{}: {}", path.display(), e.message())))?;
        table.extend(from_file);
        from_table::<T>(&table).map_err(|e| ConfigError::one(format!("{}: {e}", path.display())))?;
    }
    let mut problems = Vec::new();
    for (name, value) in env {
        let Some(key) = name.strip_prefix(prefix) else { continue };
        let key = key.to_ascii_lowercase();
        match with_key::<T>(&table, &key, &value) {
            Ok(t) => table = t,
            Err(e) => problems.push(format!("{name}: {e}")),
        }
    }
    ConfigError::check(problems)?;
    from_table(&table).map_err(ConfigError::one)
}

/// `config` with `key` set from `text` (as a flag or variable gives it).
pub fn set<T: Serialize + DeserializeOwned>(config: &mut T, key: &str, text: &str) -> Result<(), String> {
    let table = to_table(config).map_err(|e| e.to_string())?;
    let table = with_key::<T>(&table, key, text)?;
    *config = from_table(&table)?;
    Ok(())
}

fn to_table<T: Serialize>(config: &T) -> Result<toml::Table, ConfigError> {
    toml::Table::try_from(config).map_err(|e| ConfigError::one(format!("the defaults do not serialize: {e}")))
}

fn from_table<T: DeserializeOwned>(table: &toml::Table) -> Result<T, String> {
    toml::Value::Table(table.clone()).try_into().map_err(|e: toml::de::Error| e.message().to_string())
}

/// `table` with `key` set from `text`, checked against `T`.
fn with_key<T: DeserializeOwned>(table: &toml::Table, key: &str, text: &str) -> Result<toml::Table, String> {
    let value = match table.get(key) {
        Some(toml::Value::Integer(_)) => {
            toml::Value::Integer(text.trim().parse().map_err(|e| format!("{text:?}: {e}"))?)
        }
        Some(toml::Value::Boolean(_)) => {
            toml::Value::Boolean(text.trim().parse().map_err(|e| format!("{text:?}: {e}"))?)
        }
        Some(toml::Value::Float(_)) => {
            toml::Value::Float(text.trim().parse().map_err(|e| format!("{text:?}: {e}"))?)
        }
        Some(toml::Value::Array(_)) => toml::Value::Array(
            text.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| toml::Value::String(s.into()))
                .collect(),
        ),
        _ => toml::Value::String(text.to_string()),
    };
    let mut out = table.clone();
    out.insert(key.to_string(), value);
    from_table::<T>(&out).map_err(|e| {
        if e.starts_with("unknown field") {
            format!("unknown setting {key:?}")
        } else {
            format!("{text:?}: {e}")
        }
    })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct Demo {
        name: String,
        port: u16,
        on: bool,
        hosts: Vec<String>,
        listen: Option<std::net::SocketAddr>,
    }

    impl Default for Demo {
        fn default() -> Demo {
            Demo { name: "a".into(), port: 80, on: false, hosts: vec!["x".into()], listen: None }
        }
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn layers_apply_in_order_and_text_takes_the_default_type() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "name = \"file\"\nport = 81\n").expect("write");
        let vars = env(&[
            ("P_PORT", "82"),
            ("P_ON", "true"),
            ("P_HOSTS", "h1, h2"),
            ("P_LISTEN", "127.0.0.1:9"),
            ("OTHER", "x"),
        ]);
        let d: Demo = load(&Demo::default(), Some(&file), "P_", vars).expect("load");
        assert_eq!(d.name, "file");
        assert_eq!(d.port, 82);
        assert!(d.on);
        assert_eq!(d.hosts, vec!["h1".to_string(), "h2".to_string()]);
        assert_eq!(d.listen, Some("127.0.0.1:9".parse().expect("addr")));
        let mut d = d;
        set(&mut d, "name", "123").expect("a string of digits stays a string");
        assert_eq!(d.name, "123");
        assert!(set(&mut d, "nme", "x").expect_err("unknown").contains("unknown setting \"nme\""));
    }

    #[test]
    fn every_bad_variable_is_reported_and_unknown_file_keys_refused() {
        let vars = env(&[("P_PORT", "soon"), ("P_LISTEN", "nowhere"), ("P_NAM", "x")]);
        let err = load(&Demo::default(), None, "P_", vars).expect_err("bad");
        assert_eq!(err.0.len(), 3, "{err}");
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "nmae = \"x\"\n").expect("write");
        let err = load(&Demo::default(), Some(&file), "P_", vec![]).expect_err("unknown key");
        assert!(err.to_string().contains("nmae"), "{err}");
    }
}
