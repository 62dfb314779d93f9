//! Telling systemd (`Type=notify`) what the gateway is doing: a datagram to `$NOTIFY_SOCKET`,
//! as sd_notify(3) sends it. Without `$NOTIFY_SOCKET` every call is a no-op.
//!
//! `NOTIFY_SOCKET` stays in the environment on purpose: a process started by a binary upgrade
//! inherits it and announces itself as the new main process (`MAINPID=`), which systemd accepts
//! only with `NotifyAccess=all`.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::OnceLock;

fn target() -> Option<&'static SocketAddr> {
    static TARGET: OnceLock<Option<SocketAddr>> = OnceLock::new();
    TARGET
        .get_or_init(|| {
            let path = std::env::var_os("NOTIFY_SOCKET")?;
            let bytes = path.as_encoded_bytes();
            let address = match bytes.strip_prefix(b"@") {
                // An abstract socket: systemd writes the leading NUL as '@'.
                Some(name) => SocketAddr::from_abstract_name(name),
                None => SocketAddr::from_pathname(&path),
            };
            match address {
                Ok(address) => Some(address),
                Err(err) => {
                    tracing::warn!(error = %err, "NOTIFY_SOCKET is not a usable socket address");
                    None
                }
            }
        })
        .as_ref()
}

fn notify(state: &str) {
    let Some(address) = target() else {
        return;
    };
    let sent =
        UnixDatagram::unbound().and_then(|socket| socket.send_to_addr(state.as_bytes(), address));
    if let Err(err) = sent {
        tracing::warn!(error = %err, state, "cannot notify systemd");
    }
}

/// Serving: startup is complete, or a reload finished.
pub fn ready() {
    notify("READY=1");
}

/// Serving, as the process that took over from the previous one (binary upgrade).
pub fn ready_as_main_process() {
    notify(&format!("MAINPID={}\nREADY=1", std::process::id()));
}

/// The service's main process is now `pid` (sent by the previous one after an upgrade).
pub fn main_pid(pid: u32) {
    notify(&format!("MAINPID={pid}"));
}

/// A reload (SIGHUP) started; [`ready`] ends it.
pub fn reloading() {
    notify(&format!(
        "RELOADING=1\nMONOTONIC_USEC={}",
        crate::sys::monotonic_usec()
    ));
}

/// Shutting down (not sent when handing over to a new process: the service goes on).
pub fn stopping() {
    notify("STOPPING=1");
}
