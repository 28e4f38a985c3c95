//! Unpacking a layer's tar stream straight into an overlayfs upper directory.
//!
//! This is what containerd's applier does for overlay mounts, done by the agent so that a
//! layer is unpacked while it downloads and several layers unpack at once: OCI whiteouts
//! (`.wh.<name>`, `.wh..wh..opq`) become what overlayfs reads (a 0/0 character device, the
//! `trusted.overlay.opaque` attribute), and the sha256 of the uncompressed stream — the
//! layer's diff ID — is computed on the way.

use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};

use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use sha2::{Digest, Sha256};
use tar::EntryType;

use crate::idmap::IdMap;

/// How a layer blob is compressed, from its media type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// A plain tar.
    None,
    /// gzip (`tar+gzip`, Docker's `rootfs.diff.tar.gzip`).
    Gzip,
    /// zstd (`tar+zstd`).
    Zstd,
}

impl Compression {
    /// The compression of a layer with `media_type`.
    pub fn of(media_type: &str) -> Result<Compression, ExtractError> {
        match media_type {
            "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.docker.image.rootfs.diff.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar" => Ok(Compression::None),
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Ok(Compression::Gzip),
            "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => Ok(Compression::Zstd),
            other => Err(ExtractError::MediaType(other.to_string())),
        }
    }
}

/// A layer that could not be unpacked.
#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    /// The layer's media type is not a tar the agent can read.
    #[error("layer media type {0:?} is not supported (allowed: tar, tar+gzip, tar+zstd)")]
    MediaType(String),
    /// The stream could not be read or decompressed, or is not a tar.
    #[error("reading the layer: {0}")]
    Read(io::Error),
    /// An entry could not be written.
    #[error("layer entry {path}: {source}")]
    Entry {
        /// The entry's path in the tar.
        path: String,
        /// What failed.
        source: io::Error,
    },
    /// An entry's owner is outside the node's user namespace range.
    #[error("layer entry {path}: {source}")]
    Owner {
        /// The entry's path in the tar.
        path: String,
        /// Why.
        source: crate::idmap::OutOfRange,
    },
    /// An entry names a path outside the layer (`..`, or through a symlink).
    #[error("layer entry {0} points outside the layer; refused")]
    Outside(String),
}

/// What an unpacked layer was.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Extracted {
    /// `sha256:<hex>` of the uncompressed tar.
    pub diff_id: String,
    /// Bytes of the uncompressed tar.
    pub bytes: u64,
}

/// Unpacks the (compressed) tar read from `reader` into `dir`, an empty overlayfs upper
/// directory, with every owner shifted by `ids`, and returns the stream's diff ID.
/// Everything is read to the end, so the diff ID covers the whole stream even past the
/// tar's end marker.
pub fn extract(
    reader: impl Read,
    compression: Compression,
    dir: &Path,
    ids: IdMap,
) -> Result<Extracted, ExtractError> {
    let plain: Box<dyn Read> = match compression {
        Compression::None => Box::new(reader),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(reader)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(reader).map_err(ExtractError::Read)?),
    };
    let mut archive = tar::Archive::new(Hashing { inner: plain, hasher: Sha256::new(), bytes: 0 });
    archive.set_preserve_permissions(true);
    // With a shift, owners are set below (the tar crate would set the header's ids).
    archive.set_preserve_ownerships(!ids.remapped());
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(true);
    archive.set_overwrite(true);
    archive.set_mask(0);
    // Files written into a directory change its mtime, so directories get theirs at the end.
    let mut dir_times = Vec::new();
    for entry in archive.entries().map_err(ExtractError::Read)? {
        let mut entry = entry.map_err(ExtractError::Read)?;
        let path = entry.path().map_err(ExtractError::Read)?.into_owned();
        let shown = path.display().to_string();
        let fail = |source| ExtractError::Entry { path: shown.clone(), source };
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if let Some(hidden) = name.strip_prefix(".wh.") {
            let parent = inside(dir, path.parent().unwrap_or(Path::new("")), &shown)?;
            if hidden == ".wh..opq" {
                xattr::set(&parent, "trusted.overlay.opaque", b"y").map_err(fail)?;
            } else if hidden.is_empty() || hidden == "." || hidden == ".." {
                return Err(ExtractError::Outside(shown));
            } else {
                whiteout(&parent.join(hidden)).map_err(fail)?;
            }
            continue;
        }
        let kind = entry.header().entry_type();
        if matches!(kind, EntryType::Char | EntryType::Block | EntryType::Fifo) {
            let parent = inside(dir, path.parent().unwrap_or(Path::new("")), &shown)?;
            let target = parent.join(path.file_name().ok_or_else(|| ExtractError::Outside(shown.clone()))?);
            special(&entry, kind, &target, ids, &shown)?;
            continue;
        }
        if !entry.unpack_in(dir).map_err(fail)? {
            return Err(ExtractError::Outside(shown));
        }
        if ids.remapped() && kind != EntryType::Link {
            let normal = path.components().filter(|c| matches!(c, Component::Normal(_)));
            shift_owner(&dir.join(normal.collect::<PathBuf>()), entry.header(), ids, &shown)?;
        }
        if kind == EntryType::Directory {
            if let Ok(mtime) = entry.header().mtime() {
                let normal = path.components().filter(|c| matches!(c, Component::Normal(_)));
                dir_times.push((dir.join(normal.collect::<PathBuf>()), mtime));
            }
        }
    }
    let root = dir.canonicalize().map_err(|source| ExtractError::Entry { path: ".".into(), source })?;
    for (path, mtime) in dir_times.iter().rev() {
        // A later entry may have replaced a parent with a symlink out of the layer.
        match path.parent().map(Path::canonicalize) {
            Some(Ok(parent)) if parent.starts_with(&root) => {}
            _ => continue,
        }
        let time = filetime::FileTime::from_unix_time(*mtime as i64, 0);
        let shown = || path.display().to_string();
        filetime::set_symlink_file_times(path, time, time)
            .map_err(|source| ExtractError::Entry { path: shown(), source })?;
    }
    let mut rest = archive.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(ExtractError::Read)?;
    Ok(Extracted { diff_id: format!("sha256:{}", hex::encode(rest.hasher.finalize())), bytes: rest.bytes })
}

/// `dir`/`relative`, created if missing, refused when any part is `..` or when it resolves
/// (through symlinks) outside `dir`.
fn inside(dir: &Path, relative: &Path, shown: &str) -> Result<PathBuf, ExtractError> {
    let mut out = dir.to_path_buf();
    for part in relative.components() {
        match part {
            Component::Normal(p) => out.push(p),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => return Err(ExtractError::Outside(shown.into())),
        }
    }
    let io = |source| ExtractError::Entry { path: shown.to_string(), source };
    std::fs::create_dir_all(&out).map_err(io)?;
    let (real, root) = (out.canonicalize().map_err(io)?, dir.canonicalize().map_err(io)?);
    if !real.starts_with(&root) {
        return Err(ExtractError::Outside(shown.into()));
    }
    Ok(real)
}

/// Makes `path` an overlayfs whiteout: a character device 0/0 hides the lower file.
fn whiteout(path: &Path) -> io::Result<()> {
    remove_any(path)?;
    mknod(path, SFlag::S_IFCHR, Mode::empty(), makedev(0, 0))?;
    Ok(())
}

/// Gives the unpacked `path` the entry's owner shifted by `ids`, and its mode again
/// (a chown clears the set-id bits).
fn shift_owner(path: &Path, header: &tar::Header, ids: IdMap, shown: &str) -> Result<(), ExtractError> {
    let fail = |source| ExtractError::Entry { path: shown.to_string(), source };
    let owner = |id: io::Result<u64>| -> Result<u32, ExtractError> {
        ids.host(id.map_err(fail)?).map_err(|source| ExtractError::Owner { path: shown.to_string(), source })
    };
    let (uid, gid) = (owner(header.uid())?, owner(header.gid())?);
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).map_err(fail)?;
    if header.entry_type() != EntryType::Symlink {
        let mode = header.mode().map_err(fail)? & 0o7777;
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode)).map_err(fail)?;
    }
    Ok(())
}

/// Creates a device node or FIFO with the entry's mode, owner (shifted by `ids`) and
/// numbers.
fn special<R: Read>(
    entry: &tar::Entry<'_, R>,
    kind: EntryType,
    path: &Path,
    ids: IdMap,
    shown: &str,
) -> Result<(), ExtractError> {
    let fail = |source| ExtractError::Entry { path: shown.to_string(), source };
    make_special(entry, kind, path).map_err(fail)?;
    let header = entry.header();
    let owner = |id: io::Result<u64>| -> Result<u32, ExtractError> {
        ids.host(id.map_err(fail)?).map_err(|source| ExtractError::Owner { path: shown.to_string(), source })
    };
    let (uid, gid) = (owner(header.uid())?, owner(header.gid())?);
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).map_err(fail)?;
    let mtime = filetime::FileTime::from_unix_time(header.mtime().map_err(fail)? as i64, 0);
    filetime::set_symlink_file_times(path, mtime, mtime).map_err(fail)?;
    Ok(())
}

fn make_special<R: Read>(entry: &tar::Entry<'_, R>, kind: EntryType, path: &Path) -> io::Result<()> {
    let header = entry.header();
    let flag = match kind {
        EntryType::Char => SFlag::S_IFCHR,
        EntryType::Block => SFlag::S_IFBLK,
        _ => SFlag::S_IFIFO,
    };
    // Some writers leave the numbers blank for FIFOs.
    let major = u64::from(header.device_major().ok().flatten().unwrap_or(0));
    let minor = u64::from(header.device_minor().ok().flatten().unwrap_or(0));
    remove_any(path)?;
    let mode = Mode::from_bits_truncate(header.mode()? & 0o7777);
    mknod(path, flag, mode, makedev(major, minor))?;
    Ok(())
}

fn remove_any(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// A reader that hashes and counts what passes through it.
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};

    use super::*;

    fn tar_of(entries: &[(&str, EntryType, &[u8], Option<&str>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind, data, link) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_mode(if *kind == EntryType::Directory { 0o755 } else { 0o640 });
            h.set_uid(1000);
            h.set_gid(1001);
            h.set_mtime(1_700_000_000);
            h.set_size(data.len() as u64);
            if let Some(l) = link {
                h.set_link_name(l).expect("link name");
            }
            h.set_path(path).expect("path");
            if *kind == EntryType::Char {
                h.set_device_major(1).expect("major");
                h.set_device_minor(3).expect("minor");
            }
            h.set_cksum();
            b.append(&h, *data).expect("append");
        }
        b.into_inner().expect("tar")
    }

    fn sha(bytes: &[u8]) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
    }

    #[test]
    fn files_links_owners_and_the_diff_id() {
        let tar = tar_of(&[
            ("etc/", EntryType::Directory, b"", None),
            ("etc/hello", EntryType::Regular, b"hi\n", None),
            ("etc/again", EntryType::Link, b"", Some("etc/hello")),
            ("etc/soft", EntryType::Symlink, b"", Some("/nowhere")),
        ]);
        let dir = tempfile::tempdir().expect("tempdir");
        let out = extract(&tar[..], Compression::None, dir.path(), IdMap::HOST).expect("extract");
        assert_eq!(out, Extracted { diff_id: sha(&tar), bytes: tar.len() as u64 });
        let etc = std::fs::metadata(dir.path().join("etc")).expect("etc");
        assert_eq!(etc.mtime(), 1_700_000_000, "a directory keeps its mtime from the tar");
        let hello = dir.path().join("etc/hello");
        assert_eq!(std::fs::read(&hello).expect("read"), b"hi\n");
        let meta = std::fs::metadata(&hello).expect("stat");
        assert_eq!((meta.uid(), meta.gid(), meta.mode() & 0o7777, meta.nlink()), (1000, 1001, 0o640, 2));
        assert_eq!(std::fs::read_link(dir.path().join("etc/soft")).expect("link"), Path::new("/nowhere"));
    }

    #[test]
    fn owners_are_shifted_into_the_nodes_range_and_set_id_bits_kept() {
        let mut tar = tar_of(&[
            ("bin/", EntryType::Directory, b"", None),
            ("bin/tool", EntryType::Regular, b"x", None),
            ("bin/again", EntryType::Link, b"", Some("bin/tool")),
            ("bin/soft", EntryType::Symlink, b"", Some("tool")),
            ("bin/null", EntryType::Char, b"", None),
        ]);
        // bin/tool is set-uid: a chown clears that bit, so it must be set again after.
        let mut archive = tar::Archive::new(&tar[..]);
        let second = archive.entries().expect("entries").nth(1).expect("two entries").expect("entry");
        let offset = second.raw_header_position() as usize;
        let mut h = tar::Header::from_byte_slice(&tar[offset..offset + 512]).clone();
        h.set_mode(0o4755);
        h.set_cksum();
        tar[offset..offset + 512].copy_from_slice(h.as_bytes());
        let ids = IdMap { base: 100_000, size: 65_536 };
        let dir = tempfile::tempdir().expect("tempdir");
        extract(&tar[..], Compression::None, dir.path(), ids).expect("extract");
        for (path, mode) in [("bin", 0o755), ("bin/tool", 0o4755), ("bin/null", 0o640)] {
            let m = std::fs::symlink_metadata(dir.path().join(path)).expect(path);
            assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (101_000, 101_001, mode), "{path}");
        }
        let soft = std::fs::symlink_metadata(dir.path().join("bin/soft")).expect("soft");
        assert_eq!((soft.uid(), soft.gid()), (101_000, 101_001));

        let small = IdMap { base: 100_000, size: 1000 };
        let dir = tempfile::tempdir().expect("tempdir");
        let err =
            extract(&tar[..], Compression::None, dir.path(), small).expect_err("uid 1000 is out of 0..1000");
        assert!(err.to_string().contains("outside the node's user namespace range"), "{err}");
    }

    #[test]
    fn whiteouts_become_what_overlayfs_reads() {
        let tar = tar_of(&[
            ("gone/", EntryType::Directory, b"", None),
            ("gone/.wh..wh..opq", EntryType::Regular, b"", None),
            ("usr/.wh.old", EntryType::Regular, b"", None),
            ("dev/null", EntryType::Char, b"", None),
        ]);
        let dir = tempfile::tempdir().expect("tempdir");
        extract(&tar[..], Compression::None, dir.path(), IdMap::HOST).expect("extract");
        let wh = std::fs::symlink_metadata(dir.path().join("usr/old")).expect("whiteout");
        assert!(wh.file_type().is_char_device());
        assert_eq!(wh.rdev(), 0);
        assert!(!dir.path().join("usr/.wh.old").exists());
        let opaque = xattr::get(dir.path().join("gone"), "trusted.overlay.opaque").expect("xattr");
        assert_eq!(opaque.as_deref(), Some(&b"y"[..]));
        let null = std::fs::symlink_metadata(dir.path().join("dev/null")).expect("dev");
        assert!(null.file_type().is_char_device());
        assert_eq!((null.rdev(), null.uid()), (makedev(1, 3), 1000));
    }

    #[test]
    fn gzip_and_zstd_give_the_uncompressed_diff_id() {
        let tar = tar_of(&[("a", EntryType::Regular, b"payload", None)]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).expect("gzip");
        let gz = gz.finish().expect("gzip");
        let zs = zstd::encode_all(&tar[..], 1).expect("zstd");
        for (bytes, c) in [(gz, Compression::Gzip), (zs, Compression::Zstd)] {
            let dir = tempfile::tempdir().expect("tempdir");
            let out = extract(&bytes[..], c, dir.path(), IdMap::HOST).expect("extract");
            assert_eq!(out.diff_id, sha(&tar));
            assert_eq!(std::fs::read(dir.path().join("a")).expect("read"), b"payload");
        }
    }

    #[test]
    fn paths_out_of_the_layer_are_refused() {
        for entries in [
            vec![("../escape", EntryType::Regular, &b"x"[..], None)],
            vec![("../.wh.x", EntryType::Regular, &b""[..], None)],
            vec![
                ("out", EntryType::Symlink, &b""[..], Some("/tmp")),
                ("out/.wh.x", EntryType::Regular, b"", None),
            ],
        ] {
            // tar::Builder refuses `..`, so these headers are written by hand.
            let mut raw = Vec::new();
            for (path, kind, data, link) in &entries {
                let mut h = tar::Header::new_old();
                h.set_entry_type(*kind);
                h.set_size(data.len() as u64);
                h.set_mode(0o644);
                h.set_uid(0);
                h.set_gid(0);
                h.set_mtime(0);
                h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
                if let Some(l) = link {
                    h.as_old_mut().linkname[..l.len()].copy_from_slice(l.as_bytes());
                }
                h.set_cksum();
                raw.extend_from_slice(h.as_bytes());
                raw.extend_from_slice(data);
                raw.resize(raw.len().div_ceil(512) * 512, 0);
            }
            raw.extend_from_slice(&[0; 1024]);
            let dir = tempfile::tempdir().expect("tempdir");
            let err = extract(&raw[..], Compression::None, dir.path(), IdMap::HOST).expect_err("must refuse");
            assert!(matches!(err, ExtractError::Outside(_)), "{err:?}");
        }
    }

    #[test]
    fn unknown_media_types_are_named() {
        let err = Compression::of("application/x-zip").expect_err("refused");
        assert!(err.to_string().contains("application/x-zip") && err.to_string().contains("tar+gzip"));
    }
}
