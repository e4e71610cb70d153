//! Where results go: one or more sinks, plus the dead-letter output.

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    Duration,
    rules::{self, MAX_URL_LENGTH},
    secret::{CredentialsRef, SecretKeyRef, SecretRef},
};

/// What a sink receives.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum SinkInput {
    /// One row per closed window and group key.
    #[default]
    Windows,
    /// Every event that passed the transforms, as soon as its epoch commits.
    Events,
}

/// One output of the pipeline. Set `name` and exactly one of `delta`,
/// `clickhouse`, `elasticsearch` or `stdout`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new(
    "(has(self.delta) ? 1 : 0) + (has(self.clickhouse) ? 1 : 0) + (has(self.elasticsearch) ? 1 : 0) + (has(self.stdout) ? 1 : 0) == 1"
).message("each sink sets exactly one of delta, clickhouse, elasticsearch or stdout"))]
pub struct SinkSpec {
    /// Name of the sink, unique within the pipeline; part of its idempotency key.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// `windows` (the default) or `events`.
    #[serde(default)]
    pub input: SinkInput,
    /// A Delta Lake table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta: Option<DeltaSink>,
    /// A ClickHouse table, over its HTTP interface.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clickhouse: Option<ClickHouseSink>,
    /// An Elasticsearch index, through the `_bulk` API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub elasticsearch: Option<ElasticsearchSink>,
    /// JSON lines on the runner's standard output, for demos.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdout: Option<StdoutSink>,
}

/// A Delta Lake table, created on first write. Each epoch is one commit whose
/// transaction identifier makes a replayed epoch a no-op.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeltaSink {
    /// Table location: a local path, or a `file://` or `s3://` URI.
    #[schemars(length(min = 1, max = MAX_URL_LENGTH))]
    #[x_kube(validation = rules::object_store_uri())]
    pub uri: String,
    /// Secret whose keys are the object store's settings as environment
    /// variables (for example `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_ENDPOINT_URL`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<SecretRef>,
    /// Columns to partition the table by (at most 16 non-empty names).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 255)))]
    pub partition_by: Vec<String>,
}

/// A ClickHouse table written with `INSERT ... FORMAT JSONEachRow`. Sluice
/// creates nothing: the table must exist.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClickHouseSink {
    /// HTTP endpoint: `http://` or `https://`, for example `http://clickhouse:8123`.
    #[schemars(length(min = 1, max = MAX_URL_LENGTH))]
    #[x_kube(validation = rules::http_url())]
    pub url: String,
    /// Database of the table.
    #[serde(default = "default_clickhouse_database")]
    #[schemars(length(min = 1, max = 255))]
    pub database: String,
    /// Table to insert into.
    #[schemars(length(min = 1, max = 255))]
    pub table: String,
    /// User name and password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<CredentialsRef>,
    /// Most rows per INSERT.
    #[serde(default = "default_batch_rows")]
    #[schemars(range(min = 1))]
    pub batch_rows: i64,
    /// Timeout of one request; greater than zero.
    #[serde(default = "default_sink_timeout")]
    #[x_kube(validation = rules::positive_duration())]
    pub timeout: Duration,
}

fn default_clickhouse_database() -> String {
    "default".into()
}

/// An Elasticsearch (or OpenSearch) index. Document ids are derived from
/// (pipeline, window, key) so a replay overwrites instead of duplicating.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("!(has(self.credentialsSecretRef) && has(self.apiKeySecretRef))")
    .message("set at most one of credentialsSecretRef and apiKeySecretRef"))]
pub struct ElasticsearchSink {
    /// Base URL: `http://` or `https://`, for example `https://es:9200`.
    #[schemars(length(min = 1, max = MAX_URL_LENGTH))]
    #[x_kube(validation = rules::http_url())]
    pub url: String,
    /// Index to write to: lower case, none of `\ / * ? " < > | , # :` or
    /// spaces, not starting with `-`, `_` or `+`, not `.` or `..`, at most 255 bytes.
    #[schemars(length(min = 1, max = 255))]
    #[x_kube(validation = rules::elasticsearch_index())]
    pub index: String,
    /// Basic-auth user name and password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<CredentialsRef>,
    /// API key (sent as `Authorization: ApiKey <value>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_secret_ref: Option<SecretKeyRef>,
    /// Most documents per `_bulk` request.
    #[serde(default = "default_batch_rows")]
    #[schemars(range(min = 1))]
    pub batch_rows: i64,
    /// Timeout of one request; greater than zero.
    #[serde(default = "default_sink_timeout")]
    #[x_kube(validation = rules::positive_duration())]
    pub timeout: Duration,
}

fn default_batch_rows() -> i64 {
    10_000
}

fn default_sink_timeout() -> Duration {
    Duration::from_secs(30)
}

/// Print rows as JSON lines on standard output.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct StdoutSink {}

/// What happens to events that arrive after the watermark passed their windows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum LateEventPolicy {
    /// Count them in metrics and discard them.
    Drop,
    /// Send them to the dead-letter output with the reason `late`.
    #[default]
    DeadLetter,
}

/// Where malformed and late events go, with the reason. Set at most one of
/// `kafka` and `objectStore`; when neither is set, they are written as JSON lines
/// beside the checkpoints (`<checkpoint uri>/dead-letter/`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("!(has(self.kafka) && has(self.objectStore))")
    .message("set at most one of deadLetter.kafka and deadLetter.objectStore"))]
pub struct DeadLetterSpec {
    /// A Kafka topic: the original bytes, with the reason, source topic,
    /// partition and offset as headers. Uses the Kafka source's connection when
    /// `bootstrapServers` is unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka: Option<DeadLetterKafka>,
    /// JSON lines under an object-store prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_store: Option<DeadLetterObjectStore>,
}

/// A dead-letter Kafka topic.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetterKafka {
    /// Topic to produce to.
    #[schemars(length(min = 1, max = 249))]
    pub topic: String,
    /// Brokers; unset means the Kafka or Event Hubs source's brokers and
    /// security settings (required with any other source).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub bootstrap_servers: Option<String>,
}

/// A dead-letter prefix in object storage.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetterObjectStore {
    /// Prefix URI: a local path, or a `file://` or `s3://` URI.
    #[schemars(length(min = 1, max = MAX_URL_LENGTH))]
    #[x_kube(validation = rules::object_store_uri())]
    pub uri: String,
}
