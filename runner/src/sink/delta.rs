//! A Delta Lake table. Each epoch with rows is one commit carrying the
//! transaction action (app id = [`EpochKey::writer_id`], version = epoch), so
//! before writing, the sink reads the table's transaction version for its app
//! id and skips any epoch at or below it: a replayed epoch is written once.

use std::collections::HashMap;

use arrow::{array::RecordBatch, datatypes::SchemaRef};
use async_trait::async_trait;
use deltalake::{
    DeltaTable, DeltaTableError,
    kernel::{
        StructField, StructType, engine::arrow_conversion::TryIntoKernel,
        transaction::CommitProperties,
    },
    writer::{DeltaWriter, RecordBatchWriter},
};
use sluice_crds::DeltaSink as DeltaSpec;

use super::{EpochKey, Sink, SinkError, WriteOutcome};

pub struct DeltaSink {
    name: String,
    uri: String,
    partition_by: Vec<String>,
    table: Option<DeltaTable>,
}

impl DeltaSink {
    pub fn new(name: &str, spec: &DeltaSpec) -> Self {
        Self {
            name: name.to_owned(),
            uri: spec.uri.clone(),
            partition_by: spec.partition_by.clone(),
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

/// Opens the Delta table at `uri` (a local path or an object-store URI), or
/// an uninitialised handle to create one there. S3 settings come from
/// `options` and the `AWS_*` environment.
pub async fn open_table(
    uri: &str,
    options: HashMap<String, String>,
) -> Result<DeltaTable, DeltaTableError> {
    deltalake::aws::register_handlers(None);
    let url = deltalake::table::builder::ensure_table_uri(uri)?;
    DeltaTable::try_from_url_with_storage_options(url, options).await
}

#[async_trait]
impl Sink for DeltaSink {
    async fn open(&mut self, schema: SchemaRef) -> Result<(), SinkError> {
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
            table
                .create()
                .with_columns(columns)
                .with_partition_columns(self.partition_by.clone())
                .with_table_name(self.name.clone())
                .await
                .map_err(|e| self.error(e))?
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
        let result = async {
            // Another runner incarnation may have committed since we loaded.
            table.update_incremental(None).await?;
            let committed = table
                .snapshot()?
                .transaction_version(table.log_store().as_ref(), &writer_id)
                .await?;
            if committed.is_some_and(|committed| committed >= version) {
                return Ok(WriteOutcome::AlreadyCommitted);
            }
            let transaction = deltalake::kernel::Transaction::new(&writer_id, version);
            let mut writer = RecordBatchWriter::for_table(&table)?.with_commit_properties(
                CommitProperties::default().with_application_transaction(transaction),
            );
            let mut count = 0;
            for batch in rows {
                count += batch.num_rows();
                writer.write(batch.clone()).await?;
            }
            writer.flush_and_commit(&mut table).await?;
            Ok(WriteOutcome::all(count))
        }
        .await;
        self.table = Some(table);
        result.map_err(|e| self.error(e))
    }
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
    use object_store::ObjectStoreExt;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    let table = open_table(uri, options).await?;
    let store = table.object_store();
    let mut batches = Vec::new();
    for add in table.snapshot()?.log_data() {
        let bytes = store.get(&add.object_store_path()).await?.bytes().await?;
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)?.build()?;
        for batch in reader {
            batches.push(batch?);
        }
    }
    Ok(batches)
}
