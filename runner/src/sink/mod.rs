//! Where results go. A sink receives one epoch's rows at a time as Arrow
//! record batches (Delta writes them as Parquet; JSON sinks turn them into
//! JSON objects with `arrow_json`, see [`rows_as_json`]) and must write them
//! exactly once per [`EpochKey`]: after a crash the runner replays the epoch
//! with identical rows, and the sink must recognise it (Delta: transaction
//! identifier; ClickHouse: a deduplication token or ReplacingMergeTree on the
//! row identity; Elasticsearch: document ids from [`row_ids`]).
//!
//! Window rows have the columns `window_start`, `window_end` (UTC timestamps
//! in microseconds), one nullable UTF-8 column per `groupBy` field (named after
//! the field, dots replaced by `_`), then one column per aggregation (`count`:
//! Int64; `sum`, `min`, `max`, `avg`: nullable Float64). A window row's
//! identity is its start, end and group columns: its timestamp and string
//! columns.
//!
//! Event rows (`input: events`) have the columns [`EVENT_COLUMNS`]: `stream`,
//! `partition`, `offset` (the row identity), `event_time`, and `event`, the
//! event as a JSON object (after transforms).

pub mod clickhouse;
pub mod delta;
pub mod elasticsearch;
mod stdout;

use std::sync::Arc;

use arrow::{
    array::{Array, RecordBatch},
    datatypes::{DataType, Schema, SchemaRef},
    error::ArrowError,
};
use async_trait::async_trait;
use sluice_crds::{SinkInput, SinkSpec};

pub use crate::checkpoint::Lane;
use crate::{secrets::Secrets, telemetry::SinkMetrics};

pub use self::{
    clickhouse::ClickHouseSink, delta::DeltaSink, elasticsearch::ElasticsearchSink,
    stdout::StdoutSink,
};

/// The columns of event rows; the first three identify a row.
pub const EVENT_COLUMNS: [&str; 5] = ["stream", "partition", "offset", "event_time", "event"];

/// Identifies one epoch's output of one sink; a sink writes each key at most once.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct EpochKey {
    /// The pipeline's uid (stable across restarts, new for a new pipeline).
    pub pipeline: String,
    /// Whose epoch sequence this is: each replica (and each replica's
    /// key-group stage) has its own.
    pub lane: Lane,
    /// Epoch number, increasing by one per epoch.
    pub epoch: u64,
    /// Sink name from the spec.
    pub sink: String,
}

impl EpochKey {
    /// One string naming the (pipeline, replica, sink) lineage, for sinks that
    /// track the last epoch they hold per writer (Delta's transaction app id).
    pub fn writer_id(&self) -> String {
        format!(
            "sluice-{}-{}-{}",
            self.pipeline,
            self.lane.writer(),
            self.sink
        )
    }

    /// One string naming this exact write, for sinks that deduplicate by token.
    pub fn token(&self) -> String {
        format!("{}-{}", self.writer_id(), self.epoch)
    }
}

/// What a sink did with an epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The rows were written, except `refused` ones.
    Written {
        rows: usize,
        refused: Vec<RefusedRow>,
    },
    /// The sink already held this epoch (a replay after a crash); nothing written.
    AlreadyCommitted,
}

impl WriteOutcome {
    /// Every row written.
    pub fn all(rows: usize) -> Self {
        Self::Written {
            rows,
            refused: Vec::new(),
        }
    }
}

/// An event row the destination refused for its content (a field that
/// conflicts with an Elasticsearch mapping, say). Such rows go to the
/// dead-letter output with the reason; the rest of the epoch is written.
/// Window rows are never refused this way: their shape is fixed, so a
/// refusal means a misconfigured destination and fails the epoch instead.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefusedRow {
    /// Index of the batch among the epoch's rows, and of the row in it.
    pub batch: usize,
    pub row: usize,
    /// The destination's reason.
    pub reason: String,
}

/// Why a sink failed.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("sink {sink}: {message}")]
    Failed { sink: String, message: String },
    #[error("sink {sink}: {error}")]
    Arrow { sink: String, error: ArrowError },
    #[error("sink {sink}: {error}")]
    Delta {
        sink: String,
        error: Box<deltalake::DeltaTableError>,
    },
    /// The destination did not answer, or kept answering with server
    /// errors, through the sink's own retries: the runner backs off and
    /// resumes from its checkpoint.
    #[error("sink {sink}: {message}")]
    Unavailable { sink: String, message: String },
    #[error("sink kind {0} is not available in this build")]
    NotBuilt(&'static str),
}

impl SinkError {
    /// A failed request of sink `sink` to `url`: unavailable when trying
    /// again later may help, failed when the destination refused it as it is.
    pub fn request(sink: &str, url: &str, failure: &crate::http::Failure) -> Self {
        let (sink, message) = (sink.to_owned(), format!("{url}: {}", failure.message()));
        match failure {
            crate::http::Failure::Transient { .. } => Self::Unavailable { sink, message },
            crate::http::Failure::Permanent { .. } => Self::Failed { sink, message },
        }
    }

    /// A destination that may come back by itself (see [`SinkError::Unavailable`]).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Unavailable { .. } => true,
            Self::Delta { error, .. } => delta::is_transient(error),
            Self::Failed { .. } | Self::Arrow { .. } | Self::NotBuilt(_) => false,
        }
    }
}

/// One output of the pipeline.
#[async_trait]
pub trait Sink: Send {
    /// Prepares the destination for rows of `schema` (creates a Delta table,
    /// checks that a ClickHouse table answers). Called before any write, and
    /// again after a transient failure of any sink's `open` (so it must
    /// accept a destination it prepared already).
    async fn open(&mut self, schema: SchemaRef) -> Result<(), SinkError>;

    /// Writes one epoch's rows (possibly none), unless the sink already holds
    /// `key`. Must be atomic per epoch or idempotent per row identity.
    async fn write_epoch(
        &mut self,
        key: &EpochKey,
        rows: &[RecordBatch],
    ) -> Result<WriteOutcome, SinkError>;
}

/// A sink with the name and the rows its spec gives it.
pub struct ConfiguredSink {
    pub name: String,
    pub input: SinkInput,
    pub sink: Box<dyn Sink>,
}

/// Builds the sink a spec names. `window_updates`: window rows are updates
/// (`window.outputMode: update`) that replace earlier rows of their identity.
pub fn from_spec(
    spec: &SinkSpec,
    window_updates: bool,
    metrics: &SinkMetrics,
) -> Result<ConfiguredSink, SinkError> {
    Ok(ConfiguredSink {
        name: spec.name.clone(),
        input: spec.input,
        sink: build(
            spec,
            window_updates && spec.input == SinkInput::Windows,
            metrics,
        )?,
    })
}

fn build(
    spec: &SinkSpec,
    updates: bool,
    metrics: &SinkMetrics,
) -> Result<Box<dyn Sink>, SinkError> {
    if let Some(delta) = &spec.delta {
        return Ok(Box::new(DeltaSink::new(&spec.name, delta, updates)));
    }
    if spec.stdout.is_some() {
        return Ok(Box::new(StdoutSink::new(&spec.name)));
    }
    if let Some(clickhouse) = &spec.clickhouse {
        let meter = metrics.meter(&spec.name);
        let sink = ClickHouseSink::new(&spec.name, clickhouse, &Secrets::from_env(), meter)?;
        return Ok(Box::new(sink));
    }
    if let Some(elasticsearch) = &spec.elasticsearch {
        let meter = metrics.meter(&spec.name);
        let sink = ElasticsearchSink::new(
            &spec.name,
            spec.input,
            elasticsearch,
            &Secrets::from_env(),
            meter,
        )?;
        return Ok(Box::new(sink));
    }
    Err(SinkError::Failed {
        sink: spec.name.clone(),
        message: "no sink kind is set".into(),
    })
}

/// The rows as JSON objects, one per line (ClickHouse `JSONEachRow`, the
/// documents of an Elasticsearch `_bulk` request, stdout). Timestamps are
/// RFC 3339 strings.
pub fn rows_as_json(batches: &[RecordBatch]) -> Result<Vec<u8>, ArrowError> {
    let mut writer = arrow::json::LineDelimitedWriter::new(Vec::new());
    for batch in batches {
        writer.write(batch)?;
    }
    writer.finish()?;
    Ok(writer.into_inner())
}

/// The indices of the columns that identify a row of `schema`:
/// `stream/partition/offset` for event rows, the timestamp and string
/// columns (window bounds and group values) for window rows.
pub fn identity_columns(schema: &Schema) -> Result<Vec<usize>, ArrowError> {
    if schema.index_of("event").is_ok() {
        return EVENT_COLUMNS[..3]
            .iter()
            .map(|name| schema.index_of(name))
            .collect::<Result<_, _>>()
            .map_err(|_| ArrowError::SchemaError("event rows lack id columns".into()));
    }
    Ok(schema
        .fields()
        .iter()
        .enumerate()
        .filter(|(_, field)| matches!(field.data_type(), DataType::Utf8 | DataType::Timestamp(..)))
        .map(|(index, _)| index)
        .collect())
}

/// A stable identity per row (`window_start/window_end/group values` for
/// window rows, `stream/partition/offset` for event rows), usable as an
/// Elasticsearch document id; values are percent-style escaped so the parts
/// cannot run together.
pub fn row_ids(batch: &RecordBatch) -> Result<Vec<String>, ArrowError> {
    use arrow::util::display::{ArrayFormatter, FormatOptions};

    let columns: Vec<Arc<dyn Array>> = identity_columns(&batch.schema())?
        .into_iter()
        .map(|index| batch.column(index).clone())
        .collect();
    let options = FormatOptions::default().with_null("\u{0}");
    let formatters = columns
        .iter()
        .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((0..batch.num_rows())
        .map(|row| {
            formatters
                .iter()
                .map(|f| escape_id_part(&f.value(row).to_string()))
                .collect::<Vec<_>>()
                .join("/")
        })
        .collect())
}

fn escape_id_part(part: &str) -> String {
    let mut out = String::with_capacity(part.len());
    for c in part.chars() {
        match c {
            '/' | '%' | '\u{0}' => out.push_str(&format!("%{:02X}", c as u32)),
            c => out.push(c),
        }
    }
    out
}
