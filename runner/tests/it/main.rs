//! One test binary per crate: each integration test module links the crate and
//! its dependencies once, instead of once per file.

mod clickhouse_sink;
mod common;
mod dedup;
mod elasticsearch_sink;
mod epoch_bytes;
mod event_time;
mod kafka;
mod key_group_sinks;
mod key_groups;
mod lineage;
mod outages;
mod recovery;
mod recovery_s3;
mod reference_query;
mod rest_source;
mod retention;
mod update_mode;
