//! What every fnrt binary and library shares.
//!
//! `tls`: the TLS set-up of outgoing HTTPS. Clients are built with the crypto provider
//! named explicitly, so no process-wide setting is needed: a binary behaves the same
//! whether or not something else in its process installed a default provider (the
//! shipped control plane once panicked on its first registry call because only the test
//! harness installed one).

pub mod tls;
