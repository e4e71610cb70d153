//! Azure Event Hubs, read through its Kafka-protocol endpoint. Not a source of
//! its own: the `eventHub` spec is mapped onto the Kafka source's settings
//! (`<namespace>.servicebus.windows.net:9093`, SASL_SSL with PLAIN, user
//! `$ConnectionString`, the connection string as password).

use sluice_crds::EventHubSource as EventHubSpec;

use super::{
    SourceContext, SourceError,
    kafka::{
        KafkaConnection, KafkaSecurity, KafkaSource, KafkaTopics, SaslCredentials, secret_error,
    },
};
use crate::secrets::Secrets;

/// The Kafka source that reads an event hub.
pub fn event_hub_source(
    spec: &EventHubSpec,
    context: &SourceContext,
) -> Result<KafkaSource, SourceError> {
    KafkaSource::connect(
        &connection(spec, &Secrets::from_env())?,
        topics(spec),
        context,
    )
}

/// The Kafka-protocol connection of an event hub's namespace.
pub(super) fn connection(
    spec: &EventHubSpec,
    secrets: &Secrets,
) -> Result<KafkaConnection, SourceError> {
    let connection_string = secrets
        .key(&spec.connection_string_secret_ref)
        .map_err(|error| secret_error("spec.source.eventHub.connectionStringSecretRef", error))?;
    Ok(KafkaConnection {
        bootstrap_servers: spec
            .endpoint
            .clone()
            .unwrap_or_else(|| format!("{}.servicebus.windows.net:9093", spec.namespace)),
        security: KafkaSecurity {
            tls: true,
            sasl: Some(SaslCredentials {
                mechanism: "PLAIN",
                username: "$ConnectionString".into(),
                password: connection_string,
            }),
            ..KafkaSecurity::default()
        },
        properties: Default::default(),
    })
}

fn topics(spec: &EventHubSpec) -> KafkaTopics {
    KafkaTopics {
        topics: vec![spec.event_hub.clone()],
        consumer_group: spec.consumer_group.clone(),
        starting_offsets: spec.starting_offsets,
        limits: spec.limits.clone(),
    }
}

#[cfg(test)]
mod tests {
    use sluice_crds::SecretKeyRef;

    use super::*;

    #[test]
    fn an_event_hub_is_a_sasl_ssl_kafka_endpoint_with_the_connection_string() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("hub")).unwrap();
        let secret = "Endpoint=sb://shop.servicebus.windows.net/;SharedAccessKeyName=listen;SharedAccessKey=abc=";
        std::fs::write(dir.path().join("hub/conn"), format!("{secret}\n")).unwrap();
        let spec = EventHubSpec {
            namespace: "shop".into(),
            event_hub: "clicks".into(),
            consumer_group: "$Default".into(),
            connection_string_secret_ref: SecretKeyRef {
                name: "hub".into(),
                key: "conn".into(),
            },
            ..EventHubSpec::default()
        };
        let secrets = Secrets::in_dir(dir.path());
        let config = connection(&spec, &secrets).unwrap().client_config();
        assert_eq!(
            config.get("bootstrap.servers"),
            Some("shop.servicebus.windows.net:9093")
        );
        assert_eq!(config.get("security.protocol"), Some("sasl_ssl"));
        assert_eq!(config.get("sasl.mechanisms"), Some("PLAIN"));
        assert_eq!(config.get("sasl.username"), Some("$ConnectionString"));
        assert_eq!(config.get("sasl.password"), Some(secret));
        assert_eq!(topics(&spec).topics, vec!["clicks".to_string()]);

        let emulator = EventHubSpec {
            endpoint: Some("localhost:9092".into()),
            ..spec.clone()
        };
        let config = connection(&emulator, &secrets).unwrap().client_config();
        assert_eq!(config.get("bootstrap.servers"), Some("localhost:9092"));
    }

    #[test]
    fn a_missing_connection_string_is_a_clear_error_without_the_secret() {
        let spec = EventHubSpec {
            namespace: "shop".into(),
            event_hub: "clicks".into(),
            connection_string_secret_ref: SecretKeyRef {
                name: "absent".into(),
                key: "conn".into(),
            },
            ..EventHubSpec::default()
        };
        let secrets = Secrets::in_dir("/nonexistent");
        let error = connection(&spec, &secrets).unwrap_err().to_string();
        assert!(error.contains("/nonexistent/absent/conn"), "{error}");
    }
}
