//! The host's reactor, lent to plugin libraries ([`HostIo`]): a plugin hands over a connected
//! socket, and reads and writes it through these functions while the host's tokio waits on it.
//!
//! A dispatch the host polls then runs on the host's thread from request to answer: the
//! upstream's answer wakes the host's task directly, not a plugin thread that would wake it.

use abi_stable::std_types::{RResult, RSlice};
use async_ffi::{FfiContext, FfiPoll};
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::os::fd::FromRawFd;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll, Waker};
use sygnal_plugin_api::abi::{HostIo, IoErrorCode};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::runtime::Handle;

/// The functions every library is lent when it is loaded.
pub const HOST_IO: HostIo = HostIo {
    adopt,
    poll_read,
    poll_write,
    shutdown_write,
    close,
};

static RUNTIME: OnceLock<Handle> = OnceLock::new();

/// The runtime whose reactor adopts sockets handed over from a plugin's own threads (a
/// dispatch the host polls hands them over on a host thread, already inside it).
pub fn set_runtime(handle: Handle) {
    let _ = RUNTIME.set(handle);
}

fn code(err: &io::Error) -> IoErrorCode {
    err.raw_os_error().unwrap_or(0)
}

extern "C" fn adopt(fd: i32) -> RResult<usize, IoErrorCode> {
    // SAFETY: the plugin hands over a connected socket it owns and no longer uses; from here it
    // is closed by this `std` stream or the tokio one made of it.
    let socket = unsafe { std::net::TcpStream::from_raw_fd(fd) };
    let adopted = (|| {
        socket.set_nonblocking(true)?;
        let runtime = Handle::try_current()
            .ok()
            .or_else(|| RUNTIME.get().cloned());
        let Some(runtime) = runtime else {
            return Err(io::Error::other("no host runtime"));
        };
        let _entered = runtime.enter();
        TcpStream::from_std(socket)
    })();
    match adopted {
        Ok(stream) => RResult::ROk(Box::into_raw(Box::new(stream)) as usize),
        Err(err) => RResult::RErr(code(&err)),
    }
}

/// The stream behind a handle from [`adopt`].
///
/// # Safety
/// `handle` came from `adopt`, is not closed, and the plugin uses it from one call at a time
/// (its stream's methods take `&mut self`).
unsafe fn stream<'a>(handle: usize) -> Pin<&'a mut TcpStream> {
    Pin::new(&mut *(handle as *mut TcpStream))
}

fn ffi<T>(poll: Poll<io::Result<T>>) -> FfiPoll<RResult<T, IoErrorCode>> {
    match poll {
        Poll::Ready(Ok(value)) => FfiPoll::Ready(RResult::ROk(value)),
        Poll::Ready(Err(err)) => FfiPoll::Ready(RResult::RErr(code(&err))),
        Poll::Pending => FfiPoll::Pending,
    }
}

/// # Safety
/// As [`stream`]; `buf` and `len` describe writable memory, initialised or not.
unsafe extern "C" fn poll_read(
    handle: usize,
    cx: &mut FfiContext<'_>,
    buf: *mut u8,
    len: usize,
) -> FfiPoll<RResult<usize, IoErrorCode>> {
    let memory = std::slice::from_raw_parts_mut(buf.cast::<MaybeUninit<u8>>(), len);
    let mut read = ReadBuf::uninit(memory);
    cx.with_context(|cx| {
        ffi(stream(handle)
            .poll_read(cx, &mut read)
            .map_ok(|()| read.filled().len()))
    })
}

extern "C" fn poll_write(
    handle: usize,
    cx: &mut FfiContext<'_>,
    first: RSlice<'_, u8>,
    second: RSlice<'_, u8>,
) -> FfiPoll<RResult<usize, IoErrorCode>> {
    let parts = [IoSlice::new(&first), IoSlice::new(&second)];
    let parts = if second.is_empty() {
        &parts[..1]
    } else {
        &parts[..]
    };
    // SAFETY: the handle is the plugin's, used from one call at a time (see `stream`).
    cx.with_context(|cx| ffi(unsafe { stream(handle) }.poll_write_vectored(cx, parts)))
}

extern "C" fn shutdown_write(handle: usize) -> RResult<(), IoErrorCode> {
    // tokio shuts a TCP stream's writing half down at once, never `Pending`.
    let mut cx = Context::from_waker(Waker::noop());
    // SAFETY: as in `poll_write`.
    match unsafe { stream(handle) }.poll_shutdown(&mut cx) {
        Poll::Ready(Err(err)) => RResult::RErr(code(&err)),
        Poll::Ready(Ok(())) | Poll::Pending => RResult::ROk(()),
    }
}

extern "C" fn close(handle: usize) {
    // SAFETY: `handle` came from `adopt` and the plugin closes it once.
    drop(unsafe { Box::from_raw(handle as *mut TcpStream) });
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_ffi::ContextExt;
    use std::future::poll_fn;
    use std::os::fd::IntoRawFd;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A connected socket adopted through the table, and the peer's end.
    async fn adopted() -> (usize, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (ours, theirs) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let fd = ours.unwrap().into_std().unwrap().into_raw_fd();
        match (HOST_IO.adopt)(fd) {
            RResult::ROk(handle) => (handle, theirs.unwrap().0),
            RResult::RErr(code) => panic!("adopt failed: {code}"),
        }
    }

    async fn read(handle: usize, len: usize) -> Result<Vec<u8>, IoErrorCode> {
        let mut buf = vec![0u8; len];
        let n = poll_fn(|cx| {
            cx.with_ffi_context(|cx| {
                // SAFETY: `buf` is writable for its length, and outlives the call.
                match unsafe { (HOST_IO.poll_read)(handle, cx, buf.as_mut_ptr(), buf.len()) } {
                    FfiPoll::Ready(result) => Poll::Ready(result.into_result()),
                    FfiPoll::Pending => Poll::Pending,
                    FfiPoll::Panicked => panic!("poll_read panicked"),
                }
            })
        })
        .await?;
        buf.truncate(n);
        Ok(buf)
    }

    #[tokio::test]
    async fn a_lent_socket_is_read_written_shut_and_closed_through_the_table() {
        let (handle, mut peer) = adopted().await;
        // Two buffers, one vectored write.
        let written = poll_fn(|cx| {
            cx.with_ffi_context(|cx| {
                match (HOST_IO.poll_write)(handle, cx, b"head "[..].into(), b"body"[..].into()) {
                    FfiPoll::Ready(result) => Poll::Ready(result.into_result()),
                    FfiPoll::Pending => Poll::Pending,
                    FfiPoll::Panicked => panic!("poll_write panicked"),
                }
            })
        })
        .await;
        assert_eq!(written, Ok(9));
        let mut got = [0u8; 9];
        peer.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"head body");

        // A read waits (Pending, then woken by the host's reactor) for what the peer sends.
        let reading = tokio::spawn(async move { read(handle, 64).await.map(|buf| (handle, buf)) });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        peer.write_all(b"answer").await.unwrap();
        let (handle, answer) = reading.await.unwrap().unwrap();
        assert_eq!(answer, b"answer");

        assert_eq!(shutdown_write(handle), RResult::ROk(()));
        let mut rest = Vec::new();
        peer.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "the writing half is shut");
        peer.shutdown().await.unwrap();
        assert_eq!(read(handle, 64).await, Ok(Vec::new()), "end of stream");
        close(handle);
    }

    #[test]
    fn a_socket_is_refused_without_a_runtime_and_closed() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let ours = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut theirs, _) = listener.accept().unwrap();
        // No runtime on this thread, and none set for the process (only `serve` sets one).
        assert!(matches!(
            (HOST_IO.adopt)(ours.into_raw_fd()),
            RResult::RErr(_)
        ));
        let mut buf = [0u8; 1];
        assert_eq!(
            std::io::Read::read(&mut theirs, &mut buf).unwrap(),
            0,
            "closed"
        );
    }
}
