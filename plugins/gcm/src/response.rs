//! What FCM's answers mean, decided without I/O so every case is unit-tested.

use serde::Deserialize;
use serde_json::Value;

/// Legacy per-result errors meaning the registration id will never work: reject the pushkey.
pub const BAD_PUSHKEY_FAILURE_CODES: [&str; 5] = [
    "MissingRegistration",
    "InvalidRegistration",
    "NotRegistered",
    "InvalidPackageName",
    "MismatchSenderId",
];

/// Legacy per-result errors meaning this message will never work but the pushkey is fine: drop
/// the message, reject nothing, do not retry.
pub const BAD_MESSAGE_FAILURE_CODES: [&str; 3] = ["MessageTooBig", "InvalidDataKey", "InvalidTtl"];

/// A short, non-secret handle on a pushkey for logs (pushkeys let anyone push to the device).
pub fn pushkey_hint(pushkey: &str) -> String {
    let prefix = sygnal_plugin_api::text::truncate_to_chars(pushkey, 6);
    format!("{prefix}…")
}

/// What a legacy response means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LegacyOutcome {
    /// The request was processed: these pushkeys are rejected for good, these should be retried
    /// (everything else was delivered or dropped).
    Processed {
        /// Pushkeys to report as rejected.
        rejected: Vec<String>,
        /// Pushkeys whose delivery failed temporarily.
        retry: Vec<String>,
    },
    /// The whole request failed temporarily (5xx).
    Retry(String),
    /// The request will never succeed (400, 401, unknown status, unusable answer).
    Permanent(String),
}

#[derive(Deserialize)]
struct LegacyResponse {
    results: Option<Vec<LegacyResult>>,
}

#[derive(Deserialize)]
struct LegacyResult {
    error: Option<String>,
}

/// Classifies a legacy `/fcm/send` response to a request for `pushkeys` (in request order).
pub fn classify_legacy(status: u16, body: &[u8], pushkeys: &[String]) -> LegacyOutcome {
    match status {
        500..=599 => LegacyOutcome::Retry(format!("FCM answered {status}")),
        400 => LegacyOutcome::Permanent(format!(
            "FCM refused the request as invalid (400): {}",
            snippet(body)
        )),
        401 => LegacyOutcome::Permanent("FCM refused the api_key (401)".to_owned()),
        // Sygnal: assume they are all unregistered.
        404 => LegacyOutcome::Processed {
            rejected: pushkeys.to_vec(),
            retry: Vec::new(),
        },
        200..=299 => classify_legacy_results(body, pushkeys),
        other => LegacyOutcome::Permanent(format!("unexpected FCM response status {other}")),
    }
}

fn classify_legacy_results(body: &[u8], pushkeys: &[String]) -> LegacyOutcome {
    let parsed: LegacyResponse = match serde_json::from_slice(body) {
        Ok(parsed) => parsed,
        Err(_) => return LegacyOutcome::Permanent("FCM sent an invalid JSON response".to_owned()),
    };
    let Some(results) = parsed.results else {
        return LegacyOutcome::Permanent("FCM's response has no \"results\"".to_owned());
    };
    if results.len() != pushkeys.len() {
        sygnal_plugin_api::tracing::error!(
            sent = pushkeys.len(),
            results = results.len(),
            "FCM answered with a different number of results than devices sent"
        );
    }
    let mut rejected = Vec::new();
    let mut retry = Vec::new();
    for (pushkey, result) in pushkeys.iter().zip(results) {
        let Some(error) = result.error else { continue };
        let hint = pushkey_hint(pushkey);
        if BAD_PUSHKEY_FAILURE_CODES.contains(&error.as_str()) {
            sygnal_plugin_api::tracing::info!(pushkey = %hint, %error, "FCM rejected the registration id");
            rejected.push(pushkey.clone());
        } else if BAD_MESSAGE_FAILURE_CODES.contains(&error.as_str()) {
            sygnal_plugin_api::tracing::warn!(pushkey = %hint, %error, "FCM refused the message; dropped");
        } else {
            sygnal_plugin_api::tracing::info!(pushkey = %hint, %error, "FCM delivery failed temporarily");
            retry.push(pushkey.clone());
        }
    }
    LegacyOutcome::Processed { rejected, retry }
}

/// What a v1 `messages:send` response means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum V1Outcome {
    /// Accepted by FCM.
    Delivered,
    /// The token is unregistered or invalid: reject the pushkey.
    Rejected(String),
    /// Failed temporarily; `quota` when FCM said 429 (which has its own, longer, backoff).
    Retry {
        /// For the logs.
        reason: String,
        /// Whether this is a quota (429) answer.
        quota: bool,
    },
    /// 401: the access token was refused (drop it from the cache).
    Unauthorized(String),
    /// Will never succeed.
    Permanent(String),
}

#[derive(Deserialize, Default)]
struct GoogleErrorBody {
    error: Option<GoogleError>,
}

#[derive(Deserialize, Default)]
struct GoogleError {
    message: Option<String>,
    status: Option<String>,
    #[serde(default)]
    details: Vec<Value>,
}

impl GoogleError {
    /// The `errorCode` of the FcmError detail, if any.
    fn fcm_error_code(&self) -> Option<&str> {
        self.details
            .iter()
            .filter(|d| type_name(d).ends_with("google.firebase.fcm.v1.FcmError"))
            .find_map(|d| d.get("errorCode").and_then(Value::as_str))
    }

    /// Whether the error is about the registration token itself, not the rest of the message.
    fn names_the_token(&self) -> bool {
        let bad_request_on_token = self
            .details
            .iter()
            .filter(|d| type_name(d).ends_with("google.rpc.BadRequest"))
            .filter_map(|d| d.get("fieldViolations").and_then(Value::as_array))
            .flatten()
            .any(|violation| {
                violation.get("field").and_then(Value::as_str) == Some("message.token")
            });
        let fcm_invalid_token = self.fcm_error_code() == Some("INVALID_ARGUMENT")
            && self
                .message
                .as_deref()
                .is_some_and(|m| m.to_ascii_lowercase().contains("registration token"));
        self.status.as_deref() == Some("INVALID_ARGUMENT")
            && (bad_request_on_token || fcm_invalid_token)
    }

    fn describe(&self) -> String {
        let status = self.status.as_deref().unwrap_or("?");
        let code = self
            .fcm_error_code()
            .map(|c| format!("/{c}"))
            .unwrap_or_default();
        let message = self.message.as_deref().unwrap_or("");
        format!("{status}{code}: {}", snippet(message.as_bytes()))
    }
}

fn type_name(detail: &Value) -> &str {
    detail.get("@type").and_then(Value::as_str).unwrap_or("")
}

/// Classifies a v1 `messages:send` response.
pub fn classify_v1(status: u16, body: &[u8]) -> V1Outcome {
    if (200..300).contains(&status) {
        return V1Outcome::Delivered;
    }
    let error = serde_json::from_slice::<GoogleErrorBody>(body)
        .ok()
        .and_then(|b| b.error)
        .unwrap_or_default();
    let detail = error.describe();
    match status {
        // Sygnal fails these forever, so the pusher never goes away; a token FCM calls invalid
        // will stay invalid.
        400 if error.names_the_token() => {
            V1Outcome::Rejected(format!("invalid registration token (400 {detail})"))
        }
        400 => V1Outcome::Permanent(format!("FCM refused the request (400 {detail})")),
        401 => V1Outcome::Unauthorized(format!("FCM refused the access token (401 {detail})")),
        403 => V1Outcome::Permanent(format!("FCM refused the sender (403 {detail})")),
        // UNREGISTERED, or an FCM-compatible server that says no more (Sygnal rejects every
        // 404). A 404 whose FcmError names another reason is not the token's fault.
        404 => match error.fcm_error_code() {
            None | Some("UNREGISTERED") => {
                V1Outcome::Rejected(format!("token not registered (404 {detail})"))
            }
            Some(_) => V1Outcome::Permanent(format!("FCM answered 404 {detail}")),
        },
        429 => V1Outcome::Retry {
            reason: format!("FCM quota exceeded (429 {detail})"),
            quota: true,
        },
        500..=599 => V1Outcome::Retry {
            reason: format!("FCM answered {status} {detail}"),
            quota: false,
        },
        other => V1Outcome::Permanent(format!("unexpected FCM response status {other} {detail}")),
    }
}

/// The start of an upstream text, for error messages.
fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    sygnal_plugin_api::text::truncate_with_ellipsis(text.trim(), 200).into_owned()
}

#[cfg(test)]
#[path = "response_tests.rs"]
mod tests;
