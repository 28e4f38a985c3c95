//! Progress of a pull, as the core reports it; the API edge turns it into messages.

use tokio::sync::mpsc;

use super::ImageInfo;

/// One step of a pull.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PullEvent {
    /// The manifest is read: these layers (digest, compressed size) make the image.
    Resolved {
        /// The layers, bottom first.
        layers: Vec<(String, u64)>,
    },
    /// Bytes of a layer received so far (a layer already in the store reports its size).
    Layer {
        /// The layer's digest.
        digest: String,
        /// Bytes received.
        bytes: u64,
        /// Its size.
        total: u64,
    },
    /// Layers are being applied onto snapshots.
    Unpacking,
    /// The image is ready on the node (sent by whoever finishes the whole operation).
    Done(ImageInfo),
}

/// Where a pull reports its progress; a no-op when nobody listens.
#[derive(Clone, Debug, Default)]
pub struct Progress(Option<mpsc::UnboundedSender<PullEvent>>);

impl Progress {
    /// A progress that reports to nobody.
    pub fn none() -> Progress {
        Progress(None)
    }

    /// A progress and the receiver of its events.
    pub fn channel() -> (Progress, mpsc::UnboundedReceiver<PullEvent>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Progress(Some(tx)), rx)
    }

    /// Reports an event; a receiver that went away is fine.
    pub fn send(&self, event: PullEvent) {
        if let Some(tx) = &self.0 {
            let _ = tx.send(event);
        }
    }
}
