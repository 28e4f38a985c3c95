//! What every fnrt binary and library shares.
//!
//! `tls`: the TLS set-up of outgoing HTTPS. Clients are built with the crypto provider
//! named explicitly, so no process-wide setting is needed: a binary behaves the same
//! whether or not something else in its process installed a default provider (the
//! shipped control plane once panicked on its first registry call because only the test
//! harness installed one).

pub mod bearer;
pub mod check;
pub mod config;
pub mod durable;
pub mod net;
pub mod pki;
pub mod secret;
pub mod service;
pub mod signature;
pub mod tls;

/// An error with all its sources, ": "-joined, without repeating a source the message
/// already contains (thiserror's `#[error("...: {0}")]` often does).
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(feature = "fuzzing")]
pub mod fuzz;

/// How long each fuzz test runs, in ms: `FNRT_FUZZ_MS`, 1000 by default (CI's bound).
#[doc(hidden)]
pub fn fuzz_budget_ms() -> u64 {
    std::env::var("FNRT_FUZZ_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(1000)
}
