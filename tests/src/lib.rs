//! Harnesses that start the real services the tests talk to (S3, Kafka,
//! ClickHouse) and in-process HTTP test servers (REST API, Elasticsearch `_bulk`).

pub mod clickhouse;
pub mod elasticsearch;
pub mod front;
pub mod kafka;
pub mod moto;
pub mod net;
pub mod rest_api;
pub mod tls;
