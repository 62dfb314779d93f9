//! HTTP/1.1 connections driven by the request using them ([`H1Pool`]).
//!
//! hyper's pooled client runs every connection as a task of its own: a request hands its head
//! to that task through a channel and is woken with the answer, and one more task is spawned per
//! request to wait for the connection to be idle again and put it back in the pool, whose key
//! (scheme and host) is hashed byte by byte on the way out and back. An HTTP/1.1 connection
//! carries one request at a time anyway, so here the request drives its connection itself: it
//! takes an idle one (or connects), writes the request, reads the answer whole and puts the
//! connection back. The bytes on the wire are the `wire` module's: hyper's client connection,
//! driven the same way, still cost about a sixth of a notification's instructions under the FCM
//! benchmark (BENCHMARKS.md).
//!
//! HTTP/2 stays with hyper's pool: one connection carries many requests at once and needs its
//! own task. Plain-HTTP origins are HTTP/1.1 from the start; an HTTPS origin is sent through
//! hyper's pool until an answer says which version its ALPN chose.
//!
//! Nothing watches an idle connection: one the server closed meanwhile is found out when it is
//! next taken (its socket waits until then, at most `max_idle` of them per origin), and one idle
//! for over [`IDLE_TIMEOUT`] is closed then rather than used.

mod conn;

use super::direct::Connector;
use super::error_chain;
use bytes::Bytes;
use conn::{Conn, Failure};
use http::header::{HeaderValue, HOST};
use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri, Version};
use hyper_util::client::legacy::connect::Connection as _;
use std::cell::Cell;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::task::Poll;
use std::time::{Duration, Instant};
use tower_service::Service;

/// How long a connection may stay idle before it is closed rather than reused (hyper's pool
/// used the same).
const IDLE_TIMEOUT: Duration = Duration::from_secs(600);

/// Origins remembered at most (a pushkin usually sends to one or a few).
const MAX_ORIGINS: usize = 64;

/// What an origin is known to speak.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Protocol {
    /// Not known yet (HTTPS before its first answer): hyper's pool sends.
    Unknown,
    Http1,
    Http2,
}

struct Idle<C = Box<Conn>> {
    /// Boxed: the stream holds its TLS state inline (kilobytes, even for plain HTTP, the stream
    /// being an enum), and a connection moves in and out of the pool on every request.
    conn: C,
    since: Instant,
    /// The thread it was made on (see [`this_thread`]).
    home: u32,
}

struct Origin {
    scheme: Scheme,
    authority: Authority,
    /// Its `Host` header, made once (a connection sends the headers it is given; hyper's pool
    /// formatted this one for every request).
    host: Option<HeaderValue>,
    protocol: Protocol,
    idle: Vec<Idle>,
}

/// Where [`H1Pool::route`] sends a request.
// Returned and matched at once: boxing the request would cost the allocation this avoids.
#[allow(clippy::large_enum_variant)]
pub(super) enum H1Route<'a> {
    /// Over HTTP/1.1, here: the exchange, to be awaited.
    Http1(Pin<Box<dyn Future<Output = Result<Sent, String>> + Send + 'a>>),
    /// Through hyper's pool; `unknown` when the origin's protocol is not known yet (tell
    /// [`H1Pool::learn`] what the answer came in).
    Elsewhere {
        request: Request<Bytes>,
        unknown: bool,
    },
}

/// The origin an HTTP/1.1 exchange is for, and whether it added the `Host` header.
struct Destination {
    scheme: Scheme,
    authority: Authority,
    host_added: bool,
}

/// What an HTTP/1.1 exchange did with a request.
pub(super) enum Sent {
    /// Sent and answered over HTTP/1.1.
    Answered(Response<Bytes>),
    /// Not sent: the new connection chose HTTP/2 (now remembered); send it through hyper's
    /// pool.
    NotHere(Request<Bytes>),
}

/// Idle HTTP/1.1 connections per origin, and what each origin speaks.
pub(super) struct H1Pool {
    origins: Mutex<Vec<Origin>>,
    max_idle: usize,
}

impl H1Pool {
    /// A pool keeping at most `max_idle` idle connections per origin.
    pub(super) fn new(max_idle: usize) -> H1Pool {
        H1Pool {
            origins: Mutex::new(Vec::new()),
            max_idle,
        }
    }

    /// Records the version an answer from `uri`'s origin came in (from hyper's pool).
    pub(super) fn learn(&self, uri: &Uri, version: Version) {
        let protocol = match version {
            Version::HTTP_2 => Protocol::Http2,
            Version::HTTP_11 => Protocol::Http1,
            _ => return,
        };
        if let (Some(scheme), Some(authority)) = (uri.scheme(), uri.authority()) {
            self.with_origin(scheme, authority, |origin| {
                if origin.protocol == Protocol::Unknown {
                    origin.protocol = protocol;
                }
            });
        }
    }

    /// Where `request` (absolute URI) goes: over an HTTP/1.1 connection to its origin if the
    /// origin is known to speak HTTP/1.1 (the exchange, reading the answer whole, at most
    /// `limit` bytes), else through hyper's pool. Decided at once: a request for another
    /// origin costs one look at the table, no future.
    pub(super) fn route<'a>(
        &'a self,
        connector: &'a Connector,
        mut request: Request<Bytes>,
        limit: usize,
    ) -> H1Route<'a> {
        let (Some(scheme), Some(authority)) = (
            request.uri().scheme().cloned(),
            request.uri().authority().cloned(),
        ) else {
            return H1Route::Elsewhere {
                request,
                unknown: false,
            };
        };
        let default = if scheme == Scheme::HTTP {
            Protocol::Http1
        } else {
            Protocol::Unknown
        };
        let (protocol, host_and_idle) = self.with_origin(&scheme, &authority, |origin| {
            if origin.protocol == Protocol::Unknown {
                origin.protocol = default;
            }
            let host_and_idle = (origin.protocol == Protocol::Http1)
                .then(|| (origin.host.clone(), take_idle(&mut origin.idle)));
            (origin.protocol, host_and_idle)
        });
        let Some((host, idle)) = host_and_idle else {
            return H1Route::Elsewhere {
                request,
                unknown: protocol == Protocol::Unknown,
            };
        };
        let Some(host) = host else {
            let refusal = "the upstream's host is not a valid Host header".to_owned();
            return H1Route::Http1(Box::pin(std::future::ready(Err(refusal))));
        };
        let host_added = !request.headers().contains_key(HOST);
        if host_added {
            request.headers_mut().insert(HOST, host);
        }
        // Boxed: its state would otherwise sit inside every pushkin future awaiting it, and
        // those are moved whole when spawned (measured: kilobytes copied per request).
        H1Route::Http1(Box::pin(self.exchange(
            connector,
            request,
            Destination {
                scheme,
                authority,
                host_added,
            },
            idle,
            limit,
        )))
    }

    /// Sends `request` to `origin` over HTTP/1.1: on `idle` if it is still usable, else on
    /// another idle connection or a new one.
    async fn exchange(
        &self,
        connector: &Connector,
        mut request: Request<Bytes>,
        origin: Destination,
        idle: Option<Idle>,
        limit: usize,
    ) -> Result<Sent, String> {
        let Destination {
            scheme,
            authority,
            host_added,
        } = origin;
        let mut pooled = idle;
        loop {
            let (mut conn, reused) = match pooled.take() {
                Some(idle) => {
                    let mut conn = idle.conn;
                    // Closed by the server while idle: found out now, not by failing.
                    if !poll_fn(|cx| Poll::Ready(conn.is_open(cx))).await {
                        pooled = self
                            .with_origin(&scheme, &authority, |origin| take_idle(&mut origin.idle));
                        continue;
                    }
                    (conn, true)
                }
                None => match self.connect(connector, request.uri()).await? {
                    Some(conn) => (conn, false),
                    None => {
                        // As it came: HTTP/2 names the host in the URI, not in a header.
                        if host_added {
                            request.headers_mut().remove(HOST);
                        }
                        return Ok(Sent::NotHere(request));
                    }
                },
            };
            match conn.exchange(&request, limit).await {
                Ok((response, keep_alive)) => {
                    if keep_alive {
                        self.put_back(&scheme, &authority, conn);
                    }
                    return Ok(Sent::Answered(response));
                }
                // Not a byte written: a reused connection the server had closed. Once more on
                // a new one (a request that may have reached the server is never resent).
                Err(Failure::Unsent(_)) if reused => continue,
                Err(Failure::Unsent(why) | Failure::Sent(why)) => return Err(why),
            }
        }
    }

    /// A new connection to `uri`'s origin, or `None` if it chose HTTP/2 (then remembered).
    async fn connect(&self, connector: &Connector, uri: &Uri) -> Result<Option<Box<Conn>>, String> {
        let stream = connector
            .clone()
            .call(uri.clone())
            .await
            .map_err(|err| format!("client error (Connect): {}", error_chain(&*err)))?;
        if stream.connected().is_negotiated_h2() {
            if let (Some(scheme), Some(authority)) = (uri.scheme(), uri.authority()) {
                self.with_origin(scheme, authority, |origin| {
                    origin.protocol = Protocol::Http2;
                    origin.idle.clear();
                });
            }
            return Ok(None);
        }
        Ok(Some(Box::new(Conn::new(stream))))
    }

    fn put_back(&self, scheme: &Scheme, authority: &Authority, conn: Box<Conn>) {
        let max_idle = self.max_idle;
        self.with_origin(scheme, authority, |origin| {
            if origin.protocol == Protocol::Http1 && origin.idle.len() < max_idle {
                origin.idle.push(Idle {
                    home: conn.home(),
                    conn,
                    since: Instant::now(),
                });
            }
        });
    }

    /// Runs `f` on the entry of an origin (made if new), under the pool's lock.
    fn with_origin<T>(
        &self,
        scheme: &Scheme,
        authority: &Authority,
        f: impl FnOnce(&mut Origin) -> T,
    ) -> T {
        // A poisoned lock only means another request panicked while holding it: the entries
        // are still whole (each change is a single push, pop or assignment).
        let mut origins = self
            .origins
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let at = match origins
            .iter()
            .position(|origin| origin.authority == *authority && origin.scheme == *scheme)
        {
            Some(at) => at,
            None => {
                if origins.len() >= MAX_ORIGINS {
                    origins.remove(0);
                }
                origins.push(Origin {
                    scheme: scheme.clone(),
                    authority: authority.clone(),
                    host: host_header(scheme, authority),
                    protocol: Protocol::Unknown,
                    idle: Vec::new(),
                });
                origins.len() - 1
            }
        };
        f(&mut origins[at])
    }
}

/// `Host` for an origin, as hyper's pool writes it: the host, and the port unless it is the
/// scheme's default.
fn host_header(scheme: &Scheme, authority: &Authority) -> Option<HeaderValue> {
    let default_port = if *scheme == Scheme::HTTPS { 443 } else { 80 };
    match authority.port_u16() {
        Some(port) if port != default_port => {
            HeaderValue::from_str(&format!("{}:{port}", authority.host())).ok()
        }
        _ => HeaderValue::from_str(authority.host()).ok(),
    }
}

/// The most recently idle connection that has not been idle too long, one made on this thread
/// if there is one.
fn take_idle<C>(idle: &mut Vec<Idle<C>>) -> Option<Idle<C>> {
    // Stale ones are at the front: they went idle first.
    let fresh = idle
        .iter()
        .position(|entry| entry.since.elapsed() < IDLE_TIMEOUT)
        .unwrap_or(idle.len());
    idle.drain(..fresh);
    let here = this_thread();
    match idle.iter().rposition(|entry| entry.home == here) {
        Some(at) => Some(idle.remove(at)),
        None => idle.pop(),
    }
}

/// A small number naming the current thread.
///
/// A host that lends its reactor polls each dispatch on one of its connection threads, and a
/// connection made there is waited on by that thread's reactor: the same connection taken on
/// another thread would have its answers cross between the two. The connection slots use it
/// too, to give a freed slot to a request waiting on the same thread.
pub(super) fn this_thread() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(1);
    thread_local! {
        static ID: Cell<u32> = const { Cell::new(0) };
    }
    ID.with(|id| {
        if id.get() == 0 {
            id.set(NEXT.fetch_add(1, Ordering::Relaxed));
        }
        id.get()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_connections_made_on_this_thread_are_taken_first() {
        let here = this_thread();
        let elsewhere = std::thread::spawn(this_thread).join().unwrap();
        assert_ne!(here, elsewhere);
        let now = Instant::now();
        let idle = |conn, home| Idle {
            conn,
            since: now,
            home,
        };
        let mut pool = vec![
            idle("older here", here),
            idle("newer here", here),
            idle("newest, elsewhere", elsewhere),
        ];
        let taken = |pool: &mut Vec<Idle<&'static str>>| take_idle(pool).map(|idle| idle.conn);
        assert_eq!(taken(&mut pool), Some("newer here"));
        assert_eq!(taken(&mut pool), Some("older here"));
        // None made here is left: another thread's is better than a new connection.
        assert_eq!(taken(&mut pool), Some("newest, elsewhere"));
        assert_eq!(taken(&mut pool), None);
    }

    #[test]
    fn host_headers_are_written_as_hyper_writes_them() {
        for (uri, host) in [
            ("http://fcm.example/send", "fcm.example"),
            ("http://fcm.example:80/send", "fcm.example"),
            ("http://fcm.example:8080/send", "fcm.example:8080"),
            ("https://fcm.example:443/send", "fcm.example"),
            ("https://fcm.example:80/send", "fcm.example:80"),
            ("http://[::1]:8080/send", "[::1]:8080"),
        ] {
            let uri: Uri = uri.parse().unwrap();
            let (scheme, authority) = (uri.scheme().unwrap(), uri.authority().unwrap());
            assert_eq!(host_header(scheme, authority).unwrap(), host, "{uri}");
        }
    }
}
