//! Synthetic events `{"timestamp","event_type","key","value"}`, a pure
//! function of (seed, sequence number), so any planned range can be generated
//! again identically after a restart.
//!
//! Event `n` is nominally at `startTime + n × eventSpacing`; its actual time is
//! up to `maxDisorder` earlier (out of order, but never more than `maxDisorder`
//! behind the newest event). A `lateFraction` share of events is instead
//! [`LATE_BY`] older than that: later than any watermark up to an hour allows,
//! once the first epoch has moved the watermark.

use std::{io::Write, time::Instant};

use async_trait::async_trait;
use jiff::Timestamp;
use sluice_crds::GeneratorSource as GeneratorSpec;

use super::{
    Chunk, PartitionId, PartitionRange, Planned, Position, Positions, Source, SourceContext,
    SourceError,
    budget::{EpochBudget, RecordSize},
};

/// How much older than its nominal time (beyond `maxDisorder`) a late event is.
pub const LATE_BY_MILLIS: i64 = 60 * 60 * 1000;
const CHUNK_RECORDS: i64 = 8192;
const KIND: &str = "generator";
/// The generator's stream name carries the start time, so that a pipeline
/// started without `startTime` regenerates the same events after a restart.
const STREAM_PREFIX: &str = "generator@";

pub struct GeneratorSource {
    spec: GeneratorSpec,
    late_threshold: u64,
    /// The epoch's bounds; the bytes from the size of the events generated so far.
    budget: EpochBudget,
    size: RecordSize,
    started: Instant,
    start_millis: Option<i64>,
    first_position: Option<i64>,
    reading: Option<(PartitionRange, i64)>,
}

impl GeneratorSource {
    pub fn new(spec: &GeneratorSpec, context: &SourceContext) -> Result<Self, SourceError> {
        let invalid = |field, message: &str| SourceError::InvalidSpec {
            source_kind: KIND,
            field,
            message: message.into(),
        };
        let start_millis = spec
            .start_time
            .as_deref()
            .map(|text| {
                text.parse::<Timestamp>()
                    .map(|t| t.as_millisecond())
                    .map_err(|e| invalid("spec.source.generator.startTime", &e.to_string()))
            })
            .transpose()?;
        let late_fraction = spec.late_fraction.unwrap_or(0.0);
        if !(0.0..=1.0).contains(&late_fraction) {
            return Err(invalid(
                "spec.source.generator.lateFraction",
                "must be between 0 and 1",
            ));
        }
        Ok(Self {
            spec: spec.clone(),
            late_threshold: (late_fraction * u64::MAX as f64) as u64,
            budget: EpochBudget {
                max_records: context.max_records_per_epoch.max(1),
                max_bytes: context.max_bytes_per_epoch.max(1),
            },
            size: RecordSize::default(),
            started: Instant::now(),
            start_millis,
            first_position: None,
            reading: None,
        })
    }

    fn partition(&self, start_millis: i64) -> PartitionId {
        PartitionId::new(format!("{STREAM_PREFIX}{start_millis}"), 0)
    }

    /// Writes event `n` as one JSON line (without the newline).
    fn write_event(&self, start_millis: i64, n: i64, out: &mut Vec<u8>) {
        let bits = splitmix64(self.spec.seed ^ (n as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let spacing = self.spec.event_spacing.as_millis_i64();
        let disorder = self.spec.max_disorder.as_millis_i64();
        let nominal = start_millis + n.saturating_mul(spacing);
        let behind = if disorder > 0 {
            ((bits >> 20) % (disorder as u64 + 1)) as i64
        } else {
            0
        };
        let late = splitmix64(bits) < self.late_threshold;
        let time = nominal - behind - if late { disorder + LATE_BY_MILLIS } else { 0 };
        let types = &self.spec.event_types;
        let event_type = &types[(bits % types.len() as u64) as usize];
        let key = (bits >> 8) % self.spec.key_count.max(1) as u64;
        let value = (bits >> 40) % 10_000;
        let timestamp = Timestamp::from_millisecond(time).unwrap_or(Timestamp::UNIX_EPOCH);
        // Writing into a Vec cannot fail.
        let _ = write!(
            out,
            r#"{{"timestamp":"{}","event_type":{},"key":"k{key}","value":{}.{:02}}}"#,
            timestamp.strftime("%Y-%m-%dT%H:%M:%S%.3fZ"),
            serde_json::Value::from(event_type.as_str()),
            value / 100,
            value % 100,
        );
    }

    fn start_millis_for(&mut self, committed: &Positions) -> i64 {
        if let Some(start) = self.start_millis {
            return start;
        }
        let resumed = committed
            .keys()
            .find_map(|p| p.stream.strip_prefix(STREAM_PREFIX)?.parse().ok());
        let start = resumed.unwrap_or_else(|| Timestamp::now().as_millisecond());
        self.start_millis = Some(start);
        start
    }
}

/// SplitMix64's finaliser: a fast, well-mixed hash of the sequence number.
fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn offset_of(range_position: &Position, partition: &PartitionId) -> Result<i64, SourceError> {
    match range_position {
        Position::Offset(n) => Ok(*n),
        other => Err(SourceError::BadPosition {
            source_kind: KIND,
            partition: partition.clone(),
            position: other.clone(),
        }),
    }
}

#[async_trait]
impl Source for GeneratorSource {
    fn kind(&self) -> &'static str {
        KIND
    }

    async fn plan(&mut self, committed: &Positions) -> Result<Planned, SourceError> {
        let start_millis = self.start_millis_for(committed);
        let partition = self.partition(start_millis);
        let start = match committed.get(&partition) {
            Some(position) => offset_of(position, &partition)?,
            None => 0,
        };
        let first = *self.first_position.get_or_insert(start);
        let total = self.spec.total_events.unwrap_or(i64::MAX);
        if start >= total {
            return Ok(Planned::Exhausted);
        }
        self.size.settle();
        let most = self.budget.records_of(self.size.estimate());
        let mut end = total.min(start.saturating_add(most));
        if self.spec.events_per_second > 0 {
            let rate = self.spec.events_per_second as f64;
            let mut allowed = first + (self.started.elapsed().as_secs_f64() * rate) as i64;
            if allowed <= start {
                // Nothing due yet: wait for the next event, at most a second.
                let wait = ((start + 1 - allowed) as f64 / rate).min(1.0);
                tokio::time::sleep(std::time::Duration::from_secs_f64(wait)).await;
                allowed = first + (self.started.elapsed().as_secs_f64() * rate) as i64;
            }
            end = end.min(allowed.max(start));
        }
        Ok(Planned::Ranges(vec![PartitionRange {
            partition,
            start: Position::Offset(start),
            end: Position::Offset(end),
        }]))
    }

    async fn start_epoch(&mut self, ranges: &[PartitionRange]) -> Result<(), SourceError> {
        self.reading = match ranges {
            [] => None,
            [range] => {
                let start = offset_of(&range.start, &range.partition)?;
                if let Some(millis) = range
                    .partition
                    .stream
                    .strip_prefix(STREAM_PREFIX)
                    .and_then(|s| s.parse().ok())
                {
                    self.start_millis = Some(millis);
                }
                Some((range.clone(), start))
            }
            [_, extra, ..] => {
                return Err(SourceError::BadPosition {
                    source_kind: KIND,
                    partition: extra.partition.clone(),
                    position: extra.start.clone(),
                });
            }
        };
        Ok(())
    }

    async fn next_chunk(&mut self) -> Result<Option<Chunk>, SourceError> {
        let Some((range, next)) = self.reading.take() else {
            return Ok(None);
        };
        let end = offset_of(&range.end, &range.partition)?;
        if next >= end {
            return Ok(None);
        }
        let start_millis = self.start_millis.unwrap_or_default();
        let stop = end.min(next + CHUNK_RECORDS);
        let mut chunk = Chunk::new(0);
        for n in next..stop {
            let begin = chunk.bytes();
            self.write_event(start_millis, n, chunk.buffer_mut());
            chunk.seal(begin..chunk.bytes(), n);
        }
        self.reading = Some((range, stop));
        self.size.observe_many(chunk.len(), chunk.bytes());
        Ok(Some(chunk))
    }
}
