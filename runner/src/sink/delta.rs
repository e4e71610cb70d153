//! A Delta Lake table. Each epoch with rows is one commit carrying the
//! transaction action (app id = [`EpochKey::writer_id`], version = epoch), so
//! before writing, the sink reads the table's transaction version for its app
//! id and skips any epoch at or below it: a replayed epoch is written once.
//!
//! Window rows in update mode are merged by row identity (window bounds and
//! group values, [`super::row_ids`]): the commit removes each file that holds
//! an earlier value of an updated row and adds it back without those rows,
//! beside the new values, so the table holds one row per window and key.
//! Only files whose `window_end` statistics reach the earliest updated window
//! are read; windows that closed long ago are never rewritten.

use std::collections::{HashMap, HashSet};

use arrow::{
    array::{BooleanArray, RecordBatch},
    compute::filter_record_batch,
    datatypes::SchemaRef,
};
use async_trait::async_trait;
use deltalake::{
    DeltaTable, DeltaTableError,
    kernel::{
        Action, StructField, StructType,
        engine::arrow_conversion::TryIntoKernel,
        transaction::{CommitBuilder, CommitProperties},
    },
    protocol::{DeltaOperation, OutputMode},
    writer::{DeltaWriter, RecordBatchWriter},
};
use sluice_crds::DeltaSink as DeltaSpec;

use super::{EpochKey, Sink, SinkError, WriteOutcome, row_ids};

pub struct DeltaSink {
    name: String,
    uri: String,
    partition_by: Vec<String>,
    /// Rows replace earlier rows of the same identity (window rows in update mode).
    merge: bool,
    table: Option<DeltaTable>,
}

impl DeltaSink {
    /// `merge`: the rows are window updates, merged by row identity.
    pub fn new(name: &str, spec: &DeltaSpec, merge: bool) -> Self {
        Self {
            name: name.to_owned(),
            uri: spec.uri.clone(),
            partition_by: spec.partition_by.clone(),
            merge,
            table: None,
        }
    }

    fn error(&self, error: DeltaTableError) -> SinkError {
        SinkError::Delta {
            sink: self.name.clone(),
            error: Box::new(error),
        }
    }

    fn not_open(&self) -> SinkError {
        SinkError::Failed {
            sink: self.name.clone(),
            message: "written before it was opened".into(),
        }
    }
}

/// Whether a Delta failure is its object store being unreachable or failing
/// for now (see [`crate::storage::is_transient`]): the runner replays the
/// epoch later, and the transaction identifier skips a commit that landed
/// although its answer was lost.
pub fn is_transient(error: &DeltaTableError) -> bool {
    match error {
        DeltaTableError::ObjectStore { source } => crate::storage::is_transient(source),
        DeltaTableError::KernelError(error) => kernel_is_transient(error),
        other => {
            let mut cause = std::error::Error::source(other);
            while let Some(error) = cause {
                // Writers that speak `std::io` wrap the store's error in an
                // I/O error, whose `source()` would skip it.
                let wrapped = error
                    .downcast_ref::<std::io::Error>()
                    .and_then(std::io::Error::get_ref);
                let store = wrapped
                    .and_then(|inner| inner.downcast_ref::<object_store::Error>())
                    .or_else(|| error.downcast_ref::<object_store::Error>());
                if let Some(store) = store {
                    return crate::storage::is_transient(store);
                }
                cause = error.source();
            }
            false
        }
    }
}

fn kernel_is_transient(error: &delta_kernel::Error) -> bool {
    match error {
        delta_kernel::Error::ObjectStore(source) => crate::storage::is_transient(source),
        delta_kernel::Error::Backtraced { source, .. } => kernel_is_transient(source),
        _ => false,
    }
}

/// Opens the Delta table at `uri` (a local path or an object-store URI), or
/// an uninitialised handle to create one there. S3 settings come from
/// `options` and the `AWS_*` environment.
pub async fn open_table(
    uri: &str,
    options: HashMap<String, String>,
) -> Result<DeltaTable, DeltaTableError> {
    deltalake::aws::register_handlers(None);
    let url = deltalake::table::builder::ensure_table_uri(uri)?;
    let mut table = deltalake::DeltaTableBuilder::from_url(url)?
        .with_storage_options(options)
        .build()?;
    // Loading where no table is yet makes the Delta kernel log an ERROR
    // ("No files in log segment") on every first start: look first.
    if table.verify_deltatable_existence().await? {
        table.load().await?;
    }
    Ok(table)
}

#[async_trait]
impl Sink for DeltaSink {
    async fn open(&mut self, schema: SchemaRef) -> Result<(), SinkError> {
        if self.merge && !self.partition_by.is_empty() {
            return Err(SinkError::Failed {
                sink: self.name.clone(),
                message: "window.outputMode: update merges rows into the table, which needs a table without partitionBy".into(),
            });
        }
        let table = open_table(&self.uri, HashMap::new())
            .await
            .map_err(|e| self.error(e))?;
        let table = if table.version().is_some() {
            table
        } else {
            let delta_schema: StructType =
                schema
                    .as_ref()
                    .try_into_kernel()
                    .map_err(|error| SinkError::Arrow {
                        sink: self.name.clone(),
                        error,
                    })?;
            let columns: Vec<StructField> = delta_schema.fields().cloned().collect();
            let created = table
                .create()
                .with_columns(columns)
                .with_partition_columns(self.partition_by.clone())
                .with_table_name(self.name.clone())
                .await;
            match created {
                Ok(table) => table,
                // Another replica created it meanwhile (the key-group stages
                // of several replicas share the window table): use theirs.
                Err(error) => match open_table(&self.uri, HashMap::new()).await {
                    Ok(table) if table.version().is_some() => table,
                    _ => return Err(self.error(error)),
                },
            }
        };
        self.table = Some(table);
        Ok(())
    }

    async fn write_epoch(
        &mut self,
        key: &EpochKey,
        rows: &[RecordBatch],
    ) -> Result<WriteOutcome, SinkError> {
        let writer_id = key.writer_id();
        let version = i64::try_from(key.epoch).unwrap_or(i64::MAX);
        let mut table = self.table.take().ok_or_else(|| self.not_open())?;
        let count = rows.iter().map(RecordBatch::num_rows).sum();
        let result = async {
            // Another runner incarnation may have committed since we loaded.
            if holds(&mut table, &writer_id, version).await? {
                return Ok(WriteOutcome::AlreadyCommitted);
            }
            let transaction = deltalake::kernel::Transaction::new(&writer_id, version);
            let properties = CommitProperties::default().with_application_transaction(transaction);
            let committed = async {
                if self.merge {
                    merge_rows(&mut table, rows, properties, &writer_id, version).await
                } else {
                    let mut writer =
                        RecordBatchWriter::for_table(&table)?.with_commit_properties(properties);
                    for batch in rows {
                        writer.write(batch.clone()).await?;
                    }
                    writer.flush_and_commit(&mut table).await.map(drop)
                }
            }
            .await;
            match committed {
                Ok(()) => Ok(WriteOutcome::all(count)),
                // The commit may have landed although its answer was lost
                // with the connection (deltalake then reports its own commit
                // as a concurrent one): the table says.
                Err(error) => match holds(&mut table, &writer_id, version).await {
                    Ok(true) => Ok(WriteOutcome::all(count)),
                    _ => Err(error),
                },
            }
        }
        .await;
        self.table = Some(table);
        result.map_err(|e| self.error(e))
    }
}

/// Whether the table holds epoch `version` of writer `writer_id` (or a later one).
async fn holds(
    table: &mut DeltaTable,
    writer_id: &str,
    version: i64,
) -> Result<bool, DeltaTableError> {
    table.update_incremental(None).await?;
    let committed = table
        .snapshot()?
        .transaction_version(table.log_store().as_ref(), writer_id)
        .await?;
    Ok(committed.is_some_and(|committed| committed >= version))
}

/// Commits `rows` in place of the rows of the same identity, in one commit.
async fn merge_rows(
    table: &mut DeltaTable,
    rows: &[RecordBatch],
    properties: CommitProperties,
    writer_id: &str,
    epoch: i64,
) -> Result<(), DeltaTableError> {
    let mut updated = HashSet::new();
    for batch in rows {
        updated.extend(row_ids(batch)?);
    }
    let earliest_end = rows.iter().filter_map(min_window_end).min();
    let mut writer = RecordBatchWriter::for_table(table)?;
    let mut actions = Vec::new();
    let store = table.object_store();
    // Collected first: the snapshot's iterator is not `Send` across awaits.
    let candidates: Vec<_> = table
        .snapshot()?
        .log_data()
        .into_iter()
        .filter(|file| may_hold_window_ending_from(file.stats().as_deref(), earliest_end))
        .map(|file| (file.object_store_path(), file.remove_action(true)))
        .collect();
    for (path, remove) in candidates {
        let mut replaced = false;
        let mut kept = Vec::new();
        for batch in read_file(&store, &path).await? {
            let keep: BooleanArray = row_ids(&batch)?
                .iter()
                .map(|id| Some(!updated.contains(id)))
                .collect();
            replaced |= keep.false_count() > 0;
            kept.push(filter_record_batch(&batch, &keep)?);
        }
        if replaced {
            actions.push(Action::Remove(remove));
            for batch in kept.into_iter().filter(|b| b.num_rows() > 0) {
                writer.write(batch).await?;
            }
        }
    }
    for batch in rows {
        writer.write(batch.clone()).await?;
    }
    actions.extend(writer.flush().await?.into_iter().map(Action::Add));
    let operation = DeltaOperation::StreamingUpdate {
        output_mode: OutputMode::Update,
        query_id: writer_id.to_owned(),
        epoch_id: epoch,
    };
    CommitBuilder::from(properties)
        .with_actions(actions)
        .build(Some(table.snapshot()?), table.log_store(), operation)
        .await?;
    table.update_incremental(None).await
}

/// The earliest `window_end` of a batch of window rows, in microseconds.
fn min_window_end(batch: &RecordBatch) -> Option<i64> {
    use arrow::array::{AsArray, types::TimestampMicrosecondType};

    let ends = batch
        .column_by_name("window_end")?
        .as_primitive_opt::<TimestampMicrosecondType>()?;
    arrow::compute::min(ends)
}

/// False only when a file's statistics show that every row's `window_end`
/// is before `earliest_end` (microseconds); files without statistics may
/// hold anything. Delta truncates timestamp statistics to milliseconds.
fn may_hold_window_ending_from(stats: Option<&str>, earliest_end: Option<i64>) -> bool {
    let max_end = stats
        .and_then(|stats| serde_json::from_str::<serde_json::Value>(stats).ok())
        .and_then(|stats| {
            stats["maxValues"]["window_end"]
                .as_str()?
                .parse::<jiff::Timestamp>()
                .ok()
        });
    match (max_end, earliest_end) {
        (Some(max_end), Some(earliest_end)) => max_end.as_microsecond() + 1000 > earliest_end,
        _ => true,
    }
}

/// The rows of one data file of a table.
async fn read_file(
    store: &deltalake::logstore::ObjectStoreRef,
    path: &deltalake::Path,
) -> Result<Vec<RecordBatch>, DeltaTableError> {
    use object_store::ObjectStoreExt;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    let bytes = store.get(path).await?.bytes().await?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)?.build()?;
    Ok(reader.collect::<Result<Vec<_>, _>>()?)
}

/// All rows of the Delta table at `uri` (current version), file by file.
/// For summaries and tests; it reads every file into memory.
pub async fn read_table(uri: &str) -> Result<Vec<RecordBatch>, DeltaTableError> {
    read_table_with_options(uri, HashMap::new()).await
}

/// [`read_table`] with explicit storage options (for example `AWS_ENDPOINT_URL`).
pub async fn read_table_with_options(
    uri: &str,
    options: HashMap<String, String>,
) -> Result<Vec<RecordBatch>, DeltaTableError> {
    read_snapshot(&open_table(uri, options).await?).await
}

/// [`read_table`] at an earlier version of the table (time travel).
pub async fn read_table_version(
    uri: &str,
    version: u64,
) -> Result<Vec<RecordBatch>, DeltaTableError> {
    let mut table = open_table(uri, HashMap::new()).await?;
    table.load_version(version).await?;
    read_snapshot(&table).await
}

async fn read_snapshot(table: &DeltaTable) -> Result<Vec<RecordBatch>, DeltaTableError> {
    let store = table.object_store();
    let paths: Vec<_> = table
        .snapshot()?
        .log_data()
        .into_iter()
        .map(|file| file.object_store_path())
        .collect();
    let mut batches = Vec::new();
    for path in paths {
        batches.extend(read_file(&store, &path).await?);
    }
    Ok(batches)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    /// The Parquet writer reports a failed upload as an I/O error around
    /// the object store's (its `AsyncWrite` speaks `std::io`), and an I/O
    /// error's `source()` skips the error it wraps.
    #[test]
    fn an_upload_failing_inside_the_parquet_writer_is_transient() {
        let unreachable = || object_store::Error::Generic {
            store: "S3",
            source: "error sending request".into(),
        };
        let parquet = |inner: Box<dyn std::error::Error + Send + Sync>| DeltaTableError::Parquet {
            source: parquet::errors::ParquetError::External(inner),
        };
        assert!(is_transient(&parquet(Box::new(unreachable()))));
        assert!(is_transient(&parquet(Box::new(std::io::Error::other(
            unreachable()
        )))));
        let refused = object_store::Error::Precondition {
            path: "lake/_delta_log/00000000000000000001.json".into(),
            source: "exists".into(),
        };
        assert!(!is_transient(&parquet(Box::new(std::io::Error::other(
            refused
        )))));
        assert!(!is_transient(&parquet(Box::new(std::io::Error::other(
            "a corrupt file"
        )))));
    }

    /// A Delta sink spec for a table not yet created under `dir`, and a schema.
    fn new_table_in(dir: &std::path::Path) -> (DeltaSpec, SchemaRef) {
        let spec = DeltaSpec {
            uri: dir.join("table").display().to_string(),
            credentials_secret_ref: None,
            partition_by: Vec::new(),
        };
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
        (spec, schema)
    }

    /// Errors logged while `work` runs on this thread.
    async fn logged_errors(work: impl std::future::Future<Output = ()>) -> Vec<String> {
        use std::sync::{Arc, Mutex};
        use tracing_subscriber::layer::SubscriberExt;

        #[derive(Clone, Default)]
        struct Errors(Arc<Mutex<Vec<String>>>);
        impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Errors {
            fn on_event(
                &self,
                event: &tracing::Event<'_>,
                _: tracing_subscriber::layer::Context<'_, S>,
            ) {
                if *event.metadata().level() == tracing::Level::ERROR
                    && let Ok(mut errors) = self.0.lock()
                {
                    errors.push(format!("{}: {event:?}", event.metadata().target()));
                }
            }
        }
        let errors = Errors::default();
        let subscriber = tracing_subscriber::registry().with(errors.clone());
        let guard = tracing::subscriber::set_default(subscriber);
        work.await;
        drop(guard);
        errors.0.lock().map(|e| e.clone()).unwrap_or_default()
    }

    /// A first start creates the table without an ERROR in the log (users
    /// read one as something gone wrong), and a second start loads it.
    #[tokio::test(flavor = "current_thread")]
    async fn a_new_table_is_created_without_an_error_in_the_log_and_found_again() {
        let dir = tempfile::tempdir().unwrap();
        let (spec, schema) = new_table_in(dir.path());
        let errors = logged_errors(async {
            DeltaSink::new("lake", &spec, false)
                .open(schema.clone())
                .await
                .unwrap();
        })
        .await;
        assert!(errors.is_empty(), "{errors:#?}");
        let table = open_table(&spec.uri, HashMap::new()).await.unwrap();
        assert_eq!(table.version(), Some(0));
    }

    /// The key-group stages of several replicas open one window table at
    /// the same moment on their first start: each creates it or finds it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn replicas_opening_a_new_table_together_all_succeed() {
        let dir = tempfile::tempdir().unwrap();
        let (spec, schema) = new_table_in(dir.path());
        let opens = (0..8).map(|_| {
            let (spec, schema) = (spec.clone(), schema.clone());
            tokio::spawn(async move { DeltaSink::new("lake", &spec, false).open(schema).await })
        });
        for open in futures::future::join_all(opens).await {
            open.unwrap().unwrap();
        }
    }
}
