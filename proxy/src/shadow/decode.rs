//! `Content-Encoding` undone for comparison only: gzip (also several members), deflate (zlib,
//! or raw as some servers send it), br, and stacks of them (`gzip, br` is undone br first).
//! The decoded size is bounded like the encoded one: a body that would grow past the limit
//! stops there (a decompression bomb costs at most `limit` bytes). Pure: bytes in, bytes out.

use std::io::Read;

use bytes::Bytes;
use http::HeaderMap;
use http::header::CONTENT_ENCODING;

/// A body with its content codings undone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decoded {
    /// The decoded bytes (the body itself when it had no coding).
    Body(Bytes),
    /// Decoding would pass the limit.
    TooLarge,
    /// The bytes are not what the coding says (`gzip`: and the error).
    Error(String),
    /// A coding this build does not decode (`zstd`, `compress`, ...).
    Unknown(String),
}

/// The body's codings in the order they were applied, `identity` left out; lowercase.
pub(crate) fn codings(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(CONTENT_ENCODING)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("(invalid)").split(','))
        .map(|c| c.trim().to_ascii_lowercase())
        .filter(|c| !c.is_empty() && c != "identity")
        .collect()
}

/// `body` with the codings of `headers` undone, at most `limit` bytes of it.
pub(crate) fn decode(headers: &HeaderMap, body: Bytes, limit: usize) -> Decoded {
    let codings = codings(headers);
    if codings.is_empty() || body.is_empty() {
        // HEAD, 204 and 304 answers carry the coding of a body they do not send.
        return Decoded::Body(body);
    }
    let mut body = body;
    for coding in codings.iter().rev() {
        body = match decode_one(coding, &body, limit) {
            Decoded::Body(b) => b,
            other => return other,
        };
    }
    Decoded::Body(body)
}

fn decode_one(coding: &str, body: &[u8], limit: usize) -> Decoded {
    match coding {
        "gzip" | "x-gzip" => read_bounded(flate2::read::MultiGzDecoder::new(body), coding, limit),
        "deflate" if is_zlib(body) => {
            read_bounded(flate2::read::ZlibDecoder::new(body), coding, limit)
        }
        "deflate" => read_bounded(flate2::read::DeflateDecoder::new(body), coding, limit),
        "br" => read_bounded(
            brotli_decompressor::Decompressor::new(body, 4096),
            coding,
            limit,
        ),
        other => Decoded::Unknown(other.to_string()),
    }
}

/// A zlib header: compression method 8 and a check value that divides by 31 (RFC 1950).
fn is_zlib(b: &[u8]) -> bool {
    b.len() >= 2 && b[0] & 0x0f == 8 && (u16::from(b[0]) << 8 | u16::from(b[1])) % 31 == 0
}

fn read_bounded(r: impl Read, coding: &str, limit: usize) -> Decoded {
    let mut out = Vec::new();
    // One byte past the limit tells "too large" from "exactly the limit".
    match r.take(limit as u64 + 1).read_to_end(&mut out) {
        Ok(_) if out.len() > limit => Decoded::TooLarge,
        Ok(_) => Decoded::Body(Bytes::from(out)),
        Err(e) => Decoded::Error(format!("{coding}: {e}")),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::io::Write;

    use super::*;

    pub(crate) fn gzip(b: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(b).unwrap();
        e.finish().unwrap()
    }

    pub(crate) fn zlib(b: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(b).unwrap();
        e.finish().unwrap()
    }

    pub(crate) fn raw_deflate(b: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(b).unwrap();
        e.finish().unwrap()
    }

    pub(crate) fn br(b: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        {
            let mut w = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
            w.write_all(b).unwrap();
        }
        out
    }

    fn coded(coding: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(CONTENT_ENCODING, coding.parse().unwrap());
        h
    }

    #[test]
    fn every_coding_and_stacks_of_them_decode() {
        let text = b"hello, hello, hello, compressed world";
        let want = Decoded::Body(Bytes::from_static(text));
        for (coding, body) in [
            ("gzip", gzip(text)),
            ("x-gzip", gzip(text)),
            ("deflate", zlib(text)),
            ("deflate", raw_deflate(text)),
            ("br", br(text)),
            ("BR", br(text)),
            ("identity", text.to_vec()),
            ("gzip, br", br(&gzip(text))),
            ("deflate, identity, gzip", gzip(&zlib(text))),
        ] {
            assert_eq!(
                decode(&coded(coding), Bytes::from(body), 1024),
                want,
                "{coding}"
            );
        }
        // Two gzip members are one body.
        let two = [gzip(b"hello, "), gzip(b"world")].concat();
        assert_eq!(
            decode(&coded("gzip"), Bytes::from(two), 1024),
            Decoded::Body(Bytes::from_static(b"hello, world"))
        );
        assert_eq!(
            decode(&coded("gzip"), Bytes::new(), 1024),
            Decoded::Body(Bytes::new()),
            "a HEAD answer"
        );
    }

    #[test]
    fn a_bomb_stops_at_the_limit_and_garbage_is_an_error() {
        let zeros = vec![0u8; 8 << 20];
        let bomb = gzip(&zeros);
        assert!(bomb.len() < 64 << 10, "{} bytes", bomb.len());
        assert_eq!(
            decode(&coded("gzip"), Bytes::from(bomb), 256 << 10),
            Decoded::TooLarge
        );
        assert_eq!(
            decode(&coded("br"), Bytes::from(br(&zeros)), 256 << 10),
            Decoded::TooLarge
        );
        let exact = vec![7u8; 1000];
        assert_eq!(
            decode(&coded("gzip"), Bytes::from(gzip(&exact)), 1000),
            Decoded::Body(Bytes::from(exact)),
            "exactly the limit is fine"
        );
        assert!(matches!(
            decode(&coded("gzip"), Bytes::from_static(b"not gzip at all"), 1024),
            Decoded::Error(e) if e.starts_with("gzip: ")
        ));
        let mut cut = gzip(b"a body that is cut off before its end, a body that is cut off");
        cut.truncate(cut.len() / 2);
        assert!(matches!(
            decode(&coded("gzip"), Bytes::from(cut), 1024),
            Decoded::Error(_)
        ));
        assert_eq!(
            decode(&coded("zstd"), Bytes::from_static(b"\x28\xb5"), 1024),
            Decoded::Unknown("zstd".into())
        );
    }
}
