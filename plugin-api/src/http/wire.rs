//! HTTP/1.1 on the wire, client side: a request written out, an answer's head parsed and its
//! body's framing decoded (RFC 9112). No I/O here: the `h1` module reads and writes; what is
//! here is tested byte for byte without a network.
//!
//! hyper's client connection did this before, behind a task-shaped dispatcher (a channel for
//! the request, a state machine polled for every read and write, header maps built and hashed
//! on both sides): about a sixth of a notification's instructions under the FCM benchmark
//! (BENCHMARKS.md). A client sending one request at a time and reading the answer whole needs
//! much less: the head is written in one go with the body, and the answer is parsed by
//! `httparse`, hyper's own parser.

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, Method, StatusCode, Version};
use std::mem::MaybeUninit;

/// An answer's head may be at most this long (hyper's default buffer allowed 400 KiB; no push
/// provider sends more than a few hundred bytes of headers).
pub(super) const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Headers an answer may have at most (hyper's default).
const MAX_HEADERS: usize = 100;

/// A chunk-size line (with its extensions) or a trailer line may be at most this long.
const MAX_LINE_BYTES: usize = 4096;

/// Writes a request's head into `out` (cleared first): origin-form target, the caller's
/// headers but its framing ones, and the body's `content-length`.
pub(super) fn write_head(
    out: &mut Vec<u8>,
    method: &Method,
    target: &str,
    headers: &HeaderMap,
    body_len: usize,
) {
    out.clear();
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers {
        // The body is sent whole: its length is the only framing, and it is ours to write.
        if name == CONTENT_LENGTH || name == TRANSFER_ENCODING {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    // hyper's rule: a body, or a method whose requests have one, is framed by its length.
    if body_len > 0 || !matches!(*method, Method::GET | Method::HEAD | Method::DELETE) {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(body_len.to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// How an answer's body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Framing {
    /// No body (`HEAD`, 204, 304).
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// `transfer-encoding: chunked`.
    Chunked,
    /// Everything until the server closes the connection.
    UntilClose,
}

/// An answer's head, parsed.
#[derive(Debug)]
pub(super) struct Head {
    pub(super) status: StatusCode,
    pub(super) version: Version,
    pub(super) headers: HeaderMap,
    /// Bytes the head took, through its blank line.
    pub(super) len: usize,
    pub(super) framing: Framing,
    /// The connection can carry another request once the body is read.
    pub(super) keep_alive: bool,
}

/// Parses the head at the start of `buf`: `None` while it is incomplete; interim (1xx) answers
/// come back as heads like any other, for the caller to skip.
pub(super) fn parse_head(buf: &[u8], method: &Method) -> Result<Option<Head>, String> {
    // Uninitialised: the slots are many and the headers few.
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut response,
        buf,
        &mut slots,
    );
    let len = match parsed {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD_BYTES => {
            return Err(format!("response head over {MAX_HEAD_BYTES} bytes"))
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(err) => return Err(format!("invalid response head: {err}")),
    };
    // The header values share one copy of the head rather than each having their own.
    let head = Bytes::copy_from_slice(&buf[..len]);
    let invalid = |why: &str| format!("invalid response head: {why}");
    let status =
        StatusCode::from_u16(response.code.unwrap_or(0)).map_err(|_| invalid("status code"))?;
    let version = match response.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let mut headers = HeaderMap::with_capacity(response.headers.len());
    let (mut length, mut chunked, mut encoded, mut close, mut keep_alive_token) =
        (None::<u64>, false, false, false, false);
    for header in response.headers.iter() {
        let name =
            HeaderName::from_bytes(header.name.as_bytes()).map_err(|_| invalid("header name"))?;
        let at = header.value.as_ptr() as usize - buf.as_ptr() as usize;
        let value = HeaderValue::from_maybe_shared(head.slice(at..at + header.value.len()))
            .map_err(|_| invalid("header value"))?;
        if name == CONTENT_LENGTH {
            for part in value.as_bytes().split(|&b| b == b',') {
                let n = parse_length(part).ok_or_else(|| invalid("content-length"))?;
                if length.is_some_and(|seen| seen != n) {
                    return Err(invalid("conflicting content-length"));
                }
                length = Some(n);
            }
        } else if name == TRANSFER_ENCODING {
            encoded = true;
            // Chunked only counts as the last coding applied.
            chunked = value
                .as_bytes()
                .rsplit(|&b| b == b',')
                .next()
                .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if name == CONNECTION {
            close |= has_token(&value, b"close");
            keep_alive_token |= has_token(&value, b"keep-alive");
        }
        headers.append(name, value);
    }
    let framing = if *method == Method::HEAD
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
        || status.is_informational()
    {
        Framing::Empty
    } else if encoded {
        // RFC 9112 6.3: transfer-encoding wins over content-length; a coding other than chunked
        // last leaves only the connection's end to mark the body's.
        if chunked {
            Framing::Chunked
        } else {
            Framing::UntilClose
        }
    } else {
        match length {
            Some(n) => Framing::Length(n),
            None => Framing::UntilClose,
        }
    };
    let keep_alive = !close
        && framing != Framing::UntilClose
        // A length and a transfer coding both: the framing is in doubt (request smuggling's
        // shape); the body is read by the coding, the connection is not used again.
        && !(encoded && length.is_some())
        && (version == Version::HTTP_11 || keep_alive_token);
    Ok(Some(Head {
        status,
        version,
        headers,
        len,
        framing,
        keep_alive,
    }))
}

/// Whether a comma-separated header `value` (`Connection: keep-alive, close`) holds `token`,
/// compared without case.
pub(super) fn has_token(value: &HeaderValue, token: &[u8]) -> bool {
    value
        .as_bytes()
        .split(|&b| b == b',')
        .any(|part| part.trim_ascii().eq_ignore_ascii_case(token))
}

/// Digits only (no sign, no space inside), as RFC 9110 8.6 says.
fn parse_length(text: &[u8]) -> Option<u64> {
    let text = text.trim_ascii();
    if text.is_empty() || text.len() > 19 || !text.iter().all(u8::is_ascii_digit) {
        return None;
    }
    text.iter().try_fold(0u64, |n, &d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// Decodes a chunked body as its bytes arrive.
#[derive(Debug, Default)]
pub(super) struct Chunked {
    state: ChunkState,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Expecting a chunk-size line.
    #[default]
    Size,
    /// Inside a chunk's data, this many bytes left.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines until a blank one.
    Trailers,
    Done,
}

impl Chunked {
    /// Decodes what it can of `input` into `out` (the body at most `limit` bytes), returning
    /// how many bytes of `input` it used. Call again with the rest and more bytes appended.
    pub(super) fn decode(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        limit: usize,
    ) -> Result<usize, String> {
        let mut at = 0;
        loop {
            let rest = &input[at..];
            match self.state {
                ChunkState::Done => return Ok(at),
                ChunkState::Size => {
                    let Some(line) = line(rest)? else {
                        return Ok(at);
                    };
                    at += line.len() + 2;
                    let size = chunk_size(line)?;
                    if size > (limit - out.len()) as u64 {
                        return Err(super::body_over(limit));
                    }
                    self.state = if size == 0 {
                        ChunkState::Trailers
                    } else {
                        ChunkState::Data(size)
                    };
                }
                ChunkState::Data(left) => {
                    if rest.is_empty() {
                        return Ok(at);
                    }
                    let take = rest.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    out.extend_from_slice(&rest[..take]);
                    at += take;
                    let left = left - take as u64;
                    self.state = if left == 0 {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(left)
                    };
                }
                ChunkState::DataEnd => {
                    if rest.len() < 2 {
                        return Ok(at);
                    }
                    if &rest[..2] != b"\r\n" {
                        return Err("invalid chunked body: no CRLF after a chunk".to_owned());
                    }
                    at += 2;
                    self.state = ChunkState::Size;
                }
                ChunkState::Trailers => {
                    let Some(line) = line(rest)? else {
                        return Ok(at);
                    };
                    at += line.len() + 2;
                    if line.is_empty() {
                        self.state = ChunkState::Done;
                    }
                }
            }
        }
    }

    /// The last chunk and the trailers have been read.
    pub(super) fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }
}

/// The line at the start of `input` (without its CRLF), `None` while incomplete.
fn line(input: &[u8]) -> Result<Option<&[u8]>, String> {
    match input.windows(2).position(|pair| pair == b"\r\n") {
        Some(end) if end <= MAX_LINE_BYTES => Ok(Some(&input[..end])),
        None if input.len() <= MAX_LINE_BYTES => Ok(None),
        _ => Err(format!(
            "invalid chunked body: a line over {MAX_LINE_BYTES} bytes"
        )),
    }
}

/// A chunk-size line's size (hex digits, then optional extensions after `;`).
fn chunk_size(line: &[u8]) -> Result<u64, String> {
    let digits = line
        .split(|&b| b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    let invalid = || "invalid chunked body: bad chunk size".to_owned();
    if digits.is_empty() || digits.len() > 15 {
        return Err(invalid());
    }
    digits.iter().try_fold(0u64, |n, &d| {
        let digit = (d as char).to_digit(16).ok_or_else(invalid)?;
        Ok(n * 16 + u64::from(digit))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> Head {
        parse_head(text.as_bytes(), &Method::POST)
            .unwrap()
            .expect("complete head")
    }

    #[test]
    fn a_request_head_carries_its_headers_and_the_body_length() {
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_static("fcm.example:8080"));
        headers.insert("authorization", HeaderValue::from_static("key=x"));
        // The caller's framing headers are dropped: the body's real length is written.
        headers.insert("content-length", HeaderValue::from_static("999"));
        headers.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        let mut out = b"stale".to_vec();
        write_head(&mut out, &Method::POST, "/fcm/send?a=1", &headers, 42);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /fcm/send?a=1 HTTP/1.1\r\nhost: fcm.example:8080\r\n\
             authorization: key=x\r\ncontent-length: 42\r\n\r\n"
        );
        let mut out = Vec::new();
        write_head(&mut out, &Method::GET, "/", &HeaderMap::new(), 0);
        assert_eq!(out, b"GET / HTTP/1.1\r\n\r\n");
        write_head(&mut out, &Method::POST, "/", &HeaderMap::new(), 0);
        assert_eq!(out, b"POST / HTTP/1.1\r\ncontent-length: 0\r\n\r\n");
    }

    #[test]
    fn a_head_is_parsed_with_its_framing() {
        let parsed = head("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 12\r\n\r\n{\"ok\":true}");
        assert_eq!(parsed.status, StatusCode::OK);
        assert_eq!(parsed.version, Version::HTTP_11);
        assert_eq!(parsed.framing, Framing::Length(12));
        assert!(parsed.keep_alive);
        assert_eq!(parsed.headers["content-type"], "application/json");
        assert_eq!(
            parsed.len,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 12\r\n\r\n".len()
        );
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Le", &Method::POST)
            .unwrap()
            .is_none());
    }

    #[test]
    fn the_connection_is_kept_only_when_the_answer_allows_it() {
        for (text, framing, keep) in [
            (
                "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
                Framing::Length(0),
                false,
            ),
            (
                "HTTP/1.1 200 OK\r\nConnection: Keep-Alive, Close\r\nContent-Length: 0\r\n\r\n",
                Framing::Length(0),
                false,
            ),
            ("HTTP/1.1 200 OK\r\n\r\n", Framing::UntilClose, false),
            (
                "HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n",
                Framing::Length(0),
                false,
            ),
            (
                "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n",
                Framing::Length(0),
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                Framing::Chunked,
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
                Framing::UntilClose,
                false,
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
                Framing::Chunked,
                false,
            ),
            (
                "HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
                Framing::Empty,
                true,
            ),
            ("HTTP/1.1 304 Not Modified\r\n\r\n", Framing::Empty, true),
            ("HTTP/1.1 100 Continue\r\n\r\n", Framing::Empty, true),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 7, 7\r\n\r\n",
                Framing::Length(7),
                true,
            ),
        ] {
            let parsed = head(text);
            assert_eq!(
                (parsed.framing, parsed.keep_alive),
                (framing, keep),
                "{text:?}"
            );
        }
        let to_head = parse_head(
            b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n",
            &Method::HEAD,
        );
        assert_eq!(to_head.unwrap().unwrap().framing, Framing::Empty);
    }

    #[test]
    fn malformed_heads_are_refused_with_a_reason() {
        for text in [
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 1 2\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
            "HTTP/1.1 2000 OK\r\n\r\n",
            "SMTP ready\r\n\r\n",
            "HTTP/1.1 200 OK\r\nBad Header: x\r\n\r\n",
        ] {
            let err = parse_head(text.as_bytes(), &Method::POST).unwrap_err();
            assert!(err.starts_with("invalid response head"), "{text:?}: {err}");
        }
        let endless = format!("HTTP/1.1 200 OK\r\nX: {}", "a".repeat(MAX_HEAD_BYTES));
        assert_eq!(
            parse_head(endless.as_bytes(), &Method::POST).unwrap_err(),
            format!("response head over {MAX_HEAD_BYTES} bytes")
        );
        let many: String = (0..=MAX_HEADERS).map(|i| format!("x-{i}: 1\r\n")).collect();
        let many = format!("HTTP/1.1 200 OK\r\n{many}\r\n");
        assert!(parse_head(many.as_bytes(), &Method::POST).is_err());
    }

    /// Decodes `body` fed `step` bytes at a time, as reads would deliver it.
    fn dechunk(body: &[u8], step: usize, limit: usize) -> Result<(Vec<u8>, usize), String> {
        let (mut decoder, mut out, mut buffered, mut used) =
            (Chunked::default(), Vec::new(), Vec::new(), 0);
        for piece in body.chunks(step) {
            buffered.extend_from_slice(piece);
            let n = decoder.decode(&buffered, &mut out, limit)?;
            used += n;
            buffered.drain(..n);
            if decoder.is_done() {
                return Ok((out, used));
            }
        }
        Err("incomplete".to_owned())
    }

    #[test]
    fn chunked_bodies_are_decoded_however_they_arrive() {
        let body = b"5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nx-trailer: 1\r\n\r\nNEXT";
        for step in 1..body.len() {
            let (decoded, used) = dechunk(body, step, 100).unwrap();
            assert_eq!(decoded, b"hello, world", "step {step}");
            assert_eq!(used, body.len() - 4, "step {step}");
        }
        assert_eq!(
            dechunk(b"A\r\n0123456789\r\n0\r\n\r\n", 64, 100).unwrap().0,
            b"0123456789"
        );
    }

    proptest::proptest! {
        /// Whatever an upstream sends, parsing its head and decoding its chunks answer or
        /// refuse, and never panic.
        #[test]
        fn hostile_answers_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let _ = parse_head(&bytes, &Method::POST);
            let mut text = b"HTTP/1.1 200 OK\r\n".to_vec();
            text.extend_from_slice(&bytes);
            let _ = parse_head(&text, &Method::GET);
            let _ = dechunk(&bytes, 7, 64);
        }

        /// A chunked body decodes the same however the reads split it.
        #[test]
        fn chunked_decoding_does_not_depend_on_how_bytes_arrive(
            chunks in proptest::collection::vec(proptest::collection::vec(proptest::prelude::any::<u8>(), 1..40), 0..6),
            step in 1usize..50,
        ) {
            let mut body = Vec::new();
            for chunk in &chunks {
                body.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                body.extend_from_slice(chunk);
                body.extend_from_slice(b"\r\n");
            }
            body.extend_from_slice(b"0\r\n\r\n");
            let (decoded, used) = dechunk(&body, step, 1 << 16).unwrap();
            proptest::prop_assert_eq!(decoded, chunks.concat());
            proptest::prop_assert_eq!(used, body.len());
        }
    }

    #[test]
    fn chunked_bodies_over_the_limit_or_malformed_are_refused() {
        assert_eq!(
            dechunk(b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", 64, 10).unwrap_err(),
            "response body over 10 bytes"
        );
        // Refused from the size line, before the data is read.
        assert_eq!(
            dechunk(b"fffffffffffff\r\n", 64, 10).unwrap_err(),
            "response body over 10 bytes"
        );
        for bad in [
            &b"x\r\n"[..],
            b"5\r\nhelloXX0\r\n\r\n",
            b"-1\r\n",
            b"ffffffffffffffff\r\n",
        ] {
            assert!(dechunk(bad, 64, 1 << 20)
                .unwrap_err()
                .starts_with("invalid chunked body"));
        }
        let long = format!("1;{}\r\n", "e".repeat(MAX_LINE_BYTES));
        assert!(dechunk(long.as_bytes(), 64, 100)
            .unwrap_err()
            .contains("line over"));
    }
}
