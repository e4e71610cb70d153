//! Errors of Kafka clients, with what was being done and where: the brokers,
//! and the topic and partition when the operation concerned one.

use std::{fmt, path::PathBuf, time::Duration};

use rdkafka::error::KafkaError as RdKafkaError;

use crate::secrets::SecretError;

/// Where a Kafka operation went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The bootstrap servers, as configured.
    pub brokers: String,
    pub topic: Option<String>,
    pub partition: Option<i32>,
}

impl Target {
    /// The brokers as a whole (metadata, group commits of many partitions).
    pub fn brokers(brokers: &str) -> Self {
        Self {
            brokers: brokers.to_owned(),
            topic: None,
            partition: None,
        }
    }

    pub fn topic(self, topic: &str) -> Self {
        Self {
            topic: Some(topic.to_owned()),
            ..self
        }
    }

    pub fn partition(self, topic: &str, partition: i32) -> Self {
        Self {
            partition: Some(partition),
            ..self.topic(topic)
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.topic, self.partition) {
            (Some(topic), Some(partition)) => write!(f, "{topic}[{partition}] at {}", self.brokers),
            (Some(topic), None) => write!(f, "{topic} at {}", self.brokers),
            (None, _) => f.write_str(&self.brokers),
        }
    }
}

/// Why a Kafka client could not be set up or a request to the brokers failed.
#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    /// The spec names a secret that is not where the controller puts it:
    /// retrying cannot help, unlike every other variant.
    #[error("invalid setting {field}: {problem}")]
    InvalidSetting {
        field: &'static str,
        problem: SettingProblem,
    },
    #[error("creating the {client} ({target}): {error}")]
    CreateClient {
        client: &'static str,
        target: Target,
        error: Box<RdKafkaError>,
    },
    /// `cause` is what librdkafka reported around the failure (a refused
    /// connection, a failed SASL login): the request's own error is often just
    /// "broker transport failure".
    #[error("{operation} ({target}): {error}{}", in_parentheses(cause))]
    Request {
        operation: &'static str,
        target: Target,
        error: Box<RdKafkaError>,
        cause: Option<String>,
    },
    #[error("topic {target} does not exist")]
    NoSuchTopic { target: Target },
    #[error("listing offsets ({target}): the broker answered {answer}")]
    UnexpectedOffset { target: Target, answer: String },
    #[error("the broker listed no offsets for {target}")]
    NoOffsets { target: Target },
    /// Retention deleted records that a plan (maybe written long ago) needs.
    #[error("a planned offset range is no longer on the broker (retention?) ({target}): {error}")]
    OffsetsDeleted {
        target: Target,
        error: Box<RdKafkaError>,
    },
    #[error("no progress for {}s ({target}): {cause}", waited.as_secs())]
    Stalled {
        target: Target,
        waited: Duration,
        cause: String,
    },
}

/// What is wrong with a setting that refers to a secret.
#[derive(Debug, thiserror::Error)]
pub enum SettingProblem {
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error("secret file {} is not mounted", .0.display())]
    NotMounted(PathBuf),
}

// librdkafka's errors are boxed: some carry three strings, and every
// `Result` of the runner's Kafka code would be as big as the largest.
impl KafkaError {
    pub fn create_client(client: &'static str, target: Target, error: RdKafkaError) -> Self {
        Self::CreateClient {
            client,
            target,
            error: Box::new(error),
        }
    }

    /// A failed request without a reported cause.
    pub fn request(operation: &'static str, target: Target, error: RdKafkaError) -> Self {
        Self::request_with_cause(operation, target, error, None)
    }

    pub fn request_with_cause(
        operation: &'static str,
        target: Target,
        error: RdKafkaError,
        cause: Option<String>,
    ) -> Self {
        Self::Request {
            operation,
            target,
            error: Box::new(error),
            cause,
        }
    }
}

fn in_parentheses(cause: &Option<String>) -> String {
    cause
        .as_ref()
        .map(|cause| format!(" ({cause})"))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use rdkafka::types::RDKafkaErrorCode;

    use super::*;

    #[test]
    fn a_failed_request_names_the_partition_the_brokers_and_the_cause() {
        let error = KafkaError::request_with_cause(
            "listing offsets",
            Target::brokers("kafka:9092").partition("events", 3),
            RdKafkaError::OffsetFetch(RDKafkaErrorCode::BrokerTransportFailure),
            Some("Connection refused".into()),
        );
        assert_eq!(
            error.to_string(),
            "listing offsets (events[3] at kafka:9092): Offset fetch error: BrokerTransportFailure (Local: Broker transport failure) (Connection refused)"
        );
    }
}
