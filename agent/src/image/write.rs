//! Writing one tar entry beneath a layer's root, with `*at` calls on its parent's
//! descriptor (see [`super::beneath`]): OCI whiteouts become what overlayfs reads (a 0/0
//! character device, the `trusted.overlay.opaque` attribute); device nodes, sparse files
//! and extended attributes outside `user.` are refused.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use nix::errno::Errno;
use nix::fcntl::{openat, AtFlags, OFlag};
use nix::sys::stat::{
    fchmodat, makedev, mkdirat, mknodat, utimensat, FchmodatFlags, Mode, SFlag, UtimensatFlags,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchownat, linkat, symlinkat, Gid, Uid};
use tar::EntryType;
use xattr::FileExt;

use super::beneath::{remove_any, BeneathError, Root};
use crate::idmap::{IdMap, OutOfRange};

/// Why an entry was not written.
#[derive(Debug)]
pub enum Failed {
    /// Its path (or a hard link's target) leaves the root.
    Outside,
    /// It is a kind of entry that is refused (what it is).
    Kind(String),
    /// It sets this extended attribute, which is refused.
    Xattr(String),
    /// Its owner is outside the node's user namespace range.
    Owner(OutOfRange),
    /// The file system or the stream failed.
    Io(io::Error),
}

impl From<BeneathError> for Failed {
    fn from(e: BeneathError) -> Failed {
        match e {
            BeneathError::Outside => Failed::Outside,
            BeneathError::Io(e) => Failed::Io(e),
        }
    }
}

impl From<io::Error> for Failed {
    fn from(e: io::Error) -> Failed {
        Failed::Io(e)
    }
}

impl From<Errno> for Failed {
    fn from(e: Errno) -> Failed {
        Failed::Io(e.into())
    }
}

const FILE: OFlag = OFlag::O_CREAT
    .union(OFlag::O_EXCL)
    .union(OFlag::O_WRONLY)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);
const DIR: OFlag = OFlag::O_DIRECTORY.union(OFlag::O_NOFOLLOW).union(OFlag::O_CLOEXEC).union(OFlag::O_RDONLY);

/// Writes `entry` (at `path` in the tar) beneath `root` with its owner shifted by `ids`;
/// for a directory, returns the mtime to give it once everything in it is written.
pub fn entry<R: Read>(
    root: &Root,
    entry: &mut tar::Entry<'_, R>,
    path: &Path,
    ids: IdMap,
) -> Result<Option<u64>, Failed> {
    let name = path.file_name().and_then(OsStr::to_str).unwrap_or("");
    if let Some(hidden) = name.strip_prefix(".wh.") {
        whiteout(root, path, hidden)?;
        return Ok(None);
    }
    let kind = entry.header().entry_type();
    if kind == EntryType::XGlobalHeader {
        return Ok(None);
    }
    let meta = Meta::of(entry, ids)?;
    if kind == EntryType::Directory {
        directory(root, path, &meta)?;
        return Ok(Some(meta.mtime));
    }
    let (parent, name) = root.parent(path)?;
    let name = name.ok_or(Failed::Outside)?;
    match kind {
        EntryType::Regular | EntryType::Continuous => file(&parent, &name, entry, &meta),
        EntryType::Symlink => {
            let target =
                entry.link_name()?.ok_or_else(|| Failed::Kind("a symlink without a target".into()))?;
            remove_any(&parent, &name)?;
            symlinkat(target.as_ref(), &parent, name.as_os_str())?;
            meta.own(&parent, &name)?;
            meta.times(&parent, &name)
        }
        EntryType::Link => {
            let target =
                entry.link_name()?.ok_or_else(|| Failed::Kind("a hard link without a target".into()))?;
            let (target_dir, target_name) = root.existing_parent(&target)?;
            let target_name = target_name.ok_or(Failed::Outside)?;
            remove_any(&parent, &name)?;
            linkat(&target_dir, target_name.as_os_str(), &parent, name.as_os_str(), AtFlags::empty())?;
            Ok(())
        }
        EntryType::Fifo => {
            remove_any(&parent, &name)?;
            mknodat(&parent, name.as_os_str(), SFlag::S_IFIFO, Mode::empty(), 0)?;
            meta.own(&parent, &name)?;
            fchmodat(&parent, name.as_os_str(), meta.mode(), FchmodatFlags::FollowSymlink)?;
            meta.times(&parent, &name)
        }
        EntryType::Char | EntryType::Block => Err(Failed::Kind("a device node".into())),
        EntryType::GNUSparse => Err(Failed::Kind("a sparse file".into())),
        other => Err(Failed::Kind(format!("of tar entry type {:?}", other.as_byte() as char))),
    }
    .map(|()| None)
}

/// Gives the directory at `path`, if it is still there, its `mtime`.
pub fn dir_mtime(root: &Root, path: &Path, mtime: u64) -> io::Result<()> {
    let fd = match root.existing_dir(path) {
        Ok(fd) => fd,
        // A later entry replaced or hid it.
        Err(_) => return Ok(()),
    };
    let time = at(mtime);
    File::from(fd).set_times(std::fs::FileTimes::new().set_accessed(time).set_modified(time))
}

/// `.wh..wh..opq` makes its directory opaque; `.wh.<name>` hides `<name>` below.
fn whiteout(root: &Root, path: &Path, hidden: &str) -> Result<(), Failed> {
    let dir = root.dir(path.parent().unwrap_or(Path::new("")))?;
    if hidden == ".wh..opq" {
        File::from(dir).set_xattr("trusted.overlay.opaque", b"y")?;
        return Ok(());
    }
    if hidden.is_empty() || hidden == "." || hidden == ".." {
        return Err(Failed::Outside);
    }
    remove_any(&dir, OsStr::new(hidden))?;
    mknodat(&dir, hidden, SFlag::S_IFCHR, Mode::empty(), makedev(0, 0))?;
    Ok(())
}

fn directory(root: &Root, path: &Path, meta: &Meta) -> Result<(), Failed> {
    let (parent, name) = root.parent(path)?;
    let fd = match name {
        None => parent,
        Some(name) => match openat(&parent, name.as_os_str(), DIR, Mode::empty()) {
            Ok(fd) => fd,
            Err(e) => {
                if e != Errno::ENOENT {
                    remove_any(&parent, &name)?;
                }
                mkdirat(&parent, name.as_os_str(), Mode::from_bits_truncate(0o700))?;
                openat(&parent, name.as_os_str(), DIR, Mode::empty())?
            }
        },
    };
    meta.apply(File::from(fd))
}

fn file<R: Read>(
    parent: &OwnedFd,
    name: &OsStr,
    entry: &mut tar::Entry<'_, R>,
    meta: &Meta,
) -> Result<(), Failed> {
    remove_any(parent, name)?;
    let fd = openat(parent, name, FILE, Mode::from_bits_truncate(0o600))?;
    let mut out = File::from(fd);
    io::copy(entry, &mut out)?;
    let time = at(meta.mtime);
    out.set_times(std::fs::FileTimes::new().set_accessed(time).set_modified(time))?;
    meta.apply(out)
}

/// An entry's owner (shifted), mode, mtime and `user.` extended attributes.
struct Meta {
    uid: u32,
    gid: u32,
    mode: u32,
    mtime: u64,
    xattrs: Vec<(String, Vec<u8>)>,
}

impl Meta {
    fn of<R: Read>(entry: &mut tar::Entry<'_, R>, ids: IdMap) -> Result<Meta, Failed> {
        let header = entry.header();
        let uid = ids.host(header.uid()?).map_err(Failed::Owner)?;
        let gid = ids.host(header.gid()?).map_err(Failed::Owner)?;
        let (mode, mtime) = (header.mode()? & 0o7777, header.mtime()?);
        let mut xattrs = Vec::new();
        if let Some(pax) = entry.pax_extensions()? {
            for ext in pax {
                let ext = ext?;
                let Some(name) = ext.key_bytes().strip_prefix(b"SCHILY.xattr.") else { continue };
                let name = String::from_utf8_lossy(name).into_owned();
                if !name.starts_with("user.") {
                    return Err(Failed::Xattr(name));
                }
                xattrs.push((name, ext.value_bytes().to_vec()));
            }
        }
        Ok(Meta { uid, gid, mode, mtime, xattrs })
    }

    fn mode(&self) -> Mode {
        Mode::from_bits_truncate(self.mode)
    }

    /// Owner, then mode (a chown clears the set-id bits), then attributes of an open file
    /// or directory.
    fn apply(&self, file: File) -> Result<(), Failed> {
        std::os::unix::fs::fchown(&file, Some(self.uid), Some(self.gid))?;
        file.set_permissions(std::fs::Permissions::from_mode(self.mode))?;
        for (name, value) in &self.xattrs {
            file.set_xattr(name, value)?;
        }
        Ok(())
    }

    fn own(&self, dir: &impl AsFd, name: &OsStr) -> Result<(), Failed> {
        let (uid, gid) = (Uid::from_raw(self.uid), Gid::from_raw(self.gid));
        fchownat(dir, name, Some(uid), Some(gid), AtFlags::AT_SYMLINK_NOFOLLOW)?;
        Ok(())
    }

    fn times(&self, dir: &impl AsFd, name: &OsStr) -> Result<(), Failed> {
        let t = TimeSpec::new(i64::try_from(self.mtime).unwrap_or(0), 0);
        utimensat(dir, name, &t, &t, UtimensatFlags::NoFollowSymlink)?;
        Ok(())
    }
}

/// The time `secs` after the epoch (the epoch itself if that overflows).
fn at(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(secs)).unwrap_or(SystemTime::UNIX_EPOCH)
}
