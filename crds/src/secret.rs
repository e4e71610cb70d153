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

/// Where the controller mounts, in runner pods, each Secret a [`SecretKeyRef`]
/// names: the key is the file `<dir>/<secret name>/<key>` (TLS material,
/// connection strings). The controller and the runner share these names so
/// they agree at compile time.
pub const SECRETS_DIR: &str = "/var/run/secrets/sluice";

/// Environment variable that moves [`SECRETS_DIR`] (for `sluice-runner run`
/// outside a cluster, and tests).
pub const SECRETS_DIR_ENV: &str = "SLUICE_SECRETS_DIR";

impl SecretKeyRef {
    /// The file holding this key under a secrets folder (normally [`SECRETS_DIR`]).
    pub fn mounted_file(&self, secrets_dir: &std::path::Path) -> std::path::PathBuf {
        secrets_dir.join(&self.name).join(&self.key)
    }
}

impl CredentialsRef {
    /// Environment variable the controller fills with the user name.
    pub fn username_env(&self) -> String {
        secret_env_var(&self.name, &self.username_key)
    }

    /// Environment variable the controller fills with the password.
    pub fn password_env(&self) -> String {
        secret_env_var(&self.name, &self.password_key)
    }
}

/// `SLUICE_SECRET_<NAME>_<KEY>`, upper-cased, with every character that is not
/// a letter or digit replaced by `_` (Secret names allow `-` and `.`).
pub fn secret_env_var(secret: &str, key: &str) -> String {
    let name: String = format!("{secret}_{key}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("SLUICE_SECRET_{name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_become_predictable_env_vars() {
        let credentials = CredentialsRef {
            name: "kafka-user.prod".into(),
            username_key: default_username_key(),
            password_key: "pass-word".into(),
        };
        assert_eq!(
            credentials.username_env(),
            "SLUICE_SECRET_KAFKA_USER_PROD_USERNAME"
        );
        assert_eq!(
            credentials.password_env(),
            "SLUICE_SECRET_KAFKA_USER_PROD_PASS_WORD"
        );
    }

    #[test]
    fn secret_keys_are_files_under_the_secrets_dir() {
        let key = SecretKeyRef {
            name: "kafka-ca".into(),
            key: "ca.crt".into(),
        };
        assert_eq!(
            key.mounted_file(std::path::Path::new(SECRETS_DIR)),
            std::path::Path::new("/var/run/secrets/sluice/kafka-ca/ca.crt")
        );
    }
}
