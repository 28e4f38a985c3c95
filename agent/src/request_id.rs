//! Request ids: every call has one, the caller's `X-Scf-Request-Id` when it is valid or
//! a new one; the instance gets it in that header and the caller gets it back.

/// The request id header of SCF.
pub const REQUEST_ID: &str = "x-scf-request-id";

/// A caller's request id must be 1 to 128 of these.
pub fn valid(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// A new request id, UUID v4 shaped (random version 4 variant 1, lower-case hex).
pub fn new() -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut bits: u128 = rand::random();
    bits = (bits & !(0xf << 76)) | (0x4 << 76); // version 4
    bits = (bits & !(0x3 << 62)) | (0x2 << 62); // variant 10
    let mut out = String::with_capacity(36);
    for i in 0..32 {
        if matches!(i, 8 | 12 | 16 | 20) {
            out.push('-');
        }
        out.push(char::from(HEX[((bits >> (124 - 4 * i)) & 0xf) as usize]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_checked_and_made() {
        for ok in ["a", "req-1", "3f2b_x.y:z", &"a".repeat(128)] {
            assert!(valid(ok), "{ok}");
        }
        for bad in ["", "a b", "a/b", "é", &"a".repeat(129)] {
            assert!(!valid(bad), "{bad}");
        }
        let id = new();
        assert!(valid(&id) && id.len() == 36 && id.as_bytes()[14] == b'4', "{id}");
        assert_ne!(id, new());
    }
}

#[cfg(test)]
mod fuzz {
    /// Any string the check lets through is safe where ids go: a header value, a log
    /// field, a file name part (no separators, no control characters, bounded).
    #[test]
    fn fuzz_request_ids() {
        fnrt_common::fuzz::run("request-id", |u| {
            let id: String = u.arbitrary()?;
            if super::valid(&id) {
                assert!(hyper::header::HeaderValue::from_str(&id).is_ok(), "{id:?}");
                assert!(id.len() <= 128 && !id.contains(['/', ' ', '\n', '\r', '\0']), "{id:?}");
            }
            assert!(super::valid(&super::new()));
            Ok(())
        });
    }
}
