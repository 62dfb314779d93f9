//! `sygnal`: a Matrix Push Gateway whose push providers are plugins.
//!
//! The host reads top-down: [`config`] -> plugin [`registry`] (loading private [`snapshot`]s of
//! libraries) -> [`apps`] (the routing table, built a [`generation`] at a time) -> [`api`]
//! (HTTP) -> [`dispatch`] -> the response. [`reload`] rebuilds the table on SIGHUP. Around
//! them, [`lifecycle`] runs the process: [`listeners`], the HTTP [`server`], signals, binary
//! [`upgrade`]s, [`systemd`]; [`logging`] writes what happens, as Sygnal's `log.setup` says,
//! with the [`access_log`], and [`otel`] exports traces.

mod access_log;
mod api;
mod apps;
mod code_pages;
mod commands;
mod compat;
mod config;
mod dedup;
mod dispatch;
mod generation;
mod health;
mod host_io;
mod lifecycle;
mod listeners;
mod log_file;
mod log_format;
mod log_layer;
mod log_setup;
mod logging;
mod metrics;
mod notify;
mod otel;
mod plugin_log;
mod process_metrics;
mod registry;
mod reload;
mod sentry;
mod server;
mod shards;
mod snapshot;
mod sys;
mod systemd;
mod throttle;
mod upgrade;
mod yaml;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// glibc's malloc and free took about a quarter of the gateway's CPU under load, with two
/// runtimes' threads allocating and freeing request buffers (BENCHMARKS.md). Each plugin
/// library has its own allocator (plugin-api feature `mimalloc`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const USAGE: &str = "\
usage: sygnal [--config PATH] [--pid-file PATH] [COMMAND]

Commands:
  serve     run the push gateway (default)
  check [--against RUNNING]
            validate the config and construct its apps' pushkins exactly as a reload would,
            then print what a reload of a gateway running RUNNING (default: none) would add,
            change, remove and keep
  plugins   list the plugin libraries in the search path and the library serving each app
  health    exit 0 if the configured listener's GET /health answers 200 (container health checks)

The config is read from --config PATH, else $SYGNAL_CONF, else ./sygnal.yaml.
--pid-file PATH: `serve` writes its process id there once it serves (a binary upgrade
rewrites it with the new process's id).";

enum Command {
    Serve,
    Check,
    Plugins,
    Health,
}

struct Args {
    config: Option<PathBuf>,
    against: Option<PathBuf>,
    pid_file: Option<PathBuf>,
    command: Command,
}

fn parse_args() -> Result<Option<Args>, String> {
    let mut config = None;
    let mut against = None;
    let mut pid_file = None;
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
            "--against" => {
                let path = args.next().ok_or("--against needs a path")?;
                against = Some(PathBuf::from(path));
            }
            "--pid-file" => {
                let path = args.next().ok_or("--pid-file needs a path")?;
                pid_file = Some(PathBuf::from(path));
            }
            _ if arg.starts_with("--pid-file=") => {
                pid_file = Some(PathBuf::from(&arg["--pid-file=".len()..]));
            }
            "serve" | "check" | "plugins" | "health" if command.is_none() => {
                command = Some(match arg.as_str() {
                    "serve" => Command::Serve,
                    "check" => Command::Check,
                    "health" => Command::Health,
                    _ => Command::Plugins,
                });
            }
            other => return Err(format!("unexpected argument `{other}`")),
        }
    }
    let command = command.unwrap_or(Command::Serve);
    if against.is_some() && !matches!(command, Command::Check) {
        return Err("--against goes with `check`".to_owned());
    }
    if pid_file.is_some() && !matches!(command, Command::Serve) {
        return Err("--pid-file goes with `serve`".to_owned());
    }
    Ok(Some(Args {
        config,
        against,
        pid_file,
        command,
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
        Command::Plugins => commands::plugins(args.config),
        Command::Check => commands::check(args.config, args.against),
        Command::Health => health::check(args.config),
        Command::Serve => serve(args.config, args.pid_file),
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

/// A gateway's apps, built and ready to serve.
struct Started {
    config_path: PathBuf,
    loaded: config::Loaded,
    level: tracing::level_filters::LevelFilter,
    worker_threads: usize,
    plugins: Arc<registry::PluginRegistry>,
    table: apps::AppTable,
}

/// Loads config, logging and every app: a generation built from nothing.
fn start(config_path: Option<PathBuf>) -> Result<Started, String> {
    let config_path = config::config_path(config_path);
    let loaded = config::load(&config_path)
        .map_err(|err| format!("config error in {}: {err}", config_path.display()))?;
    let level = logging::init(&loaded.config.log).map_err(|err| format!("config error: {err}"))?;
    for warning in &loaded.warnings {
        tracing::warn!("{warning}");
    }
    if let Some(proxy) = config::effective_proxy(&loaded.config) {
        tracing::info!(proxy = %sygnal_plugin_api::redact_url_credentials(&proxy), "outbound connections use a proxy");
    }
    let plugins = Arc::new(open_registry(&loaded.config.plugins)?);
    let worker_threads = worker_threads(&loaded.config);
    let host = generation::HostInputs::new(&loaded.config, level, worker_threads)?;
    let built = generation::build(&loaded, &generation::Baseline::default(), &plugins, &host);
    let generation = built.inspect_err(|_| plugins.shutdown())?;
    reload::log_apps_ready(&generation.changes);
    Ok(Started {
        config_path,
        loaded,
        level,
        worker_threads,
        plugins,
        table: generation.table,
    })
}

/// Threads of each plugin library's runtime: half the cores. The host polls the dispatches of
/// plugins built with plugin-api's SDK on its own threads, their sockets in its reactor (see
/// `host_io`), so their runtimes only keep timers and background work; a plugin without that
/// has its dispatches run on its runtime. An idle runtime costs nothing.
fn worker_threads(config: &config::Config) -> usize {
    config
        .plugins
        .worker_threads
        .unwrap_or_else(|| (cores() / 2).max(1))
}

/// Threads serving client connections (`http.worker_threads`, see `shards`): two per core by
/// default, every dispatch running on them from request to answer (see [`worker_threads`]).
///
/// Two, not one: a thread alone on its core that writes to a peer on the same machine (a
/// local upstream, proxy or load balancer) is preempted by that peer at once, since the kernel
/// wakes a socket's reader on the writer's core when the writer is the only thread there. The
/// peer then reads one request per wake-up and the thread is switched out per request. With
/// a second thread on the core the woken peer waits its turn and reads several at once
/// (BENCHMARKS.md: 0.4 involuntary context switches per notification became 0.01-0.04, and
/// the gateway served a fifth more). Where nothing else shares the cores, the extra threads
/// cost some time slicing among themselves under load, and two descriptors each.
fn connection_threads(config: &config::Config) -> usize {
    config
        .http
        .worker_threads
        .unwrap_or_else(|| cores().saturating_mul(2))
}

/// The plugin registry for `plugins`, with this process's snapshot directory.
fn open_registry(plugins: &config::PluginsConfig) -> Result<registry::PluginRegistry, String> {
    let snapshots = snapshot::SnapshotDir::create(plugins.snapshot_dir.as_deref())?;
    tracing::debug!(dir = %snapshots.path().display(), "plugin libraries are loaded from private copies");
    Ok(registry::PluginRegistry::new(
        snapshots,
        plugins.max_loaded_libraries,
    ))
}

fn serve(config_path: Option<PathBuf>, pid_file: Option<PathBuf>) -> Result<(), String> {
    // First, while the process has one thread: it takes variables out of the environment.
    let startup = lifecycle::Startup::take(pid_file)?;
    // Apps are built before the host's runtime exists: pushkin constructors run on their
    // library's runtime, and the connection threads' number comes from the config.
    let started = start(config_path)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        // Accept loops, reloads and signals: client connections are served by the shards.
        .worker_threads(1)
        .thread_name("sygnal")
        .enable_all()
        .build()
        .map_err(|err| {
            started.plugins.shutdown();
            format!("cannot start the runtime: {err}")
        })?;
    host_io::set_runtime(runtime.handle().clone());
    if let Err(err) = shards::start(connection_threads(&started.loaded.config)) {
        started.plugins.shutdown();
        return Err(format!("cannot start the connection threads: {err}"));
    }
    let plugins = Arc::clone(&started.plugins);
    let result = runtime.block_on(run(started, startup));
    plugins.shutdown();
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

async fn run(started: Started, startup: lifecycle::Startup) -> Result<(), String> {
    let notify_timeout = Duration::from_secs_f64(started.loaded.config.http.notify_timeout);
    let state = Arc::new(
        api::AppState::new(started.table)?
            .with_notify_timeout(notify_timeout)
            .with_dedup(dedup::Dedup::new(&started.loaded.config.dedup)?),
    );
    let reloader = Arc::new(reload::Reloader::new(
        started.config_path,
        &started.loaded,
        started.level,
        started.worker_threads,
        Arc::clone(&state),
        started.plugins,
    )?);
    let config = started.loaded.config;
    let host_info = generation::host_info(&config, started.worker_threads);
    if let Some(dsn) = config.metrics.sentry.dsn()? {
        sentry::start(&dsn, &host_info).map_err(|err| format!("metrics.sentry: {err}"))?;
    }
    if config.metrics.opentelemetry.enabled {
        otel::start(&config.metrics.opentelemetry, &host_info)?;
    }
    let result = lifecycle::run(config, state, reloader, startup).await;
    // The last requests' spans, before the runtime stops.
    otel::flush(Duration::from_secs(2)).await;
    result
}
