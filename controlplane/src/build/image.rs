//! Code images: the runtime's base image plus one code layer, assembled and pushed with
//! the shared registry client (base layers are mounted from the base repository, not
//! copied, when the registry allows it).

use bytes::Bytes;
use fnrt_registry::{ImageRef, Registry, RegistryError};
use serde_json::{json, Value};

use super::code::Layer;

/// A code image that cannot be pushed.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// A reference is malformed.
    #[error(transparent)]
    Reference(#[from] fnrt_registry::BadReference),
    /// The registry refused or failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The base image is not on the registry code images go to.
    #[error("the runtime image {base} must be on the registry code images go to ({registry})")]
    OtherRegistry {
        /// The base image.
        base: String,
        /// The code images' registry.
        registry: String,
    },
    /// The base image's manifest or config is not what a runtime image is.
    #[error("the runtime image {base}: {reason}")]
    Base {
        /// The base image.
        base: String,
        /// What is wrong.
        reason: String,
    },
}

/// Whether `reference`'s manifest is in its registry.
pub async fn exists(registry: &Registry, reference: &str) -> bool {
    let Ok(image) = ImageRef::parse(reference) else { return false };
    registry.manifest(&image, image.manifest_reference()).await.is_ok()
}

/// `reference` pinned to the digest its registry has for it now (unchanged when it
/// names a digest already): a deploy runs this one image on every agent, whatever is
/// pushed to the tag meanwhile.
pub async fn pin(registry: &Registry, reference: &str) -> Result<String, PushError> {
    let image = ImageRef::parse(reference)?;
    if image.digest().is_some() {
        return Ok(image.name());
    }
    let top = registry.manifest(&image, image.manifest_reference()).await?;
    Ok(format!("{}@{}", image.name(), top.digest))
}

/// Pushes `base` plus `layer` (and `env` added to its config) as `target` (on the base's
/// registry); the pushed `target@digest`.
pub async fn push(
    registry: &Registry,
    base: &str,
    target: &str,
    layer: Layer,
    env: &[(String, String)],
) -> Result<String, PushError> {
    let (base_ref, target_ref) = (ImageRef::parse(base)?, ImageRef::parse(target)?);
    if base_ref.registry() != target_ref.registry() {
        return Err(PushError::OtherRegistry { base: base.into(), registry: target_ref.registry().into() });
    }
    let bad = |reason: String| PushError::Base { base: base.into(), reason };
    let raw = registry.manifest(&base_ref, base_ref.manifest_reference()).await?;
    let mut manifest: Value =
        serde_json::from_slice(&raw.bytes).map_err(|e| bad(format!("no readable manifest: {e}")))?;
    if manifest.get("manifests").is_some() {
        return Err(bad("it is an index; a runtime image must be a single linux/amd64 manifest".into()));
    }
    let media_type = manifest["mediaType"]
        .as_str()
        .map(str::to_string)
        .or(raw.media_type)
        .unwrap_or_else(|| "application/vnd.oci.image.manifest.v1+json".into());
    let config_digest = manifest["config"]["digest"].as_str().unwrap_or_default().to_string();
    let config_bytes = registry.blob_bytes(&base_ref, &config_digest, 4 << 20).await?;
    let mut config: Value =
        serde_json::from_slice(&config_bytes).map_err(|e| bad(format!("its config is not JSON: {e}")))?;
    for l in manifest["layers"].as_array().cloned().unwrap_or_default() {
        registry.mount(&target_ref, &base_ref, l["digest"].as_str().unwrap_or_default()).await?;
    }
    add_layer_to_config(&mut config, &layer.diff_id, env).map_err(|r| bad(r.into()))?;
    let size = layer.gz.len();
    let layer_digest = registry.upload(&target_ref, Bytes::from(layer.gz)).await?;
    let config_bytes = serde_json::to_vec(&config).map_err(|e| bad(e.to_string()))?;
    let config_size = config_bytes.len();
    let config_digest = registry.upload(&target_ref, Bytes::from(config_bytes)).await?;
    let layer_type = if media_type.contains("docker") {
        "application/vnd.docker.image.rootfs.diff.tar.gzip"
    } else {
        "application/vnd.oci.image.layer.v1.tar+gzip"
    };
    manifest["config"]["digest"] = json!(config_digest);
    manifest["config"]["size"] = json!(config_size);
    manifest["layers"]
        .as_array_mut()
        .ok_or_else(|| bad("its manifest has no layers".into()))?
        .push(json!({ "mediaType": layer_type, "digest": layer_digest, "size": size }));
    let body = serde_json::to_vec(&manifest).map_err(|e| bad(e.to_string()))?;
    let digest = registry.put_manifest(&target_ref, &media_type, Bytes::from(body)).await?;
    Ok(format!("{}@{digest}", target_ref.name()))
}

/// The code layer's diff id, a history entry and `env` added to an image config.
fn add_layer_to_config(
    config: &mut Value,
    diff_id: &str,
    env: &[(String, String)],
) -> Result<(), &'static str> {
    let diff_ids = config["rootfs"]["diff_ids"].as_array_mut().ok_or("its config has no diff_ids")?;
    diff_ids.push(json!(diff_id));
    if let Some(h) = config["history"].as_array_mut() {
        h.push(json!({ "created_by": "fnrt: the function's code under /var/user/" }));
    }
    let mut vars = config["config"]["Env"].as_array().cloned().unwrap_or_default();
    for (k, v) in env {
        vars.retain(|e| !e.as_str().unwrap_or_default().starts_with(&format!("{k}=")));
        vars.push(json!(format!("{k}={v}")));
    }
    config["config"]["Env"] = json!(vars);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_code_layer_and_env_go_into_the_config() {
        let mut config = json!({
            "rootfs": {"type": "layers", "diff_ids": ["sha256:a"]},
            "history": [{"created_by": "base"}],
            "config": {"Env": ["PATH=/bin", "SCF_HANDLER=old"]}
        });
        add_layer_to_config(&mut config, "sha256:b", &[("SCF_HANDLER".into(), "h.main".into())])
            .expect("a config with diff_ids");
        assert_eq!(config["rootfs"]["diff_ids"], json!(["sha256:a", "sha256:b"]));
        assert_eq!(config["config"]["Env"], json!(["PATH=/bin", "SCF_HANDLER=h.main"]));
        assert_eq!(config["history"].as_array().map(Vec::len), Some(2));
        assert!(add_layer_to_config(&mut json!({}), "sha256:b", &[]).is_err());
    }
}
