//! Pushing: blobs (uploaded whole, or mounted from another repository of the same
//! registry) and manifests, authenticated with a `pull,push` scope.

use bytes::Bytes;
use reqwest::{Method, StatusCode};

use crate::client::{sha256, Action, Registry, RegistryError, Req};
use crate::reference::ImageRef;

impl Registry {
    /// Makes `bytes` a blob of `image`'s repository (nothing sent when it is there);
    /// its digest.
    pub async fn upload(&self, image: &ImageRef, bytes: Bytes) -> Result<String, RegistryError> {
        let digest = sha256(&bytes);
        if self.has_blob(image, &digest).await? {
            return Ok(digest);
        }
        let start = format!("{}/blobs/uploads/", self.base_url(image));
        let resp = self.request(image, &push(Method::POST, &start, None, vec![])).await?;
        let location = self.location(image, &resp)?;
        let sep = if location.contains('?') { '&' } else { '?' };
        let url = format!("{location}{sep}digest={digest}");
        let headers = vec![("content-type", "application/octet-stream".to_string())];
        self.request(image, &push(Method::PUT, &url, Some(bytes), headers)).await?;
        Ok(digest)
    }

    /// Makes the file at `path`, whose digest is `digest`, a blob of `image`'s repository,
    /// sent in chunks of at most `chunk` bytes (never whole in memory); nothing is sent
    /// when the blob is there.
    pub async fn upload_file(
        &self,
        image: &ImageRef,
        path: &std::path::Path,
        digest: &str,
        chunk: usize,
    ) -> Result<(), RegistryError> {
        use tokio::io::AsyncReadExt;
        if self.has_blob(image, digest).await? {
            return Ok(());
        }
        let read_error = |e: std::io::Error| RegistryError::File { path: path.to_path_buf(), source: e };
        let mut file = tokio::fs::File::open(path).await.map_err(read_error)?;
        let start = format!("{}/blobs/uploads/", self.base_url(image));
        let resp = self.request(image, &push(Method::POST, &start, None, vec![])).await?;
        let mut location = self.location(image, &resp)?;
        let mut offset = 0u64;
        let mut buf = vec![0u8; chunk];
        loop {
            let mut n = 0;
            while n < chunk {
                let got = file.read(&mut buf[n..]).await.map_err(read_error)?;
                if got == 0 {
                    break;
                }
                n += got;
            }
            if n == 0 {
                break;
            }
            let headers = vec![
                ("content-type", "application/octet-stream".to_string()),
                ("content-range", format!("{offset}-{}", offset + n as u64 - 1)),
            ];
            let body = Bytes::copy_from_slice(&buf[..n]);
            let resp = self.request(image, &push(Method::PATCH, &location, Some(body), headers)).await?;
            location = self.location(image, &resp)?;
            offset += n as u64;
        }
        let sep = if location.contains('?') { '&' } else { '?' };
        let url = format!("{location}{sep}digest={digest}");
        self.request(image, &push(Method::PUT, &url, None, vec![])).await?;
        Ok(())
    }

    /// Makes blob `digest` of repository `from` (same registry) a blob of `image`'s
    /// repository: a cross-repository mount where the registry allows it, else a copy.
    pub async fn mount(&self, image: &ImageRef, from: &ImageRef, digest: &str) -> Result<(), RegistryError> {
        if self.has_blob(image, digest).await? {
            return Ok(());
        }
        let url =
            format!("{}/blobs/uploads/?mount={digest}&from={}", self.base_url(image), from.repository());
        let resp = self.request(image, &push(Method::POST, &url, None, vec![])).await?;
        if resp.status() == StatusCode::CREATED {
            return Ok(());
        }
        // A layer of a function image: at most the 1 GiB an image may have.
        let bytes = self.blob_bytes(from, digest, 1 << 30).await?;
        self.upload(image, bytes).await.map(drop)
    }

    /// Puts a manifest of `media_type` as `image`'s tag; its digest.
    pub async fn put_manifest(
        &self,
        image: &ImageRef,
        media_type: &str,
        bytes: Bytes,
    ) -> Result<String, RegistryError> {
        let digest = sha256(&bytes);
        let url = format!("{}/manifests/{}", self.base_url(image), image.manifest_reference());
        let headers = vec![("content-type", media_type.to_string())];
        self.request(image, &push(Method::PUT, &url, Some(bytes), headers)).await?;
        Ok(digest)
    }

    /// The upload URL a registry gave in `Location` (absolute, or relative to it).
    fn location(&self, image: &ImageRef, resp: &reqwest::Response) -> Result<String, RegistryError> {
        let location = resp.headers().get(reqwest::header::LOCATION).and_then(|v| v.to_str().ok());
        let url = match location {
            Some(l) if l.starts_with("http://") || l.starts_with("https://") => l.to_string(),
            Some(l) if l.starts_with('/') => format!("{}{l}", self.origin(image)),
            _ => {
                return Err(RegistryError::Status {
                    registry: image.registry().into(),
                    url: format!("{}/blobs/uploads/", self.base_url(image)),
                    status: resp.status(),
                    detail: ": the answer named no upload location".into(),
                })
            }
        };
        // An upload location is a redirect of sorts: it keeps to the same rules.
        let (origin, target) = (reqwest::Url::parse(&self.base_url(image)), reqwest::Url::parse(&url));
        let verdict = match (origin, target) {
            (Ok(o), Ok(t)) => self.policy().redirect(&o, &t, 0),
            (_, Err(e)) => Err(format!("its upload location {url:?} is not a URL: {e}")),
            (Err(e), _) => Err(e.to_string()),
        };
        verdict.map_err(|reason| RegistryError::Redirect { registry: image.registry().into(), reason })?;
        Ok(url)
    }
}

fn push<'a>(
    method: Method,
    url: &'a str,
    body: Option<Bytes>,
    headers: Vec<(&'static str, String)>,
) -> Req<'a> {
    Req { method, url, headers, body, action: Action::Push, long: true }
}
