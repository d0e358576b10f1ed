//! Raw HTTP/2 frames for tests that must send what no client library would: a frame
//! encoder, a frame parser (`parse_frames`, also used by the fuzz harness), a minimal
//! HPACK writer (literals, no Huffman), a connection that has sent its preface
//! (`connect`) and a reader that takes whole frames off a socket (`read_frames`).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
pub const DATA: u8 = 0;
pub const HEADERS: u8 = 1;
pub const RST_STREAM: u8 = 3;
pub const SETTINGS: u8 = 4;
pub const PING: u8 = 6;
pub const GOAWAY: u8 = 7;
pub const CONTINUATION: u8 = 9;
pub const END_STREAM: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;
pub const PADDED: u8 = 0x8;
pub const CANCEL: u32 = 0x8;

/// One frame as read off the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    /// The stream id (reserved bit cleared).
    pub stream: u32,
    pub payload: Vec<u8>,
}

impl Frame {
    pub fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }
}

/// The bytes of one frame.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// The whole frames at the start of `bytes` (after any preface), exactly as RFC 9113
/// lays them out, and how many bytes they took: a frame cut off by the end of `bytes` is
/// not returned.
pub fn parse_frames(bytes: &[u8]) -> (Vec<Frame>, usize) {
    let mut frames = Vec::new();
    let mut i = 0;
    while let Some(head) = bytes.get(i..i + 9) {
        let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
        let Some(payload) = bytes.get(i + 9..i + 9 + len) else {
            break;
        };
        frames.push(Frame {
            kind: head[3],
            flags: head[4],
            stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
            payload: payload.to_vec(),
        });
        i += 9 + len;
    }
    (frames, i)
}

/// An HPACK string or integer length with a 7-bit prefix (no Huffman).
pub fn hpack_len(out: &mut Vec<u8>, mut n: usize) {
    if n < 127 {
        out.push(n as u8);
        return;
    }
    out.push(127);
    n -= 127;
    while n >= 128 {
        out.push((n % 128 + 128) as u8);
        n /= 128;
    }
    out.push(n as u8);
}

/// A literal header field without indexing, new name.
pub fn literal(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.push(0);
    hpack_len(out, name.len());
    out.extend_from_slice(name.as_bytes());
    hpack_len(out, value.len());
    out.extend_from_slice(value);
}

/// `GET path` (`:method GET`, `:scheme http` from the static table) plus `extra`.
pub fn request_block(path: &str, extra: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = vec![0x82, 0x86];
    b.push(0x04); // :path, literal without indexing, indexed name 4
    hpack_len(&mut b, path.len());
    b.extend_from_slice(path.as_bytes());
    b.push(0x01); // :authority, indexed name 1
    hpack_len(&mut b, 1);
    b.push(b'a');
    for (n, v) in extra {
        literal(&mut b, n, v);
    }
    b
}

/// A connection that has sent the preface and its SETTINGS (`settings` pairs).
pub async fn connect(addr: SocketAddr, settings: &[(u16, u32)]) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let mut payload = Vec::new();
    for (id, v) in settings {
        payload.extend_from_slice(&id.to_be_bytes());
        payload.extend_from_slice(&v.to_be_bytes());
    }
    let mut hello = PREFACE.to_vec();
    hello.extend(frame(SETTINGS, 0, 0, &payload));
    s.write_all(&hello).await.expect("preface");
    s
}

/// Frames read until EOF or `limit`, and whether EOF came. Only whole frames are taken
/// off the socket (the wait for `limit` happens before a frame starts), so calling it
/// again in a loop never loses part of a frame.
pub async fn read_frames(s: &mut TcpStream, limit: Duration) -> (Vec<Frame>, bool) {
    let mut frames = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    let eof = loop {
        let mut probe = [0u8; 1];
        match tokio::time::timeout_at(deadline, s.peek(&mut probe)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(_)) => {}
            Err(_) => break false,
        }
        let whole = async {
            let mut head = [0u8; 9];
            s.read_exact(&mut head).await?;
            let len =
                (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
            let mut bytes = head.to_vec();
            bytes.resize(9 + len, 0);
            s.read_exact(&mut bytes[9..]).await?;
            Ok::<_, std::io::Error>(parse_frames(&bytes).0.remove(0))
        };
        match tokio::time::timeout(Duration::from_secs(5), whole).await {
            Ok(Ok(f)) => frames.push(f),
            Ok(Err(_)) => break true,
            Err(_) => panic!("a frame started and never finished"),
        }
    };
    (frames, eof)
}

/// The error code of the first GOAWAY among `frames`.
pub fn goaway_code(frames: &[Frame]) -> Option<u32> {
    frames
        .iter()
        .find(|f| f.kind == GOAWAY)
        .map(|f| u32::from_be_bytes([f.payload[4], f.payload[5], f.payload[6], f.payload[7]]))
}
