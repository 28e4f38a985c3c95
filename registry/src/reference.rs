//! Image references: parsing, normalizing, and how to reach their registry.

use oci_spec::distribution::Reference;

/// A parsed image reference, e.g. `127.0.0.1:5000/fnrt/echo:latest`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRef {
    inner: Reference,
}

/// A reference that could not be parsed.
#[derive(Debug, thiserror::Error)]
#[error(
    "malformed image reference {reference:?}: {reason}; expected [registry/]repository[:tag][@sha256:digest], \
     e.g. 127.0.0.1:5000/fnrt/echo:latest"
)]
pub struct BadReference {
    /// What was given.
    pub reference: String,
    /// What is wrong with it.
    pub reason: String,
}

impl ImageRef {
    /// Parses and normalizes a reference (Docker Hub and `latest` are the defaults).
    pub fn parse(text: &str) -> Result<ImageRef, BadReference> {
        let bad = |reason: String| BadReference { reference: text.to_string(), reason };
        if text.is_empty() {
            return Err(bad("it is empty".into()));
        }
        if text.trim() != text || text.chars().any(char::is_whitespace) {
            return Err(bad("it contains white space".into()));
        }
        let inner: Reference = text.parse().map_err(|e| bad(format!("{e}")))?;
        // The parser lets an upper-case first component pass when it takes it for a path
        // (`V/x`), which the name it gives back (`docker.io/V/x`) then fails: repositories
        // are lower case (the distribution spec).
        if inner.repository().bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(bad(format!(
                "repository {:?} has upper-case letters: repositories are lower case",
                inner.repository()
            )));
        }
        if let Some(d) = inner.digest() {
            let hex =
                d.strip_prefix("sha256:").ok_or_else(|| bad("only sha256 digests are supported".into()))?;
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad(format!("digest {d:?} is not sha256: and 64 hex digits")));
            }
        }
        Ok(ImageRef { inner })
    }

    /// The registry host (and port).
    pub fn registry(&self) -> &str {
        self.inner.resolve_registry()
    }

    /// The repository path inside the registry.
    pub fn repository(&self) -> &str {
        self.inner.repository()
    }

    /// What to ask the registry's manifest endpoint for: the digest if given, else the tag.
    pub fn manifest_reference(&self) -> &str {
        self.inner.digest().or(self.inner.tag()).unwrap_or("latest")
    }

    /// The pinned digest, if the reference has one.
    pub fn digest(&self) -> Option<&str> {
        self.inner.digest()
    }

    /// The registry host without its port.
    pub fn host(&self) -> &str {
        let host = self.registry();
        match host.rsplit_once(':') {
            Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => host,
        }
    }

    /// The normalized text form, which is also the containerd image name.
    pub fn name(&self) -> String {
        self.inner.whole()
    }
}

impl std::fmt::Display for ImageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_reference_keeps_its_port() {
        let r = ImageRef::parse("127.0.0.1:5000/fnrt/echo:v1").expect("parse");
        assert_eq!(r.registry(), "127.0.0.1:5000");
        assert_eq!(r.repository(), "fnrt/echo");
        assert_eq!(r.manifest_reference(), "v1");
        assert_eq!(r.host(), "127.0.0.1");
        assert_eq!(r.name(), "127.0.0.1:5000/fnrt/echo:v1");
    }

    #[test]
    fn upper_case_repositories_are_refused_however_written() {
        // Found by the fuzzer (fuzz/corpus/image-reference/184b78657374cecc): `V/x` was
        // taken, and its name `docker.io/V/x:latest` refused.
        let err = ImageRef::parse("V/x").expect_err("V/x");
        assert!(err.reason.contains("lower case"), "{}", err.reason);
        for text in ["docker.io/V/x:latest", "example.com/App:v1"] {
            assert!(ImageRef::parse(text).is_err(), "{text}");
        }
    }

    #[test]
    fn defaults_to_latest() {
        let r = ImageRef::parse("example.com/app").expect("parse");
        assert_eq!(r.manifest_reference(), "latest");
        assert_eq!(r.host(), "example.com");
    }

    #[test]
    fn malformed_references_say_what_is_allowed() {
        for bad in ["", "UPPER/Case", "a b", "x@sha256:1234", "127.0.0.1:5000/echo:bad:tag"] {
            let err = ImageRef::parse(bad).expect_err(bad).to_string();
            assert!(err.contains("expected [registry/]repository"), "{bad}: {err}");
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod fuzz {
    use super::*;

    /// Any text: refused, or a reference whose parts hold no white space or control
    /// characters and whose normalized name parses back to itself.
    #[test]
    fn fuzz_image_references() {
        let parts = [
            "registry.example",
            "127.0.0.1:5050",
            "a",
            "b/c",
            ":",
            "@",
            "sha256:",
            "/",
            "..",
            "%2e",
            "[::1]",
        ];
        fnrt_common::fuzz::run("image-reference", |u| {
            let text: String = if u.arbitrary()? {
                u.arbitrary()?
            } else {
                (0..u.int_in_range(1..=6)?)
                    .map(|_| u.choose(&parts).copied())
                    .collect::<Result<Vec<_>, _>>()?
                    .concat()
            };
            if let Ok(r) = ImageRef::parse(&text) {
                for part in [r.registry(), r.repository(), r.manifest_reference()] {
                    assert!(
                        !part.is_empty() && !part.contains(|c: char| c.is_whitespace() || c.is_control()),
                        "{text:?}"
                    );
                }
                let again = ImageRef::parse(&r.name()).unwrap();
                assert_eq!(again.name(), r.name(), "{text:?}");
            }
            Ok(())
        });
    }
}
