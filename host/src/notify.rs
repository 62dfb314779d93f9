//! Parsing and validating a `/notify` body, without copying it.
//!
//! The host refuses what a pushkin could not handle (a 400 with a reason, not a plugin failure
//! the homeserver would retry for a day), by the one definition in `sygnal_plugin_api::validate`,
//! but keeps the notification as the raw JSON it received: plugins get that text as is, and
//! each device's own raw text, grouped per app.

use serde::Deserialize;
use serde_json::value::RawValue;
use sygnal_plugin_api::validate;

/// A valid notification: its raw JSON and its devices.
#[derive(Debug)]
pub struct ParsedNotify<'a> {
    /// The `notification` object's JSON, exactly as received.
    pub notification: &'a str,
    /// Its `event_id`, if any.
    pub event_id: Option<std::borrow::Cow<'a, str>>,
    /// The devices, in order.
    pub devices: Vec<DeviceRef<'a>>,
}

/// One device: what routing needs, and the raw text handed to the plugin.
pub type DeviceRef<'a> = validate::CheckedDevice<'a>;

/// Why a body was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum BadRequest {
    /// Not JSON at all.
    NotJson(String),
    /// JSON, but not a valid notification.
    BadJson(String),
}

#[derive(Deserialize)]
struct Body<'a> {
    #[serde(borrow)]
    notification: Option<&'a RawValue>,
}

/// How a homeserver's body starts (Synapse writes compact JSON with this one key).
const SYNAPSE_PREFIX: &[u8] = br#"{"notification":"#;

/// Parses and validates a `/notify` body: JSON syntax here, the notification itself by the
/// rules pushkins rely on ([`sygnal_plugin_api::validate`]).
pub fn parse(body: &[u8]) -> Result<ParsedNotify<'_>, BadRequest> {
    // Homeservers send exactly `{"notification":{...}}`. Then the notification is the text
    // between, and finding it needs no pass over it: the validation is the only one. If that
    // text is not exactly one valid notification, the body is read in full below, which also
    // says what is wrong with it (an invalid one is then validated twice: only refusals pay).
    let inner = body
        .strip_prefix(SYNAPSE_PREFIX)
        .and_then(|rest| rest.strip_suffix(b"}"))
        .and_then(|inner| std::str::from_utf8(inner).ok())
        .map(|inner| inner.trim_matches(|c| matches!(c, ' ' | '\t' | '\n' | '\r')));
    if let Some(inner) = inner {
        if let Ok(checked) = validate::notification(inner) {
            return Ok(ParsedNotify {
                notification: inner,
                event_id: checked.event_id,
                devices: checked.devices,
            });
        }
    }
    parse_whole(body)
}

/// [`parse`] for any body: the notification is found by reading the whole body.
fn parse_whole(body: &[u8]) -> Result<ParsedNotify<'_>, BadRequest> {
    let body: Body<'_> = serde_json::from_slice(body).map_err(|err| {
        if err.is_data() {
            BadRequest::BadJson("expected a JSON object with a `notification` object".to_owned())
        } else {
            BadRequest::NotJson(format!("body is not valid JSON: {err}"))
        }
    })?;
    let notification = body.notification.ok_or_else(|| {
        BadRequest::BadJson("expected a JSON object with a `notification` object".to_owned())
    })?;
    if !notification.get().starts_with('{') {
        return Err(BadRequest::BadJson(
            "`notification` must be an object".to_owned(),
        ));
    }
    let checked = validate::notification(notification.get())
        .map_err(|invalid| BadRequest::BadJson(invalid.to_string()))?;
    Ok(ParsedNotify {
        notification: notification.get(),
        event_id: checked.event_id,
        devices: checked.devices,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use sygnal_plugin_api::testing::{notification_json, synapse_notifications};
    use sygnal_plugin_api::Notification;

    fn bad_json(body: &str) -> String {
        match parse(body.as_bytes()) {
            Err(BadRequest::BadJson(reason)) => reason,
            other => panic!("expected BadJson for {body}, got {other:?}"),
        }
    }

    #[test]
    fn accepts_synapse_bodies() {
        let bodies: serde_json::Value =
            serde_json::from_str(include_str!("../../tests/data/synapse-notify-bodies.json"))
                .unwrap();
        for case in bodies.as_array().unwrap() {
            let text = case["body"].to_string();
            let parsed = parse(text.as_bytes()).unwrap();
            assert_eq!(parsed.devices.len(), 1);
            assert_eq!(parsed.devices[0].app_id, "com.example.e2e");
        }
    }

    #[test]
    fn keeps_raw_device_text_and_escaped_strings() {
        let body = r#"{"notification":{"devices":[{"app_id":"a\u0062","pushkey":"k","x":[1]}]}}"#;
        let parsed = parse(body.as_bytes()).unwrap();
        assert_eq!(parsed.devices[0].app_id, "ab");
        assert_eq!(
            parsed.devices[0].raw.get(),
            r#"{"app_id":"a\u0062","pushkey":"k","x":[1]}"#
        );
    }

    #[test]
    fn returns_the_event_id_for_duplicate_suppression() {
        let device = r#"[{"app_id":"a","pushkey":"k"}]"#;
        for (event_id, expected) in [
            (r#""$e""#, Some("$e")),
            (r#""$\u0065""#, Some("$e")),
            ("null", None),
        ] {
            let body =
                format!(r#"{{"notification":{{"event_id":{event_id},"devices":{device}}}}}"#);
            let parsed = parse(body.as_bytes()).unwrap();
            assert_eq!(parsed.event_id.as_deref(), expected, "{event_id}");
        }
        let body = format!(r#"{{"notification":{{"devices":{device}}}}}"#);
        assert_eq!(parse(body.as_bytes()).unwrap().event_id, None);
    }

    #[test]
    fn distinguishes_not_json_from_bad_json() {
        assert!(matches!(parse(b"{not json"), Err(BadRequest::NotJson(_))));
        assert!(matches!(parse(b""), Err(BadRequest::NotJson(_))));
        assert!(bad_json("[]").contains("notification"));
        assert!(bad_json("{}").contains("notification"));
        assert!(bad_json(r#"{"notification":"x"}"#).contains("must be an object"));
    }

    #[test]
    fn reports_the_offending_field() {
        assert_eq!(
            bad_json(r#"{"notification":{}}"#),
            "notification.devices: missing"
        );
        assert_eq!(
            bad_json(r#"{"notification":{"devices":[]}}"#),
            "notification.devices: must not be empty"
        );
        assert!(bad_json(r#"{"notification":{"devices":{}}}"#).starts_with("notification.devices:"));
        assert!(
            bad_json(r#"{"notification":{"devices":[{"pushkey":"k"}]}}"#)
                .starts_with("notification.devices[0]: missing field `app_id`")
        );
        assert!(
            bad_json(r#"{"notification":{"devices":[{"app_id":"a","pushkey":5}]}}"#)
                .starts_with("notification.devices[0].pushkey:")
        );
        assert!(bad_json(
            r#"{"notification":{"devices":[{"app_id":"a","pushkey":"k","data":[]}]}}"#
        )
        .starts_with("notification.devices[0].data:"));
        assert!(bad_json(
            r#"{"notification":{"counts":{"unread":"2"},"devices":[{"app_id":"a","pushkey":"k"}]}}"#
        )
        .starts_with("notification.counts.unread:"));
        assert!(bad_json(
            r#"{"notification":{"content":"x","devices":[{"app_id":"a","pushkey":"k"}]}}"#
        )
        .starts_with("notification.content:"));
    }

    #[test]
    fn refuses_what_pushkins_could_not_parse() {
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        let device = r#"{"app_id":"a","pushkey":"k"}"#;
        for (notification, path) in [
            (
                format!(r#"{{"content":{{"x":{deep}}},"devices":[{device}]}}"#),
                "notification.content.x",
            ),
            (
                format!(r#"{{"devices":[{{"app_id":"a","pushkey":"k","data":{{"x":{deep}}}}}]}}"#),
                "notification.devices[0].data.x",
            ),
            (
                format!(r#"{{"content":{{"n":1e400}},"devices":[{device}]}}"#),
                "notification.content.n",
            ),
            (
                format!(r#"{{"future":-1e400,"devices":[{device}]}}"#),
                "notification.future",
            ),
            (
                format!(r#"{{"content":{{"body":"\ud800"}},"devices":[{device}]}}"#),
                "notification.content.body",
            ),
        ] {
            let reason = bad_json(&format!(r#"{{"notification":{notification}}}"#));
            assert!(reason.starts_with(path), "{path}: {reason}");
        }
    }

    #[test]
    fn keeps_long_strings_for_the_pushkins_to_cut() {
        let long = "x".repeat(400 * 1024);
        let body = format!(
            r#"{{"notification":{{"room_id":"{long}","event_id":"$e","devices":[{{"app_id":"a","pushkey":"k"}}]}}}}"#
        );
        assert!(parse(body.as_bytes()).is_ok());
    }

    /// What the SDK will parse for the devices the host routes to one app.
    fn parses_in_the_sdk(parsed: &ParsedNotify<'_>) -> Result<(), String> {
        let mut app_ids: Vec<&str> = parsed.devices.iter().map(|d| d.app_id.as_ref()).collect();
        app_ids.sort_unstable();
        app_ids.dedup();
        for app_id in app_ids {
            let raws: Vec<&str> = parsed
                .devices
                .iter()
                .filter(|d| d.app_id == app_id)
                .map(|d| d.raw.get())
                .collect();
            let devices = format!("[{}]", raws.join(","));
            Notification::from_dispatch_json(parsed.notification, &devices)?;
        }
        Ok(())
    }

    fn check_body(body: &[u8]) -> Result<(), TestCaseError> {
        // The shortcut for homeservers' bodies decides as reading the whole body does.
        prop_assert_eq!(
            format!("{:?}", parse(body)),
            format!("{:?}", parse_whole(body))
        );
        match parse(body) {
            Ok(parsed) => {
                prop_assert!(!parsed.devices.is_empty());
                if let Err(err) = parses_in_the_sdk(&parsed) {
                    let body = String::from_utf8_lossy(body);
                    return Err(TestCaseError::fail(format!("accepted, but {err}: {body}")));
                }
            }
            Err(BadRequest::NotJson(reason) | BadRequest::BadJson(reason)) => {
                prop_assert!(!reason.is_empty());
            }
        }
        Ok(())
    }

    fn synapse_body_bytes() -> impl Strategy<Value = Vec<u8>> {
        let bodies: Vec<Vec<u8>> = synapse_notifications()
            .into_iter()
            .map(|n| {
                serde_json::json!({ "notification": n })
                    .to_string()
                    .into_bytes()
            })
            .collect();
        prop::sample::select(bodies)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// Real notifications with hostile fields: refused with a reason, or parsed by the SDK.
        #[test]
        fn accepted_bodies_parse_in_the_sdk(notification in notification_json()) {
            check_body(format!(r#"{{"notification":{notification}}}"#).as_bytes())?;
        }

        /// Real bodies cut short or with a byte changed: never a panic, always an answer.
        #[test]
        fn damaged_bodies_get_an_answer(
            body in synapse_body_bytes(),
            cut in any::<prop::sample::Index>(),
            at in any::<prop::sample::Index>(),
            byte in any::<u8>(),
        ) {
            let mut damaged = body.clone();
            let position = at.index(damaged.len());
            damaged[position] = byte;
            check_body(&damaged)?;
            check_body(&body[..cut.index(body.len())])?;
        }
    }

    #[test]
    fn bodies_shaped_almost_like_synapse_ones_are_read_whole() {
        let n = r#"{"event_id":"$e","devices":[{"app_id":"a","pushkey":"k"}]}"#;
        let other = r#"{"event_id":"$x","devices":[{"app_id":"b","pushkey":"j"}]}"#;
        // The last `notification` wins, as serde_json reads duplicate keys: refused either way.
        for body in [
            format!(r#"{{"notification":{n},"notification":{other}}}"#),
            format!(r#"{{"notification":{n},"extra":{{"a":1}}}}"#),
            format!(r#"{{"notification":{n} }}"#),
            format!("{{\"notification\":\n\t{n}\r }}"),
            format!("{{\"notification\":\x0c{n}}}"),
            format!(r#"{{"notification":{n}}}  "#),
            format!(r#"{{"notification":{n}}}}}"#),
            format!(r#"{{"notification":{n}"#),
        ] {
            let (fast, whole) = (parse(body.as_bytes()), parse_whole(body.as_bytes()));
            assert_eq!(format!("{fast:?}"), format!("{whole:?}"), "{body}");
        }
        let extra = format!(r#"{{"notification":{n},"extra":{{"a":1}}}}"#);
        assert_eq!(parse(extra.as_bytes()).unwrap().notification, n);
    }

    #[test]
    fn accepts_nulls_and_unknown_fields() {
        let body = r#"{"notification":{"type":null,"counts":null,"content":null,"future":{"a":1},
            "devices":[{"app_id":"a","pushkey":"k","data":null,"tweaks":null,"more":true}]}}"#;
        assert!(parse(body.as_bytes()).is_ok());
    }
}
