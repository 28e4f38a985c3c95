//! A code zip: checked (a zip, not too large, no names leaving its root, no links, the
//! runtime's entry file present) and turned into one image layer with the files under
//! `var/user/` (USER_CODE_ROOT).

use std::io::{Cursor, Read, Write};

use sha2::{Digest, Sha256};

/// Largest zip accepted, in bytes.
pub const MAX_ZIP_BYTES: u64 = 100 << 20;
/// Largest total of the files it holds, in bytes.
pub const MAX_UNPACKED_BYTES: u64 = 500 << 20;

/// Why a zip (or the handler naming its entry) cannot be built; the words say what is
/// allowed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct BadCode(pub String);

impl From<String> for BadCode {
    fn from(s: String) -> BadCode {
        BadCode(s)
    }
}

/// What the runtime needs in the zip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// `python311`: the handler's module file, e.g. `handler.py` for `handler.handle`.
    Python(String),
    /// `custom`: an executable `scf_bootstrap`.
    Bootstrap,
}

impl Entry {
    /// The entry file of `runtime` with `handler`; an error names what is allowed.
    pub fn of(runtime: &str, handler: &str) -> Result<Entry, BadCode> {
        match runtime {
            "python311" => {
                let handler = if handler.is_empty() { "handler.handle" } else { handler };
                let (module, function) = handler
                    .rsplit_once('.')
                    .filter(|(m, f)| !m.is_empty() && !f.is_empty())
                    .ok_or_else(|| {
                        BadCode(format!("handler {handler:?} must be module.function, e.g. handler.handle"))
                    })?;
                let ok = |s: &str| s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
                if !ok(module) || !ok(function) || module.contains("..") {
                    return Err(BadCode(format!(
                        "handler {handler:?} must be module.function of letters, digits and '_'"
                    )));
                }
                Ok(Entry::Python(format!("{}.py", module.replace('.', "/"))))
            }
            "custom" => Ok(Entry::Bootstrap),
            other => Err(BadCode(format!("runtime {other:?} cannot run code here: use python311 or custom"))),
        }
    }

    fn file(&self) -> &str {
        match self {
            Entry::Python(f) => f,
            Entry::Bootstrap => "scf_bootstrap",
        }
    }
}

/// A built layer: gzip'd tar bytes and the tar's digest (the diff ID).
#[derive(Debug)]
pub struct Layer {
    /// The blob.
    pub gz: Vec<u8>,
    /// `sha256:` of the uncompressed tar.
    pub diff_id: String,
}

fn sha(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

/// Checks `zip` for `entry`; the files it holds, by their relative path.
pub fn check(zip: &[u8], entry: &Entry) -> Result<Vec<(String, Vec<u8>, u32)>, BadCode> {
    check_zip(zip, entry).map_err(BadCode)
}

fn check_zip(zip: &[u8], entry: &Entry) -> Result<Vec<(String, Vec<u8>, u32)>, String> {
    if zip.len() as u64 > MAX_ZIP_BYTES {
        return Err(format!("the zip is {} bytes: at most {MAX_ZIP_BYTES} are accepted", zip.len()));
    }
    let mut archive =
        zip::ZipArchive::new(Cursor::new(zip)).map_err(|e| format!("not a zip archive: {e}"))?;
    let mut files = Vec::new();
    let mut total = 0u64;
    for i in 0..archive.len() {
        let mut f = archive.by_index(i).map_err(|e| format!("entry {i} of the zip cannot be read: {e}"))?;
        let raw = f.name().map(|n| n.to_string()).unwrap_or_else(|_| format!("entry {i}"));
        let Some(path) = f.enclosed_name() else {
            return Err(format!("{raw:?} leaves the zip's root: names must be relative, without '..'"));
        };
        if f.is_symlink() {
            return Err(format!("{raw:?} is a symbolic link: links are not accepted"));
        }
        if f.is_dir() {
            continue;
        }
        total += f.size();
        if total > MAX_UNPACKED_BYTES {
            return Err(format!("the zip holds more than {MAX_UNPACKED_BYTES} bytes once unpacked"));
        }
        let mut bytes = Vec::with_capacity(f.size() as usize);
        f.read_to_end(&mut bytes).map_err(|e| format!("{raw:?} cannot be unpacked: {e}"))?;
        let name = path.to_string_lossy().into_owned();
        let executable = f.unix_mode().is_some_and(|m| m & 0o111 != 0) || name == "scf_bootstrap";
        files.push((name, bytes, if executable { 0o755 } else { 0o644 }));
    }
    if !files.iter().any(|(n, _, _)| n == entry.file()) {
        return Err(format!("the zip has no {:?} at its root: the runtime starts from it", entry.file()));
    }
    Ok(files)
}

/// The layer with `files` under `var/user/`.
pub fn layer(files: &[(String, Vec<u8>, u32)]) -> Result<Layer, BadCode> {
    make_layer(files).map_err(BadCode)
}

fn make_layer(files: &[(String, Vec<u8>, u32)]) -> Result<Layer, String> {
    let mut tar = tar::Builder::new(Vec::new());
    let mut dirs = std::collections::BTreeSet::new();
    dirs.insert("var/".to_string());
    dirs.insert("var/user/".to_string());
    for (name, _, _) in files {
        let mut at = String::from("var/user/");
        let parts: Vec<&str> = name.split('/').collect();
        for p in &parts[..parts.len() - 1] {
            at.push_str(p);
            at.push('/');
            dirs.insert(at.clone());
        }
    }
    let io = |e: std::io::Error| format!("building the code layer: {e}");
    for d in &dirs {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        tar.append_data(&mut h, d, std::io::empty()).map_err(io)?;
    }
    for (name, bytes, mode) in files {
        let mut h = tar::Header::new_gnu();
        h.set_mode(*mode);
        h.set_size(bytes.len() as u64);
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        tar.append_data(&mut h, format!("var/user/{name}"), bytes.as_slice()).map_err(io)?;
    }
    let tar = tar.into_inner().map_err(io)?;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).map_err(io)?;
    let gz = gz.finish().map_err(io)?;
    Ok(Layer { diff_id: sha(&tar), gz })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn zip_of(files: &[(&str, &str)]) -> Vec<u8> {
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        for (n, c) in files {
            w.start_file(*n, zip::write::SimpleFileOptions::default()).unwrap();
            w.write_all(c.as_bytes()).unwrap();
        }
        w.finish().unwrap().into_inner()
    }

    #[test]
    fn zips_are_checked_and_made_into_a_layer() {
        let py = Entry::of("python311", "handler.handle").unwrap();
        assert_eq!(py, Entry::Python("handler.py".into()));
        assert_eq!(Entry::of("python311", "app.main.run").unwrap(), Entry::Python("app/main.py".into()));
        assert!(Entry::of("node22", "x.y").is_err());
        assert!(Entry::of("python311", "nodot").is_err());
        let files =
            check(&zip_of(&[("handler.py", "def handle(e, c): return 1"), ("lib/u.py", "")]), &py).unwrap();
        assert_eq!(files.len(), 2);
        let l = layer(&files).unwrap();
        assert!(l.diff_id.starts_with("sha256:") && l.diff_id != fnrt_registry::sha256(&l.gz));
        assert!(check(b"not a zip", &py).unwrap_err().0.contains("not a zip"));
        assert!(check(&zip_of(&[("other.py", "")]), &py).unwrap_err().0.contains("handler.py"));
        assert!(check(&zip_of(&[("../evil.py", ""), ("handler.py", "")]), &py)
            .unwrap_err()
            .0
            .contains("leaves"));
        let too_large = vec![0u8; MAX_ZIP_BYTES as usize + 1];
        assert!(check(&too_large, &py).unwrap_err().0.contains("at most"));
        let boot = check(&zip_of(&[("scf_bootstrap", "#!/bin/sh")]), &Entry::Bootstrap).unwrap();
        assert_eq!(boot[0].2, 0o755, "scf_bootstrap is made executable");
    }
}
