//! Parsing and validating a `/notify` body, without copying it.
//!
//! The host checks every known field's type (so bad input is a 400 with a reason, not a plugin
//! failure) but keeps the notification as the raw JSON it received: plugins get that text as
//! is, and each device's own raw text, grouped per app.

use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::fmt;

/// A valid notification: its raw JSON and its devices.
#[derive(Debug)]
pub struct ParsedNotify<'a> {
    /// The `notification` object, exactly as received.
    pub notification: &'a RawValue,
    /// The devices, in order.
    pub devices: Vec<DeviceRef<'a>>,
}

/// One device: what routing needs, and the raw text handed to the plugin.
#[derive(Debug)]
pub struct DeviceRef<'a> {
    /// The app id.
    pub app_id: Cow<'a, str>,
    /// The pushkey.
    pub pushkey: Cow<'a, str>,
    /// The device object as received.
    pub raw: &'a RawValue,
}

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

/// The known fields, type-checked; values are not kept.
#[derive(Deserialize)]
#[allow(dead_code)] // fields exist to be type-checked
struct NotificationCheck<'a> {
    #[serde(borrow, default)]
    devices: Option<Vec<&'a RawValue>>,
    id: Option<AnyString>,
    event_id: Option<AnyString>,
    room_id: Option<AnyString>,
    #[serde(rename = "type")]
    event_type: Option<AnyString>,
    sender: Option<AnyString>,
    sender_display_name: Option<AnyString>,
    room_name: Option<AnyString>,
    room_alias: Option<AnyString>,
    membership: Option<AnyString>,
    prio: Option<AnyString>,
    user_is_target: Option<bool>,
    content: Option<AnyObject>,
    counts: Option<CountsCheck>,
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct CountsCheck {
    unread: Option<u64>,
    missed_calls: Option<u64>,
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct DeviceCheck<'a> {
    #[serde(borrow)]
    app_id: Cow<'a, str>,
    #[serde(borrow)]
    pushkey: Cow<'a, str>,
    pushkey_ts: Option<u64>,
    data: Option<AnyObject>,
    tweaks: Option<TweaksCheck>,
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct TweaksCheck {
    sound: Option<AnyString>,
    highlight: Option<bool>,
}

/// Accepts any JSON string without allocating.
struct AnyString;

impl<'de> Deserialize<'de> for AnyString {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = AnyString;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<AnyString, E> {
                Ok(AnyString)
            }
        }
        deserializer.deserialize_str(V)
    }
}

/// Accepts any JSON object without keeping it.
struct AnyObject;

impl<'de> Deserialize<'de> for AnyObject {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = AnyObject;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<AnyObject, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(AnyObject)
            }
        }
        deserializer.deserialize_map(V)
    }
}

/// Parses and validates a `/notify` body.
pub fn parse(body: &[u8]) -> Result<ParsedNotify<'_>, BadRequest> {
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
    let check: NotificationCheck<'_> = serde_path_to_error::deserialize(
        &mut serde_json::Deserializer::from_str(notification.get()),
    )
    .map_err(|err| BadRequest::BadJson(format!("notification.{}: {}", err.path(), err.inner())))?;
    let raw_devices = match check.devices {
        None => {
            return Err(BadRequest::BadJson(
                "notification.devices: missing".to_owned(),
            ))
        }
        Some(devices) if devices.is_empty() => {
            return Err(BadRequest::BadJson(
                "notification.devices: must not be empty".to_owned(),
            ))
        }
        Some(devices) => devices,
    };
    let devices = raw_devices
        .into_iter()
        .enumerate()
        .map(|(index, raw)| {
            let check: DeviceCheck<'_> = serde_path_to_error::deserialize(
                &mut serde_json::Deserializer::from_str(raw.get()),
            )
            .map_err(|err| {
                let path = err.path().to_string();
                let at = if path == "." {
                    String::new()
                } else {
                    format!(".{path}")
                };
                BadRequest::BadJson(format!(
                    "notification.devices[{index}]{at}: {}",
                    err.inner()
                ))
            })?;
            Ok(DeviceRef {
                app_id: check.app_id,
                pushkey: check.pushkey,
                raw,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ParsedNotify {
        notification,
        devices,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn accepts_nulls_and_unknown_fields() {
        let body = r#"{"notification":{"type":null,"counts":null,"content":null,"future":{"a":1},
            "devices":[{"app_id":"a","pushkey":"k","data":null,"tweaks":null,"more":true}]}}"#;
        assert!(parse(body.as_bytes()).is_ok());
    }
}
