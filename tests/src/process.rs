//! Process lifecycle helpers: processes the tests did not start as their own child (a gateway
//! started by a binary upgrade, a script), killed when the test ends however it ends; raw HTTP
//! over TCP for what a well-behaved client never does.

use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A process known by its id, SIGKILLed on drop unless it is already gone.
pub struct ProcessGuard {
    pid: u32,
}

impl ProcessGuard {
    /// Guards `pid`.
    pub fn new(pid: u32) -> ProcessGuard {
        ProcessGuard { pid }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Sends `signal` (e.g. `libc::SIGTERM`).
    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill has no memory effects.
        unsafe { libc::kill(self.pid as libc::pid_t, signal) };
    }
}

impl Drop for ProcessGuard {
    fn drop(&mut self) {
        if process_alive(self.pid) {
            self.signal(libc::SIGKILL);
        }
    }
}

/// Whether a process with this id exists (and is not a zombie).
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name; Z is a zombie, X dead.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Waits until `pid` is gone.
pub async fn wait_gone(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if !process_alive(pid) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    !process_alive(pid)
}

/// Waits until the file at `path` holds a process id other than `not`, and returns it.
pub async fn wait_for_pid_file(path: &std::path::Path, not: u32, timeout: Duration) -> Option<u32> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let pid = std::fs::read_to_string(path)
            .ok()
            .and_then(|text| text.trim().parse::<u32>().ok());
        if let Some(pid) = pid.filter(|pid| *pid != not) {
            return Some(pid);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// A raw TCP connection to a loopback port.
pub async fn connect(port: u16) -> TcpStream {
    TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect")
}

/// Writes `bytes`; false if the peer had closed.
pub async fn send(stream: &mut TcpStream, bytes: &[u8]) -> bool {
    stream.write_all(bytes).await.is_ok()
}

/// Reads until the peer closes the connection (EOF or reset) or `timeout` passes: what was
/// read, and whether the connection was closed.
pub async fn read_until_closed(stream: &mut TcpStream, timeout: Duration) -> (Vec<u8>, bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut received = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return (received, false),
            Ok(Ok(0)) | Ok(Err(_)) => return (received, true),
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
        }
    }
}

/// Reads one response head (through the blank line), or None if the connection closed or
/// `timeout` passed first.
pub async fn read_head(stream: &mut TcpStream, timeout: Duration) -> Option<String> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut received = Vec::new();
    let mut byte = [0u8; 1];
    while !received.ends_with(b"\r\n\r\n") {
        match tokio::time::timeout_at(deadline, stream.read(&mut byte)).await {
            Ok(Ok(1)) => received.push(byte[0]),
            _ => return None,
        }
    }
    Some(String::from_utf8_lossy(&received).into_owned())
}
