//! The ConfigMap holding the pipeline manifest the runners read.

use std::collections::BTreeMap;

use k8s_openapi::{api::core::v1::ConfigMap, apimachinery::pkg::apis::meta::v1::ObjectMeta};
use kube::{Resource, ResourceExt};
use sluice_crds::StreamPipeline;

use super::{Names, owned_meta};

/// Key of the manifest in the ConfigMap.
pub const CONFIG_KEY: &str = "pipeline.yaml";
/// Where runner pods see the manifest.
pub const CONFIG_FILE: &str = "/etc/sluice/pipeline.yaml";

/// The checkpoint location of lineage `lineage`: `<checkpoint uri>/lineage-<n>`.
pub fn lineage_uri(checkpoint_uri: &str, lineage: i64) -> String {
    format!("{}/lineage-{lineage}", checkpoint_uri.trim_end_matches('/'))
}

/// The manifest is the pipeline itself (secret references only, never
/// values), with the checkpoint URI moved to the lineage in use and the
/// parallelism of the runner set, so the runner needs nothing but this file.
/// `spec.suspend` is always false in it.
pub(super) fn render(
    pipeline: &StreamPipeline,
    lineage: i64,
    parallelism: i32,
) -> Result<ConfigMap, serde_yaml::Error> {
    let mut spec = pipeline.spec.clone();
    spec.checkpoint.uri = lineage_uri(&spec.checkpoint.uri, lineage);
    spec.parallelism = parallelism;
    // Suspending is the controller's business (it scales the runners to
    // zero): left out, so that suspend and resume do not change the pod
    // template, and a rescale's stopped set stays the same generation.
    spec.suspend = false;
    let mut manifest = StreamPipeline::new(&pipeline.name_any(), spec);
    manifest.metadata = ObjectMeta {
        name: pipeline.metadata.name.clone(),
        namespace: pipeline.metadata.namespace.clone(),
        uid: pipeline.meta().uid.clone(),
        ..ObjectMeta::default()
    };
    let text = serde_yaml::to_string(&manifest)?;
    Ok(ConfigMap {
        metadata: owned_meta(pipeline, Names::config_map(pipeline)),
        data: Some(BTreeMap::from([(CONFIG_KEY.to_owned(), text)])),
        ..ConfigMap::default()
    })
}
