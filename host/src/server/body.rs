//! Request bodies: they must arrive whole within `http.body_timeout` of their headers, and
//! the memory they take while arriving is bounded.
//!
//! An HTTP/1.1 connection receives one body at a time: its connection's watchdog keeps the
//! deadline and wakes the body when it passes, so a body costs no timer of its own. HTTP/2
//! streams overlap, so each body still arriving when first read gets its own (inline) timer.
//!
//! Memory: a body's first [`FREE_BODY_BYTES`] are always accepted (push notifications are a
//! few KiB); beyond that, bodies being received draw on one budget per server,
//! `http.body_buffer_bytes`. A body that would exceed it fails with [`BodyRefused::Memory`]
//! (503: retry later). So stalled uploads can hold at most `max_connections` x 64 KiB plus
//! the budget, however many there are.

use super::connection::ConnState;
use hyper::body::{Body as HttpBody, Bytes, Frame, Incoming, SizeHint};
use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

/// Bytes of each body accepted without drawing on the server's body budget.
pub const FREE_BODY_BYTES: usize = 64 * 1024;

/// Why a request body was not received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyRefused {
    /// Not received whole within `http.body_timeout`: 408.
    Timeout,
    /// The server's `http.body_buffer_bytes` are taken by other bodies: 503.
    Memory,
}

impl std::fmt::Display for BodyRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BodyRefused::Timeout => "request body not received within http.body_timeout",
            BodyRefused::Memory => {
                "too many large request bodies being received at once (http.body_buffer_bytes)"
            }
        })
    }
}

impl StdError for BodyRefused {}

/// The [`BodyRefused`] that `err` is or was caused by, if any.
pub fn refusal(err: &(dyn StdError + 'static)) -> Option<BodyRefused> {
    let mut current = Some(err);
    while let Some(err) = current {
        if let Some(refused) = err.downcast_ref::<BodyRefused>() {
            return Some(*refused);
        }
        current = err.source();
    }
    None
}

/// The memory bodies being received may take beyond their first [`FREE_BODY_BYTES`], shared
/// by a server's connections.
pub(super) struct BodyBudget {
    available: AtomicUsize,
}

impl BodyBudget {
    pub(super) fn new(bytes: usize) -> BodyBudget {
        BodyBudget {
            available: AtomicUsize::new(bytes),
        }
    }

    fn take(&self, bytes: usize) -> bool {
        self.available
            .fetch_update(AcqRel, Acquire, |available| available.checked_sub(bytes))
            .is_ok()
    }

    fn give_back(&self, bytes: usize) {
        self.available.fetch_add(bytes, AcqRel);
    }
}

/// A body still arriving: counted by its connection, holding its share of the budget until it
/// ends or is dropped.
struct Receiving {
    state: Arc<ConnState>,
    received: usize,
    charged: usize,
}

impl Receiving {
    /// Accounts for `bytes` more; false if the budget cannot take them.
    fn admit(&mut self, bytes: usize) -> bool {
        self.received += bytes;
        let over = self.received.saturating_sub(FREE_BODY_BYTES) - self.charged;
        if over == 0 {
            return true;
        }
        if !self.state.budget.take(over) {
            return false;
        }
        self.charged += over;
        true
    }
}

impl Drop for Receiving {
    fn drop(&mut self) {
        if self.charged > 0 {
            self.state.budget.give_back(self.charged);
        }
        self.state.receiving.fetch_sub(1, Relaxed);
    }
}

pin_project_lite::pin_project! {
    /// A request body that fails with [`BodyTimeout`] unless it ends by its deadline.
    pub struct TimedBody {
        #[pin]
        inner: Incoming,
        receiving: Option<Receiving>,
        // HTTP/2 only: this stream's deadline, and its timer once a read had to wait.
        stream_deadline: Option<Instant>,
        #[pin]
        stream_timer: Option<Sleep>,
    }
}

impl TimedBody {
    /// Wraps the body of a request that just arrived on the connection `state` describes.
    pub(super) fn new(
        inner: Incoming,
        state: &Arc<ConnState>,
        timeout: Duration,
        http2: bool,
    ) -> TimedBody {
        let complete = inner.is_end_stream();
        let receiving = (!complete).then(|| {
            if !http2 {
                state.body_expired.store(false, Relaxed);
            }
            state.receiving.fetch_add(1, Relaxed);
            Receiving {
                state: Arc::clone(state),
                received: 0,
                charged: 0,
            }
        });
        TimedBody {
            inner,
            receiving,
            stream_deadline: (!complete && http2).then(|| Instant::now() + timeout),
            stream_timer: None,
        }
    }
}

impl HttpBody for TimedBody {
    type Data = Bytes;
    type Error = Box<dyn StdError + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let mut this = self.project();
        if let Poll::Ready(frame) = this.inner.as_mut().poll_frame(cx) {
            let bytes = match &frame {
                Some(Ok(frame)) => frame.data_ref().map_or(0, Bytes::len),
                _ => 0,
            };
            if let Some(receiving) = this.receiving.as_mut() {
                if !receiving.admit(bytes) {
                    receiving.state.bodies_refused.fetch_add(1, Relaxed);
                    *this.receiving = None;
                    return Poll::Ready(Some(Err(Box::new(BodyRefused::Memory))));
                }
            }
            if frame.is_none() || this.inner.is_end_stream() {
                *this.receiving = None;
            }
            return Poll::Ready(frame.map(|frame| frame.map_err(Into::into)));
        }
        let Some(receiving) = this.receiving.as_ref() else {
            return Poll::Pending;
        };
        let expired = match *this.stream_deadline {
            Some(deadline) => {
                if this.stream_timer.is_none() {
                    this.stream_timer
                        .set(Some(tokio::time::sleep_until(deadline)));
                }
                this.stream_timer
                    .as_pin_mut()
                    .is_some_and(|timer| timer.poll(cx).is_ready())
            }
            None => {
                // Register first, then look: the watchdog sets the flag, then wakes.
                receiving.state.body_waker.register(cx.waker());
                receiving.state.body_expired.load(Relaxed)
            }
        };
        if !expired {
            return Poll::Pending;
        }
        receiving.state.bodies_timed_out.fetch_add(1, Relaxed);
        *this.receiving = None;
        Poll::Ready(Some(Err(Box::new(BodyRefused::Timeout))))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
