//! Unpacking a layer's tar stream straight into an overlayfs upper directory.
//!
//! This is what containerd's applier does for overlay mounts, done by the agent so that a
//! layer is unpacked while it downloads and several layers unpack at once: OCI whiteouts
//! (`.wh.<name>`, `.wh..wh..opq`) become what overlayfs reads (a 0/0 character device, the
//! `trusted.overlay.opaque` attribute), and the sha256 of the uncompressed stream — the
//! layer's diff ID — is computed on the way.

use std::io::{self, Read};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};

use super::beneath::Root;
use super::write;
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
    #[error("layer entry {0} points outside the layer (through `..` or a symlink); refused")]
    Outside(String),
    /// An entry is of a kind a function image may not hold.
    #[error("layer entry {path} is {what}; refused (allowed: files, directories, symlinks, hard links, FIFOs and OCI whiteouts)")]
    Kind {
        /// The entry's path in the tar.
        path: String,
        /// What it is.
        what: String,
    },
    /// An entry carries an extended attribute outside the `user.` namespace.
    #[error("layer entry {path} sets the extended attribute {name:?}; refused (only user.* attributes are allowed)")]
    Xattr {
        /// The entry's path in the tar.
        path: String,
        /// The attribute.
        name: String,
    },
    /// The image unpacks to more bytes or entries than the node allows.
    #[error("the image unpacks to more than {limit} {what}, the node's limit ({setting}); refused")]
    Budget {
        /// Bytes or entries.
        what: &'static str,
        /// The limit.
        limit: u64,
        /// The agent setting that sets it.
        setting: &'static str,
    },
}

/// What an unpacked layer was.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Extracted {
    /// `sha256:<hex>` of the uncompressed tar.
    pub diff_id: String,
    /// Bytes of the uncompressed tar.
    pub bytes: u64,
}

/// How much one image may unpack to, over all its layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnpackLimits {
    /// Bytes of uncompressed tar.
    pub max_bytes: u64,
    /// Tar entries.
    pub max_entries: u64,
}

impl Default for UnpackLimits {
    fn default() -> UnpackLimits {
        UnpackLimits { max_bytes: 4 << 30, max_entries: 1_000_000 }
    }
}

/// What is left of an image's [`UnpackLimits`], shared by its layers as they unpack side
/// by side.
#[derive(Debug)]
pub struct Budget {
    limits: UnpackLimits,
    bytes: AtomicU64,
    entries: AtomicU64,
}

impl Budget {
    /// A whole budget.
    pub fn new(limits: UnpackLimits) -> Budget {
        Budget { limits, bytes: AtomicU64::new(0), entries: AtomicU64::new(0) }
    }

    fn take_bytes(&self, n: u64) -> Result<(), ExtractError> {
        let used = self.bytes.fetch_add(n, Ordering::Relaxed).saturating_add(n);
        match used > self.limits.max_bytes {
            true => Err(self.over_bytes()),
            false => Ok(()),
        }
    }

    fn over_bytes(&self) -> ExtractError {
        let setting = "image_max_unpacked_bytes";
        ExtractError::Budget { what: "bytes", limit: self.limits.max_bytes, setting }
    }

    fn bytes_spent(&self) -> bool {
        self.bytes.load(Ordering::Relaxed) > self.limits.max_bytes
    }

    fn take_entry(&self) -> Result<(), ExtractError> {
        match self.entries.fetch_add(1, Ordering::Relaxed) >= self.limits.max_entries {
            true => Err(ExtractError::Budget {
                what: "entries",
                limit: self.limits.max_entries,
                setting: "image_max_unpacked_entries",
            }),
            false => Ok(()),
        }
    }
}

/// Unpacks the (compressed) tar read from `reader` into `dir`, an empty overlayfs upper
/// directory, with every owner shifted by `ids`, spending `budget`, and returns the
/// stream's diff ID. Everything is read to the end, so the diff ID covers the whole
/// stream even past the tar's end marker.
pub fn extract(
    reader: impl Read,
    compression: Compression,
    dir: &Path,
    ids: IdMap,
    budget: &Budget,
) -> Result<Extracted, ExtractError> {
    let plain: Box<dyn Read> = match compression {
        Compression::None => Box::new(reader),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(reader)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(reader).map_err(ExtractError::Read)?),
    };
    let read = |e: io::Error| if budget.bytes_spent() { budget.over_bytes() } else { ExtractError::Read(e) };
    let mut archive = tar::Archive::new(Hashing { inner: plain, hasher: Sha256::new(), bytes: 0, budget });
    let root_owner = ids.host(0).map_err(|source| ExtractError::Owner { path: ".".into(), source })?;
    let root = Root::open(dir, (root_owner, root_owner))
        .map_err(|source| ExtractError::Entry { path: ".".into(), source })?;
    // Files written into a directory change its mtime, so directories get theirs at the end.
    let mut dir_times = Vec::new();
    for entry in archive.entries().map_err(read)? {
        let mut entry = entry.map_err(read)?;
        budget.take_entry()?;
        let path = entry.path().map_err(read)?.into_owned();
        let shown = path.display().to_string();
        match write::entry(&root, &mut entry, &path, ids) {
            Ok(Some(mtime)) => dir_times.push((path, mtime)),
            Ok(None) => {}
            Err(write::Failed::Outside) => return Err(ExtractError::Outside(shown)),
            Err(write::Failed::Kind(what)) => return Err(ExtractError::Kind { path: shown, what }),
            Err(write::Failed::Xattr(name)) => return Err(ExtractError::Xattr { path: shown, name }),
            Err(write::Failed::Owner(source)) => return Err(ExtractError::Owner { path: shown, source }),
            Err(write::Failed::Io(_)) if budget.bytes_spent() => return Err(budget.over_bytes()),
            Err(write::Failed::Io(source)) => return Err(ExtractError::Entry { path: shown, source }),
        }
    }
    for (path, mtime) in dir_times.iter().rev() {
        write::dir_mtime(&root, path, *mtime)
            .map_err(|source| ExtractError::Entry { path: path.display().to_string(), source })?;
    }
    let mut rest = archive.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(read)?;
    Ok(Extracted { diff_id: format!("sha256:{}", hex::encode(rest.hasher.finalize())), bytes: rest.bytes })
}

/// A reader that hashes and counts what passes through it, and fails once the image's
/// budget of bytes is spent.
struct Hashing<'b, R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
    budget: &'b Budget,
}

impl<R: Read> Read for Hashing<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.budget.take_bytes(n as u64).map_err(io::Error::other)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};

    use tar::EntryType;

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

    fn whole() -> Budget {
        Budget::new(UnpackLimits::default())
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
        let out = extract(&tar[..], Compression::None, dir.path(), IdMap::HOST, &whole()).expect("extract");
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
            ("bin/pipe", EntryType::Fifo, b"", None),
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
        extract(&tar[..], Compression::None, dir.path(), ids, &whole()).expect("extract");
        for (path, mode) in [("bin", 0o755), ("bin/tool", 0o4755), ("bin/pipe", 0o640)] {
            let m = std::fs::symlink_metadata(dir.path().join(path)).expect(path);
            assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (101_000, 101_001, mode), "{path}");
        }
        let soft = std::fs::symlink_metadata(dir.path().join("bin/soft")).expect("soft");
        assert_eq!((soft.uid(), soft.gid()), (101_000, 101_001));

        let small = IdMap { base: 100_000, size: 1000 };
        let dir = tempfile::tempdir().expect("tempdir");
        let err = extract(&tar[..], Compression::None, dir.path(), small, &whole())
            .expect_err("uid 1000 is out of 0..1000");
        assert!(err.to_string().contains("outside the node's user namespace range"), "{err}");
    }

    #[test]
    fn whiteouts_become_what_overlayfs_reads() {
        let tar = tar_of(&[
            ("gone/", EntryType::Directory, b"", None),
            ("gone/.wh..wh..opq", EntryType::Regular, b"", None),
            ("usr/.wh.old", EntryType::Regular, b"", None),
        ]);
        let dir = tempfile::tempdir().expect("tempdir");
        extract(&tar[..], Compression::None, dir.path(), IdMap::HOST, &whole()).expect("extract");
        let wh = std::fs::symlink_metadata(dir.path().join("usr/old")).expect("whiteout");
        assert!(wh.file_type().is_char_device());
        assert_eq!(wh.rdev(), nix::sys::stat::makedev(0, 0));
        assert!(!dir.path().join("usr/.wh.old").exists());
        let opaque = xattr::get(dir.path().join("gone"), "trusted.overlay.opaque").expect("xattr");
        assert_eq!(opaque.as_deref(), Some(&b"y"[..]));
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
            let out = extract(&bytes[..], c, dir.path(), IdMap::HOST, &whole()).expect("extract");
            assert_eq!(out.diff_id, sha(&tar));
            assert_eq!(std::fs::read(dir.path().join("a")).expect("read"), b"payload");
        }
    }

    /// A tar of raw headers (tar::Builder refuses `..`, so these are written by hand).
    fn raw_tar(entries: &[(&str, EntryType, &[u8], Option<&str>)]) -> Vec<u8> {
        let mut raw = Vec::new();
        for (path, kind, data, link) in entries {
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
        raw
    }

    #[test]
    fn paths_out_of_the_layer_are_refused_and_nothing_is_made_outside() {
        let outside = tempfile::tempdir().expect("tempdir");
        std::fs::write(outside.path().join("keep"), b"k").expect("write");
        let out = outside.path().to_str().expect("utf-8");
        let via = |second: (&'static str, EntryType, Option<&'static str>)| {
            raw_tar(&[("x", EntryType::Symlink, b"", Some(out)), (second.0, second.1, b"", second.2)])
        };
        for raw in [
            raw_tar(&[("../escape", EntryType::Regular, b"x", None)]),
            raw_tar(&[("../.wh.x", EntryType::Regular, b"", None)]),
            raw_tar(&[("h", EntryType::Link, b"", Some("../etc/passwd"))]),
            // Through a symlink, with components missing beneath it: nothing may be made.
            via(("x/a/b/.wh.f", EntryType::Regular, None)),
            via(("x/a/b/.wh..wh..opq", EntryType::Regular, None)),
            via(("x/a/pipe", EntryType::Fifo, None)),
            via(("x/a/file", EntryType::Regular, None)),
            via(("x/a/", EntryType::Directory, None)),
            via(("x/a/link", EntryType::Symlink, Some("/"))),
            via(("h", EntryType::Link, Some("x/keep"))),
            via(("x/keep", EntryType::Regular, None)),
        ] {
            let dir = tempfile::tempdir().expect("tempdir");
            let err = extract(&raw[..], Compression::None, dir.path(), IdMap::HOST, &whole())
                .expect_err("must refuse");
            assert!(matches!(err, ExtractError::Outside(_)), "{err:?}");
            let left: Vec<_> = std::fs::read_dir(outside.path())
                .expect("ls")
                .map(|e| e.expect("entry").file_name())
                .collect();
            assert_eq!(left, ["keep"], "nothing made outside the layer");
            assert_eq!(std::fs::read(outside.path().join("keep")).expect("read"), b"k");
        }
    }

    #[test]
    fn devices_sparse_files_and_privileged_attributes_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tar = tar_of(&[("dev/null", EntryType::Char, b"", None)]);
        let err =
            extract(&tar[..], Compression::None, dir.path(), IdMap::HOST, &whole()).expect_err("device");
        assert!(err.to_string().contains("dev/null is a device node; refused"), "{err}");
        // A file "f" with the extended attribute `name`.
        let with_xattr = |name: &str, value: &[u8]| {
            let mut b = tar::Builder::new(Vec::new());
            let key = format!("SCHILY.xattr.{name}");
            b.append_pax_extensions([(key.as_str(), value)]).expect("pax");
            let mut h = tar::Header::new_gnu();
            h.set_size(1);
            h.set_mode(0o644);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            h.set_cksum();
            b.append_data(&mut h, "f", &b"x"[..]).expect("append");
            b.into_inner().expect("tar")
        };
        for name in ["security.capability", "trusted.overlay.opaque", "system.posix_acl_access"] {
            let tar = with_xattr(name, b"v");
            let dir = tempfile::tempdir().expect("tempdir");
            let err =
                extract(&tar[..], Compression::None, dir.path(), IdMap::HOST, &whole()).expect_err(name);
            assert!(err.to_string().contains(name) && err.to_string().contains("only user.*"), "{err}");
        }
        let tar = with_xattr("user.note", b"kept");
        let dir = tempfile::tempdir().expect("tempdir");
        extract(&tar[..], Compression::None, dir.path(), IdMap::HOST, &whole()).expect("user.* is fine");
        assert_eq!(
            xattr::get(dir.path().join("f"), "user.note").expect("get").as_deref(),
            Some(&b"kept"[..])
        );
    }

    #[test]
    fn an_image_unpacks_within_its_budget_of_bytes_and_entries() {
        // A gzip bomb: 64 MiB of zeros in a few kilobytes.
        let zeros = vec![0u8; 64 << 20];
        let tar = tar_of(&[("zeros", EntryType::Regular, &zeros, None)]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(&tar).expect("gzip");
        let bomb = gz.finish().expect("gzip");
        assert!(bomb.len() < 1 << 20);
        let budget = Budget::new(UnpackLimits { max_bytes: 8 << 20, max_entries: 10 });
        let dir = tempfile::tempdir().expect("tempdir");
        let err = extract(&bomb[..], Compression::Gzip, dir.path(), IdMap::HOST, &budget).expect_err("bomb");
        assert!(
            err.to_string().contains("more than 8388608 bytes")
                && err.to_string().contains("image_max_unpacked_bytes"),
            "{err}"
        );

        // The budget is the image's: two layers share it.
        let budget = Budget::new(UnpackLimits { max_bytes: 1 << 30, max_entries: 3 });
        let two = tar_of(&[("a", EntryType::Regular, b"", None), ("b", EntryType::Regular, b"", None)]);
        let dir = tempfile::tempdir().expect("tempdir");
        extract(&two[..], Compression::None, dir.path(), IdMap::HOST, &budget).expect("two of three");
        let dir = tempfile::tempdir().expect("tempdir");
        let err = extract(&two[..], Compression::None, dir.path(), IdMap::HOST, &budget)
            .expect_err("four of three");
        assert!(
            err.to_string().contains("more than 3 entries")
                && err.to_string().contains("image_max_unpacked_entries"),
            "{err}"
        );
    }

    #[test]
    fn unknown_media_types_are_named() {
        let err = Compression::of("application/x-zip").expect_err("refused");
        assert!(err.to_string().contains("application/x-zip") && err.to_string().contains("tar+gzip"));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod fuzz {
    use tar::EntryType;

    use super::*;

    /// Any tar stream, made of entries with arbitrary paths, kinds and link names: an
    /// answer or an error, never a panic, and never a file outside the layer.
    #[test]
    fn fuzz_tar_extraction() {
        let outside = tempfile::tempdir().unwrap();
        let out = outside.path().to_str().unwrap().to_string();
        let kinds = [
            EntryType::Regular,
            EntryType::Directory,
            EntryType::Symlink,
            EntryType::Link,
            EntryType::Fifo,
            EntryType::Char,
            EntryType::GNUSparse,
        ];
        let parts = ["a", "b", "..", ".", "x", ".wh.a", ".wh..wh..opq", "", "/"];
        fnrt_common::fuzz::run("tar", |u| {
            let mut raw = Vec::new();
            for _ in 0..u.int_in_range(1..=6)? {
                let depth = u.int_in_range(1..=4)?;
                let path: Vec<&str> =
                    (0..depth).map(|_| u.choose(&parts).copied()).collect::<Result<_, _>>()?;
                let path = path.join("/");
                let link = match u.int_in_range(0..=2)? {
                    0 => out.clone(),
                    1 => (*u.choose(&parts)?).to_string(),
                    _ => "x/a".to_string(),
                };
                let mut h = tar::Header::new_old();
                h.set_entry_type(*u.choose(&kinds)?);
                h.set_size(0);
                h.set_mode(u.int_in_range(0..=0o7777)?);
                h.set_uid(0);
                h.set_gid(0);
                h.set_mtime(u.arbitrary()?);
                let name = path.as_bytes();
                h.as_old_mut().name[..name.len().min(99)].copy_from_slice(&name[..name.len().min(99)]);
                let l = link.as_bytes();
                h.as_old_mut().linkname[..l.len().min(99)].copy_from_slice(&l[..l.len().min(99)]);
                h.set_cksum();
                raw.extend_from_slice(h.as_bytes());
            }
            raw.extend_from_slice(&[0; 1024]);
            if u.arbitrary()? {
                // Some garbage in the middle as well.
                let at = u.int_in_range(0..=raw.len() - 1)?;
                raw[at] = u.arbitrary()?;
            }
            let dir = tempfile::tempdir().unwrap();
            let _ = extract(
                &raw[..],
                Compression::None,
                dir.path(),
                IdMap::HOST,
                &Budget::new(UnpackLimits::default()),
            );
            assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0, "something was made outside");
            Ok(())
        });
    }
}
