//! The node's image cache as instances use it: pulls that then evict what no longer fits
//! the byte budget (never an image an instance uses or is being started from, never a
//! pinned one), prefetches, removal, and the image a start runs from (pulled on a miss,
//! counted as a hit or a miss, its last use recorded off the start's path).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use crate::error::Error;
use crate::image::{CachedImage, ImageError, ImageInfo, ImageRef, ImageStore, Progress, RunnableImage};
use crate::metrics::Metrics;
use fnrt_function::PullCredentials;

/// An image of the node cache and the instances that use it.
#[derive(Clone, Debug)]
pub struct NodeImage {
    /// The image.
    pub image: CachedImage,
    /// Ids of the instances started from it.
    pub used_by: Vec<String>,
}

/// The cache and its policy.
#[derive(Debug)]
pub struct ImageCache {
    images: ImageStore,
    budget: u64,
    metrics: Arc<Metrics>,
    /// Images that starts in flight use (reference → count): not to be evicted.
    starting: Mutex<HashMap<String, usize>>,
    /// Images deployed functions with image acceleration keep (function → image name):
    /// never evicted, listed as pinned.
    kept: Mutex<HashMap<String, String>>,
}

/// Marks an image as in use by a start in flight, until dropped.
pub struct Starting<'a> {
    map: &'a Mutex<HashMap<String, usize>>,
    name: String,
}

impl Drop for Starting<'_> {
    fn drop(&mut self) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.name) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.name);
            }
        }
    }
}

impl ImageCache {
    /// The cache over `images` with a budget of `budget` bytes.
    pub fn new(images: ImageStore, budget: u64, metrics: Arc<Metrics>) -> ImageCache {
        ImageCache { images, budget, metrics, starting: Mutex::new(HashMap::new()), kept: Mutex::default() }
    }

    /// The agent's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The size of `reference` when the cache has it (asks containerd, not the registry).
    pub async fn cached_size(&self, reference: &str) -> Option<u64> {
        let name = ImageRef::parse(reference).ok()?.name();
        let images = self.images.cached().await.ok()?;
        images.into_iter().find(|i| i.info.reference == name).map(|i| i.info.size_bytes)
    }

    /// Function `function` keeps `image` in the cache (image acceleration), or none.
    pub fn keep(&self, function: &str, image: Option<&str>) {
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        match image.and_then(|r| ImageRef::parse(r).ok()) {
            Some(r) => kept.insert(function.to_string(), r.name()),
            None => kept.remove(function),
        };
    }

    fn kept(&self) -> HashSet<String> {
        self.kept.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect()
    }

    fn starting(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        self.starting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `used` (the images of running instances) and those starts are using.
    fn in_use(&self, mut used: HashSet<String>) -> HashSet<String> {
        used.extend(self.starting().keys().cloned());
        used.extend(self.kept());
        used
    }

    /// Pulls an image, then evicts what no longer fits the budget; `used` are the images
    /// running instances use.
    pub async fn pull(
        &self,
        reference: &str,
        credentials: Option<&PullCredentials>,
        progress: &Progress,
        used: HashSet<String>,
    ) -> Result<ImageInfo, Error> {
        let info = self.images.with_credentials(credentials).pull(reference, progress).await?;
        self.evict(&info.reference, used).await;
        Ok(info)
    }

    /// Pulls an image ahead of use; a pinned one is never evicted.
    pub async fn prefetch(
        &self,
        reference: &str,
        pin: bool,
        credentials: Option<&PullCredentials>,
        progress: &Progress,
        used: HashSet<String>,
    ) -> Result<ImageInfo, Error> {
        let info = self.images.with_credentials(credentials).pull(reference, progress).await?;
        self.images.pin(&info.reference, pin).await?;
        self.evict(&info.reference, used).await;
        Ok(info)
    }

    /// Brings the cache back under its budget, sparing `keep`. A failure does not undo the
    /// pull that called it: the next pull tries again.
    async fn evict(&self, keep: &str, used: HashSet<String>) {
        if let Err(e) = self.images.evict(self.budget, &self.in_use(used), keep).await {
            tracing::warn!(error = %e, "evicting images from the node cache");
        }
    }

    /// The image a start runs from, marked in use until the guard drops: from the cache
    /// (a hit), else pulled (a miss).
    pub async fn for_start(
        &self,
        reference: &str,
        credentials: Option<&PullCredentials>,
        used: impl FnOnce() -> HashSet<String>,
    ) -> Result<(RunnableImage, Starting<'_>), Error> {
        let name = ImageRef::parse(reference).map_err(ImageError::from)?.name();
        *self.starting().entry(name.clone()).or_default() += 1;
        let guard = Starting { map: &self.starting, name: name.clone() };
        let image = match self.images.runnable(&name).await {
            Ok(img) => {
                self.metrics.image_cache_hits.inc();
                img
            }
            Err(ImageError::NotPulled { .. }) => {
                self.metrics.image_cache_misses.inc();
                self.pull(&name, credentials, &Progress::none(), used()).await?;
                self.images.runnable(&name).await?
            }
            Err(e) => return Err(e.into()),
        };
        // Recording the use is off the cold-start path.
        let images = self.images.clone();
        tokio::spawn(async move {
            if let Err(e) = images.touch(&name).await {
                tracing::warn!(image = %name, error = %e, "recording the image's last use");
            }
        });
        Ok((image, guard))
    }

    /// The cache's images with the instances that use them (`users`: image → instance
    /// ids), the bytes they take and the budget.
    pub async fn list(
        &self,
        users: &HashMap<String, Vec<String>>,
    ) -> Result<(Vec<NodeImage>, u64, u64), Error> {
        let images = self.images.cached().await?;
        let total = crate::image::cache_bytes(&images);
        let kept = self.kept();
        let out = images
            .into_iter()
            .map(|mut image| {
                image.pinned |= kept.contains(&image.info.reference);
                let mut used_by = users.get(&image.info.reference).cloned().unwrap_or_default();
                used_by.sort();
                NodeImage { image, used_by }
            })
            .collect();
        Ok((out, total, self.budget))
    }

    /// Removes an image from the node; refused while `users` (its instances) use it or a
    /// start is using it.
    pub async fn remove(&self, reference: &str, mut users: Vec<String>) -> Result<(), Error> {
        let name = ImageRef::parse(reference).map_err(ImageError::from)?.name();
        if users.is_empty() && self.starting().contains_key(&name) {
            users.push("(one being started)".into());
        }
        if !users.is_empty() {
            users.sort();
            return Err(Error::ImageInUse { reference: name, instances: users });
        }
        self.images.remove(&name).await?;
        Ok(())
    }
}
