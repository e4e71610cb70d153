//! The runners' own ServiceAccount: they call no Kubernetes API, so it has no
//! role bindings and its token is not mounted.

use k8s_openapi::api::core::v1::ServiceAccount;
use sluice_crds::StreamPipeline;

use super::{Names, owned_meta};

pub(super) fn render(pipeline: &StreamPipeline) -> ServiceAccount {
    ServiceAccount {
        metadata: owned_meta(pipeline, Names::service_account(pipeline)),
        automount_service_account_token: Some(false),
        ..ServiceAccount::default()
    }
}
