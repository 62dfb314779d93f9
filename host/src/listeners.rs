//! Where the listening sockets come from: handed over by systemd (socket activation,
//! `LISTEN_FDS`), inherited from the previous process in a binary upgrade (SIGUSR2), or bound
//! from the config.
//!
//! A socket that outlives the process is what makes restarts and upgrades lose no connection:
//! connections queue in the kernel while no process accepts, instead of being refused.

use crate::config::Config;
use crate::sys;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use tokio::net::TcpListener;

/// Set by the previous process in a binary upgrade: `FD:ROLE` pairs, comma-separated
/// (`7:api,8:api,9:metrics`).
pub const UPGRADE_FDS_ENV: &str = "SYGNAL_LISTEN_FDS";

/// What a listening socket serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The Push Gateway API.
    Api,
    /// Prometheus `/metrics`.
    Metrics,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Api => "api",
            Role::Metrics => "metrics",
        }
    }
}

/// Who passed the inherited sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// systemd socket activation.
    Systemd,
    /// The previous gateway process (binary upgrade).
    Upgrade,
}

/// Sockets received at startup, with the name their sender gave them (systemd's
/// `FileDescriptorName=`, or the role the previous process used them for).
pub struct Inherited {
    origin: Option<Origin>,
    sockets: Vec<(Option<String>, OwnedFd)>,
}

impl Inherited {
    /// Who passed the sockets, if anyone did.
    pub fn origin(&self) -> Option<Origin> {
        self.origin
    }
}

/// Takes the sockets passed by systemd or by the previous process and clears the variables
/// naming them, so that no child inherits them. Must run before any other thread starts (it
/// changes the environment).
pub fn take_inherited() -> Result<Inherited, String> {
    let upgrade = std::env::var(UPGRADE_FDS_ENV).ok();
    let systemd = systemd_fds();
    for name in [
        UPGRADE_FDS_ENV,
        "LISTEN_FDS",
        "LISTEN_PID",
        "LISTEN_FDNAMES",
    ] {
        std::env::remove_var(name);
    }
    if let Some(list) = upgrade {
        let mut sockets = Vec::new();
        for item in list.split(',').filter(|item| !item.is_empty()) {
            let (fd, role) = item.split_once(':').unwrap_or((item, ""));
            let fd: RawFd = fd
                .parse()
                .map_err(|_| format!("{UPGRADE_FDS_ENV}: `{item}` is not FD:ROLE"))?;
            sockets.push((Some(role.to_owned()), adopt_listener(fd)?));
        }
        return Ok(Inherited {
            origin: Some(Origin::Upgrade),
            sockets,
        });
    }
    if let Some((count, names)) = systemd {
        let mut sockets = Vec::new();
        for index in 0..count {
            let name = names.get(index).cloned();
            sockets.push((name, adopt_listener(3 + index as RawFd)?));
        }
        return Ok(Inherited {
            origin: Some(Origin::Systemd),
            sockets,
        });
    }
    Ok(Inherited {
        origin: None,
        sockets: Vec::new(),
    })
}

/// `LISTEN_FDS` meant for this process (sd_listen_fds(3)): the count and the names.
fn systemd_fds() -> Option<(usize, Vec<String>)> {
    let pid: u32 = std::env::var("LISTEN_PID").ok()?.parse().ok()?;
    if pid != std::process::id() {
        return None;
    }
    let count: usize = std::env::var("LISTEN_FDS").ok()?.parse().ok()?;
    let names = std::env::var("LISTEN_FDNAMES")
        .map(|names| names.split(':').map(str::to_owned).collect())
        .unwrap_or_default();
    Some((count, names))
}

fn adopt_listener(fd: RawFd) -> Result<OwnedFd, String> {
    let owned = sys::adopt_fd(fd).map_err(|err| format!("inherited socket {fd}: {err}"))?;
    if !sys::is_listening_stream(fd) {
        return Err(format!(
            "inherited descriptor {fd} is not a listening TCP socket"
        ));
    }
    Ok(owned)
}

/// The sockets the gateway serves on.
pub struct Listeners {
    /// The Push Gateway API.
    pub api: Vec<TcpListener>,
    /// Prometheus, when enabled.
    pub metrics: Option<TcpListener>,
    /// Duplicates of every listening socket, for handing over to a new process. Dropping them
    /// (with the listeners) closes the sockets.
    pub handover: HandoverSockets,
}

/// The listening sockets as a new process receives them in a binary upgrade.
pub struct HandoverSockets(Vec<(Role, OwnedFd)>);

impl HandoverSockets {
    /// The descriptor numbers to keep open across exec.
    pub fn fds(&self) -> Vec<RawFd> {
        self.0.iter().map(|(_, fd)| fd.as_raw_fd()).collect()
    }

    /// The value of [`UPGRADE_FDS_ENV`] describing them.
    pub fn env_value(&self) -> String {
        self.0
            .iter()
            .map(|(role, fd)| format!("{}:{}", fd.as_raw_fd(), role.name()))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Opens the listeners. Sockets from systemd are used as they are (the unit decides where the
/// gateway listens). Sockets from the previous process are kept where the config still names
/// their address, and closed otherwise (a binary upgrade is how a new `http.port` or
/// `metrics.prometheus.port` takes effect). Addresses the config names that no inherited socket
/// covers are bound.
pub async fn open(config: &Config, inherited: Inherited) -> Result<Listeners, String> {
    let prometheus = &config.metrics.prometheus;
    let wanted_api = addresses(&config.http.bind_addresses, config.http.port)?;
    let wanted_metrics = match prometheus.enabled {
        true => addresses(std::slice::from_ref(&prometheus.address), prometheus.port)
            .map_err(|err| format!("metrics.prometheus: {err}"))?,
        false => Vec::new(),
    };
    let upgraded = inherited.origin == Some(Origin::Upgrade);
    let mut api = Vec::new();
    let mut metrics = None;
    for (name, fd) in inherited.sockets {
        let listener = std::net::TcpListener::from(fd);
        let local = listener
            .local_addr()
            .map_err(|err| format!("inherited socket: {err}"))?;
        let role = match name.as_deref() {
            Some("metrics") => Role::Metrics,
            Some("api") => Role::Api,
            // systemd names sockets after their unit unless FileDescriptorName= says otherwise:
            // recognise the metrics socket by its port.
            _ if prometheus.enabled && local.port() == prometheus.port => Role::Metrics,
            _ => Role::Api,
        };
        let wanted = match role {
            Role::Api => wanted_api.contains(&local),
            Role::Metrics => wanted_metrics.contains(&local),
        };
        if upgraded && !wanted {
            tracing::info!(address = %local, "no longer listening here: the config does not name this address any more");
            continue;
        }
        let listener = to_tokio(listener)?;
        match role {
            Role::Metrics if !prometheus.enabled => {
                tracing::warn!(address = %local, "inherited metrics socket closed: metrics.prometheus is disabled");
            }
            Role::Metrics if metrics.is_some() => {
                tracing::warn!(address = %local, "a second inherited metrics socket is closed");
            }
            Role::Metrics => metrics = Some(listener),
            Role::Api => api.push(listener),
        }
    }
    if let Some(origin) = inherited.origin {
        let from = match origin {
            Origin::Systemd => "systemd",
            Origin::Upgrade => "the previous process",
        };
        let addresses: Vec<String> = api
            .iter()
            .chain(metrics.iter())
            .filter_map(|l| l.local_addr().ok().map(|a| a.to_string()))
            .collect();
        tracing::info!(from, sockets = %addresses.join(" "), "using inherited sockets");
    }
    if upgraded || api.is_empty() {
        let covered: Vec<SocketAddr> = api.iter().filter_map(|l| l.local_addr().ok()).collect();
        let missing: Vec<SocketAddr> = wanted_api
            .into_iter()
            .filter(|address| !covered.contains(address))
            .collect();
        if !missing.is_empty() {
            let (bound, errors) = bind(&missing).await;
            api.extend(bound);
            if api.is_empty() {
                return Err(format!("cannot listen: {}", errors.join("; ")));
            }
            for err in errors {
                tracing::warn!("cannot listen on {err}; serving on the other addresses");
            }
        }
    }
    if metrics.is_none() && !wanted_metrics.is_empty() {
        let (mut bound, errors) = bind(&wanted_metrics).await;
        metrics =
            Some(bound.pop().ok_or_else(|| {
                format!("metrics.prometheus: cannot listen: {}", errors.join("; "))
            })?);
    }
    let mut handover = Vec::new();
    for (role, listener) in api
        .iter()
        .map(|l| (Role::Api, l))
        .chain(metrics.iter().map(|l| (Role::Metrics, l)))
    {
        let duplicate = listener
            .as_fd()
            .try_clone_to_owned()
            .map_err(|err| format!("cannot duplicate a listening socket: {err}"))?;
        handover.push((role, duplicate));
    }
    Ok(Listeners {
        api,
        metrics,
        handover: HandoverSockets(handover),
    })
}

/// `addresses` (IP addresses, as the config has them) on `port`.
pub fn addresses(addresses: &[String], port: u16) -> Result<Vec<SocketAddr>, String> {
    addresses
        .iter()
        .map(|address| {
            address
                .parse::<IpAddr>()
                .map(|ip| SocketAddr::new(ip, port))
                .map_err(|_| format!("`{address}` is not an IP address"))
        })
        .collect()
}

fn to_tokio(listener: std::net::TcpListener) -> Result<TcpListener, String> {
    listener
        .set_nonblocking(true)
        .and_then(|()| TcpListener::from_std(listener))
        .map_err(|err| format!("inherited socket: {err}"))
}

/// Binds what it can of `addresses`: the listeners, and why the others failed.
async fn bind(addresses: &[SocketAddr]) -> (Vec<TcpListener>, Vec<String>) {
    let mut listeners = Vec::new();
    let mut errors = Vec::new();
    for address in addresses {
        match TcpListener::bind(address).await {
            Ok(listener) => listeners.push(listener),
            Err(err) => errors.push(format!("{address}: {err}")),
        }
    }
    (listeners, errors)
}
