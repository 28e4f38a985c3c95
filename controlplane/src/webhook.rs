//! Push-then-deploy: the registry's notifications (docker-registry's
//! `notifications.endpoints`) name the tags pushed; a deployed function whose
//! `registry_image` is that tag is deployed again, pinned to the pushed digest. A
//! notification of a digest already seen (registries retry) starts nothing.

use chrono::Utc;
use serde::Deserialize;

use crate::error::Error;
use crate::model::{Function, FunctionStatus};
use crate::state::{Change, State};

/// The registry's notification envelope.
#[derive(Debug, Deserialize)]
pub struct Envelope {
    /// The events.
    #[serde(default, deserialize_with = "crate::json::objects")]
    pub events: Vec<Event>,
}

/// One event.
#[derive(Debug, Deserialize)]
pub struct Event {
    /// `push`, `pull`, `delete`.
    #[serde(default)]
    pub action: String,
    /// What it was about.
    #[serde(default, deserialize_with = "crate::json::object")]
    pub target: Target,
}

/// The target of an event.
#[derive(Debug, Default, Deserialize)]
pub struct Target {
    /// The manifest's media type.
    #[serde(default, rename = "mediaType")]
    pub media_type: String,
    /// The manifest's digest.
    #[serde(default)]
    pub digest: String,
    /// The repository.
    #[serde(default)]
    pub repository: String,
    /// The tag pushed (absent for blobs and pushes by digest).
    #[serde(default)]
    pub tag: String,
    /// `http://<registry>/v2/<repository>/manifests/<digest>`.
    #[serde(default)]
    pub url: String,
}

/// A tag that now points at a digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Push {
    /// `<registry>/<repository>:<tag>`.
    pub reference: String,
    /// `sha256:...`.
    pub digest: String,
}

/// The tag pushes of an envelope (blob pushes, pulls and deletes are not).
pub fn pushes(envelope: Envelope) -> Vec<Push> {
    envelope
        .events
        .into_iter()
        .filter(|e| {
            e.action == "push" && !e.target.tag.is_empty() && e.target.media_type.contains("manifest")
        })
        .filter(|e| e.target.digest.starts_with("sha256:"))
        .filter_map(|e| {
            let host = e.target.url.split("://").nth(1)?.split('/').next()?.to_string();
            Some(Push {
                reference: format!("{host}/{}:{}", e.target.repository, e.target.tag),
                digest: e.target.digest,
            })
        })
        .collect()
}

/// The tag reference a function tracks (`latest` when none is written).
pub fn tracked_tag(image: &str) -> Option<String> {
    if image.contains('@') {
        return None;
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    Some(if last.contains(':') { image.to_string() } else { format!("{image}:latest") })
}

/// Records `push` on the deployed functions that track its tag and marks them for a
/// deploy; returns their ids (those with a deploy under way are deployed again after it).
pub async fn record(state: &State, push: &Push) -> Result<Vec<(String, bool)>, Error> {
    state
        .write(|d| {
            let mut changes = Vec::new();
            let mut ids = Vec::new();
            let tracking = |f: &&Function| {
                f.deploys > 0
                    && f.status != FunctionStatus::Deleting
                    && tracked_tag(&f.registry_image).as_deref() == Some(push.reference.as_str())
                    && f.pushed_digest.as_deref() != Some(push.digest.as_str())
            };
            for f in d.functions.values().filter(tracking) {
                let mut f = f.clone();
                f.pushed_digest = Some(push.digest.clone());
                let busy = f.status == FunctionStatus::Pending;
                if !busy {
                    f.status = FunctionStatus::Pending;
                    f.error_message = None;
                    f.deploys += 1;
                }
                f.updated_at = Utc::now();
                ids.push((f.id.clone(), busy));
                changes.push(Change::Function(f));
            }
            Ok((changes, ids))
        })
        .await
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn tag_pushes_are_read_from_notifications() {
        let body = r#"{"events":[
          {"action":"push","target":{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:aa","repository":"fnrt/app","url":"http://127.0.0.1:5000/v2/fnrt/app/blobs/sha256:aa"}},
          {"action":"push","target":{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:bb","repository":"fnrt/app","url":"http://127.0.0.1:5000/v2/fnrt/app/manifests/sha256:bb","tag":"live"}},
          {"action":"pull","target":{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:cc","repository":"fnrt/app","url":"http://127.0.0.1:5000/v2/fnrt/app/manifests/sha256:cc","tag":"live"}}
        ]}"#;
        let p = pushes(serde_json::from_str(body).unwrap());
        assert_eq!(
            p,
            vec![Push { reference: "127.0.0.1:5000/fnrt/app:live".into(), digest: "sha256:bb".into() }]
        );
        assert_eq!(tracked_tag("127.0.0.1:5000/a/b").as_deref(), Some("127.0.0.1:5000/a/b:latest"));
        assert_eq!(tracked_tag("127.0.0.1:5000/a/b:v1").as_deref(), Some("127.0.0.1:5000/a/b:v1"));
        assert_eq!(tracked_tag("127.0.0.1:5000/a/b@sha256:00"), None);
    }
}
