//! The runners' own ServiceAccount: they call no Kubernetes API, so it has no
//! role bindings and its token is not mounted. Its annotations (the chart's
//! `runner.serviceAccount.annotations`) bind it to a cloud identity
//! (workload identity), whose webhooks project their own token.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ServiceAccount;
use sluice_crds::StreamPipeline;

use super::{Names, owned_meta};

pub(super) fn render(
    pipeline: &StreamPipeline,
    annotations: &BTreeMap<String, String>,
) -> ServiceAccount {
    let mut metadata = owned_meta(pipeline, Names::service_account(pipeline));
    metadata.annotations = (!annotations.is_empty()).then(|| annotations.clone());
    ServiceAccount {
        metadata,
        automount_service_account_token: Some(false),
        ..ServiceAccount::default()
    }
}
