//! The APNs JSON payload for one device, exactly as Sygnal builds it, and its truncation to
//! Apple's 4096-byte limit (Sygnal's `apnstruncate`). Pure functions: no I/O, no clock.

use serde_json::{Map, Value};
use sygnal_plugin_api::notification::MAX_ID_BYTES;
use sygnal_plugin_api::text::{shave_longest, truncate_to_bytes, truncate_to_chars};
use sygnal_plugin_api::{Device, Notification};

/// Sender, room name and room alias are cut to this many characters (Sygnal's MAX_FIELD_LENGTH).
pub const MAX_FIELD_CHARS: usize = 1024;
/// Apple refuses larger payloads.
pub const MAX_BODY_BYTES: usize = 4096;

/// What the app's config changes about payloads.
#[derive(Debug, Clone, Copy)]
pub struct PayloadOptions {
    /// `send_badge_counts`: false leaves out badge, unread_count and missed_calls.
    pub send_badge_counts: bool,
}

/// What to do for one device.
#[derive(Debug, PartialEq)]
pub enum Prepared {
    /// Send this JSON body (at most [`MAX_BODY_BYTES`]).
    Send(Vec<u8>),
    /// Nothing worth a push (no alert, no badge): send nothing, do not reject.
    Nothing,
    /// The pusher's data can never produce a valid push: reject the pushkey.
    Reject(&'static str),
}

/// The payload stays over [`MAX_BODY_BYTES`] after shaving everything that may be shaved.
#[derive(Debug, PartialEq)]
pub struct TooLong {
    /// Its size once shaved as far as possible.
    pub bytes: usize,
}

/// Builds the body for `device`, shaved to fit.
pub fn prepare(
    n: &Notification,
    device: &Device,
    options: PayloadOptions,
) -> Result<Prepared, TooLong> {
    // Checked before anything else, as Sygnal does: such a pusher is broken for every event.
    // Like Sygnal, `default_payload: null` counts as not an object.
    let default_payload = match device.data_value("default_payload") {
        None => Map::new(),
        Some(Value::Object(map)) => map.clone(),
        Some(_) => return Ok(Prepared::Reject("default_payload is not a JSON object")),
    };

    let payload = if truthy(&n.event_id) && !truthy(&n.event_type) {
        event_id_only(n, default_payload, options)
    } else {
        match full(n, device, default_payload, options) {
            Ok(Some(payload)) => payload,
            Ok(None) => return Ok(Prepared::Nothing),
            Err(reason) => return Ok(Prepared::Reject(reason)),
        }
    };
    truncate(payload, MAX_BODY_BYTES).map(Prepared::Send)
}

/// Python's truthiness for an optional string, which Sygnal's checks rely on.
fn truthy(value: &Option<String>) -> bool {
    value.as_deref().is_some_and(|v| !v.is_empty())
}

fn non_empty(value: &Option<String>) -> Option<&str> {
    value.as_deref().filter(|v| !v.is_empty())
}

/// A room or event id for the payload: ids longer than Matrix allows are cut, so a hostile
/// one cannot push the payload over Apple's limit.
fn id(value: &Option<String>) -> Option<&str> {
    non_empty(value).map(|v| truncate_to_bytes(v, MAX_ID_BYTES))
}

/// `format: event_id_only`-style payload: ids and counts beside the default payload, no `aps`
/// unless the default payload brings one.
fn event_id_only(
    n: &Notification,
    mut payload: Map<String, Value>,
    options: PayloadOptions,
) -> Map<String, Value> {
    if let Some(room_id) = id(&n.room_id) {
        payload.insert("room_id".into(), room_id.into());
    }
    if let Some(event_id) = id(&n.event_id) {
        payload.insert("event_id".into(), event_id.into());
    }
    if options.send_badge_counts {
        if let Some(unread) = n.counts.unread {
            payload.insert("unread_count".into(), unread.into());
        }
        if let Some(missed) = n.counts.missed_calls {
            payload.insert("missed_calls".into(), missed.into());
        }
    }
    payload
}

/// The localisation key and its arguments Sygnal picks for the notification.
pub fn loc_key_and_args(n: &Notification) -> Option<(&'static str, Vec<String>)> {
    let cut = |s: &str| truncate_to_chars(s, MAX_FIELD_CHARS).to_owned();
    let from = if !truthy(&n.sender) && !truthy(&n.sender_display_name) {
        " "
    } else if let Some(display_name) = n.sender_display_name.as_deref() {
        display_name
    } else {
        n.sender.as_deref().unwrap_or(" ")
    };
    let from = cut(from);
    let room = non_empty(&n.room_name)
        .or(non_empty(&n.room_alias))
        .map(cut);

    match n.event_type.as_deref() {
        Some("m.room.message" | "m.room.encrypted") => {
            let content = n.content.as_ref();
            let msgtype = content.and_then(|c| c.get("msgtype"));
            // A body that is not a string is treated as absent: it could not be shown.
            let body = content
                .filter(|_| msgtype.is_some())
                .and_then(|c| c.get("body"))
                .and_then(Value::as_str);
            let msgtype = msgtype.and_then(Value::as_str);
            let is_image = body.is_some() && msgtype == Some("m.image");
            let (text, action) = match (body, msgtype) {
                (Some(body), Some("m.emote")) => (None, Some(body)),
                (body, _) => (body, None),
            };
            let text = text.filter(|t| !t.is_empty() || is_image);
            let action = action.filter(|a| !a.is_empty());
            let text_arg = || text.unwrap_or_default().to_owned();
            Some(match (room, is_image, text, action) {
                (Some(room), true, _, _) => {
                    ("IMAGE_FROM_USER_IN_ROOM", vec![from, text_arg(), room])
                }
                (Some(room), _, Some(text), _) => (
                    "MSG_FROM_USER_IN_ROOM_WITH_CONTENT",
                    vec![from, room, text.to_owned()],
                ),
                (Some(room), _, _, Some(action)) => (
                    "ACTION_FROM_USER_IN_ROOM",
                    vec![room, from, action.to_owned()],
                ),
                (Some(room), _, _, _) => ("MSG_FROM_USER_IN_ROOM", vec![from, room]),
                (None, true, _, _) => ("IMAGE_FROM_USER", vec![from, text_arg()]),
                (None, _, Some(text), _) => {
                    ("MSG_FROM_USER_WITH_CONTENT", vec![from, text.to_owned()])
                }
                (None, _, _, Some(action)) => ("ACTION_FROM_USER", vec![from, action.to_owned()]),
                (None, _, _, _) => ("MSG_FROM_USER", vec![from]),
            })
        }
        Some("m.call.invite") => {
            // Only works for WebRTC offers, as in Sygnal.
            let sdp = n
                .content
                .as_ref()
                .and_then(|c| c.get("offer"))
                .and_then(|offer| offer.get("sdp"))
                .and_then(Value::as_str);
            let key = if sdp.is_some_and(|sdp| sdp.contains("m=video")) {
                "VIDEO_CALL_FROM_USER"
            } else {
                "VOICE_CALL_FROM_USER"
            };
            Some((key, vec![from]))
        }
        Some("m.room.member") => {
            if n.user_is_target != Some(true) || n.membership.as_deref() != Some("invite") {
                return None;
            }
            Some(match room {
                Some(room) => ("USER_INVITE_TO_NAMED_ROOM", vec![from, room]),
                None => ("USER_INVITE_TO_CHAT", vec![from]),
            })
        }
        // Unknown, but important enough for the homeserver to push.
        Some(t) if !t.is_empty() => Some(("MSG_FROM_USER", vec![from])),
        _ => None,
    }
}

/// The full payload, or `None` when there is neither an alert nor a badge. `Err` names why the
/// pusher's default payload cannot be used.
fn full(
    n: &Notification,
    device: &Device,
    default_payload: Map<String, Value>,
    options: PayloadOptions,
) -> Result<Option<Map<String, Value>>, &'static str> {
    let loc = loc_key_and_args(n);
    let badge = if options.send_badge_counts {
        match (n.counts.unread, n.counts.missed_calls) {
            (None, None) => None,
            (unread, missed) => Some(unread.unwrap_or(0).saturating_add(missed.unwrap_or(0))),
        }
    } else {
        None
    };
    if loc.is_none() && badge.is_none() {
        return Ok(None);
    }

    // The default payload is the base only for events (not badge-only updates). It is owned
    // here, so edits never leak back into the device data (Sygnal's deepcopy).
    let mut payload = if truthy(&n.event_type) {
        default_payload
    } else {
        Map::new()
    };
    let aps = payload
        .entry("aps")
        .or_insert_with(|| Value::Object(Map::new()))
        .as_object_mut()
        .ok_or("default_payload.aps is not a JSON object")?;
    if let Some((key, args)) = &loc {
        let alert = aps
            .entry("alert")
            .or_insert_with(|| Value::Object(Map::new()))
            .as_object_mut()
            .ok_or("default_payload.aps.alert is not a JSON object")?;
        alert.insert("loc-key".into(), (*key).into());
        alert.insert("loc-args".into(), args.clone().into());
    }
    if let Some(badge) = badge {
        aps.insert("badge".into(), badge.into());
    }
    // Sygnal ignores the sound tweak; a sound chosen in default_payload still wins.
    if let Some(sound) = &device.tweaks.sound {
        aps.entry("sound").or_insert_with(|| sound.as_str().into());
    }
    if loc.is_some() {
        if let Some(room_id) = id(&n.room_id) {
            payload.insert("room_id".into(), room_id.into());
        }
        if let Some(event_id) = id(&n.event_id) {
            payload.insert("event_id".into(), event_id.into());
        }
    }
    Ok(Some(payload))
}

/// A text field of `aps` that may be shaved.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Choppable {
    Alert,
    AlertBody,
    LocArg(usize),
}

/// Serializes `payload`, shaving whole characters off the longest of `aps.alert` (a string),
/// `aps.alert.body` and `aps.alert.loc-args[i]` (longest in UTF-8 bytes, first on ties) until
/// the JSON fits in `max_bytes`. The same characters go as in Sygnal's `apnstruncate`, except
/// that the size measured is the compact JSON actually sent rather than Python's spaced form.
pub fn truncate(mut payload: Map<String, Value>, max_bytes: usize) -> Result<Vec<u8>, TooLong> {
    let body = serialize(&payload);
    if body.len() <= max_bytes {
        return Ok(body);
    }
    let Some(Value::Object(aps)) = payload.get_mut("aps") else {
        return Err(TooLong { bytes: body.len() });
    };

    let mut fields: Vec<(Choppable, String)> = choppables(aps)
        .into_iter()
        .filter_map(|c| get(aps, c).map(|text| (c, text.to_owned())))
        .collect();

    let excess = body.len() - max_bytes;
    let mut texts: Vec<&mut String> = fields.iter_mut().map(|(_, text)| text).collect();
    let left = shave_longest(&mut texts, excess);
    if left > 0 {
        return Err(TooLong {
            bytes: max_bytes + left,
        });
    }
    for (c, text) in fields {
        put(aps, c, text);
    }
    let body = serialize(&payload);
    if body.len() > max_bytes {
        // Cannot happen if json_escaped_len matches serde_json; never send an oversized body.
        return Err(TooLong { bytes: body.len() });
    }
    Ok(body)
}

fn serialize(payload: &Map<String, Value>) -> Vec<u8> {
    // Serializing a Map of Values cannot fail (keys are strings); an empty body would be
    // refused by APNs rather than sent wrongly.
    serde_json::to_vec(payload).unwrap_or_default()
}

fn choppables(aps: &Map<String, Value>) -> Vec<Choppable> {
    match aps.get("alert") {
        Some(Value::String(_)) => vec![Choppable::Alert],
        Some(Value::Object(alert)) => {
            let mut found = Vec::new();
            if alert.contains_key("body") {
                found.push(Choppable::AlertBody);
            }
            if let Some(Value::Array(args)) = alert.get("loc-args") {
                found.extend((0..args.len()).map(Choppable::LocArg));
            }
            found
        }
        _ => Vec::new(),
    }
}

/// The text at `c`, when it is a string (anything else is left alone).
fn get(aps: &Map<String, Value>, c: Choppable) -> Option<&str> {
    let alert = aps.get("alert")?;
    match c {
        Choppable::Alert => alert.as_str(),
        Choppable::AlertBody => alert.get("body")?.as_str(),
        Choppable::LocArg(i) => alert.get("loc-args")?.get(i)?.as_str(),
    }
}

fn put(aps: &mut Map<String, Value>, c: Choppable, text: String) {
    let Some(alert) = aps.get_mut("alert") else {
        return;
    };
    let slot = match c {
        Choppable::Alert => Some(alert),
        Choppable::AlertBody => alert.get_mut("body"),
        Choppable::LocArg(i) => alert.get_mut("loc-args").and_then(|a| a.get_mut(i)),
    };
    if let Some(slot) = slot {
        *slot = Value::String(text);
    }
}

/// The token APNs expects in the request path: the pushkey decoded from base64 and written as
/// lowercase hex, or the pushkey as given. `None` when the pushkey is not base64.
pub fn device_token(pushkey: &str, convert_to_hex: bool) -> Option<String> {
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    use base64::Engine as _;
    if !convert_to_hex {
        return Some(pushkey.to_owned());
    }
    // Lenient like Python's b64decode: padding optional, whitespace ignored.
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new()
            .with_decode_padding_mode(DecodePaddingMode::Indifferent)
            .with_decode_allow_trailing_bits(true),
    );
    let compact: String = pushkey
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    let bytes = LENIENT.decode(compact).ok()?;
    if bytes.is_empty() {
        return None;
    }
    Some(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
#[path = "payload_tests.rs"]
mod tests;
