//! The dead-letter output: malformed, late and refused events, with the
//! reason, the original bytes and where they came from. Written once per epoch, after the
//! epoch's sinks, keyed like sink output so a replay does not duplicate.

mod kafka;
mod object_store;

use async_trait::async_trait;
use serde::Serialize;
use sluice_crds::{DeadLetterSpec, SourceSpec};

pub use self::{kafka::KafkaDeadLetter, object_store::ObjectStoreDeadLetter};
use crate::{
    kafka::{KafkaConnection, KafkaError},
    secrets::Secrets,
    sink::EpochKey,
    source::{PartitionId, Record, RecordExtras},
};

/// Why an event was dead-lettered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", content = "detail", rename_all = "camelCase")]
pub enum Reason {
    /// Not a JSON object, or a field the pipeline needs is missing or of the wrong type.
    Malformed(String),
    /// A transform could not be evaluated on it.
    Transform(String),
    /// Its event time was before the watermark in force for its epoch.
    Late {
        event_time: String,
        watermark: String,
    },
    /// A sink's destination refused it for its content.
    Refused(String),
}

impl Reason {
    /// Short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "malformed",
            Self::Transform(_) => "transform",
            Self::Late { .. } => "late",
            Self::Refused(_) => "refused",
        }
    }
}

/// One dead-lettered event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadEvent {
    pub reason: Reason,
    pub partition: PartitionId,
    pub offset: i64,
    pub payload: Vec<u8>,
    pub extras: Option<RecordExtras>,
}

impl DeadEvent {
    pub fn new(reason: Reason, partition: &PartitionId, record: &Record<'_>) -> Self {
        Self {
            reason,
            partition: partition.clone(),
            offset: record.offset,
            payload: record.payload.to_vec(),
            extras: record.extras.cloned(),
        }
    }
}

/// Why the dead-letter output failed.
#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    #[error("dead-letter output {uri}: {error}")]
    Store {
        uri: String,
        error: ::object_store::Error,
    },
    #[error(transparent)]
    Storage(#[from] crate::storage::StorageError),
    /// While writing, transient: the brokers may come back.
    #[error("dead-letter output: {0}")]
    Kafka(#[from] KafkaError),
    #[error(
        "dead-letter topic {topic}: set deadLetter.kafka.bootstrapServers: the source is not Kafka or Event Hubs"
    )]
    NoKafkaBrokers { topic: String },
    #[error("dead-letter output kind {0} is not available in this build")]
    NotBuilt(&'static str),
}

impl DeadLetterError {
    /// Brokers or an object store that may come back: the runner backs off
    /// and replays the epoch, whose dead events are written once.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Kafka(_) => true,
            Self::Store { error, .. } => crate::storage::is_transient(error),
            Self::Storage(_) | Self::NoKafkaBrokers { .. } | Self::NotBuilt(_) => false,
        }
    }
}

/// Where dead-lettered events go.
#[async_trait]
pub trait DeadLetter: Send {
    /// Writes one epoch's dead events (never called with none), once per key:
    /// a replayed epoch's identical events must not be written twice.
    async fn write_epoch(
        &mut self,
        key: &EpochKey,
        events: &[DeadEvent],
    ) -> Result<(), DeadLetterError>;
}

/// Builds the dead-letter output: the spec's, or JSON lines under
/// `<checkpoint uri>/dead-letter/`.
pub fn from_spec(
    spec: Option<&DeadLetterSpec>,
    source: &SourceSpec,
    checkpoint_uri: &str,
) -> Result<Box<dyn DeadLetter>, DeadLetterError> {
    let default_uri = format!("{}/dead-letter", checkpoint_uri.trim_end_matches('/'));
    match spec {
        Some(DeadLetterSpec {
            kafka: Some(kafka), ..
        }) => {
            let connection = match &kafka.bootstrap_servers {
                Some(servers) => KafkaConnection {
                    bootstrap_servers: servers.clone(),
                    ..KafkaConnection::default()
                },
                None => {
                    let of_source = KafkaConnection::of_source(source, &Secrets::from_env())?;
                    of_source.ok_or_else(|| DeadLetterError::NoKafkaBrokers {
                        topic: kafka.topic.clone(),
                    })?
                }
            };
            Ok(Box::new(KafkaDeadLetter::new(&connection, &kafka.topic)?))
        }
        Some(DeadLetterSpec {
            object_store: Some(store),
            ..
        }) => Ok(Box::new(ObjectStoreDeadLetter::open(&store.uri)?)),
        _ => Ok(Box::new(ObjectStoreDeadLetter::open(&default_uri)?)),
    }
}
