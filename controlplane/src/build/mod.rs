//! Code functions: the uploaded zip (kept under `<state_dir>/code/<function>.zip`) and the
//! image a deploy builds from it.

pub mod code;
pub mod image;

/// Where the zip of function `id` is kept.
pub fn zip_path(state_dir: &std::path::Path, id: &str) -> std::path::PathBuf {
    state_dir.join("code").join(format!("{id}.zip"))
}

/// Builds and pushes the image of code function `f` (namespace `ns`) from its zip, to
/// `<registry>/<namespace>/<function>:<deploy count>`; the pushed `reference@digest` and
/// what the build did, in words.
pub async fn build(
    cfg: &crate::Config,
    registry: &image::Registry,
    f: &crate::model::Function,
    ns: &crate::model::Namespace,
) -> Result<(String, String), String> {
    let started = std::time::Instant::now();
    let base =
        cfg.runtime_image(&f.runtime).ok_or_else(|| format!("runtime {:?} has no base image", f.runtime))?;
    let entry = code::Entry::of(&f.runtime, &f.handler)?;
    let path = zip_path(&cfg.state_dir, &f.id);
    let zip = tokio::fs::read(&path)
        .await
        .map_err(|_| "no code was uploaded: PUT a zip to the upload-url first".to_string())?;
    let (layer, n) = tokio::task::spawn_blocking(move || {
        let files = code::check(&zip, &entry)?;
        Ok::<_, String>((code::layer(&files)?, files.len()))
    })
    .await
    .map_err(|e| format!("build task failed: {e}"))??;
    let target = format!("{}/{}/{}:{}", cfg.registry, ns.name, f.name, f.deploys);
    let handler = if f.handler.is_empty() { "handler.handle".to_string() } else { f.handler.clone() };
    let bytes = layer.gz.len();
    let image = registry.push(&base, &target, layer, &[("SCF_HANDLER".to_string(), handler)]).await?;
    let message = format!(
        "built {image} from {n} files ({bytes} bytes compressed) on {base} in {} ms",
        started.elapsed().as_millis()
    );
    Ok((image, message))
}
