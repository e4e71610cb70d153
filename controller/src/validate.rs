//! Checks the API server cannot make: transform expressions compile,
//! referenced Secrets and their keys exist (and webhook URLs in them are
//! HTTP), and the checkpoint URI is reachable from pods. Each failure is a
//! message a person can act on; none contains a secret value.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use sluice_crds::{StreamPipelineSpec, check_expressions, rules::OBJECT_STORE_SCHEMES};

use crate::{
    error::{self, Error},
    render::{RenderError, SecretUse, secret_references},
};

/// Why a pipeline cannot run until its spec or the cluster changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invalid {
    /// Condition reason (CamelCase).
    pub reason: &'static str,
    pub message: String,
}

/// Refuses a pipeline whose transform expressions cannot run, before any
/// runner starts (the runner makes the same check with the same function).
pub fn expressions(spec: &StreamPipelineSpec) -> Option<Invalid> {
    check_expressions(&spec.transforms)
        .err()
        .map(|invalid| Invalid {
            reason: "InvalidExpression",
            message: invalid.to_string(),
        })
}

/// Refuses a checkpoint location that only exists on one machine.
pub fn checkpoint_uri(spec: &StreamPipelineSpec) -> Option<Invalid> {
    let uri = &spec.checkpoint.uri;
    let scheme = uri.split_once("://").map(|(scheme, _)| scheme);
    if scheme.is_some_and(|s| s != "file" && OBJECT_STORE_SCHEMES.contains(&s)) {
        return None;
    }
    Some(Invalid {
        reason: "UnsupportedCheckpointUri",
        message: format!(
            "spec.checkpoint.uri {uri:?} is a local path, which runner pods cannot share or keep across restarts; \
             use object storage such as s3://bucket/prefix"
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
    let references = secret_references(spec).map_err(RenderError::from)?;
    for reference in references {
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
        let value = |key: &str| {
            let data = secret.data.as_ref().and_then(|d| d.get(key));
            data.map(|bytes| String::from_utf8_lossy(&bytes.0).into_owned())
                .or_else(|| secret.string_data.as_ref()?.get(key).cloned())
        };
        for key in &reference.keys {
            let Some(value) = value(key) else {
                return Ok(Some(Invalid {
                    reason: "SecretKeyNotFound",
                    message: format!(
                        "Secret {:?} referenced by {} has no key {key:?}; add the key or correct the reference",
                        reference.secret, reference.field
                    ),
                }));
            };
            let url = value.trim();
            if reference.usage == SecretUse::Controller
                && !(url.starts_with("http://") || url.starts_with("https://"))
            {
                return Ok(Some(Invalid {
                    reason: "InvalidWebhookUrl",
                    message: format!(
                        "key {key:?} of Secret {:?} referenced by {} does not hold an http:// or https:// URL; \
                         put the webhook's full URL there",
                        reference.secret, reference.field
                    ),
                }));
            }
        }
    }
    Ok(None)
}
