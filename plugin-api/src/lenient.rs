//! Reading config values the way Sygnal's YAML parser (PyYAML, YAML 1.1) would have.
//!
//! Operators' `sygnal.yaml` files were written for PyYAML, where `enabled: yes` is a boolean and
//! a quoted `port: "5000"` still ends up where a number is expected. This crate's parsers are
//! YAML 1.2 / JSON, where both are strings. [`Lenient`] wraps any serde [`Deserializer`] and,
//! wherever the target type asks for a boolean or a number, also accepts:
//!
//! - a boolean as YAML 1.1 spells it: `yes`/`no`, `on`/`off`, `y`/`n`, `true`/`false`, in any
//!   case ([`parse_bool`]);
//! - a number written as a string (`"5000"`, `" 2.5 "`);
//! - and, where a string is expected, a number (`key_id: 12345`).
//!
//! Everything else is passed through unchanged, so errors still name the key and the expected
//! type. The host reads its own config through it, and so does
//! [`PushkinContext::config`](crate::PushkinContext::config) for every pushkin's app section.
//! Values inside `#[serde(untagged)]` enums and `#[serde(flatten)]` fields are buffered by serde
//! before the target type is known, so they are read strictly.

use serde::de::{
    self, DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess, VariantAccess, Visitor,
};
use std::fmt;

/// A YAML 1.1 boolean (`yes`, `No`, `ON`, `off`, `y`, `N`, `true`, `False`, ...), or `None`.
pub fn parse_bool(text: &str) -> Option<bool> {
    const TRUE: [&str; 4] = ["true", "yes", "on", "y"];
    const FALSE: [&str; 4] = ["false", "no", "off", "n"];
    let text = text.trim();
    if TRUE.iter().any(|word| word.eq_ignore_ascii_case(text)) {
        Some(true)
    } else if FALSE.iter().any(|word| word.eq_ignore_ascii_case(text)) {
        Some(false)
    } else {
        None
    }
}

/// A JSON value read as a boolean, leniently (`true`, `"yes"`, `"off"`, ...).
pub fn as_bool(value: &serde_json::Value) -> Option<bool> {
    match value {
        serde_json::Value::Bool(b) => Some(*b),
        serde_json::Value::String(s) => parse_bool(s),
        _ => None,
    }
}

/// A JSON value read as an unsigned integer, leniently (`3`, `"3"`).
pub fn as_u64(value: &serde_json::Value) -> Option<u64> {
    match value {
        serde_json::Value::String(s) => s.trim().parse().ok(),
        other => other.as_u64(),
    }
}

/// A JSON value read as a number, leniently (`2.5`, `"2.5"`, `10`).
pub fn as_f64(value: &serde_json::Value) -> Option<f64> {
    match value {
        serde_json::Value::String(s) => s.trim().parse().ok(),
        other => other.as_f64(),
    }
}

/// Deserializes `T` from a JSON value, leniently.
pub fn from_value<T: de::DeserializeOwned>(
    value: serde_json::Value,
) -> Result<T, serde_json::Error> {
    T::deserialize(Lenient::new(value))
}

/// A deserializer that reads booleans and numbers as PyYAML would have; see the module docs.
pub struct Lenient<D>(D);

impl<D> Lenient<D> {
    /// Wraps `inner`.
    pub fn new(inner: D) -> Self {
        Lenient(inner)
    }
}

/// What the target type asked for, deciding which string conversions apply.
#[derive(Clone, Copy)]
enum Want {
    Any,
    Bool,
    Number,
    String,
}

/// Forwards every value to the target's visitor, converting by [`Want`] and wrapping nested
/// deserializers so the leniency reaches every level.
struct Forward<V> {
    visitor: V,
    want: Want,
}

macro_rules! forward_deserialize {
    ($want:expr => $($method:ident),*) => {
        $(
            fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
                self.0.deserialize_any(Forward { visitor, want: $want })
            }
        )*
    };
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Lenient<D> {
    type Error = D::Error;

    forward_deserialize!(Want::Bool => deserialize_bool);
    forward_deserialize!(Want::Number => deserialize_i8, deserialize_i16, deserialize_i32,
        deserialize_i64, deserialize_i128, deserialize_u8, deserialize_u16, deserialize_u32,
        deserialize_u64, deserialize_u128, deserialize_f32, deserialize_f64);
    forward_deserialize!(Want::String => deserialize_str, deserialize_string);

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        self.0.deserialize_any(Forward::any(visitor))
    }
    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        self.0.deserialize_char(Forward::any(visitor))
    }
    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        self.0.deserialize_bytes(Forward::any(visitor))
    }
    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        self.0.deserialize_byte_buf(Forward::any(visitor))
    }
    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        self.0.deserialize_option(Forward::any(visitor))
    }
    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        self.0.deserialize_unit(Forward::any(visitor))
    }
    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0.deserialize_unit_struct(name, Forward::any(visitor))
    }
    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0
            .deserialize_newtype_struct(name, Forward::any(visitor))
    }
    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        self.0.deserialize_seq(Forward::any(visitor))
    }
    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0.deserialize_tuple(len, Forward::any(visitor))
    }
    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0
            .deserialize_tuple_struct(name, len, Forward::any(visitor))
    }
    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        self.0.deserialize_map(Forward::any(visitor))
    }
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0
            .deserialize_struct(name, fields, Forward::any(visitor))
    }
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0
            .deserialize_enum(name, variants, Forward::any(visitor))
    }
    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        self.0.deserialize_identifier(Forward::any(visitor))
    }
    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        self.0.deserialize_ignored_any(Forward::any(visitor))
    }
    fn is_human_readable(&self) -> bool {
        self.0.is_human_readable()
    }
}

impl<V> Forward<V> {
    fn any(visitor: V) -> Self {
        Forward {
            visitor,
            want: Want::Any,
        }
    }
}

macro_rules! forward_visit {
    ($($method:ident($ty:ty)),*) => {
        $(
            fn $method<E: de::Error>(self, value: $ty) -> Result<V::Value, E> {
                self.visitor.$method(value)
            }
        )*
    };
}

macro_rules! number_to_string {
    ($($method:ident($ty:ty)),*) => {
        $(
            fn $method<E: de::Error>(self, value: $ty) -> Result<V::Value, E> {
                match self.want {
                    Want::String => self.visitor.visit_string(value.to_string()),
                    _ => self.visitor.$method(value),
                }
            }
        )*
    };
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Forward<V> {
    type Value = V::Value;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.visitor.expecting(formatter)
    }

    forward_visit!(
        visit_bool(bool),
        visit_i8(i8),
        visit_i16(i16),
        visit_i32(i32),
        visit_u8(u8),
        visit_u16(u16),
        visit_u32(u32),
        visit_f32(f32),
        visit_char(char),
        visit_bytes(&[u8]),
        visit_borrowed_bytes(&'de [u8]),
        visit_byte_buf(Vec<u8>)
    );
    number_to_string!(
        visit_i64(i64),
        visit_u64(u64),
        visit_f64(f64),
        visit_i128(i128),
        visit_u128(u128)
    );

    fn visit_str<E: de::Error>(self, value: &str) -> Result<V::Value, E> {
        match lenient_scalar(self.want, value) {
            Some(Scalar::Bool(b)) => self.visitor.visit_bool(b),
            Some(Scalar::Unsigned(n)) => self.visitor.visit_u64(n),
            Some(Scalar::Signed(n)) => self.visitor.visit_i64(n),
            Some(Scalar::Float(n)) => self.visitor.visit_f64(n),
            None => self.visitor.visit_str(value),
        }
    }

    fn visit_borrowed_str<E: de::Error>(self, value: &'de str) -> Result<V::Value, E> {
        match lenient_scalar(self.want, value) {
            Some(_) => self.visit_str(value),
            None => self.visitor.visit_borrowed_str(value),
        }
    }

    fn visit_string<E: de::Error>(self, value: String) -> Result<V::Value, E> {
        match lenient_scalar(self.want, &value) {
            Some(_) => self.visit_str(&value),
            None => self.visitor.visit_string(value),
        }
    }

    fn visit_none<E: de::Error>(self) -> Result<V::Value, E> {
        self.visitor.visit_none()
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<V::Value, D::Error> {
        self.visitor.visit_some(Lenient(deserializer))
    }

    fn visit_unit<E: de::Error>(self) -> Result<V::Value, E> {
        self.visitor.visit_unit()
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<V::Value, D::Error> {
        self.visitor.visit_newtype_struct(Lenient(deserializer))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<V::Value, A::Error> {
        self.visitor.visit_seq(Lenient(seq))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
        self.visitor.visit_map(Lenient(map))
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<V::Value, A::Error> {
        self.visitor.visit_enum(Lenient(data))
    }
}

enum Scalar {
    Bool(bool),
    Unsigned(u64),
    Signed(i64),
    Float(f64),
}

/// The boolean or number a string stands for, when the target wants one.
fn lenient_scalar(want: Want, text: &str) -> Option<Scalar> {
    match want {
        Want::Bool => parse_bool(text).map(Scalar::Bool),
        Want::Number => {
            let text = text.trim();
            if let Ok(n) = text.parse::<u64>() {
                Some(Scalar::Unsigned(n))
            } else if let Ok(n) = text.parse::<i64>() {
                Some(Scalar::Signed(n))
            } else {
                // Only finite decimal numbers: "inf" and "nan" stay strings (and fail).
                text.parse::<f64>()
                    .ok()
                    .filter(|n| n.is_finite())
                    .map(Scalar::Float)
            }
        }
        Want::Any | Want::String => None,
    }
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for Lenient<S> {
    type Value = S::Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<S::Value, D::Error> {
        self.0.deserialize(Lenient(deserializer))
    }
}

impl<'de, A: SeqAccess<'de>> SeqAccess<'de> for Lenient<A> {
    type Error = A::Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, A::Error> {
        self.0.next_element_seed(Lenient(seed))
    }

    fn size_hint(&self) -> Option<usize> {
        self.0.size_hint()
    }
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Lenient<A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        self.0.next_key_seed(Lenient(seed))
    }

    fn next_value_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<T::Value, A::Error> {
        self.0.next_value_seed(Lenient(seed))
    }

    fn size_hint(&self) -> Option<usize> {
        self.0.size_hint()
    }
}

impl<'de, A: EnumAccess<'de>> EnumAccess<'de> for Lenient<A> {
    type Error = A::Error;
    type Variant = Lenient<A::Variant>;

    fn variant_seed<T: DeserializeSeed<'de>>(
        self,
        seed: T,
    ) -> Result<(T::Value, Self::Variant), A::Error> {
        let (value, variant) = self.0.variant_seed(Lenient(seed))?;
        Ok((value, Lenient(variant)))
    }
}

impl<'de, A: VariantAccess<'de>> VariantAccess<'de> for Lenient<A> {
    type Error = A::Error;

    fn unit_variant(self) -> Result<(), A::Error> {
        self.0.unit_variant()
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, A::Error> {
        self.0.newtype_variant_seed(Lenient(seed))
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, A::Error> {
        self.0.tuple_variant(len, Forward::any(visitor))
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, A::Error> {
        self.0.struct_variant(fields, Forward::any(visitor))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::json;

    #[derive(Debug, Deserialize, PartialEq)]
    struct Section {
        enabled: bool,
        port: u16,
        ratio: f64,
        maybe: Option<bool>,
        key_id: String,
        nested: Vec<Nested>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    struct Nested {
        flag: bool,
        limit: Option<u32>,
    }

    #[test]
    fn yaml_1_1_booleans_in_any_case() {
        for (word, expected) in [
            ("yes", true),
            ("Yes", true),
            ("YES", true),
            ("on", true),
            ("ON", true),
            ("y", true),
            ("Y", true),
            ("true", true),
            ("True", true),
            ("no", false),
            ("NO", false),
            ("off", false),
            ("Off", false),
            ("n", false),
            ("N", false),
            ("false", false),
            ("FALSE", false),
        ] {
            assert_eq!(parse_bool(word), Some(expected), "{word}");
            assert_eq!(from_value::<bool>(json!(word)).unwrap(), expected, "{word}");
        }
        assert_eq!(parse_bool("maybe"), None);
        assert_eq!(parse_bool("1"), None);
    }

    #[test]
    fn strings_and_numbers_where_the_target_wants_them() {
        let section: Section = from_value(json!({
            "enabled": "on",
            "port": "5000",
            "ratio": " 2.5 ",
            "maybe": "No",
            "key_id": 12345,
            "nested": [{"flag": "y", "limit": "7"}, {"flag": true, "limit": null}],
        }))
        .unwrap();
        assert_eq!(
            section,
            Section {
                enabled: true,
                port: 5000,
                ratio: 2.5,
                maybe: Some(false),
                key_id: "12345".to_owned(),
                nested: vec![
                    Nested {
                        flag: true,
                        limit: Some(7)
                    },
                    Nested {
                        flag: true,
                        limit: None
                    }
                ],
            }
        );
    }

    #[test]
    fn what_cannot_be_converted_still_fails_with_the_expected_type() {
        let err = from_value::<u16>(json!("five thousand")).unwrap_err();
        assert!(err.to_string().contains("expected u16"), "{err}");
        let err = from_value::<u16>(json!("70000")).unwrap_err();
        assert!(err.to_string().contains("u16"), "{err}");
        let err = from_value::<bool>(json!("perhaps")).unwrap_err();
        assert!(err.to_string().contains("expected a boolean"), "{err}");
        let err = from_value::<f64>(json!("nan")).unwrap_err();
        assert!(err.to_string().contains("expected f64"), "{err}");
        // Strings stay strings, and text that looks boolean is not touched there.
        assert_eq!(from_value::<String>(json!("yes")).unwrap(), "yes");
    }

    #[test]
    fn json_helpers() {
        assert_eq!(as_bool(&json!("Off")), Some(false));
        assert_eq!(as_bool(&json!(true)), Some(true));
        assert_eq!(as_bool(&json!(1)), None);
        assert_eq!(as_u64(&json!("3")), Some(3));
        assert_eq!(as_u64(&json!(3)), Some(3));
        assert_eq!(as_u64(&json!("-3")), None);
        assert_eq!(as_f64(&json!("0.5")), Some(0.5));
        assert_eq!(as_f64(&json!(10)), Some(10.0));
    }
}
