//! Paths resolved beneath a layer's root without following a symlink.
//!
//! A layer is hostile input: its entries may name `x -> /etc` and then `x/a/b`. Every path
//! is therefore walked one component at a time from a directory descriptor with
//! `O_NOFOLLOW | O_DIRECTORY`, `..` refused, and every change is made with a `*at` call
//! on the parent's descriptor. What the kernel resolves can then never leave the root,
//! whatever symlinks earlier entries made (the guarantee `openat2` gives with
//! `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`).

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};

use nix::errno::Errno;
use nix::fcntl::AtFlags;
use nix::fcntl::{openat, OFlag};
use nix::sys::stat::{mkdirat, Mode};
use nix::unistd::{fchownat, unlinkat, Gid, Uid, UnlinkatFlags};

/// Why a path could not be resolved beneath the root.
#[derive(Debug, thiserror::Error)]
pub enum BeneathError {
    /// A component is `..`, or a symlink or non-directory stands where a directory must.
    #[error("it leaves the layer (a `..` or a symlink in its path)")]
    Outside,
    /// The file system refused.
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl From<Errno> for BeneathError {
    fn from(e: Errno) -> BeneathError {
        BeneathError::Io(e.into())
    }
}

/// A directory that paths are resolved beneath.
pub struct Root {
    fd: OwnedFd,
    /// The owner given to directories made for a path's missing parents.
    owner: (u32, u32),
}

const DIR: OFlag = OFlag::O_DIRECTORY.union(OFlag::O_NOFOLLOW).union(OFlag::O_CLOEXEC).union(OFlag::O_RDONLY);

impl Root {
    /// Opens `dir`; directories made for missing parents get `owner` (uid, gid).
    pub fn open(dir: &Path, owner: (u32, u32)) -> io::Result<Root> {
        let fd = nix::fcntl::open(dir, DIR, Mode::empty())?;
        Ok(Root { fd, owner })
    }

    /// The root's own descriptor.
    #[cfg(test)]
    pub fn fd(&self) -> &OwnedFd {
        &self.fd
    }

    /// The directory that holds `path` (opened, made if missing) and the last name of
    /// `path`; `None` for the name when `path` is the root itself.
    pub fn parent(&self, path: &Path) -> Result<(OwnedFd, Option<OsString>), BeneathError> {
        self.walk_parent(path, true)
    }

    /// As [`Root::parent`], but a missing directory is an error, not made.
    pub fn existing_parent(&self, path: &Path) -> Result<(OwnedFd, Option<OsString>), BeneathError> {
        self.walk_parent(path, false)
    }

    /// The directory `path` itself, opened (made if missing).
    pub fn dir(&self, path: &Path) -> Result<OwnedFd, BeneathError> {
        self.walk(&normal(path)?, true)
    }

    /// The directory `path` itself, opened if it is there.
    pub fn existing_dir(&self, path: &Path) -> Result<OwnedFd, BeneathError> {
        self.walk(&normal(path)?, false)
    }

    fn walk_parent(&self, path: &Path, make: bool) -> Result<(OwnedFd, Option<OsString>), BeneathError> {
        let mut names = normal(path)?;
        let last = names.pop();
        Ok((self.walk(&names, make)?, last))
    }

    fn walk(&self, names: &[OsString], make: bool) -> Result<OwnedFd, BeneathError> {
        let mut dir = self.fd.try_clone()?;
        for name in names {
            dir = self.step(&dir, name, make)?;
        }
        Ok(dir)
    }

    /// The directory `name` in `dir`, made (with the root's owner) if missing and `make`;
    /// refused when something other than a directory stands there.
    fn step(&self, dir: &OwnedFd, name: &OsStr, make: bool) -> Result<OwnedFd, BeneathError> {
        match openat(dir, name, DIR, Mode::empty()) {
            Ok(fd) => Ok(fd),
            Err(Errno::ENOENT) if make => {
                mkdirat(dir, name, Mode::from_bits_truncate(0o755))?;
                let (uid, gid) = self.owner;
                fchownat(
                    dir,
                    name,
                    Some(Uid::from_raw(uid)),
                    Some(Gid::from_raw(gid)),
                    AtFlags::AT_SYMLINK_NOFOLLOW,
                )?;
                Ok(openat(dir, name, DIR, Mode::empty())?)
            }
            Err(Errno::ELOOP | Errno::ENOTDIR) => Err(BeneathError::Outside),
            Err(e) => Err(e.into()),
        }
    }
}

/// The names of `path`'s components; `..` refused, `.` and `/` dropped.
pub fn normal(path: &Path) -> Result<Vec<OsString>, BeneathError> {
    let mut out = Vec::new();
    for part in path.components() {
        match part {
            Component::Normal(p) => out.push(p.to_os_string()),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => return Err(BeneathError::Outside),
        }
    }
    Ok(out)
}

/// Removes whatever `name` in `dir` is (a directory with all it holds), never following
/// a symlink; nothing there is fine.
pub fn remove_any(dir: &impl AsFd, name: &OsStr) -> io::Result<()> {
    match unlinkat(dir, name, UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(Errno::EISDIR) => {
            let sub = openat(dir, name, DIR, Mode::empty())?;
            let mut listing = nix::dir::Dir::from_fd(sub.try_clone()?)?;
            let names: Vec<OsString> = listing
                .iter()
                .filter_map(Result::ok)
                .map(|e| OsStr::from_bytes(e.file_name().to_bytes()).to_os_string())
                .filter(|n| n != "." && n != "..")
                .collect();
            for child in names {
                remove_any(&sub, &child)?;
            }
            unlinkat(dir, name, UnlinkatFlags::RemoveDir)?;
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parents_are_made_beneath_the_root_and_symlinks_are_not_followed() {
        let root_dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let root = Root::open(root_dir.path(), (0, 0)).unwrap();
        let (_, name) = root.parent(Path::new("a/b/c")).unwrap();
        assert_eq!(name.as_deref(), Some(OsStr::new("c")));
        assert!(root_dir.path().join("a/b").is_dir());
        std::os::unix::fs::symlink(outside.path(), root_dir.path().join("x")).unwrap();
        for path in ["x/a/b", "x/a", "../a", "a/../../b"] {
            let err = root.parent(Path::new(path)).map(|_| ()).unwrap_err();
            assert!(matches!(err, BeneathError::Outside), "{path}: {err:?}");
        }
        assert!(matches!(root.dir(Path::new("x")), Err(BeneathError::Outside)));
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0, "nothing made outside");
    }

    #[test]
    fn remove_any_removes_trees_and_never_follows() {
        let root_dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("keep"), b"k").unwrap();
        std::fs::create_dir_all(root_dir.path().join("t/u")).unwrap();
        std::fs::write(root_dir.path().join("t/u/f"), b"f").unwrap();
        std::os::unix::fs::symlink(outside.path(), root_dir.path().join("t/link")).unwrap();
        let root = Root::open(root_dir.path(), (0, 0)).unwrap();
        remove_any(root.fd(), OsStr::new("t")).unwrap();
        remove_any(root.fd(), OsStr::new("missing")).unwrap();
        assert!(!root_dir.path().join("t").exists());
        assert!(outside.path().join("keep").exists());
    }
}
