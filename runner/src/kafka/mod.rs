//! What every Kafka client of the runner shares: how to reach the brokers
//! (addresses, TLS, SASL, extra librdkafka properties, from a `kafka` or
//! `eventHub` source spec and its secrets), errors that say which brokers,
//! topic, partition and operation they concern, and a client context that
//! routes librdkafka's logs to `tracing` and keeps the broker error that
//! explains a failed request.
//!
//! Users: the Kafka source (`source::kafka`), the Kafka dead-letter output
//! (`dead_letter::kafka`), and any stage that produces to or consumes from a
//! topic on the source's brokers: it gets the same settings with
//! `KafkaConnection::of_source(&spec.source, &secrets)?` and
//! [`KafkaConnection::client_config`], then adds its producer or consumer
//! settings.

mod connection;
mod context;
mod error;
mod produce;

use rdkafka::error::KafkaError as RdKafkaError;

pub use self::{
    connection::{KafkaConnection, KafkaSecurity, SaslCredentials},
    context::ReportingContext,
    error::{KafkaError, SettingProblem, Target},
    produce::{delivered, send_queued},
};

/// Runs a blocking librdkafka call on `client` off the async runtime, so a
/// request waiting for its timeout does not hold up other tasks.
pub async fn blocking<C: Send + 'static, T: Send + 'static>(
    client: C,
    call: impl FnOnce(&C) -> Result<T, RdKafkaError> + Send + 'static,
) -> Result<T, RdKafkaError> {
    tokio::task::spawn_blocking(move || call(&client))
        .await
        .unwrap_or(Err(RdKafkaError::Canceled))
}
