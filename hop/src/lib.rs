//! Hop-by-hop headers (RFC 9110 §7.6.1) belong to one connection: a proxy must not pass
//! them on. The agent's data plane and the control plane's gateway are proxies, both ways:
//! they strip these from a request before forwarding it and from an answer before
//! returning it. Framing (`Transfer-Encoding`) is then chosen again by hyper from the
//! body, and a `Connection: close` of one side no longer closes the other side's
//! connection.

use http::header::{HeaderMap, HeaderName, CONNECTION, TE, TRAILER, TRANSFER_ENCODING, UPGRADE};

/// The hop-by-hop headers that are so whether or not `Connection` names them.
const ALWAYS: [HeaderName; 7] = [
    CONNECTION,
    TE,
    TRAILER,
    TRANSFER_ENCODING,
    UPGRADE,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
];

/// Removes the hop-by-hop headers: the fixed ones and those the `Connection` header names.
pub fn strip(headers: &mut HeaderMap) {
    // Most messages carry none: one pass over the names (a comparison each) costs less
    // than looking up every hop-by-hop name.
    if !headers.keys().any(|k| ALWAYS.contains(k)) {
        return;
    }
    // The names listed in Connection (comma-separated, maybe over several lines).
    let listed: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in &ALWAYS {
        headers.remove(name);
    }
}

/// Why a request announcing (Content-Length) a body over `limit` bytes is refused, the
/// words for its 413; `None` when it does not. A body streamed without a length is cut at
/// the limit by whoever reads it.
pub fn over_body_limit(headers: &HeaderMap, limit: u64) -> Option<String> {
    let announced = headers.get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok());
    announced.and_then(|v| v.parse::<u64>().ok()).filter(|n| *n > limit).map(|_| {
        format!("the request body is over {limit} bytes, the limit of a synchronous call (max_body_bytes)")
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use http::HeaderValue;

    #[test]
    fn a_message_without_hop_by_hop_headers_is_left_whole() {
        let mut h = HeaderMap::new();
        for (k, v) in [("content-length", "2"), ("x-kept", "a"), ("x-kept", "b"), ("host", "h")] {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        let before = h.clone();
        strip(&mut h);
        assert_eq!(h, before);
        let mut only = HeaderMap::new();
        only.insert(UPGRADE, HeaderValue::from_static("websocket"));
        strip(&mut only);
        assert!(only.is_empty());
    }

    #[test]
    fn strips_the_fixed_and_the_listed_hop_by_hop_headers_and_keeps_the_rest() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("connection", "keep-alive, X-Dropped"),
            ("connection", " x-also-dropped ,,"),
            ("x-dropped", "1"),
            ("x-also-dropped", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("trailer", "x-checksum"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("proxy-connection", "keep-alive"),
            ("content-length", "12"),
            ("x-kept", "yes"),
        ] {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        strip(&mut h);
        let mut left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["content-length", "x-kept"]);
    }

    #[test]
    fn a_connection_header_that_is_not_text_is_still_removed() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_bytes(b"\xff").unwrap());
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip(&mut h);
        assert_eq!(h.len(), 1);
    }
}
