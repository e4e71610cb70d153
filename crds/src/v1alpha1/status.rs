//! What the controller reports back: health, lag and progress.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Observed state of a StreamPipeline, written only by the controller.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StreamPipelineStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// One-word summary of the conditions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// `Ready`, `Progressing` and `Degraded`, following the Kubernetes API conventions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Runner replicas that exist.
    #[serde(default)]
    pub replicas: i32,
    /// Runner replicas that are ready.
    #[serde(default)]
    pub ready_replicas: i32,
    /// How far behind the source the pipeline is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<LagStatus>,
    /// Event-time watermark (RFC 3339): the lowest over replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watermark: Option<String>,
    /// Events processed per second, summed over replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events_per_second: Option<f64>,
    /// Events sent to the dead-letter output per second, summed over replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_per_second: Option<f64>,
    /// Duplicate events dropped by `dedup` transforms per second, summed over replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duplicates_per_second: Option<f64>,
    /// The oldest of the replicas' newest completed checkpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_checkpoint: Option<CheckpointStatus>,
    /// Fingerprint of the spec fields that shape checkpointed state; a change
    /// of it needs `upgradePolicy: reset`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_fingerprint: Option<String>,
    /// Checkpoint lineage in use; incremented by each reset.
    #[serde(default)]
    pub lineage: i64,
    /// The parallelism the runners that run (or ran last) were started with.
    /// It differs from `spec.parallelism` while a rescale waits for them to
    /// stop, and while a suspended pipeline waits to start with the new value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running_parallelism: Option<i32>,
    /// Alert thresholds of `spec.alerts` currently exceeded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub alerts: Vec<ActiveAlert>,
}

/// A threshold of `spec.alerts` that is exceeded.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ActiveAlert {
    /// Which threshold.
    #[serde(rename = "type")]
    pub alert_type: AlertType,
    /// The measured value (records, seconds or events per second).
    pub value: f64,
    /// The threshold it exceeds, in the same unit.
    pub threshold: f64,
    /// When the alert started firing (RFC 3339).
    pub since: String,
}

/// The alert thresholds of `spec.alerts`.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
pub enum AlertType {
    /// `maxLag`: records behind the source.
    Lag,
    /// `maxCheckpointAge`: seconds since the newest completed checkpoint.
    CheckpointAge,
    /// `maxDeadLetterRate`: dead-lettered events per second.
    DeadLetterRate,
}

/// Summary phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Phase {
    Pending,
    Running,
    Degraded,
    Suspended,
    Failed,
    // `spec.parallelism` changed: the runners are stopping, and the new set
    // starts when none is left. (A doc comment here would turn the schema's
    // enum into a oneOf.)
    Rescaling,
}

/// Source lag.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LagStatus {
    /// Records behind the end of the source, summed over partitions.
    pub records: i64,
    /// Seconds behind, by event time, of the worst partition.
    pub seconds: f64,
    /// The partitions furthest behind, worst first (at most five).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub worst_partitions: Vec<PartitionLag>,
}

/// Lag of one source partition.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PartitionLag {
    /// Topic, event hub or other stream name.
    pub topic: String,
    /// Partition number.
    pub partition: i32,
    /// Records behind the partition's end.
    pub records: i64,
    /// Seconds behind by event time.
    pub seconds: f64,
}

/// A completed checkpoint.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CheckpointStatus {
    /// Epoch number.
    pub epoch: i64,
    /// When it completed (RFC 3339).
    pub time: String,
    /// Object-store location of the checkpoint.
    pub uri: String,
}
