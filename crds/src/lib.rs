//! The `StreamPipeline` custom resource (`sluice.dev/v1alpha1`), shared by the
//! controller and the runner: its spec, status, validation and the CRD YAML.

mod duration;
pub mod expression;
pub mod manifest;
pub mod rules;
mod runner_status;
mod secret;
pub mod v1alpha1;

pub use duration::{DURATION_PATTERN, Duration, DurationError};
pub use expression::{InvalidExpression, InvalidExpressions, check_expressions};
pub use manifest::{ManifestError, Violation, parse_pipeline};
pub use runner_status::RunnerStatus;
pub use secret::{
    CredentialsRef, SECRETS_DIR, SECRETS_DIR_ENV, SecretKeyRef, SecretRef, secret_env_var,
};
pub use v1alpha1::*;

/// The CustomResourceDefinition as YAML, exactly as checked in at
/// `crds/streampipeline.yaml`.
pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
    use kube::CustomResourceExt;
    serde_yaml::to_string(&StreamPipeline::crd())
}
