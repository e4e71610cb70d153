//! The `StreamPipeline` custom resource (`sluice.dev/v1alpha1`), shared by the
//! controller and the runner: its spec, status, validation and the CRD YAML.

mod duration;
pub mod expression;
pub mod manifest;
pub mod rules;
mod runner_status;
mod secret;
mod secret_fields;
pub mod v1alpha1;

pub use duration::{DURATION_PATTERN, Duration, DurationError};
pub use expression::{InvalidExpression, InvalidExpressions, check_expressions};
pub use manifest::{ManifestError, Violation, parse_pipeline};
pub use runner_status::RunnerStatus;
pub use secret::{
    CredentialsRef, SECRETS_DIR, SECRETS_DIR_ENV, SecretKeyRef, SecretRef, secret_env_var,
};
pub use secret_fields::{ReferencedSecret, SecretField, SecretFieldsError, secret_fields};
pub use v1alpha1::*;

/// Annotations that keep the CRD when the release or Application that
/// installed it is deleted: deleting a CRD deletes every StreamPipeline in
/// the cluster. Helm keeps it (`helm uninstall`), Argo CD neither prunes nor
/// deletes it (`argocd app delete`).
pub const CRD_ANNOTATIONS: [(&str, &str); 2] = [
    ("helm.sh/resource-policy", "keep"),
    (
        "argocd.argoproj.io/sync-options",
        "Prune=false,Delete=false",
    ),
];

/// The CustomResourceDefinition as YAML, exactly as checked in at
/// `crds/streampipeline.yaml`.
pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
    use kube::CustomResourceExt;
    let mut crd = StreamPipeline::crd();
    crd.metadata.annotations = Some(
        CRD_ANNOTATIONS
            .iter()
            .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
            .collect(),
    );
    serde_yaml::to_string(&crd)
}
