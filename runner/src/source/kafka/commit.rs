//! Telling the consumer group how far the checkpoint got, for lag tools.

use std::sync::Arc;

use rdkafka::{
    Offset, TopicPartitionList,
    consumer::{CommitMode, Consumer},
};

use super::{KafkaSource, REQUEST_TIMEOUT};
use crate::source::Position;

impl KafkaSource {
    /// Commits the consumer group's offsets recorded by the last checkpoint, if not yet done.
    pub(super) async fn commit_pending(&mut self) {
        let Some(positions) = &self.pending_commit else {
            return;
        };
        let mut list = TopicPartitionList::new();
        for (id, position) in positions {
            if let (true, Position::Offset(offset)) = (self.owned.contains_key(id), position)
                && let Err(error) =
                    list.add_partition_offset(&id.stream, id.partition, Offset::Offset(*offset))
            {
                tracing::warn!(partition = %id, %error, "cannot commit this partition's offset");
            }
        }
        if list.count() == 0 {
            self.pending_commit = None;
            return;
        }
        // A synchronous commit waits for the group coordinator without end
        // while the brokers are away: wait for it only so long, and start no
        // other until it is done, so that the epoch loop notices the outage.
        if self.committing.as_ref().is_some_and(|c| !c.is_finished()) {
            return;
        }
        let consumer = Arc::clone(&self.consumer);
        let mut commit =
            tokio::task::spawn_blocking(move || consumer.commit(&list, CommitMode::Sync));
        match tokio::time::timeout(REQUEST_TIMEOUT, &mut commit).await {
            Ok(Ok(Ok(()))) => self.pending_commit = None,
            Ok(Ok(Err(error))) => tracing::warn!(
                %error,
                "committing consumer-group offsets failed; retrying at the next epoch (checkpoints are unaffected)"
            ),
            Ok(Err(error)) => tracing::warn!(%error, "committing consumer-group offsets failed"),
            Err(_) => {
                tracing::warn!(
                    "committing consumer-group offsets is taking long (brokers away?); retrying at the next epoch after it ends (checkpoints are unaffected)"
                );
                self.committing = Some(commit);
            }
        }
    }
}
