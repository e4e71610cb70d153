//! The objects each StreamPipeline owns, rendered from its spec. Pure
//! functions: no API calls, so every field is testable without a cluster.

mod config_map;
mod secrets;
mod service;
mod service_account;
mod stateful_set;

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        apps::v1::StatefulSet,
        core::v1::{ConfigMap, Service, ServiceAccount},
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{Resource, ResourceExt};
use sluice_crds::StreamPipeline;

pub use self::{
    config_map::{CONFIG_FILE, CONFIG_KEY, lineage_uri},
    secrets::{SecretReference, SecretUse, secret_references},
    stateful_set::{CONFIG_HASH_ANNOTATION, HTTP_PORT, REPLICAS_ENV},
};
use crate::{Settings, fingerprint::sha256_hex};

/// Label naming the pipeline on every owned object and runner pod.
pub const PIPELINE_LABEL: &str = "sluice.dev/pipeline";

/// Everything one pipeline owns, ready for server-side apply.
#[derive(Clone, Debug)]
pub struct Rendered {
    pub service_account: ServiceAccount,
    pub config_map: ConfigMap,
    pub service: Service,
    pub stateful_set: StatefulSet,
}

/// Names of the owned objects; the StatefulSet and its headless Service share
/// the pipeline's name, so runner pods are `<name>-<i>.<name>.<namespace>.svc`.
pub struct Names;

impl Names {
    pub fn stateful_set(pipeline: &StreamPipeline) -> String {
        pipeline.name_any()
    }
    pub fn service(pipeline: &StreamPipeline) -> String {
        pipeline.name_any()
    }
    pub fn config_map(pipeline: &StreamPipeline) -> String {
        format!("{}-pipeline", pipeline.name_any())
    }
    pub fn service_account(pipeline: &StreamPipeline) -> String {
        format!("{}-runner", pipeline.name_any())
    }
}

/// The runner set to render: the parallelism its pods are given
/// (`SLUICE_REPLICAS`, and `spec.parallelism` in their manifest) and how many
/// pods run. The two differ only while runners are stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Runners {
    pub parallelism: i32,
    pub replicas: i32,
}

impl Runners {
    /// What the spec asks for: `spec.parallelism` pods, none when suspended.
    pub fn of(pipeline: &StreamPipeline) -> Self {
        let parallelism = pipeline.spec.parallelism;
        let replicas = if pipeline.spec.suspend {
            0
        } else {
            parallelism
        };
        Self {
            parallelism,
            replicas,
        }
    }

    /// The set started with `parallelism`, scaled to zero: what a rescale
    /// applies while the old runners stop, so that no pod of the old set is
    /// ever replaced by one with another parallelism.
    pub fn stopped(parallelism: i32) -> Self {
        Self {
            parallelism,
            replicas: 0,
        }
    }
}

/// Why the owned objects could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("cannot write the manifest for the runners: {0}")]
    Manifest(#[from] serde_yaml::Error),
    #[error(transparent)]
    SecretReferences(#[from] sluice_crds::SecretFieldsError),
}

/// Renders all owned objects for checkpoint lineage `lineage` and the runner
/// set `runners`, with the runner defaults of `settings` (image, pull
/// secrets, ServiceAccount annotations).
pub fn render(
    pipeline: &StreamPipeline,
    settings: &Settings,
    lineage: i64,
    runners: Runners,
) -> Result<Rendered, RenderError> {
    let config_map = config_map::render(pipeline, lineage, runners.parallelism)?;
    let secrets = secret_references(&pipeline.spec)?;
    // The pod template carries a hash of the runner's configuration, so any
    // change of it (the rendered pipeline, hence also the lineage) rolls the pods.
    let config_hash = sha256_hex(
        config_map
            .data
            .as_ref()
            .and_then(|data| data.get(CONFIG_KEY))
            .map_or(&[][..], |text| text.as_bytes()),
    );
    Ok(Rendered {
        service_account: service_account::render(
            pipeline,
            &settings.runner_service_account_annotations,
        ),
        service: service::render(pipeline),
        stateful_set: stateful_set::render(pipeline, settings, &config_hash, runners, &secrets),
        config_map,
    })
}

/// Labels selecting one pipeline's runner pods.
fn selector_labels(pipeline: &StreamPipeline) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), "sluice-runner".into()),
        (PIPELINE_LABEL.into(), pipeline.name_any()),
    ])
}

/// The label selector of one pipeline's runner pods, as a query string.
pub fn runner_pod_selector(pipeline: &StreamPipeline) -> String {
    selector_labels(pipeline)
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Metadata of an owned object: its name, the pipeline's namespace, labels and
/// a controller owner reference, so deleting the pipeline deletes it.
fn owned_meta(pipeline: &StreamPipeline, name: String) -> ObjectMeta {
    let mut labels = selector_labels(pipeline);
    labels.insert(
        "app.kubernetes.io/managed-by".into(),
        "sluice-controller".into(),
    );
    ObjectMeta {
        name: Some(name),
        namespace: pipeline.namespace(),
        labels: Some(labels),
        owner_references: pipeline.controller_owner_ref(&()).map(|owner| vec![owner]),
        ..ObjectMeta::default()
    }
}
