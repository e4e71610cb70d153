//! Deleting a pipeline's checkpoints (every lineage) when it is deleted with
//! `spec.checkpoint.retainOnDelete: false`.

use std::collections::BTreeMap;

use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStore;
use url::Url;

/// Why checkpoints could not be deleted.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("not a URI: {0}")]
    Url(#[from] url::ParseError),
    #[error(transparent)]
    Store(#[from] object_store::Error),
}

/// Deletes every object under `uri`, with the object store settings in
/// `settings` (the checkpoint credentials Secret: the same `AWS_*`,
/// `GOOGLE_*` or `AZURE_*` names the runners get as environment variables).
/// Returns how many objects were deleted.
pub async fn delete_all(
    uri: &str,
    settings: &BTreeMap<String, String>,
) -> Result<usize, CheckpointError> {
    let url = Url::parse(uri)?;
    let options = settings
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()));
    let (store, prefix) = object_store::parse_url_opts(&url, options)?;
    let locations = store
        .list(Some(&prefix))
        .map_ok(|meta| meta.location)
        .boxed();
    let deleted: Vec<_> = store.delete_stream(locations).try_collect().await?;
    Ok(deleted.len())
}
