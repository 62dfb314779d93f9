//! Outbound HTTP shared by every HTTP pushkin (feature `http`).
//!
//! One place decides how a pushkin talks to its upstream: rustls with the `ring` provider (no
//! OpenSSL, no C build), the public roots plus whatever the host adds (`SSL_CERT_FILE`), the
//! host's CONNECT proxy, optional client certificates, no redirects, and bounded waits.
//! [`DirectClient`] is the same setup without reqwest (HTTP/2 through hyper's pool, HTTP/1.1
//! over connections it frames itself), for requests sent per notification. [`retry`] is the
//! backoff loop every pushkin uses (`max_tries`, `retry_delay_base`, `Retry-After`); [`Sender`]
//! sends one request with it and classifies the answer; [`ConnectionSlots`] bounds an app's
//! requests in flight (`max_connections`) and how long one waits for a slot; [`endpoint`] guards
//! client-given endpoints (UnifiedPush, WebPush) against reaching private networks.

use crate::{HostInfo, PushError};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use std::future::Future;
use std::time::Duration;

pub use reqwest;

mod direct;
pub mod endpoint;
mod h1;
mod send;
mod slots;
mod tcp;
mod wire;

pub use ::http::{Request, Response, StatusCode, Uri};
pub use bytes::Bytes;
pub use direct::DirectClient;
pub use endpoint::{Allowlist, EndpointGuard, Refusal};
pub use send::{default_verdict, Answer, Sender, Verdict};
pub use slots::{ConnectionSlots, MetricName, Slot, SlotMetrics};

/// How an HTTP pushkin wants its client built.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Offer only HTTP/2 in ALPN (APNs requires it); otherwise HTTP/2 and HTTP/1.1.
    pub http2_only: bool,
    /// A PEM holding a client certificate chain and its unencrypted private key (mutual TLS).
    pub client_identity_pem: Option<Vec<u8>>,
    /// Upper bound on one whole request, response included.
    pub request_timeout: Duration,
    /// Upper bound on connecting (TCP, proxy CONNECT and TLS).
    pub connect_timeout: Duration,
    /// Idle connections kept per upstream host.
    pub max_idle_per_host: usize,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            http2_only: false,
            client_identity_pem: None,
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            max_idle_per_host: 32,
        }
    }
}

/// Installs rustls' `ring` provider as this library's process default (idempotent).
pub fn install_crypto_provider() {
    // Err means a provider is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The root store: the public web PKI plus the host's extra PEM files.
pub fn root_store(host: &HostInfo) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for path in &host.extra_root_certs {
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|err| format!("cannot read trust roots from {}: {err}", path.display()))?;
        for cert in certs {
            let cert =
                cert.map_err(|err| format!("bad certificate in {}: {err}", path.display()))?;
            roots
                .add(cert)
                .map_err(|err| format!("unusable certificate in {}: {err}", path.display()))?;
        }
    }
    Ok(roots)
}

/// Splits a PEM holding a certificate chain and a private key.
pub fn parse_identity_pem(
    pem: &[u8],
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| format!("bad certificate: {err}"))?;
    if certs.is_empty() {
        return Err("no certificate found".to_owned());
    }
    let key = PrivateKeyDer::from_pem_slice(pem)
        .map_err(|err| format!("no usable unencrypted private key: {err}"))?;
    Ok((certs, key))
}

/// The rustls configuration every pushkin connection uses.
pub fn tls_config(
    host: &HostInfo,
    options: &ClientOptions,
) -> Result<rustls::ClientConfig, String> {
    install_crypto_provider();
    let builder = rustls::ClientConfig::builder().with_root_certificates(root_store(host)?);
    let mut config = match &options.client_identity_pem {
        Some(pem) => {
            let (certs, key) = parse_identity_pem(pem)?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|err| format!("client certificate rejected: {err}"))?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = if options.http2_only {
        vec![b"h2".to_vec()]
    } else {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    };
    Ok(config)
}

/// A reqwest client honouring the host's proxy and trust roots. Redirects are never followed.
pub fn build_client(host: &HostInfo, options: &ClientOptions) -> Result<reqwest::Client, String> {
    client_builder(host, options)?
        .build()
        .map_err(|err| format!("cannot build the HTTP client: {err}"))
}

/// The builder behind [`build_client`], for pushkins that customise more (a DNS resolver, say).
pub fn client_builder(
    host: &HostInfo,
    options: &ClientOptions,
) -> Result<reqwest::ClientBuilder, String> {
    let mut builder = reqwest::Client::builder()
        .tls_backend_preconfigured(tls_config(host, options)?)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(options.request_timeout)
        .connect_timeout(options.connect_timeout)
        .pool_max_idle_per_host(options.max_idle_per_host)
        .pool_idle_timeout(Duration::from_secs(600))
        .tcp_nodelay(true);
    if !host.user_agent.is_empty() {
        builder = builder.user_agent(host.user_agent.clone());
    }
    builder = match &host.proxy {
        // Credentials in the URL become the proxy's basic auth.
        Some(proxy) => builder.proxy(reqwest::Proxy::all(proxy).map_err(|err| {
            format!(
                "invalid proxy {}: {err}",
                crate::host_info::redact_url_credentials(proxy)
            )
        })?),
        None => builder.no_proxy(),
    };
    if options.http2_only {
        // Prior knowledge on top of ALPN h2: the pool then knows before connecting that the
        // connection will be shared, so a burst on a cold client waits for one connection
        // instead of opening one per request. HTTP/2 upstreams want few long-lived connections.
        builder = builder.http2_prior_knowledge().http2_adaptive_window(true);
    }
    Ok(builder)
}

/// The retry settings every HTTP pushkin reads from its app section.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(default)]
pub struct RetrySettings {
    /// Attempts per notification, the first included (`max_tries`, default 3).
    pub max_tries: u32,
    /// Seconds before the first retry, doubled for each next one (`retry_delay_base`, default 10).
    pub retry_delay_base: f64,
}

impl Default for RetrySettings {
    fn default() -> Self {
        RetrySettings {
            max_tries: 3,
            retry_delay_base: 10.0,
        }
    }
}

/// The config keys [`RetrySettings::from_context`] reads; the SDK does not warn about them.
pub const RETRY_KEYS: [&str; 2] = ["max_tries", "retry_delay_base"];

impl RetrySettings {
    /// The retry policy from the app's `max_tries` and `retry_delay_base` (defaults 3 and 10 s).
    /// Errors name the app and the key.
    ///
    /// Read these keys through this function rather than declaring (or `#[serde(flatten)]`ing)
    /// them in the pushkin's own config struct: flatten hides unknown keys from the warning.
    pub fn from_context(ctx: &crate::PushkinContext) -> Result<RetryPolicy, String> {
        let defaults = RetrySettings::default();
        let config = ctx.raw_config();
        let key_error = |key: &str, why: &str| ctx.config_error(key, why);
        let max_tries = match config.get("max_tries") {
            None | Some(serde_json::Value::Null) => defaults.max_tries,
            Some(value) => crate::lenient::as_u64(value)
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| key_error("max_tries", "must be a positive integer"))?,
        };
        let retry_delay_base = match config.get("retry_delay_base") {
            None | Some(serde_json::Value::Null) => defaults.retry_delay_base,
            Some(value) => crate::lenient::as_f64(value)
                .ok_or_else(|| key_error("retry_delay_base", "must be a number of seconds"))?,
        };
        RetrySettings {
            max_tries,
            retry_delay_base,
        }
        .policy()
        .map_err(|why| match why.split_once(' ') {
            Some((key, rest)) if RETRY_KEYS.contains(&key) => key_error(key, rest),
            _ => format!("apps.{}: {why}", ctx.app_id()),
        })
    }

    /// The validated policy; errors name the key.
    pub fn policy(&self) -> Result<RetryPolicy, String> {
        if self.max_tries == 0 {
            return Err("max_tries must be at least 1".to_owned());
        }
        if !self.retry_delay_base.is_finite() || self.retry_delay_base < 0.0 {
            return Err("retry_delay_base must be a non-negative number of seconds".to_owned());
        }
        Ok(RetryPolicy {
            max_tries: self.max_tries,
            retry_delay_base: Duration::from_secs_f64(self.retry_delay_base),
            max_delay: Duration::from_secs(300),
        })
    }
}

/// Validates an `endpoint` setting (an http(s) base URL without query or fragment) and returns
/// it without a trailing slash, ready for paths to be appended.
pub fn base_url(endpoint: &str) -> Result<String, String> {
    let url = reqwest::Url::parse(endpoint)
        .map_err(|err| format!("{endpoint:?} is not a valid URL ({err})"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(format!("{endpoint:?} is not an http:// or https:// URL"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "{endpoint:?}: a base URL takes no query or fragment"
        ));
    }
    Ok(endpoint.trim_end_matches('/').to_owned())
}

/// When and how often to retry.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Attempts, the first included.
    pub max_tries: u32,
    /// Delay before the first retry; doubled for each next one.
    pub retry_delay_base: Duration,
    /// A longer wait than this (from `Retry-After`) is not waited for: the failure is reported
    /// as temporary at once, and the homeserver retries later.
    pub max_delay: Duration,
}

impl RetryPolicy {
    /// The backoff delay before retry number `retry` (0 for the first retry).
    pub fn backoff(&self, retry: u32) -> Duration {
        self.retry_delay_base
            .saturating_mul(2u32.saturating_pow(retry.min(16)))
    }
}

/// What one attempt came to.
#[derive(Debug)]
pub enum Attempt<T> {
    /// Finished (delivered, or rejected for good).
    Done(T),
    /// Worth another try: `reason` for the logs, and the upstream's `Retry-After`, if any.
    Retry {
        /// Why the attempt failed.
        reason: String,
        /// How long the upstream asked us to wait.
        retry_after: Option<Duration>,
    },
}

/// Runs `attempt` until it is done, fails permanently, or `policy.max_tries` attempts failed
/// temporarily. Waits `Retry-After` when given, else the policy's backoff.
///
/// In a traced dispatch each attempt is an `upstream try` span (see [`crate::trace`]); an
/// attempt may add the upstream's name and HTTP status to it
/// ([`trace::record_upstream`](crate::trace::record_upstream),
/// [`trace::record_http_status`](crate::trace::record_http_status)).
pub async fn retry<T, F, Fut>(policy: &RetryPolicy, attempt: F) -> Result<T, PushError>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<Attempt<T>, PushError>>,
{
    retry_traced(policy, true, attempt).await
}

/// [`retry`] for work that is not a request to the upstream (the endpoint guard's lookups):
/// no spans.
pub(crate) async fn retry_untraced<T, F, Fut>(
    policy: &RetryPolicy,
    attempt: F,
) -> Result<T, PushError>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<Attempt<T>, PushError>>,
{
    retry_traced(policy, false, attempt).await
}

async fn retry_traced<T, F, Fut>(
    policy: &RetryPolicy,
    traced: bool,
    mut attempt: F,
) -> Result<T, PushError>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<Attempt<T>, PushError>>,
{
    let mut tries = 0;
    loop {
        let span = traced.then(|| crate::trace::start_try(tries)).flatten();
        let outcome = match span {
            None => attempt(tries).await,
            Some(span) => {
                let outcome = span.scope(attempt(tries)).await;
                span.finish(match &outcome {
                    Ok(Attempt::Done(_)) => None,
                    Ok(Attempt::Retry { reason, .. }) => Some(reason),
                    Err(err) => Some(&err.message),
                });
                outcome
            }
        };
        let (reason, retry_after) = match outcome? {
            Attempt::Done(value) => return Ok(value),
            Attempt::Retry {
                reason,
                retry_after,
            } => (reason, retry_after),
        };
        tries += 1;
        if tries >= policy.max_tries {
            return Err(PushError::temporary(format!(
                "{reason} (gave up after {tries} tries)"
            )));
        }
        let delay = retry_after.unwrap_or_else(|| policy.backoff(tries - 1));
        if delay > policy.max_delay {
            return Err(PushError::temporary(format!(
                "{reason} (upstream asked to wait {}s)",
                delay.as_secs()
            )));
        }
        tracing::info!(try_number = tries, delay_ms = delay.as_millis() as u64, %reason, "retrying");
        tokio::time::sleep(delay).await;
    }
}

/// The `Retry-After` header as a delay: delta-seconds, or an HTTP date.
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let when = httpdate_to_unix(value)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs();
    Some(Duration::from_secs(when.saturating_sub(now)))
}

/// Parses an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`) into Unix seconds.
fn httpdate_to_unix(value: &str) -> Option<u64> {
    let mut parts = value.split_whitespace().skip(1);
    let day: u64 = parts.next()?.parse().ok()?;
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month_name = parts.next()?;
    let month = MONTHS.iter().position(|m| *m == month_name)? as u64 + 1;
    let year: u64 = parts.next()?.parse().ok()?;
    let mut hms = parts.next()?.split(':').map(|n| n.parse::<u64>().ok());
    let (h, m, s) = (hms.next()??, hms.next()??, hms.next()??);
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = (era * 146_097 + doe).checked_sub(719_468)?;
    Some(days * 86_400 + h * 3600 + m * 60 + s)
}

/// A request error with its causes (where reqwest keeps the useful part), without the URL:
/// URLs can hold secrets (an APNs device token, a UnifiedPush endpoint), which must not be logged.
pub fn describe_error(err: reqwest::Error) -> String {
    error_chain(&err.without_url())
}

/// Why an answer was refused: its body is longer than the caller's `limit`.
pub(crate) fn body_over(limit: usize) -> String {
    format!("response body over {limit} bytes")
}

/// Why an answer could not be read.
pub(crate) fn read_failed(why: impl std::fmt::Display) -> String {
    format!("reading the response failed: {why}")
}

/// An error followed by its causes, `: `-separated.
pub(crate) fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Reads a response body, refusing more than `limit` bytes.
pub async fn read_body_limited(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(read_failed)? {
        if body.len() + chunk.len() > limit {
            return Err(body_over(limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Reads one request head from `stream`, through its blank line; what came before the
/// connection ended if it ended first. For tests playing an upstream.
#[cfg(test)]
pub(crate) async fn read_request_head(stream: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        if stream.read_exact(&mut byte).await.is_err() {
            break;
        }
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_the_base() {
        let policy = RetrySettings {
            max_tries: 3,
            retry_delay_base: 0.5,
        }
        .policy()
        .unwrap();
        assert_eq!(policy.backoff(0), Duration::from_millis(500));
        assert_eq!(policy.backoff(1), Duration::from_secs(1));
        assert_eq!(policy.backoff(2), Duration::from_secs(2));
    }

    #[test]
    fn invalid_retry_settings_name_the_key() {
        let zero = RetrySettings {
            max_tries: 0,
            retry_delay_base: 1.0,
        };
        assert!(zero.policy().unwrap_err().contains("max_tries"));
        let negative = RetrySettings {
            max_tries: 1,
            retry_delay_base: -1.0,
        };
        assert!(negative.policy().unwrap_err().contains("retry_delay_base"));
    }

    #[test]
    fn parses_retry_after_forms() {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert("retry-after", "7".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        assert_eq!(
            httpdate_to_unix("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777)
        );
        headers.insert(
            "retry-after",
            "Sun, 06 Nov 1994 08:49:37 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&headers), Some(Duration::ZERO));
    }

    #[tokio::test]
    async fn retry_stops_at_max_tries_and_reports_temporary() {
        let policy = RetrySettings {
            max_tries: 3,
            retry_delay_base: 0.0,
        }
        .policy()
        .unwrap();
        let mut calls = 0;
        let result: Result<(), PushError> = retry(&policy, |_| {
            calls += 1;
            async {
                Ok(Attempt::Retry {
                    reason: "upstream 503".into(),
                    retry_after: None,
                })
            }
        })
        .await;
        assert_eq!(calls, 3);
        let err = result.unwrap_err();
        assert!(err.temporary && err.message.contains("3 tries"), "{err}");
    }

    #[tokio::test]
    async fn retry_returns_success_and_permanent_errors_at_once() {
        let policy = RetrySettings::default().policy().unwrap();
        let ok: Result<u8, _> = retry(&policy, |_| async { Ok(Attempt::Done(7)) }).await;
        assert_eq!(ok, Ok(7));
        let mut calls = 0;
        let err: Result<u8, _> = retry(&policy, |_| {
            calls += 1;
            async { Err(PushError::permanent("401")) }
        })
        .await;
        assert_eq!((calls, err), (1, Err(PushError::permanent("401"))));
    }

    #[test]
    fn retry_settings_from_context_name_the_key() {
        let ctx = |config: serde_json::Value| {
            let serde_json::Value::Object(map) = config else {
                unreachable!()
            };
            crate::PushkinContext::for_tests("app", map, HostInfo::default())
        };
        let policy = RetrySettings::from_context(&ctx(serde_json::json!({}))).unwrap();
        assert_eq!(
            (policy.max_tries, policy.retry_delay_base),
            (3, Duration::from_secs(10))
        );
        let policy = RetrySettings::from_context(&ctx(
            serde_json::json!({"max_tries": 5, "retry_delay_base": 0.25}),
        ))
        .unwrap();
        assert_eq!(
            (policy.max_tries, policy.retry_delay_base),
            (5, Duration::from_millis(250))
        );
        let err =
            RetrySettings::from_context(&ctx(serde_json::json!({"max_tries": 0}))).unwrap_err();
        assert!(err.starts_with("apps.app.max_tries: "), "{err}");
        let err =
            RetrySettings::from_context(&ctx(serde_json::json!({"max_tries": "x"}))).unwrap_err();
        assert!(err.starts_with("apps.app.max_tries: "), "{err}");
        let err = RetrySettings::from_context(&ctx(serde_json::json!({"retry_delay_base": -1})))
            .unwrap_err();
        assert!(err.starts_with("apps.app.retry_delay_base: "), "{err}");
    }

    #[test]
    fn base_urls_are_validated_and_trimmed() {
        assert_eq!(
            base_url("https://api.example.org/").unwrap(),
            "https://api.example.org"
        );
        assert_eq!(
            base_url("http://127.0.0.1:8080/prefix").unwrap(),
            "http://127.0.0.1:8080/prefix"
        );
        assert!(base_url("ftp://x").is_err());
        assert!(base_url("https://x/?q=1").is_err());
        assert!(base_url("not a url").is_err());
    }

    #[tokio::test]
    async fn described_errors_leave_the_url_out() {
        install_crypto_provider();
        let client = build_client(&HostInfo::default(), &ClientOptions::default()).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let err = client
            .post(format!("http://127.0.0.1:{port}/secret-device-token"))
            .send()
            .await
            .unwrap_err();
        let text = describe_error(err);
        assert!(!text.contains("secret-device-token"), "{text}");
        assert!(text.contains("connect"), "{text}");
    }

    #[test]
    fn identity_pem_needs_certificate_and_key() {
        assert!(parse_identity_pem(b"")
            .unwrap_err()
            .contains("no certificate"));
    }
}
