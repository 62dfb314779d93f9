//! The Push Gateway API's notification, as a pushkin receives it.
//!
//! Field names and meanings follow the Matrix Push Gateway API (`POST /_matrix/push/v1/notify`).
//! Like Sygnal, the types tolerate what real homeservers send: every field but a device's
//! `app_id` and `pushkey` is optional, `null` is accepted wherever a value may be absent, and
//! unknown fields are kept (in `extra`) rather than refused.

use serde::de::DeserializeSeed;
use serde::Serialize;
use serde_json::{Map, Value};

pub(crate) mod de;

/// A JSON object.
pub type JsonObject = Map<String, Value>;

/// Matrix identifiers (room, event and user ids, room aliases) are at most this many bytes
/// long (the spec's limit); pushkins may cut longer ones to fit a provider's payload limit.
pub const MAX_ID_BYTES: usize = 255;

/// One notification, with the devices routed to the pushkin receiving it.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Notification {
    /// Synapse's own notification id (it sends the event id here too, or "" for badge updates).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The event that caused the notification; absent for badge-only updates.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    /// The room the event is in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub room_id: Option<String>,
    /// The event type (`m.room.message`, ...); absent for `event_id_only` pushers.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub event_type: Option<String>,
    /// The sender's user id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sender: Option<String>,
    /// The sender's display name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sender_display_name: Option<String>,
    /// The room's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub room_name: Option<String>,
    /// The room's canonical alias.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub room_alias: Option<String>,
    /// True for a membership event whose target is the user being notified.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_is_target: Option<bool>,
    /// The membership for `m.room.member` events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub membership: Option<String>,
    /// `"high"` or `"low"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prio: Option<String>,
    /// The event content.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<JsonObject>,
    /// Unread and missed-call counts.
    #[serde(skip_serializing_if = "Counts::is_empty")]
    pub counts: Counts,
    /// The devices to notify: for a pushkin, exactly the devices routed to its app.
    pub devices: Vec<Device>,
    /// Fields this version does not know, kept as they came.
    #[serde(flatten)]
    pub extra: JsonObject,
}

impl Notification {
    /// Parses what the host hands a pushkin: the notification's JSON, and the JSON array of the
    /// devices routed to this pushkin, which replace the notification's own `devices`.
    ///
    /// Whatever the host accepted (see [`validate`](crate::validate)) parses.
    pub fn from_dispatch_json(
        notification_json: &str,
        devices_json: &str,
    ) -> Result<Notification, String> {
        let mut parser = serde_json::Deserializer::from_str(notification_json);
        let mut notification = de::NotificationSeed {
            with_devices: false,
        }
        .deserialize(&mut parser)
        .and_then(|notification| parser.end().map(|()| notification))
        .map_err(|err| format!("invalid notification from host: {err}"))?;
        notification.devices = serde_json::from_str(devices_json)
            .map_err(|err| format!("invalid devices from host: {err}"))?;
        Ok(notification)
    }

    /// True when the homeserver asked for low priority delivery (`prio: "low"`).
    pub fn is_low_priority(&self) -> bool {
        self.prio.as_deref() == Some("low")
    }
}

/// The counts a client shows on its badge.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Counts {
    /// Unread notifications across all rooms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unread: Option<u64>,
    /// Missed calls.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub missed_calls: Option<u64>,
    /// Fields this version does not know.
    #[serde(flatten)]
    pub extra: JsonObject,
}

impl Counts {
    /// True when no count is present.
    pub fn is_empty(&self) -> bool {
        self.unread.is_none() && self.missed_calls.is_none() && self.extra.is_empty()
    }
}

/// One device (pusher) to notify.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Device {
    /// The app the pusher belongs to; routes the device to a configured app.
    pub app_id: String,
    /// The provider's token for the device (APNs token, FCM registration token, endpoint URL...).
    pub pushkey: String,
    /// When the pushkey was last updated (ms since the epoch).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pushkey_ts: Option<u64>,
    /// The pusher's `data` (format, default_payload, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<JsonObject>,
    /// Notification tweaks from the push rules (sound, highlight).
    #[serde(skip_serializing_if = "Tweaks::is_empty")]
    pub tweaks: Tweaks,
    /// Fields this version does not know.
    #[serde(flatten)]
    pub extra: JsonObject,
}

impl Device {
    /// A value from the pusher's `data`, if present.
    pub fn data_value(&self, key: &str) -> Option<&Value> {
        self.data.as_ref().and_then(|data| data.get(key))
    }

    /// True when the pusher asked for `format: "event_id_only"`.
    pub fn is_event_id_only(&self) -> bool {
        self.data_value("format").and_then(Value::as_str) == Some("event_id_only")
    }
}

/// Tweaks set by the push rules that matched.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Tweaks {
    /// The sound to play (`"default"` or a sound name).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sound: Option<String>,
    /// Whether the event is highlighted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub highlight: Option<bool>,
    /// Other tweaks.
    #[serde(flatten)]
    pub extra: JsonObject,
}

impl Tweaks {
    /// True when no tweak is set.
    pub fn is_empty(&self) -> bool {
        self.sound.is_none() && self.highlight.is_none() && self.extra.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_synapse_badge_only_update() {
        let json = r#"{"id":"","type":null,"sender":"","counts":{"unread":0},
            "devices":[{"app_id":"a","pushkey":"k","pushkey_ts":1,"data":{}}]}"#;
        let n: Notification = serde_json::from_str(json).unwrap();
        assert_eq!(n.event_type, None);
        assert_eq!(n.event_id, None);
        assert_eq!(n.counts.unread, Some(0));
        assert_eq!(n.devices[0].pushkey, "k");
    }

    #[test]
    fn keeps_unknown_fields_and_round_trips() {
        let json = r#"{"event_id":"$e","future_field":{"x":1},"counts":{"unread":2,"other":3},
            "devices":[{"app_id":"a","pushkey":"k","tweaks":{"sound":"default","x":true}}]}"#;
        let n: Notification = serde_json::from_str(json).unwrap();
        assert_eq!(n.extra["future_field"]["x"], 1);
        assert_eq!(n.counts.extra["other"], 3);
        assert_eq!(n.devices[0].tweaks.sound.as_deref(), Some("default"));
        let back: Notification = serde_json::from_value(serde_json::to_value(&n).unwrap()).unwrap();
        assert_eq!(back, n);
    }

    #[test]
    fn refuses_wrongly_typed_known_fields() {
        for bad in [
            r#"{"counts":{"unread":"2"}}"#,
            r#"{"content":"text"}"#,
            r#"{"devices":[{"app_id":"a","pushkey":1}]}"#,
            r#"{"devices":[{"app_id":"a","pushkey":"k","data":[]}]}"#,
        ] {
            assert!(serde_json::from_str::<Notification>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn nulls_are_absent_and_keys_may_be_escaped() {
        let json = r#"{"counts":null,"content":null,"room_\u0069d":"!r","devices":[
            {"app_id":"a","pushkey":"k","tweaks":null,"data":null,"pushkey_ts":null}]}"#;
        let n: Notification = serde_json::from_str(json).unwrap();
        assert_eq!(n.counts, Counts::default());
        assert_eq!(n.content, None);
        assert_eq!(n.room_id.as_deref(), Some("!r"));
        assert_eq!(n.devices[0].tweaks, Tweaks::default());
        assert_eq!(n.devices[0].data, None);
        let n: Notification = serde_json::from_str(r#"{"devices":null}"#).unwrap();
        assert!(n.devices.is_empty());
    }

    #[test]
    fn a_device_needs_its_app_id_and_pushkey() {
        for (device, missing) in [
            (r#"{"pushkey":"k"}"#, "missing field `app_id`"),
            (r#"{"app_id":"a"}"#, "missing field `pushkey`"),
        ] {
            let err = serde_json::from_str::<Device>(device).unwrap_err();
            assert!(err.to_string().starts_with(missing), "{device}: {err}");
        }
    }

    #[test]
    fn dispatch_json_takes_the_routed_devices_not_the_notification_s() {
        // The notification's own devices are skipped unread, even ones a pushkin could not use.
        let notification = r#"{"event_id":"$e","devices":[{"app_id":"other","pushkey":"x"}, 5],
            "unknown":{"kept":[1,2]}}"#;
        let routed = r#"[{"app_id":"a","pushkey":"k1"},{"app_id":"a","pushkey":"k2"}]"#;
        let n = Notification::from_dispatch_json(notification, routed).unwrap();
        let pushkeys: Vec<&str> = n.devices.iter().map(|d| d.pushkey.as_str()).collect();
        assert_eq!(pushkeys, ["k1", "k2"]);
        assert_eq!(n.event_id.as_deref(), Some("$e"));
        assert_eq!(n.extra["unknown"]["kept"][1], 2);
        assert!(Notification::from_dispatch_json(r#"{"event_id":"$e"} x"#, routed).is_err());
        assert!(Notification::from_dispatch_json(r#"{"event_id":5}"#, routed).is_err());
    }

    #[test]
    fn parses_from_a_value_too() {
        let value = serde_json::json!({"event_id": "$e", "x": 1,
            "devices": [{"app_id": "a", "pushkey": "k", "y": true}]});
        let n: Notification = serde_json::from_value(value).unwrap();
        assert_eq!(n.extra["x"], 1);
        assert_eq!(n.devices[0].extra["y"], true);
    }

    #[test]
    fn event_id_only_and_priority_helpers() {
        let json = r#"{"prio":"low","devices":[{"app_id":"a","pushkey":"k","data":{"format":"event_id_only"}}]}"#;
        let n: Notification = serde_json::from_str(json).unwrap();
        assert!(n.is_low_priority());
        assert!(n.devices[0].is_event_id_only());
    }
}
