//! Deployed functions on disk, so that a restarted agent serves them again: one JSON file
//! per function in `<state_dir>/functions`, mode 0600 (it holds the function's secrets, as
//! containerd's metadata holds its instances' environment).

use std::path::PathBuf;

use super::FunctionSpec;
use crate::error::Error;

/// The functions' directory.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// Functions under `dir` (made if missing).
    pub fn new(dir: PathBuf) -> Store {
        Store { dir }
    }

    fn io(&self, source: std::io::Error) -> Error {
        Error::Io { what: "functions store", path: self.dir.display().to_string(), source }
    }

    /// Writes a function's spec (whole, then renamed into place).
    pub fn save(&self, spec: &FunctionSpec) -> Result<(), Error> {
        std::fs::create_dir_all(&self.dir).map_err(|e| self.io(e))?;
        let bytes = serde_json::to_vec(spec).map_err(|e| self.io(std::io::Error::other(e)))?;
        let path = self.dir.join(format!("{}.json", spec.name));
        fnrt_common::durable::write(&path, &bytes, 0o600).map_err(|e| self.io(e))
    }

    /// Forgets a function.
    pub fn remove(&self, name: &str) -> Result<(), Error> {
        match std::fs::remove_file(self.dir.join(format!("{name}.json"))) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.io(e)),
        }
    }

    /// Every saved function; a file that cannot be read is logged and skipped.
    pub fn load(&self) -> Vec<FunctionSpec> {
        let Ok(dir) = std::fs::read_dir(&self.dir) else { return Vec::new() };
        let mut out = Vec::new();
        for e in dir.flatten() {
            let path = e.path();
            if path.extension().is_none_or(|x| x != "json") {
                continue;
            }
            match std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<FunctionSpec>(&b).map_err(|e| e.to_string()))
            {
                Ok(spec) => out.push(spec),
                Err(e) => tracing::warn!(file = %path.display(), error = %e, "skipping a saved function"),
            }
        }
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::pool::RawSpec;
    use fnrt_function::policy::Policy;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn saved_functions_come_back_and_only_the_owner_reads_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path().join("functions"));
        let policy = Policy { mb_per_vcpu: 1792, min_cpu_millis: 100, pids: 1024 };
        let raw = RawSpec {
            name: "f".into(),
            image: "r/i".into(),
            secrets: [("K".to_string(), "v".to_string())].into(),
            provisioned: 2,
            ..Default::default()
        };
        let spec = raw.check(&policy).unwrap();
        store.save(&spec).unwrap();
        let mode = std::fs::metadata(dir.path().join("functions/f.json")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let back = store.load();
        assert_eq!(back.len(), 1);
        assert_eq!((back[0].provisioned, back[0].instance_key()), (2, spec.instance_key()));
        store.remove("f").unwrap();
        assert!(store.load().is_empty());
    }
}
