//! The HTTP server: accepts connections on the listeners and serves the axum router over
//! HTTP/1.1 and h2c, within limits a slow, broken or hostile client cannot get around.
//!
//! - `http.header_timeout`: a connection must deliver its first request's headers within this
//!   time of being accepted, and each later request's headers within this time of their first
//!   byte; otherwise it is closed (slowloris).
//! - `http.body_timeout`: a request body must arrive whole within this time of its headers;
//!   otherwise the request fails (408) and the connection is closed.
//! - `http.idle_timeout`: a keep-alive connection idle this long is closed.
//! - `http.max_connections`: beyond this many open connections, new ones are answered 503 and
//!   closed at once (logged at most every 10 s). The soft file-descriptor limit is raised to the
//!   hard limit at startup, and the connection limit is held under half of it, leaving the rest
//!   for upstream connections. Accept errors (EMFILE, ENFILE) back off instead of spinning.
//! - `Expect: 100-continue` with an announced length over the body limit is answered 413
//!   before any of the body is read.
//!
//! - `http.body_buffer_bytes`: bodies being received may take this much memory together
//!   beyond the first 64 KiB of each; a body that would exceed it is answered 503.
//!
//! Memory is bounded by these limits: however many uploads stall, they hold at most
//! `max_connections` x (64 KiB read buffer + 64 KiB of body) plus `body_buffer_bytes`, each for
//! at most `body_timeout`.
//!
//! Stopping ([`Server::shutdown`]) closes the listeners, answers requests already being
//! handled (HTTP/1.1 responses then carry `Connection: close`; HTTP/2 gets GOAWAY), gives idle
//! connections a short linger for a request already on its way, and cuts requests still
//! receiving their body after that linger: the drain waits for requests being handled, never
//! for slow senders.

mod body;
mod connection;

use crate::access_log::AccessLog;
use crate::config::HttpConfig;
use crate::metrics::{label, registry, Kind, Series};
use crate::throttle::Throttle;
use axum::body::Body;
use axum::http::{Method, Request};
use axum::response::Response;
use axum::Router;
use hyper_util::rt::TokioExecutor;
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};

pub use body::{refusal, BodyRefused};

/// What a [`DirectRoute`] answers with (as the router does: its error cannot happen).
pub type DirectAnswer =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Response, Infallible>> + Send>>;

/// One method and exact path answered without going through the router: the gateway's hot
/// path, `POST /notify`, where the router's work per request (path matching, a boxed service
/// and future per layer) was a few percent of a notification's CPU. The router keeps the same
/// route, so it stays the complete definition of the API.
pub struct DirectRoute {
    /// The method answered.
    pub method: Method,
    /// The path answered, exactly.
    pub path: &'static str,
    /// Answers a matching request (its body already watched like the router's requests).
    pub answer: Box<dyn Fn(Request<Body>) -> DirectAnswer + Send + Sync>,
}

impl DirectRoute {
    /// Whether `request` is one this route answers.
    pub fn matches<B>(&self, request: &Request<B>) -> bool {
        request.method() == self.method && request.uri().path() == self.path
    }
}

/// The limits one server enforces.
#[derive(Debug, Clone)]
pub struct Limits {
    /// See the module documentation.
    pub header_timeout: Duration,
    /// See the module documentation.
    pub body_timeout: Duration,
    /// See the module documentation.
    pub idle_timeout: Duration,
    /// See the module documentation.
    pub max_connections: usize,
    /// Bodies announced larger than this with `Expect: 100-continue` are refused unread.
    pub max_body_bytes: usize,
    /// See the module documentation.
    pub body_buffer_bytes: usize,
}

impl Limits {
    /// The configured limits, with the connection limit held under half of `fd_limit` (open
    /// files allowed), so that upstream connections always find a descriptor.
    pub fn new(http: &HttpConfig, max_body_bytes: usize, fd_limit: Option<libc::rlim_t>) -> Limits {
        let mut max_connections = http.max_connections;
        if let Some(fd_limit) = fd_limit {
            let ceiling = usize::try_from(fd_limit / 2).unwrap_or(usize::MAX).max(1);
            if max_connections > ceiling {
                tracing::warn!(
                    configured = max_connections,
                    open_files_limit = fd_limit,
                    using = ceiling,
                    "http.max_connections is above half the open-files limit; lowered (raise LimitNOFILE / ulimit -n to allow more)"
                );
                max_connections = ceiling;
            }
        }
        Limits {
            header_timeout: Duration::from_secs_f64(http.header_timeout),
            body_timeout: Duration::from_secs_f64(http.body_timeout),
            idle_timeout: Duration::from_secs_f64(http.idle_timeout),
            max_connections,
            max_body_bytes,
            body_buffer_bytes: http.body_buffer_bytes,
        }
    }
}

/// What the accept loops and connections of one server share.
struct Shared {
    /// `api` or `metrics`, for logs and metrics.
    name: &'static str,
    limits: Limits,
    router: Router,
    direct: Option<DirectRoute>,
    builder: auto::Builder<TokioExecutor>,
    open: AtomicUsize,
    all_closed: Notify,
    /// Becomes true when the server stops: listeners close, connections drain.
    stopping: watch::Sender<bool>,
    body_budget: Arc<body::BodyBudget>,
    metrics: ServerMetrics,
    /// Writes the access log (`sygnal.access`) for this server's requests.
    access_log: Option<AccessLog>,
}

struct ServerMetrics {
    open: Arc<Series>,
    refused: Arc<Series>,
    timeouts_header: Arc<Series>,
    timeouts_body: Arc<Series>,
    refused_bodies: Arc<Series>,
}

impl ServerMetrics {
    fn new(name: &str) -> ServerMetrics {
        let series = |metric: &str, help: &str, kind: Kind, labels: String| {
            registry()
                .series(metric, help, kind, &labels)
                .unwrap_or_default()
        };
        let listener = label("listener", name);
        let timeouts = |phase: &str| {
            series(
                "sygnal_http_timeouts",
                "Connections closed because a client was too slow to send a request",
                Kind::Counter,
                format!("{listener},{}", label("phase", phase)),
            )
        };
        ServerMetrics {
            open: series(
                "sygnal_http_open_connections",
                "Client connections open",
                Kind::Gauge,
                listener.clone(),
            ),
            refused: series(
                "sygnal_http_refused_connections",
                "Client connections refused at http.max_connections",
                Kind::Counter,
                listener.clone(),
            ),
            timeouts_header: timeouts("header"),
            timeouts_body: timeouts("body"),
            refused_bodies: series(
                "sygnal_http_refused_bodies",
                "Request bodies refused because http.body_buffer_bytes were taken",
                Kind::Counter,
                listener.clone(),
            ),
        }
    }
}

/// A running server: one accept loop per listener, sharing one connection budget.
pub struct Server {
    shared: Arc<Shared>,
}

impl Server {
    /// Serves `router` on `listeners`, and `direct` in front of it. `name` (`api`, `metrics`)
    /// labels logs and metrics; with `access_log`, every request answered is logged on
    /// `sygnal.access`.
    pub fn start(
        name: &'static str,
        listeners: Vec<TcpListener>,
        router: Router,
        direct: Option<DirectRoute>,
        limits: Limits,
        access_log: Option<AccessLog>,
    ) -> Server {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder.http1().max_buf_size(READ_BUFFER_BYTES);
        let body_budget = Arc::new(body::BodyBudget::new(limits.body_buffer_bytes));
        let shared = Arc::new(Shared {
            name,
            limits,
            router,
            direct,
            builder,
            open: AtomicUsize::new(0),
            all_closed: Notify::new(),
            stopping: watch::Sender::new(false),
            body_budget,
            metrics: ServerMetrics::new(name),
            access_log,
        });
        for listener in listeners {
            tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
        }
        Server { shared }
    }

    /// Stops accepting (the listeners close) and lets every connection finish: see the module
    /// documentation.
    pub fn shutdown(&self) {
        self.shared.stopping.send_replace(true);
    }

    /// Connections open now.
    pub fn open_connections(&self) -> usize {
        self.shared.open.load(Ordering::Acquire)
    }

    /// Waits until every connection is closed.
    pub async fn closed(&self) {
        loop {
            let notified = self.shared.all_closed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.open_connections() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// Counts a connection as open for as long as it lives.
struct OpenConnection(Arc<Shared>);

impl OpenConnection {
    /// Admits one more connection, unless the limit is reached.
    fn admit(shared: &Arc<Shared>) -> Option<OpenConnection> {
        let admitted = shared
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < shared.limits.max_connections).then_some(open + 1)
            })
            .is_ok();
        admitted.then(|| {
            shared.metrics.open.add(1.0);
            OpenConnection(Arc::clone(shared))
        })
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.metrics.open.add(-1.0);
        if self.0.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.all_closed.notify_waiters();
        }
    }
}

/// The most an HTTP/1.1 connection reads ahead (hyper's default is about 400 KiB). Bodies
/// are at most 512 KiB and usually a few KiB: smaller reads keep what a connection holds close
/// to what its client actually sent. Headers must fit in it too.
const READ_BUFFER_BYTES: usize = 64 * 1024;

/// What a client over the connection limit reads before the connection closes.
const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\nretry-after: 1\r\ncontent-type: application/json\r\ncontent-length: 59\r\n\r\n{\"errcode\":\"M_UNKNOWN\",\"error\":\"too many open connections\"}";

/// How often a repeating accept failure or connection refusal is logged.
const WARN_EVERY: Duration = Duration::from_secs(10);
/// Accept errors back off from this delay, doubling up to a second.
const FIRST_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut stopping = shared.stopping.subscribe();
    let mut refusals = Throttle::every(WARN_EVERY);
    let mut failures = Throttle::every(WARN_EVERY);
    let mut backoff = FIRST_BACKOFF;
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stopping.wait_for(|stop| *stop) => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = FIRST_BACKOFF;
                match OpenConnection::admit(&shared) {
                    Some(open) => {
                        let shared = Arc::clone(&shared);
                        crate::shards::spawn_connection(stream, move |stream| {
                            connection::serve(stream, peer.ip(), shared, open)
                        });
                    }
                    None => refuse(stream, &shared, &mut refusals),
                }
            }
            Err(err) if is_resource_exhaustion(&err) => {
                if let Some(held_back) = failures.admit() {
                    tracing::error!(
                        listener = shared.name,
                        error = %err,
                        open = shared.open.load(Ordering::Relaxed),
                        retry_in_ms = backoff.as_millis() as u64,
                        errors_not_logged = held_back,
                        "cannot accept connections: out of file descriptors or memory"
                    );
                }
                tokio::select! {
                    _ = stopping.wait_for(|stop| *stop) => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            // The client gave up before the connection was accepted (ECONNABORTED and the like).
            Err(err) => tracing::debug!(listener = shared.name, error = %err, "accept failed"),
        }
    }
    tracing::debug!(listener = shared.name, address = ?listener.local_addr().ok(), "listener closed");
}

fn is_resource_exhaustion(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

fn refuse(stream: TcpStream, shared: &Shared, refusals: &mut Throttle) {
    shared.metrics.refused.inc();
    // Best effort, never waiting: the socket buffer of a fresh connection takes it.
    let _ = stream.try_write(REFUSAL);
    if let Some(held_back) = refusals.admit() {
        tracing::warn!(
            listener = shared.name,
            max_connections = shared.limits.max_connections,
            refused_not_logged = held_back,
            "connection refused: http.max_connections reached"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_is_a_complete_response() {
        let text = std::str::from_utf8(REFUSAL).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())));
        serde_json::from_str::<serde_json::Value>(body).unwrap();
    }

    #[test]
    fn connection_limit_stays_under_half_the_fd_limit() {
        let http = HttpConfig::default();
        assert_eq!(Limits::new(&http, 1, Some(1024)).max_connections, 512);
        assert_eq!(
            Limits::new(&http, 1, Some(1 << 20)).max_connections,
            http.max_connections
        );
        assert_eq!(
            Limits::new(&http, 1, None).max_connections,
            http.max_connections
        );
    }
}
