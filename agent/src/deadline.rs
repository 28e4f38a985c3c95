//! An answer's body bounded by its function's timeout: a function's timeout covers its
//! whole answer, not only the headers, so an endless or slow stream ends (in error, so the
//! caller sees it cut, never a short answer that looks whole) and its instance is recycled.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

/// The error an answer's body ends with when its deadline passes.
#[derive(Debug, thiserror::Error)]
#[error("the function did not finish its answer within its timeout")]
pub struct Overran;

/// `inner` until `deadline`; then an error, once `expire` has run. `held` lives as long as
/// the body.
pub struct Timed<B, F, H> {
    inner: B,
    deadline: Instant,
    /// The timer, made only once the body has to wait: an answer whose body is there
    /// at once (most are) registers none.
    sleep: Option<Pin<Box<Sleep>>>,
    expire: Option<F>,
    _held: H,
}

impl<B, F, H> Timed<B, F, H> {
    /// `inner` bounded by `deadline`.
    pub fn new(inner: B, deadline: Instant, expire: F, held: H) -> Timed<B, F, H> {
        Timed { inner, deadline, sleep: None, expire: Some(expire), _held: held }
    }
}

impl<B, F, H> Body for Timed<B, F, H>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<crate::upstream::BoxError>,
    F: FnOnce() + Unpin,
    H: Unpin,
{
    type Data = Bytes;
    type Error = crate::upstream::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if this.expire.is_none() {
            return Poll::Ready(None);
        }
        let overran = match Pin::new(&mut this.inner).poll_frame(cx) {
            // A body that is always ready must still end at its deadline.
            Poll::Ready(frame) if Instant::now() < this.deadline => {
                return Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Ready(_) => true,
            Poll::Pending => {
                let deadline = this.deadline;
                let sleep = this.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                sleep.as_mut().poll(cx).is_ready()
            }
        };
        if !overran {
            return Poll::Pending;
        }
        if let Some(expire) = this.expire.take() {
            expire();
        }
        Poll::Ready(Some(Err(Overran.into())))
    }

    fn is_end_stream(&self) -> bool {
        self.expire.is_none() || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use futures_util::StreamExt;
    use http_body_util::{BodyExt, StreamBody};

    use super::*;

    type Frames =
        StreamBody<futures_util::stream::BoxStream<'static, Result<Frame<Bytes>, std::convert::Infallible>>>;

    fn timed(frames: Frames, after: Duration) -> (Timed<Frames, impl FnOnce() + Unpin, ()>, Arc<AtomicBool>) {
        let expired = Arc::new(AtomicBool::new(false));
        let flag = expired.clone();
        (Timed::new(frames, Instant::now() + after, move || flag.store(true, Ordering::SeqCst), ()), expired)
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_there_at_once_passes_and_registers_no_timer() {
        let once = futures_util::stream::iter([Ok(Frame::data(Bytes::from_static(b"hi")))]).boxed();
        let (mut body, expired) = timed(StreamBody::new(once), Duration::from_secs(3));
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "hi");
        assert!(body.frame().await.is_none());
        assert!(body.sleep.is_none() && !expired.load(Ordering::SeqCst));
    }

    #[tokio::test(start_paused = true)]
    async fn an_endless_body_that_is_always_ready_still_ends_at_its_deadline() {
        let endless = futures_util::stream::repeat_with(|| Ok(Frame::data(Bytes::from_static(b"x")))).boxed();
        let (mut body, expired) = timed(StreamBody::new(endless), Duration::from_millis(100));
        let mut frames = 0u32;
        let end = loop {
            match body.frame().await.unwrap() {
                Ok(_) => frames += 1,
                Err(e) => break e,
            }
            assert!(frames < 20_000, "the deadline never cut an always-ready body");
            if frames.is_multiple_of(1000) {
                tokio::time::advance(Duration::from_millis(10)).await;
            }
        };
        assert!(end.is::<Overran>(), "{end}");
        assert!(expired.load(Ordering::SeqCst) && (9_000..=11_000).contains(&frames), "{frames}");
        assert!(body.frame().await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_stalls_is_cut_at_its_deadline() {
        let stalls = futures_util::stream::pending().boxed();
        let (mut body, expired) = timed(StreamBody::new(stalls), Duration::from_millis(100));
        let started = Instant::now();
        let end = body.frame().await.unwrap().unwrap_err();
        assert!(end.is::<Overran>() && expired.load(Ordering::SeqCst));
        assert_eq!(started.elapsed(), Duration::from_millis(100));
    }
}
