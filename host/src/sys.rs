//! The few POSIX calls std does not offer, kept in one place: the file-descriptor limit,
//! descriptor inheritance across exec, pipes, the monotonic clock systemd wants, and the
//! local time and thread ids Python-style log formats show.
//!
//! They go through `libc`, which tokio and mio already pull into the build: using it directly
//! adds no crate, and each wrapper is a single call.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

fn check(result: libc::c_int) -> io::Result<libc::c_int> {
    if result == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(result)
    }
}

/// Raises the soft limit on open files to the hard limit (a server needs a descriptor per
/// connection; the common soft limit of 1024 is far too low). Returns the old and new soft limit.
pub fn raise_fd_limit() -> io::Result<(libc::rlim_t, libc::rlim_t)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct it is given.
    check(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) })?;
    let old = limit.rlim_cur;
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct.
        check(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) })?;
        limit = raised;
    }
    Ok((old, limit.rlim_cur))
}

/// Whether `fd` is an open descriptor of this process.
pub fn is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD only queries the descriptor table.
    unsafe { libc::fcntl(fd, libc::F_GETFD) != -1 }
}

/// Whether `fd` is a listening stream socket (what `accept` works on).
pub fn is_listening_stream(fd: RawFd) -> bool {
    let option = |name| {
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `value`.
        let result = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                name,
                (&mut value as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        (result == 0).then_some(value)
    };
    option(libc::SO_TYPE) == Some(libc::SOCK_STREAM) && option(libc::SO_ACCEPTCONN) == Some(1)
}

/// Sets or clears close-on-exec on `fd`.
///
/// Async-signal-safe (one fcntl pair), so it may run between fork and exec.
pub fn set_cloexec(fd: RawFd, close_on_exec: bool) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor number has no memory effects.
    let flags = check(unsafe { libc::fcntl(fd, libc::F_GETFD) })?;
    let flags = if close_on_exec {
        flags | libc::FD_CLOEXEC
    } else {
        flags & !libc::FD_CLOEXEC
    };
    // SAFETY: as above.
    check(unsafe { libc::fcntl(fd, libc::F_SETFD, flags) })?;
    Ok(())
}

/// A pipe, both ends close-on-exec: (read end, write end).
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [-1 as libc::c_int; 2];
    // SAFETY: pipe2 writes two descriptors into the array.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: both descriptors are fresh and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Takes ownership of an inherited descriptor number, after checking it is open, and marks it
/// close-on-exec so it leaks into no other child.
pub fn adopt_fd(fd: RawFd) -> io::Result<OwnedFd> {
    if fd < 3 || !is_open(fd) {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("descriptor {fd} is not open"),
        ));
    }
    set_cloexec(fd, true)?;
    // SAFETY: the descriptor is open and was handed to this process for it to own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// CLOCK_MONOTONIC in microseconds (what systemd's `MONOTONIC_USEC=` wants).
pub fn monotonic_usec() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the struct it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    (now.tv_sec as u64) * 1_000_000 + (now.tv_nsec as u64) / 1_000
}

/// The kernel's id of the calling thread (`%(thread)d` in a log format).
pub fn thread_id() -> i64 {
    // SAFETY: gettid has no preconditions.
    i64::from(unsafe { libc::gettid() })
}

/// `secs` (Unix time) in the local time zone, formatted with the `strftime` pattern `format`.
pub fn strftime_local(secs: u64, format: &std::ffi::CStr) -> String {
    let time = libc::time_t::try_from(secs).unwrap_or(libc::time_t::MAX);
    // SAFETY: an all-zero `tm` is a valid value for localtime_r to overwrite.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: localtime_r reads `time` and writes into `tm`, both valid for the call.
    if unsafe { libc::localtime_r(&time, &mut tm) }.is_null() {
        return String::new();
    }
    let mut buffer = [0u8; 256];
    // SAFETY: strftime writes at most `buffer.len()` bytes, NUL included, and returns how many
    // it wrote before the NUL (0 when the result does not fit).
    let written = unsafe {
        libc::strftime(
            buffer.as_mut_ptr().cast(),
            buffer.len(),
            format.as_ptr(),
            &tm,
        )
    };
    String::from_utf8_lossy(&buffer[..written]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn local_time_is_formatted() {
        let year = strftime_local(1_738_240_496, c"%Y");
        assert!(year == "2025" || year == "2024" || year == "2026", "{year}");
        assert_eq!(strftime_local(0, c"literal"), "literal");
        assert!(thread_id() > 0);
    }

    #[test]
    fn cloexec_round_trips() {
        let (read, _write) = pipe().unwrap();
        let fd = read.as_raw_fd();
        set_cloexec(fd, false).unwrap();
        // SAFETY: querying flags only.
        assert_eq!(
            unsafe { libc::fcntl(fd, libc::F_GETFD) } & libc::FD_CLOEXEC,
            0
        );
        set_cloexec(fd, true).unwrap();
        assert_ne!(
            unsafe { libc::fcntl(fd, libc::F_GETFD) } & libc::FD_CLOEXEC,
            0
        );
    }

    #[test]
    fn only_listening_stream_sockets_qualify() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(is_listening_stream(listener.as_raw_fd()));
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        assert!(!is_listening_stream(udp.as_raw_fd()));
        let (read, _write) = pipe().unwrap();
        assert!(!is_listening_stream(read.as_raw_fd()));
    }

    #[test]
    fn adopting_a_closed_descriptor_fails() {
        assert!(adopt_fd(987_654).is_err());
        assert!(adopt_fd(1).is_err());
    }

    #[test]
    fn fd_limit_is_raised_to_the_hard_limit() {
        let (_, new) = raise_fd_limit().unwrap();
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
        assert_eq!(limit.rlim_cur, limit.rlim_max);
        assert_eq!(new, limit.rlim_cur);
    }
}
