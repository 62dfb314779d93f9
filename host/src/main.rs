//! `sygnal`: a Matrix Push Gateway whose push providers are plugins.
//!
//! The host reads top-down: [`config`] -> plugin [`registry`] -> [`apps`] (the routing table)
//! -> [`api`] (HTTP) -> [`dispatch`] -> the response. Around them, [`lifecycle`] runs the
//! process: [`listeners`], the HTTP [`server`], signals, binary [`upgrade`]s, [`systemd`].

mod api;
mod apps;
mod config;
mod dispatch;
mod lifecycle;
mod listeners;
mod log_file;
mod logging;
mod metrics;
mod notify;
mod registry;
mod server;
mod sys;
mod systemd;
mod upgrade;

use abi_stable::std_types::RString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use sygnal_plugin_api::abi::HostCtx;
use sygnal_plugin_api::HostInfo;

const USAGE: &str = "\
usage: sygnal [--config PATH] [--pid-file PATH] [COMMAND]

Commands:
  serve     run the push gateway (default)
  check     validate the config and construct every app's pushkin, then exit
  plugins   list the plugin libraries found in the search path

The config is read from --config PATH, else $SYGNAL_CONF, else ./sygnal.yaml.
--pid-file PATH: `serve` writes its process id there once it serves (a binary upgrade
rewrites it with the new process's id).";

enum Command {
    Serve,
    Check,
    Plugins,
}

struct Args {
    config: Option<PathBuf>,
    pid_file: Option<PathBuf>,
    command: Command,
}

fn parse_args() -> Result<Option<Args>, String> {
    let mut config = None;
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
            "--pid-file" => {
                let path = args.next().ok_or("--pid-file needs a path")?;
                pid_file = Some(PathBuf::from(path));
            }
            _ if arg.starts_with("--pid-file=") => {
                pid_file = Some(PathBuf::from(&arg["--pid-file=".len()..]));
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
        pid_file,
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

fn serve(config_path: Option<PathBuf>, pid_file: Option<PathBuf>) -> Result<(), String> {
    // First, while the process has one thread: it takes variables out of the environment.
    let startup = lifecycle::Startup::take(pid_file)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores())
        .thread_name("sygnal")
        .enable_all()
        .build()
        .map_err(|err| format!("cannot start the runtime: {err}"))?;
    let (config, table, plugins) = start(config_path)?;
    let result = runtime.block_on(lifecycle::run(config, table, startup));
    shutdown_libraries(&plugins);
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}
