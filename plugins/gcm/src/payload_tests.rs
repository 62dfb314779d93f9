//! Unit tests for payload.rs: every data and body rule, field by field.

use super::*;
use serde_json::json;

fn notification(value: Value) -> Notification {
    serde_json::from_value(value).expect("test notification")
}

fn device(data: Value) -> Device {
    serde_json::from_value(json!({"app_id": "com.example", "pushkey": "tok", "data": data}))
        .expect("test device")
}

fn full() -> Notification {
    notification(json!({
        "event_id": "$ev", "type": "m.room.message", "sender": "@alice:hs",
        "room_name": "Room", "room_alias": "#room:hs", "membership": "invite",
        "sender_display_name": "Alice", "room_id": "!room:hs", "prio": "high",
        "content": {"body": "hello", "msgtype": "m.text", "n": 3, "nested": {"a": 1}},
        "counts": {"unread": 2, "missed_calls": 1},
        "user_is_target": true,
    }))
}

fn sent(data: Data) -> JsonObject {
    match data {
        Data::Send(data) => match serde_json::to_value(&data) {
            Ok(Value::Object(data)) => data,
            other => panic!("data written as {other:?}"),
        },
        other => panic!("expected data to send, got {other:?}"),
    }
}

/// `map` as data, every value borrowed as it is.
fn fcm_data(map: &JsonObject) -> FcmData<'_> {
    let mut data = FcmData::default();
    for (key, value) in map {
        data.insert(key.as_str(), DataValue::Json(Cow::Borrowed(value)));
    }
    data
}

#[test]
fn legacy_data_keeps_types_and_content_object() {
    let data = sent(build_data(
        &full(),
        &device(json!({})),
        ApiVersion::Legacy,
        true,
    ));
    let expected = json!({
        "event_id": "$ev", "type": "m.room.message", "sender": "@alice:hs",
        "room_name": "Room", "room_alias": "#room:hs", "membership": "invite",
        "sender_display_name": "Alice", "room_id": "!room:hs",
        "content": {"body": "hello", "msgtype": "m.text", "n": 3, "nested": {"a": 1}},
        "prio": "high", "unread": 2, "missed_calls": 1,
    });
    assert_eq!(Value::Object(data), expected);
}

#[test]
fn v1_data_is_all_strings_with_flattened_content() {
    let data = sent(build_data(
        &full(),
        &device(json!({})),
        ApiVersion::V1,
        true,
    ));
    let expected = json!({
        "event_id": "$ev", "type": "m.room.message", "sender": "@alice:hs",
        "room_name": "Room", "room_alias": "#room:hs", "membership": "invite",
        "sender_display_name": "Alice", "room_id": "!room:hs",
        "content_body": "hello", "content_msgtype": "m.text",
        "prio": "high", "unread": "2", "missed_calls": "1",
    });
    assert_eq!(Value::Object(data), expected);
}

#[test]
fn low_priority_maps_to_normal() {
    let mut n = full();
    n.prio = Some("low".into());
    for api in [ApiVersion::Legacy, ApiVersion::V1] {
        let data = sent(build_data(&n, &device(json!({})), api, true));
        assert_eq!(data["prio"], "normal");
    }
    n.prio = None;
    let data = sent(build_data(&n, &device(json!({})), ApiVersion::V1, true));
    assert_eq!(data["prio"], "high", "absent prio is high");
}

#[test]
fn default_payload_comes_first_and_notification_fields_win() {
    let pusher = device(json!({"default_payload": {
        "room_id": "!overridden", "cs": "client-secret-ish", "n": 7, "flag": true, "obj": {"x": 1}
    }}));
    let legacy = sent(build_data(&full(), &pusher, ApiVersion::Legacy, true));
    assert_eq!(legacy["room_id"], "!room:hs");
    assert_eq!(legacy["cs"], "client-secret-ish");
    assert_eq!(legacy["n"], 7);
    assert_eq!(legacy["flag"], true);
    assert_eq!(legacy["obj"], json!({"x": 1}));

    let v1 = sent(build_data(&full(), &pusher, ApiVersion::V1, true));
    assert_eq!(v1["room_id"], "!room:hs");
    assert_eq!(v1["cs"], "client-secret-ish");
    assert_eq!(v1["n"], "7");
    assert_eq!(v1["flag"], "true");
    assert_eq!(v1["obj"], r#"{"x":1}"#);
}

#[test]
fn default_payload_alone_does_not_make_a_badge_update_sendable() {
    let badge = notification(json!({"counts": {}}));
    let pusher = device(json!({"default_payload": {"aps": "x"}}));
    assert_eq!(
        build_data(&badge, &pusher, ApiVersion::V1, true),
        Data::Nothing
    );
    // ...but a room_id in it does, as in Sygnal (it checks the merged data).
    let pusher = device(json!({"default_payload": {"room_id": "!r"}}));
    let data = sent(build_data(&badge, &pusher, ApiVersion::V1, true));
    assert_eq!(
        Value::Object(data),
        json!({"room_id": "!r", "prio": "high"})
    );
}

#[test]
fn v1_flattens_a_default_payload_content_object_too() {
    let n = notification(json!({"event_id": "$e"}));
    let pusher = device(json!({"default_payload": {"content": {"k": "v", "n": 1}}}));
    let data = sent(build_data(&n, &pusher, ApiVersion::V1, true));
    assert_eq!(
        Value::Object(data),
        json!({"event_id": "$e", "content_k": "v", "prio": "high"})
    );
}

#[test]
fn misconfigured_default_payload_is_rejected() {
    for bad in [json!("text"), json!([1]), json!(null), json!(3)] {
        let pusher = device(json!({ "default_payload": bad }));
        for api in [ApiVersion::Legacy, ApiVersion::V1] {
            assert_eq!(
                build_data(&full(), &pusher, api, true),
                Data::BadDefaultPayload,
                "{bad}"
            );
        }
    }
    // No data at all, or data without default_payload, is fine.
    let bare: Device = serde_json::from_value(json!({"app_id": "a", "pushkey": "k"})).unwrap();
    assert!(matches!(
        build_data(&full(), &bare, ApiVersion::V1, true),
        Data::Send(_)
    ));
}

#[test]
fn long_strings_are_cut_at_1024_bytes_with_an_ellipsis() {
    let exact = "a".repeat(1024);
    let long = "b".repeat(1500);
    // 1020 ASCII bytes, then 3-byte characters straddling the 1021-byte cut point.
    let multibyte = format!("{}{}", "c".repeat(1020), "€".repeat(10));
    let n = notification(json!({
        "event_id": "$e", "room_name": exact, "sender_display_name": long,
        "room_alias": multibyte,
    }));
    let legacy = sent(build_data(&n, &device(json!({})), ApiVersion::Legacy, true));
    assert_eq!(legacy["room_name"], exact.as_str());
    let cut = legacy["sender_display_name"].as_str().unwrap();
    assert_eq!(cut, format!("{}…", "b".repeat(1021)));
    assert_eq!(cut.len(), 1024);
    let cut = legacy["room_alias"].as_str().unwrap();
    assert_eq!(cut, format!("{}…", "c".repeat(1020)));
    let v1 = sent(build_data(&n, &device(json!({})), ApiVersion::V1, true));
    assert_eq!(v1["sender_display_name"], legacy["sender_display_name"]);

    let n = notification(json!({"event_id": "$e", "content": {"body": "d".repeat(2000)}}));
    // Legacy keeps the content object as it came while it fits (Sygnal does not cut inside).
    let legacy = sent(build_data(&n, &device(json!({})), ApiVersion::Legacy, true));
    assert_eq!(legacy["content"]["body"].as_str().unwrap().len(), 2000);
    let v1 = sent(build_data(&n, &device(json!({})), ApiVersion::V1, true));
    let body = v1["content_body"].as_str().unwrap();
    assert_eq!(body, format!("{}…", "d".repeat(1021)));
}

#[test]
fn data_is_shaved_to_fcm_size_limit_keeping_ids_whole() {
    let huge = "i".repeat(400 * 1024);
    let n = notification(json!({
        "event_id": format!("${huge}"), "room_id": format!("!{huge}"), "type": "m.room.message",
        "sender": "@s:x", "room_name": "r".repeat(1500), "sender_display_name": "n".repeat(1500),
        "room_alias": "#a".repeat(700),
        "content": {"msgtype": "m.text", "body": "b".repeat(3000), "formatted_body": "f".repeat(3000)},
        "counts": {"unread": 3},
    }));
    for api in [ApiVersion::Legacy, ApiVersion::V1] {
        let data = sent(build_data(&n, &device(json!({})), api, true));
        let size = serde_json::to_vec(&data).unwrap().len();
        assert!(size <= MAX_DATA_BYTES, "{api:?}: {size} bytes");
        // Ids are cut per field (1024 bytes, as Sygnal), never shaved to make room.
        assert_eq!(data["event_id"].as_str().unwrap().len(), 1024, "{api:?}");
        assert_eq!(data["room_id"].as_str().unwrap().len(), 1024, "{api:?}");
        assert_eq!(data["type"], "m.room.message");
        assert_eq!(data["sender"], "@s:x", "short texts survive");
        let unread = if api == ApiVersion::V1 {
            json!("3")
        } else {
            json!(3)
        };
        assert_eq!(data["unread"], unread);
    }
    // Something that is not text and cannot shrink: the notification cannot be sent.
    let n = notification(json!({"event_id": "$e"}));
    let pusher = device(json!({"default_payload": {"blob": vec!["x"; 2000]}}));
    assert!(matches!(
        build_data(&n, &pusher, ApiVersion::Legacy, true),
        Data::TooLarge { bytes } if bytes > MAX_DATA_BYTES
    ));
}

#[test]
fn texts_from_default_payload_are_shaved_like_the_notification_s() {
    let n = notification(json!({"event_id": "$e"}));
    let pusher = device(json!({"default_payload": {
        "sender_display_name": "p".repeat(3000),
        "content": {"body": "q".repeat(3000), "n": 5},
        "kept": 7,
    }}));
    let legacy = sent(build_data(&n, &pusher, ApiVersion::Legacy, true));
    let size = serde_json::to_vec(&legacy).unwrap().len();
    assert!(size <= MAX_DATA_BYTES, "{size} bytes");
    let name = legacy["sender_display_name"].as_str().unwrap();
    let body = legacy["content"]["body"].as_str().unwrap();
    assert!(name.len() < 3000 && body.len() < 3000, "both shaved");
    assert!(name.starts_with("ppp") && body.starts_with("qqq"));
    assert_eq!(
        (&legacy["content"]["n"], &legacy["kept"]),
        (&json!(5), &json!(7))
    );
    // The pusher's own data is left as it was.
    assert_eq!(
        pusher.data_value("default_payload").unwrap()["content"]["body"]
            .as_str()
            .unwrap()
            .len(),
        3000
    );

    let v1 = sent(build_data(&n, &pusher, ApiVersion::V1, true));
    assert!(serde_json::to_vec(&v1).unwrap().len() <= MAX_DATA_BYTES);
    assert_eq!(v1["content_body"], format!("{}…", "q".repeat(1021)));
    assert!(v1.get("content_n").is_none(), "only strings are flattened");
    assert_eq!(v1["kept"], "7");
}

#[test]
fn send_badge_counts_false_leaves_counts_out() {
    for api in [ApiVersion::Legacy, ApiVersion::V1] {
        let data = sent(build_data(&full(), &device(json!({})), api, false));
        assert!(!data.contains_key("unread") && !data.contains_key("missed_calls"));
        assert_eq!(data["event_id"], "$ev");
    }
}

#[test]
fn badge_only_updates_are_sent_zero_counts_included() {
    let badge = |counts: Value| {
        notification(json!({"id": "", "type": null, "sender": "", "counts": counts}))
    };
    // No count at all: nothing to say, not sent.
    assert_eq!(
        build_data(&badge(json!({})), &device(json!({})), ApiVersion::V1, true),
        Data::Nothing
    );
    // A zero count clears the badge: it is sent (v1 as a string, legacy as a number).
    let legacy = sent(build_data(
        &badge(json!({"unread": 0})),
        &device(json!({})),
        ApiVersion::Legacy,
        true,
    ));
    assert_eq!(
        Value::Object(legacy),
        json!({"sender": "", "prio": "high", "unread": 0})
    );
    let v1 = sent(build_data(
        &badge(json!({"unread": 0, "missed_calls": 0})),
        &device(json!({})),
        ApiVersion::V1,
        true,
    ));
    assert_eq!(
        Value::Object(v1),
        json!({"sender": "", "prio": "high", "unread": "0", "missed_calls": "0"})
    );
    let legacy = sent(build_data(
        &badge(json!({"unread": 4})),
        &device(json!({})),
        ApiVersion::Legacy,
        true,
    ));
    assert_eq!(
        Value::Object(legacy),
        json!({"sender": "", "prio": "high", "unread": 4})
    );
    let v1 = sent(build_data(
        &badge(json!({"missed_calls": 1})),
        &device(json!({})),
        ApiVersion::V1,
        true,
    ));
    assert_eq!(
        Value::Object(v1),
        json!({"sender": "", "prio": "high", "missed_calls": "1"})
    );
    // ...unless counts are switched off.
    assert_eq!(
        build_data(
            &badge(json!({"unread": 4})),
            &device(json!({})),
            ApiVersion::V1,
            false
        ),
        Data::Nothing
    );
    // An empty event_id is no event.
    let empty_event = notification(json!({"event_id": "", "room_id": ""}));
    assert_eq!(
        build_data(&empty_event, &device(json!({})), ApiVersion::Legacy, true),
        Data::Nothing
    );
    // A room id alone is enough.
    let room_only = notification(json!({"room_id": "!r"}));
    assert!(matches!(
        build_data(&room_only, &device(json!({})), ApiVersion::Legacy, false),
        Data::Send(_)
    ));
}

#[test]
fn real_synapse_bodies() {
    let captured: Value = serde_json::from_str(include_str!(
        "../../../tests/data/synapse-notify-bodies.json"
    ))
    .unwrap();
    let bodies: Vec<Notification> = captured
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| serde_json::from_value(entry["body"]["notification"].clone()).unwrap())
        .collect();
    let [full, event_id_only, badge] = bodies.as_slice() else {
        panic!("expected three captured bodies")
    };
    let v1 = sent(build_data(full, &full.devices[0], ApiVersion::V1, true));
    assert_eq!(
        Value::Object(v1),
        json!({
            "event_id": "$LCA5sbLCYlwxwO-nFVAVvEtefuHxGZ8dOUdGVHu5u4U",
            "type": "m.room.message", "sender": "@e2e_sender:localhost",
            "room_name": "push e2e", "sender_display_name": "e2e_sender",
            "content_body": "e2e push test 1795706932", "content_msgtype": "m.text",
            "room_id": "!F0e71EYMcxyjqoh7pZ74UNuiXZk2tbxMFppQvkzRPoE",
            "prio": "high", "unread": "1",
        })
    );
    let legacy = sent(build_data(
        event_id_only,
        &event_id_only.devices[0],
        ApiVersion::Legacy,
        true,
    ));
    assert_eq!(
        Value::Object(legacy),
        json!({
            "event_id": "$jFlYVIFuitEfqDRKzev7eCM4XCBkL-nQ0gYwflh3wZ8",
            "room_id": "!_3Zl3QKyURPMqBx2_W6qGIhtj-A3NzqUERzZPwkwRmc",
            "prio": "high", "unread": 2,
        })
    );
    // The badge-only update after a read receipt clears the badge.
    let v1 = sent(build_data(badge, &badge.devices[0], ApiVersion::V1, true));
    assert_eq!(
        Value::Object(v1),
        json!({"sender": "", "prio": "high", "unread": "0"})
    );
}

fn legacy(options: &JsonObject, data: &JsonObject, low_priority: bool, keys: &[&str]) -> Value {
    let pushkeys: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
    let data = fcm_data(data);
    let request = LegacyRequest {
        options,
        data: &data,
        low_priority,
        pushkeys: &pushkeys,
    };
    serde_json::to_value(&request).unwrap()
}

#[test]
fn legacy_body_merges_options_and_addresses_recipients() {
    let options =
        json!({"time_to_live": 60, "priority": "ignored", "data": {"lost": 1}, "to": "stale"});
    let options = options.as_object().unwrap().clone();
    let data = json!({"event_id": "$e"}).as_object().unwrap().clone();

    assert_eq!(
        legacy(&options, &data, true, &["k1"]),
        json!({"time_to_live": 60, "priority": "normal", "data": {"event_id": "$e"}, "to": "k1"})
    );
    assert_eq!(
        legacy(&options, &data, true, &["k1", "k2"]),
        json!({"time_to_live": 60, "priority": "normal", "data": {"event_id": "$e"},
               "registration_ids": ["k1", "k2"]})
    );
    // A `registration_ids` in the options never reaches a request addressed with `to`.
    let stale_ids = json!({"registration_ids": ["old"]})
        .as_object()
        .unwrap()
        .clone();
    let retry = legacy(&stale_ids, &data, true, &["k2"]);
    assert_eq!(retry["to"], "k2");
    assert!(retry.get("registration_ids").is_none());
    let high = legacy(&JsonObject::new(), &JsonObject::new(), false, &["k"]);
    assert_eq!(high["priority"], "high");
}

fn v1(options: &JsonObject, data: &JsonObject, low_priority: bool, token: &str) -> Value {
    let data = fcm_data(data);
    let request = V1Request {
        options,
        data: &data,
        low_priority,
        token,
    };
    serde_json::to_value(&request).unwrap()
}

#[test]
fn v1_body_wraps_the_message_and_merges_android_options() {
    let options = json!({
        "android": {"ttl": "60s", "priority": "normal", "collapse_key": "c"},
        "apns": {"headers": {"apns-priority": "10"}},
        "fcm_options": {"analytics_label": "x"},
        "token": "stale", "data": {"lost": "1"},
    });
    let options = options.as_object().unwrap().clone();
    let data = json!({"event_id": "$e"}).as_object().unwrap().clone();
    assert_eq!(
        v1(&options, &data, false, "device-token"),
        json!({"message": {
            "android": {"ttl": "60s", "priority": "high", "collapse_key": "c"},
            "apns": {"headers": {"apns-priority": "10"}},
            "fcm_options": {"analytics_label": "x"},
            "token": "device-token",
            "data": {"event_id": "$e"},
        }})
    );
    assert_eq!(
        v1(&JsonObject::new(), &JsonObject::new(), true, "t"),
        json!({"message": {"android": {"priority": "normal"}, "token": "t", "data": {}}})
    );
}

#[test]
fn the_size_bound_gives_up_on_deep_nesting_without_overflowing() {
    let mut deep = json!("x");
    for level in 0..40 {
        deep = if level % 2 == 0 {
            json!([deep, 1])
        } else {
            json!({ "k": deep })
        };
    }
    let Value::Object(data) = json!({ "content": deep }) else {
        unreachable!()
    };
    assert_eq!(fcm_data(&data).size_bound(), usize::MAX);
    assert!(json_size(&data) < MAX_DATA_BYTES);
    let mut content = FcmData::default();
    content.insert("content", DataValue::Content(Cow::Borrowed(&data)));
    assert_eq!(content.size_bound(), usize::MAX);
}

#[test]
fn the_size_check_counts_the_compact_json() {
    let data = json!({"a": "x\"y", "n": [1, 2]});
    assert_eq!(json_size(&data), serde_json::to_vec(&data).unwrap().len());
}

mod properties {
    use super::super::*;
    use proptest::prelude::*;
    use sygnal_plugin_api::testing::accepted_notifications;

    fn any_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            any::<String>().prop_map(Value::from),
            "[\\x00-\\x1f\"\\\\]{0,8}".prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..8).prop_map(Value::from),
                prop::collection::btree_map(any::<String>(), inner, 0..8)
                    .prop_map(|map| Value::Object(map.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// The shortcut that skips measuring small data never underestimates.
        #[test]
        fn the_size_bound_is_never_below_the_size(
            value in any_json(),
            text in any::<String>(),
            count in any::<u64>(),
        ) {
            let mut map = JsonObject::new();
            map.insert("v".to_owned(), value);
            let mut data = super::fcm_data(&map);
            prop_assert!(data.size_bound() >= json_size(&data));
            data.insert(text.clone(), DataValue::Text(Cow::Borrowed(&text)));
            data.insert("count", DataValue::Count(count));
            data.insert("content", DataValue::Content(Cow::Borrowed(&map)));
            prop_assert!(data.size_bound() >= json_size(&data));
        }

        /// Whatever the host accepts: no panic, and the data sent is within FCM's limit, all
        /// strings for v1.
        #[test]
        fn data_fits_fcm_limit(n in accepted_notifications(), badges in any::<bool>()) {
            for device in &n.devices {
                for api in [ApiVersion::Legacy, ApiVersion::V1] {
                    let Data::Send(data) = build_data(&n, device, api, badges) else { continue };
                    let size = serde_json::to_vec(&data).unwrap().len();
                    prop_assert!(size <= MAX_DATA_BYTES, "{api:?}: {size} bytes");
                    if api == ApiVersion::V1 {
                        let written = serde_json::to_value(&data).unwrap();
                        let values = written.as_object().unwrap().values();
                        prop_assert!(values.clone().all(Value::is_string), "{written}");
                        let request = V1Request {
                            options: &JsonObject::new(),
                            data: &data,
                            low_priority: n.is_low_priority(),
                            token: &device.pushkey,
                        };
                        prop_assert!(serde_json::to_vec(&request).is_ok());
                    } else {
                        let request = LegacyRequest {
                            options: &JsonObject::new(),
                            data: &data,
                            low_priority: n.is_low_priority(),
                            pushkeys: std::slice::from_ref(&device.pushkey),
                        };
                        prop_assert!(serde_json::to_vec(&request).is_ok());
                    }
                }
            }
        }
    }
}
