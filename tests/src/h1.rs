//! Raw HTTP/1.1 on a `TcpStream`: write exact bytes, read what comes back, parse it.
//! Every suite uses these instead of its own reader: `exchange` (write, read until the
//! server closes), `read_response`/`expect_response` (one response off a kept-alive connection),
//! `read_head`, `read_until`, `read_all`, `get` (a GET with `Connection: close`, the body
//! de-chunked) and the parser `parse_responses`.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What came back on one raw connection.
#[derive(Debug)]
pub struct Exchange {
    pub bytes: Vec<u8>,
    /// The proxy closed the connection (within the read limit).
    pub closed: bool,
}

impl Exchange {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
    /// The first response's status (0 when there is none).
    pub fn status(&self) -> u16 {
        status(&self.text())
    }
    pub fn responses(&self) -> Vec<RawResponse> {
        parse_responses(&self.bytes)
    }
}

/// Writes `request` on a new connection (write errors are ignored: the proxy may close
/// early) and reads until the proxy closes, up to 5 s.
pub async fn exchange(addr: SocketAddr, request: &[u8]) -> Exchange {
    let mut s = TcpStream::connect(addr)
        .await
        .expect("connect to the proxy");
    let _ = s.write_all(request).await;
    read_all(&mut s, Duration::from_secs(5)).await
}

/// Reads until EOF (or a reset) or `limit`.
pub async fn read_all(s: &mut TcpStream, limit: Duration) -> Exchange {
    let mut bytes = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = tokio::time::Instant::now() + limit;
    let closed = loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => bytes.extend_from_slice(&buf[..n]),
            Err(_) => break false,
        }
    };
    Exchange { bytes, closed }
}

/// Reads from `s` until `needle` has been seen (or 5 s pass); returns what was read.
pub async fn read_until(s: &mut TcpStream, needle: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !out.windows(needle.len()).any(|w| w == needle) {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => out.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    out
}

/// One HTTP/1.1 response parsed from raw bytes.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    /// Names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub trailers: Vec<(String, String)>,
    /// The body ended as its framing says (false: the bytes ran out first).
    pub complete: bool,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// The responses in `bytes`, in order (interim 1xx answers included). Bodies framed by
/// `Content-Length` or chunked; otherwise delimited by the end of the bytes. Responses
/// to HEAD are not supported.
pub fn parse_responses(mut bytes: &[u8]) -> Vec<RawResponse> {
    let mut out = Vec::new();
    while let Some(end) = find(bytes, b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&bytes[..end]).into_owned();
        bytes = &bytes[end + 4..];
        let mut lines = head.split("\r\n");
        let status: u16 = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let get = |n: &str| headers.iter().find(|(h, _)| h == n).map(|(_, v)| v.clone());
        let mut r = RawResponse {
            status,
            headers: headers.clone(),
            body: Vec::new(),
            trailers: Vec::new(),
            complete: true,
        };
        if (100..200).contains(&status) || status == 204 || status == 304 {
        } else if get("transfer-encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
            let (body, trailers, used, complete) = dechunk(bytes);
            r.body = body;
            r.trailers = trailers;
            r.complete = complete;
            bytes = &bytes[used..];
        } else if let Some(len) = get("content-length").and_then(|v| v.parse::<usize>().ok()) {
            let n = len.min(bytes.len());
            r.body = bytes[..n].to_vec();
            r.complete = n == len;
            bytes = &bytes[n..];
        } else {
            r.body = bytes.to_vec();
            bytes = &[];
        }
        out.push(r);
    }
    out
}

/// Decodes a chunked body: (body, trailers, bytes used, whether the last chunk and the
/// final CRLF arrived).
fn dechunk(bytes: &[u8]) -> (Vec<u8>, Vec<(String, String)>, usize, bool) {
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let Some(eol) = find(&bytes[at..], b"\r\n") else {
            return (body, Vec::new(), bytes.len(), false);
        };
        let line = String::from_utf8_lossy(&bytes[at..at + eol]).into_owned();
        let size_text = line.split(';').next().unwrap_or("").trim();
        let Ok(size) = usize::from_str_radix(size_text, 16) else {
            return (body, Vec::new(), bytes.len(), false);
        };
        at += eol + 2;
        if size == 0 {
            if bytes[at..].starts_with(b"\r\n") {
                return (body, Vec::new(), at + 2, true);
            }
            let Some(end) = find(&bytes[at..], b"\r\n\r\n") else {
                return (body, Vec::new(), bytes.len(), false);
            };
            let trailers = String::from_utf8_lossy(&bytes[at..at + end])
                .split("\r\n")
                .filter_map(|l| l.split_once(':'))
                .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
                .collect();
            return (body, trailers, at + end + 4, true);
        }
        if bytes.len() < at + size + 2 {
            body.extend_from_slice(&bytes[at..bytes.len().min(at + size)]);
            return (body, Vec::new(), bytes.len(), false);
        }
        body.extend_from_slice(&bytes[at..at + size]);
        at += size + 2;
    }
}

/// Where `needle` first occurs in `hay`.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The status code of the first response in raw HTTP/1 text (0 when none).
pub fn status(text: &str) -> u16 {
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Writes raw bytes on a new connection and reads until the server closes (or 5 s pass):
/// the text read. (`exchange` keeps the bytes and whether the server closed.)
pub async fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(bytes).await.expect("write");
    read_all(&mut s, Duration::from_secs(5)).await.text()
}

/// Reads until EOF or `limit`; returns the text and whether EOF was seen.
pub async fn read_until_close(s: &mut TcpStream, limit: Duration) -> (String, bool) {
    let ex = read_all(s, limit).await;
    (ex.text(), ex.closed)
}

/// Whether `bytes` hold one whole final response (after any 1xx): framed by
/// `Content-Length` or chunked and complete, or a 204/304.
pub fn has_whole_response(bytes: &[u8]) -> bool {
    parse_responses(bytes).iter().any(|r| {
        r.status >= 200
            && r.complete
            && (r.status == 204
                || r.status == 304
                || r.header("content-length").is_some()
                || r.header("transfer-encoding")
                    .is_some_and(|t| t.eq_ignore_ascii_case("chunked")))
    })
}

/// Reads until `has_whole_response`. Returns every byte read; stops early (the response
/// then incomplete, or nothing) when the connection ends or `limit` passes.
pub async fn read_response(s: &mut TcpStream, limit: Duration) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let deadline = tokio::time::Instant::now() + limit;
    while !has_whole_response(&out) {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => out.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    out
}

/// `read_response` that panics unless a whole response arrives within 5 s: its text.
pub async fn expect_response(s: &mut TcpStream) -> String {
    let bytes = read_response(s, Duration::from_secs(5)).await;
    let text = String::from_utf8_lossy(&bytes).into_owned();
    assert!(
        has_whole_response(&bytes),
        "no whole response within 5 s (or the connection closed): {text:?}"
    );
    text
}

/// Reads one response head (up to and including the empty line), byte by byte so nothing
/// after it is consumed. Panics when the connection ends or 5 s pass first.
pub async fn read_head(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut b = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b))
            .await
            .expect("a response head in time")
            .expect("read");
        assert!(
            n == 1,
            "closed before a full head: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.push(b[0]);
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// A GET over a fresh HTTP/1.1 connection (`Connection: close`): `(status, body)` of the
/// final response, the body de-chunked, or `None` when the server does not close within
/// `limit` or sends no response.
pub async fn get(addr: SocketAddr, path: &str, limit: Duration) -> Option<(u16, String)> {
    let exchange = async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .ok()?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.ok()?;
        let r = parse_responses(&out)
            .into_iter()
            .find(|r| r.status >= 200)?;
        Some((r.status, r.body_text()))
    };
    tokio::time::timeout(limit, exchange).await.ok().flatten()
}
