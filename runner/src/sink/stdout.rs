//! JSON lines on standard output, for demos. Standard output cannot be
//! rolled back, so a replayed epoch is recognised only within one process.

use std::io::Write;

use arrow::{array::RecordBatch, datatypes::SchemaRef};
use async_trait::async_trait;

use super::{EpochKey, Sink, SinkError, WriteOutcome, rows_as_json};

pub struct StdoutSink {
    name: String,
    last_epoch: Option<u64>,
}

impl StdoutSink {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            last_epoch: None,
        }
    }
}

#[async_trait]
impl Sink for StdoutSink {
    async fn open(&mut self, _schema: SchemaRef) -> Result<(), SinkError> {
        Ok(())
    }

    async fn write_epoch(
        &mut self,
        key: &EpochKey,
        rows: &[RecordBatch],
    ) -> Result<WriteOutcome, SinkError> {
        if self.last_epoch.is_some_and(|last| key.epoch <= last) {
            return Ok(WriteOutcome::AlreadyCommitted);
        }
        let json = rows_as_json(rows).map_err(|error| SinkError::Arrow {
            sink: self.name.clone(),
            error,
        })?;
        std::io::stdout()
            .lock()
            .write_all(&json)
            .map_err(|e| SinkError::Failed {
                sink: self.name.clone(),
                message: format!("cannot write to standard output: {e}"),
            })?;
        self.last_epoch = Some(key.epoch);
        Ok(WriteOutcome::all(
            rows.iter().map(RecordBatch::num_rows).sum(),
        ))
    }
}
