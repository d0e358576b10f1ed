//! The connection's read side as hyper sees it: the bytes read while detecting the
//! protocol are replayed first, and on HTTP/1 connections a framing tracker follows every
//! request head and body through the byte stream.
//!
//! hyper accepts a request with both `Content-Length` and `Transfer-Encoding` (it drops the
//! length and closes afterwards), and the request it hands over no longer shows that both
//! were sent. RFC 9112 6.3 lets a server reject such a request, and a proxy should: it is
//! the shape of a smuggling attempt. The tracker spots the head as it streams past and
//! turns its final line feed into a NUL byte, so hyper's own parser fails the head and
//! answers 400 and closes the connection. Nothing of that request reaches an upstream.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes};
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::clock::ConnClock;

pin_project! {
    /// A stream with a replayed prefix, an optional HTTP/1 framing tracker, and a write
    /// time limit: a write that cannot make progress for `write_timeout` (a client that
    /// stopped reading) fails the connection.
    pub(crate) struct GuardedIo<S> {
        prefix: Bytes,
        tracker: Option<H1Tracker>,
        write: WriteLimit,
        #[pin]
        inner: S,
    }
}

/// The response write time limit; its timer exists only once a write has blocked.
struct WriteLimit {
    timeout: Duration,
    blocked: bool,
    sleep: Option<Pin<Box<Sleep>>>,
    clock: Option<Arc<ConnClock>>,
}

impl WriteLimit {
    /// Passes on the result of a write attempt; a pending one starts (or keeps) the
    /// timer, which fails the write when it runs out.
    fn check<T>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if r.is_ready() {
            self.blocked = false;
            return r;
        }
        let deadline = Instant::now() + self.timeout;
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if !self.blocked {
            self.blocked = true;
            sleep.as_mut().reset(deadline);
        }
        if sleep.as_mut().poll(cx).is_ready() {
            if let Some(c) = &self.clock {
                c.write_timed_out.store(true, Ordering::Relaxed);
            }
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client did not read the response in time",
            )));
        }
        Poll::Pending
    }
}

impl<S> GuardedIo<S> {
    pub(crate) fn new(
        inner: S,
        prefix: Bytes,
        tracker: Option<H1Tracker>,
        write_timeout: Duration,
        clock: Option<Arc<ConnClock>>,
    ) -> Self {
        GuardedIo {
            prefix,
            tracker,
            write: WriteLimit {
                timeout: write_timeout,
                blocked: false,
                sleep: None,
                clock,
            },
            inner,
        }
    }
}

impl<S: AsyncRead> AsyncRead for GuardedIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
        } else {
            ready!(this.inner.poll_read(cx, buf))?;
        }
        if let Some(t) = this.tracker {
            t.feed(&mut buf.filled_mut()[before..]);
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite> AsyncWrite for GuardedIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let r = this.inner.poll_write(cx, buf);
        this.write.check(cx, r)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let r = this.inner.poll_write_vectored(cx, bufs);
        this.write.check(cx, r)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        let r = this.inner.poll_flush(cx);
        this.write.check(cx, r)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading a request head into `line`.
    Head,
    /// Skipping a body of known length.
    Body(u64),
    /// Reading a chunk-size line into `line`.
    ChunkSize,
    /// Skipping chunk data.
    ChunkData(u64),
    /// Reading the line end after chunk data.
    ChunkEnd,
    /// Reading trailer lines until an empty one.
    Trailers,
    /// Not tracking any more: the stream is past what the tracker understands (hyper
    /// rejects such input itself) or the connection is being refused.
    Off,
}

/// Follows HTTP/1 request framing through the bytes a server reads.
#[cfg_attr(not(feature = "testing"), allow(unreachable_pub))]
pub struct H1Tracker {
    state: State,
    line: Vec<u8>,
    max_head: usize,
    max_headers: usize,
    /// Heads refused because they carried both `Content-Length` and `Transfer-Encoding`.
    #[cfg_attr(not(feature = "testing"), allow(unreachable_pub))]
    pub refused: u64,
    /// Told when heads start and complete, for the head time limit.
    clock: Option<Arc<ConnClock>>,
}

const MAX_LINE: usize = 8 * 1024;

impl H1Tracker {
    #[cfg_attr(not(feature = "testing"), allow(unreachable_pub))]
    pub fn new(max_head: usize, max_headers: usize) -> Self {
        H1Tracker {
            state: State::Head,
            line: Vec::new(),
            max_head,
            max_headers,
            refused: 0,
            clock: None,
        }
    }

    /// Reports head starts and ends to `clock`.
    #[cfg_attr(not(feature = "testing"), allow(unreachable_pub))]
    pub fn with_clock(mut self, clock: Arc<ConnClock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Feeds bytes in stream order; may change one byte to make hyper refuse the head.
    #[cfg_attr(not(feature = "testing"), allow(unreachable_pub))]
    pub fn feed(&mut self, data: &mut [u8]) {
        let mut i = 0;
        while i < data.len() {
            match self.state {
                State::Off => return,
                State::Body(n) | State::ChunkData(n) => {
                    let take = n.min((data.len() - i) as u64);
                    i += take as usize;
                    let left = n - take;
                    self.state = match (self.state, left) {
                        (State::Body(_), 0) => State::Head,
                        (State::Body(_), _) => State::Body(left),
                        (_, 0) => State::ChunkEnd,
                        (_, _) => State::ChunkData(left),
                    };
                }
                State::Head if self.line.is_empty() => {
                    // A head that starts here: when it also ends within these bytes (the
                    // common case), it is parsed where it lies, with no copy.
                    while i < data.len() && (data[i] == b'\r' || data[i] == b'\n') {
                        i += 1;
                    }
                    if i == data.len() {
                        return;
                    }
                    if let Some(c) = &self.clock {
                        c.head_started();
                    }
                    let limit = data.len().min(i + self.max_head + MAX_LINE);
                    let Some(end) = head_end(&data[i..limit]) else {
                        self.line.push(data[i]);
                        i += 1;
                        continue;
                    };
                    let next = parse_head(&data[i..i + end], self.max_headers);
                    i += end;
                    if self.head_parsed(next) {
                        data[i - 1] = 0;
                        self.refused += 1;
                        self.off();
                    }
                }
                State::Head => {
                    let b = data[i];
                    i += 1;
                    if self.line.is_empty() && (b == b'\r' || b == b'\n') {
                        continue;
                    }
                    if self.line.is_empty()
                        && let Some(c) = &self.clock
                    {
                        c.head_started();
                    }
                    self.line.push(b);
                    if self.line.len() > self.max_head + MAX_LINE {
                        self.off();
                    } else if b == b'\n'
                        && (self.line.ends_with(b"\r\n\r\n") || self.line.ends_with(b"\n\n"))
                        && self.head_complete()
                    {
                        data[i - 1] = 0;
                        self.refused += 1;
                        self.off();
                    }
                }
                State::ChunkSize | State::ChunkEnd | State::Trailers => {
                    let b = data[i];
                    i += 1;
                    self.line.push(b);
                    if self.line.len() > MAX_LINE {
                        self.off();
                    } else if b == b'\n' {
                        self.line_complete();
                    }
                }
            }
        }
    }

    fn off(&mut self) {
        self.state = State::Off;
        self.line = Vec::new();
        if let Some(c) = &self.clock {
            c.untracked();
        }
    }

    /// Parses the head in `line`; sets the next state. True when the head must be refused.
    fn head_complete(&mut self) -> bool {
        let next = parse_head(&self.line, self.max_headers);
        self.line.clear();
        self.head_parsed(next)
    }

    /// Moves on after a head: `None` when it must be refused (true), else its next state.
    fn head_parsed(&mut self, next: Option<State>) -> bool {
        let Some(next) = next else {
            return true;
        };
        self.state = next;
        if let Some(c) = &self.clock {
            c.head_done();
        }
        if next == State::Off {
            self.off();
        }
        false
    }

    fn line_complete(&mut self) {
        let line = self.line.strip_suffix(b"\n").unwrap_or(&self.line);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        self.state = match self.state {
            State::ChunkSize => {
                let hex_len = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
                match std::str::from_utf8(&line[..hex_len])
                    .ok()
                    .and_then(|h| u64::from_str_radix(h, 16).ok())
                {
                    None => State::Off,
                    Some(0) => State::Trailers,
                    Some(n) => State::ChunkData(n),
                }
            }
            State::ChunkEnd => State::ChunkSize,
            State::Trailers if line.is_empty() => State::Head,
            other => other,
        };
        self.line.clear();
        if self.state == State::Off {
            self.off();
        }
    }
}

/// Headers parsed on the stack; a larger `max_headers` uses the heap.
const STACK_HEADERS: usize = 128;

/// Where a head ends in `buf` (just past its empty line), if it does.
fn head_end(buf: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(at) = buf[from..].iter().position(|&b| b == b'\n') {
        let end = from + at + 1;
        let line = &buf[..end];
        if line.ends_with(b"\r\n\r\n") || line.ends_with(b"\n\n") {
            return Some(end);
        }
        from = end;
    }
    None
}

/// The state after the head `buf`: `None` when it must be refused (both
/// `Content-Length` and `Transfer-Encoding`).
fn parse_head(buf: &[u8], max_headers: usize) -> Option<State> {
    let mut stack = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; STACK_HEADERS];
    let mut heap = Vec::new();
    let slots: &mut [MaybeUninit<httparse::Header<'_>>] = if max_headers <= STACK_HEADERS {
        &mut stack[..max_headers]
    } else {
        heap.resize_with(max_headers, MaybeUninit::uninit);
        &mut heap
    };
    let mut req = httparse::Request::new(&mut []);
    Some(match req.parse_with_uninit_headers(buf, slots) {
        Ok(httparse::Status::Complete(_)) => {
            let mut cl: Option<Option<u64>> = None;
            let mut te_chunked = None;
            // After an upgrade request the stream may carry another protocol: stop
            // following it (the handler closes the connection unless it upgrades).
            let mut upgrade = false;
            for h in req.headers.iter() {
                if h.name.eq_ignore_ascii_case("upgrade")
                    && !h.value.trim_ascii().eq_ignore_ascii_case(b"h2c")
                {
                    upgrade = true;
                }
                if h.name.eq_ignore_ascii_case("content-length") {
                    cl = Some(
                        std::str::from_utf8(h.value)
                            .ok()
                            .and_then(|v| v.trim().parse().ok()),
                    );
                } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                    let v = h.value.trim_ascii();
                    te_chunked =
                        Some(v.len() >= 7 && v[v.len() - 7..].eq_ignore_ascii_case(b"chunked"));
                }
            }
            if cl.is_some() && te_chunked.is_some() {
                return None;
            }
            match (req.method, te_chunked, cl) {
                _ if upgrade => State::Off,
                (Some("CONNECT"), _, _) => State::Off,
                (_, Some(true), _) => State::ChunkSize,
                (_, Some(false), _) | (_, _, Some(None)) => State::Off,
                (_, None, Some(Some(0))) | (_, None, None) => State::Head,
                (_, None, Some(Some(n))) => State::Body(n),
            }
        }
        _ => State::Off,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in pieces of `step` bytes; returns the bytes as hyper would see them.
    fn run(input: &[u8], step: usize) -> (Vec<u8>, H1Tracker) {
        let mut t = H1Tracker::new(64 * 1024, 100);
        let mut out = input.to_vec();
        for chunk in out.chunks_mut(step) {
            t.feed(chunk);
        }
        (out, t)
    }

    const SMUGGLE: &[u8] = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";

    #[test]
    fn cl_and_te_head_is_poisoned_at_its_last_byte() {
        for step in [1, 3, 7, SMUGGLE.len()] {
            let (out, t) = run(SMUGGLE, step);
            assert_eq!(t.refused, 1, "step {step}");
            let end = SMUGGLE.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 3;
            assert_eq!(out[end], 0);
            let mut changed = out.iter().zip(SMUGGLE).filter(|(a, b)| a != b).count();
            changed -= 1;
            assert_eq!(changed, 0, "only one byte changes");
            let mut headers = [httparse::EMPTY_HEADER; 16];
            assert!(
                httparse::Request::new(&mut headers).parse(&out).is_err(),
                "hyper's parser must fail the head"
            );
        }
    }

    #[test]
    fn te_before_cl_is_caught_too() {
        let input = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nHost: a\r\ncontent-length: 3\r\n\r\n";
        assert_eq!(run(input, 5).1.refused, 1);
    }

    #[test]
    fn pipelined_requests_are_followed_through_bodies() {
        let mut input = Vec::new();
        input.extend_from_slice(b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 30\r\n\r\n");
        // A body that looks like a smuggled head must not be read as one.
        input.extend_from_slice(b"X\r\nContent-Length: 1\r\nTransfer");
        input.extend_from_slice(
            b"POST /b HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
        );
        input.extend_from_slice(
            b"5;ext=1\r\nhello\r\n10\r\n0123456789abcdef\r\n0\r\nx-trailer: 1\r\n\r\n",
        );
        input.extend_from_slice(b"GET /c HTTP/1.1\r\nHost: a\r\n\r\n");
        for step in [1, 2, 5, 64, input.len()] {
            let (out, t) = run(&input, step);
            assert_eq!(out, input, "clean requests pass untouched (step {step})");
            assert_eq!(t.refused, 0);
            assert_eq!(t.state, State::Head);
        }
        let mut with_smuggle = input.clone();
        with_smuggle.extend_from_slice(SMUGGLE);
        for step in [4, with_smuggle.len()] {
            assert_eq!(
                run(&with_smuggle, step).1.refused,
                1,
                "a bad head after good ones is still caught (step {step})"
            );
        }
    }

    #[test]
    fn heads_parse_alike_on_the_stack_and_the_heap_and_chunked_in_any_case() {
        let input = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, ChUnKeD\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET / HTTP/1.1\r\n\r\n";
        for max_headers in [100, STACK_HEADERS + 1] {
            for step in [3, input.len()] {
                let mut t = H1Tracker::new(64 * 1024, max_headers);
                let mut out = input.to_vec();
                for chunk in out.chunks_mut(step) {
                    t.feed(chunk);
                }
                assert_eq!(
                    (t.state, t.refused),
                    (State::Head, 0),
                    "{max_headers} {step}"
                );
            }
        }
        let too_many = H1Tracker::new(64 * 1024, 1);
        let mut t = too_many;
        let mut out = input.to_vec();
        t.feed(&mut out);
        assert_eq!(
            t.state,
            State::Off,
            "more headers than allowed: hyper refuses it"
        );
    }

    #[test]
    fn unknown_input_turns_tracking_off() {
        let (out, t) = run(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 4);
        assert_eq!(t.state, State::Off);
        assert_eq!(&out[..], b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        let (_, t) = run(
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: x\r\n\r\n",
            4,
        );
        assert_eq!(t.state, State::Off);
    }
}
