//! Binary upgrade without a failed request (SIGUSR2), as nginx does it.
//!
//! The running process starts the executable at its installed path (so a binary replaced on
//! disk is what runs), with the same arguments, passing its listening sockets as inherited
//! descriptors (named in `SYGNAL_LISTEN_FDS`) and the write end of a pipe (`SYGNAL_READY_FD`).
//! The new process loads its config and plugins, serves on the inherited sockets, and writes
//! `ready` to the pipe; only then does the old process stop accepting and drain. Connections
//! waiting in the kernel's queue are never lost: the queue belongs to the socket both
//! processes share, not to either process (unlike SO_REUSEPORT, where each process has its own
//! queue and closing one resets the connections queued on it).
//!
//! If the new process exits, or is not ready within `http.upgrade_timeout`, it is killed and
//! the old process keeps serving, logging why.

use crate::listeners::{HandoverSockets, UPGRADE_FDS_ENV};
use crate::sys;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::time::Instant;

/// Names the descriptor a new process reports readiness on.
pub const READY_FD_ENV: &str = "SYGNAL_READY_FD";

const READY: &[u8] = b"ready\n";

/// The executable as installed: the path the process was started by (`argv[0]`, made
/// absolute, symlinks kept), else the running image. Resolved at startup. A new binary
/// installed at that path (by rename, or by repointing a symlink such as
/// /usr/local/bin/sygnal -> /opt/sygnal-1.2/sygnal) is what an upgrade runs, whereas the
/// running image would still be the old file.
pub fn installed_executable() -> Result<PathBuf, String> {
    let invoked = std::env::args_os().next().map(PathBuf::from);
    let resolved = invoked.and_then(|path| {
        if path.components().count() > 1 {
            // Relative paths are relative to the directory the process started in.
            std::env::current_dir().ok().map(|dir| dir.join(path))
        } else {
            // A bare name was found on PATH.
            std::env::split_paths(&std::env::var_os("PATH")?)
                .map(|dir| dir.join(&path))
                .find(|candidate| candidate.is_file())
        }
    });
    match resolved {
        Some(path) => Ok(path),
        None => std::env::current_exe()
            .map_err(|err| format!("cannot find the sygnal executable: {err}")),
    }
}

/// Takes the readiness pipe a previous process passed, if it did (and clears the variable).
/// Must run before any other thread starts.
pub fn take_ready_pipe() -> Result<Option<OwnedFd>, String> {
    let Some(value) = std::env::var_os(READY_FD_ENV) else {
        return Ok(None);
    };
    std::env::remove_var(READY_FD_ENV);
    let fd: RawFd = value
        .to_str()
        .and_then(|value| value.parse().ok())
        .ok_or_else(|| format!("{READY_FD_ENV}: not a descriptor number"))?;
    sys::adopt_fd(fd)
        .map(Some)
        .map_err(|err| format!("{READY_FD_ENV}: {err}"))
}

/// Tells the previous process that this one serves: it may stop accepting now.
pub async fn report_ready(pipe: OwnedFd) -> Result<(), String> {
    let mut sender =
        pipe::Sender::from_owned_fd(pipe).map_err(|err| format!("readiness pipe: {err}"))?;
    sender
        .write_all(READY)
        .await
        .map_err(|err| format!("readiness pipe: {err}"))
}

/// A new process, started and not yet known to be ready.
pub struct Upgrade {
    child: Child,
    ready: pipe::Receiver,
    deadline: Instant,
}

impl Upgrade {
    /// Starts `executable` with this process's arguments, handing it `sockets`.
    pub fn start(
        executable: &Path,
        sockets: &HandoverSockets,
        timeout: Duration,
    ) -> Result<Upgrade, String> {
        let (read, write) = sys::pipe().map_err(|err| format!("cannot create a pipe: {err}"))?;
        let mut inherit = sockets.fds();
        inherit.push(write.as_raw_fd());
        let mut command = Command::new(executable);
        command
            .args(std::env::args_os().skip(1))
            .env(UPGRADE_FDS_ENV, sockets.env_value())
            .env(READY_FD_ENV, write.as_raw_fd().to_string())
            .stdin(Stdio::null());
        // SAFETY: between fork and exec the closure only calls fcntl (async-signal-safe) on
        // descriptor numbers from a vector built before the fork; it allocates nothing.
        unsafe {
            command.pre_exec(move || {
                for fd in &inherit {
                    sys::set_cloexec(*fd, false)?;
                }
                Ok(())
            });
        }
        let child = command
            .spawn()
            .map_err(|err| format!("cannot start {}: {err}", executable.display()))?;
        // Only the child holds the write end now: its exit closes the pipe.
        drop(write);
        let ready = match pipe::Receiver::from_owned_fd(read) {
            Ok(ready) => ready,
            Err(err) => {
                let mut child = child;
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("readiness pipe: {err}"));
            }
        };
        Ok(Upgrade {
            child,
            ready,
            deadline: Instant::now() + timeout,
        })
    }

    /// The new process's id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the new process to report ready. Cancel-safe: call it again after a
    /// cancellation. An error means the upgrade failed; pass it to [`Upgrade::abandon`].
    pub async fn ready(&mut self) -> Result<(), String> {
        let mut buf = [0u8; READY.len()];
        let mut filled = 0;
        loop {
            let read = tokio::select! {
                read = self.ready.read(&mut buf[filled..]) => read,
                _ = tokio::time::sleep_until(self.deadline) => {
                    return Err("not ready within http.upgrade_timeout".to_owned());
                }
            };
            match read {
                Ok(0) | Err(_) => return Err("exited before it was ready".to_owned()),
                Ok(n) => filled += n,
            }
            if filled == READY.len() {
                return if buf == READY {
                    Ok(())
                } else {
                    Err("reported something other than readiness".to_owned())
                };
            }
        }
    }

    /// Gives up on the new process: kills it if it still runs and reaps it. Returns how it
    /// ended, for the log.
    pub async fn abandon(mut self) -> String {
        // A process that just closed the pipe may still be exiting: give it a moment to report
        // its own exit status before killing it.
        for _ in 0..50 {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.to_string();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = self.child.kill();
        let status = tokio::task::spawn_blocking(move || self.child.wait()).await;
        match status {
            Ok(Ok(status)) => format!("killed ({status})"),
            _ => "killed".to_owned(),
        }
    }
}
