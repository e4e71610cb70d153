//! Kafka topics, read with librdkafka (`rdkafka`) under the epoch protocol.
//!
//! Offsets belong to the checkpoint, not to Kafka: partitions are assigned
//! manually (no group rebalancing, no auto-commit), each epoch reads exactly
//! the offset ranges it planned, and the consumer group only hears about
//! progress after a checkpoint ([`Source::commit`]), for lag tools.
//!
//! - Replica *i* of *N* owns partition *p* of every topic when `p % N == i`.
//! - Partitions are re-listed every `plan::METADATA_REFRESH`; a partition
//!   that appears later starts from its earliest offset (logged), like Spark.
//! - Backpressure: records are only fetched while an epoch needs them;
//!   librdkafka's prefetch queue is bounded, and a partition is paused as soon
//!   as its range is read, so a fast partition cannot fill memory.
//! - An unreachable broker fails `plan` (the runner reports it and retries
//!   with backoff) or, mid-epoch, `next_chunk` after `read::STALL_TIMEOUT`
//!   without progress; the epoch is then re-read from its planned start.
//!   `auto.offset.reset=error`: a planned range that retention has deleted is
//!   an error, never silently skipped.
//!
//! `plan` picks the ranges, `read` reads them, `commit` tells the consumer
//! group; how to connect is shared with other Kafka clients (`crate::kafka`).

mod commit;
mod plan;
mod read;

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    sync::Arc,
    time::{Duration, Instant},
};

use async_trait::async_trait;
use rdkafka::{
    consumer::{BaseConsumer, Consumer, StreamConsumer},
    error::KafkaError as RdKafkaError,
};
use sluice_crds::{KafkaSource as KafkaSpec, ReadLimits, StartingOffsets};

use self::read::{ReadRange, StashedRecord};
use super::{
    Backlog, Chunk, PartitionId, PartitionRange, Planned, Positions, Source, SourceContext,
    SourceError, budget::RecordSize,
};
use crate::{
    kafka::{KafkaConnection, KafkaError, ReportingContext, Target},
    secrets::Secrets,
};

const KIND: &str = "kafka";
/// Timeout of one metadata, offset or commit request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Most queued events of the metadata client served at a time.
const EVENTS_PER_SERVE: usize = 64;
/// The consumer's prefetch: a quarter of the epoch's byte budget, between
/// librdkafka's smallest workable fetch (`fetch.max.bytes` must be at least
/// `message.max.bytes`, 1,000,000 by default) and 16 MiB, past which larger
/// fetches gain nothing.
const MIN_PREFETCH_BYTES: i64 = 1 << 20;
const MAX_PREFETCH_BYTES: i64 = 16 << 20;
/// librdkafka's default bound of one partition's share of a fetch.
const MAX_PARTITION_FETCH_BYTES: i64 = 1 << 20;

/// Bytes the Kafka client may fetch ahead of the epoch being read.
fn prefetch_bytes(max_bytes_per_epoch: i64) -> i64 {
    (max_bytes_per_epoch / 4).clamp(MIN_PREFETCH_BYTES, MAX_PREFETCH_BYTES)
}

/// What to consume, besides how to connect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KafkaTopics {
    pub topics: Vec<String>,
    pub consumer_group: String,
    pub starting_offsets: StartingOffsets,
    pub limits: ReadLimits,
}

/// What this process knows about one owned partition between epochs.
#[derive(Debug, Default)]
struct PartitionState {
    /// Where the records handed to the pipeline end, when the consumer (plus
    /// the stash) continues from exactly there.
    read_to: Option<i64>,
    /// Records fetched past the end of an epoch's range, kept for the next one.
    stash: VecDeque<StashedRecord>,
    /// High watermark seen by the last plan.
    high_watermark: i64,
    /// Planned end of the last epoch.
    planned_to: i64,
    /// Start chosen for a partition the checkpoint does not know yet.
    initial_start: Option<i64>,
    /// Kafka timestamp (ms) of the last record read, for lag in seconds.
    last_timestamp_ms: Option<i64>,
    /// Bytes per record, to fit plans in the byte budget.
    size: RecordSize,
}

/// Consumes Kafka topics epoch by epoch. See the module docs.
pub struct KafkaSource {
    consumer: Arc<StreamConsumer<ReportingContext>>,
    /// Metadata and offset listing. A client of its own, without a group, so
    /// that its error events can be served (polled) right after a failed
    /// request without touching the consumer's record queue.
    metadata: Arc<BaseConsumer<ReportingContext>>,
    /// The bootstrap servers, for error messages.
    brokers: String,
    topics: KafkaTopics,
    replica: u32,
    replicas: u32,
    max_records_per_epoch: i64,
    max_bytes_per_epoch: i64,
    /// Owned partitions, by topic, as of the last metadata refresh.
    owned: BTreeMap<PartitionId, PartitionState>,
    partition_counts: HashMap<String, usize>,
    metadata_read_at: Option<Instant>,
    last_plan_at: Option<Instant>,
    /// Partitions currently assigned to the consumer, and those paused.
    assigned: HashSet<PartitionId>,
    paused: HashSet<PartitionId>,
    reading: Vec<ReadRange>,
    /// Range index by topic and partition, for records as they arrive.
    range_of: HashMap<String, HashMap<i32, usize>>,
    ready: VecDeque<Chunk>,
    /// Checkpointed positions not yet committed to the consumer group.
    pending_commit: Option<Positions>,
    /// A commit still waiting for the group coordinator (brokers away).
    committing: Option<tokio::task::JoinHandle<Result<(), RdKafkaError>>>,
}

impl KafkaSource {
    /// A source for a `kafka` spec.
    pub fn new(spec: &KafkaSpec, context: &SourceContext) -> Result<Self, SourceError> {
        let topics = KafkaTopics {
            topics: spec.topics.clone(),
            consumer_group: spec.consumer_group.clone(),
            starting_offsets: spec.starting_offsets,
            limits: spec.limits.clone(),
        };
        Self::connect(
            &KafkaConnection::from_kafka_spec(spec, &Secrets::from_env())?,
            topics,
            context,
        )
    }

    /// A source for any Kafka-protocol endpoint (Event Hubs maps onto this).
    pub fn connect(
        connection: &KafkaConnection,
        topics: KafkaTopics,
        context: &SourceContext,
    ) -> Result<Self, SourceError> {
        let prefetch = prefetch_bytes(context.max_bytes_per_epoch);
        let mut config = connection.client_config();
        config
            .set("group.id", &topics.consumer_group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "error")
            .set("enable.partition.eof", "false")
            // Bounded prefetch, a share of the epoch's byte budget: the
            // consumer queue holds at most this much (all partitions
            // together: records reach the source through one queue), and
            // one fetch brings at most as much again.
            .set("queued.max.messages.kbytes", (prefetch / 1024).to_string())
            .set("fetch.max.bytes", prefetch.to_string())
            .set(
                "max.partition.fetch.bytes",
                prefetch.min(MAX_PARTITION_FETCH_BYTES).to_string(),
            )
            // A full queue makes librdkafka pause fetching for this long
            // (1 s by default); the source drains the queue within
            // milliseconds, so a long pause starves every epoch that reads
            // more than one queue's worth.
            .set("fetch.queue.backoff.ms", "10")
            .set("socket.timeout.ms", "10000")
            .set("reconnect.backoff.max.ms", "5000");
        // The spec's own properties win over these defaults too.
        for (key, value) in &connection.properties {
            config.set(key, value);
        }
        let brokers = connection.bootstrap_servers.clone();
        let create_failed =
            |client, error| KafkaError::create_client(client, Target::brokers(&brokers), error);
        let errors = ReportingContext::default();
        let consumer: StreamConsumer<ReportingContext> = config
            .create_with_context(errors.clone())
            .map_err(|error| create_failed("consumer", error))?;
        let metadata: BaseConsumer<ReportingContext> = connection
            .client_config()
            .create_with_context(errors)
            .map_err(|error| create_failed("metadata client", error))?;
        let per_trigger = topics.limits.max_offsets_per_trigger.unwrap_or(i64::MAX);
        Ok(Self {
            consumer: Arc::new(consumer),
            metadata: Arc::new(metadata),
            brokers,
            max_records_per_epoch: per_trigger.min(context.max_records_per_epoch).max(1),
            max_bytes_per_epoch: context.max_bytes_per_epoch.max(1),
            topics,
            replica: context.replica,
            replicas: context.replicas.max(1),
            owned: BTreeMap::new(),
            partition_counts: HashMap::new(),
            metadata_read_at: None,
            last_plan_at: None,
            assigned: HashSet::new(),
            paused: HashSet::new(),
            reading: Vec::new(),
            range_of: HashMap::new(),
            ready: VecDeque::new(),
            pending_commit: None,
            committing: None,
        })
    }

    /// The brokers as the target of an error.
    fn target(&self) -> Target {
        Target::brokers(&self.brokers)
    }

    /// A failed broker request, with the cause librdkafka reported around it
    /// (a refused connection, a failed SASL login): the request's own error
    /// is often just "broker transport failure".
    fn request_failed(
        &self,
        operation: &'static str,
        target: Target,
        error: RdKafkaError,
        asked_at: Instant,
    ) -> KafkaError {
        self.serve_metadata_events();
        // The connection may have failed shortly before the request began.
        let since = asked_at.checked_sub(REQUEST_TIMEOUT).unwrap_or(asked_at);
        KafkaError::request_with_cause(
            operation,
            target,
            error,
            self.consumer.context().error_since(since),
        )
    }

    /// Serves the metadata client's queued events: only then do its logs and
    /// errors reach the context, and served they do not pile up.
    fn serve_metadata_events(&self) {
        // `poll` answers `None` both for an empty queue and for a served log
        // event, so a fixed number of polls; each returns at once.
        for _ in 0..EVENTS_PER_SERVE {
            let _ = self.metadata.poll(Duration::ZERO);
        }
    }
}

/// A Kafka error as this source's: a setting that can never work is an
/// invalid spec, anything else is the brokers being unavailable (the runner
/// backs off and retries).
impl From<KafkaError> for SourceError {
    fn from(error: KafkaError) -> Self {
        match error {
            KafkaError::InvalidSetting { field, problem } => SourceError::InvalidSpec {
                source_kind: KIND,
                field,
                message: problem.to_string(),
            },
            other => SourceError::Unavailable {
                source_kind: KIND,
                message: other.to_string(),
            },
        }
    }
}

#[async_trait]
impl Source for KafkaSource {
    fn kind(&self) -> &'static str {
        KIND
    }

    async fn plan(&mut self, committed: &Positions) -> Result<Planned, SourceError> {
        self.serve_metadata_events();
        self.commit_pending().await;
        self.plan_ranges(committed).await
    }

    async fn start_epoch(&mut self, ranges: &[PartitionRange]) -> Result<(), SourceError> {
        self.start_reading(ranges)
    }

    async fn next_chunk(&mut self) -> Result<Option<Chunk>, SourceError> {
        self.read_chunk().await
    }

    /// Commits the consumer group. The checkpoint already holds the truth, so
    /// a failure (broker away) is logged and retried at the next plan rather
    /// than failing the pipeline.
    async fn commit(&mut self, positions: &Positions) -> Result<(), SourceError> {
        self.pending_commit = Some(positions.clone());
        self.commit_pending().await;
        Ok(())
    }

    fn backlog(&self) -> Option<Vec<Backlog>> {
        Some(self.backlogs())
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::{
        ClientConfig,
        mocking::MockCluster,
        producer::{BaseProducer, BaseRecord, Producer},
    };

    use super::*;
    use crate::source::Position;

    fn mock_source(
        cluster: &MockCluster<'_, rdkafka::producer::DefaultProducerContext>,
        replica: u32,
        replicas: u32,
        limit: i64,
    ) -> KafkaSource {
        mock_source_within(cluster, replica, replicas, limit, i64::MAX)
    }

    fn mock_source_within(
        cluster: &MockCluster<'_, rdkafka::producer::DefaultProducerContext>,
        replica: u32,
        replicas: u32,
        limit: i64,
        max_bytes: i64,
    ) -> KafkaSource {
        let connection = KafkaConnection {
            bootstrap_servers: cluster.bootstrap_servers(),
            ..KafkaConnection::default()
        };
        let topics = KafkaTopics {
            topics: vec!["events".into()],
            consumer_group: "unit".into(),
            starting_offsets: StartingOffsets::Earliest,
            limits: ReadLimits {
                max_offsets_per_trigger: Some(limit),
                max_records_per_second: None,
            },
        };
        let context = SourceContext {
            replica,
            replicas,
            max_records_per_epoch: i64::MAX,
            max_bytes_per_epoch: max_bytes,
        };
        KafkaSource::connect(&connection, topics, &context).unwrap()
    }

    fn produce(bootstrap: &str, partitions: i32, per_partition: i64) {
        produce_padded(bootstrap, partitions, per_partition, 0);
    }

    /// `partition:n` payloads, padded with spaces to at least `size` bytes.
    fn produce_padded(bootstrap: &str, partitions: i32, per_partition: i64, size: usize) {
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .create()
            .unwrap();
        for partition in 0..partitions {
            for n in 0..per_partition {
                let payload = format!("{:<size$}", format!("{partition}:{n}"));
                producer
                    .send(
                        BaseRecord::<(), _>::to("events")
                            .partition(partition)
                            .payload(&payload),
                    )
                    .unwrap();
            }
        }
        producer.flush(Duration::from_secs(30)).unwrap();
    }

    async fn read_epoch(
        source: &mut KafkaSource,
        ranges: &[PartitionRange],
    ) -> Vec<(usize, i64, String)> {
        source.start_epoch(ranges).await.unwrap();
        let mut records = Vec::new();
        while let Some(chunk) = source.next_chunk().await.unwrap() {
            for record in chunk.iter() {
                records.push((
                    chunk.range_index,
                    record.offset,
                    String::from_utf8(record.payload.to_vec()).unwrap(),
                ));
            }
        }
        records
    }

    fn ranges(planned: Planned) -> Vec<PartitionRange> {
        match planned {
            Planned::Ranges(ranges) => ranges,
            other => panic!("a Kafka source plans its ranges, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn epochs_read_exactly_their_planned_ranges_and_replays_are_identical() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("events", 3, 1).unwrap();
        produce(&cluster.bootstrap_servers(), 3, 100);
        let mut source = mock_source(&cluster, 0, 1, 90);

        let first = ranges(source.plan(&Positions::new()).await.unwrap());
        assert_eq!(first.len(), 3);
        let planned: i64 = first
            .iter()
            .map(|r| match (&r.start, &r.end) {
                (Position::Offset(s), Position::Offset(e)) => e - s,
                _ => unreachable!(),
            })
            .sum();
        assert_eq!(planned, 90, "maxOffsetsPerTrigger bounds the epoch");
        let records = read_epoch(&mut source, &first).await;
        assert_eq!(records.len(), 90);
        for (index, offset, payload) in &records {
            assert_eq!(
                payload,
                &format!("{}:{offset}", first[*index].partition.partition)
            );
        }

        // Reading the same plan again (a replay) gives the same records.
        let mut again = read_epoch(&mut source, &first).await;
        let mut sorted = records.clone();
        sorted.sort();
        again.sort();
        assert_eq!(again, sorted);

        // The next epochs continue where the committed positions end, without gaps.
        let mut committed: Positions = first
            .iter()
            .map(|r| (r.partition.clone(), r.end.clone()))
            .collect();
        let mut total = records.len();
        for _ in 0..10 {
            let next = ranges(source.plan(&committed).await.unwrap());
            for range in &next {
                assert_eq!(Some(&range.start), committed.get(&range.partition));
            }
            total += read_epoch(&mut source, &next).await.len();
            source
                .commit(
                    &next
                        .iter()
                        .map(|r| (r.partition.clone(), r.end.clone()))
                        .collect(),
                )
                .await
                .unwrap();
            committed = next.into_iter().map(|r| (r.partition, r.end)).collect();
        }
        assert_eq!(total, 300);
        let backlog = source.backlog().unwrap();
        assert!(backlog.iter().all(|b| b.records == 0), "{backlog:?}");
    }

    fn planned_records(ranges: &[PartitionRange]) -> i64 {
        ranges
            .iter()
            .map(|r| match (&r.start, &r.end) {
                (Position::Offset(s), Position::Offset(e)) => e - s,
                _ => unreachable!(),
            })
            .sum()
    }

    #[tokio::test]
    async fn epochs_of_large_records_fit_the_byte_budget_once_the_size_is_known() {
        const RECORD: usize = 1000;
        const BUDGET: i64 = 1 << 20;
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("events", 2, 1).unwrap();
        produce_padded(&cluster.bootstrap_servers(), 2, 2000, RECORD);
        let mut source = mock_source_within(&cluster, 0, 1, 1_000_000, BUDGET);

        // Nothing read yet: a small first epoch, sized for 64 KiB records.
        let first = ranges(source.plan(&Positions::new()).await.unwrap());
        assert_eq!(planned_records(&first), 16);
        let mut committed = Positions::new();
        let mut read = read_epoch(&mut source, &first).await.len();
        committed.extend(first.into_iter().map(|r| (r.partition, r.end)));
        let mut epochs = 1;
        while read < 4000 {
            let next = ranges(source.plan(&committed).await.unwrap());
            let records = read_epoch(&mut source, &next).await;
            let bytes: usize = records.iter().map(|(_, _, payload)| payload.len()).sum();
            assert!(bytes as i64 <= BUDGET, "epoch {epochs} read {bytes} bytes");
            if read + records.len() < 4000 {
                assert!(
                    bytes as i64 > BUDGET - 2 * RECORD as i64,
                    "epoch {epochs} read only {bytes} bytes"
                );
            }
            read += records.len();
            committed.extend(next.into_iter().map(|r| (r.partition, r.end)));
            epochs += 1;
        }
        assert_eq!(read, 4000);
        // 16 records, then about 1048 per epoch.
        assert_eq!(epochs, 5);
    }

    #[tokio::test]
    async fn replicas_own_disjoint_partitions() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("events", 5, 1).unwrap();
        let mut owned = Vec::new();
        for replica in 0..2 {
            let mut source = mock_source(&cluster, replica, 2, 1000);
            let planned = ranges(source.plan(&Positions::new()).await.unwrap());
            owned.push(
                planned
                    .iter()
                    .map(|r| r.partition.partition)
                    .collect::<Vec<_>>(),
            );
        }
        assert_eq!(owned, vec![vec![0, 2, 4], vec![1, 3]]);
    }
}
