//! The access log: one line per request answered by the Push Gateway API, on the Python logger
//! `sygnal.access` (target `sygnal::access`), shaped like Sygnal's (Twisted's combined log
//! format) with the time taken added at the end:
//!
//! ```text
//! Handled request: "10.0.0.7" - - [30/Jan/2025:12:34:56 +0000] "POST /_matrix/push/v1/notify HTTP/1.1" 200 15 "-" "Synapse/1.163.2" 1.234ms
//! ```
//!
//! The client is the connection's peer address, or with `log.access.x_forwarded_for` the first
//! address of `X-Forwarded-For` (the peer's when the header is absent). Lines are at INFO;
//! `/health` (probed every few seconds by load balancers and orchestrators) at DEBUG.
//!
//! Cost: whether the line will be written is known when the request arrives (`tracing` caches
//! it per call site); only then are its parts kept (reference-counted header values, no copy),
//! and the line is formatted only by the handlers that write it.

use axum::body::HttpBody as _;
use axum::response::Response;
use hyper::header::{HeaderValue, REFERER, USER_AGENT};
use hyper::{Method, Request, Uri, Version};
use std::fmt;
use std::net::IpAddr;
use std::time::{Instant, SystemTime};

/// The access log's settings (`log.access`).
#[derive(Debug, Clone, Copy, Default)]
pub struct AccessLog {
    /// Take the client address from `X-Forwarded-For`.
    pub x_forwarded_for: bool,
}

/// A request whose access line will be written when its response is ready.
pub struct Pending {
    started: Instant,
    peer: IpAddr,
    forwarded_for: Option<HeaderValue>,
    method: Method,
    uri: Uri,
    version: Version,
    referer: Option<HeaderValue>,
    user_agent: Option<HeaderValue>,
    health: bool,
}

impl AccessLog {
    /// Starts the access line of `request` from `peer`, unless the line would not be written.
    pub fn begin<B>(&self, request: &Request<B>, peer: IpAddr) -> Option<Pending> {
        let health = request.uri().path() == "/health";
        let enabled = if health {
            tracing::enabled!(target: "sygnal::access", tracing::Level::DEBUG)
        } else {
            tracing::enabled!(target: "sygnal::access", tracing::Level::INFO)
        };
        if !enabled {
            return None;
        }
        let headers = request.headers();
        Some(Pending {
            started: Instant::now(),
            peer: peer.to_canonical(),
            forwarded_for: self
                .x_forwarded_for
                .then(|| headers.get("x-forwarded-for").cloned())
                .flatten(),
            method: request.method().clone(),
            uri: request.uri().clone(),
            version: request.version(),
            referer: headers.get(REFERER).cloned(),
            user_agent: headers.get(USER_AGENT).cloned(),
            health,
        })
    }
}

impl Pending {
    /// Writes the line for `response`.
    pub fn finish(self, response: &Response) {
        let line = Line {
            request: &self,
            status: response.status().as_u16(),
            length: response.body().size_hint().exact(),
            elapsed_us: u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX),
        };
        if self.health {
            tracing::debug!(target: "sygnal::access", "Handled request: {line}");
        } else {
            tracing::info!(target: "sygnal::access", "Handled request: {line}");
        }
    }
}

/// The line after `Handled request: `, formatted only when a handler writes it.
struct Line<'a> {
    request: &'a Pending,
    status: u16,
    length: Option<u64>,
    elapsed_us: u64,
}

impl fmt::Display for Line<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let request = self.request;
        f.write_str("\"")?;
        match forwarded_client(request.forwarded_for.as_ref()) {
            Some(client) => Escaped(client).fmt(f)?,
            None => write!(f, "{}", request.peer)?,
        }
        f.write_str("\" - - ")?;
        crate::log_format::write_access_time(SystemTime::now(), f)?;
        let path = request
            .uri
            .path_and_query()
            .map_or("/", |path| path.as_str());
        write!(
            f,
            " \"{} {} {:?}\" {} ",
            request.method,
            Escaped(path.as_bytes()),
            request.version,
            self.status
        )?;
        match self.length {
            Some(length) if length > 0 => write!(f, "{length}")?,
            _ => f.write_str("-")?,
        }
        fn header(value: &Option<HeaderValue>) -> Escaped<'_> {
            Escaped(value.as_ref().map_or(&b"-"[..], HeaderValue::as_bytes))
        }
        write!(
            f,
            " \"{}\" \"{}\" {}.{:03}ms",
            header(&request.referer),
            header(&request.user_agent),
            self.elapsed_us / 1000,
            self.elapsed_us % 1000
        )
    }
}

/// The first address of `X-Forwarded-For`, as Twisted's proxied access log takes it.
fn forwarded_client(header: Option<&HeaderValue>) -> Option<&[u8]> {
    let first = header?.as_bytes().split(|b| *b == b',').next()?;
    let first = first.trim_ascii();
    (!first.is_empty()).then_some(first)
}

/// Bytes as Twisted escapes them inside double quotes: `"` and `\` escaped, anything not
/// printable ASCII as `\xNN`, so a header cannot forge a line.
struct Escaped<'a>(&'a [u8]);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        while !rest.is_empty() {
            // The longest run written as is, in one piece.
            let plain = rest
                .iter()
                .position(|&b| !(0x20..=0x7e).contains(&b) || b == b'"' || b == b'\\')
                .unwrap_or(rest.len());
            // ASCII printable bytes: always UTF-8.
            f.write_str(std::str::from_utf8(&rest[..plain]).unwrap_or_default())?;
            let Some((&byte, after)) = rest[plain..].split_first() else {
                break;
            };
            match byte {
                b'"' => f.write_str("\\\"")?,
                b'\\' => f.write_str("\\\\")?,
                other => write!(f, "\\x{other:02x}")?,
            }
            rest = after;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(forwarded_for: Option<&'static str>) -> Pending {
        Pending {
            started: Instant::now(),
            peer: "::ffff:10.0.0.7".parse::<IpAddr>().unwrap().to_canonical(),
            forwarded_for: forwarded_for.map(HeaderValue::from_static),
            method: Method::POST,
            uri: "/_matrix/push/v1/notify".parse().unwrap(),
            version: Version::HTTP_11,
            referer: None,
            user_agent: Some(HeaderValue::from_static("Synapse/1.163 \"quoted\"")),
            health: false,
        }
    }

    #[test]
    fn the_line_reads_like_sygnals() {
        let request = pending(None);
        let line = Line {
            request: &request,
            status: 200,
            length: Some(15),
            elapsed_us: 1235,
        }
        .to_string();
        let (start, rest) = line.split_once(" [").unwrap();
        assert_eq!(start, "\"10.0.0.7\" - -");
        let (_, rest) = rest.split_once("] ").unwrap();
        assert_eq!(
            rest,
            "\"POST /_matrix/push/v1/notify HTTP/1.1\" 200 15 \"-\" \"Synapse/1.163 \\\"quoted\\\"\" 1.235ms"
        );
    }

    #[test]
    fn the_client_comes_from_x_forwarded_for_when_asked() {
        let request = pending(Some(" 203.0.113.9 , 10.0.0.1"));
        let line = Line {
            request: &request,
            status: 502,
            length: None,
            elapsed_us: 0,
        }
        .to_string();
        assert!(line.starts_with("\"203.0.113.9\" - - ["), "{line}");
        assert!(line.contains("\" 502 - \"-\""), "{line}");
        assert_eq!(forwarded_client(Some(&HeaderValue::from_static(""))), None);
        assert_eq!(Escaped(b"a\nb").to_string(), "a\\x0ab");
    }
}
