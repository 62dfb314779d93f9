//! The serving process from start to exit: listeners and HTTP servers up, readiness announced
//! (systemd, the previous process, the pid file), then signals until the process stops:
//!
//! - SIGHUP: reopen the log file and reload the configuration ([`on_sighup`]);
//! - SIGUSR2: start the installed binary and hand it the listening sockets ([`crate::upgrade`]);
//! - SIGTERM/SIGINT: stop accepting, drain within `http.shutdown_timeout`, exit 0. A second
//!   SIGTERM or SIGINT during the drain exits at once (status 1).

use crate::access_log::AccessLog;
use crate::api::{self, AppState};
use crate::apps::AppTable;
use crate::config::Config;
use crate::listeners::{self, HandoverSockets, Inherited, Origin};
use crate::reload::Reloader;
use crate::server::{Limits, Server};
use crate::upgrade::{self, Upgrade};
use crate::{code_pages, log_file, sys, systemd};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{signal, Signal, SignalKind};

/// What the process received from whoever started it. Taken before any thread starts.
pub struct Startup {
    inherited: Inherited,
    ready_pipe: Option<OwnedFd>,
    executable: PathBuf,
    pid_file: Option<PathBuf>,
    fd_limit: Result<(libc::rlim_t, libc::rlim_t), String>,
}

impl Startup {
    /// Takes the inherited sockets and readiness pipe (clearing the variables naming them, so
    /// it must run before any other thread starts), and raises the open-files limit.
    pub fn take(pid_file: Option<PathBuf>) -> Result<Startup, String> {
        Ok(Startup {
            inherited: listeners::take_inherited()?,
            ready_pipe: upgrade::take_ready_pipe()?,
            executable: upgrade::installed_executable()?,
            pid_file,
            fd_limit: sys::raise_fd_limit().map_err(|err| err.to_string()),
        })
    }
}

/// Serves `state` until a signal stops the process; `reloader` reloads on SIGHUP.
pub async fn run(
    config: Config,
    state: Arc<AppState>,
    reloader: Arc<Reloader>,
    startup: Startup,
) -> Result<(), String> {
    // First: the default action of SIGHUP and SIGUSR2 would end the process.
    let mut signals = Signals::new()?;
    let upgraded = startup.inherited.origin() == Some(Origin::Upgrade);
    let listeners = listeners::open(&config, startup.inherited).await?;
    let limits = Limits::new(
        &config.http,
        api::MAX_BODY_BYTES,
        fd_limit(&startup.fd_limit),
    );
    let access_log = AccessLog {
        x_forwarded_for: config.log.access.x_forwarded_for,
    };
    let servers = Servers::start(listeners.api, listeners.metrics, &state, limits, access_log);
    announce_ready(startup.pid_file.as_deref(), startup.ready_pipe, upgraded).await?;
    release_startup_code();

    let handed_over = serve_until_stopped(
        &mut signals,
        &reloader,
        &listeners.handover,
        &startup.executable,
        &config,
    )
    .await;
    match handed_over {
        Some(pid) => tracing::info!(
            new_pid = pid,
            "the new process serves: no new connections here, finishing those in flight"
        ),
        None => {
            systemd::stopping();
            tracing::info!("shutting down: no new connections, finishing requests in flight");
        }
    }
    // Unless another process holds the listening sockets, new connections are refused from
    // now on instead of queueing.
    drop(listeners.handover);
    let grace = Duration::from_secs_f64(config.http.shutdown_timeout);
    if !servers.drain(grace, &mut signals).await {
        remove_pid_file(startup.pid_file.as_deref());
        std::process::exit(1);
    }
    // Close every pushkin before the libraries' runtimes stop.
    state.apps.store(Arc::new(AppTable::default()));
    crate::sentry::flush(crate::sentry::FLUSH_TIMEOUT).await;
    remove_pid_file(startup.pid_file.as_deref());
    tracing::info!("stopped");
    Ok(())
}

/// SIGHUP: the one place a reload happens. Reopens the log file (logrotate's `postrotate`
/// may send it) and reloads the configuration (a failed reload changes nothing, and says so).
async fn on_sighup(reloader: &Arc<Reloader>) {
    systemd::reloading();
    log_file::reopen();
    tracing::info!("SIGHUP received: log file reopened");
    drop(reloader.reload().await);
    release_startup_code();
    systemd::ready();
}

/// Unmaps the code that loading and constructing ran (see [`code_pages`]).
fn release_startup_code() {
    match code_pages::release() {
        Ok(released) => tracing::debug!(
            mappings = released.mappings,
            resident_kib = released.resident_kib,
            "code pages used to start released"
        ),
        Err(err) => tracing::debug!(error = %err, "cannot read /proc/self/smaps"),
    }
}

/// Serves, reacting to signals, until SIGTERM/SIGINT (`None`) or until a new process started
/// by SIGUSR2 is ready (`Some(its pid)`).
async fn serve_until_stopped(
    signals: &mut Signals,
    reloader: &Arc<Reloader>,
    sockets: &HandoverSockets,
    executable: &Path,
    config: &Config,
) -> Option<u32> {
    let mut pending: Option<Upgrade> = None;
    loop {
        tokio::select! {
            received = signals.next() => match received {
                Received::Hangup => on_sighup(reloader).await,
                Received::UserDefined2 => match &pending {
                    Some(upgrade) => tracing::warn!(
                        pid = upgrade.pid(),
                        "SIGUSR2 ignored: an upgrade is already in progress"
                    ),
                    None => {
                        let timeout = Duration::from_secs_f64(config.http.upgrade_timeout);
                        match Upgrade::start(executable, sockets, timeout) {
                            Ok(upgrade) => {
                                tracing::info!(pid = upgrade.pid(), executable = %executable.display(), "SIGUSR2 received: new process started; serving until it is ready");
                                pending = Some(upgrade);
                            }
                            Err(err) => {
                                tracing::error!(error = %err, "binary upgrade failed; still serving");
                            }
                        }
                    }
                },
                Received::Stop(name) => {
                    tracing::info!("{name} received");
                    if let Some(upgrade) = pending.take() {
                        let pid = upgrade.pid();
                        let ended = upgrade.abandon().await;
                        tracing::warn!(pid, %ended, "binary upgrade abandoned: stopping");
                    }
                    return None;
                }
            },
            outcome = ready_or_never(&mut pending) => {
                let Some(upgrade) = pending.take() else { continue };
                let pid = upgrade.pid();
                match outcome {
                    Ok(()) => {
                        // The new process said so too; from the main process systemd takes
                        // it whatever NotifyAccess is.
                        systemd::main_pid(pid);
                        return Some(pid);
                    }
                    Err(reason) => {
                        let ended = upgrade.abandon().await;
                        tracing::error!(pid, %ended, "binary upgrade failed: the new process {reason}; still serving (its own output says why)");
                    }
                }
            }
        }
    }
}

async fn ready_or_never(pending: &mut Option<Upgrade>) -> Result<(), String> {
    match pending {
        Some(upgrade) => upgrade.ready().await,
        None => std::future::pending().await,
    }
}

/// Tells whoever waits that this process serves: the pid file, systemd, and the previous
/// process (last: it stops accepting once told).
async fn announce_ready(
    pid_file: Option<&Path>,
    ready_pipe: Option<OwnedFd>,
    upgraded: bool,
) -> Result<(), String> {
    if let Some(path) = pid_file {
        write_pid_file(path)?;
    }
    if upgraded {
        tracing::info!(
            pid = std::process::id(),
            "took over from the previous process"
        );
        systemd::ready_as_main_process();
    } else {
        systemd::ready();
    }
    if let Some(pipe) = ready_pipe {
        if let Err(err) = upgrade::report_ready(pipe).await {
            tracing::warn!(error = %err, "cannot tell the previous process this one is ready");
        }
    }
    Ok(())
}

/// The API server and the metrics server.
struct Servers {
    api: Server,
    metrics: Option<Server>,
}

impl Servers {
    fn start(
        api: Vec<tokio::net::TcpListener>,
        metrics: Option<tokio::net::TcpListener>,
        state: &Arc<AppState>,
        limits: Limits,
        access_log: AccessLog,
    ) -> Servers {
        for listener in &api {
            tracing::info!(address = ?listener.local_addr().ok(), "push gateway listening");
        }
        let router = api::router(Arc::clone(state));
        let direct = api::direct_notify(Arc::clone(state));
        let api = Server::start(
            "api",
            api,
            router,
            Some(direct),
            limits.clone(),
            Some(access_log),
        );
        let metrics = metrics.map(|listener| {
            tracing::info!(address = ?listener.local_addr().ok(), "prometheus metrics listening");
            Server::start(
                "metrics",
                vec![listener],
                api::metrics_router(),
                None,
                limits,
                None,
            )
        });
        Servers { api, metrics }
    }

    /// Stops accepting and waits for the connections to finish, at most `grace`. False if a
    /// second SIGTERM or SIGINT asked not to wait.
    async fn drain(&self, grace: Duration, signals: &mut Signals) -> bool {
        let servers = || std::iter::once(&self.api).chain(self.metrics.as_ref());
        for server in servers() {
            server.shutdown();
        }
        let closed = async {
            for server in servers() {
                server.closed().await;
            }
        };
        tokio::select! {
            _ = closed => true,
            _ = tokio::time::sleep(grace) => {
                tracing::warn!(
                    seconds = grace.as_secs_f64(),
                    connections = self.api.open_connections(),
                    "requests still in flight after http.shutdown_timeout; exiting anyway"
                );
                true
            }
            name = signals.next_stop() => {
                tracing::warn!(connections = self.api.open_connections(), "{name} received again: exiting without waiting");
                false
            }
        }
    }
}

/// The open-files limit in force, logging how startup changed it.
fn fd_limit(raised: &Result<(libc::rlim_t, libc::rlim_t), String>) -> Option<libc::rlim_t> {
    match raised {
        Ok((old, new)) => {
            if new > old {
                tracing::info!(from = old, to = new, "open-files limit raised");
            }
            Some(*new)
        }
        Err(err) => {
            tracing::warn!(error = %err, "cannot read or raise the open-files limit");
            None
        }
    }
}

enum Received {
    Hangup,
    UserDefined2,
    Stop(&'static str),
}

struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
    usr2: Signal,
}

impl Signals {
    fn new() -> Result<Signals, String> {
        let listen = |kind| signal(kind).map_err(|err| format!("cannot handle signals: {err}"));
        Ok(Signals {
            term: listen(SignalKind::terminate())?,
            int: listen(SignalKind::interrupt())?,
            hup: listen(SignalKind::hangup())?,
            usr2: listen(SignalKind::user_defined2())?,
        })
    }

    async fn next(&mut self) -> Received {
        tokio::select! {
            _ = self.term.recv() => Received::Stop("SIGTERM"),
            _ = self.int.recv() => Received::Stop("SIGINT"),
            _ = self.hup.recv() => Received::Hangup,
            _ = self.usr2.recv() => Received::UserDefined2,
        }
    }

    async fn next_stop(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

/// Writes this process's id to `path` (atomically: a reader sees the old or the new id).
fn write_pid_file(path: &Path) -> Result<(), String> {
    let temporary = path.with_extension(format!("{}.tmp", std::process::id()));
    std::fs::write(&temporary, format!("{}\n", std::process::id()))
        .and_then(|()| std::fs::rename(&temporary, path))
        .map_err(|err| format!("--pid-file {}: {err}", path.display()))
}

/// Removes the pid file, unless another process (a successor) has written its id there.
fn remove_pid_file(path: Option<&Path>) {
    let Some(path) = path else {
        return;
    };
    let ours = std::fs::read_to_string(path)
        .is_ok_and(|text| text.trim() == std::process::id().to_string());
    if ours {
        let _ = std::fs::remove_file(path);
    }
}
