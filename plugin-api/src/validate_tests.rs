use super::*;
use crate::testing::{notification_json, synapse_notifications};
use crate::Notification;
use proptest::prelude::*;

fn refused(json: &str) -> Invalid {
    match notification(json) {
        Err(invalid) => invalid,
        Ok(_) => panic!("accepted: {json}"),
    }
}

/// Parses `json` as the SDK would after the host routed all its devices to one app.
fn sdk_parse(json: &str, checked: &Checked<'_>) -> Result<Notification, String> {
    let raws: Vec<&str> = checked.devices.iter().map(|d| d.raw.get()).collect();
    Notification::from_dispatch_json(json, &format!("[{}]", raws.join(",")))
}

fn with_content(content: &str) -> String {
    format!(r#"{{"content":{content},"devices":[{{"app_id":"a","pushkey":"k"}}]}}"#)
}

fn nested(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

#[test]
fn synapse_notifications_are_valid_and_parse() {
    for n in synapse_notifications() {
        let json = n.to_string();
        let checked = notification(&json).unwrap();
        assert_eq!(checked.devices.len(), 1);
        assert_eq!(checked.devices[0].app_id, "com.example.e2e");
        sdk_parse(&json, &checked).unwrap();
    }
}

#[test]
fn nesting_is_limited_everywhere() {
    // The notification is level 1 and content level 2: an array inside may add MAX_DEPTH - 2.
    let deepest = with_content(&format!(r#"{{"a":{}}}"#, nested(MAX_DEPTH - 2)));
    let checked = notification(&deepest).unwrap();
    sdk_parse(&deepest, &checked).unwrap();
    let too_deep = with_content(&format!(r#"{{"a":{}}}"#, nested(MAX_DEPTH - 1)));
    let invalid = refused(&too_deep);
    assert!(
        invalid.path.starts_with("notification.content.a[0][0]"),
        "{invalid}"
    );
    assert!(
        invalid.reason.contains("nested deeper than 64"),
        "{invalid}"
    );
    // The issue's 10,000 levels, in content, in device data and in an unknown field.
    let deep = nested(10_000);
    assert!(refused(&with_content(&format!(r#"{{"x":{deep}}}"#)))
        .reason
        .contains("nested"));
    let in_data =
        format!(r#"{{"devices":[{{"app_id":"a","pushkey":"k","data":{{"x":{deep}}}}}]}}"#);
    assert!(refused(&in_data)
        .path
        .starts_with("notification.devices[0].data.x"));
    let unknown = format!(r#"{{"future":{deep},"devices":[{{"app_id":"a","pushkey":"k"}}]}}"#);
    assert!(refused(&unknown).path.starts_with("notification.future"));
}

#[test]
fn numbers_must_fit_a_float() {
    for bad in ["1e400", "-1e400", "123e99999"] {
        let invalid = refused(&with_content(&format!(r#"{{"n":{bad}}}"#)));
        assert_eq!(invalid.path, "notification.content.n", "{bad}");
        assert!(invalid.reason.contains("number out of range"), "{invalid}");
    }
    let unknown = r#"{"x":[1,1e400],"devices":[{"app_id":"a","pushkey":"k"}]}"#;
    assert_eq!(refused(unknown).path, "notification.x[1]");
    let counts =
        r#"{"counts":{"unread":1,"future":1e400},"devices":[{"app_id":"a","pushkey":"k"}]}"#;
    assert_eq!(refused(counts).path, "notification.counts.future");
    // Underflow and huge integers are fine: they become 0.0 and a float.
    for fine in ["1e-400", "123456789012345678901234567890", "-0.0"] {
        let json = with_content(&format!(r#"{{"n":{fine}}}"#));
        let checked = notification(&json).unwrap();
        sdk_parse(&json, &checked).unwrap();
    }
}

#[test]
fn strings_must_be_valid_unicode() {
    let invalid = refused(&with_content(r#"{"body":"\ud800"}"#));
    assert_eq!(invalid.path, "notification.content.body");
    let in_key = refused(&with_content(r#"{"\udc00":1}"#));
    assert_eq!(in_key.path, "notification.content");
    let pushkey = r#"{"devices":[{"app_id":"a","pushkey":"k\ud800"}]}"#;
    assert!(refused(pushkey).path.starts_with("notification.devices[0]"));
    // A surrogate pair is a character.
    let json = with_content(r#"{"body":"\ud83d\ude00 \u00e9"}"#);
    let checked = notification(&json).unwrap();
    let parsed = sdk_parse(&json, &checked).unwrap();
    assert_eq!(parsed.content.unwrap()["body"], "😀 é");
}

#[test]
fn known_fields_are_typed_and_reported_by_path() {
    let cases = [
        (r#"{}"#, "notification.devices: missing"),
        (
            r#"{"devices":[]}"#,
            "notification.devices: must not be empty",
        ),
        (
            r#"{"devices":[{"pushkey":"k"}]}"#,
            "notification.devices[0]: missing field `app_id`",
        ),
    ];
    for (json, expected) in cases {
        assert!(refused(json).to_string().starts_with(expected), "{json}");
    }
    for (json, path) in [
        (r#"{"devices":{}}"#, "notification.devices"),
        (
            r#"{"devices":[{"app_id":"a","pushkey":5}]}"#,
            "notification.devices[0].pushkey",
        ),
        (
            r#"{"devices":[{"app_id":"a","pushkey":"k","data":[]}]}"#,
            "notification.devices[0].data",
        ),
        (
            r#"{"devices":[{"app_id":"a","pushkey":"k","pushkey_ts":1.5}]}"#,
            "notification.devices[0].pushkey_ts",
        ),
        (
            r#"{"devices":[{"app_id":"a","pushkey":"k","tweaks":{"sound":1}}]}"#,
            "notification.devices[0].tweaks.sound",
        ),
        (
            r#"{"counts":{"unread":"2"},"devices":[{"app_id":"a","pushkey":"k"}]}"#,
            "notification.counts.unread",
        ),
        (
            r#"{"counts":{"unread":-1},"devices":[{"app_id":"a","pushkey":"k"}]}"#,
            "notification.counts.unread",
        ),
        (
            r#"{"content":"x","devices":[{"app_id":"a","pushkey":"k"}]}"#,
            "notification.content",
        ),
        (
            r#"{"user_is_target":"yes","devices":[{"app_id":"a","pushkey":"k"}]}"#,
            "notification.user_is_target",
        ),
    ] {
        assert_eq!(refused(json).path, path, "{json}");
    }
    // A known field twice is refused (the SDK's parse refuses it too).
    let twice = r#"{"event_id":"$a","event_id":"$b","devices":[{"app_id":"a","pushkey":"k"}]}"#;
    assert!(refused(twice).reason.contains("duplicate field"));
}

#[test]
fn nulls_unknown_fields_and_escaped_names_are_accepted() {
    let json = r#"{"type":null,"counts":null,"content":null,"future":{"a":[1,"x",null]},
        "ev\u0065nt_id":"$e","devices":[{"app_id":"a\u0062","pushkey":"k","data":null,
        "tweaks":null,"more":true}]}"#;
    let checked = notification(json).unwrap();
    assert_eq!(checked.devices[0].app_id, "ab");
    let parsed = sdk_parse(json, &checked).unwrap();
    assert_eq!(parsed.event_id.as_deref(), Some("$e"));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// One definition: whatever the check accepts, the SDK parses; whatever it refuses comes
    /// with a path and a reason.
    #[test]
    fn accepted_notifications_parse_in_the_sdk(json in notification_json()) {
        match notification(&json) {
            Ok(checked) => {
                prop_assert!(!checked.devices.is_empty());
                if let Err(err) = sdk_parse(&json, &checked) {
                    return Err(TestCaseError::fail(format!("accepted, yet the SDK says {err}: {json}")));
                }
            }
            Err(invalid) => {
                prop_assert!(invalid.path.starts_with("notification"), "{}", invalid);
                prop_assert!(!invalid.reason.is_empty());
            }
        }
    }
}

/// What the one pass found, comparable with the two readings' result.
fn summary(checked: &Checked<'_>) -> (Option<String>, Vec<(String, String, String)>) {
    let devices = checked
        .devices
        .iter()
        .map(|d| {
            (
                d.app_id.to_string(),
                d.pushkey.to_string(),
                d.raw.get().to_owned(),
            )
        })
        .collect();
    (checked.event_id.as_deref().map(str::to_owned), devices)
}

/// The one pass accepts only what the two readings accept, with the same result; and it
/// accepts what they accept, or the common case would pay for three passes.
fn one_pass_agrees(json: &str) -> Result<(), TestCaseError> {
    let fast = one_pass::notification(json);
    let slow = two_readings(json);
    match (&fast, &slow) {
        (Some(fast), Ok(slow)) => prop_assert_eq!(summary(fast), summary(slow), "{}", json),
        (Some(_), Err(invalid)) => {
            return Err(TestCaseError::fail(format!(
                "one pass accepted what the two readings refuse ({invalid}): {json}"
            )))
        }
        (None, Ok(_)) => {
            return Err(TestCaseError::fail(format!(
                "one pass refused a valid notification: {json}"
            )))
        }
        (None, Err(_)) => {}
    }
    Ok(())
}

#[test]
fn one_pass_covers_synapse_notifications_and_refuses_duplicates() {
    for n in synapse_notifications() {
        let json = n.to_string();
        assert!(one_pass::notification(&json).is_some(), "{json}");
    }
    let device = r#"{"app_id":"a","pushkey":"k"}"#;
    for json in [
        format!(r#"{{"counts":{{"unread":1,"unread":2}},"devices":[{device}]}}"#),
        format!(r#"{{"room_id":"a","room_id":"b","devices":[{device}]}}"#),
        format!(r#"{{"devices":[{device}],"devices":[{device}]}}"#),
        r#"{"devices":[{"app_id":"a","app_id":"b","pushkey":"k"}]}"#.to_owned(),
        r#"{"devices":[{"app_id":"a","pushkey":"k","tweaks":{"sound":"x","sound":"y"}}]}"#
            .to_owned(),
    ] {
        assert!(one_pass::notification(&json).is_none(), "{json}");
        assert!(notification(&json).is_err(), "{json}");
    }
    // Unknown keys may repeat, as for the two readings.
    let json = format!(r#"{{"x":1,"x":2,"devices":[{device}]}}"#);
    assert!(one_pass::notification(&json).is_some());
    assert!(two_readings(&json).is_ok());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(600))]

    #[test]
    fn one_pass_agrees_with_the_two_readings(
        json in notification_json(),
        cut in any::<prop::sample::Index>(),
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        one_pass_agrees(&json)?;
        let mut damaged = json.clone().into_bytes();
        let position = at.index(damaged.len());
        damaged[position] = byte;
        if let Ok(damaged) = String::from_utf8(damaged) {
            one_pass_agrees(&damaged)?;
        }
        let mut end = cut.index(json.len());
        while !json.is_char_boundary(end) {
            end -= 1;
        }
        one_pass_agrees(&json[..end])?;
    }
}

#[test]
fn objects_given_as_arrays_are_refused() {
    // serde reads a struct from an array of its fields; the SDK does not.
    let device = r#"{"app_id":"a","pushkey":"k"}"#;
    for (json, path) in [
        (
            format!(r#"{{"counts":[1,2],"devices":[{device}]}}"#),
            "notification.counts",
        ),
        (
            r#"{"devices":[["a","k",1,null,null]]}"#.to_owned(),
            "notification.devices[0]",
        ),
        (
            r#"{"devices":[{"app_id":"a","pushkey":"k","tweaks":["x",true]}]}"#.to_owned(),
            "notification.devices[0].tweaks",
        ),
    ] {
        let invalid = refused(&json);
        assert_eq!(invalid.path, path, "{json}");
        assert_eq!(invalid.reason, "must be an object", "{json}");
    }
}

#[test]
fn text_after_the_notification_is_refused() {
    let one = r#"{"devices":[{"app_id":"a","pushkey":"k"}]}"#;
    for json in [
        format!("{one},{one}"),
        format!(r#"{one},"notification":{one}"#),
        format!("{one}}}"),
        format!("{one} x"),
    ] {
        let invalid = refused(&json);
        assert_eq!(invalid.path, "notification", "{json}");
        assert!(
            invalid.reason.contains("trailing"),
            "{json}: {}",
            invalid.reason
        );
    }
    assert!(notification(&format!(" {one} \n")).is_ok());
}
