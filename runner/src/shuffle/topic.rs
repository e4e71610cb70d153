//! The repartition topic: one partition per key group, created by the
//! runner, written by the source stage and read by the key-group stage.

use std::time::Duration;

use rdkafka::{
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    error::KafkaError,
    producer::{DeliveryFuture, FutureProducer, FutureRecord},
    types::RDKafkaErrorCode as Code,
};

use super::{ShuffleRecord, partials::Routed};
use crate::kafka::{self, KafkaConnection};

const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Why the repartition topic cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RepartitionError {
    #[error("repartition topic {topic}: {action}: {error}")]
    Kafka {
        topic: String,
        action: &'static str,
        error: KafkaError,
    },
    #[error(
        "repartition topic {topic} has {found} partitions but spec.keyGroups is {expected}; key groups are part of the window state: delete the topic only together with the checkpoints (upgradePolicy: reset), or set keyGroups back to {found}"
    )]
    PartitionCount {
        topic: String,
        found: usize,
        expected: u32,
    },
    #[error("repartition topic {topic}: encoding a record: {error}")]
    Encode {
        topic: String,
        error: serde_json::Error,
    },
}

impl RepartitionError {
    /// A broker that may come back (the pipeline pauses and resumes).
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Kafka { .. })
    }
}

/// The topic and a producer for it.
pub struct RepartitionTopic {
    name: String,
    producer: FutureProducer,
}

impl RepartitionTopic {
    /// Creates the topic with `key_groups` partitions unless it exists, and
    /// checks that an existing one has exactly that many. The runner's Kafka
    /// principal needs Create, Describe, Write and Read on it.
    pub async fn ensure(
        connection: &KafkaConnection,
        name: &str,
        key_groups: u32,
    ) -> Result<Self, RepartitionError> {
        let error = |action, error| RepartitionError::Kafka {
            topic: name.to_owned(),
            action,
            error,
        };
        let config = connection.client_config();
        let admin: AdminClient<DefaultClientContext> = config
            .create()
            .map_err(|e| error("creating the admin client", e))?;
        // The broker's default replication factor, as for any topic an
        // application creates.
        let topic = NewTopic::new(name, key_groups as i32, TopicReplication::Fixed(-1));
        let options = AdminOptions::new().operation_timeout(Some(REQUEST_TIMEOUT));
        let results = admin
            .create_topics([&topic], &options)
            .await
            .map_err(|e| error("creating the topic", e))?;
        for result in results {
            match result {
                Ok(_) | Err((_, Code::TopicAlreadyExists)) => {}
                Err((_, code)) => {
                    return Err(error("creating the topic", KafkaError::AdminOp(code)));
                }
            }
        }
        let found = partition_count(&admin, name).map_err(|e| error("reading its metadata", e))?;
        if found != key_groups as usize {
            return Err(RepartitionError::PartitionCount {
                topic: name.to_owned(),
                found,
                expected: key_groups,
            });
        }
        let producer = config
            .clone()
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("compression.type", "zstd")
            .set("message.timeout.ms", "120000")
            .create()
            .map_err(|e| error("creating the producer", e))?;
        Ok(Self {
            name: name.to_owned(),
            producer,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sends an epoch's records, each to its key group's partition, and
    /// returns once all are acknowledged (in order within each partition:
    /// the producer is idempotent).
    pub async fn send(&self, records: &Routed) -> Result<(), RepartitionError> {
        let mut pending: Vec<DeliveryFuture> = Vec::with_capacity(records.len());
        for (group, record) in records {
            let payload = serde_json::to_vec(record).map_err(|error| RepartitionError::Encode {
                topic: self.name.clone(),
                error,
            })?;
            let key = match record {
                ShuffleRecord::Partial { key, .. } => key.as_bytes(),
                ShuffleRecord::Progress { .. } => &[],
            };
            let message = FutureRecord::to(&self.name)
                .partition(*group as i32)
                .key(key)
                .payload(&payload);
            kafka::send_queued(&self.producer, message, &mut pending)
                .await
                .map_err(|error| self.error("producing", error))?;
        }
        for delivery in pending {
            kafka::delivered(delivery.await).map_err(|error| self.error("delivering", error))?;
        }
        Ok(())
    }

    fn error(&self, action: &'static str, error: KafkaError) -> RepartitionError {
        RepartitionError::Kafka {
            topic: self.name.clone(),
            action,
            error,
        }
    }
}

fn partition_count(
    admin: &AdminClient<DefaultClientContext>,
    topic: &str,
) -> Result<usize, KafkaError> {
    let deadline = std::time::Instant::now() + REQUEST_TIMEOUT;
    loop {
        let metadata = admin.inner().fetch_metadata(Some(topic), REQUEST_TIMEOUT)?;
        let count = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .map_or(0, |t| t.partitions().len());
        // A new topic's partitions can take a moment to show in metadata.
        if count > 0 || std::time::Instant::now() > deadline {
            return Ok(count);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
