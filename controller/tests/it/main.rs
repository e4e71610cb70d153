//! One test binary per crate: each integration test module links the crate and
//! its dependencies once, instead of once per file.

mod binary;
mod common;
mod controller_loop;
mod permissions;
mod pod_status;
mod reconcile;
mod rescale;
mod secrets;
mod webhooks;
