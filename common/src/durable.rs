//! State files written so that a crash at any point leaves either the old file or the
//! new one whole, never a part: written to a temporary name of their own in the same
//! directory, fsynced, renamed (or linked) into place, and the directory fsynced.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Replaces `path` with `bytes` (created with `mode` if new).
pub fn write(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let tmp = staged(path, bytes, mode)?;
    failpoint("durable-before-rename");
    let placed = std::fs::rename(&tmp, path);
    if placed.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    placed?;
    sync_dir(path)
}

/// Creates `path` with `bytes` and `mode`; fails with `AlreadyExists`, changing nothing,
/// when it exists.
pub fn write_new(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let tmp = staged(path, bytes, mode)?;
    // A hard link never replaces what is there: the atomic create-if-absent.
    let placed = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    placed?;
    sync_dir(path)
}

/// A file written bit by bit under a temporary name beside its place, then put there
/// whole by [`Staged::commit`]; dropped uncommitted, it is removed.
#[derive(Debug)]
pub struct Staged {
    file: File,
    tmp: PathBuf,
    path: PathBuf,
    committed: bool,
}

impl Staged {
    /// Starts a file that will replace `path` (created with `mode`).
    pub fn new(path: &Path, mode: u32) -> io::Result<Staged> {
        let tmp = temp_name(path)?;
        let file = OpenOptions::new().read(true).write(true).create_new(true).mode(mode).open(&tmp)?;
        Ok(Staged { file, tmp, path: path.to_path_buf(), committed: false })
    }

    /// The file being written (open for reading too).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Fsyncs it, renames it into place and fsyncs the directory.
    pub fn commit(mut self) -> io::Result<()> {
        self.file.sync_all()?;
        failpoint("durable-before-rename");
        std::fs::rename(&self.tmp, &self.path)?;
        self.committed = true;
        sync_dir(&self.path)
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Removes what a crash between staging and renaming left in `dir`: files named as
/// [`write`] stages them (`.<name>.<16 hex digits>.tmp`); the number removed.
pub fn sweep(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    let mut removed = 0;
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        let staged =
            name.strip_prefix('.').and_then(|n| n.strip_suffix(".tmp")).and_then(|n| n.rsplit_once('.'));
        if staged.is_some_and(|(_, hex)| hex.len() == 16 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
            && std::fs::remove_file(e.path()).is_ok()
        {
            removed += 1;
        }
    }
    removed
}

/// For the crash tests: with `FNRT_FAILPOINT` naming this point, the process aborts here.
fn failpoint(name: &str) {
    if std::env::var("FNRT_FAILPOINT").is_ok_and(|f| f == name) {
        std::process::abort();
    }
}

/// Fsyncs the directory holding `path`, so a rename or creation in it outlives a crash.
pub fn sync_dir(path: &Path) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}

/// `bytes` written and fsynced under a fresh temporary name beside `path`.
fn staged(path: &Path, bytes: &[u8], mode: u32) -> io::Result<PathBuf> {
    let tmp = temp_name(path)?;
    let written = (|| {
        let mut f = OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    })();
    match written {
        Ok(()) => Ok(tmp),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// A fresh temporary name beside `path`, as [`sweep`] knows them.
fn temp_name(path: &Path) -> io::Result<PathBuf> {
    let name =
        path.file_name().ok_or_else(|| io::Error::other(format!("{} names no file", path.display())))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".{:016x}.tmp", rand::random::<u64>()));
    Ok(path.with_file_name(tmp_name))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn files_are_replaced_whole_created_once_and_nothing_is_left_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        write(&path, b"one", 0o600).unwrap();
        write(&path, b"two", 0o600).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let err = write_new(&path, b"three", 0o600).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        write_new(&dir.path().join("fresh"), b"new", 0o644).unwrap();
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 2, "no temporary file is left: {names:?}");
        // What a crash leaves aside is swept; other files are not.
        std::fs::write(dir.path().join(".state.0123456789abcdef.tmp"), b"half").unwrap();
        std::fs::write(dir.path().join(".keep.tmp"), b"mine").unwrap();
        assert_eq!(sweep(dir.path()), 1);
        assert!(dir.path().join(".keep.tmp").exists() && dir.path().join("state").exists());
    }

    #[test]
    fn a_staged_file_appears_whole_on_commit_and_not_at_all_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("code.zip");
        let staged = Staged::new(&path, 0o600).unwrap();
        staged.file().write_all(b"part").unwrap();
        assert!(!path.exists(), "nothing is in place before the commit");
        drop(staged);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "a dropped file is removed");
        let staged = Staged::new(&path, 0o600).unwrap();
        staged.file().write_all(b"whole").unwrap();
        staged.commit().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"whole");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
