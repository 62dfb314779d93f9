//! Sending to FCM: the legacy batch request, v1's per-device requests, retries, the
//! `max_connections` limit and Sygnal's metrics.

use crate::data::FcmData;
use crate::oauth::TokenSource;
use crate::payload::{self, ApiVersion, Data, LegacyRequest, V1Request};
use crate::response::{classify_legacy, classify_v1, pushkey_hint, LegacyOutcome, V1Outcome};
use futures_util::future::join_all;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use sygnal_plugin_api::http::reqwest::{header, header::HeaderValue, Method, Url};
use sygnal_plugin_api::http::{retry, retry_after, Attempt, RetryPolicy};
use sygnal_plugin_api::http::{Bytes, DirectClient, Request, Uri};
use sygnal_plugin_api::http::{ConnectionSlots, SlotMetrics};
use sygnal_plugin_api::tracing::{info, warn};
use sygnal_plugin_api::{FanOut, JsonObject, Labels, Metrics, Notification, PushError};

/// The legacy API takes at most this many registration ids in one request.
pub const MAX_REGISTRATION_IDS: usize = 1000;

/// FCM answers are small, but a legacy batch has one result per device.
const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// Sygnal waits 60 s (doubling) after a 429 when FCM gives no Retry-After, six times its 10 s
/// default base. Scaling with `retry_delay_base` keeps the default and lets tests run fast.
const QUOTA_DELAY_FACTOR: u32 = 6;

const QUEUE_TIME: (&str, &str) = (
    "sygnal_gcm_queue_time",
    "Time taken waiting for a connection to GCM",
);
const REQUEST_TIME: (&str, &str) = (
    "sygnal_gcm_request_time",
    "Time taken to send HTTP request to GCM",
);
const PENDING: (&str, &str) = (
    "sygnal_pending_gcm_requests",
    "Number of GCM requests waiting for a connection",
);
const ACTIVE: (&str, &str) = (
    "sygnal_active_gcm_requests",
    "Number of GCM requests in flight",
);
const DROPPED: (&str, &str) = (
    "sygnal_gcm_dropped",
    "Notifications not sent to GCM because they can never be delivered",
);
const STATUS_CODES: (&str, &str) = (
    "sygnal_gcm_status_codes",
    "Number of HTTP response status codes received from GCM",
);

/// How requests are authorised. URLs and header values are built once per app: parsing a URL
/// (IDNA included) per request showed in the profile.
pub enum Auth {
    /// Legacy: `Authorization: key=<api_key>` to `{endpoint}/fcm/send`.
    Legacy {
        /// The full header value, marked sensitive. Secret.
        header: HeaderValue,
        /// The send URL.
        url: Uri,
    },
    /// v1: a bearer token from the service account to `{endpoint}/v1/projects/{id}/messages:send`.
    V1 {
        /// Where tokens come from.
        tokens: TokenSource,
        /// The send URL.
        url: Uri,
    },
}

/// An HTTP answer, read in full.
struct Response {
    status: u16,
    /// The `Retry-After` it carried: read while the headers are at hand, so they need not be
    /// copied out of the response.
    retry_after: Option<Duration>,
    body: Bytes,
}

/// `Content-Type` of every request.
const JSON: HeaderValue = HeaderValue::from_static("application/json");

/// Everything needed to deliver notifications for one app.
pub struct Transport {
    client: DirectClient,
    auth: Auth,
    slots: ConnectionSlots,
    retry: RetryPolicy,
    fan_out: FanOut,
    fcm_options: JsonObject,
    send_badge_counts: bool,
    /// Sent when the host gave no User-Agent (the client sets the host's otherwise).
    fallback_user_agent: bool,
    metrics: Metrics,
    pushkin_labels: Labels,
    /// `pushkin_labels` with `code="200"`, the answer to almost every request.
    ok_labels: Labels,
    no_labels: Labels,
}

/// What building a transport needs (see [`Transport::new`]).
pub struct TransportSettings {
    /// The app, for metric labels.
    pub app_id: String,
    /// The client for FCM requests (proxy and trust roots already applied).
    pub client: DirectClient,
    /// Credentials and URL.
    pub auth: Auth,
    /// `max_connections`.
    pub max_connections: usize,
    /// How long a request may wait for a free connection slot before the attempt fails
    /// (temporarily).
    pub slot_wait: Duration,
    /// `max_tries` / `retry_delay_base`.
    pub retry: RetryPolicy,
    /// `max_concurrent_devices`: v1 requests of one notification in flight at once.
    pub fan_out: FanOut,
    /// `fcm_options`.
    pub fcm_options: JsonObject,
    /// `send_badge_counts`.
    pub send_badge_counts: bool,
    /// True when the host configured no User-Agent.
    pub fallback_user_agent: bool,
    /// The host's metrics.
    pub metrics: Metrics,
}

impl Transport {
    /// A transport for one app.
    pub fn new(settings: TransportSettings) -> Self {
        Transport {
            client: settings.client,
            auth: settings.auth,
            slots: ConnectionSlots::new(
                settings.max_connections,
                settings.slot_wait,
                "FCM",
                settings.metrics,
                SlotMetrics {
                    pending: PENDING,
                    active: ACTIVE,
                    queue_time: QUEUE_TIME,
                },
            ),
            retry: settings.retry,
            fan_out: settings.fan_out,
            fcm_options: settings.fcm_options,
            send_badge_counts: settings.send_badge_counts,
            fallback_user_agent: settings.fallback_user_agent,
            metrics: settings.metrics,
            pushkin_labels: Labels::new(&[("pushkin", &settings.app_id)]),
            ok_labels: Labels::new(&[("pushkin", &settings.app_id), ("code", "200")]),
            no_labels: Labels::default(),
        }
    }

    /// Delivers `notification` to its devices; returns the rejected pushkeys.
    pub async fn dispatch(&self, notification: &Notification) -> Result<Vec<String>, PushError> {
        if notification.devices.is_empty() {
            return Ok(Vec::new());
        }
        match &self.auth {
            Auth::Legacy { header, url } => self.dispatch_legacy(notification, header, url).await,
            Auth::V1 { tokens, url } => self.dispatch_v1(notification, tokens, url).await,
        }
    }

    /// One request per batch of at most [`MAX_REGISTRATION_IDS`] devices, batches concurrently
    /// (bounded by `max_connections`); per-result failures retried for just those pushkeys.
    async fn dispatch_legacy(
        &self,
        notification: &Notification,
        authorization: &HeaderValue,
        url: &Uri,
    ) -> Result<Vec<String>, PushError> {
        let pushkeys: Vec<String> = notification
            .devices
            .iter()
            .map(|d| d.pushkey.clone())
            .collect();
        // One body for all devices, so the first device's pusher data decides it (as Sygnal).
        let first = &notification.devices[0];
        let data = match payload::build_data(
            notification,
            first,
            ApiVersion::Legacy,
            self.send_badge_counts,
        ) {
            Data::Send(data) => data,
            Data::Nothing => return Ok(Vec::new()),
            Data::BadDefaultPayload => {
                warn!("rejecting pushkeys: default_payload must be an object");
                return Ok(pushkeys);
            }
            Data::TooLarge { bytes } => {
                self.drop_too_large(bytes);
                return Ok(Vec::new());
            }
        };
        let low_priority = notification.is_low_priority();
        if pushkeys.len() <= MAX_REGISTRATION_IDS {
            // The usual case (Synapse sends one device): no batch list to build and join.
            return self
                .send_legacy_batch(&data, low_priority, pushkeys, authorization, url)
                .await;
        }
        let batches = pushkeys.chunks(MAX_REGISTRATION_IDS).map(|batch| {
            self.send_legacy_batch(&data, low_priority, batch.to_vec(), authorization, url)
        });
        let mut rejected = Vec::new();
        let mut failure: Option<PushError> = None;
        for result in join_all(batches).await {
            match result {
                Ok(keys) => rejected.extend(keys),
                Err(err) => failure = Some(PushError::worse(failure, err)),
            }
        }
        match failure {
            Some(err) => Err(err),
            None => Ok(rejected),
        }
    }

    /// Sends `body` to one batch of `pushkeys`; returns the rejected ones.
    async fn send_legacy_batch(
        &self,
        data: &FcmData<'_>,
        low_priority: bool,
        pushkeys: Vec<String>,
        authorization: &HeaderValue,
        url: &Uri,
    ) -> Result<Vec<String>, PushError> {
        struct Progress {
            pending: Vec<String>,
            rejected: Vec<String>,
        }
        let progress = Mutex::new(Progress {
            pending: pushkeys,
            rejected: Vec::new(),
        });

        let outcome = retry(&self.retry, |try_number| {
            let progress = &progress;
            async move {
                // Tries run one at a time: what is pending stays as it was while one waits.
                let body = {
                    let progress = lock(progress);
                    info!(
                        try_number,
                        devices = progress.pending.len(),
                        "sending to FCM (legacy)"
                    );
                    encode(&LegacyRequest {
                        options: &self.fcm_options,
                        data,
                        low_priority,
                        pushkeys: &progress.pending,
                    })
                };
                let response = match self.post(url, authorization.clone(), body).await {
                    Ok(response) => response,
                    Err(reason) => {
                        return Ok(Attempt::Retry {
                            reason,
                            retry_after: None,
                        })
                    }
                };
                let mut progress = lock(progress);
                match classify_legacy(response.status, &response.body, &progress.pending) {
                    LegacyOutcome::Processed { rejected, retry } => {
                        progress.rejected.extend(rejected);
                        progress.pending = retry;
                        if progress.pending.is_empty() {
                            Ok(Attempt::Done(()))
                        } else {
                            Ok(Attempt::Retry {
                                reason: format!(
                                    "{} device(s) failed temporarily",
                                    progress.pending.len()
                                ),
                                retry_after: None,
                            })
                        }
                    }
                    LegacyOutcome::Retry(reason) => Ok(Attempt::Retry {
                        reason,
                        retry_after: response.retry_after,
                    }),
                    LegacyOutcome::Permanent(message) => Err(PushError::permanent(message)),
                }
            }
        })
        .await;
        let progress = progress
            .into_inner()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match outcome {
            Ok(()) => Ok(progress.rejected),
            Err(err) => {
                let hints: Vec<String> = progress.pending.iter().map(|k| pushkey_hint(k)).collect();
                warn!(pending = ?hints, error = %err.message, "gave up on FCM delivery");
                Err(err)
            }
        }
    }

    /// One request per device, at most `max_concurrent_devices` of them at once (and all of
    /// the app's requests bounded by `max_connections`).
    async fn dispatch_v1(
        &self,
        notification: &Notification,
        tokens: &TokenSource,
        url: &Uri,
    ) -> Result<Vec<String>, PushError> {
        self.fan_out
            .run(&notification.devices, |device| {
                self.send_v1(notification, device, tokens, url)
            })
            .await
    }

    /// Sends to one device; `Ok(true)` when its pushkey is rejected.
    async fn send_v1(
        &self,
        notification: &Notification,
        device: &sygnal_plugin_api::Device,
        tokens: &TokenSource,
        url: &Uri,
    ) -> Result<bool, PushError> {
        // Only for logs: not built unless one is written.
        let hint = || pushkey_hint(&device.pushkey);
        let data = match payload::build_data(
            notification,
            device,
            ApiVersion::V1,
            self.send_badge_counts,
        ) {
            Data::Send(data) => data,
            Data::Nothing => return Ok(false),
            Data::BadDefaultPayload => {
                warn!(pushkey = %hint(), "rejecting pushkey: default_payload must be an object");
                return Ok(true);
            }
            Data::TooLarge { bytes } => {
                self.drop_too_large(bytes);
                return Ok(false);
            }
        };
        let body = V1Request {
            options: &self.fcm_options,
            data: &data,
            low_priority: notification.is_low_priority(),
            token: &device.pushkey,
        };

        retry(&self.retry, |try_number| {
            let (body, hint) = (&body, &hint);
            async move {
                let token = match tokens.token().await {
                    Ok(token) => token,
                    Err(err) if err.temporary => {
                        return Ok(Attempt::Retry {
                            reason: err.message,
                            retry_after: None,
                        })
                    }
                    Err(err) => return Err(PushError::permanent(err.message)),
                };
                info!(try_number, pushkey = %hint(), "sending to FCM (v1)");
                let response = match self
                    .post(url, token.authorization().clone(), encode(body))
                    .await
                {
                    Ok(response) => response,
                    Err(reason) => {
                        return Ok(Attempt::Retry {
                            reason,
                            retry_after: None,
                        })
                    }
                };
                match classify_v1(response.status, &response.body) {
                    V1Outcome::Delivered => Ok(Attempt::Done(false)),
                    V1Outcome::Rejected(reason) => {
                        info!(pushkey = %hint(), %reason, "FCM rejected the token");
                        Ok(Attempt::Done(true))
                    }
                    V1Outcome::Retry { reason, quota } => {
                        let quota_delay =
                            quota.then(|| self.retry.backoff(try_number) * QUOTA_DELAY_FACTOR);
                        Ok(Attempt::Retry {
                            reason,
                            retry_after: response.retry_after.or(quota_delay),
                        })
                    }
                    V1Outcome::Unauthorized(message) => {
                        // Maybe revoked early: make the next push fetch a fresh token.
                        tokens.invalidate(token.value()).await;
                        Err(PushError::permanent(message))
                    }
                    V1Outcome::Permanent(message) => Err(PushError::permanent(message)),
                }
            }
        })
        .await
    }

    /// POSTs `body` (JSON, see [`encode`]), waiting for a connection slot first; a transport
    /// failure is `Err`.
    async fn post(
        &self,
        url: &Uri,
        authorization: HeaderValue,
        body: Result<Vec<u8>, String>,
    ) -> Result<Response, String> {
        let body = body?;

        // Held (and counted as active) until the answer is read.
        let _slot = self.slots.acquire().await?;

        let started = Instant::now();
        // Built in place: the builder moves the whole request head on every header it adds.
        let mut request = Request::new(Bytes::from(body));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = url.clone();
        let headers = request.headers_mut();
        headers.insert(header::AUTHORIZATION, authorization);
        headers.insert(header::CONTENT_TYPE, JSON);
        if self.fallback_user_agent {
            headers.insert(header::USER_AGENT, HeaderValue::from_static("sygnal"));
        }
        let result = self
            .client
            .send(request, MAX_RESPONSE_BYTES)
            .await
            .map(|response| Response {
                status: response.status().as_u16(),
                retry_after: retry_after(response.headers()),
                body: response.into_body(),
            })
            .map_err(|err| format!("FCM request failed: {err}"));
        self.metrics.histogram_observe(
            REQUEST_TIME.0,
            REQUEST_TIME.1,
            &self.no_labels,
            started.elapsed().as_secs_f64(),
        );
        if let Ok(response) = &result {
            let other;
            let labels = if response.status == 200 {
                &self.ok_labels
            } else {
                other = self
                    .pushkin_labels
                    .with("code", &response.status.to_string());
                &other
            };
            self.metrics
                .counter_add(STATUS_CODES.0, STATUS_CODES.1, labels, 1.0);
        }
        result
    }

    /// Logs and counts a notification that can never fit FCM's limit: dropped, not failed,
    /// so the homeserver does not retry it for a day.
    fn drop_too_large(&self, bytes: usize) {
        warn!(
            bytes,
            limit = payload::MAX_DATA_BYTES,
            "data over FCM's limit even with every text shaved: notification dropped"
        );
        let labels = self.pushkin_labels.with("reason", "payload_too_large");
        self.metrics.counter_add(DROPPED.0, DROPPED.1, &labels, 1.0);
    }
}

/// `body` as JSON, in a buffer sized for a usual FCM request so that writing it rarely grows it.
fn encode(body: &impl serde::Serialize) -> Result<Vec<u8>, String> {
    let mut json = Vec::with_capacity(1024);
    serde_json::to_writer(&mut json, body)
        .map_err(|err| format!("cannot encode the request: {err}"))?;
    Ok(json)
}

/// Locks `mutex`, ignoring poisoning: the guarded data stays consistent between statements.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The header value for a legacy API key, marked sensitive (kept out of debug output).
pub fn legacy_authorization(api_key: &str) -> Result<HeaderValue, String> {
    let mut value = HeaderValue::try_from(format!("key={api_key}"))
        .map_err(|_| "not usable in an HTTP header".to_owned())?;
    value.set_sensitive(true);
    Ok(value)
}

/// Parses a send URL built from a validated `endpoint`.
pub fn send_url(url: &str) -> Result<Uri, String> {
    let invalid = |why: &dyn std::fmt::Display| format!("{url:?} is not a valid URL ({why})");
    // The URL parser normalises (IDNA, percent-encoding) what the URI parser would refuse.
    let url = Url::parse(url).map_err(|err| invalid(&err))?;
    url.as_str().parse().map_err(|err| invalid(&err))
}
