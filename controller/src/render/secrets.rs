//! Every Secret a pipeline references, where in the spec, and how it reaches
//! the runner. Values are never read here: pods get them from the kubelet.

use sluice_crds::{CredentialsRef, SecretKeyRef, SecretRef, StreamPipelineSpec};

/// How a Secret reaches the runner (the contract with `sluice-runner`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecretUse {
    /// Keys mounted as files `<SECRETS_DIR>/<secret>/<key>` ([`SecretKeyRef`]).
    File,
    /// Keys as `SLUICE_SECRET_<SECRET>_<KEY>` variables ([`CredentialsRef`]).
    Env,
    /// Every key as an environment variable of its own name ([`SecretRef`]).
    EnvFrom,
    /// Read by the controller itself, never given to the runners (webhook URLs).
    Controller,
}

/// One reference to a Secret in a pipeline spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretReference {
    /// Dotted path of the referencing field, for messages.
    pub field: String,
    /// Secret name.
    pub secret: String,
    /// Keys that must exist (empty: the whole Secret).
    pub keys: Vec<String>,
    pub usage: SecretUse,
}

impl SecretReference {
    fn key(field: String, secret: &SecretKeyRef, usage: SecretUse) -> Self {
        Self {
            field,
            secret: secret.name.clone(),
            keys: vec![secret.key.clone()],
            usage,
        }
    }

    fn credentials(field: String, secret: &CredentialsRef) -> Self {
        Self {
            field,
            secret: secret.name.clone(),
            keys: vec![secret.username_key.clone(), secret.password_key.clone()],
            usage: SecretUse::Env,
        }
    }

    fn whole(field: String, secret: &SecretRef) -> Self {
        Self {
            field,
            secret: secret.name.clone(),
            keys: Vec::new(),
            usage: SecretUse::EnvFrom,
        }
    }
}

/// All Secret references of `spec`, in spec order.
pub fn secret_references(spec: &StreamPipelineSpec) -> Vec<SecretReference> {
    let mut refs = Vec::new();
    if let Some(kafka) = &spec.source.kafka {
        let base = "spec.source.kafka";
        if let Some(tls) = &kafka.tls {
            for (name, key) in [
                ("caSecretRef", &tls.ca_secret_ref),
                ("certSecretRef", &tls.cert_secret_ref),
                ("keySecretRef", &tls.key_secret_ref),
            ] {
                if let Some(key) = key {
                    refs.push(SecretReference::key(
                        format!("{base}.tls.{name}"),
                        key,
                        SecretUse::File,
                    ));
                }
            }
        }
        if let Some(sasl) = &kafka.sasl {
            refs.push(SecretReference::credentials(
                format!("{base}.sasl.secretRef"),
                &sasl.secret_ref,
            ));
        }
    }
    if let Some(hub) = &spec.source.event_hub {
        refs.push(SecretReference::key(
            "spec.source.eventHub.connectionStringSecretRef".into(),
            &hub.connection_string_secret_ref,
            SecretUse::File,
        ));
    }
    if let Some(rest) = &spec.source.rest {
        for (i, header) in rest.headers.iter().enumerate() {
            if let Some(key) = &header.value_from {
                refs.push(SecretReference::key(
                    format!("spec.source.rest.headers[{i}].valueFrom"),
                    key,
                    SecretUse::File,
                ));
            }
        }
    }
    for (i, sink) in spec.sinks.iter().enumerate() {
        let base = format!("spec.sinks[{i}]");
        if let Some(secret) = sink
            .delta
            .as_ref()
            .and_then(|d| d.credentials_secret_ref.as_ref())
        {
            refs.push(SecretReference::whole(
                format!("{base}.delta.credentialsSecretRef"),
                secret,
            ));
        }
        if let Some(secret) = sink
            .clickhouse
            .as_ref()
            .and_then(|c| c.credentials_secret_ref.as_ref())
        {
            refs.push(SecretReference::credentials(
                format!("{base}.clickhouse.credentialsSecretRef"),
                secret,
            ));
        }
        if let Some(es) = &sink.elasticsearch {
            if let Some(secret) = &es.credentials_secret_ref {
                refs.push(SecretReference::credentials(
                    format!("{base}.elasticsearch.credentialsSecretRef"),
                    secret,
                ));
            }
            if let Some(key) = &es.api_key_secret_ref {
                refs.push(SecretReference::key(
                    format!("{base}.elasticsearch.apiKeySecretRef"),
                    key,
                    SecretUse::File,
                ));
            }
        }
    }
    if let Some(secret) = &spec.checkpoint.credentials_secret_ref {
        refs.push(SecretReference::whole(
            "spec.checkpoint.credentialsSecretRef".into(),
            secret,
        ));
    }
    if let Some(alerts) = &spec.alerts {
        for (i, hook) in alerts.webhooks.iter().enumerate() {
            refs.push(SecretReference::key(
                format!("spec.alerts.webhooks[{i}].urlSecretRef"),
                &hook.url_secret_ref,
                SecretUse::Controller,
            ));
        }
    }
    refs
}
