//! Telling the service manager how a daemon is doing (systemd's `sd_notify` protocol,
//! through the `sd-notify` crate): `READY=1` once it serves, `STOPPING=1` when it starts
//! to stop. The packaged units are `Type=notify`, so `systemctl start` and units ordered
//! `After=` a daemon wait for the moment it really answers, not for its process to exist.
//!
//! Without `NOTIFY_SOCKET` (a daemon not started by systemd, the tests' in-process
//! servers) each call does nothing. A failed send is logged, never fatal: the daemon
//! serves either way, and systemd then reports the unit's start as timed out.

use sd_notify::NotifyState;

/// Tells the service manager the daemon serves (`READY=1`), with `status` as its
/// `STATUS=` line (what `systemctl status` shows).
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)], "READY=1");
}

/// Tells the service manager the daemon is stopping (`STOPPING=1`), with `status`.
pub fn stopping(status: &str) {
    send(&[NotifyState::Stopping, NotifyState::Status(status)], "STOPPING=1");
}

fn send(states: &[NotifyState], what: &str) {
    if let Err(e) = sd_notify::notify(states) {
        let socket = std::env::var("NOTIFY_SOCKET").unwrap_or_default();
        tracing::warn!(notify_socket = %socket, error = %e, "cannot tell the service manager {what}");
    }
}
