//! The requested field paths as a tree of object keys, and the `serde`
//! visitor that walks an event once along it: values on a path are kept as
//! raw JSON text borrowed from the event, everything else is skipped by the
//! parser without being built.

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, Error as _, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

use super::{FieldValue, field_value};

/// One object level of the requested paths.
#[derive(Debug, Default)]
pub struct PathTree {
    keys: Vec<(String, PathNode)>,
}

#[derive(Debug, Default)]
pub(super) struct PathNode {
    /// The slot of the path that ends at this key, if one does.
    slot: Option<usize>,
    /// Paths that go on below this key.
    below: PathTree,
}

impl PathTree {
    /// A tree of dot-separated `paths`; path `i` fills slot `i`.
    pub fn new(paths: &[String]) -> Self {
        let mut tree = Self::default();
        for (slot, path) in paths.iter().enumerate() {
            let mut level = &mut tree;
            let mut keys = path.split('.').peekable();
            while let Some(key) = keys.next() {
                let node = level.child_or_insert(key);
                if keys.peek().is_none() {
                    node.slot = Some(slot);
                }
                level = &mut node.below;
            }
        }
        tree
    }

    fn child_or_insert(&mut self, key: &str) -> &mut PathNode {
        let index = match self.keys.iter().position(|(k, _)| k == key) {
            Some(index) => index,
            None => {
                self.keys.push((key.to_owned(), PathNode::default()));
                self.keys.len() - 1
            }
        };
        &mut self.keys[index].1
    }

    #[inline]
    pub(super) fn child(&self, key: &[u8]) -> Option<&PathNode> {
        self.keys
            .iter()
            .find(|(k, _)| same_key(k.as_bytes(), key))
            .map(|(_, node)| node)
    }

    /// Fills `values` (one per slot, `Missing` on entry) from the JSON object
    /// `json`, or says why it is not valid JSON.
    pub fn read<'a>(&self, json: &'a str, values: &mut [FieldValue<'a>]) -> Result<(), String> {
        // Text already checked as UTF-8 as a whole is faster to parse than
        // bytes checked string by string.
        let mut parser = serde_json::Deserializer::from_str(json);
        ObjectReader { tree: self, values }
            .deserialize(&mut parser)
            .and_then(|()| parser.end())
            .map_err(|e| format!("invalid JSON: {e}"))
    }
}

impl PathNode {
    /// The slot of the path that ends at this key, if one does.
    pub(super) fn slot(&self) -> Option<usize> {
        self.slot
    }

    /// Whether paths go on below this key.
    pub(super) fn has_paths_below(&self) -> bool {
        !self.below.keys.is_empty()
    }
}

/// Whether two object keys are the same. Keys are short: those of 8 to 16
/// bytes are compared as two overlapping words, without calling `memcmp`.
#[inline]
fn same_key(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let words = |key: &[u8]| Some((*key.first_chunk::<8>()?, *key.last_chunk::<8>()?));
    match (words(a), words(b)) {
        (Some(a_words), Some(b_words)) if a.len() <= 16 => a_words == b_words,
        _ => a == b,
    }
}

/// Reads one object level into the slots of its paths.
struct ObjectReader<'t, 'v, 'a> {
    tree: &'t PathTree,
    values: &'v mut [FieldValue<'a>],
}

impl<'a> DeserializeSeed<'a> for ObjectReader<'_, '_, 'a> {
    type Value = ();

    fn deserialize<D: Deserializer<'a>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'a> Visitor<'a> for ObjectReader<'_, '_, 'a> {
    type Value = ();

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a JSON object")
    }

    fn visit_map<M: MapAccess<'a>>(self, mut map: M) -> Result<(), M::Error> {
        while let Some(node) = map.next_key_seed(KeyLookup(self.tree))? {
            let Some(node) = node else {
                map.next_value::<IgnoredAny>()?;
                continue;
            };
            let raw = map.next_value::<&'a RawValue>()?.get();
            if let Some(slot) = node.slot {
                self.values[slot] = field_value(raw).map_err(M::Error::custom)?;
            }
            // Paths below a value that is not an object stay missing.
            if node.has_paths_below() && raw.starts_with('{') {
                node.below
                    .read(raw, self.values)
                    .map_err(M::Error::custom)?;
            }
        }
        Ok(())
    }
}

/// Looks an object key up among one level's keys, without allocating.
struct KeyLookup<'t>(&'t PathTree);

impl<'a, 't> DeserializeSeed<'a> for KeyLookup<'t> {
    type Value = Option<&'t PathNode>;

    fn deserialize<D: Deserializer<'a>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'t> Visitor<'_> for KeyLookup<'t> {
    type Value = Option<&'t PathNode>;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("an object key")
    }

    fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<Self::Value, E> {
        Ok(self.0.child(key.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_the_same_only_when_every_byte_is() {
        for length in 0..40 {
            let key: Vec<u8> = (0..length).map(|i| b'a' + (i % 26) as u8).collect();
            assert!(same_key(&key, &key.clone()), "{length}");
            for at in 0..length {
                let mut other = key.clone();
                other[at] = b'_';
                assert!(!same_key(&key, &other), "{length} bytes, differing at {at}");
            }
            assert!(!same_key(&key, &[key.as_slice(), b"x"].concat()));
        }
    }
}
