//! Error reports to Sentry (`metrics.sentry: {enabled, dsn}`, as Sygnal has it): every failed
//! dispatch (a pushkin's panic, a permanent failure, retries exhausted) and every panic of the
//! gateway itself becomes a Sentry event.
//!
//! Events are posted as Sentry envelopes through the same HTTP client the pushkins use (rustls
//! with ring, the configured `proxy`, `SSL_CERT_FILE`), by one background task behind a bounded
//! queue: reporting never delays a request, and a flood of failures drops events rather than
//! memory. At shutdown the queue is given [`FLUSH_TIMEOUT`] to drain, so the failures that
//! preceded a stop are not lost with it. Why not the `sentry` crate: README, "Sentry".

use crate::throttle::Throttle;
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use sygnal_plugin_api::abi::PushErrorKind;
use sygnal_plugin_api::http::{build_client, reqwest, ClientOptions};
use sygnal_plugin_api::HostInfo;
use tokio::sync::{mpsc, Notify};

/// Events waiting to be sent, at most; beyond that they are dropped.
const QUEUE: usize = 100;
/// Upper bound on one POST to Sentry.
const POST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for queued events to be sent (sentry-sdk's default shutdown timeout).
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause after a refusal without Retry-After.
const DEFAULT_BACKOFF: Duration = Duration::from_secs(60);

/// A parsed DSN: `{scheme}://{public_key}[:{secret}]@{host}[/{path}]/{project_id}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dsn {
    /// Where envelopes go.
    envelope_url: String,
    /// The `X-Sentry-Auth` header.
    auth: String,
    /// The DSN as written, for the envelope header.
    raw: String,
}

impl Dsn {
    /// Parses a DSN; errors never echo the key.
    pub fn parse(dsn: &str) -> Result<Dsn, String> {
        let (scheme, rest) = dsn
            .split_once("://")
            .filter(|(scheme, _)| *scheme == "https" || *scheme == "http")
            .ok_or("must be an https:// (or http://) Sentry DSN")?;
        let (credentials, location) = rest
            .split_once('@')
            .ok_or("has no public key (expected https://KEY@HOST/PROJECT)")?;
        let (public_key, secret) = match credentials.split_once(':') {
            Some((key, secret)) => (key, Some(secret)),
            None => (credentials, None),
        };
        if public_key.is_empty() {
            return Err("has an empty public key".to_owned());
        }
        let (host_and_path, project) = location
            .trim_end_matches('/')
            .rsplit_once('/')
            .ok_or("has no project id (expected https://KEY@HOST/PROJECT)")?;
        if host_and_path.is_empty() || project.is_empty() {
            return Err("has no host or project id".to_owned());
        }
        let mut auth = format!(
            "Sentry sentry_version=7, sentry_client=sygnal/{}, sentry_key={public_key}",
            env!("CARGO_PKG_VERSION")
        );
        if let Some(secret) = secret {
            auth.push_str(&format!(", sentry_secret={secret}"));
        }
        Ok(Dsn {
            envelope_url: format!("{scheme}://{host_and_path}/api/{project}/envelope/"),
            auth,
            raw: dsn.to_owned(),
        })
    }
}

/// How bad an event is.
#[derive(Debug, Clone, Copy)]
pub enum Level {
    /// A failure that a retry may fix.
    Warning,
    /// A failure that will repeat, or a panic.
    Error,
}

struct Reporter {
    queue: mpsc::Sender<String>,
    /// Events queued or being sent.
    unsent: Arc<Unsent>,
    dsn: String,
    server_name: String,
}

static REPORTER: OnceLock<Reporter> = OnceLock::new();

/// Starts reporting to `dsn` (call once, inside the runtime). Also reports the gateway's own
/// panics, keeping the previous panic hook.
pub fn start(dsn: &Dsn, host: &HostInfo) -> Result<(), String> {
    sygnal_plugin_api::http::install_crypto_provider();
    let client = build_client(
        host,
        &ClientOptions {
            request_timeout: POST_TIMEOUT,
            max_idle_per_host: 1,
            ..ClientOptions::default()
        },
    )?;
    let (queue, receiver) = mpsc::channel(QUEUE);
    let unsent = Arc::new(Unsent::default());
    let reporter = Reporter {
        queue,
        unsent: Arc::clone(&unsent),
        dsn: dsn.raw.clone(),
        server_name: std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|name| name.trim().to_owned())
            .unwrap_or_default(),
    };
    if REPORTER.set(reporter).is_err() {
        return Err("Sentry reporting was started twice".to_owned());
    }
    tokio::spawn(send_loop(client, dsn.clone(), receiver, unsent));
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let location = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let message = crate::sentry::panic_text(info.payload());
        report(
            Level::Error,
            "Panic",
            &format!("{message}{location}"),
            &[],
            None,
        );
        previous(info);
    }));
    tracing::info!(endpoint = %dsn.envelope_url, "errors are reported to Sentry");
    Ok(())
}

fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".to_owned())
}

/// Reports a failed dispatch (no-op unless Sentry is enabled).
pub fn dispatch_failed(
    app: &str,
    plugin: &str,
    kind: PushErrorKind,
    message: &str,
    request_id: &str,
) {
    let (level, error_type) = match kind {
        PushErrorKind::Panic => (Level::Error, "PushkinPanic"),
        PushErrorKind::Permanent => (Level::Error, "PermanentDispatchFailure"),
        PushErrorKind::Temporary => (Level::Warning, "TemporaryDispatchFailure"),
    };
    report(
        level,
        error_type,
        message,
        &[("app", app), ("plugin", plugin)],
        Some(request_id),
    );
}

/// Queues one event; dropped when Sentry is off or the queue is full.
pub fn report(
    level: Level,
    error_type: &str,
    message: &str,
    tags: &[(&str, &str)],
    request_id: Option<&str>,
) {
    let Some(reporter) = REPORTER.get() else {
        return;
    };
    let event_id = event_id();
    let timestamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let tags: serde_json::Map<String, serde_json::Value> = tags
        .iter()
        .map(|(k, v)| ((*k).to_owned(), json!(v)))
        .collect();
    let event = json!({
        "event_id": event_id,
        "timestamp": timestamp,
        "platform": "native",
        "level": match level { Level::Warning => "warning", Level::Error => "error" },
        "logger": "sygnal",
        "server_name": reporter.server_name,
        "release": concat!("sygnal@", env!("CARGO_PKG_VERSION")),
        "exception": {"values": [{"type": error_type, "value": message}]},
        "tags": tags,
        "extra": {"request_id": request_id},
    })
    .to_string();
    let header = json!({"event_id": event_id, "dsn": reporter.dsn}).to_string();
    let item = json!({"type": "event", "length": event.len()}).to_string();
    let envelope = format!("{header}\n{item}\n{event}\n");
    reporter.unsent.count.fetch_add(1, Ordering::SeqCst);
    // Full queue: Sentry is slow or refusing; this event is dropped rather than waited for.
    if reporter.queue.try_send(envelope).is_err() {
        reporter.unsent.done();
    }
}

/// Waits, at most `timeout`, until every queued event was sent (or given up on); says so when
/// some were not.
pub async fn flush(timeout: Duration) {
    let Some(reporter) = REPORTER.get() else {
        return;
    };
    let unsent = &reporter.unsent;
    let drained = async {
        loop {
            let notified = unsent.drained.notified();
            tokio::pin!(notified);
            // Registered before the count is read: a send finishing in between still wakes it.
            notified.as_mut().enable();
            if unsent.count.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    };
    if tokio::time::timeout(timeout, drained).await.is_err() {
        tracing::warn!(
            unsent = unsent.count.load(Ordering::SeqCst),
            "Sentry events not sent before exit"
        );
    }
}

/// The events not yet sent, and a wake-up for whoever waits for none.
#[derive(Default)]
struct Unsent {
    count: AtomicUsize,
    drained: Notify,
}

impl Unsent {
    /// One event sent, dropped or refused.
    fn done(&self) {
        if self.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.drained.notify_waiters();
        }
    }
}

fn event_id() -> String {
    let mut bytes = [0u8; 16];
    let random = ring::rand::SystemRandom::new();
    let _ = ring::rand::SecureRandom::fill(&random, &mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn send_loop(
    client: reqwest::Client,
    dsn: Dsn,
    mut queue: mpsc::Receiver<String>,
    unsent: Arc<Unsent>,
) {
    let mut paused_until: Option<Instant> = None;
    let mut warnings = Throttle::every(Duration::from_secs(60));
    while let Some(envelope) = queue.recv().await {
        if paused_until.is_some_and(|until| Instant::now() < until) {
            unsent.done();
            continue; // Sentry asked for a pause: drop rather than queue.
        }
        let sent = client
            .post(&dsn.envelope_url)
            .header("X-Sentry-Auth", &dsn.auth)
            .header("Content-Type", "application/x-sentry-envelope")
            .body(envelope)
            .send()
            .await;
        let problem = match sent {
            Ok(response) if response.status().is_success() => None,
            Ok(response) if response.status().as_u16() == 429 => {
                let pause = sygnal_plugin_api::http::retry_after(response.headers())
                    .unwrap_or(DEFAULT_BACKOFF);
                paused_until = Some(Instant::now() + pause);
                Some(format!("rate limited for {pause:?}"))
            }
            Ok(response) => Some(format!("answered {}", response.status())),
            Err(err) => Some(sygnal_plugin_api::http::describe_error(err)),
        };
        unsent.done();
        if let Some(problem) = problem {
            if let Some(held_back) = warnings.admit() {
                tracing::warn!(%problem, failures_not_logged = held_back, "cannot report to Sentry; events are dropped meanwhile");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_dsns() {
        let dsn = Dsn::parse("https://abc123@o1.ingest.sentry.io/42").unwrap();
        assert_eq!(
            dsn.envelope_url,
            "https://o1.ingest.sentry.io/api/42/envelope/"
        );
        assert!(dsn.auth.contains("sentry_key=abc123"), "{}", dsn.auth);
        let dsn = Dsn::parse("http://key:secret@127.0.0.1:9000/sentry/7").unwrap();
        assert_eq!(
            dsn.envelope_url,
            "http://127.0.0.1:9000/sentry/api/7/envelope/"
        );
        assert!(dsn.auth.ends_with("sentry_key=key, sentry_secret=secret"));
        for bad in [
            "ftp://k@h/1",
            "https://h/1",
            "https://@h/1",
            "https://k@h",
            "https://k@/1",
            "nonsense",
        ] {
            assert!(Dsn::parse(bad).is_err(), "{bad}");
        }
        assert!(!Dsn::parse("https://topsecret@h")
            .unwrap_err()
            .contains("topsecret"));
    }
}
