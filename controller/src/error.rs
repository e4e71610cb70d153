//! What can go wrong while reconciling one StreamPipeline.

use kube::runtime::finalizer;

/// A failed reconcile; the object is retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("StreamPipeline has no namespace")]
    NotNamespaced,
    #[error("cannot {action} {kind} {name:?}: {source}")]
    Api {
        action: &'static str,
        kind: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("cannot render the pipeline for the runners: {0}")]
    Render(#[from] crate::render::RenderError),
    #[error("cannot serialise the status: {0}")]
    Serialize(#[source] serde_json::Error),
    #[error("cannot delete checkpoints at {uri}: {source}")]
    CheckpointDelete {
        uri: String,
        #[source]
        source: crate::checkpoints::CheckpointError,
    },
    #[error("finalizer {0}")]
    Finalizer(#[source] Box<finalizer::Error<Error>>),
}

impl Error {
    /// A short label for the errors metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::NotNamespaced => "not_namespaced",
            Self::Api { .. } => "api",
            Self::Render(_) => "render",
            Self::Serialize(_) => "serialize",
            Self::CheckpointDelete { .. } => "checkpoint_delete",
            Self::Finalizer(inner) => match inner.as_ref() {
                finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => {
                    e.metric_label()
                }
                _ => "finalizer",
            },
        }
    }
}

/// Wraps a kube error with what was being done to which object.
pub(crate) fn api(
    action: &'static str,
    kind: &'static str,
    name: &str,
) -> impl FnOnce(kube::Error) -> Error {
    let name = name.to_owned();
    move |source| Error::Api {
        action,
        kind,
        name,
        source,
    }
}
