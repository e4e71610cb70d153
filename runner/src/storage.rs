//! Object stores from URIs: a local path (the embedded default), `file://`,
//! or `s3://bucket/prefix` (settings from the `AWS_*` environment, for example
//! `AWS_ENDPOINT_URL` and `AWS_ALLOW_HTTP` for an S3-compatible endpoint).

use std::sync::Arc;

use object_store::{
    ObjectStore,
    aws::{AmazonS3Builder, S3ConditionalPut},
    local::LocalFileSystem,
    prefix::PrefixStore,
};

/// Why a storage URI could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("cannot use {uri}: {error}")]
    ObjectStore {
        uri: String,
        error: object_store::Error,
    },
    #[error("cannot create the local folder {path}: {error}")]
    LocalFolder { path: String, error: std::io::Error },
    #[error("unsupported storage URI {0}: use a local path, file:// or s3://")]
    Unsupported(String),
}

/// An object store rooted at `uri`: every path is relative to it.
pub fn store_for(uri: &str) -> Result<Arc<dyn ObjectStore>, StorageError> {
    let object_store_error = |error| StorageError::ObjectStore {
        uri: uri.to_owned(),
        error,
    };
    if let Some(rest) = uri.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        // ETag conditions give write-once puts (PutMode::Create) on S3 and
        // S3-compatible stores: the checkpoint protocol relies on them.
        let s3 = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_conditional_put(S3ConditionalPut::ETagMatch)
            .build()
            .map_err(object_store_error)?;
        let prefix = prefix.trim_matches('/');
        return Ok(if prefix.is_empty() {
            Arc::new(s3)
        } else {
            Arc::new(PrefixStore::new(s3, prefix))
        });
    }
    let path = match uri.strip_prefix("file://") {
        Some(path) => path,
        None if uri.contains("://") => return Err(StorageError::Unsupported(uri.to_owned())),
        None => uri,
    };
    std::fs::create_dir_all(path).map_err(|error| StorageError::LocalFolder {
        path: path.to_owned(),
        error,
    })?;
    let local = LocalFileSystem::new_with_prefix(path).map_err(object_store_error)?;
    Ok(Arc::new(local))
}

/// Whether an object-store failure may pass by itself, so that the runner
/// reports it, backs off and resumes instead of exiting: the store did not
/// answer (refused or dropped connections, timeouts, after the client's own
/// retries), answered with a server error, or refused credentials or a
/// bucket that may yet be fixed without restarting the runner. Not an answer
/// about the objects themselves (one already exists, a precondition failed)
/// or a request the store can never serve.
pub fn is_transient(error: &object_store::Error) -> bool {
    !matches!(
        error,
        object_store::Error::AlreadyExists { .. }
            | object_store::Error::Precondition { .. }
            | object_store::Error::NotModified { .. }
            | object_store::Error::NotSupported { .. }
            | object_store::Error::NotImplemented { .. }
            | object_store::Error::InvalidPath { .. }
            | object_store::Error::UnknownConfigurationKey { .. }
            | object_store::Error::JoinError { .. }
    )
}
