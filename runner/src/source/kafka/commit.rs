//! Telling the consumer group how far the checkpoint got, for lag tools.

use std::sync::Arc;

use rdkafka::{
    Offset, TopicPartitionList,
    consumer::{CommitMode, Consumer},
};

use super::KafkaSource;
use crate::{kafka::blocking, source::Position};

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
        match blocking(Arc::clone(&self.consumer), move |consumer| {
            consumer.commit(&list, CommitMode::Sync)
        })
        .await
        {
            Ok(()) => self.pending_commit = None,
            Err(error) => tracing::warn!(
                %error,
                "committing consumer-group offsets failed; retrying at the next epoch (checkpoints are unaffected)"
            ),
        }
    }
}
