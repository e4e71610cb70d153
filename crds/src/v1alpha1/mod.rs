//! `StreamPipeline` (`sluice.dev/v1alpha1`): the one resource users write.

mod sink;
mod source;
mod status;
mod window;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ResourceRequirements, Toleration};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use self::{sink::*, source::*, status::*, window::*};
use crate::{
    Duration,
    rules::{self, MAX_PIPELINE_NAME_LENGTH},
    secret::SecretRef,
};

/// A windowed stream-processing pipeline: source → transforms → event-time
/// windows and aggregations → sinks, with checkpoints in object storage.
#[derive(CustomResource, KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "sluice.dev",
    version = "v1alpha1",
    kind = "StreamPipeline",
    plural = "streampipelines",
    shortname = "sp",
    shortname = "spipe",
    namespaced,
    status = "StreamPipelineStatus",
    derive = "Default",
    derive = "PartialEq",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Lag","type":"integer","jsonPath":".status.lag.records"}"#,
    printcolumn = r#"{"name":"Events/s","type":"number","jsonPath":".status.eventsPerSecond"}"#,
    printcolumn = r#"{"name":"Watermark","type":"string","priority":1,"jsonPath":".status.watermark"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    validation = kube::core::Rule::new("has(self.spec.window) || self.spec.sinks.all(s, has(s.input) && s.input == 'events')")
        .message("spec.window is required when a sink reads window results (input: windows, the default)"),
    validation = kube::core::Rule::new("self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')")
        .message("metadata.name must be a DNS-1035 label (lower-case letters, digits and '-', starting with a letter, no dots): it names the runners' headless Service"),
    validation = kube::core::Rule::new(format!("size(self.metadata.name) <= {MAX_PIPELINE_NAME_LENGTH}"))
        .message(format!("metadata.name must be at most {MAX_PIPELINE_NAME_LENGTH} characters: the runners' StatefulSet adds a revision hash to it in a 63-character label").as_str()),
    validation = kube::core::Rule::new("!has(self.spec.deadLetter) || !has(self.spec.deadLetter.kafka) || has(self.spec.deadLetter.kafka.bootstrapServers) || has(self.spec.source.kafka) || has(self.spec.source.eventHub)")
        .message("spec.deadLetter.kafka.bootstrapServers is required when the source is not Kafka or Event Hubs: there are no brokers to reuse")
        .field_path(".spec.deadLetter.kafka"),
    validation = kube::core::Rule::new("!has(self.spec.window) || !has(self.spec.parallelism) || !has(self.spec.keyGroups) || self.spec.parallelism <= self.spec.keyGroups")
        .message("spec.parallelism must be at most spec.keyGroups: a replica without key groups would have no window work")
        .field_path(".spec.parallelism"),
    validation = kube::core::Rule::new("!has(self.spec.window) || !has(self.spec.window.session) || !has(self.spec.source.kafka) || !has(self.spec.parallelism) || self.spec.parallelism == 1")
        .message("session windows over Kafka run on one replica (spec.parallelism: 1): key groups pre-aggregate fixed panes, and a session's extent is not known until it closes")
        .field_path(".spec.parallelism"),
    validation = kube::core::Rule::new("!has(self.spec.window) || !has(self.spec.source.eventHub) || !has(self.spec.parallelism) || self.spec.parallelism == 1")
        .message("windows over Event Hubs run on one replica (spec.parallelism: 1): several replicas exchange key groups through a repartition topic the runner creates, and Event Hubs does not let Kafka clients create one")
        .field_path(".spec.parallelism"),
)]
#[serde(rename_all = "camelCase")]
pub struct StreamPipelineSpec {
    /// Where events come from.
    pub source: SourceSpec,
    /// How to decode events.
    #[serde(default)]
    pub format: FormatSpec,
    /// Filters and computed fields, applied in order before windowing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub transforms: Vec<Transform>,
    /// Event-time windows and aggregations; required when any sink reads `windows`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<WindowSpec>,
    /// What to do with events older than the watermark.
    #[serde(default)]
    pub late_events: LateEventPolicy,
    /// Where malformed and late events go.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<DeadLetterSpec>,
    /// Outputs; at least one.
    #[schemars(length(min = 1, max = 32))]
    #[x_kube(validation = kube::core::Rule::new("self.all(a, self.exists_one(b, b.name == a.name))")
        .message("sink names must be unique"))]
    pub sinks: Vec<SinkSpec>,
    /// Where checkpoints are kept.
    pub checkpoint: CheckpointSpec,
    /// How often an epoch (micro-batch) starts.
    #[serde(default)]
    pub trigger: TriggerSpec,
    /// Number of runner replicas; each owns a disjoint share of the source's partitions
    /// (replica i reads partitions p with p % parallelism == i) and of the key groups.
    #[serde(default = "default_parallelism")]
    #[schemars(range(min = 1, max = 1024))]
    pub parallelism: i32,
    /// Number of key groups windows are computed in, and so the most replicas that share
    /// window work: with a Kafka source, `spec.window` and more than one replica, each
    /// replica pre-aggregates what it reads and sends it by group key to the key group's
    /// partition of a repartition topic the runner creates (`sluice-<namespace>-<name>-keygroups`,
    /// one partition per key group), and aggregates the key groups it owns. Part of the
    /// window state: changing it needs `upgradePolicy: reset`.
    #[serde(default = "default_key_groups")]
    #[schemars(range(min = 1, max = 4096))]
    pub key_groups: i32,
    /// Stop all runners, keeping checkpoints, until set back to false.
    #[serde(default)]
    pub suspend: bool,
    /// What to do when a spec change makes the saved window state unusable.
    #[serde(default)]
    pub upgrade_policy: UpgradePolicy,
    /// Thresholds that raise the `Degraded` condition and a Warning event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alerts: Option<AlertsSpec>,
    /// Settings of the runner pods.
    #[serde(default)]
    pub runner: RunnerSpec,
}

fn default_parallelism() -> i32 {
    1
}

/// `spec.keyGroups` when unset.
pub const DEFAULT_KEY_GROUPS: i32 = 32;

fn default_key_groups() -> i32 {
    DEFAULT_KEY_GROUPS
}

/// Event encoding.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct FormatSpec {
    /// JSON objects (one per message, line or array element).
    #[serde(default)]
    pub json: JsonFormat,
}

/// JSON events and where their event time is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct JsonFormat {
    /// Dot-separated path of the event-time field.
    #[serde(default = "default_timestamp_field")]
    #[schemars(length(min = 1))]
    pub timestamp_field: String,
    /// How the event time is written.
    #[serde(default)]
    pub timestamp_format: TimestampFormat,
}

impl Default for JsonFormat {
    fn default() -> Self {
        Self {
            timestamp_field: default_timestamp_field(),
            timestamp_format: TimestampFormat::default(),
        }
    }
}

fn default_timestamp_field() -> String {
    "timestamp".into()
}

/// Encodings of the event-time field.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum TimestampFormat {
    /// An RFC 3339 string such as `2026-11-24T10:05:00.123Z`.
    #[default]
    Rfc3339,
    /// Milliseconds since the Unix epoch.
    EpochMillis,
    /// Seconds since the Unix epoch (fractions allowed).
    EpochSeconds,
}

/// One transform step. Set exactly one of `filter`, `compute` or `dedup`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new(
    "(has(self.filter) ? 1 : 0) + (has(self.compute) ? 1 : 0) + (has(self.dedup) ? 1 : 0) == 1"
).message("each transform sets exactly one of filter, compute or dedup"))]
pub struct Transform {
    /// Keep only events for which this CEL expression is true; fields are
    /// top-level variables (`event_type != 'heartbeat'`), the whole event is `event`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub filter: Option<String>,
    /// Add or replace a field with the value of a CEL expression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compute: Option<ComputeField>,
    /// Drop events whose id was already seen within a horizon of event time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedup: Option<DedupTransform>,
}

/// A field computed by a CEL expression.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ComputeField {
    /// Name of the field to set.
    #[schemars(length(min = 1, max = 253))]
    pub field: String,
    /// CEL expression, for example `value * 100` or `event_type + ':' + key`.
    #[schemars(length(min = 1, max = 4096))]
    pub expression: String,
}

/// Exactly-once by id: an id seen within `horizon` of event time is a duplicate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct DedupTransform {
    /// Dot-separated path of the id field.
    #[schemars(length(min = 1, max = 253))]
    pub id_field: String,
    /// How long, in event time, an id is remembered; greater than zero.
    #[x_kube(validation = rules::positive_duration())]
    pub horizon: Duration,
}

/// Checkpoint storage.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct CheckpointSpec {
    /// Location of the checkpoints: an `s3://` or `file://` URI, for example
    /// `s3://checkpoints/clickstream`; a local path only makes sense for
    /// `sluice-runner run` outside a cluster.
    #[schemars(length(min = 1, max = 1024))]
    #[x_kube(validation = rules::object_store_uri())]
    pub uri: String,
    /// How often window state and offsets are checkpointed; `0s` checkpoints after every epoch.
    #[serde(default = "default_checkpoint_interval")]
    pub interval: Duration,
    /// Completed epochs kept; older checkpoint objects are deleted in the background.
    #[serde(default = "default_retain_epochs")]
    #[schemars(range(min = 1))]
    pub retain_epochs: i32,
    /// Keep the checkpoints when the StreamPipeline is deleted.
    #[serde(default = "default_true")]
    pub retain_on_delete: bool,
    /// Secret whose keys are the object store's settings as environment variables.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<SecretRef>,
}

fn default_checkpoint_interval() -> Duration {
    Duration::from_secs(10)
}

fn default_retain_epochs() -> i32 {
    3
}

fn default_true() -> bool {
    true
}

/// Micro-batch trigger.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct TriggerSpec {
    /// Time between the starts of consecutive epochs; `0s` starts the next one at once.
    #[serde(default = "default_trigger_interval")]
    pub interval: Duration,
    /// Most bytes of source records one epoch reads on one replica, from 1 MiB
    /// (1048576) to 1 GiB (1073741824). Unset: a sixteenth of the runner's memory
    /// limit (`spec.runner.resources.limits.memory`, else the node's memory),
    /// within the same range. An epoch is held in memory until its sinks are
    /// written; sources that plan before reading (Kafka, Event Hubs, generator)
    /// size the plan from the bytes per record of earlier epochs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = MIN_EPOCH_BYTES, max = MAX_EPOCH_BYTES))]
    pub max_bytes: Option<i64>,
}

/// Bounds of `spec.trigger.maxBytes`, and of its default.
pub const MIN_EPOCH_BYTES: i64 = 1 << 20;
pub const MAX_EPOCH_BYTES: i64 = 1 << 30;

/// Environment variable holding the runner container's memory limit in
/// bytes (the controller sets it from `limits.memory`); the runner sizes
/// epochs from it in place of its cgroup's limit.
pub const MEMORY_LIMIT_ENV: &str = "SLUICE_MEMORY_LIMIT";

impl Default for TriggerSpec {
    fn default() -> Self {
        Self {
            interval: default_trigger_interval(),
            max_bytes: None,
        }
    }
}

fn default_trigger_interval() -> Duration {
    Duration::from_secs(1)
}

/// How a spec change that invalidates saved window state is handled.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum UpgradePolicy {
    /// Refuse such changes (condition `Ready=False`, reason `IncompatibleStateChange`).
    #[default]
    Resume,
    /// Start a new checkpoint lineage; open windows of the old one are discarded.
    Reset,
}

/// Alert thresholds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct AlertsSpec {
    /// Records behind the end of the source, summed over partitions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub max_lag: Option<i64>,
    /// Age of the newest completed checkpoint; greater than zero.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = rules::positive_duration())]
    pub max_checkpoint_age: Option<Duration>,
    /// Dead-lettered events per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub max_dead_letter_rate: Option<f64>,
    /// Webhooks that receive a JSON alert when one fires and when it clears (at most 16).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub webhooks: Vec<AlertWebhook>,
}

/// A webhook whose URL (which often embeds a token) is kept in a Secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct AlertWebhook {
    /// Secret key holding the URL, which must be `http://` or `https://`.
    pub url_secret_ref: crate::SecretKeyRef,
}

/// Runner pod settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunnerSpec {
    /// Container image (default: the controller's configured runner image).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Compute resources of the runner container; quantities such as `500m`
    /// or `2Gi`, as in any pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = rules::quantity_pattern)]
    pub resources: Option<ResourceRequirements>,
    /// Node labels the runner pods must match.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations of the runner pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Log filter, in `RUST_LOG` syntax.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_level: Option<String>,
}
