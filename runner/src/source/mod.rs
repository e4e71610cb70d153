//! Where events come from. Every source speaks in *partitions* (a Kafka
//! topic-partition, the file set, the generator's sequence, a REST API's single
//! cursor) and *positions* within them, so one epoch protocol serves them all:
//!
//! 1. [`Source::plan`] decides, for every partition this replica owns, the range
//!    `[start, end)` of the next epoch, starting where the previous epoch ended
//!    (positions the source has never seen start where `startingOffsets` says).
//!    The runner writes the plan to the checkpoint store *before* reading it,
//!    except where only reading finds the ends ([`Planned::Reading`]: the
//!    file source, whose epochs are bounded by lines): the epoch is then read
//!    and processed at once, and its plan written once read, before the
//!    epoch has any output. Processing has no effect outside the process,
//!    and a failure before the plan is written forgets the epoch, which the
//!    next plan reads again from the same start.
//! 2. [`Source::start_epoch`] + [`Source::next_chunk`] read exactly those ranges,
//!    in chunks. On recovery the runner calls them with a plan read back from the
//!    checkpoint store, so a source must be able to re-read any range it planned
//!    earlier (Kafka seeks; the file source seeks to the byte offset; the REST
//!    source refetches from the start cursor up to the end cursor).
//! 3. After the epoch's outputs and checkpoint are durable, [`Source::commit`]
//!    reports the end positions (Kafka commits its consumer group there).

pub mod budget;
mod buffers;
mod eventhub;
mod file;
mod generator;
mod kafka;
mod rest;
mod unassigned;

use std::{
    collections::BTreeMap,
    fmt,
    sync::{Arc, Mutex},
};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use sluice_crds::SourceSpec;

use crate::telemetry::RequestMeter;

use self::buffers::ChunkBuffers;
pub use self::{
    eventhub::event_hub_source,
    file::FileSource,
    generator::GeneratorSource,
    kafka::{KafkaSource, KafkaTopics},
    rest::{RestPosition, RestSource},
};

/// One partition of a source: a Kafka topic and partition number, the file set
/// (`stream` is its path), the generator or a REST API (partition 0).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PartitionId {
    /// Topic, event hub, path or URL.
    pub stream: String,
    /// Partition number within the stream.
    pub partition: i32,
}

impl PartitionId {
    pub fn new(stream: impl Into<String>, partition: i32) -> Self {
        Self {
            stream: stream.into(),
            partition,
        }
    }
}

impl fmt::Display for PartitionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[{}]", self.stream, self.partition)
    }
}

/// A position within a partition: where the next record to read starts.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Position {
    /// A Kafka offset, a byte offset in the file set, a generator sequence number.
    Offset(i64),
    /// An opaque cursor, for sources whose positions are not numbers (REST APIs).
    Cursor(String),
}

/// End positions per partition, as checkpointed after each epoch.
pub type Positions = BTreeMap<PartitionId, Position>;

/// Serialises [`Positions`] as a list of `[partition, position]` pairs (JSON
/// object keys must be strings).
pub mod positions_as_list {
    use serde::{Deserialize, Deserializer, Serializer};

    use super::{PartitionId, Position, Positions};

    pub fn serialize<S: Serializer>(
        positions: &Positions,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(positions.iter())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Positions, D::Error> {
        Ok(Vec::<(PartitionId, Position)>::deserialize(deserializer)?
            .into_iter()
            .collect())
    }
}

/// The part of one partition an epoch reads: `[start, end)`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PartitionRange {
    pub partition: PartitionId,
    pub start: Position,
    pub end: Position,
}

impl PartitionRange {
    /// True when the range holds no record.
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }
}

/// What [`Source::plan`] decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Planned {
    /// Ranges to read, one per owned partition (empty ranges included, so that
    /// the runner knows every partition this replica owns).
    Ranges(Vec<PartitionRange>),
    /// An epoch whose ends only reading it finds (the file source bounds
    /// epochs by lines): these ranges end where they start, and the epoch's
    /// chunks are handed out at once, with no [`Source::start_epoch`]; once
    /// [`Source::next_chunk`] has returned `None`, [`Source::ranges_read`]
    /// gives the ranges read.
    Reading(Vec<PartitionRange>),
    /// A bounded source (a generator with `totalEvents`, files without
    /// `follow`) has nothing left, ever.
    Exhausted,
}

/// Backlog of one partition, for sources that know how far behind they are.
#[derive(Clone, Debug, PartialEq)]
pub struct Backlog {
    pub partition: PartitionId,
    /// Records between the end of the last planned range and the partition's end
    /// (Kafka: the high watermark).
    pub records: i64,
    /// How far behind in time the last record read is, while records are
    /// behind (Kafka: now minus the record's timestamp); 0 when caught up.
    pub seconds: f64,
}

/// Settings every source receives besides its own spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceContext {
    /// This replica's index, `0..replicas`.
    pub replica: u32,
    /// Number of replicas; partition `p` belongs to replica `p % replicas` unless
    /// the source documents another rule. Partitions may appear over time.
    pub replicas: u32,
    /// Upper bound on the records one epoch reads across this replica's
    /// partitions (the source's own `maxOffsetsPerTrigger` when it has one wins).
    pub max_records_per_epoch: i64,
    /// Upper bound on the bytes of the records one epoch reads across this
    /// replica's partitions (`spec.trigger.maxBytes`, else a share of the
    /// memory limit: see [`crate::memory`]). Sources that plan before
    /// reading estimate it from the sizes of the records they read before.
    pub max_bytes_per_epoch: i64,
}

/// Records read from one partition, laid out contiguously so that reading
/// costs no allocation per record: payloads are slices of one buffer.
#[derive(Debug, Default)]
pub struct Chunk {
    /// Index of the partition in the epoch's ranges.
    pub range_index: usize,
    buffer: Vec<u8>,
    records: Vec<RecordSpan>,
    extras: Vec<RecordExtras>,
    rejected: Vec<RejectedRecord>,
    /// Where the buffers go back to when the chunk is dropped.
    recycle: Option<ChunkBuffers>,
}

/// Input a source received but could not turn into records (a REST response
/// that is not JSON, say): it goes to the dead-letter output with the reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RejectedRecord {
    pub payload: Vec<u8>,
    pub offset: i64,
    pub reason: String,
}

#[derive(Clone, Copy, Debug)]
struct RecordSpan {
    start: usize,
    end: usize,
    offset: i64,
}

/// Kafka-style message key and headers; only sources that have them fill them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecordExtras {
    pub key: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
}

/// One record as the pipeline sees it: the original bytes and where they came from.
#[derive(Clone, Copy, Debug)]
pub struct Record<'a> {
    pub payload: &'a [u8],
    /// Kafka offset, byte offset of the line, generator sequence number, or
    /// the record's index within the epoch for cursor sources.
    pub offset: i64,
    pub extras: Option<&'a RecordExtras>,
}

impl Chunk {
    pub fn new(range_index: usize) -> Self {
        Self::from_parts(range_index, Vec::new(), Vec::new(), None)
    }

    /// A chunk made of (empty) `buffer` and `records`; with `recycle`, they
    /// go back there when the chunk is dropped.
    fn from_parts(
        range_index: usize,
        buffer: Vec<u8>,
        records: Vec<RecordSpan>,
        recycle: Option<ChunkBuffers>,
    ) -> Self {
        Self {
            range_index,
            buffer,
            records,
            extras: Vec::new(),
            rejected: Vec::new(),
            recycle,
        }
    }

    /// Appends a record without key or headers.
    pub fn push(&mut self, payload: &[u8], offset: i64) {
        let start = self.buffer.len();
        self.buffer.extend_from_slice(payload);
        self.records.push(RecordSpan {
            start,
            end: self.buffer.len(),
            offset,
        });
    }

    /// Appends a record that has a key or headers. A chunk holds either
    /// records with extras or records without, not a mix.
    pub fn push_with_extras(&mut self, payload: &[u8], offset: i64, extras: RecordExtras) {
        self.push(payload, offset);
        self.extras.push(extras);
    }

    /// Appends input that could not be read as records, with the reason.
    pub fn push_rejected(&mut self, payload: &[u8], offset: i64, reason: String) {
        self.rejected.push(RejectedRecord {
            payload: payload.to_vec(),
            offset,
            reason,
        });
    }

    /// Input rejected by the source, for the dead-letter output.
    pub fn rejected(&self) -> impl Iterator<Item = &RejectedRecord> + '_ {
        self.rejected.iter()
    }

    /// The bytes records are spans of.
    pub fn buffer(&self) -> &[u8] {
        &self.buffer
    }

    /// Appends a record whose payload the caller writes into `buffer()` first
    /// (generators format straight into the chunk).
    pub fn buffer_mut(&mut self) -> &mut Vec<u8> {
        &mut self.buffer
    }

    /// Marks bytes written into `buffer_mut()` as one record.
    pub fn seal(&mut self, bytes: std::ops::Range<usize>, offset: i64) {
        self.records.push(RecordSpan {
            start: bytes.start,
            end: bytes.end,
            offset,
        });
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Total payload bytes.
    pub fn bytes(&self) -> usize {
        self.buffer.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = Record<'_>> + '_ {
        self.records.iter().enumerate().map(|(i, span)| Record {
            payload: &self.buffer[span.start..span.end],
            offset: span.offset,
            extras: self.extras.get(i),
        })
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        if let Some(recycle) = self.recycle.take() {
            recycle.put(
                std::mem::take(&mut self.buffer),
                std::mem::take(&mut self.records),
            );
        }
    }
}

/// Why a source failed.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{source_kind} source: {message}")]
    Unavailable {
        source_kind: &'static str,
        message: String,
    },
    #[error("{source_kind} source: cannot read {path}: {error}")]
    Io {
        source_kind: &'static str,
        path: String,
        error: std::io::Error,
    },
    #[error("{source_kind} source: invalid setting {field}: {message}")]
    InvalidSpec {
        source_kind: &'static str,
        field: &'static str,
        message: String,
    },
    #[error(
        "{source_kind} source: the checkpoint holds position {position:?} for {partition}, which this source cannot use"
    )]
    BadPosition {
        source_kind: &'static str,
        partition: PartitionId,
        position: Position,
    },
    #[error("source kind {0} is not available in this build")]
    NotBuilt(&'static str),
}

/// Chunks taken one at a time, in order, by whichever thread asks
/// ([`Source::feed`]).
pub trait ChunkFeed: Send {
    /// The next chunk, `None` once the epoch's chunks are all taken.
    fn next_chunk(&mut self) -> Result<Option<Chunk>, SourceError>;
}

/// A [`ChunkFeed`] shared by the threads that take from it.
pub type SharedFeed = Arc<Mutex<dyn ChunkFeed>>;

/// A stream of records read epoch by epoch. See the module docs for the protocol.
#[async_trait]
pub trait Source: Send {
    /// Short name for logs and metrics (`kafka`, `file`, …).
    fn kind(&self) -> &'static str;

    /// Plans the next epoch. `committed` holds the end positions of the last
    /// epoch (empty on a fresh start; it may lack partitions that appeared
    /// since). Each range starts at the partition's committed position and is
    /// bounded by the source's per-epoch and per-second limits. May block
    /// briefly (up to about a second) waiting for new data, and may fetch and
    /// buffer records when only fetching reveals where an epoch ends.
    async fn plan(&mut self, committed: &Positions) -> Result<Planned, SourceError>;

    /// Prepares to read exactly `ranges` (a plan made by this process, or one
    /// read back from the checkpoint store after a restart).
    async fn start_epoch(&mut self, ranges: &[PartitionRange]) -> Result<(), SourceError>;

    /// The next chunk of the epoch started by [`Source::start_epoch`], or `None`
    /// once every range has been read to its end.
    async fn next_chunk(&mut self) -> Result<Option<Chunk>, SourceError>;

    /// The rest of the epoch's chunks as a feed the engine's worker threads
    /// take chunks from themselves, each reading the chunk it then
    /// processes, while it is in its core's cache: for sources that read
    /// synchronously and cheaply beside processing (files). `None` (the
    /// default): chunks come from [`Source::next_chunk`], which also
    /// returns `None` once a feed is empty.
    fn feed(&self) -> Option<SharedFeed> {
        None
    }

    /// The ranges of an epoch planned as [`Planned::Reading`], once it has
    /// been read to its end.
    fn ranges_read(&self) -> Result<Vec<PartitionRange>, SourceError> {
        Err(SourceError::Unavailable {
            source_kind: self.kind(),
            message: "this source plans no epoch by reading it".into(),
        })
    }

    /// The epoch ending at `positions` is durable in the sinks and the
    /// checkpoint store; sources with external progress tracking (Kafka
    /// consumer groups) record it there.
    async fn commit(&mut self, positions: &Positions) -> Result<(), SourceError> {
        let _ = positions;
        Ok(())
    }

    /// Records not yet planned, per partition, as of the last [`Source::plan`];
    /// `None` for sources that cannot tell.
    fn backlog(&self) -> Option<Vec<Backlog>> {
        None
    }
}

/// Builds the source a spec names. Sources that need credentials get them
/// from the environment the runner's pod mounts from the referenced Secrets;
/// sources that poll over HTTP count their requests in `requests`. Sources
/// without partitions (generator, file, REST) are read by replica 0 only.
pub fn from_spec(
    spec: &SourceSpec,
    context: &SourceContext,
    requests: &RequestMeter,
) -> Result<Box<dyn Source>, SourceError> {
    let unpartitioned = [
        ("generator", spec.generator.is_some()),
        ("file", spec.file.is_some()),
        ("rest", spec.rest.is_some()),
    ];
    if let Some((kind, _)) = unpartitioned.iter().find(|(_, set)| *set)
        && context.replica > 0
    {
        return Ok(Box::new(unassigned::UnassignedSource::new(kind)));
    }
    if let Some(generator) = &spec.generator {
        return Ok(Box::new(GeneratorSource::new(generator, context)?));
    }
    if let Some(file) = &spec.file {
        return Ok(Box::new(FileSource::new(file, context)?));
    }
    if let Some(kafka) = &spec.kafka {
        return Ok(Box::new(KafkaSource::new(kafka, context)?));
    }
    if let Some(event_hub) = &spec.event_hub {
        return Ok(Box::new(event_hub_source(event_hub, context)?));
    }
    if let Some(rest) = &spec.rest {
        return Ok(Box::new(RestSource::new(
            rest,
            context,
            &crate::secrets::Secrets::from_env(),
            requests.clone(),
        )?));
    }
    Err(SourceError::InvalidSpec {
        source_kind: "unknown",
        field: "spec.source",
        message: "no source is set".into(),
    })
}
