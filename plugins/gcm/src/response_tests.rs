//! Unit tests for response.rs: every legacy and v1 answer.

use super::*;
use serde_json::json;

fn keys(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

#[test]
fn legacy_statuses() {
    let pushkeys = keys(&["a", "b"]);
    assert!(matches!(
        classify_legacy(503, b"", &pushkeys),
        LegacyOutcome::Retry(_)
    ));
    assert!(matches!(
        classify_legacy(500, b"", &pushkeys),
        LegacyOutcome::Retry(_)
    ));
    assert!(
        matches!(classify_legacy(400, b"bad", &pushkeys), LegacyOutcome::Permanent(m) if m.contains("400"))
    );
    assert!(
        matches!(classify_legacy(401, b"", &pushkeys), LegacyOutcome::Permanent(m) if m.contains("401"))
    );
    assert!(
        matches!(classify_legacy(302, b"", &pushkeys), LegacyOutcome::Permanent(m) if m.contains("302"))
    );
    assert_eq!(
        classify_legacy(404, b"", &pushkeys),
        LegacyOutcome::Processed {
            rejected: pushkeys.clone(),
            retry: vec![]
        }
    );
}

#[test]
fn legacy_results_are_sorted_per_pushkey() {
    let pushkeys = keys(&[
        "ok",
        "missing",
        "invalid",
        "notreg",
        "pkg",
        "sender",
        "big",
        "datakey",
        "ttl",
        "unavailable",
        "internal",
    ]);
    let body = json!({
        "multicast_id": 1, "success": 1, "failure": 10, "canonical_ids": 0,
        "results": [
            {"message_id": "0:1"},
            {"error": "MissingRegistration"},
            {"error": "InvalidRegistration"},
            {"error": "NotRegistered"},
            {"error": "InvalidPackageName"},
            {"error": "MismatchSenderId"},
            {"error": "MessageTooBig"},
            {"error": "InvalidDataKey"},
            {"error": "InvalidTtl"},
            {"error": "Unavailable"},
            {"error": "InternalServerError"},
        ]
    });
    assert_eq!(
        classify_legacy(200, body.to_string().as_bytes(), &pushkeys),
        LegacyOutcome::Processed {
            rejected: keys(&["missing", "invalid", "notreg", "pkg", "sender"]),
            retry: keys(&["unavailable", "internal"]),
        }
    );
}

#[test]
fn legacy_odd_success_bodies() {
    let pushkeys = keys(&["a", "b"]);
    assert!(matches!(
        classify_legacy(200, b"not json", &pushkeys),
        LegacyOutcome::Permanent(_)
    ));
    assert!(matches!(
        classify_legacy(200, b"{}", &pushkeys),
        LegacyOutcome::Permanent(_)
    ));
    // Fewer results than pushkeys: the ones without a result count as delivered (Sygnal).
    let short = json!({"results": [{"error": "NotRegistered"}]}).to_string();
    assert_eq!(
        classify_legacy(200, short.as_bytes(), &pushkeys),
        LegacyOutcome::Processed {
            rejected: keys(&["a"]),
            retry: vec![]
        }
    );
}

fn google_error(code: u16, status: &str, message: &str, details: serde_json::Value) -> Vec<u8> {
    json!({"error": {"code": code, "message": message, "status": status, "details": details}})
        .to_string()
        .into_bytes()
}

#[test]
fn v1_success_and_retryable() {
    assert_eq!(
        classify_v1(200, br#"{"name":"projects/p/messages/1"}"#),
        V1Outcome::Delivered
    );
    assert!(matches!(
        classify_v1(429, b"",),
        V1Outcome::Retry { quota: true, .. }
    ));
    for status in [500, 502, 503, 504] {
        assert!(
            matches!(
                classify_v1(status, b"<html>",),
                V1Outcome::Retry { quota: false, .. }
            ),
            "{status}"
        );
    }
}

#[test]
fn v1_invalid_token_is_rejected_but_other_400s_fail() {
    let field_violation = google_error(
        400,
        "INVALID_ARGUMENT",
        "The registration token is not a valid FCM registration token",
        json!([
            {"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": "INVALID_ARGUMENT"},
            {"@type": "type.googleapis.com/google.rpc.BadRequest",
             "fieldViolations": [{"field": "message.token", "description": "Invalid registration token"}]},
        ]),
    );
    assert!(matches!(
        classify_v1(400, &field_violation),
        V1Outcome::Rejected(_)
    ));

    let fcm_error_only = google_error(
        400,
        "INVALID_ARGUMENT",
        "The registration token is not a valid FCM registration token",
        json!([{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": "INVALID_ARGUMENT"}]),
    );
    assert!(matches!(
        classify_v1(400, &fcm_error_only),
        V1Outcome::Rejected(_)
    ));

    let bad_data = google_error(
        400,
        "INVALID_ARGUMENT",
        "Invalid value at 'message.data[0].value' (TYPE_STRING), 3",
        json!([
            {"@type": "type.googleapis.com/google.rpc.BadRequest",
             "fieldViolations": [{"field": "message.data[0].value", "description": "Invalid value"}]},
        ]),
    );
    assert!(
        matches!(classify_v1(400, &bad_data), V1Outcome::Permanent(m) if m.contains("INVALID_ARGUMENT"))
    );

    let other_invalid = google_error(
        400,
        "INVALID_ARGUMENT",
        "Request contains an invalid argument.",
        json!([{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": "INVALID_ARGUMENT"}]),
    );
    assert!(matches!(
        classify_v1(400, &other_invalid),
        V1Outcome::Permanent(_)
    ));
    assert!(matches!(
        classify_v1(400, b"garbage"),
        V1Outcome::Permanent(_)
    ));
}

#[test]
fn v1_auth_and_sender_errors_fail_permanently() {
    let unauthenticated = google_error(
        401,
        "UNAUTHENTICATED",
        "Request had invalid authentication credentials.",
        json!([]),
    );
    assert!(
        matches!(classify_v1(401, &unauthenticated), V1Outcome::Unauthorized(m) if m.contains("UNAUTHENTICATED"))
    );
    let mismatch = google_error(
        403,
        "PERMISSION_DENIED",
        "SenderId mismatch",
        json!([{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": "SENDER_ID_MISMATCH"}]),
    );
    assert!(
        matches!(classify_v1(403, &mismatch), V1Outcome::Permanent(m) if m.contains("SENDER_ID_MISMATCH"))
    );
    assert!(matches!(classify_v1(418, b""), V1Outcome::Permanent(m) if m.contains("418")));
}

#[test]
fn v1_404_rejects_unregistered_tokens_only() {
    let unregistered = google_error(
        404,
        "NOT_FOUND",
        "Requested entity was not found.",
        json!([{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": "UNREGISTERED"}]),
    );
    assert!(matches!(
        classify_v1(404, &unregistered),
        V1Outcome::Rejected(_)
    ));
    // Plain 404 (FCM-compatible servers): Sygnal rejects.
    assert!(matches!(classify_v1(404, b""), V1Outcome::Rejected(_)));
    let other = google_error(
        404,
        "NOT_FOUND",
        "Requested entity was not found.",
        json!([{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": "UNSPECIFIED_ERROR"}]),
    );
    assert!(matches!(classify_v1(404, &other), V1Outcome::Permanent(_)));
}

#[test]
fn pushkey_hints_do_not_reveal_the_key() {
    assert_eq!(pushkey_hint("fcm-token-abcdefghijkl"), "fcm-to…");
    assert_eq!(pushkey_hint("ab"), "ab…");
    let long_message = vec![b'x'; 1000];
    assert!(snippet(&long_message).len() <= 200);
}
