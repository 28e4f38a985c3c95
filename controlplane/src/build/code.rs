//! A code zip: checked (a zip, not too large, no names leaving its root, no links, the
//! runtime's entry file present) and turned into one image layer with the files under
//! `var/user/` (USER_CODE_ROOT).

use std::io::{Read, Seek, SeekFrom, Write};

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
    /// `node18`: the handler's module file, e.g. `src/handler.js` for `src/handler.handle`.
    Node(String),
    /// `go119`: a Go module (`go.mod` at the root) whose package has this exported
    /// `func(http.ResponseWriter, *http.Request)`.
    Go(String),
    /// `custom`: an executable `scf_bootstrap`.
    Bootstrap,
}

/// The file of `handler` (`path/module.function`, the path's '/' or the module's '.'
/// separating directories) with `extension`; an error names the form.
fn module_file(handler: &str, extension: &str) -> Result<String, BadCode> {
    let (module, function) = handler
        .rsplit_once('.')
        .filter(|(m, f)| !m.is_empty() && !f.is_empty())
        .ok_or_else(|| {
            BadCode(format!(
                "handler {handler:?} must be module.function (e.g. handler.handle, or src/handler.handle for src/handler{extension})"
            ))
        })?;
    let word =
        |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    let parts: Vec<&str> = module.split(['/', '.']).collect();
    if !parts.iter().all(|p| word(p)) || !function.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(BadCode(format!(
            "handler {handler:?} must be module.function of letters, digits, '_' and '-', with '/' between directories"
        )));
    }
    Ok(format!("{}{extension}", parts.join("/")))
}

impl Entry {
    /// The entry file of `runtime` with `handler`; an error names what is allowed.
    pub fn of(runtime: &str, handler: &str) -> Result<Entry, BadCode> {
        match runtime {
            "python311" => {
                let handler = if handler.is_empty() { "handler.handle" } else { handler };
                Ok(Entry::Python(module_file(handler, ".py")?))
            }
            "node18" => {
                let handler = if handler.is_empty() { "handler.handle" } else { handler };
                Ok(Entry::Node(module_file(handler, ".js")?))
            }
            "go119" => {
                let handler = if handler.is_empty() { "Handle" } else { handler };
                let exported = handler.chars().next().is_some_and(|c| c.is_ascii_uppercase())
                    && handler.len() <= 128
                    && handler.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                if !exported {
                    return Err(BadCode(format!(
                        "handler {handler:?} must be the name of an exported Go function, e.g. Handle"
                    )));
                }
                Ok(Entry::Go(handler.to_string()))
            }
            "custom" => Ok(Entry::Bootstrap),
            other => Err(BadCode(format!(
                "runtime {other:?} cannot run code here: use one of {:?}",
                crate::runtimes::names()
            ))),
        }
    }

    fn file(&self) -> &str {
        match self {
            Entry::Python(f) | Entry::Node(f) => f,
            Entry::Go(_) => "go.mod",
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

/// A file of a checked zip: its place in the archive, its path beneath the zip's root
/// and the mode it gets in the layer.
#[derive(Debug, Clone)]
pub struct ZipFile {
    index: usize,
    /// Its relative path.
    pub name: String,
    mode: u32,
}

/// Checks the zip `zip` for `entry`, unpacking each file to count it (nothing is kept in
/// memory); its files.
pub fn check<R: Read + Seek>(zip: &mut R, entry: &Entry) -> Result<Vec<ZipFile>, BadCode> {
    check_zip(zip, entry).map_err(BadCode)
}

fn check_zip<R: Read + Seek>(zip: &mut R, entry: &Entry) -> Result<Vec<ZipFile>, String> {
    let io = |e: std::io::Error| format!("the zip cannot be read: {e}");
    let len = zip.seek(SeekFrom::End(0)).map_err(io)?;
    if len > MAX_ZIP_BYTES {
        return Err(format!("the zip is {len} bytes: at most {MAX_ZIP_BYTES} are accepted"));
    }
    // Counted from the end record before the central directory is read into memory: a
    // zip of a million empty entries is refused at once.
    if let Some(n) = declared_entries(zip, len).map_err(io)?.filter(|n| *n > MAX_ENTRIES) {
        return Err(format!("the zip holds {n} entries: at most {MAX_ENTRIES} are accepted"));
    }
    let mut archive = zip::ZipArchive::new(zip).map_err(|e| format!("not a zip archive: {e}"))?;
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
        // Unpacked to count it, whatever its header says (and to check its CRC).
        let room = MAX_UNPACKED_BYTES - total;
        let n = std::io::copy(&mut (&mut f).take(room + 1), &mut std::io::sink())
            .map_err(|e| format!("{raw:?} cannot be unpacked: {e}"))?;
        total += n;
        if n > room {
            return Err(format!("the zip holds more than {MAX_UNPACKED_BYTES} bytes once unpacked"));
        }
        if n != f.size() {
            return Err(format!("{raw:?} unpacks to {n} bytes, not the {} its header says", f.size()));
        }
        let name = path.to_string_lossy().into_owned();
        let executable = f.unix_mode().is_some_and(|m| m & 0o111 != 0) || name == "scf_bootstrap";
        files.push(ZipFile { index: i, name, mode: if executable { 0o755 } else { 0o644 } });
    }
    if !files.iter().any(|f| f.name == entry.file()) {
        return Err(format!("the zip has no {:?} at its root: the runtime starts from it", entry.file()));
    }
    Ok(files)
}

/// The entry count a zip's end record declares (the zip64 one when the classic field is
/// full); `None` when there is no end record (then the zip crate says what is wrong).
/// Reads the zip's last 64 KiB and, for zip64, the 40 bytes of its record.
fn declared_entries<R: Read + Seek>(zip: &mut R, len: u64) -> std::io::Result<Option<u64>> {
    const EOCD: [u8; 4] = [0x50, 0x4b, 0x05, 0x06];
    const LOCATOR: [u8; 4] = [0x50, 0x4b, 0x06, 0x07];
    const ZIP64_EOCD: [u8; 4] = [0x50, 0x4b, 0x06, 0x06];
    // The end record is 22 bytes plus a comment of at most 65535.
    let from = len.saturating_sub(22 + 65_535);
    zip.seek(SeekFrom::Start(from))?;
    let mut tail = Vec::new();
    zip.take(len - from).read_to_end(&mut tail)?;
    let Some(at) = (0..tail.len().saturating_sub(21)).rev().find(|&i| tail[i..i + 4] == EOCD) else {
        return Ok(None);
    };
    let classic = u64::from(u16::from_le_bytes([tail[at + 10], tail[at + 11]]));
    if classic != 0xffff {
        return Ok(Some(classic));
    }
    let Some(locator) = at.checked_sub(20).filter(|&l| tail[l..l + 4] == LOCATOR) else {
        return Ok(Some(classic));
    };
    let mut offset = [0u8; 8];
    offset.copy_from_slice(&tail[locator + 8..locator + 16]);
    let offset = u64::from_le_bytes(offset);
    if offset.checked_add(40).is_none_or(|end| end > len) {
        return Ok(Some(classic));
    }
    let mut record = [0u8; 40];
    zip.seek(SeekFrom::Start(offset))?;
    zip.read_exact(&mut record)?;
    if record[..4] != ZIP64_EOCD {
        return Ok(Some(classic));
    }
    let mut count = [0u8; 8];
    count.copy_from_slice(&record[32..40]);
    Ok(Some(u64::from_le_bytes(count)))
}

/// The layer with `files` of the checked `zip` under `var/user/`: each file streamed from
/// the zip into the tar, the tar into gzip and its digest as it goes; only the compressed
/// layer is held.
pub fn layer<R: Read + Seek>(zip: R, files: &[ZipFile]) -> Result<Layer, BadCode> {
    make_layer(zip, files).map_err(BadCode)
}

/// Hashes what goes through it.
struct Hashing<W> {
    inner: W,
    sha: Sha256,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.sha.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn header(mode: u32, size: u64, kind: tar::EntryType) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h
}

fn make_layer<R: Read + Seek>(zip: R, files: &[ZipFile]) -> Result<Layer, String> {
    let mut archive = zip::ZipArchive::new(zip).map_err(|e| format!("not a zip archive: {e}"))?;
    let names: Vec<&str> = files.iter().map(|f| f.name.as_str()).collect();
    write_layer(&names, |tar| {
        for f in files {
            let entry = archive.by_index(f.index).map_err(|e| format!("{:?} cannot be read: {e}", f.name))?;
            let mut h = header(f.mode, entry.size(), tar::EntryType::Regular);
            tar.append_data(&mut h, format!("var/user/{}", f.name), entry).map_err(layer_io)?;
        }
        Ok(())
    })
}

type LayerTar = tar::Builder<Hashing<flate2::write::GzEncoder<Vec<u8>>>>;

fn layer_io(e: std::io::Error) -> String {
    format!("building the code layer: {e}")
}

/// A layer of the directories of `names` under `var/user/`, then what `add` appends.
fn write_layer(
    names: &[&str],
    add: impl FnOnce(&mut LayerTar) -> Result<(), String>,
) -> Result<Layer, String> {
    let mut dirs = std::collections::BTreeSet::new();
    dirs.insert("var/".to_string());
    dirs.insert("var/user/".to_string());
    for name in names {
        let mut at = String::from("var/user/");
        let parts: Vec<&str> = name.split('/').collect();
        for p in &parts[..parts.len() - 1] {
            at.push_str(p);
            at.push('/');
            dirs.insert(at.clone());
        }
    }
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(Hashing { inner: gz, sha: Sha256::new() });
    for d in &dirs {
        tar.append_data(&mut header(0o755, 0, tar::EntryType::Directory), d, std::io::empty())
            .map_err(layer_io)?;
    }
    add(&mut tar)?;
    let hashing = tar.into_inner().map_err(layer_io)?;
    let diff_id = format!("sha256:{}", hex::encode(hashing.sha.finalize()));
    let gz = hashing.inner.finish().map_err(layer_io)?;
    Ok(Layer { diff_id, gz })
}

/// A layer of one executable, `var/user/<name>`, read from `path`.
pub fn executable_layer(name: &str, path: &std::path::Path) -> Result<Layer, BadCode> {
    let file = std::fs::File::open(path).map_err(|e| BadCode(format!("{}: {e}", path.display())))?;
    let size = file.metadata().map_err(|e| BadCode(format!("{}: {e}", path.display())))?.len();
    write_layer(&[name], |tar| {
        let mut h = header(0o755, size, tar::EntryType::Regular);
        tar.append_data(&mut h, format!("var/user/{name}"), file).map_err(layer_io)
    })
    .map_err(BadCode)
}

/// Writes the checked `files` of `zip` under `dir` (as they are named, beneath it).
pub fn unpack<R: Read + Seek>(zip: R, files: &[ZipFile], dir: &std::path::Path) -> Result<(), BadCode> {
    let bad = |e: String| BadCode(e);
    let mut archive = zip::ZipArchive::new(zip).map_err(|e| bad(format!("not a zip archive: {e}")))?;
    for f in files {
        let to = dir.join(&f.name);
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent).map_err(|e| bad(format!("unpacking {:?}: {e}", f.name)))?;
        }
        let mut entry =
            archive.by_index(f.index).map_err(|e| bad(format!("{:?} cannot be read: {e}", f.name)))?;
        let mut out = std::fs::File::create(&to).map_err(|e| bad(format!("unpacking {:?}: {e}", f.name)))?;
        std::io::copy(&mut entry, &mut out).map_err(|e| bad(format!("unpacking {:?}: {e}", f.name)))?;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::io::Cursor;

    use super::*;

    #[test]
    fn handler_paths_name_files_under_directories_and_go_takes_an_exported_name() {
        assert_eq!(
            Entry::of("python311", "src/handler.handle").unwrap(),
            Entry::Python("src/handler.py".into())
        );
        assert_eq!(Entry::of("node18", "src/handler.handle").unwrap(), Entry::Node("src/handler.js".into()));
        assert_eq!(Entry::of("node18", "").unwrap(), Entry::Node("handler.js".into()));
        for bad in ["../x.handle", "/abs.handle", "a//b.h", "src/.handle", "x.", "a b.h"] {
            assert!(Entry::of("node18", bad).is_err(), "{bad}");
            assert!(Entry::of("python311", bad).is_err(), "{bad}");
        }
        assert_eq!(Entry::of("go119", "").unwrap(), Entry::Go("Handle".into()));
        assert!(Entry::of("go119", "handle").is_err());
        assert!(Entry::of("go119", "Handle()").is_err());
    }

    fn checked(zip: &[u8], entry: &Entry) -> Result<Vec<ZipFile>, BadCode> {
        check(&mut Cursor::new(zip), entry)
    }

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
        let zip = zip_of(&[("handler.py", "def handle(e, c): return 1"), ("lib/u.py", "")]);
        let files = check(&mut Cursor::new(&zip), &py).unwrap();
        assert_eq!(files.len(), 2);
        let l = layer(Cursor::new(&zip), &files).unwrap();
        let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(l.gz.as_slice()));
        let names: Vec<String> =
            tar.entries().unwrap().map(|e| e.unwrap().path().unwrap().display().to_string()).collect();
        assert!(names.contains(&"var/user/lib/u.py".to_string()), "{names:?}");
        assert!(l.diff_id.starts_with("sha256:") && l.diff_id != fnrt_registry::sha256(&l.gz));
        assert!(check(&mut Cursor::new(b"not a zip"), &py).unwrap_err().0.contains("not a zip"));
        assert!(checked(&zip_of(&[("other.py", "")]), &py).unwrap_err().0.contains("handler.py"));
        assert!(checked(&zip_of(&[("../evil.py", ""), ("handler.py", "")]), &py)
            .unwrap_err()
            .0
            .contains("leaves"));
        let too_large = vec![0u8; MAX_ZIP_BYTES as usize + 1];
        assert!(check(&mut Cursor::new(too_large), &py).unwrap_err().0.contains("at most"));
        let many: Vec<(String, &str)> = (0..=MAX_ENTRIES).map(|i| (format!("f{i}"), "")).collect();
        let many: Vec<(&str, &str)> = many.iter().map(|(n, c)| (n.as_str(), *c)).collect();
        let err = checked(&zip_of(&many), &py).unwrap_err().0;
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
        assert_eq!(declared_entries(&mut Cursor::new(&bomb), bomb.len() as u64).unwrap(), Some(1_000_000));
        let err = check(&mut Cursor::new(&bomb), &py).unwrap_err().0;
        assert!(err.contains("1000000 entries"), "{err}");
        let long = format!("{}.py", "a".repeat(MAX_NAME_BYTES));
        let err = checked(&zip_of(&[(long.as_str(), ""), ("handler.py", "")]), &py).unwrap_err().0;
        assert!(err.contains("at most 1024"), "{err}");
        let boot = checked(&zip_of(&[("scf_bootstrap", "#!/bin/sh")]), &Entry::Bootstrap).unwrap();
        assert_eq!(boot[0].mode, 0o755, "scf_bootstrap is made executable");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod fuzz {
    use std::io::Cursor;

    use super::*;

    /// Any bytes, and zips made of arbitrary names and contents: an answer or a refusal,
    /// never a panic; what is accepted stays within the limits and beneath the root.
    #[test]
    fn fuzz_zip_checker() {
        let entry = Entry::of("python311", "handler.handle").unwrap();
        fnrt_common::fuzz::run("zip", |u| {
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
            if let Ok(files) = check(&mut Cursor::new(&bytes), &entry) {
                assert!(files.len() as u64 <= MAX_ENTRIES);
                layer(Cursor::new(&bytes), &files).unwrap();
                for ZipFile { name, .. } in &files {
                    assert!(!name.starts_with('/') && !name.split('/').any(|p| p == ".."), "{name:?}");
                }
            }
            Ok(())
        });
    }
}
