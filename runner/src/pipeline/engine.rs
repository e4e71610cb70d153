//! The per-event work of an epoch: decode, note the partition's event-time
//! progress, transform, drop late events, feed the windows; and at the
//! epoch's end, advance the watermark and turn windows into rows. Knows
//! nothing of sinks or storage, and of sources only the chunks they read.
//!
//! A partition's event-time progress comes from every record with a valid
//! time, before transforms (as Flink's per-partition watermarks do): events
//! a filter drops, or that are late, still move it, so a partition of
//! heartbeats cannot hold the watermark back. A time further ahead of the
//! clock than `maxEventTimeAhead` (measured from when the epoch was planned,
//! so a replay decides the same) is malformed and moves nothing.
//!
//! Chunks are processed on worker threads ([`super::workers`]) when the
//! engine has several and no step depends on the events before it (dedup,
//! the key-group stage's repartition records): everything an event's fate
//! depends on is fixed for the epoch (the plan, the watermark in force), and
//! the chunks' results are added to the epoch in the order the chunks were
//! read, so the output is the one a single thread produces.

use std::sync::{Arc, PoisonError};

use arrow::{
    array::{
        Array, ArrayRef, AsArray, Int32Builder, Int64Builder, RecordBatch, StringBuilder,
        TimestampMicrosecondBuilder,
    },
    datatypes::{DataType, Field, Int32Type, Int64Type, Schema, SchemaRef, TimeUnit},
    error::ArrowError,
};
use jiff::Timestamp;
use sluice_crds::{LateEventPolicy, OutputMode, StreamPipelineSpec};

use super::{
    events::{EpochInputs, EventStage, Windowing},
    workers::{ChunkError, Drained, Outcome, Pending, Workers},
};
use crate::{
    checkpoint::EpochPlan,
    dead_letter::{DeadEvent, Reason},
    decode::{Decoder, FieldValue},
    shuffle::{KeyGroups, KeyGroupsState, Partials, ShuffleRecord},
    source::{Chunk, PartitionId, SharedFeed, SourceError},
    transform::{self, Clock, DedupMemory, DedupState, TransformError, Transforms},
    window::{AggregateKind, WindowKind, WindowRows, WindowState, Windows},
};

/// What an engine does with the events it keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Computes the windows itself (one replica, or no window).
    Whole,
    /// The source stage of one of several replicas: pre-aggregates for the
    /// key groups (see `shuffle`).
    SourceStage {
        replica: u32,
        replicas: u32,
        key_groups: u32,
    },
    /// The key-group stage: its input is the repartition topic, not events.
    KeyGroupStage,
}

/// Why a pipeline spec cannot run.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Transform(#[from] TransformError),
    #[error("spec.window: {0}")]
    Window(String),
    #[error("building output rows: {0}")]
    Arrow(#[from] ArrowError),
    #[error(transparent)]
    KeyGroup(#[from] crate::shuffle::KeyGroupError),
    #[error("repartition topic record {0}")]
    Repartition(String),
    #[error(transparent)]
    Chunk(#[from] ChunkError),
    #[error("cannot start the worker threads: {0}")]
    Workers(#[from] rayon::ThreadPoolBuildError),
}

/// Counts of one epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EpochCounts {
    /// Records read.
    pub records: u64,
    pub malformed: u64,
    pub transform_failed: u64,
    pub filtered: u64,
    /// Events dropped by dedup transforms.
    pub duplicates: u64,
    pub late: u64,
    /// Window memberships dropped because the window had closed: all of a
    /// late event's windows, and the closed ones of an event still counted
    /// in others.
    pub late_windows: u64,
    /// Event rows a sink refused for their content.
    pub refused: u64,
    /// Window rows emitted.
    pub windows: u64,
}

impl EpochCounts {
    /// Events sent to the dead-letter output.
    pub fn dead_lettered(&self) -> u64 {
        self.malformed + self.transform_failed + self.late + self.refused
    }
}

impl std::ops::AddAssign for EpochCounts {
    fn add_assign(&mut self, other: Self) {
        // Destructured, so that a new count cannot be left out of the totals.
        let Self {
            records,
            malformed,
            transform_failed,
            filtered,
            duplicates,
            late,
            late_windows,
            refused,
            windows,
        } = other;
        self.records += records;
        self.malformed += malformed;
        self.transform_failed += transform_failed;
        self.filtered += filtered;
        self.duplicates += duplicates;
        self.late += late;
        self.late_windows += late_windows;
        self.refused += refused;
        self.windows += windows;
    }
}

/// What one epoch produced.
pub struct EpochOutput {
    /// Partitions that read at least one record with a valid event time.
    pub progressed: Vec<PartitionId>,
    pub windows: Option<RecordBatch>,
    pub events: Option<RecordBatch>,
    /// The source stage's records for the repartition topic, by key group.
    pub shuffle: crate::shuffle::Routed,
    pub dead: Vec<DeadEvent>,
    pub counts: EpochCounts,
}

/// Where window state lives, by [`Role`].
enum Aggregation {
    Windows(Windows),
    Partials {
        partials: Partials,
        replica: u32,
        replicas: u32,
    },
    KeyGroups(KeyGroups),
}

struct WindowStage {
    aggregation: Aggregation,
    rows: WindowRows,
}

/// The epoch being processed.
pub struct EpochRun {
    inputs: Arc<EpochInputs>,
    /// Per range: the largest valid event time read, before transforms.
    max_time: Vec<Option<i64>>,
    dead: Vec<DeadEvent>,
    counts: EpochCounts,
    /// Event rows, one batch per chunk, when a sink reads events.
    events: Vec<RecordBatch>,
    /// Chunks on worker threads.
    pending: Pending,
    /// The first chunk or repartition record that could not be processed:
    /// the epoch fails.
    failure: Option<EngineError>,
}

pub struct Engine {
    stage: Arc<EventStage>,
    /// The dedup steps' memory: with dedup steps, chunks are processed here,
    /// one after the other.
    memory: DedupMemory,
    window: Option<WindowStage>,
    wants_events: bool,
    /// `spec.window.maxEventTimeAhead` in milliseconds (no bound without a window).
    max_time_ahead: Option<i64>,
    /// Worker threads, when there are several and chunks may use them.
    workers: Option<Workers>,
}

impl Engine {
    /// `wants_events`: some sink reads raw events.
    pub fn new(
        spec: &StreamPipelineSpec,
        wants_events: bool,
        role: Role,
    ) -> Result<Self, EngineError> {
        let mut fields = transform::referenced_fields(&spec.transforms)?;
        let mut aggregates = Vec::new();
        if let Some(window) = &spec.window {
            fields.extend(window.group_by.iter().cloned());
            for aggregation in &window.aggregations {
                let (kind, field) = AggregateKind::from_spec(aggregation).ok_or_else(|| {
                    EngineError::Window(format!(
                        "aggregation {} sets no function",
                        aggregation.name
                    ))
                })?;
                fields.extend(field.map(str::to_owned));
                aggregates.push((aggregation.name.clone(), kind, field.map(str::to_owned)));
            }
        }
        let decoder = Decoder::new(&spec.format.json, fields);
        let slot = |path: &str| decoder.slot(path);
        let (transforms, memory) = Transforms::new(&spec.transforms, slot)?;
        let computed = spec
            .transforms
            .iter()
            .filter_map(|t| t.compute.as_ref())
            .filter_map(|c| Some((c.field.clone(), decoder.slot(&c.field)?)))
            .collect();
        let mut windowing = None;
        let window = match &spec.window {
            None => None,
            Some(window) => {
                let kind = WindowKind::from_spec(window).ok_or_else(|| {
                    EngineError::Window("set exactly one positive window shape".into())
                })?;
                let group_slots = window
                    .group_by
                    .iter()
                    .filter_map(|p| decoder.slot(p))
                    .collect();
                let inputs = aggregates
                    .iter()
                    .map(|(_, kind, field)| {
                        let slot = field.as_deref().and_then(|f| decoder.slot(f));
                        (slot, *kind == AggregateKind::Count)
                    })
                    .collect();
                let named: Vec<(String, AggregateKind)> =
                    aggregates.iter().map(|(n, k, _)| (n.clone(), *k)).collect();
                let delay = window.watermark.as_millis_i64();
                let kinds: Vec<AggregateKind> = named.iter().map(|(_, k)| *k).collect();
                let output_mode = window.output_mode;
                let new_windows = move || {
                    let windows = Windows::new(kind, delay, kinds.clone());
                    match output_mode {
                        OutputMode::Append => windows,
                        OutputMode::Update => windows.emitting_updates(),
                    }
                };
                windowing = Some(Windowing {
                    group_slots,
                    inputs,
                    pane: new_windows().pane(),
                    aggregates: named.iter().map(|(_, k)| *k).collect(),
                });
                let aggregation = match role {
                    Role::Whole => Aggregation::Windows(new_windows()),
                    Role::SourceStage {
                        replica,
                        replicas,
                        key_groups,
                    } => {
                        let pane = new_windows().pane().ok_or_else(|| {
                            EngineError::Window(
                                "session windows run on one replica (spec.parallelism: 1)".into(),
                            )
                        })?;
                        let kinds = named.iter().map(|(_, k)| *k).collect();
                        Aggregation::Partials {
                            partials: Partials::new(pane, key_groups, kinds),
                            replica,
                            replicas,
                        }
                    }
                    Role::KeyGroupStage => Aggregation::KeyGroups(KeyGroups::new(new_windows)),
                };
                Some(WindowStage {
                    aggregation,
                    rows: WindowRows::new(&window.group_by, &named),
                })
            }
        };
        Ok(Self {
            stage: Arc::new(EventStage {
                decoder,
                transforms,
                computed,
                windowing,
                late_policy: spec.late_events,
            }),
            memory,
            window,
            wants_events,
            max_time_ahead: spec
                .window
                .as_ref()
                .map(|w| w.max_event_time_ahead.as_millis_i64()),
            workers: None,
        })
    }

    /// Processes chunks on `threads` worker threads, when that can give the
    /// output one thread gives: not with dedup steps (each event's fate
    /// depends on the ids before it) nor in the key-group stage (its records
    /// apply in order).
    pub fn with_workers(mut self, threads: usize) -> Result<Self, EngineError> {
        let sequential = self.stage.transforms.has_dedup()
            || matches!(
                self.window.as_ref().map(|w| &w.aggregation),
                Some(Aggregation::KeyGroups(_))
            );
        self.workers = if threads > 1 && !sequential {
            Some(Workers::new(threads)?)
        } else {
            None
        };
        Ok(self)
    }

    /// Threads chunks are processed on.
    pub fn threads(&self) -> usize {
        self.workers.as_ref().map_or(1, Workers::threads)
    }

    /// Schema of window rows, when the pipeline has windows.
    pub fn window_schema(&self) -> Option<SchemaRef> {
        self.window.as_ref().map(|w| w.rows.schema())
    }

    /// The watermark in force (milliseconds since the Unix epoch); for key
    /// groups the lowest of theirs; none in a source stage.
    pub fn watermark(&self) -> Option<i64> {
        match &self.window.as_ref()?.aggregation {
            Aggregation::Windows(windows) => windows.watermark(),
            Aggregation::KeyGroups(groups) => groups.watermark(),
            Aggregation::Partials { .. } => None,
        }
    }

    /// Whether this engine has a watermark to report (it computes windows).
    pub fn computes_windows(&self) -> bool {
        self.window.is_some() && !self.role_is_source_stage()
    }

    /// A source stage: its windows are computed in key groups elsewhere.
    pub fn role_is_source_stage(&self) -> bool {
        self.window
            .as_ref()
            .is_some_and(|w| matches!(w.aggregation, Aggregation::Partials { .. }))
    }

    /// Open (pane or session, key) entries, for metrics.
    pub fn open_entries(&self) -> usize {
        match self.window.as_ref().map(|w| &w.aggregation) {
            Some(Aggregation::Windows(windows)) => windows.open_entries(),
            Some(Aggregation::KeyGroups(groups)) => groups.open_entries(),
            Some(Aggregation::Partials { .. }) | None => 0,
        }
    }

    pub fn snapshot(&self) -> WindowState {
        match self.window.as_ref().map(|w| &w.aggregation) {
            Some(Aggregation::Windows(windows)) => windows.snapshot(),
            _ => WindowState::default(),
        }
    }

    pub fn key_groups_snapshot(&self) -> KeyGroupsState {
        match self.window.as_ref().map(|w| &w.aggregation) {
            Some(Aggregation::KeyGroups(groups)) => groups.snapshot(),
            _ => KeyGroupsState::default(),
        }
    }

    /// The dedup transforms' memory, in transform order.
    pub fn dedup_snapshot(&self) -> Vec<DedupState> {
        self.memory.snapshot()
    }

    /// Ids remembered by dedup transforms, for metrics.
    pub fn remembered_ids(&self) -> usize {
        self.memory.remembered_ids()
    }

    pub fn restore(
        &mut self,
        state: WindowState,
        key_groups: KeyGroupsState,
        dedup: Vec<DedupState>,
    ) {
        match self.window.as_mut().map(|w| &mut w.aggregation) {
            Some(Aggregation::Windows(windows)) => windows.restore(state),
            Some(Aggregation::KeyGroups(groups)) => groups.restore(key_groups),
            Some(Aggregation::Partials { .. }) | None => {}
        }
        self.memory.restore(dedup);
    }

    pub fn begin_epoch(&mut self, plan: &EpochPlan) -> EpochRun {
        let ranges = &plan.ranges;
        if let Some(WindowStage {
            aggregation: Aggregation::Partials { partials, .. },
            ..
        }) = &mut self.window
        {
            partials.begin(ranges.len());
        }
        let lateness = match self.window.as_ref().map(|w| &w.aggregation) {
            Some(Aggregation::Windows(windows)) => Some(windows.lateness_rule()),
            _ => None,
        };
        EpochRun {
            inputs: Arc::new(EpochInputs {
                partitions: ranges.iter().map(|r| r.partition.clone()).collect(),
                time_ceiling: match (plan.planned_at, self.max_time_ahead) {
                    (Some(planned_at), Some(ahead)) => planned_at.saturating_add(ahead),
                    _ => i64::MAX,
                },
                lateness,
                wants_events: self.wants_events,
            }),
            max_time: vec![None; ranges.len()],
            dead: Vec::new(),
            counts: EpochCounts::default(),
            events: Vec::new(),
            pending: Pending::default(),
            failure: None,
        }
    }

    /// Processes one chunk of the epoch: hands it to a worker, or processes
    /// it here; results are added to the epoch in chunk order.
    pub fn process(&mut self, run: &mut EpochRun, chunk: Chunk) {
        if let Some(WindowStage {
            aggregation: Aggregation::KeyGroups(groups),
            ..
        }) = &mut self.window
        {
            apply_repartition_records(groups, run, &chunk, self.stage.late_policy);
            return;
        }
        match &self.workers {
            Some(workers) => {
                run.pending.send(workers, &self.stage, &run.inputs, chunk);
                let ready = run.pending.take(workers, false);
                for outcome in ready {
                    self.absorb(run, outcome);
                }
            }
            None => {
                let outcome = self.stage.process(&run.inputs, &chunk, &mut self.memory);
                self.absorb(run, outcome);
            }
        }
    }

    /// Processes the chunks `feed` holds: the worker threads take them
    /// themselves, each reading the chunk it then processes, or they are
    /// taken here one by one. Results are added in the order the chunks
    /// were read, after those of chunks handed over before.
    pub async fn process_feed(
        &mut self,
        run: &mut EpochRun,
        feed: SharedFeed,
    ) -> Result<(), SourceError> {
        let Some(workers) = &self.workers else {
            loop {
                let chunk = feed
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .next_chunk()?;
                let Some(chunk) = chunk else {
                    return Ok(());
                };
                self.process(run, chunk);
            }
        };
        let earlier = run.pending.take(workers, true);
        let drained = workers.drain(feed, Arc::clone(&self.stage), Arc::clone(&run.inputs));
        for outcome in earlier {
            self.absorb(run, outcome);
        }
        let Drained { outcomes, failure } = drained.await.unwrap_or_else(|_| Drained {
            outcomes: vec![Err(ChunkError::WorkersLost)],
            failure: None,
        });
        for outcome in outcomes {
            self.absorb(run, outcome);
        }
        failure.map_or(Ok(()), Err)
    }

    /// Adds one chunk's result to the epoch (chunks in the order they were read).
    fn absorb(&mut self, run: &mut EpochRun, outcome: Outcome) {
        let work = match outcome {
            Ok(work) => work,
            Err(error) => {
                run.failure.get_or_insert(error.into());
                return;
            }
        };
        run.counts += work.counts;
        if let Some(max) = work.max_time
            && let Some(range_max) = run.max_time.get_mut(work.range)
        {
            *range_max = Some(range_max.map_or(max, |m| m.max(max)));
        }
        run.dead.extend(work.dead);
        run.events.extend(work.events);
        if let (Some(additions), Some(stage)) = (work.additions, &mut self.window) {
            match &mut stage.aggregation {
                Aggregation::Windows(windows) => additions.apply_to(windows),
                Aggregation::Partials { partials, .. } => {
                    additions.apply_to(&mut partials.range(work.range));
                }
                Aggregation::KeyGroups(_) => {}
            }
        }
    }

    /// Ends the epoch: advances the watermark and emits closed windows.
    pub fn finish_epoch(
        &mut self,
        run: EpochRun,
        plan: &EpochPlan,
    ) -> Result<EpochOutput, EngineError> {
        let mut run = run;
        if let Some(workers) = &self.workers {
            for outcome in run.pending.take(workers, true) {
                self.absorb(&mut run, outcome);
            }
        }
        if let Some(failure) = run.failure {
            return Err(failure);
        }
        let mut counts = run.counts;
        let mut shuffle = Vec::new();
        let mut clock = Clock::NewestEvent;
        if let Some(WindowStage {
            aggregation:
                Aggregation::Partials {
                    partials,
                    replica,
                    replicas,
                },
            ..
        }) = &mut self.window
        {
            shuffle = partials.finish(&plan.ranges, &run.max_time, &plan.idle, *replica, *replicas);
        }
        let partitions = run.inputs.partitions.iter().cloned();
        let maxima: Vec<_> = partitions.zip(run.max_time).collect();
        let progressed = maxima
            .iter()
            .filter(|(_, max)| max.is_some())
            .map(|(partition, _)| partition.clone())
            .collect();
        let closed = match self.window.as_mut().map(|w| &mut w.aggregation) {
            Some(Aggregation::Windows(windows)) => {
                let closed = windows.advance(&maxima, &plan.idle);
                clock = Clock::Watermark(windows.watermark());
                Some(closed)
            }
            Some(Aggregation::KeyGroups(groups)) => Some(groups.advance()),
            // A source stage's dedup expires ids by the newest event time:
            // the watermark is the key groups'.
            Some(Aggregation::Partials { .. }) | None => None,
        };
        let windows = match (closed, &self.window) {
            (Some(closed), Some(stage)) => {
                counts.windows = closed.len() as u64;
                Some(stage.rows.batch(&closed)?)
            }
            _ => None,
        };
        self.memory.finish_epoch(clock);
        let events = match run.events.split_first() {
            Some((first, _)) if self.wants_events => Some(arrow::compute::concat_batches(
                &first.schema(),
                &run.events,
            )?),
            _ if self.wants_events => Some(EventRows::default().finish()?),
            _ => None,
        };
        Ok(EpochOutput {
            progressed,
            windows,
            events,
            shuffle,
            dead: run.dead,
            counts,
        })
    }
}

/// The key-group stage's work on one chunk of repartition records, in order.
fn apply_repartition_records(
    groups: &mut KeyGroups,
    run: &mut EpochRun,
    chunk: &Chunk,
    late_policy: LateEventPolicy,
) {
    let partitions = &run.inputs.partitions;
    let Some(partition) = partitions.get(chunk.range_index.min(partitions.len().saturating_sub(1)))
    else {
        return;
    };
    let group = u32::try_from(partition.partition).unwrap_or_default();
    for record in chunk.iter() {
        let applied = serde_json::from_slice::<ShuffleRecord>(record.payload)
            .map_err(|error| {
                EngineError::Repartition(format!(
                    "{partition} at offset {}: {error}",
                    record.offset
                ))
            })
            .and_then(|shuffled| {
                Ok(groups.apply(
                    group,
                    shuffled,
                    &mut run.counts,
                    &mut run.dead,
                    late_policy == LateEventPolicy::DeadLetter,
                )?)
            });
        if let Err(error) = applied {
            run.failure.get_or_insert(error);
        }
    }
}

/// RFC 3339 text of a time in milliseconds.
pub fn rfc3339(millis: i64) -> String {
    Timestamp::from_millisecond(millis)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| millis.to_string())
}

/// The event's JSON text, with computed fields set (parsed only when there are any).
pub(super) fn merge_computed<'a>(
    payload: &'a [u8],
    computed: &[(String, usize)],
    values: &[FieldValue<'_>],
) -> std::borrow::Cow<'a, str> {
    let text = String::from_utf8_lossy(payload);
    if computed.is_empty() {
        return text;
    }
    let Ok(serde_json::Value::Object(mut object)) =
        serde_json::from_str::<serde_json::Value>(&text)
    else {
        return text;
    };
    for (name, slot) in computed {
        object.insert(name.clone(), to_json(&values[*slot]));
    }
    serde_json::Value::Object(object).to_string().into()
}

fn to_json(value: &FieldValue<'_>) -> serde_json::Value {
    match value {
        FieldValue::Missing | FieldValue::Null => serde_json::Value::Null,
        FieldValue::Bool(b) => (*b).into(),
        FieldValue::Int(i) => (*i).into(),
        FieldValue::Float(f) => (*f).into(),
        FieldValue::Str(s) => s.as_ref().into(),
        FieldValue::Json(text) => serde_json::from_str(text).unwrap_or(serde_json::Value::Null),
    }
}

/// Builds event rows (the schema is described in [`crate::sink`]).
#[derive(Default)]
pub(super) struct EventRows {
    stream: StringBuilder,
    partition: Int32Builder,
    offset: Int64Builder,
    event_time: TimestampMicrosecondBuilder,
    event: StringBuilder,
}

impl EventRows {
    pub(super) fn push(&mut self, partition: &PartitionId, offset: i64, time: i64, event: &str) {
        self.stream.append_value(&partition.stream);
        self.partition.append_value(partition.partition);
        self.offset.append_value(offset);
        self.event_time.append_value(time * 1000);
        self.event.append_value(event);
    }

    pub(super) fn finish(mut self) -> Result<RecordBatch, ArrowError> {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.stream.finish()),
            Arc::new(self.partition.finish()),
            Arc::new(self.offset.finish()),
            Arc::new(self.event_time.finish().with_timezone("UTC")),
            Arc::new(self.event.finish()),
        ];
        RecordBatch::try_new(event_schema(), columns)
    }
}

/// The event behind row `row` of an event-row batch, for the dead-letter
/// output (a sink refused it).
pub fn event_of_row(
    batch: &RecordBatch,
    row: usize,
    reason: Reason,
) -> Result<DeadEvent, EngineError> {
    let column = |name: &str| {
        batch
            .column_by_name(name)
            .filter(|column| row < column.len())
            .ok_or_else(|| ArrowError::SchemaError(format!("event rows lack row {row} of {name}")))
    };
    let stream = column("stream")?.as_string_opt::<i32>();
    let partition = column("partition")?.as_primitive_opt::<Int32Type>();
    let offset = column("offset")?.as_primitive_opt::<Int64Type>();
    let event = column("event")?.as_string_opt::<i32>();
    let (Some(stream), Some(partition), Some(offset), Some(event)) =
        (stream, partition, offset, event)
    else {
        return Err(
            ArrowError::SchemaError("event rows have unexpected column types".into()).into(),
        );
    };
    Ok(DeadEvent {
        reason,
        partition: PartitionId::new(stream.value(row), partition.value(row)),
        offset: offset.value(row),
        payload: event.value(row).as_bytes().to_vec(),
        extras: None,
    })
}

/// Schema of event rows.
pub fn event_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("stream", DataType::Utf8, false),
        Field::new("partition", DataType::Int32, false),
        Field::new("offset", DataType::Int64, false),
        Field::new(
            "event_time",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new("event", DataType::Utf8, false),
    ]))
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::source::{ChunkFeed, PartitionRange, Position};

    fn spec(extra: serde_json::Value) -> StreamPipelineSpec {
        let mut spec = serde_json::json!({
            "source": {"generator": {}},
            "window": {
                "tumbling": {"size": "1m"},
                "watermark": "0s",
                "groupBy": ["event_type"],
                "aggregations": [{"name": "n", "count": {}}, {"name": "total", "sum": {"field": "cents"}}],
            },
            "sinks": [{"name": "out", "stdout": {}}],
            "checkpoint": {"uri": "/tmp/unused"},
        });
        if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
            spec.extend(extra.clone());
        }
        serde_json::from_value(spec).unwrap()
    }

    fn epoch(engine: &mut Engine, events: &[&str]) -> EpochOutput {
        let range = PartitionRange {
            partition: PartitionId::new("p", 0),
            start: Position::Offset(0),
            end: Position::Offset(events.len() as i64),
        };
        let plan = EpochPlan {
            epoch: 0,
            ranges: vec![range],
            idle: Vec::new(),
            planned_at: Some(
                jiff::Timestamp::from_second(1_795_514_400)
                    .unwrap()
                    .as_millisecond(),
            ),
        };
        let mut run = engine.begin_epoch(&plan);
        let mut chunk = Chunk::new(0);
        for (i, event) in events.iter().enumerate() {
            chunk.push(event.as_bytes(), i as i64);
        }
        engine.process(&mut run, chunk);
        engine.finish_epoch(run, &plan).unwrap()
    }

    #[test]
    fn transforms_filter_and_compute_before_windowing() {
        let mut engine = Engine::new(
            &spec(serde_json::json!({"transforms": [
                {"filter": "event_type != 'heartbeat'"},
                {"compute": {"field": "cents", "expression": "value * 100.0"}},
            ]})),
            false,
            Role::Whole,
        )
        .unwrap();
        let output = epoch(
            &mut engine,
            &[
                r#"{"timestamp":"2026-11-24T10:00:01Z","event_type":"view","value":1.5}"#,
                r#"{"timestamp":"2026-11-24T10:00:02Z","event_type":"heartbeat","value":1.0}"#,
                r#"{"timestamp":"2026-11-24T10:00:03Z","event_type":"view","value":2}"#,
                r#"{"timestamp":"2026-11-24T10:02:00Z","event_type":"click","value":0.5}"#,
            ],
        );
        assert_eq!(output.counts.filtered, 1);
        // `2 * 100.0` mixes int and double, which CEL refuses: dead-lettered, not dropped.
        assert_eq!(output.counts.transform_failed, 1);
        assert!(
            matches!(&output.dead[0].reason, Reason::Transform(r) if r.contains("value * 100.0"))
        );
        let rows = crate::sink::rows_as_json(&[output.windows.unwrap()]).unwrap();
        let rows: Vec<serde_json::Value> = String::from_utf8(rows)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(rows.len(), 1, "{rows:?}");
        assert_eq!(rows[0]["event_type"], "view");
        assert_eq!(rows[0]["n"], 1);
        assert_eq!(rows[0]["total"], 150.0);
    }

    #[test]
    fn a_far_future_event_is_malformed_and_leaves_the_watermark_alone() {
        let mut engine = Engine::new(&spec(serde_json::json!({})), false, Role::Whole).unwrap();
        let output = epoch(
            &mut engine,
            &[
                r#"{"timestamp":"2026-11-24T10:05:00Z","event_type":"view"}"#,
                r#"{"timestamp":"2099-01-01T00:00:00Z","event_type":"view"}"#,
            ],
        );
        assert_eq!(output.counts.malformed, 1);
        assert!(
            matches!(&output.dead[0].reason, Reason::Malformed(r) if r.contains("maxEventTimeAhead")),
            "{:?}",
            output.dead[0].reason
        );
        assert_eq!(engine.watermark(), Some(1_795_514_700_000), "10:05:00");
    }

    #[test]
    fn filtered_events_move_event_time() {
        let mut engine = Engine::new(
            &spec(serde_json::json!({"transforms": [{"filter": "event_type != 'heartbeat'"}]})),
            false,
            Role::Whole,
        )
        .unwrap();
        let output = epoch(
            &mut engine,
            &[
                r#"{"timestamp":"2026-11-24T10:00:30Z","event_type":"view"}"#,
                r#"{"timestamp":"2026-11-24T10:03:00Z","event_type":"heartbeat"}"#,
            ],
        );
        assert_eq!(output.counts.filtered, 1);
        assert_eq!(engine.watermark(), Some(1_795_514_580_000), "10:03:00");
        assert_eq!(output.counts.windows, 1, "the 10:00 window closed");
    }

    #[test]
    fn late_and_malformed_events_are_dead_lettered_and_counted() {
        let mut engine = Engine::new(&spec(serde_json::json!({})), false, Role::Whole).unwrap();
        epoch(
            &mut engine,
            &[r#"{"timestamp":"2026-11-24T10:05:00Z","event_type":"view"}"#],
        );
        let output = epoch(
            &mut engine,
            &[
                r#"{"timestamp":"2026-11-24T10:04:59Z","event_type":"view"}"#,
                r#"{"timestamp":"2026-11-24T10:05:00Z","event_type":"view","cents":"ten"}"#,
                "garbage",
            ],
        );
        assert_eq!((output.counts.late, output.counts.malformed), (1, 2));
        let reasons: Vec<&str> = output.dead.iter().map(|d| d.reason.label()).collect();
        assert_eq!(reasons, vec!["late", "malformed", "malformed"]);
        assert_eq!(output.dead[2].payload, b"garbage");
        assert_eq!(output.dead[2].offset, 2);
    }

    /// Events of `partitions` partitions over `epochs` epochs, keyed by
    /// user but spread over partitions without regard to it: out of order
    /// within 90 s, and in the last epoch some an hour late.
    fn scattered_events(partitions: usize, epochs: usize) -> Vec<Vec<Vec<String>>> {
        let start = 1_795_514_400_000_i64; // 2026-11-24T10:00:00Z
        let mut seed = 7_u64;
        let mut next = move |n: u64| {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            (seed >> 33) % n
        };
        (0..epochs)
            .map(|epoch| {
                (0..partitions)
                    .map(|_| {
                        (0..150)
                            .map(|i| {
                                let base = start + (epoch as i64 * 150 + i) * 2_000;
                                let mut time = base - next(90_000) as i64;
                                if epoch + 1 == epochs && next(20) == 0 {
                                    time -= 3_600_000;
                                }
                                format!(
                                    r#"{{"timestamp":"{}","user":"u{}","value":{}}}"#,
                                    rfc3339(time),
                                    next(13),
                                    next(100)
                                )
                            })
                            .collect()
                    })
                    .collect()
            })
            .collect()
    }

    /// The plan of one epoch reading all of the given partitions' events.
    fn plan_of(
        epoch: u64,
        partitions: &[(i32, &[String], i64)],
        planned_at: Option<i64>,
    ) -> EpochPlan {
        EpochPlan {
            epoch,
            ranges: partitions
                .iter()
                .map(|(partition, events, from)| PartitionRange {
                    partition: PartitionId::new("events", *partition),
                    start: Position::Offset(*from),
                    end: Position::Offset(from + events.len() as i64),
                })
                .collect(),
            idle: Vec::new(),
            planned_at,
        }
    }

    /// Runs one epoch of `engine` over the given partitions' events.
    fn run_epoch(
        engine: &mut Engine,
        epoch: u64,
        partitions: &[(i32, &[String], i64)],
    ) -> EpochOutput {
        let plan = plan_of(epoch, partitions, None);
        let mut run = engine.begin_epoch(&plan);
        for (index, (_, events, from)) in partitions.iter().enumerate() {
            let mut chunk = Chunk::new(index);
            for (i, event) in events.iter().enumerate() {
                chunk.push(event.as_bytes(), from + i as i64);
            }
            engine.process(&mut run, chunk);
        }
        engine.finish_epoch(run, &plan).unwrap()
    }

    /// Chunks handed out in order.
    struct ChunksInOrder(std::vec::IntoIter<Chunk>);

    impl ChunkFeed for ChunksInOrder {
        fn next_chunk(&mut self) -> Result<Option<Chunk>, SourceError> {
            Ok(self.0.next())
        }
    }

    /// Runs one epoch of `engine` with each partition's events cut into
    /// chunks of `chunk_len`, the partitions' chunks interleaved; when
    /// `fed`, the second half of the chunks through a feed.
    fn run_epoch_in_chunks(
        engine: &mut Engine,
        epoch: u64,
        partitions: &[(i32, &[String], i64)],
        chunk_len: usize,
        fed: bool,
    ) -> EpochOutput {
        let plan = plan_of(epoch, partitions, Some(1_795_514_400_000));
        let mut run = engine.begin_epoch(&plan);
        let mut chunks: Vec<Vec<Chunk>> = partitions
            .iter()
            .enumerate()
            .map(|(index, (_, events, from))| {
                events
                    .chunks(chunk_len)
                    .enumerate()
                    .map(|(c, part)| {
                        let mut chunk = Chunk::new(index);
                        for (i, event) in part.iter().enumerate() {
                            chunk.push(event.as_bytes(), from + (c * chunk_len + i) as i64);
                        }
                        chunk
                    })
                    .rev()
                    .collect()
            })
            .collect();
        let mut ordered = Vec::new();
        while chunks.iter().any(|c| !c.is_empty()) {
            for partition in &mut chunks {
                ordered.extend(partition.pop());
            }
        }
        let fed_chunks = if fed {
            ordered.split_off(ordered.len() / 2)
        } else {
            Vec::new()
        };
        for chunk in ordered {
            engine.process(&mut run, chunk);
        }
        let feed: SharedFeed = Arc::new(Mutex::new(ChunksInOrder(fed_chunks.into_iter())));
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(engine.process_feed(&mut run, feed))
            .unwrap();
        engine.finish_epoch(run, &plan).unwrap()
    }

    #[test]
    fn worker_threads_and_chunk_sizes_do_not_change_an_epochs_output() {
        let aggregations = [
            serde_json::json!([{"name": "n", "count": {}}, {"name": "with_value", "count": {"field": "value"}}]),
            serde_json::json!([
                {"name": "n", "count": {}},
                {"name": "total", "sum": {"field": "value"}},
                {"name": "mean", "avg": {"field": "value"}},
                {"name": "low", "min": {"field": "value"}},
            ]),
        ];
        let mut events = scattered_events(3, 4);
        for (epoch, by_partition) in events.iter_mut().enumerate() {
            for (partition, events) in by_partition.iter_mut().enumerate() {
                // Malformed events, and fractional values whose sums depend
                // on the order they are added in.
                events.insert(10 + epoch + partition, "not json".to_owned());
                events[40 + epoch * 7 + partition] = format!(
                    r#"{{"timestamp":"{}","user":"u1","value":{}}}"#,
                    rfc3339(1_795_514_400_000 + epoch as i64 * 300_000),
                    0.1 + (epoch * 3 + partition) as f64 * 1e-17
                );
            }
        }
        for aggregations in aggregations {
            let spec = spec(serde_json::json!({"window": {
                "sliding": {"size": "5m", "slide": "1m"},
                "watermark": "2m",
                "groupBy": ["user"],
                "aggregations": aggregations,
            }}));
            let outputs = |threads: usize, chunk_len: usize, fed: bool| {
                let mut engine = Engine::new(&spec, true, Role::Whole)
                    .unwrap()
                    .with_workers(threads)
                    .unwrap();
                assert_eq!(engine.threads(), threads);
                let outputs: Vec<EpochOutput> = events
                    .iter()
                    .enumerate()
                    .map(|(epoch, by_partition)| {
                        let all: Vec<(i32, &[String], i64)> = by_partition
                            .iter()
                            .enumerate()
                            .map(|(p, e)| (p as i32, e.as_slice(), (epoch * 1000) as i64))
                            .collect();
                        run_epoch_in_chunks(&mut engine, epoch as u64, &all, chunk_len, fed)
                    })
                    .collect();
                (outputs, engine.snapshot())
            };
            for chunk_len in [1000, 7, 1] {
                let (one, one_state) = outputs(1, chunk_len, false);
                let late: u64 = one.iter().map(|o| o.counts.late).sum();
                let dead: usize = one.iter().map(|o| o.dead.len()).sum();
                assert!(late > 0 && dead as u64 > late, "late {late}, dead {dead}");
                assert!(row_lines(&one).len() > 20);
                let ways = [(1, true), (2, false), (2, true), (4, false), (4, true)];
                for (threads, fed) in ways {
                    let (many, state) = outputs(threads, chunk_len, fed);
                    let at = format!("{threads} threads, chunks of {chunk_len}, fed: {fed}");
                    assert_eq!(state, one_state, "{at}");
                    for (a, b) in one.iter().zip(&many) {
                        assert_eq!(a.windows, b.windows, "{at}");
                        assert_eq!(a.events, b.events, "{at}");
                        assert_eq!(a.dead, b.dead, "{at}");
                        assert_eq!(a.counts, b.counts, "{at}");
                        assert_eq!(a.progressed, b.progressed, "{at}");
                    }
                }
            }
        }
    }

    #[test]
    fn dedup_keeps_an_engine_on_one_thread() {
        let spec = spec(serde_json::json!({"transforms": [
            {"dedup": {"idField": "user", "horizon": "10m"}},
        ]}));
        let engine = Engine::new(&spec, false, Role::Whole)
            .unwrap()
            .with_workers(4)
            .unwrap();
        assert_eq!(engine.threads(), 1);
    }

    /// Window rows as sorted lines, whatever epoch or batch wrote them.
    fn row_lines(outputs: &[EpochOutput]) -> Vec<String> {
        let batches: Vec<RecordBatch> = outputs.iter().filter_map(|o| o.windows.clone()).collect();
        let text = arrow::util::pretty::pretty_format_batches(&batches)
            .unwrap()
            .to_string();
        let mut lines: Vec<String> = text
            .lines()
            .skip(3)
            .filter(|line| line.starts_with('|'))
            .map(str::to_owned)
            .collect();
        lines.sort();
        lines
    }

    #[test]
    fn key_groups_of_two_replicas_write_one_engines_rows_and_ignore_replays() {
        let spec = spec(serde_json::json!({"window": {
            "sliding": {"size": "5m", "slide": "1m"},
            "watermark": "2m",
            "groupBy": ["user"],
            "aggregations": [
                {"name": "n", "count": {}},
                {"name": "total", "sum": {"field": "value"}},
                {"name": "low", "min": {"field": "value"}},
                {"name": "high", "max": {"field": "value"}},
                {"name": "mean", "avg": {"field": "value"}},
            ],
        }}));
        let (partitions, epochs, key_groups) = (4, 3, 5);
        let events = scattered_events(partitions, epochs);
        let offset = |epoch: usize| (epoch * 150) as i64;

        let mut whole = Engine::new(&spec, false, Role::Whole).unwrap();
        let mut expected = Vec::new();
        for (epoch, by_partition) in events.iter().enumerate() {
            let all: Vec<(i32, &[String], i64)> = by_partition
                .iter()
                .enumerate()
                .map(|(p, e)| (p as i32, e.as_slice(), offset(epoch)))
                .collect();
            expected.push(run_epoch(&mut whole, epoch as u64, &all));
        }
        let late: u64 = expected.iter().map(|o| o.counts.late).sum();
        assert!(late > 0, "the data has late events");

        let source_stage = |replica| Role::SourceStage {
            replica,
            replicas: 2,
            key_groups,
        };
        let mut sources: Vec<Engine> = (0..2)
            .map(|r| Engine::new(&spec, false, source_stage(r)).unwrap())
            .collect();
        let mut groups: Vec<Engine> = (0..2)
            .map(|_| Engine::new(&spec, false, Role::KeyGroupStage).unwrap())
            .collect();
        let mut actual = Vec::new();
        for (epoch, by_partition) in events.iter().enumerate() {
            // The topic's new records, per key group.
            let mut topic: Vec<Vec<String>> = vec![Vec::new(); key_groups as usize];
            for (replica, engine) in sources.iter_mut().enumerate() {
                let owned: Vec<(i32, &[String], i64)> = by_partition
                    .iter()
                    .enumerate()
                    .filter(|(p, _)| p % 2 == replica)
                    .map(|(p, e)| (p as i32, e.as_slice(), offset(epoch)))
                    .collect();
                let shuffle = run_epoch(engine, epoch as u64, &owned).shuffle;
                let encoded: Vec<(u32, String)> = shuffle
                    .iter()
                    .map(|(g, r)| (*g, serde_json::to_string(r).unwrap()))
                    .collect();
                if replica == 0 && epoch == 1 {
                    // An attempt cut short after a third of its records, then
                    // the replay that completes it, then a second replay.
                    for (g, record) in &encoded[..encoded.len() / 3] {
                        topic[*g as usize].push(record.clone());
                    }
                    for (g, record) in encoded.iter().chain(&encoded) {
                        topic[*g as usize].push(record.clone());
                    }
                } else {
                    for (g, record) in encoded {
                        topic[g as usize].push(record);
                    }
                }
            }
            for (replica, engine) in groups.iter_mut().enumerate() {
                let owned: Vec<(i32, &[String], i64)> = topic
                    .iter()
                    .enumerate()
                    .filter(|(g, _)| g % 2 == replica)
                    .map(|(g, records)| (g as i32, records.as_slice(), 0))
                    .collect();
                actual.push(run_epoch(engine, epoch as u64, &owned));
            }
        }
        let expected_rows = row_lines(&expected);
        assert!(expected_rows.len() > 50, "{} rows", expected_rows.len());
        assert_eq!(row_lines(&actual), expected_rows);
        let actual_late: u64 = actual.iter().map(|o| o.counts.late).sum();
        assert_eq!(actual_late, late, "late events are counted once");
    }
}
