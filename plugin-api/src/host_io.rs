//! The host's reactor, when the host lends it ([`HostIo`]): the SDK then polls dispatches on
//! the host's thread, and the HTTP client's own HTTP/1.1 connections lend it their sockets
//! (`http::tcp::HostStream`).

use crate::abi::HostIo;
use std::sync::OnceLock;

static HOST_IO: OnceLock<HostIo> = OnceLock::new();

/// `PluginMod::attach_host_io`: the host lends its reactor (once, before the first `new`).
pub(crate) extern "C" fn attach(io: HostIo) {
    let _ = HOST_IO.set(io);
}

/// The host's socket functions, once lent. Dispatches are then polled on the host's thread.
pub(crate) fn lent() -> Option<&'static HostIo> {
    HOST_IO.get()
}
