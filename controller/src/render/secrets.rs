//! Every Secret a pipeline references, where in the spec, and how it reaches
//! the runner. Values are never read here: pods get them from the kubelet.
//! The references are found by their types ([`secret_fields`]), so a Secret
//! field added to the spec is mounted without a change here.

use sluice_crds::{
    ReferencedSecret, SecretField, SecretFieldsError, StreamPipelineSpec, secret_fields,
};

/// Sections of the spec that only the controller reads: Secrets referenced
/// there are never given to the runners.
const CONTROLLER_SECTIONS: [&str; 1] = ["spec.alerts"];

/// How a Secret reaches the runner (the contract with `sluice-runner`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecretUse {
    /// Keys mounted as files `<SECRETS_DIR>/<secret>/<key>` ([`sluice_crds::SecretKeyRef`]).
    File,
    /// Keys as `SLUICE_SECRET_<SECRET>_<KEY>` variables ([`sluice_crds::CredentialsRef`]).
    Env,
    /// Every key as an environment variable of its own name ([`sluice_crds::SecretRef`]).
    EnvFrom,
    /// Read by the controller itself, never given to the runners (webhook URLs).
    Controller,
}

/// One reference to a Secret in a pipeline spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretReference {
    /// Dotted path of the referencing field, for messages.
    pub field: String,
    /// Secret name.
    pub secret: String,
    /// Keys that must exist (empty: the whole Secret).
    pub keys: Vec<String>,
    pub usage: SecretUse,
}

impl From<SecretField> for SecretReference {
    fn from(SecretField { path, secret }: SecretField) -> Self {
        let read_by_controller = CONTROLLER_SECTIONS
            .iter()
            .any(|section| path.starts_with(&format!("{section}.")));
        let (secret, keys, usage) = match secret {
            ReferencedSecret::Key(key) => (key.name, vec![key.key], SecretUse::File),
            ReferencedSecret::Credentials(credentials) => (
                credentials.name,
                vec![credentials.username_key, credentials.password_key],
                SecretUse::Env,
            ),
            ReferencedSecret::Whole(whole) => (whole.name, Vec::new(), SecretUse::EnvFrom),
        };
        Self {
            field: path,
            secret,
            keys,
            usage: if read_by_controller {
                SecretUse::Controller
            } else {
                usage
            },
        }
    }
}

/// All Secret references of `spec`.
pub fn secret_references(
    spec: &StreamPipelineSpec,
) -> Result<Vec<SecretReference>, SecretFieldsError> {
    Ok(secret_fields(spec)?
        .into_iter()
        .map(SecretReference::from)
        .collect())
}
