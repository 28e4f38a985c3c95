//! Code functions: the uploaded zip (kept under `<state_dir>/code/<function>.zip`) and the
//! image a deploy builds from it.

pub mod code;
pub(crate) mod golang;
pub mod image;
pub mod shared;

/// Where the zip of function `id` is kept.
pub fn zip_path(state_dir: &std::path::Path, id: &str) -> std::path::PathBuf {
    state_dir.join("code").join(format!("{id}.zip"))
}

/// Why a code function's image was not built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The runtime has no base image.
    #[error("runtime {0:?} has no base image")]
    NoBaseImage(String),
    /// No zip was uploaded.
    #[error("no code was uploaded: PUT a zip to the upload-url first")]
    NoCode,
    /// The zip or handler is not buildable.
    #[error(transparent)]
    Code(#[from] code::BadCode),
    /// The push failed.
    #[error(transparent)]
    Push(#[from] image::PushError),
    /// The zip could not be fetched from where the replicas share it.
    #[error("{0}")]
    Shared(String),
    /// The build task panicked.
    #[error("build task failed: {0}")]
    Task(String),
}

/// Builds and pushes the image of code function `f` (namespace `ns`) from its zip, to
/// `<registry>/<namespace>/<function>:<deploy count>`; the pushed `reference@digest` and
/// what the build did, in words.
pub async fn build(
    cfg: &crate::Config,
    registry: &fnrt_registry::Registry,
    f: &crate::model::Function,
    ns: &crate::model::Namespace,
) -> Result<(String, String), BuildError> {
    let started = std::time::Instant::now();
    let base = cfg.runtime_image(&f.runtime).ok_or_else(|| BuildError::NoBaseImage(f.runtime.clone()))?;
    let entry = code::Entry::of(&f.runtime, &f.handler)?;
    let path = zip_path(&cfg.state_dir, &f.id);
    if let Some(digest) = &f.code_digest {
        shared::fetch(cfg, registry, &f.id, digest, &path)
            .await
            .map_err(|e| BuildError::Shared(e.to_string()))?;
    }
    let (layer, n) = match &entry {
        code::Entry::Go(handler) => compiled(cfg, path, entry.clone(), handler).await?,
        _ => {
            // Read from disk as it goes: the zip's files are never all in memory.
            tokio::task::spawn_blocking(move || {
                let mut zip = std::fs::File::open(&path).map_err(|_| BuildError::NoCode)?;
                let files = code::check(&mut zip, &entry)?;
                Ok::<_, BuildError>((code::layer(zip, &files)?, files.len()))
            })
            .await
            .map_err(|e| BuildError::Task(e.to_string()))??
        }
    };
    let target = format!("{}/{}/{}:{}", cfg.registry, ns.name, f.name, f.deploys);
    let handler = if f.handler.is_empty() {
        crate::runtimes::find(&f.runtime).map_or("", |r| r.default_handler).to_string()
    } else {
        f.handler.clone()
    };
    let bytes = layer.gz.len();
    let image = image::push(registry, &base, &target, layer, &[("SCF_HANDLER".to_string(), handler)]).await?;
    let message = format!(
        "built {image} from {n} files ({bytes} bytes compressed) on {base} in {} ms",
        started.elapsed().as_millis()
    );
    Ok((image, message))
}

/// go119: the zip checked and unpacked in a directory of its own under the state
/// directory, compiled (see [`golang`]), and the binary as the layer's `scf_bootstrap`;
/// the directory goes however the build ends.
async fn compiled(
    cfg: &crate::Config,
    zip_path: std::path::PathBuf,
    entry: code::Entry,
    handler: &str,
) -> Result<(code::Layer, usize), BuildError> {
    let builds = cfg.state_dir.join("builds");
    std::fs::create_dir_all(&builds).map_err(|e| BuildError::Task(format!("{}: {e}", builds.display())))?;
    let work =
        tempfile::tempdir_in(&builds).map_err(|e| BuildError::Task(format!("{}: {e}", builds.display())))?;
    let src = work.path().join("src");
    let unpack_to = src.clone();
    let n = tokio::task::spawn_blocking(move || {
        let mut zip = std::fs::File::open(&zip_path).map_err(|_| BuildError::NoCode)?;
        let files = code::check(&mut zip, &entry)?;
        code::unpack(zip, &files, &unpack_to)?;
        Ok::<_, BuildError>(files.len())
    })
    .await
    .map_err(|e| BuildError::Task(e.to_string()))??;
    let binary = golang::compile(&src, work.path(), &cfg.state_dir.join("go-cache"), handler).await?;
    let layer = tokio::task::spawn_blocking(move || code::executable_layer("scf_bootstrap", &binary))
        .await
        .map_err(|e| BuildError::Task(e.to_string()))??;
    drop(work);
    Ok((layer, n))
}
