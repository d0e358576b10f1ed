//! A request body that fails when the client stops sending: no frame for `limit` ends it
//! with `BodyTimeout`, which aborts the upstream request (and so the copy is never sent)
//! and answers 408.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::sync::oneshot;
use tokio::time::{Instant, Sleep};

/// The client sent nothing for the body inactivity limit.
#[derive(Debug, thiserror::Error)]
#[error("no request body data for {0:?}")]
pub(crate) struct BodyTimeout(pub Duration);

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

pin_project! {
    /// `inner`, failing with `BodyTimeout` after `limit` without a frame.
    pub(crate) struct IdleTimeout<B> {
        #[pin]
        inner: B,
        // Boxed to keep the body `Unpin` for the client; absent for empty bodies (no timer
        // at all for the common bodiless request).
        sleep: Option<Pin<Box<Sleep>>>,
        limit: Duration,
        // Fired (or dropped) once the body has been read to its end or failed.
        sent: Option<oneshot::Sender<()>>,
    }
}

impl<B: Body> IdleTimeout<B> {
    #[cfg(test)]
    pub(crate) fn new(inner: B, limit: Duration) -> Self {
        Self::with_end_signal(inner, limit).0
    }

    /// Also returns a receiver that completes when the body has been read to its end,
    /// failed, or been dropped; `None` for an empty body (nothing to wait for).
    pub(crate) fn with_end_signal(
        inner: B,
        limit: Duration,
    ) -> (Self, Option<oneshot::Receiver<()>>) {
        if inner.is_end_stream() {
            return (
                IdleTimeout {
                    inner,
                    sleep: None,
                    limit,
                    sent: None,
                },
                None,
            );
        }
        let (tx, rx) = oneshot::channel();
        let sleep = Some(Box::pin(tokio::time::sleep(limit)));
        (
            IdleTimeout {
                inner,
                sleep,
                limit,
                sent: Some(tx),
            },
            Some(rx),
        )
    }
}

impl<B> Body for IdleTimeout<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        match this.inner.as_mut().poll_frame(cx) {
            Poll::Ready(frame) => {
                if let Some(sleep) = this.sleep.as_mut() {
                    sleep.as_mut().reset(Instant::now() + *this.limit);
                }
                let ended = match &frame {
                    Some(Ok(f)) => f.is_trailers() || this.inner.is_end_stream(),
                    Some(Err(_)) | None => true,
                };
                if ended && let Some(tx) = this.sent.take() {
                    let _ = tx.send(());
                }
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => match this.sleep.as_mut().map(|s| s.as_mut().poll(cx)) {
                Some(Poll::Ready(())) => {
                    this.sent.take();
                    Poll::Ready(Some(Err(Box::new(BodyTimeout(*this.limit)))))
                }
                _ => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use http_body_util::channel::Channel;

    #[tokio::test]
    async fn a_stalled_body_fails_after_the_limit_and_a_flowing_one_does_not() {
        let (mut tx, body) = Channel::<Bytes, std::io::Error>::new(4);
        let limit = Duration::from_millis(200);
        let mut b = IdleTimeout::new(body, limit);
        for _ in 0..3 {
            // Pauses shorter than the limit, three in a row: longer than it in total.
            tokio::time::sleep(Duration::from_millis(120)).await;
            tx.send_data(Bytes::from_static(b"x")).await.unwrap();
            assert!(
                b.frame().await.unwrap().unwrap().is_data(),
                "each frame restarts the clock"
            );
        }
        let started = std::time::Instant::now();
        let err = b.frame().await.unwrap().unwrap_err();
        assert!(err.downcast_ref::<BodyTimeout>().is_some(), "{err}");
        assert!(started.elapsed() >= limit);
        drop(tx);
    }

    #[tokio::test]
    async fn an_empty_body_has_no_timer() {
        let b = IdleTimeout::new(
            http_body_util::Empty::<Bytes>::new(),
            Duration::from_millis(1),
        );
        assert!(b.sleep.is_none());
        assert!(b.is_end_stream());
    }
}
