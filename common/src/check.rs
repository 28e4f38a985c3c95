//! What `check-config` reports (`fnrt-agent check-config`, `fnrt-controlplane
//! check-config`): one line per check, and the probes both daemons share (a directory
//! they must write in, an address they must listen on).
//!
//! A check looks and leaves nothing behind: a directory that does not exist yet is not
//! made (its nearest existing parent must take a new directory, which is made and removed
//! at once), a listener is closed as soon as it was bound.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// How one check went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It passed; what was found (may be empty).
    Ok(String),
    /// A running daemon holds it (its store, its port): it was not touched, and the
    /// check does not fail, since checking a live node's configuration is allowed.
    InUse(String),
    /// It failed: what is wrong and what is allowed.
    Error(String),
}

/// One line of the report.
#[derive(Debug, Clone)]
pub struct Check {
    /// What was checked (the setting and its value).
    pub what: String,
    /// How it went.
    pub outcome: Outcome,
}

/// Every check's line, in the order they ran.
#[derive(Debug, Default, Clone)]
pub struct Report {
    /// The checks.
    pub checks: Vec<Check>,
}

impl Report {
    /// Adds a line.
    pub fn push(&mut self, what: impl Into<String>, outcome: Outcome) {
        self.checks.push(Check { what: what.into(), outcome });
    }

    /// Whether no check failed.
    pub fn passed(&self) -> bool {
        !self.checks.iter().any(|c| matches!(c.outcome, Outcome::Error(_)))
    }

    /// The outcome of the first check whose `what` starts with `prefix`.
    pub fn outcome(&self, prefix: &str) -> Option<&Outcome> {
        self.checks.iter().find(|c| c.what.starts_with(prefix)).map(|c| &c.outcome)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in &self.checks {
            match &c.outcome {
                Outcome::Ok(d) if d.is_empty() => writeln!(f, "{}: ok", c.what)?,
                Outcome::Ok(d) => writeln!(f, "{}: ok ({d})", c.what)?,
                Outcome::InUse(d) => writeln!(f, "{}: in use ({d})", c.what)?,
                Outcome::Error(e) => writeln!(f, "{}: error: {e}", c.what)?,
            }
        }
        Ok(())
    }
}

/// Whether the daemon can keep its files in `dir`: it is a directory a file can be made
/// in, or it does not exist and its nearest existing parent takes a new directory (the
/// daemon makes it at start).
pub fn directory(dir: &Path) -> Outcome {
    let probe_name = format!(".fnrt-check-{}", std::process::id());
    match std::fs::metadata(dir) {
        Ok(m) if !m.is_dir() => Outcome::Error(format!("{} is not a directory", dir.display())),
        Ok(_) => {
            let probe = dir.join(probe_name);
            match std::fs::OpenOptions::new().write(true).create_new(true).open(&probe) {
                Ok(_) => {
                    let _ = std::fs::remove_file(&probe);
                    Outcome::Ok("writable".into())
                }
                Err(e) => Outcome::Error(format!("cannot write in {}: {e}", dir.display())),
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let Some(parent) = existing_parent(dir) else {
                return Outcome::Error(format!("{}: no parent directory exists", dir.display()));
            };
            let probe = parent.join(probe_name);
            match std::fs::create_dir(&probe) {
                Ok(()) => {
                    let _ = std::fs::remove_dir(&probe);
                    Outcome::Ok(format!("does not exist yet: made at start in {}", parent.display()))
                }
                Err(e) => Outcome::Error(format!(
                    "{} does not exist and cannot be made in {}: {e}",
                    dir.display(),
                    parent.display()
                )),
            }
        }
        Err(e) => Outcome::Error(format!("{}: {e}", dir.display())),
    }
}

fn existing_parent(dir: &Path) -> Option<PathBuf> {
    dir.ancestors().skip(1).find(|p| p.is_dir()).map(Path::to_path_buf)
}

/// Whether `addr` can be listened on (bound and closed at once). `held` says who holds
/// it when it is in use: a daemon known to run here (then [`Outcome::InUse`]), or none.
pub fn listen(addr: SocketAddr, held: Option<&str>) -> Outcome {
    match std::net::TcpListener::bind(addr) {
        Ok(_) => Outcome::Ok(String::new()),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => match held {
            Some(who) => Outcome::InUse(format!("{who} listens there")),
            None => Outcome::Error(format!(
                "another process listens on {addr}: stop it or choose another address"
            )),
        },
        Err(e) => Outcome::Error(format!("cannot listen on {addr}: {e}")),
    }
}

/// Where `program` is on `PATH`, if it is there and executable.
pub fn on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(program)).find(|p| executable(p))
}

/// Whether `path` is a file someone may execute.
pub fn executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_is_probed_without_leaving_anything() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(directory(dir.path()), Outcome::Ok("writable".into()));
        let missing = dir.path().join("a/b");
        assert!(matches!(directory(&missing), Outcome::Ok(d) if d.contains("made at start")));
        assert!(!dir.path().join("a").exists(), "a missing directory is not made");
        assert_eq!(std::fs::read_dir(dir.path()).expect("read").count(), 0, "no probe left");
        let file = dir.path().join("f");
        std::fs::write(&file, "").expect("write");
        assert!(matches!(directory(&file), Outcome::Error(e) if e.contains("not a directory")));
        assert!(matches!(directory(&file.join("x")), Outcome::Error(_)), "under a file");
    }

    #[test]
    fn a_port_in_use_is_an_error_unless_a_known_daemon_holds_it() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = taken.local_addr().expect("addr");
        assert!(matches!(listen(addr, None), Outcome::Error(e) if e.contains("another process listens")));
        assert!(matches!(listen(addr, Some("the agent")), Outcome::InUse(_)));
        drop(taken);
        assert_eq!(listen(addr, None), Outcome::Ok(String::new()));
    }

    #[test]
    fn the_report_fails_only_on_errors_and_prints_a_line_each() {
        let mut r = Report::default();
        r.push("a", Outcome::Ok(String::new()));
        r.push("b", Outcome::InUse("held".into()));
        assert!(r.passed());
        r.push("c", Outcome::Error("bad; use x".into()));
        assert!(!r.passed());
        assert_eq!(r.to_string(), "a: ok\nb: in use (held)\nc: error: bad; use x\n");
        assert_eq!(r.outcome("b"), Some(&Outcome::InUse("held".into())));
    }

    #[test]
    fn programs_are_found_on_path_only_when_executable() {
        assert!(on_path("sh").is_some());
        assert!(on_path("no-such-program-fnrt").is_none());
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("plugin");
        std::fs::write(&f, "").expect("write");
        assert!(!executable(&f));
        std::fs::set_permissions(&f, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
        assert!(executable(&f));
    }
}
