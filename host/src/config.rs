//! `sygnal.yaml`: Sygnal's configuration format, plus the keys this gateway adds.
//!
//! Any existing Sygnal config loads: unknown keys are warned about (as Sygnal does), and
//! Sygnal's Python `log.setup` dictConfig is followed ([`crate::log_setup`]). Errors
//! name the key, e.g. `http.port: invalid type: string "x", expected u16`.

use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use sygnal_plugin_api::lenient::{self, Lenient};

/// The whole configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Config {
    /// Logging.
    pub log: LogConfig,
    /// The Push Gateway API listener.
    pub http: HttpConfig,
    /// Outbound HTTP CONNECT proxy for every upstream connection (else `HTTPS_PROXY`).
    pub proxy: Option<String>,
    /// Prometheus and friends.
    pub metrics: MetricsConfig,
    /// Where plugin libraries are found, and how their runtimes are sized.
    pub plugins: PluginsConfig,
    /// The apps, by app id (or glob pattern over app ids).
    pub apps: BTreeMap<String, serde_yaml::Value>,
    /// Added: duplicate suppression.
    pub dedup: DedupConfig,
}

/// `dedup` (added): answering a retried notification with the first attempt's outcome.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct DedupConfig {
    /// Suppress duplicates at all. Unset: only when `redis_url` is given. Off by default, as in
    /// Sygnal: a single gateway answers well before a homeserver's own timeout, so retries of
    /// delivered notifications are rare, and a repeated identical request stays a push.
    pub enabled: Option<bool>,
    /// Seconds an outcome is remembered.
    pub window: f64,
    /// Outcomes remembered in memory, at most (the oldest go first).
    pub max_entries: usize,
    /// Seconds a duplicate waits for the first attempt still in flight before answering 502.
    pub wait_timeout: f64,
    /// Redis (or Valkey) shared by the replicas: `redis://[[user]:password@]host[:port][/db]`.
    pub redis_url: Option<String>,
    /// Seconds each Redis command may take before the gateway delivers without it.
    pub redis_timeout: f64,
}

impl DedupConfig {
    /// Whether duplicates are suppressed: `enabled`, else whether replicas share a Redis.
    pub fn is_enabled(&self) -> bool {
        self.enabled.unwrap_or(self.redis_url.is_some())
    }
}

impl Default for DedupConfig {
    fn default() -> Self {
        DedupConfig {
            enabled: None,
            window: 600.0,
            max_entries: 100_000,
            wait_timeout: 10.0,
            redis_url: None,
            redis_timeout: 0.5,
        }
    }
}

/// `log`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct LogConfig {
    /// Sygnal's Python logging dictConfig: handlers, formatters, loggers (see `log_setup`).
    pub setup: Option<serde_yaml::Value>,
    /// Sygnal's access-log options.
    pub access: AccessLogConfig,
    /// Added: the log level (error, warn, info, debug, trace); with `setup`, the level of the
    /// root and of every configured logger.
    pub level: Option<String>,
    /// Added: `text` (default; with `setup`, each handler's own format) or `json` (every
    /// handler).
    pub format: Option<String>,
    /// Added: append logs to this file instead of stderr; with `setup`, what every stream and
    /// file handler writes goes there instead.
    pub file: Option<PathBuf>,
}

/// `log.access`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct AccessLogConfig {
    /// The access log's client address is the first address of `X-Forwarded-For` (when the
    /// request has one) rather than the connection's peer.
    pub x_forwarded_for: bool,
}

/// `http`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct HttpConfig {
    /// Addresses to listen on.
    pub bind_addresses: Vec<String>,
    /// The port.
    pub port: u16,
    /// Added: seconds to let in-flight requests finish on SIGTERM/SIGINT.
    pub shutdown_timeout: f64,
    /// Added: seconds a client gets to send a request's headers, counted from the connection's
    /// start (first request) or from the first byte of the request (later ones).
    pub header_timeout: f64,
    /// Added: seconds a client gets to send a whole request body, counted from its headers.
    pub body_timeout: f64,
    /// Added: seconds a keep-alive connection may stay idle between requests.
    pub idle_timeout: f64,
    /// Added: open client connections beyond which new ones are refused.
    pub max_connections: usize,
    /// Added: bytes that request bodies being received may take together, beyond the first
    /// 64 KiB of each.
    pub body_buffer_bytes: usize,
    /// Added: seconds a new process started by SIGUSR2 gets to become ready.
    pub upgrade_timeout: f64,
    /// Added: seconds one /notify may take to dispatch, waiting for connection slots and
    /// retries included; past it the work is cancelled and the answer is 502.
    pub notify_timeout: f64,
    /// Added: worker threads of the host's runtime (default: half the cores, at least 1).
    pub worker_threads: Option<usize>,
}

/// Synapse waits 60 s for a push gateway's response headers, then logs a failure and retries
/// later; an answer after that is lost. 50 s answers before it, with room for the network and
/// the body, and still fits the default retry schedule of the HTTP pushkins (tries at 0, 10 and
/// 30 s).
pub const DEFAULT_NOTIFY_TIMEOUT: f64 = 50.0;

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            bind_addresses: vec!["::1".to_owned(), "127.0.0.1".to_owned()],
            port: 5000,
            shutdown_timeout: 10.0,
            header_timeout: 10.0,
            body_timeout: 30.0,
            // Above Synapse's 120 s pool timeout, so the homeserver closes idle connections
            // first and never sends a push on a connection being closed.
            idle_timeout: 180.0,
            max_connections: 2048,
            body_buffer_bytes: 64 * 1024 * 1024,
            upgrade_timeout: 60.0,
            notify_timeout: DEFAULT_NOTIFY_TIMEOUT,
            worker_threads: None,
        }
    }
}

/// `metrics`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct MetricsConfig {
    /// The Prometheus listener.
    pub prometheus: PrometheusConfig,
    /// Sygnal's OpenTracing (Jaeger) section: accepted, warned about when enabled, unused.
    pub opentracing: Option<serde_yaml::Value>,
    /// Added: OpenTelemetry traces over OTLP/HTTP.
    pub opentelemetry: OpenTelemetryConfig,
    /// Error reports to Sentry.
    pub sentry: SentryConfig,
}

/// `metrics.opentelemetry` (added): a span per request, per dispatch and per upstream try,
/// exported over OTLP/HTTP (protobuf).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct OpenTelemetryConfig {
    /// Export traces.
    pub enabled: bool,
    /// The OTLP/HTTP endpoint: a base URL (`http://collector:4318`, traces go to its
    /// `/v1/traces`) or the full traces URL (any other path).
    pub endpoint: String,
    /// The `service.name` of the spans.
    pub service_name: String,
    /// The share of requests traced when the caller's `traceparent` does not decide (0 to 1).
    pub sample_rate: f64,
    /// Extra HTTP headers on every export (an API key for a hosted backend).
    pub headers: BTreeMap<String, String>,
    /// Seconds one export may take.
    pub export_timeout: f64,
    /// Finished spans waiting for export, at most; more are dropped and counted.
    pub max_queue_size: usize,
}

impl Default for OpenTelemetryConfig {
    fn default() -> Self {
        OpenTelemetryConfig {
            enabled: false,
            endpoint: "http://127.0.0.1:4318".to_owned(),
            service_name: "sygnal".to_owned(),
            sample_rate: 1.0,
            headers: BTreeMap::new(),
            export_timeout: 10.0,
            max_queue_size: crate::otel::export::MAX_QUEUE,
        }
    }
}

impl OpenTelemetryConfig {
    /// Where spans are posted: the endpoint's `/v1/traces` when it is a base URL.
    pub fn traces_url(&self) -> String {
        let endpoint = self.endpoint.trim_end_matches('/');
        let path_start = endpoint
            .find("://")
            .map(|scheme| scheme + 3)
            .and_then(|host| endpoint[host..].find('/').map(|path| host + path));
        match path_start {
            Some(_) => endpoint.to_owned(),
            None => format!("{endpoint}/v1/traces"),
        }
    }

    fn validate(&self) -> Result<(), String> {
        if !self.enabled {
            return Ok(());
        }
        sygnal_plugin_api::http::base_url(&self.traces_url())
            .map_err(|why| format!("metrics.opentelemetry.endpoint: {why}"))?;
        if !(0.0..=1.0).contains(&self.sample_rate) {
            return Err("metrics.opentelemetry.sample_rate: must be between 0 and 1".to_owned());
        }
        let timeout = self.export_timeout;
        if !timeout.is_finite() || timeout <= 0.0 || timeout > 300.0 {
            return Err(
                "metrics.opentelemetry.export_timeout: must be a positive number of seconds (at most 300)"
                    .to_owned(),
            );
        }
        if self.max_queue_size == 0 {
            return Err("metrics.opentelemetry.max_queue_size: must be at least 1".to_owned());
        }
        if self.service_name.is_empty() {
            return Err("metrics.opentelemetry.service_name: must not be empty".to_owned());
        }
        Ok(())
    }
}

/// `metrics.sentry`, as Sygnal has it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct SentryConfig {
    /// Report errors.
    pub enabled: bool,
    /// The project's DSN (`https://KEY@HOST/PROJECT`).
    pub dsn: Option<String>,
}

impl SentryConfig {
    /// The DSN to report to, when enabled.
    pub fn dsn(&self) -> Result<Option<crate::sentry::Dsn>, String> {
        if !self.enabled {
            return Ok(None);
        }
        let dsn = self
            .dsn
            .as_deref()
            .ok_or("metrics.sentry.dsn: required when metrics.sentry.enabled is true")?;
        crate::sentry::Dsn::parse(dsn)
            .map(Some)
            .map_err(|err| format!("metrics.sentry.dsn: {err}"))
    }
}

/// `metrics.prometheus`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct PrometheusConfig {
    /// Serve /metrics.
    pub enabled: bool,
    /// Listen address.
    pub address: String,
    /// Listen port.
    pub port: u16,
}

impl Default for PrometheusConfig {
    fn default() -> Self {
        PrometheusConfig {
            enabled: false,
            address: "127.0.0.1".to_owned(),
            port: 8000,
        }
    }
}

/// `plugins` (added).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct PluginsConfig {
    /// Directories searched for plugin libraries after the executable's own directory
    /// (relative ones against the config file's directory).
    pub dirs: Vec<PathBuf>,
    /// Worker threads for each plugin library's runtime (default: half the cores, at least 1).
    pub worker_threads: Option<usize>,
    /// Where the private copies of loaded libraries go (see `snapshot.rs` for the default).
    pub snapshot_dir: Option<PathBuf>,
    /// Distinct library builds a process may load over its life (none is ever unloaded);
    /// a reload that needs more fails and asks for a restart.
    pub max_loaded_libraries: usize,
}

/// Default of `plugins.max_loaded_libraries`.
pub const DEFAULT_MAX_LOADED_LIBRARIES: usize = 16;

impl Default for PluginsConfig {
    fn default() -> Self {
        PluginsConfig {
            dirs: Vec::new(),
            worker_threads: None,
            snapshot_dir: None,
            max_loaded_libraries: DEFAULT_MAX_LOADED_LIBRARIES,
        }
    }
}

/// One app, as the host needs it.
#[derive(Debug, Clone)]
pub struct AppConfig {
    /// The app id or glob pattern.
    pub app_id: String,
    /// The `type`: a plugin kind, a Sygnal class path, or a library path.
    pub plugin_type: String,
    /// Dispatches in flight beyond which new ones fail at once.
    pub inflight_request_limit: usize,
    /// The whole section, for the plugin.
    pub section: Map<String, Value>,
}

/// Sygnal's default in-flight limit per app.
pub const DEFAULT_INFLIGHT_REQUEST_LIMIT: usize = 512;

/// A loaded configuration and what was noticed while loading it.
#[derive(Debug)]
pub struct Loaded {
    /// The configuration.
    pub config: Config,
    /// The apps, validated.
    pub apps: Vec<AppConfig>,
    /// Things worth a warning (unknown keys, unsupported sections), logged once logging is up.
    pub warnings: Vec<String>,
    /// The file as parsed, before defaults: what a reload compares section by section.
    pub raw: serde_yaml::Value,
    /// The config file's directory: relative library paths (`type`, `plugins.dirs`,
    /// `plugins.snapshot_dir`) are resolved against it.
    pub base_dir: PathBuf,
}

/// Which file to read: `--config PATH`, else `SYGNAL_CONF`, else `./sygnal.yaml`.
pub fn config_path(cli_path: Option<PathBuf>) -> PathBuf {
    cli_path
        .or_else(|| std::env::var_os("SYGNAL_CONF").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("sygnal.yaml"))
}

/// Reads and validates the config file.
pub fn load(path: &Path) -> Result<Loaded, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|err| format!("cannot read config file {}: {err}", path.display()))?;
    let mut loaded = parse(&text)?;
    let base_dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let plugins = &mut loaded.config.plugins;
    for dir in &mut plugins.dirs {
        *dir = base_dir.join(&*dir);
    }
    if let Some(dir) = &mut plugins.snapshot_dir {
        *dir = base_dir.join(&*dir);
    }
    loaded.base_dir = base_dir;
    Ok(loaded)
}

/// Parses and validates config text.
pub fn parse(text: &str) -> Result<Loaded, String> {
    let loaded =
        crate::yaml::load(text).map_err(|err| format!("config is not valid YAML: {err}"))?;
    let value = match loaded.value {
        serde_yaml::Value::Null => serde_yaml::Value::Mapping(Default::default()),
        other => other,
    };
    let mut warnings = loaded.warnings;
    let mut record = |path: serde_ignored::Path<'_>| {
        warnings.push(format!("unknown config key `{path}` ignored"));
    };
    // Booleans and numbers as PyYAML reads them (`enabled: yes`, `port: "5000"`).
    let lenient = Lenient::new(value.clone());
    let config: Config =
        serde_path_to_error::deserialize(serde_ignored::Deserializer::new(lenient, &mut record))
            .map_err(|err| {
                let key = err.path().to_string();
                let key = if key == "." { "config".to_owned() } else { key };
                format!("{key}: {}", err.inner())
            })?;
    validate(&config, &mut warnings)?;
    let apps = apps(&config)?;
    Ok(Loaded {
        config,
        apps,
        warnings,
        raw: value,
        base_dir: PathBuf::from("."),
    })
}

fn validate(config: &Config, warnings: &mut Vec<String>) -> Result<(), String> {
    if config.http.bind_addresses.is_empty() {
        return Err("http.bind_addresses: at least one address is needed".to_owned());
    }
    for (index, address) in config.http.bind_addresses.iter().enumerate() {
        address.parse::<IpAddr>().map_err(|_| {
            format!("http.bind_addresses.{index}: `{address}` is not an IP address")
        })?;
    }
    // Past a year a timeout is a mistake, and Duration::from_secs_f64 would panic on it.
    const YEAR: f64 = 31_536_000.0;
    let shutdown = config.http.shutdown_timeout;
    if !shutdown.is_finite() || !(0.0..=YEAR).contains(&shutdown) {
        return Err(
            "http.shutdown_timeout: must be a non-negative number of seconds (at most a year)"
                .to_owned(),
        );
    }
    for (key, seconds) in [
        ("header_timeout", config.http.header_timeout),
        ("body_timeout", config.http.body_timeout),
        ("idle_timeout", config.http.idle_timeout),
        ("upgrade_timeout", config.http.upgrade_timeout),
    ] {
        if !seconds.is_finite() || seconds <= 0.0 || seconds > YEAR {
            return Err(format!(
                "http.{key}: must be a positive number of seconds (at most a year)"
            ));
        }
    }
    if config.http.max_connections == 0 {
        return Err("http.max_connections: must be at least 1".to_owned());
    }
    let notify_timeout = config.http.notify_timeout;
    if !notify_timeout.is_finite() || notify_timeout <= 0.0 || notify_timeout > 86_400.0 {
        return Err(
            "http.notify_timeout: must be a positive number of seconds (at most 86400)".to_owned(),
        );
    }
    if config.metrics.prometheus.enabled {
        config
            .metrics
            .prometheus
            .address
            .parse::<IpAddr>()
            .map_err(|_| {
                format!(
                    "metrics.prometheus.address: `{}` is not an IP address",
                    config.metrics.prometheus.address
                )
            })?;
    }
    let opentracing_enabled = config
        .metrics
        .opentracing
        .as_ref()
        .and_then(|v| v.get("enabled"))
        .is_some_and(yaml_bool);
    if opentracing_enabled {
        warnings.push(
            "metrics.opentracing (Jaeger) is not supported and is ignored: use metrics.opentelemetry, which exports OTLP (Jaeger, Tempo and the OpenTelemetry Collector take it)"
                .to_owned(),
        );
    }
    config.metrics.opentelemetry.validate()?;
    config.metrics.sentry.dsn()?;
    if let Some(format) = &config.log.format {
        if format != "text" && format != "json" {
            return Err(format!("log.format: `{format}` is not one of text, json"));
        }
    }
    validate_dedup(&config.dedup)?;
    if config.http.worker_threads == Some(0) {
        return Err("http.worker_threads: must be at least 1".to_owned());
    }
    if config.plugins.worker_threads == Some(0) {
        return Err("plugins.worker_threads: must be at least 1".to_owned());
    }
    if config.plugins.max_loaded_libraries == 0 {
        return Err("plugins.max_loaded_libraries: must be at least 1".to_owned());
    }
    if let Some(proxy) = &config.proxy {
        if !proxy.starts_with("http://") && !proxy.starts_with("https://") {
            return Err("proxy: must be an http:// URL of a CONNECT proxy".to_owned());
        }
    }
    Ok(())
}

fn validate_dedup(dedup: &DedupConfig) -> Result<(), String> {
    for (key, seconds) in [
        ("window", dedup.window),
        ("wait_timeout", dedup.wait_timeout),
        ("redis_timeout", dedup.redis_timeout),
    ] {
        // Up to a day: beyond it Synapse has given up retrying anyway.
        if !seconds.is_finite() || seconds <= 0.0 || seconds > 86_400.0 {
            return Err(format!(
                "dedup.{key}: must be a positive number of seconds (at most 86400)"
            ));
        }
    }
    if dedup.max_entries == 0 {
        return Err("dedup.max_entries: must be at least 1".to_owned());
    }
    if let Some(url) = &dedup.redis_url {
        crate::dedup::redis::RedisUrl::parse(url)
            .map_err(|err| format!("dedup.redis_url: {err}"))?;
    }
    Ok(())
}

fn apps(config: &Config) -> Result<Vec<AppConfig>, String> {
    if config.apps.is_empty() {
        return Err("apps: no apps configured".to_owned());
    }
    config
        .apps
        .iter()
        .map(|(app_id, section)| app(app_id, section))
        .collect()
}

fn app(app_id: &str, section: &serde_yaml::Value) -> Result<AppConfig, String> {
    let json: Value = serde_json::to_value(section)
        .map_err(|err| format!("apps.{app_id}: cannot be represented as JSON: {err}"))?;
    let Value::Object(section) = json else {
        return Err(format!("apps.{app_id}: must be a mapping"));
    };
    let plugin_type = match section.get("type") {
        Some(Value::String(t)) if !t.is_empty() => t.clone(),
        Some(_) => return Err(format!("apps.{app_id}.type: must be a non-empty string")),
        None => return Err(format!("apps.{app_id}.type: missing")),
    };
    let inflight_request_limit = match section.get("inflight_request_limit") {
        None | Some(Value::Null) => DEFAULT_INFLIGHT_REQUEST_LIMIT,
        Some(value) => lenient::as_u64(value)
            .filter(|limit| *limit > 0)
            .and_then(|limit| usize::try_from(limit).ok())
            .ok_or_else(|| {
                format!("apps.{app_id}.inflight_request_limit: must be a positive integer")
            })?,
    };
    Ok(AppConfig {
        app_id: app_id.to_owned(),
        plugin_type,
        inflight_request_limit,
        section,
    })
}

/// A YAML value read as a boolean the way PyYAML would (`true`, `yes`, `On`, ...).
fn yaml_bool(value: &serde_yaml::Value) -> bool {
    match value {
        serde_yaml::Value::Bool(b) => *b,
        serde_yaml::Value::String(s) => lenient::parse_bool(s).unwrap_or(false),
        _ => false,
    }
}

/// The outbound proxy: the config's `proxy`, else `HTTPS_PROXY` / `https_proxy`.
pub fn effective_proxy(config: &Config) -> Option<String> {
    config.proxy.clone().or_else(|| {
        ["HTTPS_PROXY", "https_proxy"]
            .iter()
            .find_map(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SYGNAL_SAMPLE: &str = r#"
log:
  setup:
    version: 1
    formatters:
      normal:
        format: "%(asctime)s [%(process)d] %(levelname)-5s %(name)s %(message)s"
    handlers:
      stderr:
        class: "logging.StreamHandler"
        formatter: "normal"
        stream: "ext://sys.stderr"
    loggers:
      sygnal.access:
        propagate: false
        handlers: ["stderr"]
        level: "INFO"
    root:
      handlers: ["stderr"]
      level: "DEBUG"
    disable_existing_loggers: false
  access:
    x_forwarded_for: false
http:
  bind_addresses: ['127.0.0.1']
  port: 5000
proxy: 'http://user:secret@proxy.example:3128'
metrics:
  prometheus:
    enabled: true
    address: '127.0.0.1'
    port: 8000
  opentracing:
    enabled: false
  sentry:
    enabled: false
apps:
  com.example.myapp.ios:
    type: apns
    keyfile: my_key.p8
    key_id: MY_KEY_ID
    team_id: MY_TEAM_ID
    topic: MY_TOPIC
  com.example.myapp.android:
    type: gcm
    api_key: your_api_key_for_gcm
    inflight_request_limit: 10
"#;

    #[test]
    fn loads_a_sygnal_config() {
        let loaded = parse(SYGNAL_SAMPLE).unwrap();
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
        assert_eq!(loaded.config.http.port, 5000);
        assert_eq!(loaded.config.http.notify_timeout, DEFAULT_NOTIFY_TIMEOUT);
        assert!(loaded.config.metrics.prometheus.enabled);
        assert_eq!(loaded.apps.len(), 2);
        let android = &loaded.apps[0];
        assert_eq!(android.app_id, "com.example.myapp.android");
        assert_eq!(android.plugin_type, "gcm");
        assert_eq!(android.inflight_request_limit, 10);
        assert_eq!(loaded.apps[1].inflight_request_limit, 512);
        assert_eq!(loaded.apps[1].section["key_id"], "MY_KEY_ID");
        assert!(loaded.config.log.setup.is_some());
    }

    #[test]
    fn errors_name_the_key() {
        let err = parse("http:\n  port: nope\napps:\n  a:\n    type: x\n").unwrap_err();
        assert!(err.starts_with("http.port:"), "{err}");
        let err = parse("apps:\n  a:\n    key: 1\n").unwrap_err();
        assert_eq!(err, "apps.a.type: missing");
        let err = parse("apps:\n  a:\n    type: x\n    inflight_request_limit: -1\n").unwrap_err();
        assert!(err.starts_with("apps.a.inflight_request_limit:"), "{err}");
        let err =
            parse("http:\n  bind_addresses: ['nowhere']\napps:\n  a:\n    type: x\n").unwrap_err();
        assert!(err.starts_with("http.bind_addresses.0:"), "{err}");
        for bad in ["0", "-1", ".nan", "x"] {
            let err = parse(&format!(
                "http:\n  notify_timeout: {bad}\napps:\n  a:\n    type: x\n"
            ))
            .unwrap_err();
            assert!(err.starts_with("http.notify_timeout:"), "{bad}: {err}");
        }
        let loaded = parse("http:\n  notify_timeout: 2.5\napps:\n  a:\n    type: x\n").unwrap();
        assert_eq!(loaded.config.http.notify_timeout, 2.5);
    }

    #[test]
    fn http_limits_are_checked() {
        let with = |http: &str| parse(&format!("http:\n{http}\napps:\n  a:\n    type: x\n"));
        let loaded = with("  header_timeout: 2.5\n  max_connections: 7").unwrap();
        assert_eq!(loaded.config.http.header_timeout, 2.5);
        assert_eq!(loaded.config.http.max_connections, 7);
        assert_eq!(loaded.config.http.idle_timeout, 180.0);
        for (http, key) in [
            ("  header_timeout: 0", "http.header_timeout:"),
            ("  body_timeout: -1", "http.body_timeout:"),
            ("  idle_timeout: .inf", "http.idle_timeout:"),
            ("  upgrade_timeout: 1e300", "http.upgrade_timeout:"),
            ("  shutdown_timeout: 1e300", "http.shutdown_timeout:"),
            ("  max_connections: 0", "http.max_connections:"),
            ("  body_buffer_bytes: -5", "http.body_buffer_bytes:"),
        ] {
            let err = with(http).unwrap_err();
            assert!(err.starts_with(key), "{http}: {err}");
        }
    }

    #[test]
    fn opentelemetry_is_checked_and_opentracing_points_to_it() {
        let with =
            |metrics: &str| parse(&format!("metrics:\n{metrics}\napps:\n  a:\n    type: x\n"));
        let loaded = with("  opentracing:\n    enabled: true\n    implementation: jaeger\n  opentelemetry:\n    enabled: yes\n    endpoint: http://collector:4318/\n    sample_rate: '0.25'").unwrap();
        assert!(
            loaded.warnings[0].contains("use metrics.opentelemetry"),
            "{:?}",
            loaded.warnings
        );
        let otel = &loaded.config.metrics.opentelemetry;
        assert!(otel.enabled);
        assert_eq!(otel.sample_rate, 0.25);
        assert_eq!(otel.traces_url(), "http://collector:4318/v1/traces");
        let full = OpenTelemetryConfig {
            endpoint: "https://otlp.example.org/api/traces".to_owned(),
            ..OpenTelemetryConfig::default()
        };
        assert_eq!(full.traces_url(), "https://otlp.example.org/api/traces");
        for (metrics, key) in [
            (
                "  opentelemetry: {enabled: true, sample_rate: 2}",
                "metrics.opentelemetry.sample_rate:",
            ),
            (
                "  opentelemetry: {enabled: true, endpoint: 'ftp://x'}",
                "metrics.opentelemetry.endpoint:",
            ),
            (
                "  opentelemetry: {enabled: true, export_timeout: 0}",
                "metrics.opentelemetry.export_timeout:",
            ),
            (
                "  opentelemetry: {enabled: true, max_queue_size: 0}",
                "metrics.opentelemetry.max_queue_size:",
            ),
        ] {
            let err = with(metrics).unwrap_err();
            assert!(err.starts_with(key), "{metrics}: {err}");
        }
    }

    #[test]
    fn no_apps_is_an_error() {
        assert_eq!(parse("").unwrap_err(), "apps: no apps configured");
        assert_eq!(
            parse("http:\n  port: 5000\n").unwrap_err(),
            "apps: no apps configured"
        );
    }

    #[test]
    fn unknown_keys_warn() {
        let loaded =
            parse("surprise: 1\nhttp:\n  colour: red\napps:\n  a:\n    type: x\n").unwrap();
        assert_eq!(
            loaded.warnings,
            vec![
                "unknown config key `surprise` ignored",
                "unknown config key `http.colour` ignored"
            ]
        );
    }

    #[test]
    fn relative_plugin_paths_are_taken_from_the_config_directory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sygnal.yaml");
        std::fs::write(
            &path,
            "plugins:\n  dirs: [lib, /opt/plugins]\n  snapshot_dir: snapshots\napps:\n  a:\n    type: x\n",
        )
        .unwrap();
        let loaded = load(&path).unwrap();
        assert_eq!(loaded.base_dir, dir.path());
        let plugins = &loaded.config.plugins;
        assert_eq!(
            plugins.dirs,
            vec![dir.path().join("lib"), PathBuf::from("/opt/plugins")]
        );
        assert_eq!(plugins.snapshot_dir, Some(dir.path().join("snapshots")));
        assert_eq!(plugins.max_loaded_libraries, DEFAULT_MAX_LOADED_LIBRARIES);
        let err =
            parse("plugins:\n  max_loaded_libraries: 0\napps:\n  a:\n    type: x\n").unwrap_err();
        assert!(err.starts_with("plugins.max_loaded_libraries:"), "{err}");
    }

    #[test]
    fn reads_yaml_as_pyyaml_would() {
        let loaded = parse(
            "log:\n  access:\n    x_forwarded_for: on\nhttp:\n  port: \"5001\"\n  shutdown_timeout: '2.5'\nmetrics:\n  prometheus:\n    enabled: YES\n    port: '9101'\napps:\n  a:\n    type: x\n    inflight_request_limit: '7'\n    convert_device_token_to_hex: no\n",
        )
        .unwrap();
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
        assert!(loaded.config.log.access.x_forwarded_for);
        assert_eq!(loaded.config.http.port, 5001);
        assert_eq!(loaded.config.http.shutdown_timeout, 2.5);
        assert!(loaded.config.metrics.prometheus.enabled);
        assert_eq!(loaded.config.metrics.prometheus.port, 9101);
        assert_eq!(loaded.apps[0].inflight_request_limit, 7);
        // Plugins get their section as written; the SDK reads it leniently.
        assert_eq!(loaded.apps[0].section["convert_device_token_to_hex"], "no");
        let err = parse("http:\n  port: 'five'\napps:\n  a:\n    type: x\n").unwrap_err();
        assert!(err.starts_with("http.port:"), "{err}");
        let err =
            parse("apps:\n  a:\n    type: x\n    inflight_request_limit: 'lots'\n").unwrap_err();
        assert!(err.starts_with("apps.a.inflight_request_limit:"), "{err}");
    }

    #[test]
    fn a_public_config_with_a_duplicated_section_loads() {
        // Shaped like a public deployment's config: the `database` section given twice (Sygnal
        // once had a database; it is ignored now), and a duplicated key inside an app.
        let text = format!(
            "{SYGNAL_SAMPLE}database:\n  name: sqlite3\n  args:\n    dbfile: sygnal.db\ndatabase:\n  name: psycopg2\n"
        )
        .replace("    topic: MY_TOPIC\n", "    topic: MY_TOPIC\n    topic: OTHER_TOPIC\n");
        let loaded = parse(&text).unwrap();
        let ios = loaded
            .apps
            .iter()
            .find(|a| a.app_id.ends_with("ios"))
            .unwrap();
        assert_eq!(ios.section["topic"], "OTHER_TOPIC");
        let topic_line = text
            .lines()
            .position(|l| l == "    topic: OTHER_TOPIC")
            .unwrap()
            + 1;
        let lines: Vec<&str> = text.lines().collect();
        let database_line = lines.iter().rposition(|l| *l == "database:").unwrap() + 1;
        assert_eq!(
            loaded.warnings,
            vec![
                format!("duplicate config key `apps.com.example.myapp.ios.topic` (line {topic_line}): the last one wins"),
                format!("duplicate config key `database` (line {database_line}): the last one wins"),
                "unknown config key `database` ignored".to_owned(),
            ]
        );
    }
}
