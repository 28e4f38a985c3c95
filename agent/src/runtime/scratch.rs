//! Each instance's writable /tmp: 512 MiB of its own, on disk, gone with the instance.
//!
//! A tmpfs would be charged to the instance's memory cgroup (a 128 MB function writing
//! 500 MB to it is OOM-killed), so /tmp is a sparse file formatted as ext4 (no reserved
//! blocks, so all 512 MiB are usable; writes past them fail with ENOSPC) and loop-mounted
//! under the agent's state directory, then bind-mounted into the container.
//!
//! `mkfs.ext4` (e2fsprogs) formats it and util-linux `mount -o loop` attaches it: setting
//! up a loop device needs ioctls the project's crates do not wrap safely. The loop device
//! is attached with autoclear, so unmounting frees it.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::process::Command;

/// Size of every instance's /tmp file: enough over 512 MiB that, after ext4's tables and
/// the clusters the kernel holds back (2%), 512 to 514 MiB are free for the function.
pub const SCRATCH_BYTES: u64 = 528 << 20;

/// A /tmp that could not be made or removed.
#[derive(Debug, thiserror::Error)]
pub enum ScratchError {
    /// A file operation failed.
    #[error("instance /tmp {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// mkfs.ext4 or mount failed.
    #[error("instance /tmp {path}: {tool} failed: {stderr}")]
    Tool {
        /// The image file.
        path: PathBuf,
        /// The command.
        tool: &'static str,
        /// What it said.
        stderr: String,
    },
}

/// Where the /tmp filesystems of instances live.
#[derive(Clone, Debug)]
pub struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    /// Scratch filesystems under `dir`.
    pub fn new(dir: PathBuf) -> Scratch {
        Scratch { dir }
    }

    fn image(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.img"))
    }

    /// The mount point of `name`'s /tmp.
    pub fn mountpoint(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Makes and mounts a fresh /tmp for `name` (the instance's node-unique name) and
    /// returns its mount point.
    pub async fn create(&self, name: &str) -> Result<PathBuf, ScratchError> {
        let (image, mnt) = (self.image(name), self.mountpoint(name));
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ScratchError::Io { path, source }
        };
        tokio::fs::create_dir_all(&mnt).await.map_err(io(&mnt))?;
        let file = tokio::fs::File::create(&image).await.map_err(io(&image))?;
        file.set_len(SCRATCH_BYTES).await.map_err(io(&image))?;
        drop(file);
        let image_arg = image.display().to_string();
        // No reserved blocks and no journal (a /tmp dies with its instance); 16,384 small
        // inodes keep ext4's tables near 2 MiB.
        let mkfs =
            ["-q", "-F", "-m", "0", "-O", "^has_journal", "-N", "16384", "-I", "128", "-E", "nodiscard"];
        run(&image, "mkfs.ext4", &[&mkfs[..], &[image_arg.as_str()]].concat()).await?;
        let mnt_arg = mnt.display().to_string();
        run(&image, "mount", &["-t", "ext4", "-o", "loop,nosuid,nodev", &image_arg, &mnt_arg]).await?;
        // Anyone in the instance may write, as in a /tmp; lost+found is not the function's.
        let perms = std::os::unix::fs::PermissionsExt::from_mode(0o1777);
        tokio::fs::set_permissions(&mnt, perms).await.map_err(io(&mnt))?;
        let _ = tokio::fs::remove_dir(mnt.join("lost+found")).await;
        Ok(mnt)
    }

    /// Unmounts and deletes `name`'s /tmp; what is gone already is skipped.
    pub async fn remove(&self, name: &str) -> Result<(), ScratchError> {
        let (image, mnt) = (self.image(name), self.mountpoint(name));
        let target = mnt.clone();
        let unmounted = tokio::task::spawn_blocking(move || {
            match nix::mount::umount2(&target, nix::mount::MntFlags::MNT_DETACH) {
                Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => Ok(()),
                Err(e) => Err(std::io::Error::from(e)),
            }
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
        unmounted.map_err(|source| ScratchError::Io { path: mnt.clone(), source })?;
        for (path, result) in
            [(&mnt, tokio::fs::remove_dir(&mnt).await), (&image, tokio::fs::remove_file(&image).await)]
        {
            match result {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(ScratchError::Io { path: path.clone(), source: e })
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Names that have a /tmp here (mounted or not).
    pub async fn names(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Ok(mut dir) = tokio::fs::read_dir(&self.dir).await {
            while let Ok(Some(e)) = dir.next_entry().await {
                let name = e.file_name().to_string_lossy().into_owned();
                let name = name.strip_suffix(".img").map(str::to_string).unwrap_or(name);
                if !out.contains(&name) {
                    out.push(name);
                }
            }
        }
        out
    }
}

async fn run(image: &Path, tool: &'static str, args: &[&str]) -> Result<(), ScratchError> {
    let out = Command::new(tool).args(args).stdin(Stdio::null()).output().await.map_err(|source| {
        ScratchError::Io {
            path: image.to_path_buf(),
            source: std::io::Error::new(
                source.kind(),
                format!("cannot run {tool} (from e2fsprogs / util-linux): {source}"),
            ),
        }
    })?;
    if out.status.success() {
        Ok(())
    } else {
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        Err(ScratchError::Tool { path: image.to_path_buf(), tool, stderr })
    }
}
