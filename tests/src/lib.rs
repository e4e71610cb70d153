
pub mod kafka;
pub mod moto;
pub mod clickhouse;
pub mod elasticsearch;
pub mod net;
pub mod rest_api;
