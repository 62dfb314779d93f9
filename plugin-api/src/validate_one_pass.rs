//! The check of a valid notification in one pass over its text, for the common case.
//!
//! [`notification`](super::notification) holds the rules as two readings: every value
//! (nesting, numbers, strings), then the known fields' types. A valid notification passes both;
//! this pass applies both rule sets at once, and only says whether it passed. Anything it does
//! not accept goes to the two readings, which decide, and say where and why. So this pass must
//! never accept what they refuse (`one_pass_agrees_with_the_two_readings` checks it on hostile
//! notifications); refusing more would only cost time.

use super::{AnyString, Checked, CheckedDevice, ValueCheck};
use crate::notification::de::Key;
use serde::de::{DeserializeSeed, Deserializer, Error as _, MapAccess, Visitor};
use serde_json::value::RawValue;
use std::fmt;

/// `json` checked, or `None` if it is not valid (or not valid in a way this pass can tell).
pub(super) fn notification(json: &str) -> Option<Checked<'_>> {
    let mut deserializer = serde_json::Deserializer::from_str(json);
    let top = deserializer.deserialize_map(NotificationFields).ok()?;
    deserializer.end().ok()?;
    let raw_devices = top.devices.filter(|devices| !devices.is_empty())?;
    let devices = raw_devices
        .into_iter()
        .map(|raw| {
            let mut deserializer = serde_json::Deserializer::from_str(raw.get());
            let (app_id, pushkey) = deserializer.deserialize_map(DeviceFields).ok()?;
            deserializer.end().ok()?;
            Some(CheckedDevice {
                app_id,
                pushkey,
                raw,
            })
        })
        .collect::<Option<Vec<_>>>()?;
    Some(Checked {
        event_id: top.event_id,
        devices,
    })
}

/// Records a known key; an error the second time, as the derived checks refuse duplicates.
fn first_time<E: serde::de::Error>(seen: &mut u32, bit: u32) -> Result<(), E> {
    if *seen & bit != 0 {
        return Err(E::custom("duplicate field"));
    }
    *seen |= bit;
    Ok(())
}

/// Whatever value comes next, at `depth`, checked as `check_values` does (the trail it leaves
/// on errors is not used here).
fn any_value<'de, A: MapAccess<'de>>(map: &mut A, depth: usize) -> Result<(), A::Error> {
    map.next_value_seed(ValueCheck {
        depth,
        trail: &mut Vec::new(),
    })
}

/// Seeds that read `null` or an object (any other value is refused).
macro_rules! null_or_object {
    ($seed:ty) => {
        impl<'de> DeserializeSeed<'de> for $seed {
            type Value = ();
            fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
                deserializer.deserialize_any(self)
            }
        }
    };
}

/// `null`, or an object at `depth` (`content`, a device's `data`) with its values checked.
struct ObjectOrNull {
    depth: usize,
}

null_or_object!(ObjectOrNull);

impl<'de> Visitor<'de> for ObjectOrNull {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object")
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        ValueCheck {
            depth: self.depth,
            trail: &mut Vec::new(),
        }
        .visit_map(map)
    }
}

/// `null`, or the notification's `counts` (level 2).
struct CountsOrNull;

null_or_object!(CountsOrNull);

impl<'de> Visitor<'de> for CountsOrNull {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a counts object")
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = 0;
        while let Some(Key(key)) = map.next_key()? {
            let bit = match key.as_ref() {
                "unread" => 1,
                "missed_calls" => 2,
                _ => {
                    any_value(&mut map, 3)?;
                    continue;
                }
            };
            first_time(&mut seen, bit)?;
            map.next_value::<Option<u64>>()?;
        }
        Ok(())
    }
}

/// `null`, or a device's `tweaks` (level 4).
struct TweaksOrNull;

null_or_object!(TweaksOrNull);

impl<'de> Visitor<'de> for TweaksOrNull {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a tweaks object")
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = 0;
        while let Some(Key(key)) = map.next_key()? {
            match key.as_ref() {
                "sound" => {
                    first_time(&mut seen, 1)?;
                    map.next_value::<Option<AnyString>>()?;
                }
                "highlight" => {
                    first_time(&mut seen, 2)?;
                    map.next_value::<Option<bool>>()?;
                }
                _ => any_value(&mut map, 5)?,
            }
        }
        Ok(())
    }
}

/// What routing needs from the notification; the rest is only checked.
struct Top<'a> {
    event_id: Option<std::borrow::Cow<'a, str>>,
    devices: Option<Vec<&'a RawValue>>,
}

/// The notification object (level 1).
struct NotificationFields;

impl<'de> Visitor<'de> for NotificationFields {
    type Value = Top<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a notification object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Top<'de>, A::Error> {
        let mut top = Top {
            event_id: None,
            devices: None,
        };
        let mut seen = 0u32;
        while let Some(Key(key)) = map.next_key()? {
            let bit = match key.as_ref() {
                "devices" => 1 << 0,
                "event_id" => 1 << 1,
                "id" => 1 << 2,
                "room_id" => 1 << 3,
                "type" => 1 << 4,
                "sender" => 1 << 5,
                "sender_display_name" => 1 << 6,
                "room_name" => 1 << 7,
                "room_alias" => 1 << 8,
                "membership" => 1 << 9,
                "prio" => 1 << 10,
                "user_is_target" => 1 << 11,
                "content" => 1 << 12,
                "counts" => 1 << 13,
                _ => {
                    any_value(&mut map, 2)?;
                    continue;
                }
            };
            first_time(&mut seen, bit)?;
            match key.as_ref() {
                // Each device is checked on its own text afterwards.
                "devices" => top.devices = map.next_value()?,
                "event_id" => top.event_id = map.next_value::<Option<Key>>()?.map(|id| id.0),
                "user_is_target" => {
                    map.next_value::<Option<bool>>()?;
                }
                "content" => map.next_value_seed(ObjectOrNull { depth: 2 })?,
                "counts" => map.next_value_seed(CountsOrNull)?,
                _ => {
                    map.next_value::<Option<AnyString>>()?;
                }
            }
        }
        Ok(top)
    }
}

/// One device object (level 3): its app id and pushkey.
struct DeviceFields;

impl<'de> Visitor<'de> for DeviceFields {
    type Value = (std::borrow::Cow<'de, str>, std::borrow::Cow<'de, str>);

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a device object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let (mut app_id, mut pushkey) = (None, None);
        let mut seen = 0u32;
        while let Some(Key(key)) = map.next_key()? {
            let bit = match key.as_ref() {
                "app_id" => 1 << 0,
                "pushkey" => 1 << 1,
                "pushkey_ts" => 1 << 2,
                "data" => 1 << 3,
                "tweaks" => 1 << 4,
                _ => {
                    any_value(&mut map, 4)?;
                    continue;
                }
            };
            first_time(&mut seen, bit)?;
            match key.as_ref() {
                "app_id" => app_id = Some(map.next_value::<Key>()?.0),
                "pushkey" => pushkey = Some(map.next_value::<Key>()?.0),
                "pushkey_ts" => {
                    map.next_value::<Option<u64>>()?;
                }
                "data" => map.next_value_seed(ObjectOrNull { depth: 4 })?,
                _ => map.next_value_seed(TweaksOrNull)?,
            }
        }
        match (app_id, pushkey) {
            (Some(app_id), Some(pushkey)) => Ok((app_id, pushkey)),
            _ => Err(A::Error::custom("missing app_id or pushkey")),
        }
    }
}
