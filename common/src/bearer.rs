//! Checking a presented token against the configured one: both are hashed (sha256) and the
//! digests compared, so the time a comparison takes says nothing of where they differ.

use sha2::{Digest, Sha256};

/// What a caller must present.
#[derive(Clone)]
pub struct Expected([u8; 32]);

impl std::fmt::Debug for Expected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Expected(<redacted>)")
    }
}

impl Expected {
    /// The header value `Bearer <token>`.
    pub fn bearer(token: &str) -> Expected {
        Expected(Sha256::digest(format!("Bearer {token}")).into())
    }

    /// `token` itself (an `X-Auth-Token`).
    pub fn token(token: &str) -> Expected {
        Expected(Sha256::digest(token.as_bytes()).into())
    }

    /// Whether `given` (a header's bytes; none: nothing presented) is what is expected.
    pub fn matches(&self, given: Option<&[u8]>) -> bool {
        given.is_some_and(|g| Sha256::digest(g).as_slice() == self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_value_matches() {
        let e = Expected::bearer("s3cret");
        assert!(e.matches(Some(b"Bearer s3cret")));
        for bad in [&b"Bearer s3cre"[..], b"bearer s3cret", b"s3cret", b""] {
            assert!(!e.matches(Some(bad)));
        }
        assert!(!e.matches(None));
        assert!(Expected::token("k").matches(Some(b"k")));
        assert!(!format!("{e:?}").contains("s3cret"));
    }
}
