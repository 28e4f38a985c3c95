//! Instance marks: one empty file per instance in `<state_dir>/instances`, made before its
//! first part and removed after its last, so that what a crashed agent left half made is
//! found by the next one.

use super::Instances;
use crate::error::Error;

impl Instances {
    fn mark_error(&self, source: std::io::Error) -> Error {
        Error::Io { what: "instance marks", path: self.parts.marks.display().to_string(), source }
    }

    /// Makes the marks' directory.
    pub(super) async fn mark_dir(&self) -> Result<(), Error> {
        tokio::fs::create_dir_all(&self.parts.marks).await.map_err(|source| self.mark_error(source))
    }

    /// Marks instance `id`.
    pub(super) async fn mark(&self, id: &str) -> Result<(), Error> {
        tokio::fs::write(self.parts.marks.join(id), b"").await.map_err(|e| self.mark_error(e))
    }

    /// Removes the mark of `id` (none is fine).
    pub(super) async fn unmark(&self, id: &str) -> Result<(), Error> {
        match tokio::fs::remove_file(self.parts.marks.join(id)).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.mark_error(e)),
        }
    }

    /// The marked instances.
    pub(super) async fn marked(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Ok(mut dir) = tokio::fs::read_dir(&self.parts.marks).await {
            while let Ok(Some(e)) = dir.next_entry().await {
                out.push(e.file_name().to_string_lossy().into_owned());
            }
        }
        out
    }
}
