//! One test binary per crate: each integration test module links the crate and
//! its dependencies once, instead of once per file.

mod alerts;
mod chart;
mod docs;
mod helm;
mod kafka_broker;
