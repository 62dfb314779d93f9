//! The TCP layer under the HTTP client: hyper's connector, its sockets then lent to the host's
//! reactor (a [`HostStream`]) for the connections the client drives itself.
//!
//! A dispatch the host polls inline (see `sdk`) still waits on its upstream's answer; with the
//! socket registered in the plugin's own tokio, that answer wakes a plugin thread first, which
//! then wakes the host's task: two thread hand-overs per exchange. A [`HostStream`] is waited on
//! by the host's reactor, so the whole dispatch runs on the host's thread.

use crate::abi::{HostIo, IoErrorCode};
use abi_stable::std_types::{RResult, RSlice};
use async_ffi::{ContextExt, FfiPoll};
use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::io;
use std::os::fd::IntoRawFd;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tower_service::Service;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// hyper's TCP connector (`TCP_NODELAY`, any scheme: TLS is layered above), its connections
/// lent to the host when asked to and the host lends its reactor.
#[derive(Clone)]
pub(super) struct TcpConnector {
    tcp: HttpConnector,
    /// The host's socket functions, when its connections are lent to the host.
    host: Option<&'static HostIo>,
}

impl TcpConnector {
    pub(super) fn new(to_host: bool) -> TcpConnector {
        let mut tcp = HttpConnector::new();
        // The TLS layer above takes https:// URIs through this connector.
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        TcpConnector {
            tcp,
            host: crate::host_io::lent().filter(|_| to_host),
        }
    }
}

impl Service<Uri> for TcpConnector {
    type Response = TokioIo<Tcp>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<TokioIo<Tcp>, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.tcp.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let connecting = self.tcp.call(dst);
        let host = self.host;
        Box::pin(async move {
            let stream = connecting.await?.into_inner();
            let Some(io) = host else {
                return Ok(TokioIo::new(Tcp::Own(stream)));
            };
            let lent = HostStream::adopt(io, stream)
                .map_err(|err| format!("handing the connection to the host failed: {err}"))?;
            Ok(TokioIo::new(Tcp::Host(lent)))
        })
    }
}

/// A TCP connection: registered in this library's reactor, or lent to the host's.
pub(super) enum Tcp {
    Own(TcpStream),
    Host(HostStream),
}

impl Connection for Tcp {
    fn connected(&self) -> Connected {
        match self {
            Tcp::Own(stream) => stream.connected(),
            Tcp::Host(_) => Connected::new(),
        }
    }
}

impl AsyncRead for Tcp {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Tcp::Own(stream) => Pin::new(stream).poll_read(cx, buf),
            Tcp::Host(stream) => Pin::new(stream).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Tcp {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Tcp::Own(stream) => Pin::new(stream).poll_write(cx, buf),
            Tcp::Host(stream) => Pin::new(stream).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Tcp::Own(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
            Tcp::Host(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Tcp::Own(stream) => Pin::new(stream).poll_flush(cx),
            Tcp::Host(stream) => Pin::new(stream).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Tcp::Own(stream) => Pin::new(stream).poll_shutdown(cx),
            Tcp::Host(stream) => Pin::new(stream).poll_shutdown(cx),
        }
    }
}

/// A TCP connection owned by the host, read and written through [`HostIo`].
pub(super) struct HostStream {
    handle: usize,
    io: &'static HostIo,
}

impl HostStream {
    /// Hands a connected socket to the host.
    fn adopt(io: &'static HostIo, stream: TcpStream) -> io::Result<HostStream> {
        // Deregistered from this library's reactor; still non-blocking.
        let fd = stream.into_std()?.into_raw_fd();
        match (io.adopt)(fd) {
            RResult::ROk(handle) => Ok(HostStream { handle, io }),
            RResult::RErr(code) => Err(host_error(code)),
        }
    }
}

fn host_error(code: IoErrorCode) -> io::Error {
    if code == 0 {
        io::Error::other("the host's socket failed")
    } else {
        io::Error::from_raw_os_error(code)
    }
}

fn from_host<T>(poll: FfiPoll<RResult<T, IoErrorCode>>) -> Poll<io::Result<T>> {
    match poll {
        FfiPoll::Ready(result) => Poll::Ready(result.into_result().map_err(host_error)),
        FfiPoll::Pending => Poll::Pending,
        FfiPoll::Panicked => Poll::Ready(Err(io::Error::other("the host's socket panicked"))),
    }
}

impl AsyncRead for HostStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // SAFETY: the host only writes into the unfilled part, and reports how much it wrote.
        let unfilled = unsafe { buf.unfilled_mut() };
        let (ptr, len) = (unfilled.as_mut_ptr().cast::<u8>(), unfilled.len());
        let (handle, io) = (self.handle, self.io);
        // SAFETY: `ptr` and `len` describe writable memory borrowed for this call.
        let poll = cx.with_ffi_context(|cx| unsafe { (io.poll_read)(handle, cx, ptr, len) });
        let n = ready!(from_host(poll))?;
        // SAFETY: the host initialised the first `n` bytes.
        unsafe { buf.assume_init(n) };
        buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for HostStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        // Two buffers are what the callers write (a request's head and body); a write may
        // always take less than it is given.
        let mut nonempty = bufs.iter().filter(|buf| !buf.is_empty());
        let first = nonempty.next().map_or(&[][..], |buf| &buf[..]);
        let second = nonempty.next().map_or(&[][..], |buf| &buf[..]);
        let (handle, io) = (self.handle, self.io);
        let poll = cx.with_ffi_context(|cx| {
            (io.poll_write)(handle, cx, RSlice::from(first), RSlice::from(second))
        });
        from_host(poll)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // TCP has nothing buffered on this side.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(
            (self.io.shutdown_write)(self.handle)
                .into_result()
                .map_err(host_error),
        )
    }
}

impl Drop for HostStream {
    fn drop(&mut self) {
        (self.io.close)(self.handle);
    }
}
