//! The `dedup` transform: drops an event whose id was already seen within a
//! horizon of event time (producers retry, so the same event often arrives
//! twice).
//!
//! What "seen within the horizon" means, with events out of order:
//!
//! - Each id is remembered with the *latest* event time it was seen at (kept
//!   or dropped). An event whose id is remembered is a duplicate and dropped,
//!   whatever the two event times are; the first occurrence in processing
//!   order (offset order within a partition, epoch order across epochs) is
//!   the one kept.
//! - Ids are forgotten only at the end of an epoch, when their latest time is
//!   before `clock − horizon`. The clock is the pipeline's watermark when it
//!   has `spec.window` (nothing expires before the first watermark),
//!   otherwise the greatest event time this transform has seen (there is no
//!   allowed lateness without a window).
//! - So a duplicate at time `t` is always dropped when an earlier occurrence
//!   was seen at a time `≥ t − horizon` and `t` is not behind the clock at the
//!   end of the previous epoch (with a window: the event is not late). An
//!   occurrence further apart may also be dropped, until its id expires.
//! - Expiry only at epoch ends, and the state in every checkpoint, make a
//!   replayed epoch decide exactly as the first run did, and a restart
//!   neither forgets an id nor drops a first occurrence. One exception: two
//!   copies of an id in *different* partitions of the same epoch — exactly
//!   one is kept, but which one depends on arrival order (identical copies,
//!   as retries are, give identical outputs).
//!
//! Memory is bounded by the ids seen within the horizon behind the clock:
//! ids are stored as 128-bit XXH3 hashes of their value (plus the kind of
//! JSON value, so `1` and `"1"` differ) with an 8-byte time, never as strings.
//! Two distinct ids collide with probability about n²/2¹²⁹ for n ids held
//! (below 10⁻²⁰ for a billion ids), which would drop one event.

use std::collections::{BTreeMap, HashMap, hash_map::Entry};

use serde::{Deserialize, Serialize};
use sluice_crds::DedupTransform;
use twox_hash::XxHash3_128;

use crate::decode::FieldValue;

/// An id's 128-bit hash as two halves: 8-byte alignment keeps a map entry
/// (with its time) at 24 bytes instead of 32 for `u128`.
type IdHash = (u64, u64);

/// Slices of event time per horizon in the expiry index: expiring touches
/// only ids in slices behind the clock, plus one slice that straddles it.
const SLICES_PER_HORIZON: i64 = 16;

/// What ids expire against at the end of an epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Clock {
    /// The pipeline's watermark; before the first one, nothing expires.
    Watermark(Option<i64>),
    /// A pipeline without a window has no watermark: the greatest event time
    /// the dedup step has seen.
    NewestEvent,
}

/// One dedup transform's memory of ids.
pub struct Dedup {
    id_field: String,
    horizon: i64,
    slice: i64,
    /// Latest event time each id (hashed) was seen at.
    seen: HashMap<IdHash, i64, ahash::RandomState>,
    /// Ids by the slice of event time they were last seen in; an id whose
    /// time moved to a later slice also stays listed in the earlier one.
    by_slice: BTreeMap<i64, Vec<IdHash>>,
    /// Greatest event time seen, the clock of pipelines without a window.
    max_time: Option<i64>,
}

/// A dedup transform's durable form, inside a checkpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DedupState {
    /// The id field the hashes are of.
    pub id_field: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_time: Option<i64>,
    /// (id hash, latest event time in milliseconds) per remembered id.
    #[serde(default, skip_serializing_if = "Vec::is_empty", with = "packed")]
    pub seen: Vec<(u128, i64)>,
}

impl DedupState {
    /// The ids several replicas remembered, for the replica that takes over
    /// their partitions: each id once, with its latest time.
    pub fn union(states: impl IntoIterator<Item = DedupState>) -> Option<DedupState> {
        let mut states = states.into_iter();
        let mut union = states.next()?;
        let mut seen: std::collections::HashMap<u128, i64> = union.seen.drain(..).collect();
        for state in states {
            union.max_time = union.max_time.max(state.max_time);
            for (id, time) in state.seen {
                let entry = seen.entry(id).or_insert(time);
                *entry = (*entry).max(time);
            }
        }
        union.seen = seen.into_iter().collect();
        union.seen.sort_unstable();
        Some(union)
    }
}

/// Remembered ids in a checkpoint: each (hash, time) pair as 24 little-endian
/// bytes, all of them in one base64 string, about 32 bytes per id where a JSON
/// list of numbers took 56 (and was slower to write and read). A list of pairs,
/// the form of earlier checkpoints, still reads.
mod packed {
    use base64::{Engine, engine::general_purpose::STANDARD};
    use serde::{Deserializer, Serializer, de};

    const PAIR_BYTES: usize = 24;

    pub fn serialize<S: Serializer>(
        seen: &[(u128, i64)],
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        let mut bytes = Vec::with_capacity(seen.len() * PAIR_BYTES);
        for (id, time) in seen {
            bytes.extend_from_slice(&id.to_le_bytes());
            bytes.extend_from_slice(&time.to_le_bytes());
        }
        serializer.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<(u128, i64)>, D::Error> {
        deserializer.deserialize_any(Pairs)
    }

    struct Pairs;

    impl<'de> de::Visitor<'de> for Pairs {
        type Value = Vec<(u128, i64)>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("base64 of 24-byte (id hash, time) pairs, or a list of pairs")
        }

        fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
            let bytes = STANDARD.decode(text).map_err(E::custom)?;
            if bytes.len() % PAIR_BYTES != 0 {
                return Err(E::custom(format!(
                    "{} bytes of ids is not a whole number of {PAIR_BYTES}-byte pairs",
                    bytes.len()
                )));
            }
            Ok(bytes
                .chunks_exact(PAIR_BYTES)
                .map(|pair| {
                    let (id, time) = pair.split_at(16);
                    let id = u128::from_le_bytes(id.try_into().expect("16 bytes"));
                    let time = i64::from_le_bytes(time.try_into().expect("8 bytes"));
                    (id, time)
                })
                .collect())
        }

        fn visit_seq<A: de::SeqAccess<'de>>(self, mut list: A) -> Result<Self::Value, A::Error> {
            let mut pairs = Vec::with_capacity(list.size_hint().unwrap_or(0));
            while let Some(pair) = list.next_element()? {
                pairs.push(pair);
            }
            Ok(pairs)
        }
    }
}

impl Dedup {
    pub fn new(spec: &DedupTransform) -> Self {
        let horizon = spec.horizon.as_millis_i64().max(0);
        Self {
            id_field: spec.id_field.clone(),
            horizon,
            slice: (horizon / SLICES_PER_HORIZON).max(1),
            seen: HashMap::default(),
            by_slice: BTreeMap::new(),
            max_time: None,
        }
    }

    pub fn id_field(&self) -> &str {
        &self.id_field
    }

    /// Ids remembered, for metrics.
    pub fn remembered(&self) -> usize {
        self.seen.len()
    }

    /// Records that an event with id `id` was seen at `time` and tells
    /// whether it is a duplicate; an event without an id cannot be checked.
    pub fn is_duplicate(&mut self, id: &FieldValue<'_>, time: i64) -> Result<bool, String> {
        let id = hash_id(id).ok_or_else(|| {
            let what = if *id == FieldValue::Null {
                "null"
            } else {
                "missing"
            };
            format!("dedup: the id field {} is {what}", self.id_field)
        })?;
        self.max_time = Some(self.max_time.map_or(time, |max| max.max(time)));
        let slice = self.slice_of(time);
        match self.seen.entry(id) {
            Entry::Occupied(mut entry) => {
                let latest = *entry.get();
                if time > latest {
                    entry.insert(time);
                    if slice != latest.div_euclid(self.slice) * self.slice {
                        self.by_slice.entry(slice).or_default().push(id);
                    }
                }
                Ok(true)
            }
            Entry::Vacant(entry) => {
                entry.insert(time);
                self.by_slice.entry(slice).or_default().push(id);
                Ok(false)
            }
        }
    }

    fn slice_of(&self, time: i64) -> i64 {
        time.div_euclid(self.slice) * self.slice
    }

    /// Ends an epoch: forgets the ids last seen before `clock − horizon`.
    pub fn expire(&mut self, clock: Clock) {
        let clock = match clock {
            Clock::Watermark(watermark) => watermark,
            Clock::NewestEvent => self.max_time,
        };
        let Some(clock) = clock else {
            return;
        };
        let threshold = clock.saturating_sub(self.horizon);
        while let Some(mut entry) = self.by_slice.first_entry() {
            let start = *entry.key();
            if start >= threshold {
                break;
            }
            let straddles = start.saturating_add(self.slice) > threshold;
            let seen = &mut self.seen;
            let slice = self.slice;
            // One lookup per id: the map is far larger than the caches.
            entry.get_mut().retain(|id| match seen.entry(*id) {
                Entry::Occupied(remembered) if *remembered.get() < threshold => {
                    remembered.remove();
                    false
                }
                // Still remembered: kept here only if this is its current slice.
                Entry::Occupied(remembered) => {
                    straddles && remembered.get().div_euclid(slice) * slice == start
                }
                Entry::Vacant(_) => false,
            });
            if !straddles || entry.get().is_empty() {
                entry.remove();
            }
            if straddles {
                break;
            }
        }
    }

    pub fn snapshot(&self) -> DedupState {
        DedupState {
            id_field: self.id_field.clone(),
            max_time: self.max_time,
            seen: self
                .seen
                .iter()
                .map(|(&(high, low), &time)| ((u128::from(high) << 64) | u128::from(low), time))
                .collect(),
        }
    }

    /// Replaces the memory with a checkpointed one (an empty state: forget all).
    pub fn restore(&mut self, state: DedupState) {
        self.seen.clear();
        self.by_slice.clear();
        self.max_time = state.max_time;
        self.seen.reserve(state.seen.len());
        for (id, time) in state.seen {
            let id = ((id >> 64) as u64, id as u64);
            self.seen.insert(id, time);
            let slice = self.slice_of(time);
            self.by_slice.entry(slice).or_default().push(id);
        }
    }
}

/// The 128-bit hash of an id value; the seed is the kind of JSON value.
fn hash_id(value: &FieldValue<'_>) -> Option<IdHash> {
    let hash = XxHash3_128::oneshot_with_seed;
    let hash = match value {
        FieldValue::Missing | FieldValue::Null => return None,
        FieldValue::Str(text) => hash(1, text.as_bytes()),
        FieldValue::Json(text) => hash(2, text.as_bytes()),
        FieldValue::Int(int) => hash(3, &int.to_le_bytes()),
        FieldValue::Float(float) => hash(4, &float.to_bits().to_le_bytes()),
        FieldValue::Bool(bool) => hash(5, &[u8::from(*bool)]),
    };
    Some(((hash >> 64) as u64, hash as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: i64 = 60_000;

    fn dedup(horizon: &str) -> Dedup {
        Dedup::new(
            &serde_json::from_value(serde_json::json!({"idField": "id", "horizon": horizon}))
                .unwrap(),
        )
    }

    fn id(text: &str) -> FieldValue<'_> {
        FieldValue::Str(text.into())
    }

    #[test]
    fn later_occurrences_are_duplicates_whatever_their_order_in_time() {
        let mut d = dedup("10m");
        assert_eq!(d.is_duplicate(&id("a"), 5 * MINUTE), Ok(false));
        assert_eq!(d.is_duplicate(&id("b"), 5 * MINUTE), Ok(false));
        assert_eq!(d.is_duplicate(&id("a"), 9 * MINUTE), Ok(true));
        // Out of order: earlier in event time than the first occurrence.
        assert_eq!(d.is_duplicate(&id("a"), MINUTE), Ok(true));
        // The kind of value is part of the id.
        assert_eq!(d.is_duplicate(&FieldValue::Int(7), 0), Ok(false));
        assert_eq!(d.is_duplicate(&id("7"), 0), Ok(false));
        assert_eq!(d.is_duplicate(&FieldValue::Int(7), 0), Ok(true));
        assert!(
            d.is_duplicate(&FieldValue::Missing, 0)
                .unwrap_err()
                .contains("the id field id is missing")
        );
    }

    #[test]
    fn ids_expire_exactly_at_the_horizon_behind_the_watermark() {
        let mut d = dedup("10m");
        let first = 100 * MINUTE + 123;
        assert_eq!(d.is_duplicate(&id("a"), first), Ok(false));
        // Watermark exactly `horizon` after the id's time: still remembered.
        d.expire(Clock::Watermark(Some(first + 10 * MINUTE)));
        assert_eq!(d.remembered(), 1);
        assert_eq!(d.is_duplicate(&id("a"), first), Ok(true));
        // One millisecond more: forgotten, so the next occurrence is a first one.
        d.expire(Clock::Watermark(Some(first + 10 * MINUTE + 1)));
        assert_eq!(d.remembered(), 0);
        assert_eq!(d.is_duplicate(&id("a"), first + 10 * MINUTE + 1), Ok(false));
    }

    #[test]
    fn nothing_expires_before_the_first_watermark() {
        let mut d = dedup("1m");
        assert_eq!(d.is_duplicate(&id("a"), 0), Ok(false));
        assert_eq!(d.is_duplicate(&id("b"), 60 * MINUTE), Ok(false));
        d.expire(Clock::Watermark(None));
        assert_eq!(d.remembered(), 2);
    }

    #[test]
    fn a_later_sighting_extends_the_memory_of_an_id() {
        let mut d = dedup("10m");
        assert_eq!(d.is_duplicate(&id("a"), 0), Ok(false));
        assert_eq!(d.is_duplicate(&id("a"), 8 * MINUTE), Ok(true));
        d.expire(Clock::Watermark(Some(15 * MINUTE)));
        assert_eq!(d.is_duplicate(&id("a"), 17 * MINUTE), Ok(true));
        d.expire(Clock::Watermark(Some(27 * MINUTE + 1)));
        assert_eq!(d.remembered(), 0);
    }

    #[test]
    fn without_a_watermark_the_clock_is_the_latest_event_time() {
        let mut d = dedup("1m");
        assert_eq!(d.is_duplicate(&id("old"), 0), Ok(false));
        assert_eq!(d.is_duplicate(&id("new"), 2 * MINUTE), Ok(false));
        d.expire(Clock::NewestEvent);
        assert_eq!(d.remembered(), 1);
        assert_eq!(d.is_duplicate(&id("new"), MINUTE), Ok(true));
        assert_eq!(d.is_duplicate(&id("old"), MINUTE), Ok(false));
    }

    #[test]
    fn memory_stays_bounded_by_the_horizon() {
        let mut d = dedup("1m");
        for second in 0..3_600i64 {
            for n in 0..10 {
                let key = format!("{second}-{n}");
                assert_eq!(d.is_duplicate(&id(&key), second * 1000), Ok(false));
            }
            d.expire(Clock::Watermark(Some(second * 1000)));
            assert!(d.remembered() <= 61 * 10, "{} ids held", d.remembered());
            let listed: usize = d.by_slice.values().map(Vec::len).sum();
            assert!(listed <= 62 * 10, "{listed} ids listed");
        }
    }

    #[test]
    fn checkpointed_ids_are_packed_and_the_earlier_list_form_still_reads() {
        let mut d = dedup("10m");
        for (n, time) in [("a", -5), ("b", 3 * MINUTE), ("c", i64::MAX)] {
            d.is_duplicate(&id(n), time).unwrap();
        }
        let mut state = d.snapshot();
        state.seen.sort_unstable();
        let json = serde_json::to_value(&state).unwrap();
        assert_eq!(json["seen"].as_str().map(str::len), Some(3 * 32), "{json}");
        assert_eq!(serde_json::from_value::<DedupState>(json).unwrap(), state);

        // Written as text: a serde_json `Value` cannot hold a u128.
        let list: Vec<_> = state
            .seen
            .iter()
            .map(|(id, time)| format!("[{id},{time}]"))
            .collect();
        let earlier = format!(r#"{{"idField": "id", "seen": [{}]}}"#, list.join(","));
        assert_eq!(
            serde_json::from_str::<DedupState>(&earlier).unwrap().seen,
            state.seen
        );

        let torn = serde_json::json!({"idField": "id", "seen": "AAAA"});
        let error = serde_json::from_value::<DedupState>(torn).unwrap_err();
        assert!(error.to_string().contains("24-byte pairs"), "{error}");
    }

    #[test]
    fn a_restored_snapshot_decides_like_the_original() {
        let mut d = dedup("10m");
        for (n, time) in [("a", 0), ("b", 3 * MINUTE), ("a", 4 * MINUTE)] {
            d.is_duplicate(&id(n), time).unwrap();
        }
        let state = serde_json::to_string(&d.snapshot()).unwrap();
        let mut restored = dedup("10m");
        restored.restore(serde_json::from_str(&state).unwrap());
        for d in [&mut d, &mut restored] {
            d.expire(Clock::Watermark(Some(13 * MINUTE + 1)));
            assert_eq!(d.is_duplicate(&id("a"), 14 * MINUTE), Ok(true));
            assert_eq!(d.is_duplicate(&id("b"), 14 * MINUTE), Ok(false));
        }
    }
}
