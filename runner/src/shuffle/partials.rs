//! The source stage's side of key groups: one epoch's events pre-aggregated
//! per (source range, pane, group key), turned into repartition records.

use std::collections::BTreeMap;

use super::{ShuffleRecord, key_group};
use crate::{
    source::{PartitionId, PartitionRange},
    window::{Accumulator, AggregateKind, GroupKey, PaneTarget, aggregate},
};

/// One range's events per (pane start, key): their number and aggregates.
type PaneKeys = BTreeMap<(i64, GroupKey), (u64, Box<[Accumulator]>)>;

/// Pre-aggregates of the epoch being processed.
pub struct Partials {
    pane: i64,
    key_groups: u32,
    aggregates: Vec<AggregateKind>,
    /// Per epoch range: (pane start, key) → (events, accumulators). Ordered,
    /// so that an epoch's records (and their indexes) are a pure function of
    /// its plan.
    ranges: Vec<PaneKeys>,
}

/// The records an epoch sends, each with the key group (topic partition) it goes to.
pub type Routed = Vec<(u32, ShuffleRecord)>;

impl Partials {
    pub fn new(pane: i64, key_groups: u32, aggregates: Vec<AggregateKind>) -> Self {
        Self {
            pane,
            key_groups: key_groups.max(1),
            aggregates,
            ranges: Vec::new(),
        }
    }

    /// Starts an epoch of `ranges` ranges.
    pub fn begin(&mut self, ranges: usize) {
        self.ranges.clear();
        self.ranges.resize_with(ranges, BTreeMap::new);
    }

    /// Adds one event of range `range`: its time, group key and aggregation inputs.
    pub fn add(&mut self, range: usize, time: i64, key: &[u8], inputs: &[Option<f64>]) {
        let Some(panes) = self.ranges.get_mut(range) else {
            return;
        };
        let pane = time.div_euclid(self.pane) * self.pane;
        let (events, accumulators) = panes
            .entry((pane, GroupKey::from_bytes(key)))
            .or_insert_with(|| (0, aggregate::empty(&self.aggregates)));
        *events += 1;
        aggregate::update(accumulators, inputs);
    }

    /// Range `range`'s pre-aggregates, to add a chunk's events to.
    pub fn range(&mut self, range: usize) -> RangePartials<'_> {
        RangePartials {
            partials: self,
            range,
        }
    }

    /// Ends the epoch: the partials of each range to their key groups, then a
    /// progress marker per range to every key group. `max_time[i]` is range
    /// i's largest valid event time; `idle` the partitions idle in the plan.
    pub fn finish(
        &mut self,
        plan: &[PartitionRange],
        max_time: &[Option<i64>],
        idle: &[PartitionId],
        replica: u32,
        replicas: u32,
    ) -> Routed {
        let mut routed = Routed::new();
        for (i, range) in plan.iter().enumerate() {
            let panes = self
                .ranges
                .get_mut(i)
                .map(std::mem::take)
                .unwrap_or_default();
            let mut sent = vec![0u32; self.key_groups as usize];
            for ((pane, key), (events, accumulators)) in panes {
                let group = key_group(key.as_bytes(), self.key_groups);
                let index = &mut sent[group as usize];
                routed.push((
                    group,
                    ShuffleRecord::Partial {
                        source: range.partition.clone(),
                        start: range.start.clone(),
                        end: range.end.clone(),
                        index: *index,
                        pane,
                        key,
                        events,
                        accumulators,
                    },
                ));
                *index += 1;
            }
            for (group, partials) in sent.into_iter().enumerate() {
                routed.push((
                    group as u32,
                    ShuffleRecord::Progress {
                        source: range.partition.clone(),
                        start: range.start.clone(),
                        end: range.end.clone(),
                        partials,
                        max_time: max_time.get(i).copied().flatten(),
                        idle: idle.contains(&range.partition),
                        replica,
                        replicas,
                    },
                ));
            }
        }
        routed
    }
}

/// The pre-aggregates of one range of the epoch.
pub struct RangePartials<'a> {
    partials: &'a mut Partials,
    range: usize,
}

impl PaneTarget for RangePartials<'_> {
    fn add(&mut self, time: i64, key: &[u8], inputs: &[Option<f64>]) {
        self.partials.add(self.range, time, key, inputs);
    }

    fn merge_pane(&mut self, pane: i64, key: GroupKey, events: u64, accumulators: &[Accumulator]) {
        let Some(panes) = self.partials.ranges.get_mut(self.range) else {
            return;
        };
        match panes.entry((pane, key)) {
            std::collections::btree_map::Entry::Occupied(mut entry) => {
                let (total, totals) = entry.get_mut();
                *total += events;
                aggregate::merge(totals, accumulators);
            }
            std::collections::btree_map::Entry::Vacant(entry) => {
                entry.insert((events, accumulators.into()));
            }
        }
    }
}
