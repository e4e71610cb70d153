//! One test binary per crate: each integration test module links the crate and
//! its dependencies once, instead of once per file.

mod binary;
mod common;
mod permissions;
mod reconcile;
mod webhooks;
