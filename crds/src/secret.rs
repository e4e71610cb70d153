//! References to Kubernetes Secrets. Sluice never accepts a secret value inline:
//! manifests name a Secret, the controller mounts it into the runner pod, and the
//! runner reads it from the environment or a file at start-up.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One key of a Secret in the pipeline's namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1))]
    pub name: String,
    /// Key within the Secret.
    #[schemars(length(min = 1))]
    pub key: String,
}

/// A whole Secret whose keys become environment variables of the runner
/// (for example `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` for S3).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    /// Name of the Secret.
    #[schemars(length(min = 1))]
    pub name: String,
}

/// A Secret holding a user name and a password.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CredentialsRef {
    /// Name of the Secret.
    #[schemars(length(min = 1))]
    pub name: String,
    /// Key holding the user name.
    #[serde(default = "default_username_key")]
    pub username_key: String,
    /// Key holding the password.
    #[serde(default = "default_password_key")]
    pub password_key: String,
}

fn default_username_key() -> String {
    "username".into()
}

fn default_password_key() -> String {
    "password".into()
}
