//! Secret values as the controller hands them to a runner pod: a
//! [`SecretKeyRef`] is the file `<dir>/<secret>/<key>` under
//! `$SLUICE_SECRETS_DIR` (default `/var/run/secrets/sluice`), a
//! [`CredentialsRef`] is the pair of `SLUICE_SECRET_<SECRET>_<KEY>` environment
//! variables. Values are read once at start-up and never logged.

use std::path::PathBuf;

use sluice_crds::{CredentialsRef, SECRETS_DIR, SECRETS_DIR_ENV, SecretKeyRef};

/// A secret that is not where the controller puts it (the message names the
/// file or variable, never a value).
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read mounted secret file {path}: {error}")]
    File { path: String, error: std::io::Error },
    #[error("environment variable {0} (from the referenced Secret) is not set")]
    Env(String),
}

/// Reads secret values from the runner's environment.
#[derive(Clone, Debug)]
pub struct Secrets {
    dir: PathBuf,
}

impl Secrets {
    /// The runner's own secrets folder.
    pub fn from_env() -> Self {
        Self {
            dir: std::env::var_os(SECRETS_DIR_ENV)
                .map_or_else(|| PathBuf::from(SECRETS_DIR), PathBuf::from),
        }
    }

    /// Secrets under `dir` instead (for `sluice-runner run` outside a cluster, and tests).
    pub fn in_dir(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The file that holds a Secret key (for libraries that read files themselves).
    pub fn file(&self, key: &SecretKeyRef) -> PathBuf {
        key.mounted_file(&self.dir)
    }

    /// A Secret key's content, without a trailing newline.
    pub fn key(&self, key: &SecretKeyRef) -> Result<String, SecretError> {
        let path = key.mounted_file(&self.dir);
        std::fs::read_to_string(&path)
            .map(|text| text.trim_end_matches(['\r', '\n']).to_owned())
            .map_err(|error| SecretError::File {
                path: path.display().to_string(),
                error,
            })
    }

    /// User name and password.
    pub fn credentials(
        &self,
        credentials: &CredentialsRef,
    ) -> Result<(String, String), SecretError> {
        let var = |name: String| std::env::var(&name).map_err(|_| SecretError::Env(name));
        Ok((
            var(credentials.username_env())?,
            var(credentials.password_env())?,
        ))
    }
}
