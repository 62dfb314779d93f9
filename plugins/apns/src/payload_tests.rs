//! Unit tests of payload building and truncation (kept apart so payload.rs stays readable).

use super::*;
use serde_json::json;

const ON: PayloadOptions = PayloadOptions {
    send_badge_counts: true,
};
const OFF: PayloadOptions = PayloadOptions {
    send_badge_counts: false,
};

fn notification(value: Value) -> Notification {
    serde_json::from_value(value).expect("valid notification")
}

fn device(value: Value) -> Device {
    serde_json::from_value(value).expect("valid device")
}

fn plain_device() -> Device {
    device(json!({"app_id": "com.example.ios", "pushkey": "X"}))
}

/// The payload as JSON, panicking unless something is to be sent.
fn built(n: &Notification, d: &Device, options: PayloadOptions) -> Value {
    match prepare(n, d, options) {
        Ok(Prepared::Send(body)) => {
            assert!(body.len() <= MAX_BODY_BYTES);
            serde_json::from_slice(&body).expect("body is JSON")
        }
        other => panic!("expected a payload, got {other:?}"),
    }
}

fn message(extra: Value) -> Notification {
    let mut base = json!({
        "event_id": "$ev", "room_id": "!room:x", "type": "m.room.message",
        "sender": "@alice:x", "sender_display_name": "Alice",
        "counts": {"unread": 2}
    });
    for (k, v) in extra.as_object().expect("object") {
        base[k] = v.clone();
    }
    notification(base)
}

fn loc(n: &Notification) -> (String, Vec<String>) {
    let (key, args) = loc_key_and_args(n).expect("a loc-key");
    (key.to_owned(), args)
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

#[test]
fn full_message_payload() {
    let n = message(json!({"room_name": "Room", "content": {"msgtype": "m.text", "body": "hi"}}));
    assert_eq!(
        built(&n, &plain_device(), ON),
        json!({
            "aps": {"alert": {"loc-key": "MSG_FROM_USER_IN_ROOM_WITH_CONTENT",
                              "loc-args": ["Alice", "Room", "hi"]},
                    "badge": 2},
            "room_id": "!room:x", "event_id": "$ev"
        })
    );
}

#[test]
fn every_message_loc_key() {
    let cases = [
        (
            json!({"room_name": "R", "content": {"msgtype": "m.text", "body": "b"}}),
            "MSG_FROM_USER_IN_ROOM_WITH_CONTENT",
            vec!["Alice", "R", "b"],
        ),
        (
            json!({"content": {"msgtype": "m.text", "body": "b"}}),
            "MSG_FROM_USER_WITH_CONTENT",
            vec!["Alice", "b"],
        ),
        // Unknown msgtypes show their body (it is always meant to be user-visible).
        (
            json!({"content": {"msgtype": "m.file", "body": "f.pdf"}}),
            "MSG_FROM_USER_WITH_CONTENT",
            vec!["Alice", "f.pdf"],
        ),
        (
            json!({"room_name": "R"}),
            "MSG_FROM_USER_IN_ROOM",
            vec!["Alice", "R"],
        ),
        (json!({}), "MSG_FROM_USER", vec!["Alice"]),
        (
            json!({"room_name": "R", "content": {"msgtype": "m.emote", "body": "waves"}}),
            "ACTION_FROM_USER_IN_ROOM",
            vec!["R", "Alice", "waves"],
        ),
        (
            json!({"content": {"msgtype": "m.emote", "body": "waves"}}),
            "ACTION_FROM_USER",
            vec!["Alice", "waves"],
        ),
        (
            json!({"room_name": "R", "content": {"msgtype": "m.image", "body": "cat.jpg"}}),
            "IMAGE_FROM_USER_IN_ROOM",
            vec!["Alice", "cat.jpg", "R"],
        ),
        (
            json!({"content": {"msgtype": "m.image", "body": "cat.jpg"}}),
            "IMAGE_FROM_USER",
            vec!["Alice", "cat.jpg"],
        ),
        // The room alias stands in for a missing (or empty) room name.
        (
            json!({"room_name": "", "room_alias": "#r:x", "content": {"msgtype": "m.text", "body": "b"}}),
            "MSG_FROM_USER_IN_ROOM_WITH_CONTENT",
            vec!["Alice", "#r:x", "b"],
        ),
        // Empty bodies and bodies without a msgtype show no content.
        (
            json!({"room_name": "R", "content": {"msgtype": "m.text", "body": ""}}),
            "MSG_FROM_USER_IN_ROOM",
            vec!["Alice", "R"],
        ),
        (
            json!({"content": {"body": "no msgtype"}}),
            "MSG_FROM_USER",
            vec!["Alice"],
        ),
        (
            json!({"content": {"msgtype": "m.emote", "body": ""}}),
            "MSG_FROM_USER",
            vec!["Alice"],
        ),
        (
            json!({"content": {"msgtype": "m.text", "body": 5}}),
            "MSG_FROM_USER",
            vec!["Alice"],
        ),
        // Encrypted events are treated as messages (no content to show).
        (
            json!({"type": "m.room.encrypted", "room_name": "R", "content": {"ciphertext": "..."}}),
            "MSG_FROM_USER_IN_ROOM",
            vec!["Alice", "R"],
        ),
    ];
    for (extra, key, args) in cases {
        let n = message(extra.clone());
        assert_eq!(loc(&n), (key.to_owned(), strings(&args)), "{extra}");
    }
}

#[test]
fn calls_invites_and_other_types() {
    let call = |content: Value| {
        notification(json!({"type": "m.call.invite", "sender": "@bob:x", "content": content}))
    };
    assert_eq!(
        loc(&call(json!({"offer": {"sdp": "v=0\r\nm=audio 9"}}))).0,
        "VOICE_CALL_FROM_USER"
    );
    assert_eq!(loc(&call(json!({}))).0, "VOICE_CALL_FROM_USER");
    assert_eq!(
        loc(&call(
            json!({"offer": {"sdp": "v=0\r\nm=audio 9\r\nm=video 9"}})
        )),
        ("VIDEO_CALL_FROM_USER".to_owned(), strings(&["@bob:x"]))
    );

    let invite = |extra: Value| {
        let mut base = json!({"type": "m.room.member", "membership": "invite",
                              "user_is_target": true, "sender": "@bob:x"});
        for (k, v) in extra.as_object().expect("object") {
            base[k] = v.clone();
        }
        notification(base)
    };
    assert_eq!(
        loc(&invite(json!({"room_name": "R", "room_alias": "#a:x"}))),
        (
            "USER_INVITE_TO_NAMED_ROOM".to_owned(),
            strings(&["@bob:x", "R"])
        )
    );
    assert_eq!(
        loc(&invite(json!({"room_alias": "#a:x"}))),
        (
            "USER_INVITE_TO_NAMED_ROOM".to_owned(),
            strings(&["@bob:x", "#a:x"])
        )
    );
    assert_eq!(
        loc(&invite(json!({}))),
        ("USER_INVITE_TO_CHAT".to_owned(), strings(&["@bob:x"]))
    );
    assert_eq!(
        loc_key_and_args(&invite(json!({"user_is_target": false}))),
        None
    );
    assert_eq!(
        loc_key_and_args(&invite(json!({"membership": "join"}))),
        None
    );

    let other = notification(json!({"type": "org.example.custom", "sender": "@bob:x"}));
    assert_eq!(
        loc(&other),
        ("MSG_FROM_USER".to_owned(), strings(&["@bob:x"]))
    );
    assert_eq!(loc_key_and_args(&notification(json!({"type": ""}))), None);
    assert_eq!(loc_key_and_args(&notification(json!({}))), None);
}

#[test]
fn sender_display_rules() {
    let from = |v: Value| loc(&notification(v)).1[0].clone();
    let t = "m.room.message";
    assert_eq!(
        from(json!({"type": t, "sender": "@a:x", "sender_display_name": "A"})),
        "A"
    );
    assert_eq!(from(json!({"type": t, "sender": "@a:x"})), "@a:x");
    assert_eq!(from(json!({"type": t})), " ");
    assert_eq!(
        from(json!({"type": t, "sender": "", "sender_display_name": ""})),
        " "
    );
    // Sygnal shows an empty display name as is when the sender is known.
    assert_eq!(
        from(json!({"type": t, "sender": "@a:x", "sender_display_name": ""})),
        ""
    );
}

#[test]
fn sender_and_room_are_cut_to_1024_characters() {
    let long_name = "é".repeat(2000);
    let n = message(
        json!({"sender_display_name": long_name, "room_name": "ü".repeat(1500),
                           "content": {"msgtype": "m.text", "body": "b"}}),
    );
    let (_, args) = loc(&n);
    assert_eq!(args[0], "é".repeat(1024));
    assert_eq!(args[1], "ü".repeat(1024));
    let invite = notification(json!({"type": "m.room.member", "membership": "invite",
        "user_is_target": true, "room_alias": "a".repeat(1100)}));
    assert_eq!(loc(&invite).1[1].len(), 1024);
}

#[test]
fn badge_is_unread_plus_missed_calls() {
    let d = plain_device();
    let badge =
        |counts: Value| built(&message(json!({"counts": counts})), &d, ON)["aps"]["badge"].clone();
    assert_eq!(badge(json!({"unread": 3, "missed_calls": 2})), json!(5));
    assert_eq!(badge(json!({"missed_calls": 2})), json!(2));
    assert_eq!(badge(json!({"unread": 0})), json!(0));
    assert_eq!(badge(json!({})), Value::Null);
}

#[test]
fn badge_only_update_from_synapse() {
    // Synapse's shape for a badge-only update: no event_id, type null.
    let n = notification(
        json!({"id": "", "type": null, "sender": "", "counts": {"unread": 4},
                                "prio": "high"}),
    );
    let d = device(json!({"app_id": "a", "pushkey": "X",
                          "data": {"default_payload": {"aps": {"mutable-content": 1}, "x": 1}}}));
    // The default payload is not used without an event type.
    assert_eq!(built(&n, &d, ON), json!({"aps": {"badge": 4}}));
    // With send_badge_counts off there is nothing to send, and the device is not rejected.
    assert_eq!(prepare(&n, &d, OFF), Ok(Prepared::Nothing));
}

#[test]
fn nothing_to_send_is_not_a_rejection() {
    let n = notification(json!({"type": "m.room.member", "membership": "join", "event_id": "$e"}));
    assert_eq!(prepare(&n, &plain_device(), ON), Ok(Prepared::Nothing));
}

#[test]
fn send_badge_counts_false_drops_counts() {
    let n = message(json!({"counts": {"unread": 3, "missed_calls": 1}}));
    let payload = built(&n, &plain_device(), OFF);
    assert_eq!(payload["aps"].get("badge"), None);
    assert_eq!(payload["aps"]["alert"]["loc-key"], "MSG_FROM_USER");

    let n = notification(
        json!({"event_id": "$e", "room_id": "!r", "counts": {"unread": 3, "missed_calls": 1}}),
    );
    assert_eq!(
        built(&n, &plain_device(), OFF),
        json!({"event_id": "$e", "room_id": "!r"})
    );
}

#[test]
fn event_id_only_payload() {
    let n = notification(json!({"event_id": "$e", "room_id": "!r", "prio": "high",
                                "counts": {"unread": 3, "missed_calls": 1}}));
    assert_eq!(
        built(&n, &plain_device(), ON),
        json!({"event_id": "$e", "room_id": "!r", "unread_count": 3, "missed_calls": 1})
    );
    // default_payload is the base; no aps unless it brings one.
    let d = device(
        json!({"app_id": "a", "pushkey": "X", "data": {"format": "event_id_only",
        "default_payload": {"aps": {"mutable-content": 1, "alert": {"loc-key": "SINGLE_UNREAD"}},
                            "event_id": "overridden"}}}),
    );
    assert_eq!(
        built(&n, &d, ON),
        json!({"aps": {"mutable-content": 1, "alert": {"loc-key": "SINGLE_UNREAD"}},
               "event_id": "$e", "room_id": "!r", "unread_count": 3, "missed_calls": 1})
    );
    let bare = notification(json!({"event_id": "$e"}));
    assert_eq!(built(&bare, &plain_device(), ON), json!({"event_id": "$e"}));
}

#[test]
fn default_payload_is_the_base_and_is_deep_copied() {
    let d = device(
        json!({"app_id": "a", "pushkey": "X", "data": {"default_payload": {
        "aps": {"mutable-content": 1, "alert": {"title": "New message"}}, "custom": {"nested": [1]}}}}),
    );
    let before = d.clone();
    let n = message(json!({"room_name": "R"}));
    let payload = built(&n, &d, ON);
    assert_eq!(
        payload,
        json!({"aps": {"mutable-content": 1, "badge": 2,
                       "alert": {"title": "New message", "loc-key": "MSG_FROM_USER_IN_ROOM",
                                 "loc-args": ["Alice", "R"]}},
               "custom": {"nested": [1]}, "room_id": "!room:x", "event_id": "$ev"})
    );
    // The device's data is untouched, so the next device or notification starts clean.
    assert_eq!(d, before);
}

#[test]
fn non_object_default_payload_rejects_the_pushkey() {
    for bad in [json!("text"), json!([1]), json!(3), Value::Null] {
        let d = device(json!({"app_id": "a", "pushkey": "X", "data": {"default_payload": bad}}));
        assert!(
            matches!(
                prepare(&message(json!({})), &d, ON),
                Ok(Prepared::Reject(_))
            ),
            "{bad}"
        );
        let eid = notification(json!({"event_id": "$e"}));
        assert!(
            matches!(prepare(&eid, &d, ON), Ok(Prepared::Reject(_))),
            "{bad}"
        );
    }
    for bad in [json!({"aps": 1}), json!({"aps": {"alert": "plain text"}})] {
        let d = device(json!({"app_id": "a", "pushkey": "X", "data": {"default_payload": bad}}));
        assert!(
            matches!(
                prepare(&message(json!({})), &d, ON),
                Ok(Prepared::Reject(_))
            ),
            "{bad}"
        );
    }
}

#[test]
fn sound_tweak_sets_aps_sound_unless_default_payload_has_one() {
    let n = message(json!({}));
    let d = device(
        json!({"app_id": "a", "pushkey": "X", "tweaks": {"sound": "default", "highlight": false}}),
    );
    assert_eq!(built(&n, &d, ON)["aps"]["sound"], "default");
    let d = device(
        json!({"app_id": "a", "pushkey": "X", "tweaks": {"sound": "default"},
                          "data": {"default_payload": {"aps": {"sound": "ping.caf"}}}}),
    );
    assert_eq!(built(&n, &d, ON)["aps"]["sound"], "ping.caf");
    assert_eq!(built(&n, &plain_device(), ON)["aps"].get("sound"), None);
}

#[test]
fn room_and_event_ids_only_with_a_loc_key() {
    let n = notification(
        json!({"type": "m.room.member", "membership": "leave", "event_id": "$e",
                                "room_id": "!r", "counts": {"unread": 1}}),
    );
    assert_eq!(built(&n, &plain_device(), ON), json!({"aps": {"badge": 1}}));
}

#[test]
fn long_bodies_are_shaved_by_whole_characters() {
    // 3-byte characters: the body alone is far over the limit.
    let body = "€".repeat(3000);
    let n = message(json!({"room_name": "R", "content": {"msgtype": "m.text", "body": body}}));
    let Ok(Prepared::Send(bytes)) = prepare(&n, &plain_device(), ON) else {
        panic!("expected a payload")
    };
    assert!(
        bytes.len() <= MAX_BODY_BYTES && bytes.len() > MAX_BODY_BYTES - 3,
        "{}",
        bytes.len()
    );
    let payload: Value = serde_json::from_slice(&bytes).unwrap();
    let args = payload["aps"]["alert"]["loc-args"].as_array().unwrap();
    let shaved = args[2].as_str().unwrap();
    assert!(shaved.chars().all(|c| c == '€') && shaved.len() < body.len());
    assert_eq!(args[0], "Alice");
    assert_eq!(args[1], "R");
}

#[test]
fn the_longest_field_is_shaved_first_and_ties_go_to_the_first() {
    let mut alert = Map::new();
    alert.insert("body".into(), "b".repeat(30).into());
    alert.insert(
        "loc-args".into(),
        json!(["x".repeat(40), "y".repeat(40), "short"]),
    );
    let mut aps = Map::new();
    aps.insert("alert".into(), Value::Object(alert));
    let mut payload = Map::new();
    payload.insert("aps".into(), Value::Object(aps));
    let size = serialize(&payload).len();
    let out: Value = serde_json::from_slice(&truncate(payload, size - 25).unwrap()).unwrap();
    let alert = &out["aps"]["alert"];
    // One character at a time from the longest, the first in order (body, then loc-args) on
    // ties: the two 40s alternate down to 30, then body, arg0, arg1, body, arg0.
    let lens: Vec<usize> = alert["loc-args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().len())
        .collect();
    assert_eq!(lens, vec![28, 29, 5]);
    assert_eq!(alert["body"].as_str().unwrap().len(), 28);
}

#[test]
fn shaving_a_string_alert_and_escaped_characters() {
    let mut aps = Map::new();
    aps.insert("alert".into(), "\"\n".repeat(100).into());
    let mut payload = Map::new();
    payload.insert("aps".into(), Value::Object(aps));
    let out = truncate(payload, 50).unwrap();
    assert!(out.len() <= 50 && out.len() >= 48, "{}", out.len());
    let value: Value = serde_json::from_slice(&out).unwrap();
    assert!(value["aps"]["alert"].as_str().unwrap().len() < 200);
}

#[test]
fn emoji_and_mixed_width_characters_survive_shaving() {
    let body = "a😀é€".repeat(600);
    let n = message(json!({"content": {"msgtype": "m.text", "body": body}}));
    let payload = built(&n, &plain_device(), ON);
    let shaved = payload["aps"]["alert"]["loc-args"][1].as_str().unwrap();
    assert!(body.starts_with(shaved) && shaved.len() < body.len());
}

#[test]
fn still_too_long_is_an_error() {
    // Nothing shaveable: a huge default payload in an event_id_only push (no aps)...
    let d = device(json!({"app_id": "a", "pushkey": "X",
                          "data": {"default_payload": {"junk": "x".repeat(5000)}}}));
    let n = notification(json!({"event_id": "$e"}));
    assert!(matches!(prepare(&n, &d, ON), Err(TooLong { bytes }) if bytes > MAX_BODY_BYTES));
    // ...or with an aps whose text fields cannot absorb the excess.
    let d = device(json!({"app_id": "a", "pushkey": "X",
                          "data": {"default_payload": {"aps": {"category": "x".repeat(5000)}}}}));
    assert!(matches!(
        prepare(&message(json!({})), &d, ON),
        Err(TooLong { .. })
    ));
}

#[test]
fn device_tokens() {
    // base64 of 0xDE 0xAD 0xBE 0xEF ...
    assert_eq!(device_token("3q2+7w==", true).as_deref(), Some("deadbeef"));
    assert_eq!(device_token("3q2+7w", true).as_deref(), Some("deadbeef"));
    assert_eq!(
        device_token(" 3q2+\n7w== ", true).as_deref(),
        Some("deadbeef")
    );
    assert_eq!(device_token("not base64!", true), None);
    assert_eq!(device_token("", true), None);
    assert_eq!(device_token("DEADBEEF", false).as_deref(), Some("DEADBEEF"));
}

mod properties {
    use super::super::*;
    use proptest::prelude::*;
    use sygnal_plugin_api::testing::accepted_notifications;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// Whatever the host accepts: no panic, and what is sent is JSON within Apple's limit
        /// (or, when even shaving cannot make it fit, nothing is sent).
        #[test]
        fn payloads_fit_apns_limit(n in accepted_notifications(), badges in any::<bool>()) {
            let options = PayloadOptions { send_badge_counts: badges };
            for device in &n.devices {
                if let Ok(Prepared::Send(body)) = prepare(&n, device, options) {
                    prop_assert!(body.len() <= MAX_BODY_BYTES, "{} bytes", body.len());
                    prop_assert!(serde_json::from_slice::<serde_json::Value>(&body).is_ok());
                }
                let _ = device_token(&device.pushkey, true);
            }
        }
    }
}
