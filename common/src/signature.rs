//! Signed calls from the gateway to a node's data plane: an HMAC-SHA256, under the
//! cluster's data plane key, of the method, the path and query, the time and the request
//! id. The data plane takes a call only with a valid signature no older (or newer) than
//! [`MAX_SKEW_S`]; the request id is part of what is signed, so a signature is good for
//! one call's id only.

use std::time::{SystemTime, UNIX_EPOCH};

use ring::hmac;

/// The header carrying the signature (lowercase hex).
pub const SIGNATURE: &str = "x-fnrt-signature";
/// The header carrying the signing time (Unix seconds).
pub const TIME: &str = "x-fnrt-time";
/// How far the signing time may be from the data plane's clock.
pub const MAX_SKEW_S: u64 = 30;
/// The shortest key accepted.
pub const MIN_KEY_LEN: usize = 32;

/// Why a call's signature was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// No signature or time header.
    #[error(
        "this data plane takes only calls signed by the cluster's gateway (X-Fnrt-Time and X-Fnrt-Signature)"
    )]
    Unsigned,
    /// A time that is not a number or too far from now.
    #[error("the call's signing time is not within {MAX_SKEW_S} s of the data plane's clock")]
    Stale,
    /// A signature that does not match.
    #[error("the call's signature does not match")]
    Mismatch,
}

/// A data plane key.
#[derive(Clone)]
pub struct Key(hmac::Key);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(***)")
    }
}

impl Key {
    /// A key from its secret text.
    pub fn new(secret: &str) -> Key {
        Key(hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes()))
    }

    fn message(method: &str, path_and_query: &str, time: &str, request_id: &str) -> Vec<u8> {
        [method, path_and_query, time, request_id].join("\n").into_bytes()
    }

    /// The time and signature headers' values of a call made now.
    pub fn sign(&self, method: &str, path_and_query: &str, request_id: &str) -> (String, String) {
        let time = now().to_string();
        let tag = hmac::sign(&self.0, &Self::message(method, path_and_query, &time, request_id));
        (time, hex::encode(tag.as_ref()))
    }

    /// Checks a call's `time` and `signature` headers.
    pub fn verify(
        &self,
        method: &str,
        path_and_query: &str,
        request_id: &str,
        time: Option<&str>,
        signature: Option<&str>,
    ) -> Result<(), Refused> {
        let (Some(time), Some(signature)) = (time, signature) else { return Err(Refused::Unsigned) };
        let at: u64 = time.parse().map_err(|_| Refused::Stale)?;
        if now().abs_diff(at) > MAX_SKEW_S {
            return Err(Refused::Stale);
        }
        let tag = hex::decode(signature).map_err(|_| Refused::Mismatch)?;
        hmac::verify(&self.0, &Self::message(method, path_and_query, time, request_id), &tag)
            .map_err(|_| Refused::Mismatch)
    }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_holds_for_its_call_only() {
        let key = Key::new("k".repeat(32).as_str());
        let (time, sig) = key.sign("GET", "/function/f/x?y=1", "req-1");
        assert_eq!(key.verify("GET", "/function/f/x?y=1", "req-1", Some(&time), Some(&sig)), Ok(()));
        for (m, p, id) in [
            ("POST", "/function/f/x?y=1", "req-1"),
            ("GET", "/function/g/x?y=1", "req-1"),
            ("GET", "/function/f/x?y=1", "req-2"),
        ] {
            assert_eq!(key.verify(m, p, id, Some(&time), Some(&sig)), Err(Refused::Mismatch), "{m} {p} {id}");
        }
        let other = Key::new("o".repeat(32).as_str());
        assert_eq!(
            other.verify("GET", "/function/f/x?y=1", "req-1", Some(&time), Some(&sig)),
            Err(Refused::Mismatch)
        );
        assert_eq!(key.verify("GET", "/", "r", None, Some(&sig)), Err(Refused::Unsigned));
        let old = (now() - 120).to_string();
        assert_eq!(key.verify("GET", "/", "r", Some(&old), Some(&sig)), Err(Refused::Stale));
    }
}
