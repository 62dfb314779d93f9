//! What a browser receives: the payload JSON and the per-push headers, built as Sygnal's
//! webpushpushkin does. No network here.

use crate::blake2s::blake2s;
use base64::engine::general_purpose::URL_SAFE;
use base64::Engine as _;
use serde_json::{Map, Value};
use sygnal_plugin_api::{Device, Notification};

/// `content.body` longer than this many characters is cut to it, ending in "…".
pub const MAX_BODY_CHARS: usize = 1000;
/// `content.ciphertext` longer than this many characters is left out.
pub const MAX_CIPHERTEXT_CHARS: usize = 2000;

/// The payload for one device: its `default_payload` first, then the notification's fields
/// (those present and non-empty, as Sygnal's `if value:`), the counts present, and `content`
/// without `formatted_body`, with `body` cut and an over-long `ciphertext` dropped.
pub fn build_payload(notification: &Notification, device: &Device) -> Map<String, Value> {
    let mut payload = match device.data_value("default_payload") {
        Some(Value::Object(default)) => default.clone(),
        _ => Map::new(),
    };
    let texts = [
        ("room_id", &notification.room_id),
        ("room_name", &notification.room_name),
        ("room_alias", &notification.room_alias),
        ("membership", &notification.membership),
        ("event_id", &notification.event_id),
        ("sender", &notification.sender),
        ("sender_display_name", &notification.sender_display_name),
    ];
    for (key, value) in texts {
        if let Some(text) = value.as_deref().filter(|text| !text.is_empty()) {
            payload.insert(key.to_owned(), Value::from(text));
        }
    }
    if notification.user_is_target == Some(true) {
        payload.insert("user_is_target".to_owned(), Value::Bool(true));
    }
    if let Some(event_type) = notification.event_type.as_deref().filter(|t| !t.is_empty()) {
        payload.insert("type".to_owned(), Value::from(event_type));
    }
    if let Some(unread) = notification.counts.unread {
        payload.insert("unread".to_owned(), Value::from(unread));
    }
    if let Some(missed_calls) = notification.counts.missed_calls {
        payload.insert("missed_calls".to_owned(), Value::from(missed_calls));
    }
    if let Some(content) = notification.content.as_ref().filter(|c| !c.is_empty()) {
        payload.insert("content".to_owned(), Value::Object(trim_content(content)));
    }
    payload
}

/// `content` as the browser gets it: no `formatted_body` (a notification cannot show it),
/// `body` cut to [`MAX_BODY_CHARS`] characters, `ciphertext` dropped past
/// [`MAX_CIPHERTEXT_CHARS`], so the payload stays within what push services accept.
fn trim_content(content: &Map<String, Value>) -> Map<String, Value> {
    let mut content = content.clone();
    content.remove("formatted_body");
    if let Some(Value::String(body)) = content.get_mut("body") {
        if body.chars().count() > MAX_BODY_CHARS {
            let kept = sygnal_plugin_api::text::truncate_to_chars(body, MAX_BODY_CHARS - 1);
            *body = format!("{kept}…");
        }
    }
    let long_ciphertext = matches!(
        content.get("ciphertext"),
        Some(Value::String(text)) if text.chars().count() > MAX_CIPHERTEXT_CHARS
    );
    if long_ciphertext {
        content.remove("ciphertext");
    }
    content
}

/// The `Urgency` header: push services only know normal and low, so anything but `prio: low`
/// is normal.
pub fn urgency(notification: &Notification) -> &'static str {
    if notification.is_low_priority() {
        "low"
    } else {
        "normal"
    }
}

/// The `Topic` header when the pusher asked for `only_last_per_room: true`: a newer push with
/// the same topic replaces an undelivered older one. 32 URL-safe base64 characters (the most
/// RFC 8030 allows) of a 22-byte BLAKE2s digest of the room id, exactly as Sygnal computes it.
pub fn topic(notification: &Notification, device: &Device) -> Option<String> {
    let room_id = notification.room_id.as_deref().filter(|r| !r.is_empty())?;
    if device.data_value("only_last_per_room") != Some(&Value::Bool(true)) {
        return None;
    }
    Some(URL_SAFE.encode(blake2s::<22>(room_id.as_bytes())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(notification: Value) -> Notification {
        serde_json::from_value(notification).unwrap()
    }

    fn device(data: Value) -> Device {
        serde_json::from_value(json!({"app_id": "a", "pushkey": "k", "data": data})).unwrap()
    }

    #[test]
    fn payload_follows_sygnal() {
        let n = parse(json!({
            "event_id": "$e", "room_id": "!r:x", "room_name": "Room", "room_alias": "#r:x",
            "membership": "invite", "sender": "@a:x", "sender_display_name": "Alice",
            "user_is_target": true, "type": "m.room.member", "prio": "high",
            "counts": {"unread": 0, "missed_calls": 2},
            "content": {"msgtype": "m.text", "body": "hi", "formatted_body": "<b>hi</b>"},
            "devices": []
        }));
        let d = device(json!({"default_payload": {"aps": {"x": 1}, "room_id": "overridden"}}));
        assert_eq!(
            Value::Object(build_payload(&n, &d)),
            json!({
                "aps": {"x": 1}, "room_id": "!r:x", "room_name": "Room", "room_alias": "#r:x",
                "membership": "invite", "event_id": "$e", "sender": "@a:x",
                "sender_display_name": "Alice", "user_is_target": true, "type": "m.room.member",
                "unread": 0, "missed_calls": 2,
                "content": {"msgtype": "m.text", "body": "hi"}
            })
        );
    }

    #[test]
    fn empty_and_false_fields_are_left_out_like_sygnal() {
        // Synapse's badge-only update: "" ids, null type, no event id.
        let n = parse(json!({"id": "", "type": null, "sender": "", "room_id": "",
            "user_is_target": false, "content": {}, "counts": {"unread": 0}}));
        let d = device(json!({"default_payload": "not an object"}));
        assert_eq!(Value::Object(build_payload(&n, &d)), json!({"unread": 0}));
    }

    #[test]
    fn long_bodies_are_cut_in_characters_and_long_ciphertext_dropped() {
        let body: String = "é".repeat(1500);
        let n = parse(json!({"content": {"body": body, "ciphertext": "c".repeat(2001)}}));
        let payload = build_payload(&n, &device(json!({})));
        let cut = payload["content"]["body"].as_str().unwrap();
        assert_eq!(cut.chars().count(), 1000);
        assert!(cut.starts_with("éé") && cut.ends_with("é…"), "{cut}");
        assert!(payload["content"].get("ciphertext").is_none());
        // At the limits, nothing changes.
        let n =
            parse(json!({"content": {"body": "b".repeat(1000), "ciphertext": "c".repeat(2000)}}));
        let payload = build_payload(&n, &device(json!({})));
        assert_eq!(payload["content"]["body"].as_str().unwrap().len(), 1000);
        assert_eq!(
            payload["content"]["ciphertext"].as_str().unwrap().len(),
            2000
        );
    }

    #[test]
    fn urgency_and_topic() {
        let low = parse(json!({"prio": "low", "room_id": "!room:example.org"}));
        assert_eq!(urgency(&low), "low");
        assert_eq!(urgency(&parse(json!({"prio": "high"}))), "normal");
        assert_eq!(urgency(&parse(json!({}))), "normal");
        let only_last = device(json!({"only_last_per_room": true}));
        // Python: urlsafe_b64encode(blake2s(b"!room:example.org", digest_size=22).digest())
        assert_eq!(
            topic(&low, &only_last).as_deref(),
            Some("wMM9sx0_4uCn3aAmE6newKcNvYOuTQ==")
        );
        assert_eq!(topic(&low, &only_last).unwrap().len(), 32);
        assert_eq!(
            topic(&low, &device(json!({"only_last_per_room": "yes"}))),
            None
        );
        assert_eq!(topic(&low, &device(json!({}))), None);
        assert_eq!(topic(&parse(json!({})), &only_last), None);
    }
}
