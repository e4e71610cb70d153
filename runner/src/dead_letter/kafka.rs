//! Dead events to a Kafka topic: the original bytes (and key and headers,
//! when the source had them) with headers naming the reason and the source
//! record (`sluice.reason`, `sluice.detail`, `sluice.source.topic`,
//! `sluice.source.partition`, `sluice.source.offset`, `sluice.epoch`).
//!
//! Replays: after an epoch's events are acknowledged, the writer records the
//! epoch as the committed-offset *metadata* of its own consumer group
//! (`<writer id>`, on partition 0 of the topic); a replayed epoch at or below
//! that mark is skipped. A crash between the acknowledgement and that commit
//! replays the epoch's events once more, so delivery is at-least-once in that
//! window; each record's key (`<topic>/<partition>/<offset>` of the source
//! record, unless the source record had its own key) lets consumers and log
//! compaction drop such duplicates. The producer is idempotent, so broker
//! retries never duplicate.

use std::time::Duration;

use async_trait::async_trait;
use rdkafka::{
    ClientConfig, Offset, TopicPartitionList,
    consumer::{BaseConsumer, CommitMode, Consumer},
    error::KafkaError as RdKafkaError,
    message::{Header, OwnedHeaders},
    producer::{DeliveryFuture, FutureProducer, FutureRecord},
};

use super::{DeadEvent, DeadLetter, DeadLetterError, Reason};
use crate::{
    kafka::{self, KafkaConnection, KafkaError, Target, blocking},
    sink::EpochKey,
};

const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

pub struct KafkaDeadLetter {
    connection: ClientConfig,
    producer: FutureProducer,
    topic: String,
    /// The topic and its brokers, for errors.
    target: Target,
    /// Highest epoch known to be written, once looked up.
    written_through: Option<Option<u64>>,
}

impl KafkaDeadLetter {
    pub fn new(connection: &KafkaConnection, topic: &str) -> Result<Self, DeadLetterError> {
        let config = connection.client_config();
        let target = Target::brokers(&connection.bootstrap_servers).topic(topic);
        let producer = config
            .clone()
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "20")
            .set("message.timeout.ms", "120000")
            .create()
            .map_err(|error| KafkaError::create_client("producer", target.clone(), error))?;
        Ok(Self {
            connection: config,
            producer,
            topic: topic.to_owned(),
            target,
            written_through: None,
        })
    }

    /// A client of the writer's own group, where the last written epoch is kept.
    fn marker_client(&self, key: &EpochKey) -> Result<BaseConsumer, DeadLetterError> {
        self.connection
            .clone()
            .set("group.id", key.writer_id())
            .set("enable.auto.commit", "false")
            .create()
            .map_err(|error| {
                KafkaError::create_client("marker client", self.target.clone(), error).into()
            })
    }

    fn marker_partition(&self) -> TopicPartitionList {
        let mut list = TopicPartitionList::new();
        list.add_partition(&self.topic, 0);
        list
    }

    /// The last epoch this writer recorded as written, if any.
    async fn read_mark(&self, key: &EpochKey) -> Result<Option<u64>, DeadLetterError> {
        let client = self.marker_client(key)?;
        let list = self.marker_partition();
        let committed = blocking(client, move |client| {
            client.committed_offsets(list, REQUEST_TIMEOUT)
        })
        .await
        .map_err(|error| self.request_failed("reading the written-epoch mark", error))?;
        Ok(committed
            .elements()
            .first()
            .and_then(|element| element.metadata().parse().ok()))
    }

    /// Records `key.epoch` as written.
    async fn write_mark(&self, key: &EpochKey) -> Result<(), DeadLetterError> {
        let client = self.marker_client(key)?;
        let topic = self.topic.clone();
        let epoch = key.epoch;
        blocking(client, move |client| {
            let (_, high) = client.fetch_watermarks(&topic, 0, REQUEST_TIMEOUT)?;
            let mut list = TopicPartitionList::new();
            list.add_partition_offset(&topic, 0, Offset::Offset(high))?;
            if let Some(mut element) = list.find_partition(&topic, 0) {
                element.set_metadata(epoch.to_string());
            }
            client.commit(&list, CommitMode::Sync)
        })
        .await
        .map_err(|error| self.request_failed("recording the written epoch", error))
    }

    /// A failed request about the marker, which lives on partition 0.
    fn request_failed(&self, operation: &'static str, error: RdKafkaError) -> DeadLetterError {
        KafkaError::request(
            operation,
            self.target.clone().partition(&self.topic, 0),
            error,
        )
        .into()
    }

    /// Queues one event, waiting for deliveries when the local queue is full.
    async fn queue(
        &self,
        event: &DeadEvent,
        epoch: &str,
        pending: &mut Vec<DeliveryFuture>,
    ) -> Result<(), DeadLetterError> {
        let (reason, detail) = describe(&event.reason);
        let partition = event.partition.partition.to_string();
        let offset = event.offset.to_string();
        let identity = format!("{}/{partition}/{offset}", event.partition.stream);
        let mut headers = OwnedHeaders::new_with_capacity(8);
        if let Some(extras) = &event.extras {
            for (name, value) in &extras.headers {
                headers = headers.insert(Header {
                    key: name,
                    value: Some(value),
                });
            }
        }
        for (name, value) in [
            ("sluice.reason", reason),
            ("sluice.detail", detail.as_str()),
            ("sluice.source.topic", event.partition.stream.as_str()),
            ("sluice.source.partition", partition.as_str()),
            ("sluice.source.offset", offset.as_str()),
            ("sluice.epoch", epoch),
        ] {
            headers = headers.insert(Header {
                key: name,
                value: Some(value),
            });
        }
        let key: &[u8] = event
            .extras
            .as_ref()
            .and_then(|extras| extras.key.as_deref())
            .unwrap_or(identity.as_bytes());
        let record = FutureRecord::to(&self.topic)
            .payload(&event.payload)
            .key(key)
            .headers(headers);
        kafka::send_queued(&self.producer, record, pending)
            .await
            .map_err(|error| KafkaError::request("producing", self.target.clone(), error).into())
    }
}

#[async_trait]
impl DeadLetter for KafkaDeadLetter {
    async fn write_epoch(
        &mut self,
        key: &EpochKey,
        events: &[DeadEvent],
    ) -> Result<(), DeadLetterError> {
        let written_through = match self.written_through {
            Some(mark) => mark,
            None => {
                let mark = self.read_mark(key).await?;
                self.written_through = Some(mark);
                mark
            }
        };
        if written_through.is_some_and(|through| through >= key.epoch) {
            tracing::info!(
                epoch = key.epoch,
                "dead events of this epoch are already in the topic"
            );
            return Ok(());
        }
        let epoch = key.epoch.to_string();
        let mut pending = Vec::with_capacity(events.len());
        for event in events {
            self.queue(event, &epoch, &mut pending).await?;
        }
        for delivery in pending {
            kafka::delivered(delivery.await).map_err(|error| {
                DeadLetterError::from(KafkaError::request(
                    "delivering",
                    self.target.clone(),
                    error,
                ))
            })?;
        }
        self.write_mark(key).await?;
        self.written_through = Some(Some(key.epoch));
        Ok(())
    }
}

/// The reason's label and its detail, as header values.
fn describe(reason: &Reason) -> (&'static str, String) {
    let detail = match reason {
        Reason::Malformed(detail) | Reason::Transform(detail) | Reason::Refused(detail) => {
            detail.clone()
        }
        Reason::Late {
            event_time,
            watermark,
        } => format!("event time {event_time} is before the watermark {watermark}"),
    };
    (reason.label(), detail)
}
