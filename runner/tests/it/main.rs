//! One test binary per crate: each integration test module links the crate and
//! its dependencies once, instead of once per file.

mod common;
mod clickhouse_sink;
mod dedup;
mod elasticsearch_sink;
mod kafka;
mod recovery;
mod recovery_s3;
mod reference_query;
mod rest_source;
mod retention;
