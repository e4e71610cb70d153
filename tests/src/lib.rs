//! Harnesses that start the real services the tests talk to (S3, Kafka,
//! ClickHouse 18.16 and the current engine, an OpenSearch-compatible server)
//! and in-process HTTP test servers (REST API, an Elasticsearch `_bulk`
//! stand-in for injected faults), and the command-line tools that check the
//! chart and the docs.

pub mod chdb;
pub mod clickhouse;
pub mod elasticsearch;
pub mod front;
pub mod kafka;
pub mod moto;
pub mod net;
pub mod opensearch;
pub mod rest_api;
pub mod tls;
pub mod tools;
