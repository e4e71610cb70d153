//! How to reach the brokers, from a `kafka` or `eventHub` source spec with
//! its secrets resolved, as librdkafka settings.

use std::{collections::BTreeMap, path::PathBuf};

use rdkafka::ClientConfig;
use sluice_crds::{
    EventHubSource as EventHubSpec, KafkaSource as KafkaSpec, SaslMechanism, SecretKeyRef,
    SourceSpec,
};

use super::{KafkaError, SettingProblem};
use crate::secrets::Secrets;

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
    pub fn from_kafka_spec(spec: &KafkaSpec, secrets: &Secrets) -> Result<Self, KafkaError> {
        let tls = spec.tls.as_ref();
        let file = |key: Option<&SecretKeyRef>| key.map(|key| secrets.file(key));
        let sasl = match &spec.sasl {
            Some(sasl) => {
                let (username, password) =
                    secrets.credentials(&sasl.secret_ref).map_err(|error| {
                        KafkaError::InvalidSetting {
                            field: "spec.source.kafka.sasl.secretRef",
                            problem: error.into(),
                        }
                    })?;
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
                return Err(KafkaError::InvalidSetting {
                    field: "spec.source.kafka.tls",
                    problem: SettingProblem::NotMounted(path.clone()),
                });
            }
        }
        Ok(Self {
            bootstrap_servers: spec.bootstrap_servers.clone(),
            security,
            properties: spec.properties.clone(),
        })
    }

    /// The Kafka-protocol connection of an event hub's namespace:
    /// `<namespace>.servicebus.windows.net:9093` (or the spec's endpoint),
    /// SASL_SSL with PLAIN, user `$ConnectionString`, the connection string
    /// as password.
    pub fn from_event_hub_spec(spec: &EventHubSpec, secrets: &Secrets) -> Result<Self, KafkaError> {
        let connection_string =
            secrets
                .key(&spec.connection_string_secret_ref)
                .map_err(|error| KafkaError::InvalidSetting {
                    field: "spec.source.eventHub.connectionStringSecretRef",
                    problem: error.into(),
                })?;
        Ok(Self {
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
            properties: BTreeMap::new(),
        })
    }

    /// The connection of a `kafka` or `eventHub` source (`None` for other
    /// sources), for outputs and stages that use the source's brokers.
    pub fn of_source(spec: &SourceSpec, secrets: &Secrets) -> Result<Option<Self>, KafkaError> {
        if let Some(kafka) = &spec.kafka {
            return Self::from_kafka_spec(kafka, secrets).map(Some);
        }
        if let Some(event_hub) = &spec.event_hub {
            return Self::from_event_hub_spec(event_hub, secrets).map(Some);
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

#[cfg(test)]
mod tests {
    use sluice_crds::{CredentialsRef, KafkaSasl, KafkaTls};

    use super::*;

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
        let config = KafkaConnection::from_kafka_spec(&spec, &secrets)
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
        let error = KafkaConnection::from_kafka_spec(&with_sasl, &secrets)
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
        let config = KafkaConnection::from_event_hub_spec(&spec, &secrets)
            .unwrap()
            .client_config();
        assert_eq!(
            config.get("bootstrap.servers"),
            Some("shop.servicebus.windows.net:9093")
        );
        assert_eq!(config.get("security.protocol"), Some("sasl_ssl"));
        assert_eq!(config.get("sasl.mechanisms"), Some("PLAIN"));
        assert_eq!(config.get("sasl.username"), Some("$ConnectionString"));
        assert_eq!(config.get("sasl.password"), Some(secret));

        let emulator = EventHubSpec {
            endpoint: Some("localhost:9092".into()),
            ..spec.clone()
        };
        let config = KafkaConnection::from_event_hub_spec(&emulator, &secrets)
            .unwrap()
            .client_config();
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
        let error = KafkaConnection::from_event_hub_spec(&spec, &secrets)
            .unwrap_err()
            .to_string();
        assert!(error.contains("/nonexistent/absent/conn"), "{error}");
    }
}
