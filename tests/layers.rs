//! The agent unpacks layers itself (while they download, into overlayfs upper
//! directories). This checks the result against containerd's own applier: an image of
//! three layers (gzip, plain tar, zstd) with whiteouts, an opaque directory, hard and
//! symbolic links, a FIFO, owners, modes and mtimes is pushed to the real registry, pulled
//! by the agent and by `ctr images pull`, and the two root filesystems, mounted read-only,
//! must be the same file for file.
#![allow(missing_docs, clippy::unwrap_used, clippy::too_many_lines)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::process::Command;

use containerd_client::services::v1::snapshots::{RemoveSnapshotRequest, ViewSnapshotRequest};
use fnrt_agent::Containerd;
use fnrt_tests::push::{push_blob, sha};
use fnrt_tests::{real_parts, remove_namespace, TestAgent};
use nix::mount::{mount, umount, MsFlags};
use tar::{EntryType, Header};

type Entry<'a> = (&'a str, EntryType, u32, &'a [u8], Option<&'a str>);

fn layer(entries: &[Entry<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, kind, mode, data, link) in entries {
        let mut h = Header::new_gnu();
        h.set_entry_type(*kind);
        h.set_mode(*mode);
        h.set_uid(1000);
        h.set_gid(1001);
        h.set_mtime(1_600_000_000);
        h.set_size(data.len() as u64);
        h.set_device_major(0).unwrap();
        h.set_device_minor(0).unwrap();
        if let Some(l) = link {
            h.set_link_name(l).unwrap();
        }
        h.set_path(path).unwrap();
        h.set_cksum();
        b.append(&h, *data).unwrap();
    }
    b.into_inner().unwrap()
}

async fn describe(socket: &Path, namespace: &str, top: &str) -> BTreeMap<String, String> {
    let cd = Containerd::connect(socket, namespace).await.unwrap();
    let key = format!("fnrt-test-view-{:08x}", rand::random::<u32>());
    let req = ViewSnapshotRequest {
        snapshotter: "overlayfs".into(),
        key: key.clone(),
        parent: top.into(),
        // Without a root label containerd's garbage collector may take the view mid-test.
        labels: [("containerd.io/gc.root".to_string(), "fnrt-test".to_string())].into(),
    };
    let mounts = cd.snapshots().view(cd.req(req)).await.unwrap().into_inner().mounts;
    assert_eq!(mounts.len(), 1, "{mounts:?}");
    let m = &mounts[0];
    let dir = tempfile::tempdir().unwrap();
    let options = m.options.join(",");
    let flags = if m.r#type == "bind" { MsFlags::MS_BIND | MsFlags::MS_RDONLY } else { MsFlags::MS_RDONLY };
    mount(Some(m.source.as_str()), dir.path(), Some(m.r#type.as_str()), flags, Some(options.as_str()))
        .unwrap();
    let mut out = BTreeMap::new();
    walk(dir.path(), dir.path(), &mut out);
    umount(dir.path()).unwrap();
    let req = RemoveSnapshotRequest { snapshotter: "overlayfs".into(), key };
    cd.snapshots().remove(cd.req(req)).await.unwrap();
    out
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let m = std::fs::symlink_metadata(&path).unwrap();
        let t = m.file_type();
        let what = if t.is_dir() {
            "dir".to_string()
        } else if t.is_symlink() {
            format!("symlink -> {}", std::fs::read_link(&path).unwrap().display())
        } else if t.is_fifo() {
            "fifo".to_string()
        } else if t.is_char_device() {
            format!("char {}", m.rdev())
        } else {
            let mut data = Vec::new();
            std::fs::File::open(&path).unwrap().read_to_end(&mut data).unwrap();
            format!("file {} links {}", sha(&data), m.nlink())
        };
        let rel = path.strip_prefix(root).unwrap().display().to_string();
        let (mode, uid, gid, mtime) = (m.mode() & 0o7777, m.uid(), m.gid(), m.mtime());
        out.insert(rel, format!("{what} mode {mode:o} owner {uid}:{gid} mtime {mtime}"));
        if t.is_dir() {
            walk(root, &path, out);
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn layers_unpack_as_containerds_applier_unpacks_them() {
    let parts = real_parts();
    let l0 = layer(&[
        ("etc/", EntryType::Directory, 0o755, b"", None),
        ("etc/keep", EntryType::Regular, 0o640, b"first\n", None),
        ("etc/gone", EntryType::Regular, 0o644, b"to be deleted\n", None),
        ("data/", EntryType::Directory, 0o750, b"", None),
        ("data/old", EntryType::Regular, 0o644, b"old\n", None),
        ("data/sub/", EntryType::Directory, 0o755, b"", None),
        ("data/sub/older", EntryType::Regular, 0o644, b"older\n", None),
        ("bin/", EntryType::Directory, 0o755, b"", None),
        ("bin/tool", EntryType::Regular, 0o4755, b"#!/bin/true\n", None),
        ("bin/tool-again", EntryType::Link, 0o4755, b"", Some("bin/tool")),
        ("lib", EntryType::Symlink, 0o777, b"", Some("usr/lib")),
        ("usr/", EntryType::Directory, 0o755, b"", None),
        ("usr/lib/", EntryType::Directory, 0o755, b"", None),
        ("usr/lib/libx.so", EntryType::Regular, 0o755, &[7u8; 70_000], None),
        ("run/", EntryType::Directory, 0o755, b"", None),
        ("run/pipe", EntryType::Fifo, 0o600, b"", None),
    ]);
    let l1 = layer(&[
        ("etc/", EntryType::Directory, 0o755, b"", None),
        ("etc/.wh.gone", EntryType::Regular, 0o644, b"", None),
        ("etc/keep", EntryType::Regular, 0o600, b"second\n", None),
        ("data/", EntryType::Directory, 0o700, b"", None),
        ("data/.wh..wh..opq", EntryType::Regular, 0o644, b"", None),
        ("data/new", EntryType::Regular, 0o644, b"new\n", None),
    ]);
    let l2 = layer(&[
        ("usr/", EntryType::Directory, 0o755, b"", None),
        ("usr/lib/", EntryType::Directory, 0o755, b"", None),
        ("usr/lib/.wh.libx.so", EntryType::Regular, 0o644, b"", None),
        ("usr/lib/liby.so", EntryType::Regular, 0o755, b"y\n", None),
        ("tmp/", EntryType::Directory, 0o1777, b"", None),
    ]);
    let diff_ids = [sha(&l0), sha(&l1), sha(&l2)];
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&l0).unwrap();
    let blobs = [
        (gz.finish().unwrap(), "application/vnd.oci.image.layer.v1.tar+gzip"),
        (l1, "application/vnd.oci.image.layer.v1.tar"),
        (zstd::encode_all(&l2[..], 3).unwrap(), "application/vnd.oci.image.layer.v1.tar+zstd"),
    ];

    let http = fnrt_tests::http();
    let repo = "fnrt-test/layers";
    let tag = format!("t{:08x}", rand::random::<u32>());
    let mut layers = Vec::new();
    for (bytes, media_type) in blobs {
        let size = bytes.len();
        let digest = push_blob(&http, &parts.registry, repo, bytes).await;
        layers.push(serde_json::json!({"mediaType": media_type, "digest": digest, "size": size}));
    }
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": ["/bin/tool"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap();
    let config_size = config.len();
    let config_digest = push_blob(&http, &parts.registry, repo, config).await;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size},
        "layers": layers,
    });
    let put = http
        .put(format!("http://{}/v2/{repo}/manifests/{tag}", parts.registry))
        .header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
        .body(serde_json::to_vec(&manifest).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(put.status().as_u16(), 201, "push manifest");
    let reference = format!("{}/{repo}:{tag}", parts.registry);

    // Owners as the tar says (no user namespace range), to compare with containerd's
    // applier byte for byte; the shift into the range has unit tests (image/extract.rs)
    // and tests/isolation.rs.
    let mut agent = TestAgent::start_with(|c| c.userns_base = 0).await;
    fnrt_tests::pull_image(&mut agent.client, &reference).await.unwrap();
    let ctr_ns = format!("{}-ctr", agent.cfg.namespace);
    let out = Command::new("ctr")
        .arg("--address")
        .arg(&parts.containerd_socket)
        .args(["--namespace", &ctr_ns, "images", "pull", "--plain-http", &reference])
        .output()
        .unwrap();
    assert!(out.status.success(), "ctr images pull: {}", String::from_utf8_lossy(&out.stderr));

    let top = fnrt_agent::chain_ids(&diff_ids).pop().unwrap();
    let socket = &agent.cfg.containerd_socket;
    let ours = describe(socket, &agent.cfg.namespace, &top).await;
    let theirs = describe(socket, &ctr_ns, &top).await;
    remove_namespace(socket, &ctr_ns).await;

    // What the layers say, checked on its own first, then against containerd.
    assert!(!ours.contains_key("etc/gone"), "a whiteout hides the file below: {ours:#?}");
    assert!(ours["etc/keep"].contains(&sha(b"second\n")) && ours["etc/keep"].contains("mode 600"));
    let data: Vec<&String> = ours.keys().filter(|k| k.starts_with("data/")).collect();
    assert_eq!(data, ["data/new"], "an opaque directory hides all below it");
    assert!(ours["data"].contains("mode 700"));
    assert!(!ours.contains_key("usr/lib/libx.so") && ours.contains_key("usr/lib/liby.so"));
    assert!(ours["bin/tool"].contains("links 2") && ours["bin/tool"].contains("mode 4755"));
    assert!(ours["run/pipe"].starts_with("fifo") && ours["lib"].starts_with("symlink -> usr/lib"));
    assert!(ours["tmp"].contains("mode 1777 owner 1000:1001 mtime 1600000000"), "{}", ours["tmp"]);
    assert_eq!(ours, theirs, "the agent's root filesystem differs from containerd's");
    agent.cleanup().await;
}
