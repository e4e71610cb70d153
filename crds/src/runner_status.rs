//! The JSON document every runner serves at `GET /status`, which the
//! controller aggregates into the StreamPipeline's status. Shared here so both
//! sides agree on it at compile time.

use serde::{Deserialize, Serialize};

use crate::{CheckpointStatus, PartitionLag};

/// Progress and health of one runner replica.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunnerStatus {
    /// Replica index (the StatefulSet ordinal).
    pub replica: u32,
    /// Replicas in the pipeline.
    pub replicas: u32,
    /// True once the runner has restored its checkpoint and its source and sinks answer.
    pub ready: bool,
    /// Why the runner is not making progress, when it is not (no secret values).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Last epoch whose outputs were committed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub committed_epoch: Option<i64>,
    /// Event-time watermark (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watermark: Option<String>,
    /// Events read per second, over the last few epochs.
    pub events_per_second: f64,
    /// Events dead-lettered per second, over the last few epochs.
    pub dead_letter_per_second: f64,
    /// Duplicate events dropped by `dedup` transforms per second, over the last few epochs.
    #[serde(default)]
    pub duplicates_per_second: f64,
    /// Events read since the runner started.
    pub events_total: u64,
    /// Events dead-lettered (malformed or late) since the runner started.
    pub dead_letter_total: u64,
    /// Duplicate events dropped by `dedup` transforms since the runner started.
    #[serde(default)]
    pub duplicates_total: u64,
    /// Window rows emitted since the runner started.
    pub windows_emitted_total: u64,
    /// Per-partition lag of the partitions this replica owns (empty for sources without lag).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub partitions: Vec<PartitionLag>,
    /// Newest completed checkpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_checkpoint: Option<CheckpointStatus>,
}
