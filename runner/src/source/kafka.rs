//! Kafka topics, read with librdkafka (`rdkafka`) under the epoch protocol.
//!
//! Offsets belong to the checkpoint, not to Kafka: partitions are assigned
//! manually (no group rebalancing, no auto-commit), each epoch reads exactly
//! the offset ranges it planned, and the consumer group only hears about
//! progress after a checkpoint ([`Source::commit`]), for lag tools.
//!
//! - Replica *i* of *N* owns partition *p* of every topic when `p % N == i`.
//! - Partitions are re-listed every [`METADATA_REFRESH`]; a partition that
//!   appears later starts from its earliest offset (logged), like Spark.
//! - Backpressure: records are only fetched while an epoch needs them;
//!   librdkafka's prefetch queue is bounded, and a partition is paused as soon
//!   as its range is read, so a fast partition cannot fill memory.
//! - An unreachable broker fails `plan` (the runner reports it and retries
//!   with backoff) or, mid-epoch, `next_chunk` after [`STALL_TIMEOUT`]
//!   without progress; the epoch is then re-read from its planned start.
//!   `auto.offset.reset=error`: a planned range that retention has deleted is
//!   an error, never silently skipped.

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::secrets::{SecretError, Secrets};
use async_trait::async_trait;
use futures::{FutureExt, StreamExt};
use rdkafka::{
    ClientConfig, ClientContext, Message, Offset, TopicPartitionList,
    consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, StreamConsumer},
    error::KafkaError,
};
use sluice_crds::{
    KafkaSource as KafkaSpec, ReadLimits, SaslMechanism, SourceSpec, StartingOffsets,
};

use super::{
    Backlog, Chunk, PartitionId, PartitionRange, Planned, Position, Positions, Source,
    SourceContext, SourceError,
};

const KIND: &str = "kafka";
/// Records per chunk handed to the pipeline.
const CHUNK_RECORDS: usize = 8192;
/// How often partition counts are re-read.
const METADATA_REFRESH: Duration = Duration::from_secs(10);
/// Timeout of one metadata, offset or commit request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `next_chunk` waits for a record before handing out a partial chunk.
const POLL_SLICE: Duration = Duration::from_millis(100);
/// No record for this long while a range is unfinished and the broker is
/// unreachable: give up on the epoch (it is re-read from its start).
const STALL_TIMEOUT: Duration = Duration::from_secs(15);
/// Most queued events of the metadata client served at a time.
const EVENTS_PER_SERVE: usize = 64;
/// How long `plan` waits before re-checking a topic that had no new records.
const IDLE_WAIT: Duration = Duration::from_millis(200);

/// How to reach the brokers: everything but topics and offsets. Shared by the
/// Kafka source, the Event Hubs mapping and the Kafka dead-letter output.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KafkaConnection {
    pub bootstrap_servers: String,
    pub security: KafkaSecurity,
    /// Extra librdkafka properties, applied last.
    pub properties: BTreeMap<String, String>,
}

/// TLS and SASL settings with secret values already resolved (file paths for
/// TLS material, the SASL password in memory only).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct KafkaSecurity {
    pub tls: bool,
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub sasl: Option<SaslCredentials>,
}

/// A SASL mechanism with its user name and password.
#[derive(Clone, PartialEq, Eq)]
pub struct SaslCredentials {
    pub mechanism: &'static str,
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for KafkaSecurity {
    // Never print the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSecurity")
            .field("tls", &self.tls)
            .field("ca_file", &self.ca_file)
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .field("sasl", &self.sasl.as_ref().map(|sasl| sasl.mechanism))
            .finish()
    }
}

impl KafkaConnection {
    /// The connection a `kafka` source spec describes, with its secrets:
    /// TLS files under the mounted secrets folder, SASL credentials from
    /// environment variables (names from `sluice_crds`).
    pub fn from_spec(spec: &KafkaSpec, secrets: &Secrets) -> Result<Self, SourceError> {
        let tls = spec.tls.as_ref();
        let file = |key: Option<&sluice_crds::SecretKeyRef>| key.map(|key| secrets.file(key));
        let sasl = match &spec.sasl {
            Some(sasl) => {
                let (username, password) = secrets
                    .credentials(&sasl.secret_ref)
                    .map_err(|error| secret_error("spec.source.kafka.sasl.secretRef", error))?;
                Some(SaslCredentials {
                    mechanism: match sasl.mechanism {
                        SaslMechanism::Plain => "PLAIN",
                        SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
                        SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
                    },
                    username,
                    password,
                })
            }
            None => None,
        };
        let security = KafkaSecurity {
            tls: tls.is_some(),
            ca_file: file(tls.and_then(|tls| tls.ca_secret_ref.as_ref())),
            cert_file: file(tls.and_then(|tls| tls.cert_secret_ref.as_ref())),
            key_file: file(tls.and_then(|tls| tls.key_secret_ref.as_ref())),
            sasl,
        };
        for path in [&security.ca_file, &security.cert_file, &security.key_file]
            .into_iter()
            .flatten()
        {
            if !path.is_file() {
                return Err(SourceError::InvalidSpec {
                    source_kind: KIND,
                    field: "spec.source.kafka.tls",
                    message: format!("secret file {} is not mounted", path.display()),
                });
            }
        }
        Ok(Self {
            bootstrap_servers: spec.bootstrap_servers.clone(),
            security,
            properties: spec.properties.clone(),
        })
    }

    /// The connection of a `kafka` or `eventHub` source (`None` for other
    /// sources), for outputs that reuse it, such as the dead-letter topic.
    pub fn of_source(spec: &SourceSpec, secrets: &Secrets) -> Result<Option<Self>, SourceError> {
        if let Some(kafka) = &spec.kafka {
            return Self::from_spec(kafka, secrets).map(Some);
        }
        if let Some(event_hub) = &spec.event_hub {
            return super::eventhub::connection(event_hub, secrets).map(Some);
        }
        Ok(None)
    }

    /// librdkafka settings for a client of these brokers.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.bootstrap_servers);
        let security = &self.security;
        let protocol = match (security.tls, security.sasl.is_some()) {
            (false, false) => "plaintext",
            (true, false) => "ssl",
            (false, true) => "sasl_plaintext",
            (true, true) => "sasl_ssl",
        };
        config.set("security.protocol", protocol);
        if let Some(ca) = &security.ca_file {
            config.set("ssl.ca.location", ca.display().to_string());
        } else if security.tls {
            // The system's roots, wherever this image keeps them.
            config.set("ssl.ca.location", "probe");
        }
        if let Some(cert) = &security.cert_file {
            config.set("ssl.certificate.location", cert.display().to_string());
        }
        if let Some(key) = &security.key_file {
            config.set("ssl.key.location", key.display().to_string());
        }
        if let Some(sasl) = &security.sasl {
            config
                .set("sasl.mechanisms", sasl.mechanism)
                .set("sasl.username", &sasl.username)
                .set("sasl.password", &sasl.password);
        }
        for (key, value) in &self.properties {
            config.set(key, value);
        }
        config
    }
}

/// A secret that is not where the controller puts it, as a source error
/// (the message names the file or variable, never a value).
pub(super) fn secret_error(field: &'static str, error: SecretError) -> SourceError {
    SourceError::InvalidSpec {
        source_kind: KIND,
        field,
        message: error.to_string(),
    }
}

/// What to consume, besides how to connect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KafkaTopics {
    pub topics: Vec<String>,
    pub consumer_group: String,
    pub starting_offsets: StartingOffsets,
    pub limits: ReadLimits,
}

/// Broker errors seen by librdkafka's background threads, kept for status
/// and to tell a slow topic from an unreachable broker. Clones share the
/// record, so the consumer and the metadata client report into one place.
#[derive(Clone, Default)]
pub struct KafkaContext {
    last_error: Arc<Mutex<Option<(Instant, String)>>>,
}

impl KafkaContext {
    fn error_since(&self, since: Instant) -> Option<String> {
        let last = self.last_error.lock().ok()?;
        last.as_ref()
            .filter(|(at, _)| *at >= since)
            .map(|(_, message)| message.clone())
    }
}

impl ClientContext for KafkaContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        use rdkafka::config::RDKafkaLogLevel as Level;
        match level {
            Level::Emerg | Level::Alert | Level::Critical | Level::Error => {
                tracing::error!(facility = fac, "librdkafka: {message}")
            }
            Level::Warning => tracing::warn!(facility = fac, "librdkafka: {message}"),
            Level::Notice | Level::Info => tracing::info!(facility = fac, "librdkafka: {message}"),
            Level::Debug => tracing::debug!(facility = fac, "librdkafka: {message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(%error, "kafka client error: {reason}");
        let summary = matches!(
            error,
            KafkaError::Global(rdkafka::types::RDKafkaErrorCode::AllBrokersDown)
        );
        let now = Instant::now();
        if let Ok(mut last) = self.last_error.lock() {
            match last.as_mut() {
                // "All brokers down" follows the error that explains it
                // (refused connection, failed login): keep that one.
                Some((at, _)) if summary && now.duration_since(*at) < REQUEST_TIMEOUT => *at = now,
                _ => *last = Some((now, format!("{error}: {reason}"))),
            }
        }
    }
}

impl ConsumerContext for KafkaContext {}

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
}

#[derive(Debug)]
struct StashedRecord {
    offset: i64,
    timestamp_ms: Option<i64>,
    payload: Vec<u8>,
}

/// One range of the epoch being read.
#[derive(Debug)]
struct ReadRange {
    partition: PartitionId,
    end: i64,
    /// Next offset this epoch wants.
    next: i64,
    building: Chunk,
}

impl ReadRange {
    fn done(&self) -> bool {
        self.next >= self.end
    }
}

/// Consumes Kafka topics epoch by epoch. See the module docs.
pub struct KafkaSource {
    consumer: Arc<StreamConsumer<KafkaContext>>,
    /// Metadata and offset listing. A client of its own, without a group, so
    /// that its error events can be served (polled) right after a failed
    /// request without touching the consumer's record queue.
    metadata: Arc<BaseConsumer<KafkaContext>>,
    topics: KafkaTopics,
    replica: u32,
    replicas: u32,
    max_records_per_epoch: i64,
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
            &KafkaConnection::from_spec(spec, &Secrets::from_env())?,
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
        let mut config = connection.client_config();
        config
            .set("group.id", &topics.consumer_group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "error")
            .set("enable.partition.eof", "false")
            // Bounded prefetch: at most this much per partition waits in memory.
            .set("queued.max.messages.kbytes", "16384")
            .set("fetch.max.bytes", "16777216")
            .set("socket.timeout.ms", "10000")
            .set("reconnect.backoff.max.ms", "5000");
        for (key, value) in &connection.properties {
            config.set(key, value);
        }
        let errors = KafkaContext::default();
        let consumer: StreamConsumer<KafkaContext> = config
            .create_with_context(errors.clone())
            .map_err(|error| unavailable(format!("creating the consumer: {error}")))?;
        let metadata: BaseConsumer<KafkaContext> = connection
            .client_config()
            .create_with_context(errors)
            .map_err(|error| unavailable(format!("creating the metadata client: {error}")))?;
        let per_trigger = topics.limits.max_offsets_per_trigger.unwrap_or(i64::MAX);
        Ok(Self {
            consumer: Arc::new(consumer),
            metadata: Arc::new(metadata),
            max_records_per_epoch: per_trigger.min(context.max_records_per_epoch).max(1),
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
        })
    }

    /// Re-reads partition counts when due; new owned partitions join `owned`.
    async fn refresh_partitions(&mut self, first_plan: bool) -> Result<(), SourceError> {
        if self
            .metadata_read_at
            .is_some_and(|at| at.elapsed() < METADATA_REFRESH)
        {
            return Ok(());
        }
        let topics = self.topics.topics.clone();
        let asked_at = Instant::now();
        let counts = blocking(&self.metadata, move |client| {
            topics
                .iter()
                .map(|topic| {
                    let metadata = client.fetch_metadata(Some(topic), REQUEST_TIMEOUT)?;
                    let count = metadata
                        .topics()
                        .iter()
                        .find(|t| t.name() == topic && t.error().is_none())
                        .map_or(0, |t| t.partitions().len());
                    Ok((topic.clone(), count))
                })
                .collect::<Result<Vec<_>, KafkaError>>()
        })
        .await
        .map_err(|error| self.request_failed("reading topic metadata", error, asked_at))?;
        for (topic, count) in counts {
            if count == 0 {
                return Err(unavailable(format!("topic {topic} does not exist")));
            }
            let previous = self.partition_counts.insert(topic.clone(), count);
            match previous {
                Some(previous) if previous < count => tracing::info!(
                    %topic, previous, count,
                    "partition count grew; new partitions are read from their earliest offset"
                ),
                Some(previous) if previous > count => tracing::error!(
                    %topic, previous, count,
                    "partition count shrank (topic re-created?); the missing partitions are no longer read"
                ),
                _ if first_plan => tracing::info!(%topic, count, "reading topic"),
                _ => {}
            }
            self.owned
                .retain(|id, _| id.stream != topic || (id.partition as usize) < count);
            for partition in 0..count as i32 {
                if partition as u32 % self.replicas == self.replica {
                    self.owned
                        .entry(PartitionId::new(topic.clone(), partition))
                        .or_default();
                }
            }
        }
        self.metadata_read_at = Some(Instant::now());
        Ok(())
    }

    /// Earliest (`Offset::Beginning`) or latest (`Offset::End`) offsets of `partitions`.
    async fn list_offsets(
        &self,
        partitions: Vec<PartitionId>,
        which: Offset,
    ) -> Result<HashMap<PartitionId, i64>, SourceError> {
        if partitions.is_empty() {
            return Ok(HashMap::new());
        }
        let mut list = TopicPartitionList::new();
        for id in &partitions {
            list.add_partition_offset(&id.stream, id.partition, which)
                .map_err(|error| unavailable(error.to_string()))?;
        }
        let asked_at = Instant::now();
        let listed = blocking(&self.metadata, move |client| {
            client.offsets_for_times(list, REQUEST_TIMEOUT)
        })
        .await
        .map_err(|error| self.request_failed("listing offsets", error, asked_at))?;
        let mut offsets = HashMap::new();
        for element in listed.elements() {
            let id = PartitionId::new(element.topic(), element.partition());
            if let Err(error) = element.error() {
                return Err(unavailable(format!("listing offsets of {id}: {error}")));
            }
            match element.offset() {
                Offset::Offset(offset) => {
                    offsets.insert(id, offset);
                }
                other => {
                    return Err(unavailable(format!(
                        "listing offsets of {id}: broker answered {other:?}"
                    )));
                }
            }
        }
        Ok(offsets)
    }

    /// This epoch's record budget: `maxOffsetsPerTrigger`, and the per-second
    /// rate over the time since the previous plan.
    fn epoch_budget(&mut self) -> i64 {
        let now = Instant::now();
        let elapsed = self
            .last_plan_at
            .map_or(Duration::from_secs(1), |at| now - at);
        self.last_plan_at = Some(now);
        match self.topics.limits.max_records_per_second {
            Some(rate) if rate > 0 => {
                let allowed = (rate as f64 * elapsed.as_secs_f64()).ceil() as i64;
                allowed.clamp(1, self.max_records_per_epoch)
            }
            _ => self.max_records_per_epoch,
        }
    }

    /// Makes the consumer's assignment and pause state match the epoch.
    fn arrange_consumer(&mut self, starts: &HashMap<PartitionId, i64>) -> Result<(), SourceError> {
        let wanted: HashSet<PartitionId> = starts.keys().cloned().collect();
        let mut reseek = wanted != self.assigned;
        for range in &self.reading {
            let state = self.owned.get(&range.partition);
            let continues = state.and_then(|s| s.read_to) == starts.get(&range.partition).copied();
            if !range.done() && !continues {
                reseek = true;
            }
        }
        if reseek {
            let mut list = TopicPartitionList::new();
            for (id, start) in starts {
                list.add_partition_offset(&id.stream, id.partition, Offset::Offset(*start))
                    .map_err(|error| unavailable(error.to_string()))?;
                let state = self.owned.entry(id.clone()).or_default();
                state.stash.clear();
                state.read_to = Some(*start);
            }
            self.consumer
                .assign(&list)
                .map_err(|error| unavailable(format!("assigning partitions: {error}")))?;
            // librdkafka keeps a partition's pause across a new assignment:
            // resume every partition, then pause the ones with nothing to read.
            self.consumer
                .resume(&list)
                .map_err(|error| unavailable(format!("resuming partitions: {error}")))?;
            self.assigned = wanted;
            self.paused.clear();
        }
        let active: HashSet<&PartitionId> = self
            .reading
            .iter()
            .filter(|range| !range.done())
            .map(|range| &range.partition)
            .collect();
        let mut pause = TopicPartitionList::new();
        let mut resume = TopicPartitionList::new();
        for id in &self.assigned {
            match (active.contains(id), self.paused.contains(id)) {
                (true, true) => resume.add_partition(&id.stream, id.partition),
                (false, false) => pause.add_partition(&id.stream, id.partition),
                _ => continue,
            };
        }
        self.apply_pause(&pause, true)?;
        self.apply_pause(&resume, false)
    }

    fn apply_pause(&mut self, list: &TopicPartitionList, pause: bool) -> Result<(), SourceError> {
        if list.count() == 0 {
            return Ok(());
        }
        let result = if pause {
            self.consumer.pause(list)
        } else {
            self.consumer.resume(list)
        };
        result.map_err(|error| unavailable(format!("pausing or resuming partitions: {error}")))?;
        for element in list.elements() {
            let id = PartitionId::new(element.topic(), element.partition());
            if pause {
                self.paused.insert(id);
            } else {
                self.paused.remove(&id);
            }
        }
        Ok(())
    }

    /// Stops fetching a partition whose range is read.
    fn pause_one(&mut self, id: &PartitionId) -> Result<(), SourceError> {
        if self.paused.contains(id) {
            return Ok(());
        }
        let mut list = TopicPartitionList::new();
        list.add_partition(&id.stream, id.partition);
        self.apply_pause(&list, true)
    }

    /// Files one fetched record into its range's chunk, or the stash when it
    /// belongs to a later epoch.
    fn accept(
        &mut self,
        index: usize,
        offset: i64,
        timestamp_ms: Option<i64>,
        payload: &[u8],
    ) -> Result<(), SourceError> {
        let range = &mut self.reading[index];
        let Some(state) = self.owned.get_mut(&range.partition) else {
            return Ok(());
        };
        if offset < range.next {
            // Re-delivered after a seek or resume: already handed out.
            return Ok(());
        }
        if offset >= range.end {
            state.stash.push_back(StashedRecord {
                offset,
                timestamp_ms,
                payload: payload.to_vec(),
            });
            let id = range.partition.clone();
            return self.pause_one(&id);
        }
        range.building.push(payload, offset);
        range.next = offset + 1;
        state.read_to = Some(range.next);
        if timestamp_ms.is_some() {
            state.last_timestamp_ms = timestamp_ms;
        }
        if range.done() || range.building.len() >= CHUNK_RECORDS {
            let full = std::mem::replace(&mut range.building, Chunk::new(index));
            self.ready.push_back(full);
        }
        if self.reading[index].done() {
            let id = self.reading[index].partition.clone();
            self.pause_one(&id)?;
        }
        Ok(())
    }

    /// Moves stashed records that fall in the new epoch's ranges into chunks.
    fn drain_stash(&mut self) -> Result<(), SourceError> {
        for index in 0..self.reading.len() {
            let id = self.reading[index].partition.clone();
            let Some(state) = self.owned.get_mut(&id) else {
                continue;
            };
            let stash = std::mem::take(&mut state.stash);
            for record in stash {
                if self.reading[index].done() {
                    if let Some(state) = self.owned.get_mut(&id) {
                        state.stash.push_back(record);
                    }
                    continue;
                }
                self.accept(index, record.offset, record.timestamp_ms, &record.payload)?;
            }
        }
        Ok(())
    }

    /// Hands out partial chunks and finishes ranges that ended in a gap
    /// (transaction markers, compaction) by asking the consumer's position.
    fn on_idle(&mut self) {
        for (index, range) in self.reading.iter_mut().enumerate() {
            if !range.building.is_empty() {
                let partial = std::mem::replace(&mut range.building, Chunk::new(index));
                self.ready.push_back(partial);
            }
        }
        let Ok(positions) = self.consumer.position() else {
            return;
        };
        for element in positions.elements() {
            if let (Offset::Offset(position), Some(index)) = (
                element.offset(),
                self.range_index(element.topic(), element.partition()),
            ) {
                let range = &mut self.reading[index];
                if position >= range.end && range.next < range.end {
                    range.next = range.end;
                    if let Some(state) = self.owned.get_mut(&range.partition) {
                        state.read_to = Some(range.end);
                    }
                }
            }
        }
    }

    /// Commits the consumer group's offsets recorded by the last checkpoint, if not yet done.
    async fn commit_pending(&mut self) {
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
        match blocking(&self.consumer, move |consumer| {
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

    /// A failed broker request as a source error, with the cause librdkafka
    /// reported around it (a refused connection, a failed SASL login): the
    /// request's own error is often just "broker transport failure".
    fn request_failed(&self, what: &str, error: KafkaError, asked_at: Instant) -> SourceError {
        self.serve_metadata_events();
        // The connection may have failed shortly before the request began.
        let since = asked_at.checked_sub(REQUEST_TIMEOUT).unwrap_or(asked_at);
        match self.consumer.context().error_since(since) {
            Some(cause) => unavailable(format!("{what}: {error} ({cause})")),
            None => unavailable(format!("{what}: {error}")),
        }
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

    fn range_index(&self, topic: &str, partition: i32) -> Option<usize> {
        self.range_of.get(topic)?.get(&partition).copied()
    }

    fn unfinished(&self) -> usize {
        self.reading.iter().filter(|range| !range.done()).count()
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
        let first_plan = self.metadata_read_at.is_none();
        self.refresh_partitions(first_plan).await?;
        let partitions: Vec<PartitionId> = self.owned.keys().cloned().collect();
        let mut high = self.list_offsets(partitions.clone(), Offset::End).await?;
        let nothing_new = self
            .owned
            .iter()
            .all(|(id, state)| high.get(id).is_none_or(|high| *high <= state.planned_to));
        if nothing_new && !first_plan {
            tokio::time::sleep(IDLE_WAIT).await;
            high = self.list_offsets(partitions.clone(), Offset::End).await?;
        }
        // Where each partition starts: the checkpoint; else startingOffsets on
        // a fresh pipeline; else (a partition that appeared later) earliest.
        // A start chosen once is kept until the checkpoint has the partition.
        let fresh = committed.is_empty() && first_plan;
        let use_latest = fresh && self.topics.starting_offsets == StartingOffsets::Latest;
        let undecided: Vec<PartitionId> = partitions
            .iter()
            .filter(|id| {
                !committed.contains_key(*id)
                    && self
                        .owned
                        .get(*id)
                        .is_none_or(|s| s.initial_start.is_none())
            })
            .cloned()
            .collect();
        let earliest = if use_latest {
            HashMap::new()
        } else {
            self.list_offsets(undecided, Offset::Beginning).await?
        };
        let mut starts = BTreeMap::new();
        for id in &partitions {
            let state = self.owned.entry(id.clone()).or_default();
            let start = match (committed.get(id), state.initial_start) {
                (Some(Position::Offset(offset)), _) => *offset,
                (Some(position), _) => {
                    return Err(SourceError::BadPosition {
                        source_kind: KIND,
                        partition: id.clone(),
                        position: position.clone(),
                    });
                }
                (None, Some(start)) => start,
                (None, None) => {
                    let chosen = if use_latest {
                        high.get(id)
                    } else {
                        earliest.get(id)
                    };
                    let Some(&start) = chosen else {
                        return Err(unavailable(format!(
                            "the broker listed no offsets for {id}"
                        )));
                    };
                    if !fresh {
                        tracing::info!(partition = %id, start, "new partition: reading from its earliest offset");
                    }
                    state.initial_start = Some(start);
                    start
                }
            };
            starts.insert(id.clone(), start);
        }
        let backlogs: Vec<i64> = partitions
            .iter()
            .map(|id| (high.get(id).copied().unwrap_or(0) - starts[id]).max(0))
            .collect();
        let takes = share_budget(&backlogs, self.epoch_budget());
        let mut ranges = Vec::with_capacity(partitions.len());
        for ((id, take), high_watermark) in partitions.iter().zip(takes).zip(
            partitions
                .iter()
                .map(|id| high.get(id).copied().unwrap_or(0)),
        ) {
            let start = starts[id];
            if let Some(state) = self.owned.get_mut(id) {
                state.high_watermark = high_watermark;
                state.planned_to = start + take;
            }
            ranges.push(PartitionRange {
                partition: id.clone(),
                start: Position::Offset(start),
                end: Position::Offset(start + take),
            });
        }
        Ok(Planned::Ranges(ranges))
    }

    async fn start_epoch(&mut self, ranges: &[PartitionRange]) -> Result<(), SourceError> {
        let mut starts = HashMap::new();
        self.reading.clear();
        self.range_of.clear();
        self.ready.clear();
        for (index, range) in ranges.iter().enumerate() {
            let (Position::Offset(start), Position::Offset(end)) = (&range.start, &range.end)
            else {
                return Err(SourceError::BadPosition {
                    source_kind: KIND,
                    partition: range.partition.clone(),
                    position: range.start.clone(),
                });
            };
            // A replayed plan may name partitions this process has not listed yet.
            self.owned.entry(range.partition.clone()).or_default();
            starts.insert(range.partition.clone(), *start);
            self.range_of
                .entry(range.partition.stream.clone())
                .or_default()
                .insert(range.partition.partition, index);
            self.reading.push(ReadRange {
                partition: range.partition.clone(),
                end: *end,
                next: *start,
                building: Chunk::new(index),
            });
        }
        self.arrange_consumer(&starts)?;
        self.drain_stash()
    }

    async fn next_chunk(&mut self) -> Result<Option<Chunk>, SourceError> {
        let mut last_progress = Instant::now();
        // A clone of the handle, so that records borrow it rather than `self`.
        let consumer = Arc::clone(&self.consumer);
        let mut stream = consumer.stream();
        loop {
            if let Some(chunk) = self.ready.pop_front() {
                return Ok(Some(chunk));
            }
            if self.unfinished() == 0 {
                self.on_idle();
                return Ok(self.ready.pop_front());
            }
            // Records already fetched are taken without arming a timer.
            let received = match stream.next().now_or_never() {
                Some(received) => received,
                None => tokio::time::timeout(POLL_SLICE, stream.next())
                    .await
                    .ok()
                    .flatten(),
            };
            match received {
                Some(Ok(message)) => {
                    if let Some(index) = self.range_index(message.topic(), message.partition()) {
                        self.accept(
                            index,
                            message.offset(),
                            message.timestamp().to_millis(),
                            message.payload().unwrap_or_default(),
                        )?;
                        last_progress = Instant::now();
                    }
                }
                Some(Err(error)) => {
                    if let KafkaError::MessageConsumption(code) = &error
                        && *code == rdkafka::types::RDKafkaErrorCode::OffsetOutOfRange
                    {
                        return Err(unavailable(format!(
                            "a planned offset range is no longer on the broker (retention?): {error}"
                        )));
                    }
                    tracing::warn!(%error, "kafka consume error");
                }
                None => {
                    self.on_idle();
                    if last_progress.elapsed() > STALL_TIMEOUT
                        && let Some(error) = self.consumer.context().error_since(last_progress)
                    {
                        return Err(unavailable(format!(
                            "no progress for {}s: {error}",
                            STALL_TIMEOUT.as_secs()
                        )));
                    }
                }
            }
        }
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
        let now_ms = jiff::Timestamp::now().as_millisecond();
        Some(
            self.owned
                .iter()
                .map(|(id, state)| {
                    let records = (state.high_watermark - state.planned_to).max(0);
                    Backlog {
                        partition: id.clone(),
                        records,
                        seconds: match (records, state.last_timestamp_ms) {
                            (0, _) | (_, None) => 0.0,
                            (_, Some(read)) => ((now_ms - read).max(0) as f64) / 1000.0,
                        },
                    }
                })
                .collect(),
        )
    }
}

/// Runs a blocking librdkafka call on `client` off the async runtime.
async fn blocking<C: Send + Sync + 'static, T: Send + 'static>(
    client: &Arc<C>,
    call: impl FnOnce(&C) -> Result<T, KafkaError> + Send + 'static,
) -> Result<T, KafkaError> {
    let client = Arc::clone(client);
    tokio::task::spawn_blocking(move || call(&client))
        .await
        .unwrap_or(Err(KafkaError::Canceled))
}

/// Splits `budget` records over partitions. Every partition with a backlog
/// gets a fair floor first (an even share of half the budget, at least one
/// record), so a partition with a small backlog is read every epoch instead
/// of waiting behind big ones until it is taken for idle; the rest goes in
/// proportion to what is left of each backlog. With fewer records in the
/// budget than partitions with data, each still reads one.
fn share_budget(backlogs: &[i64], budget: i64) -> Vec<i64> {
    let total: i64 = backlogs.iter().sum();
    if total <= budget {
        return backlogs.to_vec();
    }
    let with_data = backlogs.iter().filter(|backlog| **backlog > 0).count() as i64;
    let floor = (budget / (2 * with_data.max(1))).max(1);
    let mut takes: Vec<i64> = backlogs
        .iter()
        .map(|backlog| (*backlog).min(floor))
        .collect();
    let budget = (budget - takes.iter().sum::<i64>()).max(0);
    let rest: Vec<i64> = backlogs.iter().zip(&takes).map(|(b, t)| b - t).collect();
    let rest_total: i64 = rest.iter().sum();
    let mut shares: Vec<i64> = rest
        .iter()
        .map(|left| ((*left as i128 * budget as i128) / rest_total.max(1) as i128) as i64)
        .collect();
    let mut left = budget - shares.iter().sum::<i64>();
    for (share, rest) in shares.iter_mut().zip(&rest) {
        if left == 0 {
            break;
        }
        if *share < *rest {
            *share += 1;
            left -= 1;
        }
    }
    for (take, share) in takes.iter_mut().zip(shares) {
        *take += share;
    }
    takes
}

fn unavailable(message: String) -> SourceError {
    SourceError::Unavailable {
        source_kind: KIND,
        message,
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::{
        mocking::MockCluster,
        producer::{BaseProducer, BaseRecord, Producer},
    };
    use sluice_crds::{CredentialsRef, KafkaSasl, KafkaTls, SecretKeyRef};

    use super::*;

    #[test]
    fn all_brokers_down_keeps_the_error_that_explains_it() {
        use rdkafka::types::RDKafkaErrorCode;
        let context = KafkaContext::default();
        let before = Instant::now();
        let shared = context.clone();
        shared.error(
            KafkaError::Global(RDKafkaErrorCode::Authentication),
            "SASL authentication error",
        );
        context.error(
            KafkaError::Global(RDKafkaErrorCode::AllBrokersDown),
            "1/1 brokers are down",
        );
        let reported = context.error_since(before).unwrap();
        assert!(reported.contains("SASL authentication error"), "{reported}");
        // A later, different error replaces it.
        context.error(
            KafkaError::Global(RDKafkaErrorCode::BrokerTransportFailure),
            "Connection refused",
        );
        let reported = shared.error_since(before).unwrap();
        assert!(reported.contains("Connection refused"), "{reported}");
    }

    #[test]
    fn budget_is_shared_in_proportion_to_backlog() {
        assert_eq!(share_budget(&[10, 0, 5], 100), vec![10, 0, 5]);
        // A floor of 25 each, then the other 50 in proportion to 275 and 75.
        assert_eq!(share_budget(&[300, 100], 100), vec![65, 35]);
        assert_eq!(share_budget(&[1_000_000, 0], 100), vec![100, 0]);
    }

    #[test]
    fn every_partition_with_a_backlog_is_read_every_epoch() {
        // One huge backlog and a few records elsewhere: proportional shares
        // would round the small ones down to nothing, epoch after epoch.
        let backlogs = [10_000_000, 3, 40, 0];
        let takes = share_budget(&backlogs, 100_000);
        assert_eq!(&takes[1..], &[3, 40, 0]);
        assert_eq!(takes.iter().sum::<i64>(), 100_000);
        // Fewer records in the budget than partitions with data: one each.
        assert_eq!(share_budget(&[5, 5, 5], 2), vec![1, 1, 1]);
    }

    #[test]
    fn tls_files_come_from_mounted_secrets_and_credentials_from_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("kafka-ca")).unwrap();
        std::fs::write(dir.path().join("kafka-ca/ca.crt"), "PEM").unwrap();
        let tls = KafkaTls {
            ca_secret_ref: Some(SecretKeyRef {
                name: "kafka-ca".into(),
                key: "ca.crt".into(),
            }),
            ..KafkaTls::default()
        };
        let spec = KafkaSpec {
            bootstrap_servers: "kafka:9093".into(),
            topics: vec!["events".into()],
            consumer_group: "g".into(),
            tls: Some(tls),
            ..KafkaSpec::default()
        };
        let secrets = Secrets::in_dir(dir.path());
        let config = KafkaConnection::from_spec(&spec, &secrets)
            .unwrap()
            .client_config();
        assert_eq!(config.get("security.protocol"), Some("ssl"));
        let ca = dir.path().join("kafka-ca/ca.crt").display().to_string();
        assert_eq!(config.get("ssl.ca.location"), Some(ca.as_str()));

        let with_sasl = KafkaSpec {
            sasl: Some(KafkaSasl {
                mechanism: SaslMechanism::ScramSha512,
                secret_ref: CredentialsRef {
                    name: "kafka-unit-test-absent".into(),
                    username_key: "username".into(),
                    password_key: "password".into(),
                },
            }),
            ..spec
        };
        let error = KafkaConnection::from_spec(&with_sasl, &secrets)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("SLUICE_SECRET_KAFKA_UNIT_TEST_ABSENT_USERNAME"),
            "{error}"
        );
    }

    #[test]
    fn sasl_settings_never_show_the_password() {
        let connection = KafkaConnection {
            bootstrap_servers: "kafka:9093".into(),
            security: KafkaSecurity {
                tls: true,
                sasl: Some(SaslCredentials {
                    mechanism: "SCRAM-SHA-256",
                    username: "alice".into(),
                    password: "s3cret".into(),
                }),
                ..KafkaSecurity::default()
            },
            properties: BTreeMap::new(),
        };
        assert!(!format!("{connection:?}").contains("s3cret"));
        let config = connection.client_config();
        assert_eq!(config.get("security.protocol"), Some("sasl_ssl"));
        assert_eq!(config.get("sasl.mechanisms"), Some("SCRAM-SHA-256"));
        assert_eq!(config.get("sasl.username"), Some("alice"));
        assert_eq!(config.get("sasl.password"), Some("s3cret"));
        assert_eq!(config.get("ssl.ca.location"), Some("probe"));
    }

    fn mock_source(
        cluster: &MockCluster<'_, rdkafka::producer::DefaultProducerContext>,
        replica: u32,
        replicas: u32,
        limit: i64,
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
        };
        KafkaSource::connect(&connection, topics, &context).unwrap()
    }

    fn produce(bootstrap: &str, partitions: i32, per_partition: i64) {
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .create()
            .unwrap();
        for partition in 0..partitions {
            for n in 0..per_partition {
                let payload = format!("{partition}:{n}");
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
            Planned::Exhausted => panic!("a Kafka source is never exhausted"),
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
