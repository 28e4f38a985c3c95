//! Pushing hand-made images to the stack's registry, for tests that craft their layers.
#![allow(clippy::unwrap_used)]

use sha2::{Digest, Sha256};

use crate::real_parts;

/// `sha256:<hex>` of `bytes`.
pub fn sha(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Pushes a blob with a monolithic upload (POST, then PUT with the digest).
pub async fn push_blob(http: &reqwest::Client, registry: &str, repo: &str, bytes: Vec<u8>) -> String {
    let digest = sha(&bytes);
    let start = http.post(format!("http://{registry}/v2/{repo}/blobs/uploads/")).send().await.unwrap();
    assert_eq!(start.status().as_u16(), 202, "start upload");
    let location = start.headers()["location"].to_str().unwrap().to_string();
    let url = if location.starts_with("http") { location } else { format!("http://{registry}{location}") };
    let sep = if url.contains('?') { '&' } else { '?' };
    let put = http.put(format!("{url}{sep}digest={digest}")).body(bytes).send().await.unwrap();
    assert_eq!(put.status().as_u16(), 201, "finish upload of {digest}");
    digest
}

/// An image config for linux/amd64 with these diff IDs.
pub fn config(diff_ids: &[String]) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": ["/bin/true"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap()
}

/// An OCI manifest of a config and layers, each `(media type, digest, size)`.
pub fn manifest(config: (&str, usize), layers: &[(&str, String, u64)]) -> Vec<u8> {
    let layers: Vec<_> = layers
        .iter()
        .map(|(media_type, digest, size)| serde_json::json!({"mediaType": media_type, "digest": digest, "size": size}))
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.0, "size": config.1},
        "layers": layers,
    }))
    .unwrap()
}

/// Pushes an image of `layers` (blob, media type, diff ID) to `repo` of the stack's
/// registry under a fresh tag; its reference.
pub async fn image(repo: &str, layers: Vec<(Vec<u8>, &str, String)>) -> String {
    let registry = real_parts().registry;
    let http = crate::http();
    let diff_ids: Vec<String> = layers.iter().map(|l| l.2.clone()).collect();
    let mut described = Vec::new();
    for (bytes, media_type, _) in layers {
        let size = bytes.len() as u64;
        let digest = push_blob(&http, &registry, repo, bytes).await;
        described.push((media_type, digest, size));
    }
    let config = config(&diff_ids);
    let config_size = config.len();
    let config_digest = push_blob(&http, &registry, repo, config).await;
    let tag = format!("t{:08x}", rand::random::<u32>());
    let put = http
        .put(format!("http://{registry}/v2/{repo}/manifests/{tag}"))
        .header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
        .body(manifest((&config_digest, config_size), &described))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status().as_u16(), 201, "push manifest");
    format!("{registry}/{repo}:{tag}")
}
