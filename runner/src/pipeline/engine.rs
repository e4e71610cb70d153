//! The per-event work of an epoch: decode, note the partition's event-time
//! progress, transform, drop late events, feed the windows; and at the
//! epoch's end, advance the watermark and turn windows into rows. Knows
//! nothing of sources, sinks or storage.
//!
//! A partition's event-time progress comes from every record with a valid
//! time, before transforms (as Flink's per-partition watermarks do): events
//! a filter drops, or that are late, still move it, so a partition of
//! heartbeats cannot hold the watermark back. A time further ahead of the
//! clock than `maxEventTimeAhead` (measured from when the epoch was planned,
//! so a replay decides the same) is malformed and moves nothing.

use std::sync::Arc;

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

use crate::{
    checkpoint::EpochPlan,
    dead_letter::{DeadEvent, Reason},
    decode::{Decoder, FieldValue},
    source::{Chunk, PartitionId},
    transform::{self, Clock, DedupState, Outcome, TransformError, Transforms},
    window::{AggregateKind, GroupKey, WindowKind, WindowRows, WindowState, Windows},
};

/// Why a pipeline spec cannot run.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Transform(#[from] TransformError),
    #[error("spec.window: {0}")]
    Window(String),
    #[error("building output rows: {0}")]
    Arrow(#[from] ArrowError),
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
    pub dead: Vec<DeadEvent>,
    pub counts: EpochCounts,
}

struct WindowStage {
    windows: Windows,
    rows: WindowRows,
    group_slots: Vec<usize>,
    /// Per aggregate: the input field's slot (`None`: `count: {}`), and
    /// whether only presence matters (`count` with a field).
    inputs: Vec<(Option<usize>, bool)>,
}

/// The epoch being processed.
pub struct EpochRun {
    partitions: Vec<PartitionId>,
    /// Per range: the largest valid event time read, before transforms.
    max_time: Vec<Option<i64>>,
    /// Event times after this are malformed (milliseconds since the Unix epoch).
    time_ceiling: i64,
    dead: Vec<DeadEvent>,
    counts: EpochCounts,
    events: Option<EventRows>,
}

pub struct Engine {
    decoder: Decoder,
    transforms: Transforms,
    /// Computed fields (name, slot), merged into event rows.
    computed: Vec<(String, usize)>,
    window: Option<WindowStage>,
    late_policy: LateEventPolicy,
    wants_events: bool,
    /// `spec.window.maxEventTimeAhead` in milliseconds (no bound without a window).
    max_time_ahead: Option<i64>,
}

impl Engine {
    /// `wants_events`: some sink reads raw events.
    pub fn new(spec: &StreamPipelineSpec, wants_events: bool) -> Result<Self, EngineError> {
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
        let transforms = Transforms::new(&spec.transforms, slot)?;
        let computed = spec
            .transforms
            .iter()
            .filter_map(|t| t.compute.as_ref())
            .filter_map(|c| Some((c.field.clone(), decoder.slot(&c.field)?)))
            .collect();
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
                let windows = Windows::new(
                    kind,
                    window.watermark.as_millis_i64(),
                    named.iter().map(|(_, k)| *k).collect(),
                );
                Some(WindowStage {
                    windows: match window.output_mode {
                        OutputMode::Append => windows,
                        OutputMode::Update => windows.emitting_updates(),
                    },
                    rows: WindowRows::new(&window.group_by, &named),
                    group_slots,
                    inputs,
                })
            }
        };
        Ok(Self {
            decoder,
            transforms,
            computed,
            window,
            late_policy: spec.late_events,
            wants_events,
            max_time_ahead: spec
                .window
                .as_ref()
                .map(|w| w.max_event_time_ahead.as_millis_i64()),
        })
    }

    /// Schema of window rows, when the pipeline has windows.
    pub fn window_schema(&self) -> Option<SchemaRef> {
        self.window.as_ref().map(|w| w.rows.schema())
    }

    /// The watermark in force (milliseconds since the Unix epoch).
    pub fn watermark(&self) -> Option<i64> {
        self.window.as_ref().and_then(|w| w.windows.watermark())
    }

    /// Open (pane or session, key) entries, for metrics.
    pub fn open_entries(&self) -> usize {
        self.window.as_ref().map_or(0, |w| w.windows.open_entries())
    }

    pub fn snapshot(&self) -> WindowState {
        self.window
            .as_ref()
            .map(|w| w.windows.snapshot())
            .unwrap_or_default()
    }

    /// The dedup transforms' memory, in transform order.
    pub fn dedup_snapshot(&self) -> Vec<DedupState> {
        self.transforms.snapshot()
    }

    /// Ids remembered by dedup transforms, for metrics.
    pub fn remembered_ids(&self) -> usize {
        self.transforms.remembered_ids()
    }

    pub fn restore(&mut self, state: WindowState, dedup: Vec<DedupState>) {
        if let Some(window) = &mut self.window {
            window.windows.restore(state);
        }
        self.transforms.restore(dedup);
    }

    pub fn begin_epoch(&self, plan: &EpochPlan) -> EpochRun {
        let ranges = &plan.ranges;
        EpochRun {
            partitions: ranges.iter().map(|r| r.partition.clone()).collect(),
            max_time: vec![None; ranges.len()],
            time_ceiling: match (plan.planned_at, self.max_time_ahead) {
                (Some(planned_at), Some(ahead)) => planned_at.saturating_add(ahead),
                _ => i64::MAX,
            },
            dead: Vec::new(),
            counts: EpochCounts::default(),
            events: self.wants_events.then(EventRows::default),
        }
    }

    /// Processes one chunk of the epoch.
    pub fn process(&mut self, run: &mut EpochRun, chunk: &Chunk) {
        let range = chunk
            .range_index
            .min(run.partitions.len().saturating_sub(1));
        let partition = &run.partitions[range];
        let mut values: Vec<FieldValue<'_>> = Vec::with_capacity(self.decoder.paths().len());
        let mut key = Vec::with_capacity(64);
        let mut inputs: Vec<Option<f64>> = Vec::new();
        let mut max_time = run.max_time[range];
        for rejected in chunk.rejected() {
            run.counts.malformed += 1;
            run.dead.push(DeadEvent {
                reason: Reason::Malformed(rejected.reason.clone()),
                partition: partition.clone(),
                offset: rejected.offset,
                payload: rejected.payload.clone(),
                extras: None,
            });
        }
        for record in chunk.iter() {
            run.counts.records += 1;
            let dead = |reason| DeadEvent::new(reason, partition, &record);
            let mut time = match self.decoder.decode(record.payload, &mut values) {
                Ok(time) if time > run.time_ceiling => {
                    run.counts.malformed += 1;
                    run.dead.push(dead(Reason::Malformed(format!(
                        "the event time {} is after {}: further ahead of the clock (when its epoch was planned) than spec.window.maxEventTimeAhead allows",
                        rfc3339(time),
                        rfc3339(run.time_ceiling),
                    ))));
                    continue;
                }
                Ok(time) => time,
                Err(reason) => {
                    run.counts.malformed += 1;
                    run.dead.push(dead(Reason::Malformed(reason)));
                    continue;
                }
            };
            max_time = Some(max_time.map_or(time, |max| max.max(time)));
            if !self.transforms.is_empty() {
                match self
                    .transforms
                    .apply(record.payload, &mut values, &mut time, &self.decoder)
                {
                    Ok(Outcome::Keep) => {}
                    Ok(Outcome::Drop) => {
                        run.counts.filtered += 1;
                        continue;
                    }
                    Ok(Outcome::Duplicate) => {
                        run.counts.duplicates += 1;
                        continue;
                    }
                    Err(reason) => {
                        run.counts.transform_failed += 1;
                        run.dead.push(dead(Reason::Transform(reason)));
                        continue;
                    }
                }
            }
            if let Some(stage) = &mut self.window {
                let lateness = stage.windows.lateness(time);
                run.counts.late_windows += u64::from(lateness.closed);
                if lateness.is_late() {
                    run.counts.late += 1;
                    if self.late_policy == LateEventPolicy::DeadLetter {
                        let watermark = stage.windows.watermark().unwrap_or_default();
                        run.dead.push(dead(Reason::Late {
                            event_time: rfc3339(time),
                            watermark: rfc3339(watermark),
                        }));
                    }
                    continue;
                }
                inputs.clear();
                let mut bad_input = None;
                for (slot, presence_only) in &stage.inputs {
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
                    run.counts.malformed += 1;
                    run.dead.push(dead(Reason::Malformed(reason)));
                    continue;
                }
                key.clear();
                for slot in &stage.group_slots {
                    GroupKey::encode_value(&values[*slot], &mut key);
                }
                stage.windows.add(time, &key, &inputs);
            }
            if let Some(events) = &mut run.events {
                let event = merge_computed(record.payload, &self.computed, &values);
                events.push(partition, record.offset, time, &event);
            }
        }
        run.max_time[range] = max_time;
    }

    /// Ends the epoch: advances the watermark and emits closed windows.
    pub fn finish_epoch(
        &mut self,
        run: EpochRun,
        plan: &EpochPlan,
    ) -> Result<EpochOutput, EngineError> {
        let mut counts = run.counts;
        let maxima: Vec<_> = run.partitions.into_iter().zip(run.max_time).collect();
        let progressed = maxima
            .iter()
            .filter(|(_, max)| max.is_some())
            .map(|(partition, _)| partition.clone())
            .collect();
        let windows = match &mut self.window {
            None => None,
            Some(stage) => {
                let closed = stage.windows.advance(&maxima, &plan.idle);
                counts.windows = closed.len() as u64;
                Some(stage.rows.batch(&closed)?)
            }
        };
        self.transforms.finish_epoch(match &self.window {
            Some(stage) => Clock::Watermark(stage.windows.watermark()),
            None => Clock::NewestEvent,
        });
        let events = run.events.map(EventRows::finish).transpose()?;
        Ok(EpochOutput {
            progressed,
            windows,
            events,
            dead: run.dead,
            counts,
        })
    }
}

/// RFC 3339 text of a time in milliseconds.
pub fn rfc3339(millis: i64) -> String {
    Timestamp::from_millisecond(millis)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| millis.to_string())
}

/// The event's JSON text, with computed fields set (parsed only when there are any).
fn merge_computed<'a>(
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
struct EventRows {
    stream: StringBuilder,
    partition: Int32Builder,
    offset: Int64Builder,
    event_time: TimestampMicrosecondBuilder,
    event: StringBuilder,
}

impl EventRows {
    fn push(&mut self, partition: &PartitionId, offset: i64, time: i64, event: &str) {
        self.stream.append_value(&partition.stream);
        self.partition.append_value(partition.partition);
        self.offset.append_value(offset);
        self.event_time.append_value(time * 1000);
        self.event.append_value(event);
    }

    fn finish(mut self) -> Result<RecordBatch, ArrowError> {
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
    use super::*;
    use crate::source::{PartitionRange, Position};

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
        engine.process(&mut run, &chunk);
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
        let mut engine = Engine::new(&spec(serde_json::json!({})), false).unwrap();
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
        let mut engine = Engine::new(&spec(serde_json::json!({})), false).unwrap();
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
}
