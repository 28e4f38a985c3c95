//! How large an image and its parts may be, as their descriptors declare them.

use oci_spec::image::ImageManifest;

/// The largest image a function may have: the sum of its compressed layers, 1 GiB.
pub const MAX_IMAGE_BYTES: u64 = 1 << 30;

/// The largest image config the agent reads.
pub const MAX_CONFIG_BYTES: u64 = 4 << 20;

/// The sum of the manifest's layer sizes; `u64::MAX` when it overflows (two layers that
/// declare 2^63 bytes each are not 0 bytes).
pub fn declared_size(manifest: &ImageManifest) -> u64 {
    manifest.layers().iter().try_fold(0u64, |sum, l| sum.checked_add(l.size())).unwrap_or(u64::MAX)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn declared_sizes_that_overflow_are_the_largest() {
        let layer = |size: u64| {
            serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": format!("sha256:{}", "a".repeat(64)), "size": size})
        };
        let manifest = |sizes: &[u64]| -> ImageManifest {
            serde_json::from_value(serde_json::json!({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": format!("sha256:{}", "b".repeat(64)), "size": 2},
                "layers": sizes.iter().map(|s| layer(*s)).collect::<Vec<_>>(),
            }))
            .unwrap()
        };
        assert_eq!(declared_size(&manifest(&[1, 2])), 3);
        assert_eq!(declared_size(&manifest(&[1 << 63, 1 << 63])), u64::MAX);
    }
}
