//! The readiness probe: an instance is ready once something accepts TCP connections on its
//! :9000, and must be within the deadline (30 s by default, as SCF).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

/// The port every function listens on.
pub const FUNCTION_PORT: u16 = 9000;

/// The instance did not listen in time.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "The request timed out in {ms}ms.Please confirm your http server have enabled listening on port 9000."
)]
pub struct NotListening {
    /// The deadline that passed, in milliseconds.
    pub ms: u128,
}

/// Waits until `addr` accepts a connection, or `deadline` has passed.
///
/// A refused connection comes back at once on the bridge, so the probe retries quickly at
/// first (cold-start latency depends on it) and backs off to 10 ms.
pub async fn wait_listening(addr: SocketAddr, deadline: Duration) -> Result<Duration, NotListening> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(1);
    loop {
        let left = deadline.saturating_sub(start.elapsed());
        if left.is_zero() {
            return Err(NotListening { ms: deadline.as_millis() });
        }
        if let Ok(Ok(_)) = tokio::time::timeout(left, TcpStream::connect(addr)).await {
            return Ok(start.elapsed());
        }
        tokio::time::sleep(pause.min(deadline.saturating_sub(start.elapsed()))).await;
        pause = (pause * 2).min(Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_is_scf_exactly() {
        assert_eq!(
            NotListening { ms: 30000 }.to_string(),
            "The request timed out in 30000ms.Please confirm your http server have enabled listening on port 9000."
        );
    }

    #[tokio::test]
    async fn ready_when_listening_and_times_out_when_not() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        wait_listening(addr, Duration::from_secs(1)).await.expect("ready");
        drop(l);
        let err = wait_listening(addr, Duration::from_millis(50)).await.expect_err("closed");
        assert_eq!(err.ms, 50);
    }
}
