//! Sending one push to APNs: the HTTP/2 request, what each answer means, retries and metrics.
//!
//! Requests go over the SDK's reqwest client (rustls, the host's proxy and trust roots, the
//! certfile as client certificate), one client per app, so one HTTP/2 connection is kept and
//! multiplexed for all of the app's pushes.

use crate::config::{ApnsConfig, Auth, PushType};
use crate::token::ProviderToken;
use std::time::Instant;
use sygnal_plugin_api::http::reqwest::{self, header};
use sygnal_plugin_api::http::{
    build_client, describe_error, read_body_limited, retry, retry_after, Attempt, ClientOptions,
    RetryPolicy,
};
use sygnal_plugin_api::tracing;
use sygnal_plugin_api::{HostInfo, Labels, Metrics, PushError};

const REQUEST_TIME: &str = "sygnal_apns_request_time";
const REQUEST_TIME_HELP: &str = "Time taken to send HTTP request to APNS";
const ACTIVE_REQUESTS: &str = "sygnal_active_apns_requests";
const ACTIVE_REQUESTS_HELP: &str = "Number of APNS requests in flight";
const STATUS_CODES: &str = "sygnal_apns_status_codes";
const STATUS_CODES_HELP: &str = "Number of HTTP response status codes received from APNS";
/// Set once per certfile app at startup.
pub const CERT_EXPIRY: &str = "sygnal_client_cert_expiry";
/// Help text of [`CERT_EXPIRY`].
pub const CERT_EXPIRY_HELP: &str =
    "The expiry date of the client certificate in seconds since the epoch";

/// APNs error bodies are tiny; anything bigger is not APNs.
const MAX_ERROR_BODY: usize = 16 * 1024;

/// One push, ready to send.
#[derive(Debug, Clone, Copy)]
pub struct Push<'a> {
    /// The token for the request path (hex, or the pushkey as given).
    pub device_token: &'a str,
    /// The JSON payload.
    pub body: &'a [u8],
    /// `apns-priority`: 10 (immediate) or 5 (power-considerate).
    pub priority: u8,
    /// A short, loggable prefix of the pushkey.
    pub log_key: &'a str,
}

/// How APNs answered a push that did not fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// Accepted.
    Delivered,
    /// The device token is no good for this app: reject the pushkey.
    Rejected {
        /// HTTP status.
        status: u16,
        /// APNs' `reason`.
        reason: String,
    },
}

/// What an APNs answer means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// 2xx.
    Delivered,
    /// The token is invalid or gone (Sygnal's TOKEN_ERRORS).
    RejectToken,
    /// Our provider token is too old in Apple's eyes: mint a new one and retry.
    ProviderTokenExpired,
    /// 5xx: try again later.
    Temporary,
    /// Any other answer: retrying will not help.
    Permanent,
}

/// Classifies an APNs answer by status and `reason`, as Sygnal does.
pub fn classify(status: u16, reason: Option<&str>) -> Verdict {
    match (status, reason) {
        (200..=299, _) => Verdict::Delivered,
        (400, Some("BadDeviceToken" | "DeviceTokenNotForTopic" | "TopicDisallowed"))
        | (410, Some("Unregistered")) => Verdict::RejectToken,
        (403, Some("ExpiredProviderToken")) => Verdict::ProviderTokenExpired,
        (500..=599, _) => Verdict::Temporary,
        _ => Verdict::Permanent,
    }
}

/// One app's connection to APNs.
pub struct Transport {
    app_id: String,
    client: reqwest::Client,
    endpoint: String,
    token: Option<ProviderToken>,
    topic: Option<String>,
    push_type: Option<PushType>,
    policy: RetryPolicy,
    metrics: Metrics,
    no_labels: Labels,
    pushkin_labels: Labels,
}

impl Transport {
    /// Builds the client (and, for token auth, checks the key signs) for app `app_id`.
    pub fn new(
        app_id: &str,
        config: &ApnsConfig,
        host: &HostInfo,
        metrics: Metrics,
    ) -> Result<Self, String> {
        let (identity, token) = match &config.auth {
            Auth::Token {
                key_pem,
                key_id,
                team_id,
                ..
            } => {
                let token = ProviderToken::from_pem(key_pem, key_id, team_id)
                    .map_err(|e| format!("apps.{app_id}.keyfile: {e}"))?;
                // Mint now: a key that cannot sign is a startup error, not a failed push.
                token
                    .current()
                    .map_err(|e| format!("apps.{app_id}.keyfile: {e}"))?;
                (None, Some(token))
            }
            Auth::Certificate { identity_pem, .. } => {
                sygnal_plugin_api::http::parse_identity_pem(identity_pem)
                    .map_err(|e| format!("apps.{app_id}.certfile: {e}"))?;
                (Some(identity_pem.clone()), None)
            }
        };
        let options = ClientOptions {
            http2_only: true,
            client_identity_pem: identity,
            ..ClientOptions::default()
        };
        let client = build_client(host, &options).map_err(|e| format!("apps.{app_id}: {e}"))?;
        Ok(Transport {
            app_id: app_id.to_owned(),
            client,
            endpoint: config.endpoint.clone(),
            token,
            topic: config.auth.topic().map(str::to_owned),
            push_type: config.push_type,
            policy: config.retry,
            metrics,
            no_labels: Labels::default(),
            pushkin_labels: Labels::new(&[("pushkin", app_id)]),
        })
    }

    /// Sends `push`, retrying temporary failures per the app's policy. The error is final.
    pub async fn send(&self, push: Push<'_>) -> Result<Delivery, PushError> {
        // One id for all tries: it is the same notification, and Apple echoes it back.
        let apns_id = uuid_v4();
        retry(&self.policy, |try_number| {
            let apns_id = apns_id.as_str();
            async move {
                tracing::debug!(app = %self.app_id, token = %push.log_key, %apns_id, try_number, "sending to APNs");
                self.attempt(push, apns_id).await
            }
        })
        .await
        .map_err(|mut err| {
            err.message = format!("APNs push to {}…: {}", push.log_key, err.message);
            err
        })
    }

    async fn attempt(&self, push: Push<'_>, apns_id: &str) -> Result<Attempt<Delivery>, PushError> {
        let url = format!(
            "{}/3/device/{}",
            self.endpoint,
            encode_path_segment(push.device_token)
        );
        let mut request = self
            .client
            .post(url)
            .header("apns-id", apns_id)
            .header("apns-priority", push.priority.to_string())
            .header(header::CONTENT_TYPE, "application/json")
            .body(push.body.to_vec());
        if let Some(topic) = &self.topic {
            request = request.header("apns-topic", topic);
        }
        if let Some(push_type) = self.push_type {
            request = request.header("apns-push-type", push_type.as_str());
        }
        if let Some(token) = &self.token {
            let jwt = token.current().map_err(PushError::permanent)?;
            request = request.header(header::AUTHORIZATION, format!("bearer {jwt}"));
        }

        let started = Instant::now();
        let result = {
            let _in_flight =
                self.metrics
                    .gauge_guard(ACTIVE_REQUESTS, ACTIVE_REQUESTS_HELP, &self.no_labels);
            request.send().await
        };
        self.metrics.histogram_observe(
            REQUEST_TIME,
            REQUEST_TIME_HELP,
            &self.no_labels,
            started.elapsed().as_secs_f64(),
        );
        let response = match result {
            Ok(response) => response,
            Err(err) => {
                return Ok(Attempt::Retry {
                    reason: format!("cannot reach APNs: {}", describe_error(err)),
                    retry_after: None,
                })
            }
        };

        let status = response.status().as_u16();
        self.metrics.counter_add(
            STATUS_CODES,
            STATUS_CODES_HELP,
            &self.pushkin_labels.with("code", &status.to_string()),
            1.0,
        );
        let wait = retry_after(response.headers());
        let reason = if response.status().is_success() {
            None
        } else {
            read_body_limited(response, MAX_ERROR_BODY)
                .await
                .ok()
                .and_then(|body| serde_json::from_slice::<serde_json::Value>(&body).ok())
                .and_then(|body| body.get("reason")?.as_str().map(str::to_owned))
        };
        let described = format!("{status} {}", reason.as_deref().unwrap_or("(no reason)"));

        Ok(match classify(status, reason.as_deref()) {
            Verdict::Delivered => {
                tracing::debug!(app = %self.app_id, token = %push.log_key, %apns_id, "delivered");
                Attempt::Done(Delivery::Delivered)
            }
            Verdict::RejectToken => {
                tracing::info!(app = %self.app_id, token = %push.log_key, %apns_id, answer = %described, "APNs rejected the device token");
                Attempt::Done(Delivery::Rejected {
                    status,
                    reason: reason.unwrap_or_default(),
                })
            }
            Verdict::ProviderTokenExpired => match &self.token {
                Some(token) if token.expired_by_apns() => Attempt::Retry {
                    reason: format!("APNs answered {described}: minting a new provider token"),
                    retry_after: None,
                },
                _ => {
                    return Err(PushError::permanent(format!(
                        "APNs answered {described} for a recent provider token: check the clock"
                    )))
                }
            },
            Verdict::Temporary => Attempt::Retry {
                reason: format!("APNs answered {described}"),
                retry_after: wait,
            },
            Verdict::Permanent => {
                return Err(PushError::permanent(format!("APNs answered {described}")))
            }
        })
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters, so a token given as is
/// (`convert_device_token_to_hex: false`) cannot change the path; APNs then judges it.
fn encode_path_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// A random (version 4) UUID, lowercase, for `apns-id`.
fn uuid_v4() -> String {
    use ring::rand::{SecureRandom, SystemRandom};
    let mut bytes = [0u8; 16];
    if SystemRandom::new().fill(&mut bytes).is_err() {
        // Without randomness, a time-based id still keeps ids distinct enough for logs.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        bytes = nanos.to_le_bytes();
    }
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_like_sygnal() {
        use Verdict::*;
        assert_eq!(classify(200, None), Delivered);
        for reason in [
            "BadDeviceToken",
            "DeviceTokenNotForTopic",
            "TopicDisallowed",
        ] {
            assert_eq!(classify(400, Some(reason)), RejectToken, "{reason}");
        }
        assert_eq!(classify(410, Some("Unregistered")), RejectToken);
        assert_eq!(classify(410, Some("ExpiredToken")), Permanent);
        assert_eq!(classify(400, Some("BadTopic")), Permanent);
        assert_eq!(classify(400, None), Permanent);
        assert_eq!(classify(403, Some("InvalidProviderToken")), Permanent);
        assert_eq!(
            classify(403, Some("ExpiredProviderToken")),
            ProviderTokenExpired
        );
        assert_eq!(classify(413, Some("PayloadTooLarge")), Permanent);
        assert_eq!(classify(429, Some("TooManyRequests")), Permanent);
        assert_eq!(classify(500, Some("InternalServerError")), Temporary);
        assert_eq!(classify(503, Some("ServiceUnavailable")), Temporary);
        assert_eq!(classify(502, None), Temporary);
    }

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(encode_path_segment("deadBEEF09"), "deadBEEF09");
        assert_eq!(encode_path_segment("a/b?c d"), "a%2Fb%3Fc%20d");
        assert_eq!(encode_path_segment("é"), "%C3%A9");
    }

    #[test]
    fn apns_ids_are_v4_uuids() {
        let id = uuid_v4();
        assert_eq!(id.len(), 36);
        let parts: Vec<&str> = id.split('-').collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(parts[2].starts_with('4'));
        assert!(matches!(parts[3].as_bytes()[0], b'8' | b'9' | b'a' | b'b'));
        assert_ne!(id, uuid_v4());
    }
}
