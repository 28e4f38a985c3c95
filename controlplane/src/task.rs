//! Tasks owned by a value: stopped when it goes, so a task tree ends with its root.

/// A spawned task, aborted when dropped.
#[derive(Debug)]
pub struct Owned(pub tokio::task::JoinHandle<()>);

impl Owned {
    /// Spawns `f` as a task owned by the result.
    pub fn spawn(f: impl std::future::Future<Output = ()> + Send + 'static) -> Owned {
        Owned(tokio::spawn(f))
    }

    /// Whether the task ended.
    pub fn is_finished(&self) -> bool {
        self.0.is_finished()
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        self.0.abort();
    }
}
