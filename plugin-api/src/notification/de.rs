//! Parsing the notification types, written out rather than derived.
//!
//! Derived, `#[serde(flatten)]` (which keeps unknown fields in `extra`) makes serde buffer
//! every field as an intermediate value before deserializing it, and the host's notification
//! was parsed twice per dispatch (its `devices`, then the devices routed to the pushkin). Every
//! dispatch of every pushkin pays for this parse, so it reads each field once, straight into its
//! type, and skips the notification's own `devices` when the host sends them apart.
//!
//! The rules are the derived ones: absent or `null` optional fields are `None` (or empty), a
//! device without a string `app_id` or `pushkey` is refused, unknown fields go to `extra`.

use super::{Counts, Device, Notification, Tweaks};
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;
use std::borrow::Cow;
use std::fmt;

/// A notification's fields, with or without its `devices`.
pub(super) struct NotificationSeed {
    /// Parse `devices` (false: skip them, the host sends the routed ones apart).
    pub(super) with_devices: bool,
}

impl<'de> DeserializeSeed<'de> for NotificationSeed {
    type Value = Notification;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Notification, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for NotificationSeed {
    type Value = Notification;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a notification object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Notification, A::Error> {
        let mut n = Notification::default();
        while let Some(Key(key)) = map.next_key()? {
            match key.as_ref() {
                "id" => n.id = map.next_value()?,
                "event_id" => n.event_id = map.next_value()?,
                "room_id" => n.room_id = map.next_value()?,
                "type" => n.event_type = map.next_value()?,
                "sender" => n.sender = map.next_value()?,
                "sender_display_name" => n.sender_display_name = map.next_value()?,
                "room_name" => n.room_name = map.next_value()?,
                "room_alias" => n.room_alias = map.next_value()?,
                "user_is_target" => n.user_is_target = map.next_value()?,
                "membership" => n.membership = map.next_value()?,
                "prio" => n.prio = map.next_value()?,
                "content" => n.content = map.next_value()?,
                "counts" => n.counts = or_default(map.next_value()?),
                "devices" if self.with_devices => n.devices = or_default(map.next_value()?),
                "devices" => {
                    map.next_value::<IgnoredAny>()?;
                }
                _ => {
                    let value: Value = map.next_value()?;
                    n.extra.insert(key.into_owned(), value);
                }
            }
        }
        Ok(n)
    }
}

impl<'de> Deserialize<'de> for Notification {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        NotificationSeed { with_devices: true }.deserialize(deserializer)
    }
}

impl<'de> Deserialize<'de> for Counts {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct CountsVisitor;
        impl<'de> Visitor<'de> for CountsVisitor {
            type Value = Counts;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a counts object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Counts, A::Error> {
                let mut counts = Counts::default();
                while let Some(Key(key)) = map.next_key()? {
                    match key.as_ref() {
                        "unread" => counts.unread = map.next_value()?,
                        "missed_calls" => counts.missed_calls = map.next_value()?,
                        _ => {
                            let value: Value = map.next_value()?;
                            counts.extra.insert(key.into_owned(), value);
                        }
                    }
                }
                Ok(counts)
            }
        }
        deserializer.deserialize_map(CountsVisitor)
    }
}

impl<'de> Deserialize<'de> for Device {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DeviceVisitor;
        impl<'de> Visitor<'de> for DeviceVisitor {
            type Value = Device;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a device object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Device, A::Error> {
                let mut device = Device::default();
                let (mut app_id, mut pushkey) = (None, None);
                while let Some(Key(key)) = map.next_key()? {
                    match key.as_ref() {
                        "app_id" => app_id = Some(map.next_value()?),
                        "pushkey" => pushkey = Some(map.next_value()?),
                        "pushkey_ts" => device.pushkey_ts = map.next_value()?,
                        "data" => device.data = map.next_value()?,
                        "tweaks" => device.tweaks = or_default(map.next_value()?),
                        _ => {
                            let value: Value = map.next_value()?;
                            device.extra.insert(key.into_owned(), value);
                        }
                    }
                }
                device.app_id = app_id.ok_or_else(|| de::Error::missing_field("app_id"))?;
                device.pushkey = pushkey.ok_or_else(|| de::Error::missing_field("pushkey"))?;
                Ok(device)
            }
        }
        deserializer.deserialize_map(DeviceVisitor)
    }
}

impl<'de> Deserialize<'de> for Tweaks {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TweaksVisitor;
        impl<'de> Visitor<'de> for TweaksVisitor {
            type Value = Tweaks;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a tweaks object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Tweaks, A::Error> {
                let mut tweaks = Tweaks::default();
                while let Some(Key(key)) = map.next_key()? {
                    match key.as_ref() {
                        "sound" => tweaks.sound = map.next_value()?,
                        "highlight" => tweaks.highlight = map.next_value()?,
                        _ => {
                            let value: Value = map.next_value()?;
                            tweaks.extra.insert(key.into_owned(), value);
                        }
                    }
                }
                Ok(tweaks)
            }
        }
        deserializer.deserialize_map(TweaksVisitor)
    }
}

/// `null` (parsed as `None`) as the empty value.
fn or_default<T: Default>(value: Option<T>) -> T {
    value.unwrap_or_default()
}

/// An object key, borrowed from the input unless it holds escapes.
pub(crate) struct Key<'de>(pub(crate) Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, key: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(key)))
            }
            fn visit_str<E>(self, key: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(key.to_owned())))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}
