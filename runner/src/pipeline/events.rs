//! The per-event work of a chunk that needs none of the engine's state:
//! decode, note event-time progress, transform, decide lateness against the
//! watermark in force, pre-aggregate for the windows, build event rows. It
//! runs on the engine's workers; its result, a [`ChunkWork`], is added to
//! the epoch by the engine in chunk order.

use arrow::array::RecordBatch;
use sluice_crds::LateEventPolicy;

use super::{
    engine::{EpochCounts, EventRows, merge_computed, rfc3339},
    workers::ChunkError,
};
use crate::{
    dead_letter::{DeadEvent, Reason},
    decode::{Decoder, FieldValue},
    source::{Chunk, PartitionId},
    transform::{DedupMemory, Outcome, Transforms},
    window::{Additions, AggregateKind, GroupKey, LatenessRule},
};

/// What windows need from each event.
pub(super) struct Windowing {
    pub group_slots: Vec<usize>,
    /// Per aggregate: the input field's slot (`None`: `count: {}`), and
    /// whether only presence matters (`count` with a field).
    pub inputs: Vec<(Option<usize>, bool)>,
    /// Pane width of tumbling and sliding windows.
    pub pane: Option<i64>,
    pub aggregates: Vec<AggregateKind>,
}

/// The engine's immutable per-event configuration, shared with its workers.
pub(super) struct EventStage {
    pub decoder: Decoder,
    pub transforms: Transforms,
    /// Computed fields (name, slot), merged into event rows.
    pub computed: Vec<(String, usize)>,
    pub windowing: Option<Windowing>,
    pub late_policy: LateEventPolicy,
}

/// What stays fixed during an epoch, for every chunk of it.
pub(super) struct EpochInputs {
    pub partitions: Vec<PartitionId>,
    /// Event times after this are malformed (milliseconds since the Unix epoch).
    pub time_ceiling: i64,
    /// Where lateness is decided here (windows computed by this engine): the
    /// watermark in force. A source stage leaves it to the key groups.
    pub lateness: Option<LatenessRule>,
    pub wants_events: bool,
}

/// One chunk's events, processed.
pub(super) struct ChunkWork {
    pub range: usize,
    pub counts: EpochCounts,
    /// The largest valid event time read, before transforms.
    pub max_time: Option<i64>,
    pub dead: Vec<DeadEvent>,
    pub additions: Option<Additions>,
    pub events: Option<RecordBatch>,
}

impl EventStage {
    /// Processes one chunk. `memory` is the dedup steps' memory: chunks of a
    /// pipeline with dedup steps go through here one at a time, in order.
    pub fn process(
        &self,
        epoch: &EpochInputs,
        chunk: &Chunk,
        memory: &mut DedupMemory,
    ) -> Result<ChunkWork, ChunkError> {
        let range = chunk
            .range_index
            .min(epoch.partitions.len().saturating_sub(1));
        let partition = &epoch.partitions[range];
        let mut work = ChunkWork {
            range,
            counts: EpochCounts::default(),
            max_time: None,
            dead: Vec::new(),
            additions: self
                .windowing
                .as_ref()
                .map(|w| Additions::new(w.pane, &w.aggregates)),
            events: None,
        };
        let mut events = epoch.wants_events.then(EventRows::default);
        let mut values: Vec<FieldValue<'_>> = Vec::with_capacity(self.decoder.paths().len());
        let mut key = Vec::with_capacity(64);
        let mut inputs: Vec<Option<f64>> = Vec::new();
        for rejected in chunk.rejected() {
            work.counts.malformed += 1;
            work.dead.push(DeadEvent {
                reason: Reason::Malformed(rejected.reason.clone()),
                partition: partition.clone(),
                offset: rejected.offset,
                payload: rejected.payload.clone(),
                extras: None,
            });
        }
        for record in chunk.iter() {
            work.counts.records += 1;
            let dead = |reason| DeadEvent::new(reason, partition, &record);
            let mut time = match self.decoder.decode(record.payload, &mut values) {
                Ok(time) if time > epoch.time_ceiling => {
                    work.counts.malformed += 1;
                    work.dead.push(dead(Reason::Malformed(format!(
                        "the event time {} is after {}: further ahead of the clock (when its epoch was planned) than spec.window.maxEventTimeAhead allows",
                        rfc3339(time),
                        rfc3339(epoch.time_ceiling),
                    ))));
                    continue;
                }
                Ok(time) => time,
                Err(reason) => {
                    work.counts.malformed += 1;
                    work.dead.push(dead(Reason::Malformed(reason)));
                    continue;
                }
            };
            work.max_time = Some(work.max_time.map_or(time, |max| max.max(time)));
            if !self.transforms.is_empty() {
                match self.transforms.apply(
                    record.payload,
                    &mut values,
                    &mut time,
                    &self.decoder,
                    memory,
                ) {
                    Ok(Outcome::Keep) => {}
                    Ok(Outcome::Drop) => {
                        work.counts.filtered += 1;
                        continue;
                    }
                    Ok(Outcome::Duplicate) => {
                        work.counts.duplicates += 1;
                        continue;
                    }
                    Err(reason) => {
                        work.counts.transform_failed += 1;
                        work.dead.push(dead(Reason::Transform(reason)));
                        continue;
                    }
                }
            }
            if let (Some(windowing), Some(additions)) = (&self.windowing, &mut work.additions) {
                if let Some(rule) = &epoch.lateness {
                    let lateness = rule.lateness(time);
                    work.counts.late_windows += u64::from(lateness.closed);
                    if lateness.is_late() {
                        work.counts.late += 1;
                        if self.late_policy == LateEventPolicy::DeadLetter {
                            let watermark = rule.watermark().unwrap_or_default();
                            work.dead.push(dead(Reason::Late {
                                event_time: rfc3339(time),
                                watermark: rfc3339(watermark),
                            }));
                        }
                        continue;
                    }
                }
                inputs.clear();
                let mut bad_input = None;
                for (slot, presence_only) in &windowing.inputs {
                    let value = slot.map_or(&FieldValue::Int(1), |slot| &values[slot]);
                    inputs.push(match (presence_only, value) {
                        (_, FieldValue::Missing | FieldValue::Null) => None,
                        (true, _) => Some(1.0),
                        (false, value) => match value.as_number() {
                            Ok(number) => number,
                            Err(reason) => {
                                bad_input = Some(reason);
                                None
                            }
                        },
                    });
                }
                if let Some(reason) = bad_input {
                    work.counts.malformed += 1;
                    work.dead.push(dead(Reason::Malformed(reason)));
                    continue;
                }
                key.clear();
                for slot in &windowing.group_slots {
                    GroupKey::encode_value(&values[*slot], &mut key);
                }
                additions.add(time, &key, &inputs);
            }
            if let Some(events) = &mut events {
                let event = merge_computed(record.payload, &self.computed, &values);
                events.push(partition, record.offset, time, &event);
            }
        }
        work.events = events.map(EventRows::finish).transpose()?;
        Ok(work)
    }
}
