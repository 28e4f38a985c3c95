//! Code images: the runtime's base image plus one code layer, assembled and pushed over
//! the OCI distribution API (base layers are mounted from the base repository, not
//! copied, when the registry allows it).

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::code::Layer;

const ACCEPT: &str =
    "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

/// `host`, `repository` and `tag` of a reference written `host/repository:tag`.
pub fn split(reference: &str) -> Result<(String, String, String), String> {
    let (host, rest) =
        reference.split_once('/').ok_or_else(|| format!("{reference:?} has no registry host"))?;
    let (repo, tag) = match rest.rsplit_once(':') {
        Some((r, t)) if !t.contains('/') => (r, t),
        _ => (rest, "latest"),
    };
    Ok((host.to_string(), repo.to_string(), tag.to_string()))
}

fn base_url(host: &str) -> String {
    let plain = host.starts_with("127.0.0.1") || host.starts_with("localhost") || host.starts_with("[::1]");
    format!("{}://{host}", if plain { "http" } else { "https" })
}

fn sha(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

/// A small client of one registry.
struct Client {
    http: reqwest::Client,
    url: String,
}

impl Client {
    async fn get(&self, path: &str, accept: Option<&str>) -> Result<(String, Vec<u8>), String> {
        let mut req = self.http.get(format!("{}{path}", self.url));
        if let Some(a) = accept {
            req = req.header("accept", a);
        }
        let r = req.send().await.map_err(|e| format!("registry {}: {e}", self.url))?;
        if !r.status().is_success() {
            return Err(format!("registry {} answered {} for {path}", self.url, r.status()));
        }
        let ct =
            r.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
        let body = r.bytes().await.map_err(|e| format!("registry {}: {e}", self.url))?;
        Ok((ct, body.to_vec()))
    }

    async fn has_blob(&self, repo: &str, digest: &str) -> bool {
        let r = self.http.head(format!("{}/v2/{repo}/blobs/{digest}", self.url)).send().await;
        r.is_ok_and(|r| r.status().is_success())
    }

    async fn upload(&self, repo: &str, bytes: Vec<u8>) -> Result<String, String> {
        let digest = sha(&bytes);
        if self.has_blob(repo, &digest).await {
            return Ok(digest);
        }
        let err = |e: reqwest::Error| format!("uploading to {}: {e}", self.url);
        let r = self.http.post(format!("{}/v2/{repo}/blobs/uploads/", self.url)).send().await.map_err(err)?;
        let location = r
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| format!("registry {} gave no upload location ({})", self.url, r.status()))?
            .to_string();
        let url = if location.starts_with("http") { location } else { format!("{}{location}", self.url) };
        let sep = if url.contains('?') { '&' } else { '?' };
        let r = self.http.put(format!("{url}{sep}digest={digest}")).body(bytes).send().await.map_err(err)?;
        if !r.status().is_success() {
            return Err(format!("registry {} refused blob {digest}: {}", self.url, r.status()));
        }
        Ok(digest)
    }

    /// Makes `digest` of `from` present in `repo`: a cross-repository mount, else a copy.
    async fn mount(&self, repo: &str, from: &str, digest: &str) -> Result<(), String> {
        if self.has_blob(repo, digest).await {
            return Ok(());
        }
        let url = format!("{}/v2/{repo}/blobs/uploads/?mount={digest}&from={from}", self.url);
        let r = self.http.post(url).send().await.map_err(|e| format!("registry {}: {e}", self.url))?;
        if r.status() == reqwest::StatusCode::CREATED {
            return Ok(());
        }
        let (_, bytes) = self.get(&format!("/v2/{from}/blobs/{digest}"), None).await?;
        self.upload(repo, bytes).await.map(drop)
    }
}

/// The control plane's registry client: one connection pool, TLS with an explicit crypto
/// provider (see fnrt_common::tls).
#[derive(Clone, Debug)]
pub struct Registry {
    http: reqwest::Client,
}

impl Registry {
    /// A client with a connect timeout of 10 s.
    pub fn new() -> Result<Registry, fnrt_common::tls::TlsError> {
        let http = fnrt_common::tls::http_client(&[])?
            .user_agent(concat!("fnrt-controlplane/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(std::time::Duration::from_secs(10))
            .build()
            .map_err(|e| fnrt_common::tls::TlsError::Setup(e.to_string()))?;
        Ok(Registry { http })
    }

    /// See [`push`].
    pub async fn push(
        &self,
        base: &str,
        target: &str,
        layer: Layer,
        env: &[(String, String)],
    ) -> Result<String, String> {
        push(&self.http, base, target, layer, env).await
    }

    /// Whether `reference`'s manifest is in its registry.
    pub async fn exists(&self, reference: &str) -> bool {
        let Ok((host, repo, tag)) = split(reference) else { return false };
        let url = format!("{}/v2/{repo}/manifests/{tag}", base_url(&host));
        let r = self.http.head(url).header("accept", ACCEPT).send().await;
        r.is_ok_and(|r| r.status().is_success())
    }
}

/// Pushes `base` plus `layer` (and `env` added to its config) as `target`
/// (`host/repository:tag`, on the base's registry); the pushed `target@digest`.
async fn push(
    http: &reqwest::Client,
    base: &str,
    target: &str,
    layer: Layer,
    env: &[(String, String)],
) -> Result<String, String> {
    let (bhost, brepo, btag) = split(base)?;
    let (thost, trepo, ttag) = split(target)?;
    if bhost != thost {
        return Err(format!("the runtime image {base} must be on the registry code images go to ({thost})"));
    }
    let c = Client { http: http.clone(), url: base_url(&thost) };
    let (media_type, body) = c.get(&format!("/v2/{brepo}/manifests/{btag}"), Some(ACCEPT)).await?;
    let mut manifest: Value = serde_json::from_slice(&body)
        .map_err(|e| format!("the runtime image {base} has no readable manifest: {e}"))?;
    let config_digest = manifest["config"]["digest"].as_str().unwrap_or_default().to_string();
    let (_, config_bytes) = c.get(&format!("/v2/{brepo}/blobs/{config_digest}"), None).await?;
    let mut config: Value = serde_json::from_slice(&config_bytes)
        .map_err(|e| format!("the runtime image's config is not JSON: {e}"))?;
    for l in manifest["layers"].as_array().cloned().unwrap_or_default() {
        c.mount(&trepo, &brepo, l["digest"].as_str().unwrap_or_default()).await?;
    }
    let diff_ids =
        config["rootfs"]["diff_ids"].as_array_mut().ok_or("the runtime image's config has no diff_ids")?;
    diff_ids.push(json!(layer.diff_id));
    if let Some(h) = config["history"].as_array_mut() {
        h.push(json!({ "created_by": "fnrt: the function's code under /var/user/" }));
    }
    let mut vars = config["config"]["Env"].as_array().cloned().unwrap_or_default();
    for (k, v) in env {
        vars.retain(|e| !e.as_str().unwrap_or_default().starts_with(&format!("{k}=")));
        vars.push(json!(format!("{k}={v}")));
    }
    config["config"]["Env"] = json!(vars);
    let size = layer.gz.len();
    let layer_digest = c.upload(&trepo, layer.gz).await?;
    let config_bytes = serde_json::to_vec(&config).map_err(|e| e.to_string())?;
    let config_size = config_bytes.len();
    let config_digest = c.upload(&trepo, config_bytes).await?;
    let layer_type = if media_type.contains("docker") {
        "application/vnd.docker.image.rootfs.diff.tar.gzip"
    } else {
        "application/vnd.oci.image.layer.v1.tar+gzip"
    };
    manifest["config"]["digest"] = json!(config_digest);
    manifest["config"]["size"] = json!(config_size);
    manifest["layers"]
        .as_array_mut()
        .ok_or("the runtime image's manifest has no layers")?
        .push(json!({ "mediaType": layer_type, "digest": layer_digest, "size": size }));
    let body = serde_json::to_vec(&manifest).map_err(|e| e.to_string())?;
    let digest = sha(&body);
    let r = c
        .http
        .put(format!("{}/v2/{trepo}/manifests/{ttag}", c.url))
        .header("content-type", media_type)
        .body(body)
        .send()
        .await
        .map_err(|e| format!("registry {}: {e}", c.url))?;
    if !r.status().is_success() {
        return Err(format!("registry {} refused the manifest of {target}: {}", c.url, r.status()));
    }
    Ok(format!("{target}@{digest}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_split() {
        assert_eq!(
            split("127.0.0.1:5000/ns/fn:3"),
            Ok(("127.0.0.1:5000".into(), "ns/fn".into(), "3".into()))
        );
        assert_eq!(
            split("127.0.0.1:5000/fnrt/base"),
            Ok(("127.0.0.1:5000".into(), "fnrt/base".into(), "latest".into()))
        );
    }
}
