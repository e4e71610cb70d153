
pub mod clickhouse;
pub mod elasticsearch;
pub mod kafka;
pub mod net;
pub mod rest_api;
