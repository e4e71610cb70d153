//! Checks that need the cluster: referenced Secrets and their keys exist, and
//! the checkpoint URI is reachable from pods. Each failure is a message a
//! person can act on; none contains a secret value.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use sluice_crds::StreamPipelineSpec;

use crate::{
    error::{self, Error},
    render::secret_references,
};

/// Why a pipeline cannot run until its spec or the cluster changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invalid {
    /// Condition reason (CamelCase).
    pub reason: &'static str,
    pub message: String,
}

/// Object-store schemes runner pods can reach.
const REMOTE_SCHEMES: &[&str] = &["s3", "gs", "az", "abfss"];

/// Refuses a checkpoint location that only exists on one machine.
pub fn checkpoint_uri(spec: &StreamPipelineSpec) -> Option<Invalid> {
    let uri = &spec.checkpoint.uri;
    let scheme = uri.split_once("://").map(|(scheme, _)| scheme);
    if scheme.is_some_and(|s| REMOTE_SCHEMES.contains(&s)) {
        return None;
    }
    Some(Invalid {
        reason: "UnsupportedCheckpointUri",
        message: format!(
            "spec.checkpoint.uri {uri:?} is a local path, which runner pods cannot share or keep across restarts; \
             use object storage such as s3://bucket/prefix (or gs://, az://, abfss://)"
        ),
    })
}

/// Fetches every referenced Secret once; reports the first missing Secret or key.
pub async fn secrets(
    secrets: &Api<Secret>,
    namespace: &str,
    spec: &StreamPipelineSpec,
) -> Result<Option<Invalid>, Error> {
    let mut fetched: BTreeMap<String, Option<Secret>> = BTreeMap::new();
    for reference in secret_references(spec) {
        if !fetched.contains_key(&reference.secret) {
            let secret = secrets
                .get_opt(&reference.secret)
                .await
                .map_err(error::api("get", "Secret", &reference.secret))?;
            fetched.insert(reference.secret.clone(), secret);
        }
        let Some(secret) = fetched.get(&reference.secret).and_then(Option::as_ref) else {
            return Ok(Some(Invalid {
                reason: "SecretNotFound",
                message: format!(
                    "Secret {:?} referenced by {} does not exist in namespace {namespace:?}; create it or correct the reference",
                    reference.secret, reference.field
                ),
            }));
        };
        let has = |key: &str| {
            secret.data.as_ref().is_some_and(|d| d.contains_key(key))
                || secret
                    .string_data
                    .as_ref()
                    .is_some_and(|d| d.contains_key(key))
        };
        if let Some(key) = reference.keys.iter().find(|key| !has(key)) {
            return Ok(Some(Invalid {
                reason: "SecretKeyNotFound",
                message: format!(
                    "Secret {:?} referenced by {} has no key {key:?}; add the key or correct the reference",
                    reference.secret, reference.field
                ),
            }));
        }
    }
    Ok(None)
}
