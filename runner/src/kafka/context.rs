//! A librdkafka client context that logs through `tracing` and remembers the
//! last broker error, so that a failed request can be reported with its cause.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use rdkafka::{
    ClientContext, config::RDKafkaLogLevel, consumer::ConsumerContext,
    error::KafkaError as RdKafkaError, types::RDKafkaErrorCode,
};

/// How long after an error an "all brokers down" summary is taken as its
/// consequence rather than news: one request timeout of the Kafka source, as a
/// cause older than that belongs to an earlier failure.
const SUMMARY_WINDOW: Duration = Duration::from_secs(10);

/// Broker errors seen by librdkafka's background threads, kept for status
/// and to tell a slow topic from an unreachable broker. Clones share the
/// record, so several clients (a consumer and its metadata client) report
/// into one place.
#[derive(Clone, Default)]
pub struct ReportingContext {
    last_error: Arc<Mutex<Option<(Instant, String)>>>,
}

impl ReportingContext {
    /// The last error reported at or after `since`.
    pub fn error_since(&self, since: Instant) -> Option<String> {
        let last = self.last_error.lock().ok()?;
        last.as_ref()
            .filter(|(at, _)| *at >= since)
            .map(|(_, message)| message.clone())
    }
}

impl ClientContext for ReportingContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        use RDKafkaLogLevel as Level;
        match level {
            Level::Emerg | Level::Alert | Level::Critical | Level::Error => {
                tracing::error!(facility = fac, "librdkafka: {message}")
            }
            Level::Warning => tracing::warn!(facility = fac, "librdkafka: {message}"),
            Level::Notice | Level::Info => tracing::info!(facility = fac, "librdkafka: {message}"),
            Level::Debug => tracing::debug!(facility = fac, "librdkafka: {message}"),
        }
    }

    fn error(&self, error: RdKafkaError, reason: &str) {
        tracing::warn!(%error, "kafka client error: {reason}");
        let summary = matches!(
            error,
            RdKafkaError::Global(RDKafkaErrorCode::AllBrokersDown)
        );
        let now = Instant::now();
        if let Ok(mut last) = self.last_error.lock() {
            match last.as_mut() {
                // "All brokers down" follows the error that explains it
                // (refused connection, failed login): keep that one.
                Some((at, _)) if summary && now.duration_since(*at) < SUMMARY_WINDOW => *at = now,
                _ => *last = Some((now, format!("{error}: {reason}"))),
            }
        }
    }
}

impl ConsumerContext for ReportingContext {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_brokers_down_keeps_the_error_that_explains_it() {
        let context = ReportingContext::default();
        let before = Instant::now();
        let shared = context.clone();
        shared.error(
            RdKafkaError::Global(RDKafkaErrorCode::Authentication),
            "SASL authentication error",
        );
        context.error(
            RdKafkaError::Global(RDKafkaErrorCode::AllBrokersDown),
            "1/1 brokers are down",
        );
        let reported = context.error_since(before).unwrap();
        assert!(reported.contains("SASL authentication error"), "{reported}");
        // A later, different error replaces it.
        context.error(
            RdKafkaError::Global(RDKafkaErrorCode::BrokerTransportFailure),
            "Connection refused",
        );
        let reported = shared.error_since(before).unwrap();
        assert!(reported.contains("Connection refused"), "{reported}");
    }
}
