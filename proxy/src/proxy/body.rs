//! The bodies of the primary leg. On the way in: the client's body (from hyper, or any
//! body in tests), under the body inactivity limit, teed for the shadows. On the way out:
//! the primary's response body, whose frames pass straight through while the end of the
//! body is timed for the path's statistics and, when a shadow compares bodies, the chunks
//! are kept as `Bytes` clones (up to `compare.max_body`) for the comparison, and the
//! access-log line (when the log is on) counts the bytes and is written at the end. The
//! client never waits for any of it.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::sync::watch;

use super::access::AccessLine;
use crate::idle::{BoxError, IdleTimeout};
use crate::shadow::compare::BodySide;
use crate::shadow::tee::TeeBody;
use crate::stats::PathEntry;
use crate::upstream::EmptyBody;

/// A client's request body as the handler forwards it: hyper's, or any other body (boxed;
/// for requests built in memory).
pub type ClientBody = http_body_util::Either<
    hyper::body::Incoming,
    http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>,
>;

/// The body sent to the primary: the client's, teed for the shadows; or nothing, for a
/// request without a body resent to another endpoint after a refused connection.
pub(crate) type PrimaryBody =
    http_body_util::Either<TeeBody<IdleTimeout<ClientBody>>, http_body_util::Empty<Bytes>>;

impl EmptyBody for PrimaryBody {
    fn empty() -> Self {
        http_body_util::Either::Right(http_body_util::Empty::new())
    }
}

/// A request body `Proxy::handle` takes.
pub trait RequestBody: Body<Data = Bytes> + Send + Unpin + 'static {
    fn into_client_body(self) -> ClientBody;
}

impl RequestBody for hyper::body::Incoming {
    fn into_client_body(self) -> ClientBody {
        http_body_util::Either::Left(self)
    }
}

impl RequestBody for http_body_util::Full<Bytes> {
    fn into_client_body(self) -> ClientBody {
        use http_body_util::BodyExt;
        http_body_util::Either::Right(self.map_err(|never| match never {}).boxed_unsync())
    }
}

impl RequestBody for http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError> {
    fn into_client_body(self) -> ClientBody {
        http_body_util::Either::Right(self)
    }
}

/// A gRPC call's primary answer: its status counted, its trailers handed to the shadows'
/// comparison, at the end of the body.
pub(crate) struct GrpcEnd {
    pub(crate) counter: crate::metrics::GrpcStatusCounter,
    /// The status in the response head (a trailers-only answer).
    pub(crate) head_status: Option<u8>,
    pub(crate) trailers: Option<watch::Sender<Option<Arc<http::HeaderMap>>>>,
}

impl GrpcEnd {
    fn finish(self, trailers: Option<&http::HeaderMap>) {
        if let Some(code) = trailers
            .and_then(|t| crate::http::grpc::status(&http::HeaderMap::new(), Some(t)))
            .or(self.head_status)
        {
            self.counter.count(code);
        }
        if let Some(tx) = self.trailers {
            tx.send_replace(Some(Arc::new(trailers.cloned().unwrap_or_default())));
        }
    }
}

struct Keep {
    sink: watch::Sender<Option<Arc<BodySide>>>,
    chunks: Vec<Bytes>,
    len: usize,
    max: usize,
}

impl Keep {
    fn finish(self, complete: bool) {
        // The chunks are handed over as they are: joining them is the comparison's work,
        // done in the shadow task, not on the client's connection.
        let side = if !complete {
            BodySide::Incomplete
        } else if self.len > self.max {
            BodySide::TooLarge
        } else {
            BodySide::Parts(self.chunks)
        };
        self.sink.send_replace(Some(Arc::new(side)));
    }
}

pin_project! {
    /// A response body that times its end and can keep a copy for comparison.
    pub struct ResponseTee<B> {
        #[pin]
        inner: B,
        sent: Instant,
        path: Option<Arc<PathEntry>>,
        keep: Option<Keep>,
        // The request's access-log line, written at the end of the body (only when the
        // access log is on).
        log: Option<Box<AccessLine>>,
        // The body has ended (or broken off).
        done: bool,
        // A gRPC call's end, when it is one.
        grpc: Option<GrpcEnd>,
    }

    impl<B> PinnedDrop for ResponseTee<B> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(k) = this.keep.take() {
                k.finish(false);
            }
            // The client left (or the connection closed) before the end of the body.
            if let Some(line) = this.log.take() {
                line.write(false);
            }
        }
    }
}

impl<B: Body<Data = Bytes>> ResponseTee<B> {
    /// `sent` is when the request went to the primary; `sink` receives the body (up to
    /// `max` bytes) for comparisons.
    pub(crate) fn new(
        inner: B,
        sent: Instant,
        path: Arc<PathEntry>,
        sink: Option<crate::shadow::queue::PrimaryBodySink>,
    ) -> Self {
        let keep = sink.map(|(sink, max)| Keep {
            sink,
            chunks: Vec::new(),
            len: 0,
            max,
        });
        let mut tee = ResponseTee {
            inner,
            sent,
            path: Some(path),
            keep,
            log: None,
            done: false,
            grpc: None,
        };
        if tee.inner.is_end_stream() {
            tee.done = true;
            if let Some(p) = tee.path.take() {
                p.primary_end(tee.sent.elapsed());
            }
            if let Some(k) = tee.keep.take() {
                k.finish(true);
            }
        }
        tee
    }

    /// Counts a gRPC call's status and hands its trailers over at the end of the body.
    pub(crate) fn grpc_at_end(&mut self, end: GrpcEnd) {
        if self.done {
            end.finish(None);
        } else {
            self.grpc = Some(end);
        }
    }

    /// Writes `line` at the end of the body (now, if it has ended already).
    pub(crate) fn log_at_end(&mut self, line: Box<AccessLine>) {
        if self.done {
            line.write(true);
        } else {
            self.log = Some(line);
        }
    }
}

impl<B: Body<Data = Bytes>> Body for ResponseTee<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let mut this = self.project();
        let frame = ready!(this.inner.as_mut().poll_frame(cx));
        let ended = match &frame {
            Some(Ok(f)) => {
                if let (Some(line), Some(d)) = (this.log.as_mut(), f.data_ref()) {
                    line.bytes_sent += d.len() as u64;
                }
                if let (Some(g), Some(t)) =
                    (this.grpc.take_if(|_| f.is_trailers()), f.trailers_ref())
                {
                    g.finish(Some(t));
                }
                if let (Some(k), Some(d)) = (this.keep.as_mut(), f.data_ref()) {
                    k.len += d.len();
                    if k.len <= k.max {
                        k.chunks.push(d.clone());
                    } else {
                        k.chunks = Vec::new();
                    }
                }
                f.is_trailers() || this.inner.is_end_stream()
            }
            Some(Err(_)) => {
                // Broken off: no end time, and the comparison learns it is incomplete.
                this.path.take();
                if let Some(k) = this.keep.take() {
                    k.finish(false);
                }
                *this.done = true;
                if let Some(line) = this.log.take() {
                    line.write(false);
                }
                false
            }
            None => true,
        };
        if ended {
            *this.done = true;
            if let Some(line) = this.log.take() {
                line.write(true);
            }
            if let Some(p) = this.path.take() {
                p.primary_end(this.sent.elapsed());
            }
            if let Some(k) = this.keep.take() {
                k.finish(true);
            }
            if let Some(g) = this.grpc.take() {
                g.finish(None);
            }
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
