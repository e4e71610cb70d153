//! Group keys: the group-by values of an event, encoded as bytes so that the
//! hot path can look state up with a reused buffer and allocate only for a
//! new key. Each value is a presence byte, then (if present) its length as
//! u32 little-endian and its text: strings as they are, other JSON values as
//! JSON text.

use std::borrow::Borrow;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::decode::FieldValue;

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupKey(Box<[u8]>);

impl GroupKey {
    pub fn from_bytes(bytes: &[u8]) -> Self {
        Self(bytes.into())
    }

    /// The encoded key.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Appends one group-by value to an encoded key being built in `out`.
    pub fn encode_value(value: &FieldValue<'_>, out: &mut Vec<u8>) {
        let mut push = |text: &str| {
            out.push(1);
            out.extend_from_slice(&(text.len() as u32).to_le_bytes());
            out.extend_from_slice(text.as_bytes());
        };
        match value {
            FieldValue::Missing | FieldValue::Null => out.push(0),
            FieldValue::Str(s) | FieldValue::Json(s) => push(s),
            FieldValue::Bool(b) => push(if *b { "true" } else { "false" }),
            FieldValue::Int(i) => push(&i.to_string()),
            FieldValue::Float(f) => push(&f.to_string()),
        }
    }

    /// The group-by values, `None` for a missing or null value.
    pub fn values(&self) -> Vec<Option<&str>> {
        let mut values = Vec::new();
        let mut rest = &self.0[..];
        while let Some((&present, tail)) = rest.split_first() {
            if present == 0 {
                values.push(None);
                rest = tail;
                continue;
            }
            let (len, tail) = tail.split_at(4.min(tail.len()));
            let len = u32::from_le_bytes(len.try_into().unwrap_or_default()) as usize;
            let (text, tail) = tail.split_at(len.min(tail.len()));
            values.push(std::str::from_utf8(text).ok());
            rest = tail;
        }
        values
    }

    fn from_values(values: &[Option<String>]) -> Self {
        let mut out = Vec::new();
        for value in values {
            let field = value
                .as_deref()
                .map_or(FieldValue::Null, |s| FieldValue::Str(s.into()));
            Self::encode_value(&field, &mut out);
        }
        Self::from_bytes(&out)
    }
}

impl Borrow<[u8]> for GroupKey {
    fn borrow(&self) -> &[u8] {
        &self.0
    }
}

// Checkpoints store keys as their values, readable and independent of the encoding.
impl Serialize for GroupKey {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.values().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for GroupKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let values = Vec::<Option<String>>::deserialize(deserializer)?;
        Ok(Self::from_values(&values))
    }
}
