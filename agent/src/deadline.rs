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
    sleep: Pin<Box<Sleep>>,
    expire: Option<F>,
    _held: H,
}

impl<B, F, H> Timed<B, F, H> {
    /// `inner` bounded by `deadline`.
    pub fn new(inner: B, deadline: Instant, expire: F, held: H) -> Timed<B, F, H> {
        Timed {
            inner,
            sleep: Box::pin(tokio::time::sleep_until(deadline)),
            expire: Some(expire),
            _held: held,
        }
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
        if this.sleep.as_mut().poll(cx).is_ready() {
            if let Some(expire) = this.expire.take() {
                expire();
            }
            return Poll::Ready(Some(Err(Overran.into())));
        }
        Pin::new(&mut this.inner).poll_frame(cx).map_err(Into::into)
    }

    fn is_end_stream(&self) -> bool {
        self.expire.is_none() || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
