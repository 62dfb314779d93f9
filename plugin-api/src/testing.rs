//! Property-test strategies (feature `testing`): notification bodies seeded from what Synapse
//! really sends, mutated with hostile JSON, for the host's parser and every payload builder.

use proptest::prelude::*;
use serde_json::Value;

/// The `notification` objects Synapse 1.163.2 sent (full, event_id_only, badge-only).
pub fn synapse_notifications() -> Vec<Value> {
    let text = include_str!("../../tests/data/synapse-notify-bodies.json");
    let cases: Value = serde_json::from_str(text).unwrap_or(Value::Null);
    cases
        .as_array()
        .map(|cases| {
            cases
                .iter()
                .map(|case| case["body"]["notification"].clone())
                .collect()
        })
        .unwrap_or_default()
}

/// A string of `len` characters drawn from a mix of ASCII, escapes and wide characters.
fn text(max_len: usize) -> impl Strategy<Value = String> {
    let chars = prop_oneof![
        4 => prop::char::range('a', 'z'),
        1 => Just('"'),
        1 => Just('\\'),
        1 => Just('\n'),
        1 => Just('\u{1}'),
        1 => Just('é'),
        1 => Just('日'),
        1 => Just('😀'),
    ];
    prop::collection::vec(chars, 0..max_len).prop_map(|chars| chars.into_iter().collect())
}

/// JSON text for one value, hostile bits included: out-of-range numbers, lone surrogate
/// escapes, deep nesting (around the validation limit), long strings, wrong types.
pub fn json_fragment() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just("null".to_owned()),
        Just("true".to_owned()),
        Just("0".to_owned()),
        Just("7".to_owned()),
        Just("-3".to_owned()),
        Just("1.5".to_owned()),
        Just("1e400".to_owned()),
        Just("-1e400".to_owned()),
        Just("1e-400".to_owned()),
        Just("18446744073709551616".to_owned()),
        Just(r#""\ud800""#.to_owned()),
        Just(r#""a\udc00b""#.to_owned()),
        Just(r#""\ud83d\ude00""#.to_owned()),
        Just(r#""\u0041\u00e9""#.to_owned()),
        text(40).prop_map(|s| Value::String(s).to_string()),
        (1usize..6000).prop_map(|n| Value::String("x".repeat(n)).to_string()),
        (crate::validate::MAX_DEPTH - 4..crate::validate::MAX_DEPTH + 4)
            .prop_map(|depth| { format!("{}{}", "[".repeat(depth), "]".repeat(depth)) }),
    ];
    leaf.prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4)
                .prop_map(|items| format!("[{}]", items.join(","))),
            prop::collection::vec((key(), inner), 0..4).prop_map(|entries| {
                let entries: Vec<String> = entries
                    .into_iter()
                    .map(|(k, v)| format!("{}:{v}", Value::String(k)))
                    .collect();
                format!("{{{}}}", entries.join(","))
            }),
        ]
    })
}

/// Field names: the ones pushkins look at, and unknown ones.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("body".to_owned()),
        Just("msgtype".to_owned()),
        Just("formatted_body".to_owned()),
        Just("unread".to_owned()),
        Just("missed_calls".to_owned()),
        Just("sound".to_owned()),
        Just("format".to_owned()),
        Just("default_payload".to_owned()),
        Just("aps".to_owned()),
        Just("alert".to_owned()),
        Just("event_id".to_owned()),
        Just("room_id".to_owned()),
        Just("type".to_owned()),
        Just("sender".to_owned()),
        Just("sender_display_name".to_owned()),
        Just("room_name".to_owned()),
        Just("room_alias".to_owned()),
        Just("prio".to_owned()),
        Just("content".to_owned()),
        Just("counts".to_owned()),
        Just("membership".to_owned()),
        Just("user_is_target".to_owned()),
        Just("tweaks".to_owned()),
        Just("data".to_owned()),
        Just("highlight".to_owned()),
        Just("pushkey_ts".to_owned()),
        text(8),
    ]
}

/// Where in a notification a mutation lands.
#[derive(Debug, Clone, Copy)]
enum Place {
    Top,
    Content,
    Counts,
    Device,
    DeviceData,
    DefaultPayload,
    Tweaks,
}

/// The JSON text of a `notification` object: a real Synapse one with up to four fields set to
/// arbitrary JSON (some valid, some not).
pub fn notification_json() -> impl Strategy<Value = String> {
    let place = prop_oneof![
        Just(Place::Top),
        Just(Place::Content),
        Just(Place::Counts),
        Just(Place::Device),
        Just(Place::DeviceData),
        Just(Place::DefaultPayload),
        Just(Place::Tweaks),
    ];
    let seeds = synapse_notifications();
    let count = seeds.len().max(1);
    (
        0..count,
        prop::collection::vec((place, key(), json_fragment()), 0..4),
    )
        .prop_map(move |(seed, mutations)| {
            let mut notification = seeds.get(seed).cloned().unwrap_or(Value::Null);
            let mut fragments = Vec::new();
            for (index, (place, key, fragment)) in mutations.into_iter().enumerate() {
                let marker = format!("@@fragment-{index}@@");
                if let Some(object) = object_at(&mut notification, place) {
                    object.insert(key, Value::String(marker.clone()));
                    fragments.push((marker, fragment));
                }
            }
            let mut text = notification.to_string();
            for (marker, fragment) in fragments {
                text = text.replacen(&format!("\"{marker}\""), &fragment, 1);
            }
            text
        })
}

/// The object at `place`, created when missing (and replacing what is not an object).
fn object_at(
    notification: &mut Value,
    place: Place,
) -> Option<&mut serde_json::Map<String, Value>> {
    let target: &mut Value = match place {
        Place::Top => notification,
        Place::Content => ensure_object(notification, "content"),
        Place::Counts => ensure_object(notification, "counts"),
        Place::Device => notification.get_mut("devices")?.get_mut(0)?,
        Place::DeviceData => ensure_object(notification.get_mut("devices")?.get_mut(0)?, "data"),
        Place::DefaultPayload => {
            let data = ensure_object(notification.get_mut("devices")?.get_mut(0)?, "data");
            ensure_object(data, "default_payload")
        }
        Place::Tweaks => ensure_object(notification.get_mut("devices")?.get_mut(0)?, "tweaks"),
    };
    target.as_object_mut()
}

fn ensure_object<'v>(value: &'v mut Value, key: &str) -> &'v mut Value {
    if !value.is_object() {
        *value = Value::Object(Default::default());
    }
    let Value::Object(object) = value else {
        unreachable!("made an object above")
    };
    let slot = object.entry(key.to_owned()).or_insert(Value::Null);
    if !slot.is_object() {
        *slot = Value::Object(Default::default());
    }
    slot
}

/// Notifications as a pushkin receives them: [`notification_json`] cases the host accepts,
/// parsed as the SDK parses them (all devices routed to the pushkin).
pub fn accepted_notifications() -> impl Strategy<Value = crate::Notification> {
    notification_json().prop_filter_map("refused by the host", |json| {
        let checked = crate::validate::notification(&json).ok()?;
        let raws: Vec<&str> = checked.devices.iter().map(|d| d.raw.get()).collect();
        crate::Notification::from_dispatch_json(&json, &format!("[{}]", raws.join(","))).ok()
    })
}
