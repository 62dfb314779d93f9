//! The `data` of an FCM message, borrowed from the notification and the pusher where it can be.
//!
//! Built once per notification (per device for v1), written once into the request and then
//! dropped: as a `serde_json::Map` it cost a `String` per key and per value, cloned from the
//! notification, about a quarter of the allocations of a whole push. Here keys and values
//! point into the notification and the pusher's `default_payload`; only what the rules change
//! (a cut text, a v1 `content_<key>` name, a value turned into its JSON text) is owned.

use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::Value;
use std::borrow::Cow;
use sygnal_plugin_api::JsonObject;

/// One value of the data.
#[derive(Debug, Clone, PartialEq)]
pub enum DataValue<'a> {
    /// A string.
    Text(Cow<'a, str>),
    /// Any JSON value, as a pusher's `default_payload` holds it.
    Json(Cow<'a, Value>),
    /// The notification's `content` object (legacy keeps it an object).
    Content(Cow<'a, JsonObject>),
    /// A badge count (legacy sends it as a number).
    Count(u64),
}

impl DataValue<'_> {
    /// Python truthiness, which Sygnal's "anything to say?" check relies on.
    pub fn is_truthy(&self) -> bool {
        match self {
            DataValue::Text(text) => !text.is_empty(),
            DataValue::Json(value) => match value.as_ref() {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
                Value::String(s) => !s.is_empty(),
                Value::Array(a) => !a.is_empty(),
                Value::Object(o) => !o.is_empty(),
            },
            DataValue::Content(content) => !content.is_empty(),
            DataValue::Count(count) => *count != 0,
        }
    }
}

/// The data: keys in the order JSON objects are written here (sorted, as `serde_json::Map`).
///
/// A sorted vector rather than a tree: the data holds a dozen entries, built and dropped once
/// per notification, and a tree's node handling cost more than the searches it saves.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FcmData<'a> {
    entries: Vec<(Cow<'a, str>, DataValue<'a>)>,
}

/// Entries a notification's data usually holds (Synapse's fields and counts).
const USUAL_ENTRIES: usize = 16;

impl<'a> FcmData<'a> {
    fn find(&self, key: &str) -> Result<usize, usize> {
        self.entries
            .binary_search_by(|(existing, _)| existing.as_ref().cmp(key))
    }

    /// Sets `key`, replacing what it held.
    pub fn insert(&mut self, key: impl Into<Cow<'a, str>>, value: DataValue<'a>) {
        let key = key.into();
        match self.find(&key) {
            Ok(at) => self.entries[at].1 = value,
            Err(at) => {
                if self.entries.capacity() == 0 {
                    self.entries.reserve_exact(USUAL_ENTRIES);
                }
                self.entries.insert(at, (key, value));
            }
        }
    }

    /// Takes `key` out.
    pub fn remove(&mut self, key: &str) -> Option<DataValue<'a>> {
        let at = self.find(key).ok()?;
        Some(self.entries.remove(at).1)
    }

    /// What `key` holds.
    pub fn get(&self, key: &str) -> Option<&DataValue<'a>> {
        let at = self.find(key).ok()?;
        Some(&self.entries[at].1)
    }

    /// Makes every value a string: strings stay, anything else becomes its JSON text.
    pub fn stringify_values(&mut self) {
        for (_, value) in &mut self.entries {
            let text = match value {
                DataValue::Text(_) => continue,
                DataValue::Json(json) => match json {
                    Cow::Borrowed(Value::String(text)) => Cow::Borrowed(text.as_str()),
                    Cow::Owned(Value::String(text)) => Cow::Owned(std::mem::take(text)),
                    other => Cow::Owned(other.to_string()),
                },
                DataValue::Content(content) => {
                    Cow::Owned(serde_json::to_string(content.as_ref()).unwrap_or_default())
                }
                DataValue::Count(count) => Cow::Owned(count.to_string()),
            };
            *value = DataValue::Text(text);
        }
    }

    /// The strings that may be shaved to fit the size limit: the values of `is_text_field`
    /// keys, and the strings of a `content` object. Each is made owned first (shaving is rare).
    pub fn shavable_texts(&mut self, is_text_field: impl Fn(&str) -> bool) -> Vec<&mut String> {
        fn strings(object: &mut JsonObject) -> impl Iterator<Item = &mut String> {
            object.values_mut().filter_map(|value| match value {
                Value::String(text) => Some(text),
                _ => None,
            })
        }
        let mut texts = Vec::new();
        for (key, value) in &mut self.entries {
            let text_field = is_text_field(key);
            let content = key == "content";
            match value {
                DataValue::Text(text) if text_field => texts.push(text.to_mut()),
                DataValue::Json(json)
                    if (text_field && json.is_string()) || (content && json.is_object()) =>
                {
                    match json.to_mut() {
                        Value::String(text) => texts.push(text),
                        Value::Object(object) => texts.extend(strings(object)),
                        _ => {}
                    }
                }
                DataValue::Content(object) if content => texts.extend(strings(object.to_mut())),
                _ => {}
            }
        }
        texts
    }

    /// At least the size of the data's compact JSON, from the lengths of its strings
    /// (`usize::MAX` past 32 levels of nesting: the data is then measured).
    pub fn size_bound(&self) -> usize {
        self.entries.iter().fold(2, |size, (key, value)| {
            let value = match value {
                DataValue::Text(text) => string_bound(text),
                DataValue::Json(json) => value_size_bound(json, 1),
                DataValue::Content(content) => object_size_bound(content, 1),
                DataValue::Count(_) => 20,
            };
            size.saturating_add(string_bound(key) + 2)
                .saturating_add(value)
        })
    }
}

impl Serialize for DataValue<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            DataValue::Text(text) => serializer.serialize_str(text),
            DataValue::Json(value) => value.serialize(serializer),
            DataValue::Content(content) => content.serialize(serializer),
            DataValue::Count(count) => serializer.serialize_u64(*count),
        }
    }
}

impl Serialize for FcmData<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.entries.len()))?;
        for (key, value) in &self.entries {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

/// Nesting past which the size bound gives up (`usize::MAX`: the data is then measured).
const MAX_BOUND_DEPTH: usize = 32;

/// A string's JSON at its longest: quotes, and any byte escaped at most as \u00XX.
fn string_bound(text: &str) -> usize {
    6 * text.len() + 2
}

/// At least the size of `value`'s compact JSON, from the lengths of its strings.
fn value_size_bound(value: &Value, depth: usize) -> usize {
    if depth > MAX_BOUND_DEPTH {
        return usize::MAX;
    }
    match value {
        Value::Null => 4,
        Value::Bool(_) => 5,
        // The longest: a negative 19-digit integer, or a float like -2.2250738585072014e-308.
        Value::Number(_) => 24,
        Value::String(text) => string_bound(text),
        Value::Array(items) => items.iter().fold(2, |size, item| {
            size.saturating_add(value_size_bound(item, depth + 1))
                .saturating_add(1)
        }),
        Value::Object(map) => object_size_bound(map, depth),
    }
}

/// [`value_size_bound`] of an object.
fn object_size_bound(map: &JsonObject, depth: usize) -> usize {
    if depth > MAX_BOUND_DEPTH {
        return usize::MAX;
    }
    map.iter().fold(2, |size, (key, value)| {
        // The key's quotes and escapes, its colon and a comma.
        size.saturating_add(string_bound(key) + 2)
            .saturating_add(value_size_bound(value, depth + 1))
    })
}
