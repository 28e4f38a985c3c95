//! Which manifest of an image runs here: an index's linux/amd64 entry, and a config that
//! says linux/amd64.

use oci_spec::image::{Arch, ImageConfiguration, ImageIndex, ImageManifest, Os};

use super::{malformed, ImageError, ImageRef, RawManifest};

pub(super) enum Top {
    Manifest,
    Index(Box<ImageIndex>),
}

pub(super) fn parse_top(image: &ImageRef, raw: &RawManifest) -> Result<Top, ImageError> {
    let value: serde_json::Value = serde_json::from_slice(&raw.bytes)
        .map_err(|e| malformed(image, "manifest", &raw.digest, e.to_string()))?;
    if value.get("manifests").is_some() {
        let index = serde_json::from_value(value)
            .map_err(|e| malformed(image, "index", &raw.digest, e.to_string()))?;
        Ok(Top::Index(Box::new(index)))
    } else {
        serde_json::from_value::<ImageManifest>(value)
            .map_err(|e| malformed(image, "manifest", &raw.digest, e.to_string()))?;
        Ok(Top::Manifest)
    }
}

/// The digest of the linux/amd64 manifest of an index.
pub(super) fn pick_amd64(image: &ImageRef, index: &ImageIndex) -> Result<String, ImageError> {
    let mut found = Vec::new();
    for m in index.manifests() {
        match m.platform() {
            Some(p) if *p.architecture() == Arch::Amd64 && *p.os() == Os::Linux => {
                return Ok(m.digest().to_string())
            }
            Some(p) => found.push(format!("{}/{}", p.os(), p.architecture())),
            None => found.push("unknown platform".into()),
        }
    }
    Err(ImageError::Architecture { reference: image.name(), found: found.join(", ") })
}

pub(super) fn check_platform(image: &ImageRef, config: &ImageConfiguration) -> Result<(), ImageError> {
    if *config.architecture() == Arch::Amd64 && *config.os() == Os::Linux {
        return Ok(());
    }
    Err(ImageError::Architecture {
        reference: image.name(),
        found: format!("{}/{}", config.os(), config.architecture()),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod fuzz {
    use super::*;

    /// Any bytes as a manifest or index: an answer or an error, never a panic; an index
    /// that parses gives an amd64 pick or an error too.
    #[test]
    fn fuzz_manifests_and_indexes() {
        let image = ImageRef::parse("registry.example/a:b").unwrap();
        fnrt_common::fuzz::run("manifest", |u| {
            let bytes: Vec<u8> = if u.arbitrary()? {
                u.arbitrary()?
            } else {
                // JSON-shaped input reaches the deeper parsers.
                let keys = ["manifests", "layers", "config", "platform", "mediaType", "digest", "size"];
                let k = *u.choose(&keys)?;
                let v: String = u.arbitrary()?;
                format!("{{\"schemaVersion\":2,\"{k}\":[{{\"{k}\":{v:?}}}]}}").into_bytes()
            };
            let raw =
                RawManifest { digest: fnrt_registry::sha256(&bytes), bytes: bytes.into(), media_type: None };
            if let Ok(Top::Index(index)) = parse_top(&image, &raw) {
                let _ = pick_amd64(&image, &index);
            }
            Ok(())
        });
    }
}
