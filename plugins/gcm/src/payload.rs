//! Request bodies, built without any I/O so every rule is unit-tested.
//!
//! The rules are Sygnal's `_build_data` and request assembly, with one deliberate improvement:
//! for v1 every data value is a string (FCM v1's `data` is a `map<string, string>` and refuses
//! anything else), including values taken from a pusher's `default_payload`.

use crate::data::{DataValue, FcmData};
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::Value;
use std::borrow::Cow;
use sygnal_plugin_api::text::{shave_longest, truncate_with_ellipsis};
use sygnal_plugin_api::{Device, JsonObject, Notification};

/// Longest string field, in bytes, before it is cut (Sygnal's `MAX_BYTES_PER_FIELD`).
pub const MAX_BYTES_PER_FIELD: usize = 1024;

/// More cut fields than this and the message likely exceeds FCM's 4096-byte limit
/// (Sygnal: 4096 / 1024 - 1).
pub const MAX_OVERFLOW_FIELDS: usize = 3;

/// The notification fields copied into the data, in Sygnal's order.
const FIELDS: [&str; 9] = [
    "event_id",
    "type",
    "sender",
    "room_name",
    "room_alias",
    "membership",
    "sender_display_name",
    "content",
    "room_id",
];

/// Which FCM API a body is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiVersion {
    /// `/fcm/send`: data values keep their JSON types, `content` stays an object.
    Legacy,
    /// `/v1/projects/*/messages:send`: data is a flat string-to-string map.
    V1,
}

/// What building the data came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Data<'a> {
    /// Send this.
    Send(FcmData<'a>),
    /// Nothing worth sending (a badge-only update without counts): skip, reject nothing.
    Nothing,
    /// The pusher's `default_payload` is not an object: reject its pushkey, as Sygnal does.
    BadDefaultPayload,
    /// Over [`MAX_DATA_BYTES`] even with every text field shaved: it can never be sent.
    TooLarge {
        /// Its size, shaved as far as it goes.
        bytes: usize,
    },
}

/// FCM refuses data payloads over 4096 bytes; measured here as the compact JSON of `data`,
/// which counts a little more than FCM does.
pub const MAX_DATA_BYTES: usize = 4096;

/// Fields the notification contributes as display text: shaved (longest first) when the data
/// is over [`MAX_DATA_BYTES`]. Ids, the event type, the priority and the counts are kept whole.
const TEXT_FIELDS: [&str; 5] = [
    "sender",
    "sender_display_name",
    "room_name",
    "room_alias",
    "membership",
];

/// Builds the `data` for `device` from `notification`, borrowing from both.
pub fn build_data<'a>(
    notification: &'a Notification,
    device: &'a Device,
    api: ApiVersion,
    send_badge_counts: bool,
) -> Data<'a> {
    let mut data = FcmData::default();
    let mut overflowed = 0;

    match device.data_value("default_payload") {
        None => {}
        Some(Value::Object(default)) => {
            for (key, value) in default {
                data.insert(key.as_str(), DataValue::Json(Cow::Borrowed(value)));
            }
        }
        // Sygnal rejects any other value, `null` included.
        Some(_) => return Data::BadDefaultPayload,
    }

    for field in FIELDS {
        let value = match field {
            "content" => {
                if let Some(content) = &notification.content {
                    data.insert("content", DataValue::Content(Cow::Borrowed(content)));
                }
                continue;
            }
            "event_id" => &notification.event_id,
            "type" => &notification.event_type,
            "sender" => &notification.sender,
            "room_name" => &notification.room_name,
            "room_alias" => &notification.room_alias,
            "membership" => &notification.membership,
            "sender_display_name" => &notification.sender_display_name,
            _ => &notification.room_id,
        };
        if let Some(text) = value {
            data.insert(field, truncated(text, &mut overflowed));
        }
    }

    if api == ApiVersion::V1 {
        // Whatever `content` ended up in the data (the notification's, or default_payload's)
        // becomes content_<key> for its string values; the object itself cannot be sent.
        // A `content` that is not an object is dropped: v1 has nothing to make of it.
        let content = data.remove("content");
        if let Some(content) = content.as_ref().and_then(borrowed_object) {
            for (key, value) in content {
                if let Value::String(text) = value {
                    let value = truncated(text, &mut overflowed);
                    data.insert(format!("content_{key}"), value);
                }
            }
        }
    }

    let prio = priority(notification.is_low_priority());
    data.insert("prio", DataValue::Text(Cow::Borrowed(prio)));

    // Every count present is sent, zero included: the badge-only update Synapse sends after a
    // read receipt (`unread: 0`) is what clears the badge. Sygnal 0.17 leaves zeros out, so
    // badges never clear; Sygnal 0.15 sent them, as this does.
    let present = [
        ("unread", notification.counts.unread),
        ("missed_calls", notification.counts.missed_calls),
    ];
    let has_counts = send_badge_counts && present.iter().any(|(_, count)| count.is_some());
    let truthy = |key: &str| data.get(key).is_some_and(DataValue::is_truthy);
    if !truthy("room_id") && !truthy("event_id") && !has_counts {
        sygnal_plugin_api::tracing::info!(
            "notification is badge-only but has no badge counts to send: not sent \
             (check send_badge_counts if this is unexpected)"
        );
        return Data::Nothing;
    }
    if send_badge_counts {
        for (name, count) in present {
            if let Some(count) = count {
                data.insert(name, DataValue::Count(count));
            }
        }
    }

    if api == ApiVersion::V1 {
        data.stringify_values();
    }

    if overflowed > MAX_OVERFLOW_FIELDS {
        sygnal_plugin_api::tracing::info!(
            overflowed,
            "payload has many overflowing fields; shaving it to FCM's size limit"
        );
    }
    match fit(&mut data) {
        Ok(()) => Data::Send(data),
        Err(bytes) => Data::TooLarge { bytes },
    }
}

/// Shaves text fields (the notification's display texts and content strings, longest first)
/// until `data` fits in [`MAX_DATA_BYTES`]; `Err` with the size reached when it cannot.
fn fit(data: &mut FcmData<'_>) -> Result<(), usize> {
    // Nearly every notification is far below the limit: a bound that reads the lengths decides
    // without writing the JSON out (it is written once more for the request).
    if data.size_bound() <= MAX_DATA_BYTES {
        return Ok(());
    }
    let size = json_size(&*data);
    if size <= MAX_DATA_BYTES {
        return Ok(());
    }
    let mut texts =
        data.shavable_texts(|key| TEXT_FIELDS.contains(&key) || key.starts_with("content_"));
    match shave_longest(&mut texts, size - MAX_DATA_BYTES) {
        0 => Ok(()),
        left => Err(MAX_DATA_BYTES + left),
    }
}

/// The object `value` borrows from the notification or the pusher, if it is one (every value
/// is borrowed until [`fit`] shaves it).
fn borrowed_object<'a>(value: &DataValue<'a>) -> Option<&'a JsonObject> {
    match value {
        DataValue::Content(Cow::Borrowed(content)) => Some(content),
        DataValue::Json(Cow::Borrowed(Value::Object(content))) => Some(content),
        _ => None,
    }
}

/// `text` cut to [`MAX_BYTES_PER_FIELD`], counting cuts in `overflowed`.
fn truncated<'a>(text: &'a str, overflowed: &mut usize) -> DataValue<'a> {
    let text = truncate_with_ellipsis(text, MAX_BYTES_PER_FIELD);
    if let Cow::Owned(_) = text {
        *overflowed += 1;
    }
    DataValue::Text(text)
}

/// The FCM priority for the notification's `prio`.
fn priority(low_priority: bool) -> &'static str {
    if low_priority {
        "normal"
    } else {
        "high"
    }
}

/// A legacy request body: `fcm_options`, then `data` and `priority`, addressed with `to` for one
/// pushkey and `registration_ids` for several.
///
/// Serialized from borrowed parts: recipients change between retries, and nothing here copies
/// the data to address it.
pub struct LegacyRequest<'a> {
    /// `fcm_options`; its `data`, `priority`, `to` and `registration_ids` are overridden.
    pub options: &'a JsonObject,
    /// The data built by [`build_data`].
    pub data: &'a FcmData<'a>,
    /// `prio: low`.
    pub low_priority: bool,
    /// The recipients of this attempt (at least one).
    pub pushkeys: &'a [String],
}

impl Serialize for LegacyRequest<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        const OURS: [&str; 4] = ["data", "priority", "to", "registration_ids"];
        let mut map = serializer.serialize_map(None)?;
        for (key, value) in self.options {
            if !OURS.contains(&key.as_str()) {
                map.serialize_entry(key, value)?;
            }
        }
        map.serialize_entry("data", self.data)?;
        map.serialize_entry("priority", priority(self.low_priority))?;
        match self.pushkeys {
            [one] => map.serialize_entry("to", one)?,
            many => map.serialize_entry("registration_ids", many)?,
        }
        map.end()
    }
}

/// The v1 body for one device: `{"message": {...fcm_options, token, data, android.priority}}`,
/// serialized from borrowed parts.
pub struct V1Request<'a> {
    /// `fcm_options`; its `token` and `data` are overridden, its `android` (an object: config
    /// validation refuses anything else) gets the priority.
    pub options: &'a JsonObject,
    /// The data built by [`build_data`].
    pub data: &'a FcmData<'a>,
    /// `prio: low`.
    pub low_priority: bool,
    /// The device's registration token.
    pub token: &'a str,
}

impl Serialize for V1Request<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut outer = serializer.serialize_map(Some(1))?;
        outer.serialize_entry("message", &V1Message(self))?;
        outer.end()
    }
}

struct V1Message<'r, 'a>(&'r V1Request<'a>);

impl Serialize for V1Message<'_, '_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        const OURS: [&str; 3] = ["android", "data", "token"];
        let request = self.0;
        let mut map = serializer.serialize_map(None)?;
        for (key, value) in request.options {
            if !OURS.contains(&key.as_str()) {
                map.serialize_entry(key, value)?;
            }
        }
        let android = match request.options.get("android") {
            Some(Value::Object(android)) => Some(android),
            // Config validation refuses a non-object `android`; never panic on it anyway.
            _ => None,
        };
        let android = Android {
            options: android,
            priority: priority(request.low_priority),
        };
        map.serialize_entry("android", &android)?;
        map.serialize_entry("data", request.data)?;
        map.serialize_entry("token", request.token)?;
        map.end()
    }
}

/// `fcm_options.android` with the notification's priority.
struct Android<'a> {
    options: Option<&'a JsonObject>,
    priority: &'static str,
}

impl Serialize for Android<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        for (key, value) in self.options.into_iter().flatten() {
            if key != "priority" {
                map.serialize_entry(key, value)?;
            }
        }
        map.serialize_entry("priority", self.priority)?;
        map.end()
    }
}

/// The size of `value`'s compact JSON, without building it.
fn json_size(value: &impl Serialize) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 += bytes.len();
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    match serde_json::to_writer(&mut count, value) {
        Ok(()) => count.0,
        Err(_) => usize::MAX,
    }
}

#[cfg(test)]
#[path = "payload_tests.rs"]
mod tests;
