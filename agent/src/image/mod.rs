//! Images: pulling from an OCI registry into containerd (content + unpacked snapshots) and
//! reading back what an instance needs to start.
//!
//! The pull follows containerd's own client: a lease keeps everything from the garbage
//! collector while it runs; blobs go through the content store with their expected digest;
//! GC labels tie the image record to its manifest, config, layers and snapshot; layers are
//! unpacked by the agent while they download (see `unpack`) onto snapshots named by chain
//! ID.

mod access;
mod beneath;
mod cache;
mod content;
mod extract;
mod limits;
mod platform;
mod progress;
mod unpack;
mod write;

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use containerd_client::services::v1::CreateRequest as CreateLeaseRequest;
use containerd_client::services::v1::{
    CreateImageRequest, DeleteRequest as DeleteLeaseRequest, GetImageRequest, Image as CdImage,
    ListImagesRequest, UpdateImageRequest,
};
use containerd_client::types::Descriptor;
use futures_util::TryStreamExt;
use oci_spec::image::{ImageConfiguration, ImageManifest};

pub use cache::{cache_bytes, CachedImage};
pub use content::ContentError;
pub use extract::{ExtractError, UnpackLimits};
use fnrt_registry::RawManifest;
pub use fnrt_registry::{BadReference, ImageRef};
pub use fnrt_registry::{Registry, RegistryError, TlsSetupError};
use platform::{check_platform, parse_top, pick_amd64, Top};
pub use progress::{Progress, PullEvent};
pub use unpack::{chain_ids, remove_snapshot, UnpackError};

use crate::containerd::{call_err, Containerd, ContainerdError};
use crate::idmap::IdMap;

/// How many layers are downloaded at once.
const PARALLEL_LAYERS: usize = 3;

pub use limits::MAX_IMAGE_BYTES;
use limits::{declared_size, MAX_CONFIG_BYTES};

/// A failure to pull or read an image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The reference is malformed.
    #[error(transparent)]
    BadReference(#[from] BadReference),
    /// The registry failed or refused.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// A blob could not be stored.
    #[error(transparent)]
    Content(#[from] ContentError),
    /// A layer could not be unpacked.
    #[error(transparent)]
    Unpack(#[from] UnpackError),
    /// containerd failed.
    #[error(transparent)]
    Containerd(#[from] ContainerdError),
    /// A manifest, index or config that cannot be understood.
    #[error("image {reference}: {what} {digest} is not valid: {reason}")]
    Malformed {
        /// The image.
        reference: String,
        /// "manifest", "index" or "config".
        what: &'static str,
        /// Its digest.
        digest: String,
        /// What is wrong.
        reason: String,
    },
    /// The image is not for linux/amd64.
    #[error("image {reference} is for {found}; functions run on x86_64, so the image must be built for linux/amd64")]
    Architecture {
        /// The image.
        reference: String,
        /// The platform(s) it offers.
        found: String,
    },
    /// A layer's download task died.
    #[error("downloading layer {digest} stopped: {reason}")]
    Fetch {
        /// The layer.
        digest: String,
        /// Why.
        reason: String,
    },
    /// The image's layers add up to more than the limit.
    #[error("image {reference} is {size} bytes, over the limit of {limit} bytes (1 GiB) for a function image; nothing of it was downloaded")]
    TooLarge {
        /// The image.
        reference: String,
        /// The sum of its layer sizes as the manifest gives them.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The image is not on this node.
    #[error("image {reference} is not on this node (agentctl image ls lists them; agentctl image pull {reference} fetches it)")]
    NotPulled {
        /// The image.
        reference: String,
    },
}

/// What the node knows of an image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageInfo {
    /// The normalized reference (also the containerd image name).
    pub reference: String,
    /// Digest of the linux/amd64 manifest.
    pub digest: String,
    /// Sum of the compressed layer sizes.
    pub size_bytes: u64,
}

/// What an instance needs from its image.
#[derive(Clone, Debug)]
pub struct RunnableImage {
    /// The image.
    pub info: ImageInfo,
    /// Its config (entrypoint, cmd, env, working dir, user).
    pub config: ImageConfiguration,
    /// Chain ID of the top layer: the parent of an instance's root filesystem.
    pub top_snapshot: String,
    /// Its blobs (config and layers) with their sizes.
    pub blobs: Vec<(String, u64)>,
}

/// The node's images, in the agent's containerd namespace.
#[derive(Clone, Debug)]
pub struct ImageStore {
    cd: Containerd,
    registry: Registry,
    snapshotter: String,
    ids: IdMap,
    limits: UnpackLimits,
    /// One lock per image name: a pull waits for another pull of the same image, then
    /// finds its blobs and snapshots in place instead of fetching them again.
    pulling: Arc<std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
}

impl ImageStore {
    /// A store over `cd` that unpacks with `snapshotter` and pulls through `registry`.
    pub fn new(cd: Containerd, snapshotter: &str, registry: Registry, ids: IdMap) -> ImageStore {
        let (snapshotter, limits) = (snapshotter.to_string(), UnpackLimits::default());
        ImageStore { cd, registry, snapshotter, ids, limits, pulling: Default::default() }
    }

    /// The store with `limits` on what one image may unpack to.
    pub fn with_unpack_limits(self, limits: UnpackLimits) -> ImageStore {
        ImageStore { limits, ..self }
    }

    /// Pulls `reference` and makes it runnable: every blob in the content store, every layer
    /// unpacked, and the image record pointing at them.
    pub async fn pull(&self, reference: &str, progress: &Progress) -> Result<ImageInfo, ImageError> {
        let image = ImageRef::parse(reference)?;
        let lock = {
            let mut map = self.pulling.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(image.name()).or_default().clone()
        };
        let result = {
            let _one_at_a_time = lock.lock().await;
            self.pull_once(&image, progress).await
        };
        let mut map = self.pulling.lock().unwrap_or_else(|p| p.into_inner());
        // The map's copy and ours: nobody else waits, so the entry can go.
        if Arc::strong_count(&lock) <= 2 {
            map.remove(&image.name());
        }
        result
    }

    async fn pull_once(&self, image: &ImageRef, progress: &Progress) -> Result<ImageInfo, ImageError> {
        let lease = format!("fnrt-pull-{:016x}", rand::random::<u64>());
        let expire = humantime::format_rfc3339_seconds(
            std::time::SystemTime::now() + std::time::Duration::from_secs(3600),
        );
        let labels = HashMap::from([("containerd.io/gc.expire".to_string(), expire.to_string())]);
        self.cd
            .leases()
            .create(self.cd.req(CreateLeaseRequest { id: lease.clone(), labels }))
            .await
            .map_err(call_err(format!("create lease {lease}")))?;
        let result = self.pull_leased(image, &lease, progress).await;
        // Without the lease, whatever a failed pull wrote is collected by containerd's GC:
        // at once (a synchronous collection) when it failed, so nothing of it stays.
        let sync = result.is_err();
        let deleted =
            self.cd.leases().delete(self.cd.req(DeleteLeaseRequest { id: lease.clone(), sync })).await;
        if let Err(s) = deleted {
            tracing::warn!(%lease, error = %s.message(), "could not delete pull lease; it expires in an hour");
        }
        result
    }

    async fn pull_leased(
        &self,
        image: &ImageRef,
        lease: &str,
        progress: &Progress,
    ) -> Result<ImageInfo, ImageError> {
        let cd = &self.cd;
        let (manifest_raw, index) = self.resolve(image).await?;
        let manifest: ImageManifest = serde_json::from_slice(&manifest_raw.bytes)
            .map_err(|e| malformed(image, "manifest", &manifest_raw.digest, e.to_string()))?;
        let size = declared_size(&manifest);
        if size > MAX_IMAGE_BYTES {
            return Err(ImageError::TooLarge { reference: image.name(), size, limit: MAX_IMAGE_BYTES });
        }
        let config_desc = manifest.config();
        let config_digest = config_desc.digest().to_string();
        // A config the store has (from an earlier pull of this image) is not fetched again.
        let config_bytes = if content::exists(cd, &config_digest).await? {
            Bytes::from(content::read(cd, &config_digest).await?)
        } else {
            self.fetch_small(image, &config_digest, config_desc.size()).await?
        };
        let config: ImageConfiguration = serde_json::from_slice(&config_bytes)
            .map_err(|e| malformed(image, "config", &config_digest, e.to_string()))?;
        check_platform(image, &config)?;
        let diff_ids = config.rootfs().diff_ids().clone();
        if diff_ids.len() != manifest.layers().len() {
            return Err(malformed(
                image,
                "config",
                &config_digest,
                format!("it lists {} diff IDs for {} layers", diff_ids.len(), manifest.layers().len()),
            ));
        }
        let layers: Vec<unpack::Layer> = manifest
            .layers()
            .iter()
            .zip(&diff_ids)
            .map(|(l, d)| unpack::Layer {
                blob: Descriptor {
                    media_type: l.media_type().to_string(),
                    digest: l.digest().to_string(),
                    size: l.size() as i64,
                    annotations: HashMap::new(),
                },
                diff_id: d.clone(),
            })
            .collect();
        progress.send(PullEvent::Resolved {
            layers: layers.iter().map(|l| (l.blob.digest.clone(), l.blob.size as u64)).collect(),
        });
        let t0 = std::time::Instant::now();
        let top_snapshot = self.fetch_and_unpack(image, lease, &layers, progress).await?;
        tracing::info!(image = %image, ms = t0.elapsed().as_millis() as u64, "layers fetched and unpacked");

        // Blobs that refer to others carry GC labels, written bottom-up.
        let snap_label = format!("containerd.io/gc.ref.snapshot.{}", self.snapshotter);
        let config_labels = HashMap::from([(snap_label, top_snapshot)]);
        content::write_bytes(cd, lease, &config_digest, config_bytes, config_labels).await?;
        let mut manifest_labels =
            HashMap::from([("containerd.io/gc.ref.content.config".to_string(), config_digest.clone())]);
        for (i, l) in layers.iter().enumerate() {
            manifest_labels.insert(format!("containerd.io/gc.ref.content.l.{i}"), l.blob.digest.clone());
        }
        content::write_bytes(cd, lease, &manifest_raw.digest, manifest_raw.bytes.clone(), manifest_labels)
            .await?;
        let target = match &index {
            None => {
                descriptor(&manifest_raw.digest, manifest_media_type(&manifest), manifest_raw.bytes.len())
            }
            Some(idx) => {
                let labels = HashMap::from([(
                    "containerd.io/gc.ref.content.m.0".to_string(),
                    manifest_raw.digest.clone(),
                )]);
                content::write_bytes(cd, lease, &idx.digest, idx.bytes.clone(), labels).await?;
                descriptor(&idx.digest, "application/vnd.oci.image.index.v1+json".into(), idx.bytes.len())
            }
        };
        self.put_image_record(lease, &image.name(), target).await?;
        let size_bytes = layers.iter().map(|l| l.blob.size as u64).sum();
        Ok(ImageInfo { reference: image.name(), digest: manifest_raw.digest, size_bytes })
    }

    /// Fetches the image's manifest; through its index (picking linux/amd64) when the
    /// reference names one. Returns the manifest and the index, if there was one.
    async fn resolve(&self, image: &ImageRef) -> Result<(RawManifest, Option<RawManifest>), ImageError> {
        let top = self.registry.manifest(image, image.manifest_reference()).await?;
        if let Some(pinned) = image.digest() {
            if pinned != top.digest {
                return Err(malformed(
                    image,
                    "manifest",
                    &top.digest,
                    format!("its digest is not the pinned {pinned}"),
                ));
            }
        }
        match parse_top(image, &top)? {
            Top::Manifest => Ok((top, None)),
            Top::Index(index) => {
                let desc = pick_amd64(image, &index)?;
                let raw = self.registry.manifest(image, &desc).await?;
                if raw.digest != desc {
                    return Err(malformed(image, "manifest", &raw.digest, format!("the index names {desc}")));
                }
                Ok((raw, Some(top)))
            }
        }
    }

    /// Downloads the layers, a few at once on their own tasks, each unpacked into a stage
    /// as its bytes arrive; then commits their snapshots bottom first, each as soon as it
    /// and those below it are in. Returns the top chain ID. On failure the downloads still
    /// running are stopped and their stages removed.
    async fn fetch_and_unpack(
        &self,
        image: &ImageRef,
        lease: &str,
        layers: &[unpack::Layer],
        progress: &Progress,
    ) -> Result<String, ImageError> {
        let chain = unpack::chain_ids(&layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>());
        let slots = Arc::new(tokio::sync::Semaphore::new(PARALLEL_LAYERS));
        let budget = Arc::new(extract::Budget::new(self.limits));
        let mut fetches: Vec<tokio::task::JoinHandle<Result<Option<unpack::Stage>, ImageError>>> = layers
            .iter()
            .cloned()
            .zip(chain.iter().cloned())
            .map(|(layer, chain_id)| {
                let (this, image, lease, progress, slots, budget) = (
                    self.clone(),
                    image.clone(),
                    lease.to_string(),
                    progress.clone(),
                    slots.clone(),
                    budget.clone(),
                );
                tokio::spawn(async move {
                    let _slot = slots.acquire_owned().await;
                    this.fetch_layer(&image, &lease, (&layer, &chain_id), budget, &progress).await
                })
            })
            .collect();
        let mut parent = String::new();
        let mut result = Ok(());
        let mut awaited = 0;
        let mut unpacking_sent = false;
        for (i, layer) in layers.iter().enumerate() {
            awaited = i + 1;
            let fetched = match (&mut fetches[i]).await {
                Ok(r) => r,
                Err(e) => Err(ImageError::Fetch { digest: layer.blob.digest.clone(), reason: e.to_string() }),
            };
            result = match fetched {
                Ok(None) => Ok(()),
                Ok(Some(stage)) => {
                    if !unpacking_sent {
                        unpacking_sent = true;
                        progress.send(PullEvent::Unpacking);
                    }
                    let (cd, snap) = (&self.cd, &self.snapshotter);
                    unpack::commit(cd, lease, snap, stage, layer, &parent, &chain[i])
                        .await
                        .map_err(Into::into)
                }
                Err(e) => Err(e),
            };
            if result.is_err() {
                break;
            }
            parent = chain[i].clone();
        }
        if result.is_err() {
            for f in &fetches[awaited..] {
                f.abort();
            }
            // A layer that finished before the abort left a stage nobody will commit.
            for f in fetches.drain(awaited..) {
                if let Ok(Ok(Some(stage))) = f.await {
                    let _ = unpack::remove_snapshot(&self.cd, &self.snapshotter, &stage.key).await;
                }
            }
        }
        result.map(|()| parent)
    }

    /// Reads a config blob of `size` bytes (as its descriptor says) whole.
    async fn fetch_small(&self, image: &ImageRef, digest: &str, size: u64) -> Result<Bytes, ImageError> {
        if size > MAX_CONFIG_BYTES {
            let reason = format!("its descriptor says {size} bytes; a config may have {MAX_CONFIG_BYTES}");
            return Err(malformed(image, "config", digest, reason));
        }
        let mut body = std::pin::pin!(self.registry.blob(image, digest).await?);
        let mut bytes = Vec::with_capacity(size as usize);
        while let Some(chunk) = body.try_next().await? {
            if bytes.len() as u64 + chunk.len() as u64 > size {
                let reason = format!("the registry sent more than the {size} bytes its descriptor says");
                return Err(malformed(image, "config", digest, reason));
            }
            bytes.extend_from_slice(&chunk);
        }
        let bytes = Bytes::from(bytes);
        let actual = format!("sha256:{}", hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes)));
        if actual != digest {
            return Err(malformed(
                image,
                "config",
                digest,
                format!("the registry sent bytes with digest {actual}"),
            ));
        }
        Ok(bytes)
    }

    /// Brings one layer in: its blob into the content store unless the store has it, and,
    /// unless the snapshot `chain_id` exists, its files unpacked into a stage while the
    /// bytes stream (from the store when the blob is there already). The stage is handed
    /// over only once the blob's digest and the layer's diff ID are verified.
    async fn fetch_layer(
        &self,
        image: &ImageRef,
        lease: &str,
        (layer, chain_id): (&unpack::Layer, &str),
        budget: Arc<extract::Budget>,
        progress: &Progress,
    ) -> Result<Option<unpack::Stage>, ImageError> {
        let (cd, digest, total) = (&self.cd, layer.blob.digest.clone(), layer.blob.size as u64);
        let have_blob = content::exists(cd, &digest).await?;
        let have_snapshot = unpack::snapshot_exists(cd, &self.snapshotter, chain_id).await?;
        if have_blob && have_snapshot {
            progress.send(PullEvent::Layer { digest, bytes: total, total });
            return Ok(None);
        }
        let unpacker = match have_snapshot {
            true => None,
            false => {
                Some(unpack::Unpacker::start(cd, lease, &self.snapshotter, layer, (self.ids, budget)).await?)
            }
        };
        let feed = unpacker.as_ref().map(|u| u.feed.clone());
        let (mut bytes, mut reported) = (0u64, 0u64);
        let progress = progress.clone();
        let count = move |chunk: &Bytes| {
            bytes += chunk.len() as u64;
            // A message per MiB is plenty for a progress bar.
            if bytes - reported >= 1 << 20 || bytes == total {
                reported = bytes;
                progress.send(PullEvent::Layer { digest: digest.clone(), bytes, total });
            }
        };
        let tee = feed.clone();
        let forward = move |chunk: Bytes| {
            let tee = tee.clone();
            async move {
                if let Some(tx) = &tee {
                    // A closed feed means the unpacking failed; it reports why.
                    let _ = tx.send(Some(chunk.clone())).await;
                }
                Ok(chunk)
            }
        };
        let streamed: Result<(), ImageError> = if have_blob {
            let mut body = std::pin::pin!(content::read_stream(cd, &layer.blob.digest).inspect_ok(count));
            async {
                while let Some(chunk) = body.try_next().await? {
                    forward(chunk).await?;
                }
                Ok::<_, ContentError>(())
            }
            .await
            .map_err(Into::into)
        } else {
            let body = self
                .registry
                .blob(image, &layer.blob.digest)
                .await?
                .map_err(ContentError::from)
                .inspect_ok(count)
                .and_then(forward);
            let labels = HashMap::from([("containerd.io/uncompressed".to_string(), layer.diff_id.clone())]);
            content::write(cd, lease, &layer.blob.digest, total, labels, body).await.map_err(Into::into)
        };
        let Some(unpacker) = unpacker else { return streamed.map(|()| None) };
        if streamed.is_ok() {
            if let Some(tx) = &feed {
                let _ = tx.send(None).await;
            }
        }
        drop(feed);
        let unpacked = unpacker.finish(cd, &self.snapshotter, layer).await;
        // A failed download is the cause; the unpacking only saw the stream stop.
        streamed?;
        Ok(Some(unpacked?))
    }

    async fn put_image_record(
        &self,
        lease: &str,
        name: &str,
        target: Descriptor,
    ) -> Result<(), ContainerdError> {
        let now = prost_types::Timestamp::from(std::time::SystemTime::now());
        let record = CdImage {
            name: name.to_string(),
            labels: HashMap::new(),
            target: Some(target),
            created_at: Some(now),
            updated_at: Some(now),
        };
        let create = CreateImageRequest { image: Some(record.clone()), source_date_epoch: None };
        match self.cd.images().create(self.cd.leased(create, lease)).await {
            Ok(_) => Ok(()),
            Err(s) if s.code() == tonic::Code::AlreadyExists => {
                let update =
                    UpdateImageRequest { image: Some(record), update_mask: None, source_date_epoch: None };
                self.cd
                    .images()
                    .update(self.cd.leased(update, lease))
                    .await
                    .map_err(call_err(format!("update image {name}")))?;
                Ok(())
            }
            Err(s) => Err(call_err(format!("create image {name}"))(s)),
        }
    }

    /// Reads what an instance of `reference` needs; the image must have been pulled.
    pub async fn runnable(&self, reference: &str) -> Result<RunnableImage, ImageError> {
        let image = ImageRef::parse(reference)?;
        let name = image.name();
        let record = match self.cd.images().get(self.cd.req(GetImageRequest { name: name.clone() })).await {
            Ok(r) => r.into_inner().image,
            Err(s) if s.code() == tonic::Code::NotFound => None,
            Err(s) => return Err(call_err(format!("get image {name}"))(s).into()),
        };
        let target =
            record.and_then(|r| r.target).ok_or_else(|| ImageError::NotPulled { reference: name.clone() })?;
        let mut digest = target.digest.clone();
        let mut bytes = content::read(&self.cd, &digest).await?;
        let raw = RawManifest { bytes: Bytes::from(bytes.clone()), digest: digest.clone(), media_type: None };
        if let Top::Index(index) = parse_top(&image, &raw)? {
            digest = pick_amd64(&image, &index)?;
            bytes = content::read(&self.cd, &digest).await?;
        }
        let manifest: ImageManifest = serde_json::from_slice(&bytes)
            .map_err(|e| malformed(&image, "manifest", &digest, e.to_string()))?;
        let config_digest = manifest.config().digest().to_string();
        let config: ImageConfiguration =
            serde_json::from_slice(&content::read(&self.cd, &config_digest).await?)
                .map_err(|e| malformed(&image, "config", &config_digest, e.to_string()))?;
        let top_snapshot = unpack::chain_ids(config.rootfs().diff_ids())
            .pop()
            .ok_or_else(|| malformed(&image, "config", &config_digest, "it has no layers".into()))?;
        if !unpack::snapshot_exists(&self.cd, &self.snapshotter, &top_snapshot).await? {
            return Err(ImageError::NotPulled { reference: name });
        }
        let size_bytes = declared_size(&manifest);
        let mut blobs = vec![(config_digest, manifest.config().size())];
        blobs.extend(manifest.layers().iter().map(|l| (l.digest().to_string(), l.size())));
        Ok(RunnableImage {
            info: ImageInfo { reference: name, digest, size_bytes },
            config,
            top_snapshot,
            blobs,
        })
    }

    /// The image records in the agent's namespace.
    async fn records(&self) -> Result<Vec<CdImage>, ImageError> {
        let req = self.cd.req(ListImagesRequest { filters: vec![] });
        let images = self.cd.images().list(req).await.map_err(call_err("list images"))?;
        Ok(images.into_inner().images)
    }
}

fn manifest_media_type(m: &ImageManifest) -> String {
    m.media_type()
        .as_ref()
        .map_or_else(|| "application/vnd.oci.image.manifest.v1+json".to_string(), |t| t.to_string())
}

fn descriptor(digest: &str, media_type: String, size: usize) -> Descriptor {
    Descriptor { media_type, digest: digest.to_string(), size: size as i64, annotations: HashMap::new() }
}

fn malformed(image: &ImageRef, what: &'static str, digest: &str, reason: String) -> ImageError {
    ImageError::Malformed { reference: image.name(), what, digest: digest.to_string(), reason }
}
