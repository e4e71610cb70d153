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
    /// principal needs Describe, Write and Read on it, and Create unless the
    /// topic exists already (an administrator may create it beforehand).
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
        // Looking the topic up must not create it with the broker's default
        // partition count (brokers auto-create topics unless told otherwise).
        let admin: AdminClient<DefaultClientContext> = config
            .clone()
            .set("allow.auto.create.topics", "false")
            .create()
            .map_err(|e| error("creating the admin client", e))?;
        let mut found = partitions(&admin, name).map_err(|e| error("reading its metadata", e))?;
        if found == 0 {
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
            found = partition_count(&admin, name).map_err(|e| error("reading its metadata", e))?;
        }
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

/// The topic's partitions in the cluster's metadata (0 when it does not exist).
fn partitions(admin: &AdminClient<DefaultClientContext>, topic: &str) -> Result<usize, KafkaError> {
    let metadata = admin.inner().fetch_metadata(Some(topic), REQUEST_TIMEOUT)?;
    Ok(metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map_or(0, |t| t.partitions().len()))
}

/// The partitions of a topic just created, which can take a moment to show
/// in metadata.
fn partition_count(
    admin: &AdminClient<DefaultClientContext>,
    topic: &str,
) -> Result<usize, KafkaError> {
    let deadline = std::time::Instant::now() + REQUEST_TIMEOUT;
    loop {
        let count = partitions(admin, topic)?;
        if count > 0 || std::time::Instant::now() > deadline {
            return Ok(count);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::mocking::MockCluster;

    use super::*;

    /// librdkafka's mock cluster serves no CreateTopics (its admin requests
    /// time out), as a broker refusing the runner's principal Create would;
    /// a topic created beforehand with the right partition count is used.
    #[tokio::test]
    async fn an_existing_topic_is_used_without_creating_it() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("groups", 8, 1).unwrap();
        cluster.create_topic("too-few", 4, 1).unwrap();
        let connection = KafkaConnection {
            bootstrap_servers: cluster.bootstrap_servers(),
            ..KafkaConnection::default()
        };
        let started = std::time::Instant::now();
        let topic = RepartitionTopic::ensure(&connection, "groups", 8)
            .await
            .unwrap();
        assert_eq!(topic.name(), "groups");
        let refused = RepartitionTopic::ensure(&connection, "too-few", 8).await;
        assert!(
            matches!(
                refused,
                Err(RepartitionError::PartitionCount {
                    found: 4,
                    expected: 8,
                    ..
                })
            ),
            "{:?}",
            refused.err()
        );
        assert!(
            started.elapsed() < REQUEST_TIMEOUT,
            "no admin request waited"
        );
    }
}
