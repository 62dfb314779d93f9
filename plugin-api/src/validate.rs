//! What a valid notification is, defined once: the host refuses anything else with 400 and a
//! reason, and whatever it accepts parses into [`Notification`](crate::Notification) (what the
//! SDK hands every pushkin).
//!
//! The rules, beyond the JSON syntax:
//! - known fields have their types (`counts.unread` a non-negative integer, `content` an
//!   object, each device an object with string `app_id` and `pushkey`, ...), `null` meaning
//!   absent; there is at least one device;
//! - objects and arrays nest at most [`MAX_DEPTH`] levels, the notification object being the
//!   first (Synapse's notifications reach 4);
//! - every number fits a 64-bit float (`1e400` does not), every string is valid Unicode (a lone
//!   surrogate escape such as `"\ud800"` is not), in unknown fields too, since pushkins keep
//!   and forward those.
//!
//! The check borrows from the text it checks and allocates only for the devices list and for
//! errors: it runs on every request.

use crate::notification::de::Key;
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess};
use serde::de::{Unexpected, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::fmt;

/// How deep objects and arrays may nest in a notification, the notification object included.
///
/// Well below serde_json's own limit (128 levels), so any pushkin parsing the notification or a
/// device with serde_json, even wrapped in a few more levels, never hits it.
pub const MAX_DEPTH: usize = 64;

/// Why a notification is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// Where: `notification.content.body`, `notification.devices[0].pushkey`...
    pub path: String,
    /// What is wrong there.
    pub reason: String,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.reason)
    }
}

impl std::error::Error for Invalid {}

/// A checked notification: what routing needs, borrowed from the checked text.
#[derive(Debug)]
pub struct Checked<'a> {
    /// The `event_id`, when the notification has one (`null` is none).
    pub event_id: Option<Cow<'a, str>>,
    /// The devices, in order.
    pub devices: Vec<CheckedDevice<'a>>,
}

/// One checked device.
#[derive(Debug)]
pub struct CheckedDevice<'a> {
    /// The app id.
    pub app_id: Cow<'a, str>,
    /// The pushkey.
    pub pushkey: Cow<'a, str>,
    /// The device object as received.
    pub raw: &'a RawValue,
}

/// Checks the `notification` object of a `/notify` body (its JSON text: one object, with
/// nothing after it but whitespace).
pub fn notification(json: &str) -> Result<Checked<'_>, Invalid> {
    // One pass for what is valid; the two readings below decide the rest and say why.
    match one_pass::notification(json) {
        Some(checked) => Ok(checked),
        None => two_readings(json),
    }
}

/// The rules as two readings of the text: every value, then the known fields.
fn two_readings(json: &str) -> Result<Checked<'_>, Invalid> {
    check_values(json)?;
    let check: NotificationCheck<'_> = checked(json).map_err(|err| Invalid {
        path: format!("notification.{}", err.path()),
        reason: err.inner().to_string(),
    })?;
    let raw_devices = match check.devices {
        None => return Err(invalid("notification.devices", "missing")),
        Some(devices) if devices.is_empty() => {
            return Err(invalid("notification.devices", "must not be empty"))
        }
        Some(devices) => devices,
    };
    let devices = raw_devices
        .into_iter()
        .enumerate()
        .map(|(index, raw)| {
            let check: DeviceCheck<'_> = checked(raw.get()).map_err(|err| {
                let path = err.path().to_string();
                let at = if path == "." {
                    String::new()
                } else {
                    format!(".{path}")
                };
                Invalid {
                    path: format!("notification.devices[{index}]{at}"),
                    reason: err.inner().to_string(),
                }
            })?;
            Ok(CheckedDevice {
                app_id: check.app_id,
                pushkey: check.pushkey,
                raw,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    objects_not_arrays(json)?;
    Ok(Checked {
        event_id: check.event_id,
        devices,
    })
}

/// serde reads a struct from an array of its fields too, which the SDK does not: `counts`, each
/// device and its `tweaks` must be objects. Only invalid notifications get here (the one pass
/// accepts the valid ones), so reading the whole value is fine.
fn objects_not_arrays(json: &str) -> Result<(), Invalid> {
    let Ok(serde_json::Value::Object(notification)) = serde_json::from_str(json) else {
        return Ok(());
    };
    let array =
        |value: Option<&serde_json::Value>| matches!(value, Some(serde_json::Value::Array(_)));
    if array(notification.get("counts")) {
        return Err(invalid("notification.counts", "must be an object"));
    }
    let devices = notification.get("devices").and_then(|d| d.as_array());
    for (index, device) in devices.into_iter().flatten().enumerate() {
        if device.is_array() {
            return Err(invalid(
                &format!("notification.devices[{index}]"),
                "must be an object",
            ));
        }
        if array(device.get("tweaks")) {
            let path = format!("notification.devices[{index}].tweaks");
            return Err(invalid(&path, "must be an object"));
        }
    }
    Ok(())
}

/// `json` as `T`; on failure, the error with the path to the offending value. Tracking the path
/// costs on every value, so it is only done again for a body already known to be invalid.
fn checked<'a, T: Deserialize<'a>>(
    json: &'a str,
) -> Result<T, serde_path_to_error::Error<serde_json::Error>> {
    match serde_json::from_str(json) {
        Ok(value) => Ok(value),
        Err(_) => serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_str(json)),
    }
}

fn invalid(path: &str, reason: &str) -> Invalid {
    Invalid {
        path: path.to_owned(),
        reason: reason.to_owned(),
    }
}

/// Checks nesting, numbers and strings everywhere in `json`.
fn check_values(json: &str) -> Result<(), Invalid> {
    let mut trail = Vec::new();
    let seed = ValueCheck {
        depth: 1,
        trail: &mut trail,
    };
    let mut deserializer = serde_json::Deserializer::from_str(json);
    seed.deserialize(&mut deserializer).map_err(|err| Invalid {
        path: trail
            .iter()
            .rev()
            .fold("notification".to_owned(), |path, seg| path + seg),
        reason: err.to_string(),
    })?;
    // One value and nothing after it: what follows would not parse in the pushkins.
    deserializer
        .end()
        .map_err(|err| invalid("notification", &err.to_string()))
}

/// Visits one JSON value at `depth`; on error, `trail` collects the path to it, innermost
/// segment first (only errors pay for it).
struct ValueCheck<'t> {
    depth: usize,
    trail: &'t mut Vec<String>,
}

impl<'de> DeserializeSeed<'de> for ValueCheck<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValueCheck<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E: serde::de::Error>(self, value: f64) -> Result<(), E> {
        // serde_json already refuses what overflows; this keeps the rule if that changes.
        match value.is_finite() {
            true => Ok(()),
            false => Err(E::invalid_value(
                Unexpected::Float(value),
                &"a finite number",
            )),
        }
    }

    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let ValueCheck { depth, trail } = self;
        too_deep::<A::Error>(depth)?;
        let mut index = 0usize;
        loop {
            let element = ValueCheck {
                depth: depth + 1,
                trail: &mut *trail,
            };
            match seq.next_element_seed(element) {
                Ok(Some(())) => index += 1,
                Ok(None) => return Ok(()),
                Err(err) => {
                    trail.push(format!("[{index}]"));
                    return Err(err);
                }
            }
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let ValueCheck { depth, trail } = self;
        too_deep::<A::Error>(depth)?;
        while let Some(Key(key)) = map.next_key()? {
            let value = ValueCheck {
                depth: depth + 1,
                trail: &mut *trail,
            };
            if let Err(err) = map.next_value_seed(value) {
                trail.push(format!(".{key}"));
                return Err(err);
            }
        }
        Ok(())
    }
}

fn too_deep<E: serde::de::Error>(depth: usize) -> Result<(), E> {
    match depth > MAX_DEPTH {
        true => Err(E::custom(format_args!(
            "objects and arrays nested deeper than {MAX_DEPTH} levels"
        ))),
        false => Ok(()),
    }
}

// The known fields, with the types `Notification` gives them; values are not kept. Keep in
// step with `crate::notification` (the tests there check both agree).

#[derive(Deserialize)]
#[allow(dead_code)] // fields exist to be type-checked
struct NotificationCheck<'a> {
    #[serde(borrow, default)]
    devices: Option<Vec<&'a RawValue>>,
    id: Option<AnyString>,
    #[serde(borrow, default)]
    event_id: Option<Cow<'a, str>>,
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

/// Accepts any JSON object without keeping it (its values were checked already).
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

#[path = "validate_one_pass.rs"]
mod one_pass;

#[cfg(test)]
#[path = "validate_tests.rs"]
mod tests;
