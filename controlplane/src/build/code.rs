//! A code zip: checked (a zip, not too large, no names leaving its root, no links, the
//! runtime's entry file present) and turned into one image layer with the files under
//! `var/user/` (USER_CODE_ROOT).

use std::io::{Cursor, Read, Write};

use sha2::{Digest, Sha256};

/// Largest zip accepted, in bytes.
pub const MAX_ZIP_BYTES: u64 = 100 << 20;
/// Largest total of the files it holds, in bytes.
pub const MAX_UNPACKED_BYTES: u64 = 500 << 20;
/// Most entries (files and directories) a zip may hold.
pub const MAX_ENTRIES: u64 = 10_000;
/// Longest entry name, in bytes.
pub const MAX_NAME_BYTES: usize = 1024;

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
    // Counted from the end record before the central directory is read into memory: a
    // zip of a million empty entries is refused at once.
    if let Some(n) = declared_entries(zip).filter(|n| *n > MAX_ENTRIES) {
        return Err(format!("the zip holds {n} entries: at most {MAX_ENTRIES} are accepted"));
    }
    let mut archive =
        zip::ZipArchive::new(Cursor::new(zip)).map_err(|e| format!("not a zip archive: {e}"))?;
    if archive.len() as u64 > MAX_ENTRIES {
        return Err(format!("the zip holds {} entries: at most {MAX_ENTRIES} are accepted", archive.len()));
    }
    let mut files = Vec::new();
    let mut total = 0u64;
    for i in 0..archive.len() {
        let mut f = archive.by_index(i).map_err(|e| format!("entry {i} of the zip cannot be read: {e}"))?;
        if f.name_raw().len() > MAX_NAME_BYTES {
            return Err(format!(
                "entry {i} has a name of {} bytes: at most {MAX_NAME_BYTES}",
                f.name_raw().len()
            ));
        }
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
        total = total.saturating_add(f.size());
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

/// The entry count a zip's end record declares (the zip64 one when the classic field is
/// full); `None` when there is no end record (then the zip crate says what is wrong).
fn declared_entries(zip: &[u8]) -> Option<u64> {
    const EOCD: [u8; 4] = [0x50, 0x4b, 0x05, 0x06];
    const LOCATOR: [u8; 4] = [0x50, 0x4b, 0x06, 0x07];
    const ZIP64_EOCD: [u8; 4] = [0x50, 0x4b, 0x06, 0x06];
    // The end record is 22 bytes plus a comment of at most 65535.
    let from = zip.len().saturating_sub(22 + 65_535);
    let at = (from..zip.len().saturating_sub(21)).rev().find(|&i| zip[i..i + 4] == EOCD)?;
    let u16_at = |i: usize| zip.get(i..i + 2).map(|b| u64::from(u16::from_le_bytes([b[0], b[1]])));
    let classic = u16_at(at + 10)?;
    if classic != 0xffff {
        return Some(classic);
    }
    let locator = at.checked_sub(20)?;
    if zip.get(locator..locator + 4)? != LOCATOR {
        return Some(classic);
    }
    let offset = u64::from_le_bytes(zip.get(locator + 8..locator + 16)?.try_into().ok()?);
    let record = usize::try_from(offset).ok()?;
    if zip.get(record..record + 4)? != ZIP64_EOCD {
        return Some(classic);
    }
    Some(u64::from_le_bytes(zip.get(record + 32..record + 40)?.try_into().ok()?))
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
        let many: Vec<(String, &str)> = (0..=MAX_ENTRIES).map(|i| (format!("f{i}"), "")).collect();
        let many: Vec<(&str, &str)> = many.iter().map(|(n, c)| (n.as_str(), *c)).collect();
        let err = check(&zip_of(&many), &py).unwrap_err().0;
        assert!(err.contains("10001 entries: at most 10000"), "{err}");
        // A million entries, as a zip64 end record declares them (the directory itself is
        // never read).
        let mut z64 = vec![0u8; 56];
        z64[..4].copy_from_slice(&[0x50, 0x4b, 0x06, 0x06]);
        z64[32..40].copy_from_slice(&1_000_000u64.to_le_bytes());
        let mut locator = vec![0u8; 20];
        locator[..4].copy_from_slice(&[0x50, 0x4b, 0x06, 0x07]);
        let mut eocd = vec![0u8; 22];
        eocd[..4].copy_from_slice(&[0x50, 0x4b, 0x05, 0x06]);
        eocd[10..12].copy_from_slice(&0xffffu16.to_le_bytes());
        let bomb = [z64, locator, eocd].concat();
        assert_eq!(declared_entries(&bomb), Some(1_000_000));
        let err = check(&bomb, &py).unwrap_err().0;
        assert!(err.contains("1000000 entries"), "{err}");
        let long = format!("{}.py", "a".repeat(MAX_NAME_BYTES));
        let err = check(&zip_of(&[(long.as_str(), ""), ("handler.py", "")]), &py).unwrap_err().0;
        assert!(err.contains("at most 1024"), "{err}");
        let boot = check(&zip_of(&[("scf_bootstrap", "#!/bin/sh")]), &Entry::Bootstrap).unwrap();
        assert_eq!(boot[0].2, 0o755, "scf_bootstrap is made executable");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod fuzz {
    use super::*;

    /// Any bytes, and zips made of arbitrary names and contents: an answer or a refusal,
    /// never a panic; what is accepted stays within the limits and beneath the root.
    #[test]
    fn fuzz_zip_checker() {
        let entry = Entry::of("python311", "handler.handle").unwrap();
        arbtest::arbtest(|u| {
            let bytes: Vec<u8> = if u.arbitrary()? {
                u.arbitrary()?
            } else {
                let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
                for _ in 0..u.int_in_range(0..=5)? {
                    let name: String = if u.arbitrary()? { u.arbitrary()? } else { "handler.py".into() };
                    let data: Vec<u8> = u.arbitrary()?;
                    if w.start_file(name, zip::write::SimpleFileOptions::default()).is_ok() {
                        let _ = w.write_all(&data);
                    }
                }
                w.finish().map(|c| c.into_inner()).unwrap_or_default()
            };
            if let Ok(files) = check(&bytes, &entry) {
                assert!(files.len() as u64 <= MAX_ENTRIES);
                for (name, _, _) in &files {
                    assert!(!name.starts_with('/') && !name.split('/').any(|p| p == ".."), "{name:?}");
                }
            }
            Ok(())
        })
        .budget_ms(fnrt_common::fuzz_budget_ms());
    }
}
