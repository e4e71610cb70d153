//! Where events come from: exactly one source per pipeline.

use std::collections::BTreeMap;

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    Duration,
    rules::{self, MAX_URL_LENGTH},
    secret::{CredentialsRef, SecretKeyRef},
};

/// The pipeline's input. Set exactly one of `kafka`, `eventHub`, `rest`,
/// `generator` or `file`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new(
    "(has(self.kafka) ? 1 : 0) + (has(self.eventHub) ? 1 : 0) + (has(self.rest) ? 1 : 0) + (has(self.generator) ? 1 : 0) + (has(self.file) ? 1 : 0) == 1"
).message("exactly one of source.kafka, source.eventHub, source.rest, source.generator or source.file must be set"))]
pub struct SourceSpec {
    /// Consume one or more Kafka topics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka: Option<KafkaSource>,
    /// Consume an Azure Event Hub through its Kafka-compatible endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_hub: Option<EventHubSource>,
    /// Poll an HTTP JSON API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rest: Option<RestSource>,
    /// Generate synthetic events, for demos and benchmarks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generator: Option<GeneratorSource>,
    /// Read JSON lines from files, for replay and backfill.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<FileSource>,
}

/// Where to start reading when the pipeline has no checkpoint yet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum StartingOffsets {
    /// The oldest retained record of each partition.
    Earliest,
    /// Only records produced after the pipeline first starts.
    #[default]
    Latest,
}

/// Limits on how much one epoch (micro-batch) reads.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReadLimits {
    /// Most records one epoch reads across all partitions of this replica (unset:
    /// 1,000,000); `spec.trigger.maxBytes` bounds the epoch's bytes too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_offsets_per_trigger: Option<i64>,
    /// Most records per second this replica reads; 0 or unset means no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub max_records_per_second: Option<i64>,
}

/// Kafka consumer settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct KafkaSource {
    /// Comma-separated `host:port` list of brokers.
    #[schemars(length(min = 1, max = 4096))]
    pub bootstrap_servers: String,
    /// Topics to consume (1 to 100 names, each 1 to 249 characters).
    #[schemars(length(min = 1, max = 100), inner(length(min = 1, max = 249)))]
    pub topics: Vec<String>,
    /// Consumer group that offsets are committed to after each checkpoint, so
    /// that ordinary Kafka lag tools see the pipeline's progress.
    #[schemars(length(min = 1, max = 255))]
    pub consumer_group: String,
    /// Where to start when there is no checkpoint and the consumer group has committed no
    /// offset (so a new checkpoint lineage continues where the old one committed). Ignored
    /// once a checkpoint exists.
    #[serde(default)]
    pub starting_offsets: StartingOffsets,
    /// Per-epoch and per-second read limits.
    #[serde(default, flatten)]
    pub limits: ReadLimits,
    /// TLS settings; unset means plaintext unless SASL over SSL is configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<KafkaTls>,
    /// SASL authentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sasl: Option<KafkaSasl>,
    /// Extra librdkafka consumer properties (at most 64). Secrets are refused
    /// here (`sasl.password`, `sasl.jaas.config`, `sasl.oauthbearer.client.secret`,
    /// `ssl.key.password`, `ssl.key.pem`, `ssl.keystore.password`,
    /// `ssl.truststore.password`): they go through `sasl` and `tls` secret references.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64), inner(length(max = 4096)))]
    #[x_kube(validation = rules::no_secret_kafka_properties())]
    pub properties: BTreeMap<String, String>,
}

/// TLS towards the brokers. Certificates come from Secrets mounted into the runner.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct KafkaTls {
    /// CA bundle that signs the brokers' certificates (PEM); unset uses the system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretKeyRef>,
    /// Client certificate for mutual TLS (PEM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_secret_ref: Option<SecretKeyRef>,
    /// Client private key for mutual TLS (PEM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_secret_ref: Option<SecretKeyRef>,
}

/// SASL mechanisms supported by the Kafka source.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum SaslMechanism {
    #[serde(rename = "PLAIN")]
    Plain,
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

/// SASL authentication with a user name and password from a Secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct KafkaSasl {
    /// SASL mechanism.
    pub mechanism: SaslMechanism,
    /// Secret with the user name and password.
    pub secret_ref: CredentialsRef,
}

/// Azure Event Hubs, read through its Kafka-protocol endpoint
/// (`<namespace>.servicebus.windows.net:9093`, SASL_SSL with PLAIN and
/// `$ConnectionString` as the user name).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventHubSource {
    /// Event Hubs namespace name alone (`mynamespace`), without the
    /// `.servicebus.windows.net` suffix; at most 50 characters.
    #[schemars(length(min = 1, max = 50))]
    #[x_kube(validation = kube::core::Rule::new("!self.contains('.')")
        .message("give the namespace name alone, without .servicebus.windows.net (set endpoint for another cloud or an emulator)"))]
    pub namespace: String,
    /// Event hub (the Kafka topic) to consume.
    #[schemars(length(min = 1, max = 256))]
    pub event_hub: String,
    /// Consumer group.
    #[serde(default = "default_event_hub_group")]
    #[schemars(length(min = 1, max = 256))]
    pub consumer_group: String,
    /// Secret key holding the namespace or event hub connection string.
    pub connection_string_secret_ref: SecretKeyRef,
    /// Where to start when there is no checkpoint and the consumer group has committed no
    /// offset.
    #[serde(default)]
    pub starting_offsets: StartingOffsets,
    /// Per-epoch and per-second read limits.
    #[serde(default, flatten)]
    pub limits: ReadLimits,
    /// Override of the broker endpoint (`host:port`), for sovereign clouds or emulators.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub endpoint: Option<String>,
}

fn default_event_hub_group() -> String {
    "$Default".into()
}

/// HTTP method of a REST source.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum HttpMethod {
    #[default]
    #[serde(rename = "GET")]
    Get,
    #[serde(rename = "POST")]
    Post,
}

/// Poll an HTTP JSON API. Each response carries an array of events; the cursor
/// (or page) is part of the checkpoint, so a restart neither re-reads nor skips.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestSource {
    /// URL to poll: `http://` or `https://`.
    #[schemars(length(min = 1, max = MAX_URL_LENGTH))]
    #[x_kube(validation = rules::http_url())]
    pub url: String,
    /// HTTP method.
    #[serde(default)]
    pub method: HttpMethod,
    /// Request headers (at most 32); values that are credentials come from Secrets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub headers: Vec<HttpHeader>,
    /// How long to wait between polls once the API has no more pages; greater than zero.
    #[serde(default = "default_poll_interval")]
    #[x_kube(validation = rules::positive_duration())]
    pub poll_interval: Duration,
    /// Dot-separated path to the array of events in the response body
    /// (for example `data.items`); empty means the body itself is the array.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub events_path: String,
    /// How to ask for the next page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pagination: Option<Pagination>,
    /// Most requests per second; 0 or unset means no limit besides the
    /// server's `Retry-After`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub max_requests_per_second: Option<f64>,
    /// Timeout of one request; greater than zero.
    #[serde(default = "default_request_timeout")]
    #[x_kube(validation = rules::positive_duration())]
    pub timeout: Duration,
}

fn default_poll_interval() -> Duration {
    Duration::from_secs(10)
}

fn default_request_timeout() -> Duration {
    Duration::from_secs(30)
}

/// One HTTP header. Set exactly one of `value` and `valueFrom`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("has(self.value) != has(self.valueFrom)")
    .message("set exactly one of value and valueFrom"))]
#[x_kube(validation = rules::no_literal_credential_header())]
pub struct HttpHeader {
    /// Header name.
    #[schemars(length(min = 1, max = 256))]
    pub name: String,
    /// Literal value, for headers that are not secret; `Authorization`,
    /// `Proxy-Authorization`, `Cookie`, `X-Api-Key`, `Api-Key` and
    /// `X-Auth-Token` must use `valueFrom`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 8192))]
    pub value: Option<String>,
    /// Value read from a Secret, for tokens and API keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_from: Option<SecretKeyRef>,
}

/// Pagination of a REST source. Set exactly one of `cursor` and `page`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("has(self.cursor) != has(self.page)")
    .message("set exactly one of pagination.cursor and pagination.page"))]
pub struct Pagination {
    /// The response names the next cursor; the request passes it back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<CursorPagination>,
    /// Numbered pages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page: Option<PagePagination>,
}

/// Cursor pagination: `?<param>=<cursor>`, the next cursor found at `responsePath`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct CursorPagination {
    /// Query parameter that carries the cursor.
    #[schemars(length(min = 1))]
    pub param: String,
    /// Dot-separated path of the next cursor in the response; absent or null means no more pages.
    #[schemars(length(min = 1))]
    pub response_path: String,
}

/// Page-number pagination: `?<param>=<n>&<sizeParam>=<size>`, stopping at an empty page.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PagePagination {
    /// Query parameter that carries the page number.
    #[schemars(length(min = 1))]
    pub param: String,
    /// Query parameter that carries the page size (unset: not sent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_param: Option<String>,
    /// Page size to ask for.
    #[serde(default = "default_page_size")]
    #[schemars(range(min = 1))]
    pub size: i64,
    /// Number of the first page.
    #[serde(default = "default_first_page")]
    pub first_page: i64,
}

fn default_page_size() -> i64 {
    100
}

fn default_first_page() -> i64 {
    1
}

/// Synthetic events `{"timestamp", "event_type", "key", "value"}`, deterministic
/// for a given seed, with a configurable share of out-of-order and late events.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct GeneratorSource {
    /// Events per second of wall-clock time; 0 generates as fast as the pipeline consumes.
    #[serde(default = "default_generator_rate")]
    #[schemars(range(min = 0))]
    pub events_per_second: i64,
    /// Stop after this many events (unset: run forever).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub total_events: Option<i64>,
    /// Values of the `event_type` field (1 to 1000 non-empty names).
    #[serde(default = "default_event_types")]
    #[schemars(length(min = 1, max = 1000), inner(length(min = 1, max = 253)))]
    pub event_types: Vec<String>,
    /// Number of distinct values of the `key` field.
    #[serde(default = "default_key_count")]
    #[schemars(range(min = 1))]
    pub key_count: i64,
    /// Event-time distance between consecutive events; greater than zero.
    #[serde(default = "default_event_spacing")]
    #[x_kube(validation = rules::positive_duration())]
    pub event_spacing: Duration,
    /// Largest amount an event's time may lag behind the newest event (out-of-orderness).
    #[serde(default = "default_max_disorder")]
    pub max_disorder: Duration,
    /// Share of events, from 0 to 1, that arrive far later than the watermark allows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub late_fraction: Option<f64>,
    /// Random seed; the same seed produces the same events.
    #[serde(default)]
    pub seed: u64,
    /// Event time of the first event (RFC 3339; unset: the time the pipeline starts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
}

impl Default for GeneratorSource {
    fn default() -> Self {
        Self {
            events_per_second: default_generator_rate(),
            total_events: None,
            event_types: default_event_types(),
            key_count: default_key_count(),
            event_spacing: default_event_spacing(),
            max_disorder: default_max_disorder(),
            late_fraction: None,
            seed: 0,
            start_time: None,
        }
    }
}

fn default_generator_rate() -> i64 {
    1000
}

fn default_event_types() -> Vec<String> {
    ["view", "click", "add_to_cart", "purchase"]
        .map(String::from)
        .to_vec()
}

fn default_key_count() -> i64 {
    1000
}

fn default_event_spacing() -> Duration {
    Duration::from_millis(10)
}

fn default_max_disorder() -> Duration {
    Duration::from_secs(30)
}

/// JSON-lines files read in name order; the byte offset is checkpointed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct FileSource {
    /// A file, or a directory whose `*.jsonl` / `*.json` files are read in name order.
    #[schemars(length(min = 1))]
    pub path: String,
    /// Most lines one epoch reads (unset: 100,000); `spec.trigger.maxBytes` bounds
    /// the epoch's bytes too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_lines_per_trigger: Option<i64>,
    /// Keep watching for appended data after reaching the end, instead of finishing.
    #[serde(default)]
    pub follow: bool,
}
