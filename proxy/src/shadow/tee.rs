//! The zero-copy body tee: the client's body streams to the primary frame by frame, and
//! while the running total stays within the limit the mirror keeps `Bytes` clones of the
//! same chunks (a reference count, not a copy). Past the limit the clones are released at
//! once. The end of the body (complete, too large, or broken off) is reported to the
//! `Pending` rendezvous exactly once, also when the body is dropped unfinished.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use super::pending::{Captured, Pending};
use super::trace::Trace;

pin_project! {
    /// A request body that tees its chunks to a mirror.
    pub(crate) struct TeeBody<B> {
        #[pin]
        inner: B,
        tap: Option<Tap>,
        // Counts the bytes passed on, for the access log (only when it is on).
        trace: Option<Arc<Trace>>,
    }

    impl<B> PinnedDrop for TeeBody<B> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(tap) = this.project().tap.take() {
                tap.mirror.body_done(Captured::Incomplete);
            }
        }
    }
}

struct Tap {
    mirror: Arc<Pending>,
    chunks: Vec<Bytes>,
    len: u64,
    max: u64,
    /// The declared length, when there is one: reaching it completes the body even if
    /// the consumer (an HTTP/1 client framing by length) never polls again.
    expected: Option<u64>,
    trailers: Option<HeaderMap>,
}

impl<B: Body<Data = Bytes>> TeeBody<B> {
    /// Wraps `inner`; with no mirror it only passes frames through.
    pub(crate) fn new(inner: B, mirror: Option<Arc<Pending>>) -> Self {
        let expected = inner.size_hint().exact();
        let tap = mirror.map(|mirror| Tap {
            expected,
            max: mirror.max_body(),
            mirror,
            chunks: Vec::new(),
            len: 0,
            trailers: None,
        });
        let mut body = TeeBody {
            inner,
            tap,
            trace: None,
        };
        if body.inner.is_end_stream() {
            // An empty body may never be polled: report it complete now.
            body.finish();
        }
        body
    }

    /// Counts the body bytes passed on in `trace`, for the access log.
    pub(crate) fn with_trace(mut self, trace: Option<Arc<Trace>>) -> Self {
        self.trace = trace;
        self
    }

    fn finish(&mut self) {
        if let Some(tap) = self.tap.take() {
            tap.mirror.body_done(Captured::Complete {
                chunks: tap.chunks,
                trailers: tap.trailers,
                len: tap.len,
                ended: std::time::Instant::now(),
            });
        }
    }
}

fn finish_tap(tap: &mut Option<Tap>, outcome: impl FnOnce(Tap) -> Captured) {
    if let Some(t) = tap.take() {
        let mirror = t.mirror.clone();
        mirror.body_done(outcome(t));
    }
}

impl<B: Body<Data = Bytes>> Body for TeeBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let mut this = self.project();
        let frame = ready!(this.inner.as_mut().poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let (Some(trace), Some(data)) = (this.trace.as_ref(), f.data_ref()) {
                    trace.add_received(data.len());
                }
                if let Some(tap) = this.tap.as_mut() {
                    if let Some(data) = f.data_ref() {
                        tap.len += data.len() as u64;
                        if tap.len > tap.max {
                            // Over every shadow's limit: release the clones now.
                            finish_tap(this.tap, |_| Captured::TooLarge);
                        } else if !data.is_empty() {
                            tap.chunks.push(data.clone());
                        }
                    } else if let Some(t) = f.trailers_ref() {
                        tap.trailers = Some(t.clone());
                    }
                }
                // Trailers end a body, whether or not the inner body says so yet (the
                // consumer may never poll again after them); so does the declared length.
                let at_length = this
                    .tap
                    .as_ref()
                    .is_some_and(|t| t.expected == Some(t.len) && f.is_data());
                if f.is_trailers() || at_length || this.inner.is_end_stream() {
                    finish_tap(this.tap, |t| Captured::Complete {
                        chunks: t.chunks,
                        trailers: t.trailers,
                        len: t.len,
                        ended: std::time::Instant::now(),
                    });
                }
            }
            Some(Err(_)) => finish_tap(this.tap, |_| Captured::Incomplete),
            None => finish_tap(this.tap, |t| Captured::Complete {
                chunks: t.chunks,
                trailers: t.trailers,
                len: t.len,
                ended: std::time::Instant::now(),
            }),
        }
        Poll::Ready(frame)
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
    use crate::shadow::pending::tests::recording_pending;
    use http_body_util::BodyExt;
    use http_body_util::channel::Channel;

    #[tokio::test]
    async fn captured_chunks_are_the_same_memory_as_the_forwarded_ones() {
        let (mirror, seen) = recording_pending(1024 * 1024);
        let (mut tx, body) = Channel::<Bytes, std::io::Error>::new(4);
        let mut tee = TeeBody::new(body, Some(mirror));
        let chunks: Vec<Bytes> = (0..3u8).map(|i| Bytes::from(vec![i; 1000])).collect();
        let sender = {
            let chunks = chunks.clone();
            tokio::spawn(async move {
                for c in chunks {
                    tx.send_data(c).await.unwrap();
                }
            })
        };
        let mut forwarded = Vec::new();
        while let Some(frame) = tee.frame().await {
            forwarded.push(frame.unwrap().into_data().unwrap());
        }
        sender.await.unwrap();
        drop(tee);
        let captured = seen.lock().unwrap().take().expect("reported once");
        let Captured::Complete {
            chunks: kept, len, ..
        } = captured
        else {
            panic!("complete body expected")
        };
        assert_eq!(len, 3000);
        assert_eq!(kept.len(), 3);
        for ((k, f), original) in kept.iter().zip(&forwarded).zip(&chunks) {
            assert_eq!(
                k.as_ptr(),
                f.as_ptr(),
                "the shadow keeps the forwarded chunk itself"
            );
            assert_eq!(k.as_ptr(), original.as_ptr(), "no copy anywhere on the way");
        }
    }

    #[tokio::test]
    async fn over_the_limit_the_clones_are_released_and_the_body_still_flows() {
        let (mirror, seen) = recording_pending(1500);
        let (mut tx, body) = Channel::<Bytes, std::io::Error>::new(4);
        let mut tee = TeeBody::new(body, Some(mirror));
        tokio::spawn(async move {
            for i in 0..3u8 {
                tx.send_data(Bytes::from(vec![i; 1000])).await.unwrap();
            }
        });
        let first = tee.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first.len(), 1000);
        assert!(!first.is_unique(), "within the limit the tee holds a clone");
        assert!(seen.lock().unwrap().is_none(), "nothing decided yet");
        let second = tee.frame().await.unwrap().unwrap().into_data().unwrap();
        assert!(
            matches!(*seen.lock().unwrap(), Some(Captured::TooLarge)),
            "decided the moment the limit is passed"
        );
        assert!(first.is_unique(), "the kept clone was released at once");
        assert!(
            second.is_unique(),
            "and the chunk over the limit was never cloned"
        );
        let third = tee.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(third[0], 2);
        assert!(
            tee.frame().await.is_none(),
            "the primary still gets the whole body"
        );
    }

    #[tokio::test]
    async fn a_broken_or_abandoned_body_is_incomplete() {
        let (mirror, seen) = recording_pending(1 << 20);
        let (mut tx, body) = Channel::<Bytes, std::io::Error>::new(4);
        let mut tee = TeeBody::new(body, Some(mirror));
        tx.send_data(Bytes::from_static(b"part")).await.unwrap();
        tx.abort(std::io::Error::other("client went away"));
        let first = tee.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "part");
        assert!(
            tee.frame().await.unwrap().is_err(),
            "the error reaches the primary"
        );
        assert!(matches!(*seen.lock().unwrap(), Some(Captured::Incomplete)));

        let (mirror, seen) = recording_pending(1 << 20);
        let (mut tx, body) = Channel::<Bytes, std::io::Error>::new(4);
        let mut tee = TeeBody::new(body, Some(mirror));
        tx.send_data(Bytes::from_static(b"part")).await.unwrap();
        let _ = tee.frame().await;
        drop(tee);
        assert!(
            matches!(*seen.lock().unwrap(), Some(Captured::Incomplete)),
            "dropped unfinished"
        );
    }

    /// A body of known length whose end-of-stream signal has not arrived yet.
    struct Sized(Option<Bytes>, u64);

    impl Body for Sized {
        type Data = Bytes;
        type Error = std::io::Error;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
            Poll::Ready(self.0.take().map(|b| Ok(Frame::data(b))))
        }
        fn is_end_stream(&self) -> bool {
            false
        }
        fn size_hint(&self) -> SizeHint {
            SizeHint::with_exact(self.1)
        }
    }

    #[tokio::test]
    async fn the_declared_length_completes_the_body_even_before_end_of_stream() {
        let (mirror, seen) = recording_pending(1 << 20);
        let mut tee = TeeBody::new(Sized(Some(Bytes::from_static(b"12345")), 5), Some(mirror));
        assert!(tee.frame().await.unwrap().unwrap().is_data());
        // An HTTP/1 client that framed by length stops here and drops the body.
        drop(tee);
        assert!(matches!(
            *seen.lock().unwrap(),
            Some(Captured::Complete { len: 5, .. })
        ));
    }

    #[tokio::test]
    async fn trailers_end_the_body_even_if_it_is_dropped_right_after() {
        let (mirror, seen) = recording_pending(1 << 20);
        let (mut tx, body) = Channel::<Bytes, std::io::Error>::new(4);
        let mut tee = TeeBody::new(body, Some(mirror));
        let mut t = HeaderMap::new();
        t.insert("x-sum", "1".parse().unwrap());
        tx.send_data(Bytes::from_static(b"d")).await.unwrap();
        tx.send_trailers(t).await.unwrap();
        assert!(tee.frame().await.unwrap().unwrap().is_data());
        assert!(tee.frame().await.unwrap().unwrap().is_trailers());
        drop(tee);
        assert!(matches!(
            *seen.lock().unwrap(),
            Some(Captured::Complete { len: 1, .. })
        ));
    }

    #[tokio::test]
    async fn an_empty_body_is_complete_at_once_and_trailers_are_kept() {
        let (mirror, seen) = recording_pending(1 << 20);
        let _tee = TeeBody::new(http_body_util::Empty::<Bytes>::new(), Some(mirror));
        assert!(matches!(
            *seen.lock().unwrap(),
            Some(Captured::Complete { len: 0, .. })
        ));

        let (mirror, seen) = recording_pending(1 << 20);
        let (mut tx, body) = Channel::<Bytes, std::io::Error>::new(4);
        let tee = TeeBody::new(body, Some(mirror));
        tokio::spawn(async move {
            tx.send_data(Bytes::from_static(b"x")).await.unwrap();
            let mut t = HeaderMap::new();
            t.insert("x-checksum", "abc".parse().unwrap());
            tx.send_trailers(t).await.unwrap();
        });
        let collected = tee.collect().await.unwrap();
        assert_eq!(collected.trailers().unwrap()["x-checksum"], "abc");
        let captured = seen.lock().unwrap().take().unwrap();
        let Captured::Complete { trailers, .. } = captured else {
            panic!()
        };
        assert_eq!(trailers.unwrap()["x-checksum"], "abc");
    }
}
