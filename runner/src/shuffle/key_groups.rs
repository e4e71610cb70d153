//! The key-group stage's side: the key groups a replica owns, each with its
//! windows, its watermark over all source partitions, and what it has
//! applied from each source partition.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::ShuffleRecord;
use crate::{
    dead_letter::{DeadEvent, Reason},
    pipeline::{EpochCounts, rfc3339},
    source::{PartitionId, Position},
    window::{Accumulator, GroupKey, WindowRow, WindowState, Windows},
};

/// A partial waiting for its range's progress marker.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Pending {
    pane: i64,
    key: GroupKey,
    events: u64,
    accumulators: Box<[Accumulator]>,
}

/// A source range: its partition and start.
type RangeStart = (PartitionId, Position);

/// One key group's durable state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyGroupState {
    pub group: u32,
    pub windows: WindowState,
    /// Per source partition, the end of the last range applied.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    applied: Vec<(PartitionId, Position)>,
    /// Partials of ranges whose marker had not arrived, by (source, range start).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pending: Vec<(RangeStart, Vec<(u32, Pending)>)>,
    /// Source partitions whose latest marker said idle.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    idle: Vec<PartitionId>,
    /// Source-stage replicas heard from, and how many there are.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    heard: Vec<u32>,
    #[serde(default)]
    replicas: u32,
}

impl KeyGroupState {
    /// A key group taking over the windows one replica computed itself:
    /// what that replica had read of each source partition counts as applied.
    pub fn from_windows(
        group: u32,
        windows: WindowState,
        applied: Vec<(PartitionId, Position)>,
    ) -> Self {
        Self {
            group,
            windows,
            applied,
            pending: Vec::new(),
            idle: Vec::new(),
            heard: Vec::new(),
            replicas: 0,
        }
    }
}

/// The key groups' durable state, inside a checkpoint.
pub type KeyGroupsState = Vec<KeyGroupState>;

struct KeyGroup {
    windows: Windows,
    applied: BTreeMap<PartitionId, Position>,
    pending: BTreeMap<RangeStart, BTreeMap<u32, Pending>>,
    idle: BTreeSet<PartitionId>,
    heard: BTreeSet<u32>,
    replicas: u32,
    /// This epoch's maximum event time per source partition that reported.
    epoch_max: BTreeMap<PartitionId, Option<i64>>,
}

/// Why a repartition record could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum KeyGroupError {
    #[error(
        "key group {group}: the marker of {partition} [{start:?}, {end:?}) announces {announced} partials, {found} arrived; the repartition topic lost records (was it truncated or recreated?)"
    )]
    MissingPartials {
        group: u32,
        partition: PartitionId,
        start: Position,
        end: Position,
        announced: u32,
        found: usize,
    },
}

/// The key groups of one replica.
pub struct KeyGroups {
    new_windows: Box<dyn Fn() -> Windows + Send>,
    groups: BTreeMap<u32, KeyGroup>,
}

impl KeyGroups {
    /// `new_windows` makes an empty key group's windows.
    pub fn new(new_windows: impl Fn() -> Windows + Send + 'static) -> Self {
        Self {
            new_windows: Box::new(new_windows),
            groups: BTreeMap::new(),
        }
    }

    fn group(&mut self, group: u32) -> &mut KeyGroup {
        let new_windows = &self.new_windows;
        self.groups.entry(group).or_insert_with(|| KeyGroup {
            windows: new_windows(),
            applied: BTreeMap::new(),
            pending: BTreeMap::new(),
            idle: BTreeSet::new(),
            heard: BTreeSet::new(),
            replicas: 0,
            epoch_max: BTreeMap::new(),
        })
    }

    /// Applies one record of key group `group`'s topic partition. Late
    /// partials are counted and described in `dead` (the events themselves
    /// stay in the source topic, at the range the description names).
    pub fn apply(
        &mut self,
        group: u32,
        record: ShuffleRecord,
        counts: &mut EpochCounts,
        dead: &mut Vec<DeadEvent>,
        dead_letter_late: bool,
    ) -> Result<(), KeyGroupError> {
        let key_group = self.group(group);
        match record {
            ShuffleRecord::Partial {
                source,
                start,
                index,
                pane,
                key,
                events,
                accumulators,
                ..
            } => {
                key_group
                    .pending
                    .entry((source, start))
                    .or_default()
                    .insert(
                        index,
                        Pending {
                            pane,
                            key,
                            events,
                            accumulators,
                        },
                    );
            }
            ShuffleRecord::Progress {
                source,
                start,
                end,
                partials,
                max_time,
                idle,
                replica,
                replicas,
            } => {
                let pending = key_group
                    .pending
                    .remove(&(source.clone(), start.clone()))
                    .unwrap_or_default();
                let done = key_group.applied.get(&source).is_some_and(|at| *at >= end);
                if !done {
                    if pending.len() != partials as usize
                        || pending
                            .keys()
                            .next_back()
                            .is_some_and(|i| *i + 1 != partials)
                    {
                        return Err(KeyGroupError::MissingPartials {
                            group,
                            partition: source,
                            start,
                            end,
                            announced: partials,
                            found: pending.len(),
                        });
                    }
                    for partial in pending.into_values() {
                        key_group.merge(
                            &source,
                            &start,
                            partial,
                            counts,
                            dead_letter_late.then_some(&mut *dead),
                        );
                    }
                    key_group.applied.insert(source.clone(), end);
                    let entry = key_group.epoch_max.entry(source.clone()).or_default();
                    *entry = (*entry).max(max_time);
                }
                if idle {
                    key_group.idle.insert(source);
                } else {
                    key_group.idle.remove(&source);
                }
                if key_group.replicas != replicas {
                    // A rescaled source stage: hear from every new replica again.
                    key_group.heard.clear();
                    key_group.replicas = replicas;
                }
                key_group.heard.insert(replica);
            }
        }
        Ok(())
    }

    /// Ends an epoch: moves each key group's watermark (once it has heard
    /// from every source replica) and returns the rows to write, ordered by
    /// window and key.
    pub fn advance(&mut self) -> Vec<WindowRow> {
        let mut rows = Vec::new();
        for group in self.groups.values_mut() {
            let epoch_max = std::mem::take(&mut group.epoch_max);
            // Every source partition the group knows, so that the watermark
            // is the minimum over all of them, as for one runner.
            let mut maxima: BTreeMap<PartitionId, Option<i64>> = group
                .applied
                .keys()
                .map(|partition| (partition.clone(), None))
                .collect();
            maxima.extend(epoch_max);
            let maxima: Vec<_> = maxima.into_iter().collect();
            if group.replicas > 0 && group.heard.len() as u32 >= group.replicas {
                let idle: Vec<PartitionId> = group.idle.iter().cloned().collect();
                rows.extend(group.windows.advance(&maxima, &idle));
            } else {
                group.windows.observe(&maxima);
            }
        }
        rows.sort_by(|a, b| (a.0, a.1, &a.2).cmp(&(b.0, b.1, &b.2)));
        rows
    }

    /// The lowest watermark of the key groups (the one status reports).
    pub fn watermark(&self) -> Option<i64> {
        self.groups
            .values()
            .map(|group| group.windows.watermark())
            .min()
            .flatten()
    }

    pub fn open_entries(&self) -> usize {
        self.groups.values().map(|g| g.windows.open_entries()).sum()
    }

    pub fn snapshot(&self) -> KeyGroupsState {
        self.groups
            .iter()
            .map(|(group, state)| KeyGroupState {
                group: *group,
                windows: state.windows.snapshot(),
                applied: state
                    .applied
                    .iter()
                    .map(|(p, at)| (p.clone(), at.clone()))
                    .collect(),
                pending: state
                    .pending
                    .iter()
                    .map(|(range, partials)| {
                        let partials = partials.iter().map(|(i, p)| (*i, p.clone())).collect();
                        (range.clone(), partials)
                    })
                    .collect(),
                idle: state.idle.iter().cloned().collect(),
                heard: state.heard.iter().copied().collect(),
                replicas: state.replicas,
            })
            .collect()
    }

    pub fn restore(&mut self, state: KeyGroupsState) {
        self.groups.clear();
        for saved in state {
            let group = self.group(saved.group);
            group.windows.restore(saved.windows);
            group.applied = saved.applied.into_iter().collect();
            group.pending = saved
                .pending
                .into_iter()
                .map(|(range, partials)| (range, partials.into_iter().collect()))
                .collect();
            group.idle = saved.idle.into_iter().collect();
            group.heard = saved.heard.into_iter().collect();
            group.replicas = saved.replicas;
        }
    }
}

impl KeyGroup {
    /// Adds a partial to its pane unless all its windows have closed.
    fn merge(
        &mut self,
        source: &PartitionId,
        start: &Position,
        partial: Pending,
        counts: &mut EpochCounts,
        dead: Option<&mut Vec<DeadEvent>>,
    ) {
        let lateness = self.windows.lateness(partial.pane);
        counts.late_windows += u64::from(lateness.closed) * partial.events;
        if lateness.is_late() {
            counts.late += partial.events;
            let Some(dead) = dead else { return };
            let watermark = self.windows.watermark().unwrap_or_default();
            let description = serde_json::json!({
                "lateEvents": partial.events,
                "groupBy": partial.key.values(),
                "pane": rfc3339(partial.pane),
                "source": source.to_string(),
                "rangeStart": start,
            });
            dead.push(DeadEvent {
                reason: Reason::Late {
                    event_time: rfc3339(partial.pane),
                    watermark: rfc3339(watermark),
                },
                partition: source.clone(),
                offset: match start {
                    Position::Offset(offset) => *offset,
                    Position::Cursor(_) => 0,
                },
                payload: description.to_string().into_bytes(),
                extras: None,
            });
            return;
        }
        self.windows
            .merge_pane(partial.pane, &partial.key, &partial.accumulators);
    }
}
