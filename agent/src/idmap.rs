//! The node's user-namespace range: uid and gid 0..size inside every instance are
//! base..base+size on the host, as Docker's userns-remap does. Layers are unpacked with
//! their owners shifted by `base`, so the image's root-owned files belong to the
//! instance's root, which is not the host's.

/// A shift of user and group ids; `base` 0 means no user namespace (instances share the
/// host's ids: only for hosts that cannot do otherwise).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdMap {
    /// First host id of the range.
    pub base: u32,
    /// Ids in the range.
    pub size: u32,
}

/// An id of a layer or an image that the range cannot hold.
#[derive(Debug, thiserror::Error)]
#[error(
    "id {id} is outside the node's user namespace range 0..{size}; images may use uids and gids below {size}"
)]
pub struct OutOfRange {
    /// The id.
    pub id: u64,
    /// The range's size.
    pub size: u32,
}

impl IdMap {
    /// No user namespace.
    pub const HOST: IdMap = IdMap { base: 0, size: u32::MAX };

    /// Whether instances run in a user namespace.
    pub fn remapped(&self) -> bool {
        self.base != 0
    }

    /// The host id of `id` inside an instance.
    pub fn host(&self, id: u64) -> Result<u32, OutOfRange> {
        if !self.remapped() {
            return u32::try_from(id).map_err(|_| OutOfRange { id, size: self.size });
        }
        if id >= u64::from(self.size) {
            return Err(OutOfRange { id, size: self.size });
        }
        Ok(self.base + id as u32)
    }
}

/// The node's range cannot be used with what the state directory holds.
#[derive(Debug, thiserror::Error)]
pub enum RangeError {
    /// The image cache was unpacked for another range.
    #[error(
        "this node's image cache was unpacked for user namespace range {recorded} (in {file}), \
         but userns_base/userns_size now say {configured}: set them back, or remove every \
         image (agentctl image rm) and the file first"
    )]
    Changed {
        /// The file recording the range.
        file: String,
        /// What it says.
        recorded: String,
        /// What the configuration says.
        configured: String,
    },
    /// The record could not be read or written.
    #[error("user namespace range record {file}: {source}")]
    Io {
        /// The file.
        file: String,
        /// What failed.
        source: std::io::Error,
    },
}

impl IdMap {
    fn record(&self) -> String {
        match self.remapped() {
            true => format!("{}:{}", self.base, self.size),
            false => "off".into(),
        }
    }

    /// Checks `ids` against the range recorded in `state_dir` (layers already unpacked
    /// belong to that one), recording it when there is none yet.
    pub fn check_recorded(&self, state_dir: &std::path::Path) -> Result<(), RangeError> {
        let path = state_dir.join("userns-range");
        let file = path.display().to_string();
        let io = |source| RangeError::Io { file: file.clone(), source };
        match std::fs::read_to_string(&path) {
            Ok(text) if text.trim() == self.record() => Ok(()),
            Ok(text) => Err(RangeError::Changed {
                file: file.clone(),
                recorded: text.trim().to_string(),
                configured: self.record(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(state_dir).map_err(io)?;
                fnrt_common::durable::write(&path, format!("{}\n", self.record()).as_bytes(), 0o644)
                    .map_err(io)
            }
            Err(e) => Err(io(e)),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn shifts_within_the_range_and_refuses_past_it() {
        let m = IdMap { base: 100_000, size: 65_536 };
        assert_eq!(m.host(0).unwrap(), 100_000);
        assert_eq!(m.host(65_535).unwrap(), 165_535);
        assert!(m.host(65_536).unwrap_err().to_string().contains("below 65536"));
        assert_eq!(IdMap::HOST.host(1000).unwrap(), 1000);
    }

    #[test]
    fn the_first_range_is_recorded_and_a_change_refused() {
        let dir = tempfile::tempdir().unwrap();
        let m = IdMap { base: 100_000, size: 65_536 };
        m.check_recorded(dir.path()).unwrap();
        m.check_recorded(dir.path()).unwrap();
        let err = IdMap::HOST.check_recorded(dir.path()).unwrap_err().to_string();
        assert!(err.contains("100000:65536") && err.contains("now say off"), "{err}");
    }
}
