//! One client connection: hyper's HTTP/1.1 + h2c connection around the router, watched for the
//! header, body and idle timeouts and drained when the server stops.
//!
//! The request path stays lean: per request, a few relaxed atomic operations on this
//! connection's own counters, no allocation, no timer. The watchdog (timeouts, drain) runs in
//! the connection's task with one timer, reads the counters after each poll of the connection
//! and reads the clock only when they changed.

use super::body::{BodyBudget, TimedBody};
use super::{DirectAnswer, OpenConnection, Shared};
use axum::body::Body;
use axum::response::Response;
use axum::routing::future::RouteFuture;
use futures_util::future::Either;
use futures_util::task::AtomicWaker;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONNECTION, CONTENT_LENGTH, EXPECT};
use hyper::{Request, Version};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::future::{poll_fn, Future, Ready};
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// How long a stopping server keeps an idle HTTP/1.1 connection open for a request already on
/// its way (answered with `Connection: close`), and how long a request still receiving its body
/// may go on before it is cut.
const DRAIN_LINGER: Duration = Duration::from_secs(1);

const HEADER_TIMEOUT: &str = "request head not received within http.header_timeout";

/// What the request path tells the watchdog. Only this connection's tasks touch it.
pub(super) struct ConnState {
    /// The server's budget for bodies being received.
    pub(super) budget: Arc<BodyBudget>,
    /// Requests being handled (service called, response not yet produced).
    active: AtomicUsize,
    /// Requests answered so far.
    completed: AtomicUsize,
    /// Request bodies not yet received whole.
    pub(super) receiving: AtomicUsize,
    /// Request bodies that missed `http.body_timeout`.
    pub(super) bodies_timed_out: AtomicUsize,
    /// Request bodies refused for lack of `http.body_buffer_bytes`.
    pub(super) bodies_refused: AtomicUsize,
    /// HTTP/1.1: the body being received is past its deadline (set by the watchdog)...
    pub(super) body_expired: AtomicBool,
    /// ...which then wakes it with this.
    pub(super) body_waker: AtomicWaker,
    /// Bytes arrived while no request was active: the head of the next HTTP/1.1 request.
    head_started: AtomicBool,
    /// The connection speaks HTTP/2.
    http2: AtomicBool,
    /// The server is stopping: HTTP/1.1 responses carry `Connection: close`.
    draining: AtomicBool,
}

/// Serves one accepted connection (from `peer`) until it closes.
pub(super) async fn serve(
    stream: TcpStream,
    peer: IpAddr,
    shared: Arc<Shared>,
    _open: OpenConnection,
) {
    let accepted_at = Instant::now();
    // Responses are written whole; don't let Nagle hold back their last segment.
    let _ = stream.set_nodelay(true);
    let state = Arc::new(ConnState {
        budget: Arc::clone(&shared.body_budget),
        active: AtomicUsize::new(0),
        completed: AtomicUsize::new(0),
        receiving: AtomicUsize::new(0),
        bodies_timed_out: AtomicUsize::new(0),
        bodies_refused: AtomicUsize::new(0),
        body_expired: AtomicBool::new(false),
        body_waker: AtomicWaker::new(),
        head_started: AtomicBool::new(false),
        http2: AtomicBool::new(false),
        draining: AtomicBool::new(false),
    });
    let io = TokioIo::new(WatchedIo {
        stream,
        state: Arc::clone(&state),
    });
    let service = ConnService {
        router: shared.router.clone(),
        state: Arc::clone(&state),
        shared: Arc::clone(&shared),
        peer,
    };
    let conn = shared.builder.serve_connection(io, service);
    let mut stopping = shared.stopping.subscribe();
    let stop = stopping.wait_for(|stop| *stop);
    let tick = shared.limits.header_timeout;
    let timer = tokio::time::sleep_until(accepted_at + tick);
    tokio::pin!(conn, stop, timer);
    let mut watchdog = Watchdog::new(accepted_at);
    let outcome = poll_fn(|cx| loop {
        if let Poll::Ready(result) = conn.as_mut().poll(cx) {
            return Poll::Ready(result.err().map(|err| err.to_string()));
        }
        if watchdog.drain_started.is_none() && stop.as_mut().poll(cx).is_ready() {
            watchdog.drain_started = Some(Instant::now());
            state.draining.store(true, Relaxed);
            if state.http2.load(Relaxed) {
                // GOAWAY: the client retries nothing it has not sent; streams in flight finish.
                conn.as_mut().graceful_shutdown();
                watchdog.shutdown_at = Some(Instant::now());
                continue;
            }
        }
        let next = watchdog.next(&state, &shared.limits);
        // The timer moves when it fired or when a deadline comes earlier (rare): not per
        // request. While nothing is due it fires at least every header_timeout, so the head of
        // a request that starts in between is still timed from its first byte.
        if let Some((deadline, _)) = next {
            if deadline < timer.deadline() {
                timer.as_mut().reset(deadline);
            }
        }
        if timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        let now = Instant::now();
        match next {
            Some((deadline, Action::Close(reason))) if deadline <= now => {
                if reason == HEADER_TIMEOUT {
                    shared.metrics.timeouts_header.inc();
                }
                return Poll::Ready(Some(format!("closed: {reason}")));
            }
            Some((deadline, Action::Shutdown)) if deadline <= now => {
                conn.as_mut().graceful_shutdown();
                watchdog.shutdown_at = Some(now);
            }
            Some((deadline, Action::ExpireBody)) if deadline <= now => {
                // The handler reading the body gets BodyTimeout when polled next.
                state.body_expired.store(true, Relaxed);
                state.body_waker.wake();
            }
            Some((deadline, _)) => timer.as_mut().reset(deadline.min(now + tick)),
            None => timer.as_mut().reset(now + tick),
        }
    })
    .await;
    for (count, series) in [
        (&state.bodies_timed_out, &shared.metrics.timeouts_body),
        (&state.bodies_refused, &shared.metrics.refused_bodies),
    ] {
        let count = count.load(Relaxed);
        if count > 0 {
            series.add(count as f64);
        }
    }
    if let Some(reason) = outcome {
        tracing::debug!(listener = shared.name, %reason, "connection ended");
    }
}

/// What to do when a deadline passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    /// Drop the connection now.
    Close(&'static str),
    /// Ask hyper to finish what is in progress and close (HTTP/2: GOAWAY).
    Shutdown,
    /// Fail the HTTP/1.1 request body being received (`http.body_timeout`).
    ExpireBody,
}

/// The connection's deadlines, derived from its [`ConnState`].
struct Watchdog {
    accepted_at: Instant,
    /// When the connection last became idle (no request active).
    idle_since: Instant,
    /// When the head of the next request began to arrive, if it has.
    head_since: Option<Instant>,
    /// HTTP/1.1: since when a request body has been arriving, if one is.
    body_since: Option<Instant>,
    /// `ConnState::completed` when last looked at.
    completed: usize,
    busy: bool,
    drain_started: Option<Instant>,
    shutdown_at: Option<Instant>,
}

impl Watchdog {
    fn new(accepted_at: Instant) -> Watchdog {
        Watchdog {
            accepted_at,
            idle_since: accepted_at,
            head_since: None,
            body_since: None,
            completed: 0,
            busy: false,
            drain_started: None,
            shutdown_at: None,
        }
    }

    /// The earliest deadline and what to do then, after noting what changed.
    fn next(&mut self, state: &ConnState, limits: &super::Limits) -> Option<(Instant, Action)> {
        let busy = state.active.load(Relaxed) > 0;
        let completed = state.completed.load(Relaxed);
        if busy {
            self.busy = true;
        } else if self.busy || completed != self.completed {
            self.busy = false;
            self.completed = completed;
            self.idle_since = Instant::now();
            self.head_since = None;
        }
        let http2 = state.http2.load(Relaxed);
        // HTTP/2 sends frames (PING, SETTINGS) between requests: only idleness counts there.
        if !busy && !http2 && self.head_since.is_none() && state.head_started.load(Relaxed) {
            self.head_since = Some(Instant::now());
        }
        let receiving = state.receiving.load(Relaxed) > 0;
        if !receiving {
            self.body_since = None;
        } else if self.body_since.is_none() && !http2 {
            self.body_since = Some(Instant::now());
        }

        let mut next: Option<(Instant, Action)> = None;
        let mut consider = |deadline: Instant, action: Action| {
            if next.is_none_or(|(earliest, _)| deadline < earliest) {
                next = Some((deadline, action));
            }
        };
        if let Some(since) = self.body_since {
            if !state.body_expired.load(Relaxed) {
                consider(since + limits.body_timeout, Action::ExpireBody);
            }
        }
        match (self.drain_started, self.shutdown_at) {
            (Some(drain), shutdown) => {
                // After the linger only requests being handled keep the connection open (the
                // server's shutdown_timeout bounds them): an idle connection, or one still
                // sending a request's head or body, is closed.
                let linger_end = drain + DRAIN_LINGER;
                if !busy {
                    consider(linger_end, Action::Close("idle at shutdown"));
                } else if receiving {
                    consider(linger_end, Action::Close("body still arriving at shutdown"));
                } else if shutdown.is_none() {
                    consider(linger_end, Action::Shutdown);
                }
            }
            (None, Some(shutdown)) => {
                // Asked to close for idleness but still open: give it one more header_timeout.
                consider(
                    shutdown + limits.header_timeout,
                    Action::Close("did not close when idle"),
                );
            }
            (None, None) if !busy => {
                if completed == 0 {
                    // The first request is due within header_timeout of the connection.
                    consider(
                        self.accepted_at + limits.header_timeout,
                        Action::Close(HEADER_TIMEOUT),
                    );
                } else if let Some(head) = self.head_since {
                    consider(head + limits.header_timeout, Action::Close(HEADER_TIMEOUT));
                } else {
                    consider(self.idle_since + limits.idle_timeout, Action::Shutdown);
                }
            }
            (None, None) => {}
        }
        next
    }
}

/// The socket, noting when bytes arrive between requests.
struct WatchedIo {
    stream: TcpStream,
    state: Arc<ConnState>,
}

impl AsyncRead for WatchedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.stream).poll_read(cx, buf);
        if buf.filled().len() > before && self.state.active.load(Relaxed) == 0 {
            self.state.head_started.store(true, Relaxed);
        }
        result
    }
}

impl AsyncWrite for WatchedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// The router as hyper calls it on this connection.
#[derive(Clone)]
struct ConnService {
    router: axum::Router,
    state: Arc<ConnState>,
    shared: Arc<Shared>,
    peer: IpAddr,
}

type Answer =
    Either<Either<RouteFuture<Infallible>, DirectAnswer>, Ready<Result<Response, Infallible>>>;

impl hyper::service::Service<Request<Incoming>> for ConnService {
    type Response = Response;
    type Error = Infallible;
    type Future = Tracked<Answer>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let guard = ActiveRequest::enter(&self.state);
        let access = self
            .shared
            .access_log
            .as_ref()
            .and_then(|log| log.begin(&request, self.peer));
        let http1 = request.version() < Version::HTTP_2;
        if !http1 {
            self.state.http2.store(true, Relaxed);
        }
        if announces_too_large(&request, self.shared.limits.max_body_bytes) {
            tracing::warn!(
                "request announcing a body over {} bytes refused before reading it",
                self.shared.limits.max_body_bytes
            );
            let refusal = std::future::ready(Ok(crate::api::payload_too_large()));
            return Tracked {
                inner: Either::Right(refusal),
                guard,
                http1,
                access,
            };
        }
        let body_timeout = self.shared.limits.body_timeout;
        let request = request.map(|body| TimedBody::new(body, &self.state, body_timeout, !http1));
        let inner = match &self.shared.direct {
            Some(direct) if direct.matches(&request) => {
                Either::Right((direct.answer)(request.map(Body::new)))
            }
            _ => {
                let mut router = self.router.clone();
                Either::Left(tower_service::Service::call(&mut router, request))
            }
        };
        Tracked {
            inner: Either::Left(inner),
            guard,
            http1,
            access,
        }
    }
}

/// `Expect: 100-continue` with a Content-Length over `limit`: answering now spares reading it.
fn announces_too_large(request: &Request<Incoming>, limit: usize) -> bool {
    let headers = request.headers();
    let Some(expect) = headers.get(EXPECT) else {
        return false;
    };
    expect.as_bytes().eq_ignore_ascii_case(b"100-continue")
        && headers
            .get(CONTENT_LENGTH)
            .and_then(|length| length.to_str().ok()?.trim().parse::<u64>().ok())
            .is_some_and(|length| length > limit as u64)
}

/// Marks a request active from the service call until its response is produced.
struct ActiveRequest(Arc<ConnState>);

impl ActiveRequest {
    fn enter(state: &Arc<ConnState>) -> ActiveRequest {
        state.active.fetch_add(1, Relaxed);
        state.head_started.store(false, Relaxed);
        ActiveRequest(Arc::clone(state))
    }
}

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        self.0.completed.fetch_add(1, Relaxed);
        self.0.active.fetch_sub(1, Relaxed);
    }
}

pin_project_lite::pin_project! {
    /// A response future, counted as an active request while it runs, and access-logged
    /// when it is ready.
    pub struct Tracked<F> {
        #[pin]
        inner: F,
        guard: ActiveRequest,
        http1: bool,
        access: Option<crate::access_log::Pending>,
    }
}

impl<F: Future<Output = Result<Response, Infallible>>> Future for Tracked<F> {
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Ok(mut response) = ready!(this.inner.poll(cx));
        if *this.http1 && this.guard.0.draining.load(Relaxed) {
            // Stopping: the client learns not to send another request on this connection.
            response
                .headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        if let Some(access) = this.access.take() {
            access.finish(&response);
        }
        Poll::Ready(Ok(response))
    }
}
