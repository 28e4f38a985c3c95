//! `fnrt-controlplane ca`: the cluster CA and the certificates it issues (README "Cluster
//! TLS"). The CA's key stays where `ca init` wrote it (0600); only certificates and each
//! holder's own key travel to the nodes.

use std::path::{Path, PathBuf};

use fnrt_common::pki::{self, PkiError, Role};

/// `ca init`: makes `<dir>/ca.pem` and `<dir>/ca.key`; refuses to replace them.
pub fn init(dir: &Path, name: &str) -> Result<Vec<PathBuf>, PkiError> {
    create_dir(dir)?;
    let ca = pki::new_ca(name)?;
    let (cert, key) = (dir.join("ca.pem"), dir.join("ca.key"));
    if cert.exists() || key.exists() {
        return Err(PkiError::Bad(format!(
            "{} already holds a CA (ca.pem or ca.key): a new one would orphan every certificate it issued",
            dir.display()
        )));
    }
    pki::write_new(&key, &ca.key_pem, true)?;
    pki::write_new(&cert, &ca.cert_pem, false)?;
    Ok(vec![cert, key])
}

/// What `ca issue` makes.
#[derive(Debug)]
pub struct IssueArgs {
    /// The CA's directory (`ca init`'s).
    pub dir: PathBuf,
    /// The holder's role.
    pub role: Role,
    /// The holder's name (a node's node_name).
    pub name: String,
    /// Further IP addresses or DNS names it is reached at.
    pub sans: Vec<String>,
    /// Days it is valid.
    pub days: u32,
    /// Written to `<out>.pem` and `<out>.key` (default `<dir>/<name>`).
    pub out: Option<PathBuf>,
}

/// `ca issue`: a certificate and key signed by the CA in `args.dir`.
pub fn issue(args: &IssueArgs) -> Result<Vec<PathBuf>, PkiError> {
    let read =
        |p: PathBuf| std::fs::read_to_string(&p).map_err(|source| PkiError::Io { path: p.clone(), source });
    let ca = pki::Pair { cert_pem: read(args.dir.join("ca.pem"))?, key_pem: read(args.dir.join("ca.key"))? };
    let issued = pki::issue(&ca, args.role, &args.name, &args.sans, args.days)?;
    let out = args.out.clone().unwrap_or_else(|| args.dir.join(&args.name));
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dir(parent)?;
    }
    let with = |ext: &str| {
        let mut p = out.clone().into_os_string();
        p.push(ext);
        PathBuf::from(p)
    };
    let (cert, key) = (with(".pem"), with(".key"));
    pki::write_new(&key, &issued.key_pem, true)?;
    if let Err(e) = pki::write_new(&cert, &issued.cert_pem, false) {
        let _ = std::fs::remove_file(&key);
        return Err(e);
    }
    Ok(vec![cert, key])
}

fn create_dir(dir: &Path) -> Result<(), PkiError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| PkiError::Io { path: dir.to_path_buf(), source })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn init_then_issue_and_never_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca");
        init(&ca, "test").unwrap();
        let again = init(&ca, "test").unwrap_err().to_string();
        assert!(again.contains("already holds a CA"), "{again}");
        let args = IssueArgs {
            dir: ca.clone(),
            role: Role::Node,
            name: "node-a".into(),
            sans: vec!["127.0.0.1".into()],
            days: 30,
            out: None,
        };
        let files = issue(&args).unwrap();
        assert_eq!(files, vec![ca.join("node-a.pem"), ca.join("node-a.key")]);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(ca.join("node-a.key")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(issue(&args).is_err(), "an issued pair is not overwritten");
        let tls = pki::ClusterTls::load(&ca.join("ca.pem"), &files[0], &files[1], Role::Node).unwrap();
        assert_eq!(tls.own.name, "node-a");
    }
}
