//! One test binary per crate: each integration test module links the crate and
//! its dependencies once, instead of once per file.

mod chart;
mod docs;
mod kafka_broker;
