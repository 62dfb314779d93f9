//! Loading `sygnal.yaml` as PyYAML would: a key given twice in one mapping is not an error, the
//! last one wins, and the operator is warned with the key's path and line.
//!
//! serde_yaml refuses duplicate keys, so the document is read through a tolerant value builder.
//! serde_yaml only reports positions with errors, so each duplicate's line is found by reading
//! the document once more and failing deliberately at that key (configs are small and read
//! rarely; a document without duplicates is read once).

use serde::de::{self, DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess, Visitor};
use serde_yaml::value::{Tag, TaggedValue};
use serde_yaml::{Mapping, Value};
use std::cell::{Cell, RefCell};
use std::fmt;

/// A loaded document and the duplicate-key warnings.
pub struct Loaded {
    /// The document; the last of duplicate keys wins.
    pub value: Value,
    /// One line per duplicate key: its path, its line, and that the last one wins.
    pub warnings: Vec<String>,
}

/// Reads `text`, tolerating duplicate keys (the last wins) and applying `<<` merge keys.
pub fn load(text: &str) -> Result<Loaded, serde_yaml::Error> {
    let state = State::default();
    let mut value = read(text, &state)?;
    value.apply_merge()?;
    let duplicates = state.duplicates.into_inner();
    let warnings = duplicates
        .into_iter()
        .map(|(ordinal, path)| {
            let failing = State {
                fail_at: Some(ordinal),
                ..State::default()
            };
            let line = read(text, &failing)
                .err()
                .and_then(|err| err.location())
                .map(|location| format!(" (line {})", location.line()))
                .unwrap_or_default();
            format!("duplicate config key `{path}`{line}: the last one wins")
        })
        .collect();
    Ok(Loaded { value, warnings })
}

fn read(text: &str, state: &State) -> Result<Value, serde_yaml::Error> {
    ValueSeed {
        state,
        path: String::new(),
    }
    .deserialize(serde_yaml::Deserializer::from_str(text))
}

#[derive(Default)]
struct State {
    /// Mapping keys seen so far, in document order.
    keys: Cell<usize>,
    /// Fail when reading the key with this ordinal (to learn its position).
    fail_at: Option<usize>,
    /// (ordinal, path) of every key that repeats an earlier one in its mapping.
    duplicates: RefCell<Vec<(usize, String)>>,
}

const LOCATE: &str = "locating a duplicate key";

struct ValueSeed<'s> {
    state: &'s State,
    path: String,
}

impl<'de> DeserializeSeed<'de> for ValueSeed<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(ValueVisitor {
            state: self.state,
            path: self.path,
            key_ordinal: None,
        })
    }
}

/// Builds a [`Value`]. As a key's visitor (`key_ordinal` set), it fails on purpose where asked,
/// so serde_yaml reports that key's position.
struct ValueVisitor<'s> {
    state: &'s State,
    path: String,
    key_ordinal: Option<usize>,
}

impl ValueVisitor<'_> {
    fn scalar<E: de::Error>(&self, value: Value) -> Result<Value, E> {
        match self.key_ordinal {
            Some(ordinal) if self.state.fail_at == Some(ordinal) => Err(E::custom(LOCATE)),
            _ => Ok(value),
        }
    }

    fn child(&self, segment: &str) -> ValueSeed<'_> {
        let path = if self.path.is_empty() {
            segment.to_owned()
        } else {
            format!("{}.{segment}", self.path)
        };
        ValueSeed {
            state: self.state,
            path,
        }
    }
}

impl<'de> Visitor<'de> for ValueVisitor<'_> {
    type Value = Value;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("any YAML value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        self.scalar(Value::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        self.scalar(Value::Number(v.into()))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        self.scalar(Value::Number(v.into()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        self.scalar(Value::Number(v.into()))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        self.scalar(Value::String(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        self.scalar(Value::String(v))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        self.scalar(Value::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        self.scalar(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(self.child(&items.len().to_string()))? {
            items.push(item);
        }
        Ok(Value::Sequence(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut mapping = Mapping::new();
        loop {
            let ordinal = self.state.keys.get();
            self.state.keys.set(ordinal + 1);
            let key_seed = KeySeed {
                state: self.state,
                ordinal,
            };
            let Some(key) = map.next_key_seed(key_seed)? else {
                break;
            };
            let segment = match &key {
                Value::String(s) => s.clone(),
                other => serde_yaml::to_string(other)
                    .map(|s| s.trim_end().to_owned())
                    .unwrap_or_default(),
            };
            let value = map.next_value_seed(self.child(&segment))?;
            if mapping.insert(key, value).is_some() {
                let path = self.child(&segment).path;
                self.state.duplicates.borrow_mut().push((ordinal, path));
            }
        }
        Ok(Value::Mapping(mapping))
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Value, A::Error> {
        // serde_yaml presents `!tag value` as an enum variant named after the tag.
        let (tag, variant) = data.variant::<String>()?;
        let value = de::VariantAccess::newtype_variant_seed(variant, self.child(&tag))?;
        Ok(Value::Tagged(Box::new(TaggedValue {
            tag: Tag::new(tag),
            value,
        })))
    }
}

struct KeySeed<'s> {
    state: &'s State,
    ordinal: usize,
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(ValueVisitor {
            state: self.state,
            path: String::new(),
            key_ordinal: Some(self.ordinal),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_keys_last_wins_with_path_and_line() {
        let text = "\
database:
  name: sqlite
  args: {path: a.db}
http:
  port: 5000
  port: 5001
database:
  name: psycopg2
";
        let loaded = load(text).unwrap();
        assert_eq!(loaded.value["http"]["port"].as_u64(), Some(5001));
        assert_eq!(loaded.value["database"]["name"].as_str(), Some("psycopg2"));
        assert!(loaded.value["database"].get("args").is_none());
        assert_eq!(
            loaded.warnings,
            vec![
                "duplicate config key `http.port` (line 6): the last one wins",
                "duplicate config key `database` (line 7): the last one wins",
            ]
        );
    }

    #[test]
    fn ordinary_documents_load_as_serde_yaml_reads_them() {
        let text = "a: [1, 2.5, 'x', ~, true]\nb: !custom {c: d}\nbase: &base {k: 1}\nderived:\n  <<: *base\n  j: 2\n";
        let loaded = load(text).unwrap();
        assert!(loaded.warnings.is_empty());
        let mut expected: Value = serde_yaml::from_str(text).unwrap();
        expected.apply_merge().unwrap();
        assert_eq!(loaded.value, expected);
        assert_eq!(loaded.value["derived"]["k"].as_u64(), Some(1));
    }

    #[test]
    fn syntax_errors_still_fail() {
        let err = load("a: [1, 2\n").err().unwrap();
        assert!(err.location().is_some(), "{err}");
    }
}
