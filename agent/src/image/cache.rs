//! The node cache: which images the node keeps, when each was last used, which are
//! pinned, and which to evict when the byte budget is passed.
//!
//! Its record lives in containerd, as labels on the image records, so it survives a
//! restart of the agent.

use std::collections::{HashMap, HashSet};
use std::time::SystemTime;

use containerd_client::services::v1::{DeleteImageRequest, Image as CdImage, UpdateImageRequest};

use super::{ImageError, ImageInfo, ImageRef, ImageStore};
use crate::containerd::call_err;

/// Label with the RFC 3339 time an instance last started from the image.
pub const LABEL_LAST_USED: &str = "fnrt.last-used";
/// Label present (value "true") on images pinned by a prefetch.
pub const LABEL_PINNED: &str = "fnrt.pinned";

/// An image of the node cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CachedImage {
    /// Reference, manifest digest, size.
    pub info: ImageInfo,
    /// Its blobs (config and layers) with their sizes, to count shared ones once.
    pub blobs: Vec<(String, u64)>,
    /// When an instance last started from it (or when it was pulled).
    pub last_used: Option<SystemTime>,
    /// Pinned images are never evicted.
    pub pinned: bool,
    /// Whether an instance can start from it without the registry.
    pub ready: bool,
}

impl ImageStore {
    /// Sets labels on an image record, leaving its other labels alone.
    async fn set_labels(&self, name: &str, labels: HashMap<String, String>) -> Result<(), ImageError> {
        let paths = labels.keys().map(|k| format!("labels.{k}")).collect();
        let image = CdImage { name: name.into(), labels, ..Default::default() };
        let req = UpdateImageRequest {
            image: Some(image),
            update_mask: Some(prost_types::FieldMask { paths }),
            source_date_epoch: None,
        };
        self.cd.images().update(self.cd.req(req)).await.map_err(call_err(format!("label image {name}")))?;
        Ok(())
    }

    /// Records that an instance started from `name` now.
    pub async fn touch(&self, name: &str) -> Result<(), ImageError> {
        let now = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
        self.set_labels(name, HashMap::from([(LABEL_LAST_USED.to_string(), now)])).await
    }

    /// Pins `name` (never evicted) or unpins it.
    pub async fn pin(&self, name: &str, pinned: bool) -> Result<(), ImageError> {
        let value = if pinned { "true" } else { "" };
        self.set_labels(name, HashMap::from([(LABEL_PINNED.to_string(), value.to_string())])).await
    }

    /// Removes an image; containerd's garbage collector then frees the content and
    /// snapshots no other image or container refers to.
    pub async fn remove(&self, reference: &str) -> Result<(), ImageError> {
        let name = ImageRef::parse(reference)?.name();
        let req = DeleteImageRequest { name: name.clone(), sync: true, target: None };
        match self.cd.images().delete(self.cd.req(req)).await {
            Ok(_) => Ok(()),
            Err(s) if s.code() == tonic::Code::NotFound => Err(ImageError::NotPulled { reference: name }),
            Err(s) => Err(call_err(format!("delete image {name}"))(s).into()),
        }
    }

    /// The images of the node cache.
    pub async fn cached(&self) -> Result<Vec<CachedImage>, ImageError> {
        let mut out = Vec::new();
        for record in self.records().await? {
            let last_used = record
                .labels
                .get(LABEL_LAST_USED)
                .and_then(|t| humantime::parse_rfc3339(t).ok())
                .or_else(|| record.updated_at.and_then(|t| SystemTime::try_from(t).ok()));
            let pinned = record.labels.get(LABEL_PINNED).is_some_and(|v| v == "true");
            let cached = match self.runnable(&record.name).await {
                Ok(r) => CachedImage { info: r.info, blobs: r.blobs, last_used, pinned, ready: true },
                Err(e) => {
                    tracing::debug!(image = %record.name, error = %e, "image is not ready");
                    let digest = record.target.map(|t| t.digest).unwrap_or_default();
                    let info = ImageInfo { reference: record.name, digest, size_bytes: 0 };
                    CachedImage { info, blobs: vec![], last_used, pinned, ready: false }
                }
            };
            out.push(cached);
        }
        Ok(out)
    }

    /// Evicts least recently used images that are neither pinned, nor in `in_use`, nor
    /// `keep`, until the cache fits `budget`. Returns what was evicted.
    pub async fn evict(
        &self,
        budget: u64,
        in_use: &HashSet<String>,
        keep: &str,
    ) -> Result<Vec<String>, ImageError> {
        let images = self.cached().await?;
        let victims = pick_evictions(&images, budget, in_use, keep);
        for name in &victims {
            tracing::info!(image = %name, budget, "evicting image from the node cache");
            match self.remove(name).await {
                Ok(()) | Err(ImageError::NotPulled { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        let left: Vec<CachedImage> =
            images.into_iter().filter(|i| !victims.contains(&i.info.reference)).collect();
        let total = cache_bytes(&left);
        if total > budget {
            tracing::warn!(total, budget, "node cache over budget: every image left is pinned or in use");
        }
        Ok(victims)
    }
}

/// Bytes the images take, each blob counted once.
pub fn cache_bytes(images: &[CachedImage]) -> u64 {
    let mut seen = HashMap::new();
    for (digest, size) in images.iter().flat_map(|i| &i.blobs) {
        seen.insert(digest.as_str(), *size);
    }
    seen.values().sum()
}

/// Which images to evict, oldest use first, so that the rest fits `budget`.
pub fn pick_evictions(
    images: &[CachedImage],
    budget: u64,
    in_use: &HashSet<String>,
    keep: &str,
) -> Vec<String> {
    let mut left: Vec<&CachedImage> = images.iter().collect();
    let mut candidates: Vec<&CachedImage> = images
        .iter()
        .filter(|i| !i.pinned && i.info.reference != keep && !in_use.contains(&i.info.reference))
        .collect();
    candidates.sort_by_key(|i| i.last_used.unwrap_or(SystemTime::UNIX_EPOCH));
    let mut victims = Vec::new();
    for c in candidates {
        let owned: Vec<CachedImage> = left.iter().map(|i| (*i).clone()).collect();
        if cache_bytes(&owned) <= budget {
            break;
        }
        victims.push(c.info.reference.clone());
        left.retain(|i| i.info.reference != c.info.reference);
    }
    victims
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn img(name: &str, blobs: &[(&str, u64)], age_s: u64, pinned: bool) -> CachedImage {
        CachedImage {
            info: ImageInfo { reference: name.into(), digest: String::new(), size_bytes: 0 },
            blobs: blobs.iter().map(|(d, s)| (d.to_string(), *s)).collect(),
            last_used: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 - age_s)),
            pinned,
            ready: true,
        }
    }

    #[test]
    fn shared_blobs_count_once() {
        let images = [img("a", &[("x", 10), ("y", 5)], 0, false), img("b", &[("x", 10), ("z", 1)], 0, false)];
        assert_eq!(cache_bytes(&images), 16);
    }

    #[test]
    fn evicts_the_least_recently_used_until_under_budget_never_pinned_or_in_use() {
        let images = [
            img("old", &[("o", 40)], 300, false),
            img("pinned", &[("p", 40)], 400, true),
            img("used", &[("u", 40)], 500, false),
            img("mid", &[("m", 40)], 200, false),
            img("new", &[("n", 40)], 100, false),
        ];
        let in_use = HashSet::from(["used".to_string()]);
        assert_eq!(pick_evictions(&images, 130, &in_use, "new"), vec!["old", "mid"]);
        assert_eq!(pick_evictions(&images, 1000, &in_use, "new"), Vec::<String>::new());
        // Even with budget 0, only what may go goes.
        assert_eq!(pick_evictions(&images, 0, &in_use, "new"), vec!["old", "mid"]);
    }
}
