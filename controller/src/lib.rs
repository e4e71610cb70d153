//! `sluice-controller`: reconciles StreamPipelines into runner StatefulSets and
//! reports their lag and health.
//!
//! [`reconcile::reconcile`] is the whole per-object logic; [`run::run`] wires
//! it into kube's `Controller` behind a leader Lease. Tests call `reconcile`
//! directly against an in-memory API.

pub mod alerts;
pub mod checkpoints;
pub mod context;
pub mod error;
pub mod fingerprint;
pub mod leader;
pub mod metrics;
pub mod permissions;
pub mod reconcile;
pub mod render;
pub mod rescale;
pub mod run;
pub mod server;
pub mod status;
pub mod validate;

pub use context::{Context, Settings};
pub use error::Error;
pub use reconcile::{FINALIZER, error_policy, reconcile};
