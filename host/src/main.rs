//! `sygnal`: a Matrix Push Gateway whose push providers are plugins.
//!
//! The host reads top-down: [`config`] -> plugin [`registry`] -> [`apps`] (the routing table)
//! -> [`api`] (HTTP) -> [`dispatch`] -> the response.

mod api;
mod apps;
mod config;
mod dispatch;
mod log_file;
mod logging;
mod metrics;
mod notify;
mod registry;

use abi_stable::std_types::RString;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use sygnal_plugin_api::abi::HostCtx;
use sygnal_plugin_api::HostInfo;
use tokio::net::TcpListener;
use tokio::sync::watch;

const USAGE: &str = "\
usage: sygnal [--config PATH] [COMMAND]

Commands:
  serve     run the push gateway (default)
  check     validate the config and construct every app's pushkin, then exit
  plugins   list the plugin libraries found in the search path

The config is read from --config PATH, else $SYGNAL_CONF, else ./sygnal.yaml.";

enum Command {
    Serve,
    Check,
    Plugins,
}

struct Args {
    config: Option<PathBuf>,
    command: Command,
}

fn parse_args() -> Result<Option<Args>, String> {
    let mut config = None;
    let mut command = None;
    let mut args = std::env::args_os().skip(1);
    while let Some(arg) = args.next() {
        let arg = arg.to_string_lossy().into_owned();
        match arg.as_str() {
            "-h" | "--help" => return Ok(None),
            "-V" | "--version" => {
                println!("sygnal {}", env!("CARGO_PKG_VERSION"));
                std::process::exit(0);
            }
            "-c" | "--config" => {
                let path = args.next().ok_or("--config needs a path")?;
                config = Some(PathBuf::from(path));
            }
            _ if arg.starts_with("--config=") => {
                config = Some(PathBuf::from(&arg["--config=".len()..]));
            }
            "serve" | "check" | "plugins" if command.is_none() => {
                command = Some(match arg.as_str() {
                    "serve" => Command::Serve,
                    "check" => Command::Check,
                    _ => Command::Plugins,
                });
            }
            other => return Err(format!("unexpected argument `{other}`")),
        }
    }
    Ok(Some(Args {
        config,
        command: command.unwrap_or(Command::Serve),
    }))
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(Some(args)) => args,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(err) => {
            eprintln!("sygnal: {err}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let result = match args.command {
        Command::Plugins => list_plugins(args.config),
        Command::Check => check(args.config),
        Command::Serve => serve(args.config),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("sygnal: {err}");
            ExitCode::FAILURE
        }
    }
}

fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

fn host_ctx(
    config: &config::Config,
    proxy: Option<String>,
    level: tracing::level_filters::LevelFilter,
) -> Result<HostCtx, String> {
    let info = HostInfo {
        host_version: env!("CARGO_PKG_VERSION").to_owned(),
        proxy,
        extra_root_certs: std::env::var_os("SSL_CERT_FILE")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .into_iter()
            .collect(),
        user_agent: format!("sygnal/{}", env!("CARGO_PKG_VERSION")),
        // Host and plugin runtimes share the cores; an idle runtime costs nothing.
        worker_threads: config
            .plugins
            .worker_threads
            .unwrap_or_else(|| (cores() / 2).max(1)),
    };
    let host_info_json = serde_json::to_string(&info).map_err(|err| err.to_string())?;
    Ok(HostCtx {
        log: logging::plugin_log_sink,
        max_log_level: logging::plugin_max_level(level),
        metric: metrics::plugin_metric_sink,
        host_info_json: RString::from(host_info_json),
    })
}

/// Loads config, logging and every app. Shared by `serve` and `check`.
fn start(
    config_path: Option<PathBuf>,
) -> Result<(config::Config, apps::AppTable, registry::PluginRegistry), String> {
    let path = config::config_path(config_path);
    let loaded =
        config::load(&path).map_err(|err| format!("config error in {}: {err}", path.display()))?;
    let level = logging::init(&loaded.config.log).map_err(|err| format!("config error: {err}"))?;
    for warning in &loaded.warnings {
        tracing::warn!("{warning}");
    }
    let proxy = config::effective_proxy(&loaded.config);
    if let Some(proxy) = &proxy {
        tracing::info!(proxy = %sygnal_plugin_api::redact_url_credentials(proxy), "outbound connections use a proxy");
    }
    let plugins = registry::PluginRegistry::new(&loaded.config.plugins.dirs);
    let ctx = host_ctx(&loaded.config, proxy, level)?;
    let table = apps::build(&loaded.apps, &plugins, &ctx)?;
    for app in table.apps() {
        let library = app.library();
        tracing::info!(app = %app.id, kind = %app.kind, version = %library.version, path = %library.path.display(), "app ready");
    }
    Ok((loaded.config, table, plugins))
}

fn check(config_path: Option<PathBuf>) -> Result<(), String> {
    let (_, table, plugins) = start(config_path)?;
    let count = table.apps().count();
    drop(table);
    shutdown_libraries(&plugins);
    println!("config OK: {count} app(s) constructed");
    Ok(())
}

fn list_plugins(config_path: Option<PathBuf>) -> Result<(), String> {
    // The config only contributes plugins.dirs; listing works without one.
    let path = config::config_path(config_path);
    let dirs = match config::load(&path) {
        Ok(loaded) => loaded.config.plugins.dirs,
        Err(_) => Vec::new(),
    };
    let plugins = registry::PluginRegistry::new(&dirs);
    println!("{:<14} {:<10} {:<6} PATH", "KIND", "VERSION", "ABI");
    for (path, library) in plugins.discover() {
        match library {
            Ok(lib) => println!(
                "{:<14} {:<10} {:<6} {}",
                lib.kind,
                lib.version,
                lib.abi_version,
                path.display()
            ),
            Err(err) => println!(
                "{:<14} {:<10} {:<6} {} ({err})",
                "?",
                "?",
                "?",
                path.display()
            ),
        }
    }
    Ok(())
}

fn shutdown_libraries(plugins: &registry::PluginRegistry) {
    for (_, library) in plugins.discover_loaded() {
        library.module.shutdown()();
    }
}

fn serve(config_path: Option<PathBuf>) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores())
        .thread_name("sygnal")
        .enable_all()
        .build()
        .map_err(|err| format!("cannot start the runtime: {err}"))?;
    let (config, table, plugins) = start(config_path)?;
    let result = runtime.block_on(run(config, table));
    shutdown_libraries(&plugins);
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

async fn bind(addresses: &[String], port: u16) -> Result<Vec<TcpListener>, String> {
    let mut listeners = Vec::new();
    let mut errors = Vec::new();
    for address in addresses {
        let ip: IpAddr = address
            .parse()
            .map_err(|_| format!("`{address}` is not an IP address"))?;
        match TcpListener::bind(SocketAddr::new(ip, port)).await {
            Ok(listener) => listeners.push(listener),
            Err(err) => errors.push(format!("{address}:{port}: {err}")),
        }
    }
    if listeners.is_empty() {
        return Err(format!("cannot listen: {}", errors.join("; ")));
    }
    for err in errors {
        tracing::warn!("cannot listen on {err}; serving on the other addresses");
    }
    Ok(listeners)
}

async fn run(config: config::Config, table: apps::AppTable) -> Result<(), String> {
    let state = Arc::new(api::AppState::new(table)?);
    let listeners = bind(&config.http.bind_addresses, config.http.port).await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut servers = tokio::task::JoinSet::new();
    for listener in listeners {
        let local = listener.local_addr().map_err(|err| err.to_string())?;
        tracing::info!(address = %local, "push gateway listening");
        let router = api::router(Arc::clone(&state));
        let mut stop = stop_rx.clone();
        servers.spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    let _ = stop.wait_for(|stop| *stop).await;
                })
                .await
        });
    }
    if config.metrics.prometheus.enabled {
        let prometheus = &config.metrics.prometheus;
        let listeners = bind(std::slice::from_ref(&prometheus.address), prometheus.port)
            .await
            .map_err(|err| format!("metrics.prometheus: {err}"))?;
        for listener in listeners {
            tracing::info!(address = ?listener.local_addr().ok(), "prometheus metrics listening");
            let mut stop = stop_rx.clone();
            // Metrics outlive nothing: they stop with the API listeners.
            tokio::spawn(async move {
                let _ = axum::serve(listener, api::metrics_router())
                    .with_graceful_shutdown(async move {
                        let _ = stop.wait_for(|stop| *stop).await;
                    })
                    .await;
            });
        }
    }

    wait_for_signal().await?;
    tracing::info!("shutting down: no new requests, finishing those in flight");
    let _ = stop_tx.send(true);
    let grace = Duration::from_secs_f64(config.http.shutdown_timeout);
    let drained = tokio::time::timeout(grace, async {
        while let Some(result) = servers.join_next().await {
            if let Ok(Err(err)) = result {
                tracing::warn!(error = %err, "listener error during shutdown");
            }
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            seconds = grace.as_secs_f64(),
            "in-flight requests did not finish in time; exiting anyway"
        );
    }
    // Close every pushkin before the libraries' runtimes stop.
    state.apps.store(Arc::new(apps::AppTable::default()));
    tracing::info!("stopped");
    Ok(())
}

async fn wait_for_signal() -> Result<(), String> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).map_err(|err| err.to_string())?;
    let mut int = signal(SignalKind::interrupt()).map_err(|err| err.to_string())?;
    // SIGHUP's default action would kill the process.
    let mut hup = signal(SignalKind::hangup()).map_err(|err| err.to_string())?;
    loop {
        tokio::select! {
            _ = term.recv() => {
                tracing::info!("SIGTERM received");
                return Ok(());
            }
            _ = int.recv() => {
                tracing::info!("SIGINT received");
                return Ok(());
            }
            _ = hup.recv() => {
                log_file::reopen();
                tracing::info!("SIGHUP received: log file reopened");
            }
        }
    }
}
