//! What replicas other than the first read of a source without partitions
//! (REST, file, generator): nothing. Replica 0 reads the whole source, so a
//! pipeline with several replicas counts each event once; the others stay up
//! and ready, planning empty epochs.

use std::time::Duration;

use async_trait::async_trait;

use super::{Chunk, PartitionRange, Planned, Positions, Source, SourceError};

/// How long an empty plan waits, as a source with nothing new would.
const POLL: Duration = Duration::from_secs(1);

pub struct UnassignedSource {
    kind: &'static str,
}

impl UnassignedSource {
    /// Stands in for a `kind` source on a replica that does not read it.
    pub fn new(kind: &'static str) -> Self {
        Self { kind }
    }
}

#[async_trait]
impl Source for UnassignedSource {
    fn kind(&self) -> &'static str {
        self.kind
    }

    async fn plan(&mut self, _committed: &Positions) -> Result<Planned, SourceError> {
        tokio::time::sleep(POLL).await;
        Ok(Planned::Ranges(Vec::new()))
    }

    async fn start_epoch(&mut self, _ranges: &[PartitionRange]) -> Result<(), SourceError> {
        Ok(())
    }

    async fn next_chunk(&mut self) -> Result<Option<Chunk>, SourceError> {
        Ok(None)
    }
}
