//! Event-time windows, the watermark, grouping and aggregations.

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{Duration, rules};

/// How events are grouped in event time, and what is computed per window and key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new(
    "(has(self.tumbling) ? 1 : 0) + (has(self.sliding) ? 1 : 0) + (has(self.session) ? 1 : 0) == 1"
).message("exactly one of window.tumbling, window.sliding or window.session must be set"))]
#[x_kube(validation = kube::core::Rule::new(
    "!has(self.session) || !has(self.outputMode) || self.outputMode == 'append'"
).message("window.outputMode: update works with tumbling and sliding windows; session windows merge, so use append").field_path(".outputMode"))]
#[x_kube(validation = kube::core::Rule::new(
    "self.aggregations.all(a, !(a.name in ['window_start', 'window_end']) && !(has(self.groupBy) && self.groupBy.exists(g, g.replace('.', '_') == a.name)))"
).message("an aggregation name must differ from the window columns (window_start, window_end) and from every groupBy column (the path with '.' as '_')")
    .field_path(".aggregations"))]
#[x_kube(validation = kube::core::Rule::new(
    "!has(self.groupBy) || self.groupBy.all(g, !(g.replace('.', '_') in ['window_start', 'window_end']) && self.groupBy.exists_one(h, h.replace('.', '_') == g.replace('.', '_')))"
).message("groupBy columns (each path with '.' as '_') must be unique and differ from window_start and window_end")
    .field_path(".groupBy"))]
pub struct WindowSpec {
    /// Fixed-size, non-overlapping windows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tumbling: Option<TumblingWindow>,
    /// Fixed-size windows that start every `slide`; an event belongs to `size / slide` windows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sliding: Option<SlidingWindow>,
    /// Per-key windows that close after `gap` without events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<SessionWindow>,
    /// Allowed out-of-orderness: the watermark trails the newest event time by this much.
    /// An event still counts in each of its windows that ends after the watermark; it is
    /// late (dropped or dead-lettered, see `lateEvents`) only when all of them have closed.
    pub watermark: Duration,
    /// When window rows are written. `append` (the default): each (window, key) row once,
    /// when the watermark passes the window's end. `update`: every epoch writes the current
    /// value of each window its events changed, and sinks keep the latest (Elasticsearch and
    /// ClickHouse ReplacingMergeTree by row identity, Delta by merging); the last value
    /// written equals append mode's row. Tumbling and sliding windows only.
    #[serde(default)]
    pub output_mode: OutputMode,
    /// An event whose time is further ahead of the runner's clock (when its epoch was
    /// planned) than this is malformed and goes to the dead-letter output: one clock
    /// error must not move the watermark and close every window early. Greater than zero.
    #[serde(default = "default_max_event_time_ahead")]
    #[x_kube(validation = rules::positive_duration())]
    pub max_event_time_ahead: Duration,
    /// A partition with no valid event time for this long stops holding the
    /// watermark back; greater than zero.
    #[serde(default = "default_idle_timeout")]
    #[x_kube(validation = rules::positive_duration())]
    pub idle_timeout: Duration,
    /// Event fields (dot-separated paths) whose values form the group key; at
    /// most 16. Each becomes a result column named by the path with `.` as `_`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 253)))]
    pub group_by: Vec<String>,
    /// Values computed per window and key; at least one.
    #[schemars(length(min = 1, max = 64))]
    #[x_kube(validation = kube::core::Rule::new("self.all(a, self.exists_one(b, b.name == a.name))")
        .message("aggregation names must be unique"))]
    pub aggregations: Vec<Aggregation>,
}

fn default_idle_timeout() -> Duration {
    Duration::from_secs(60)
}

fn default_max_event_time_ahead() -> Duration {
    Duration::from_secs(3600)
}

/// When window rows are written (Spark's output modes of the same names).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum OutputMode {
    /// Once per window and key, final, when the watermark passes the window's end.
    #[default]
    Append,
    /// Every epoch, the current value of each window and key that changed.
    Update,
}

/// Non-overlapping windows of one size.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("duration(self.size) > duration('0s')")
    .message("window size must be greater than zero"))]
pub struct TumblingWindow {
    /// Window length.
    pub size: Duration,
}

/// Overlapping windows of one size starting every `slide`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("duration(self.slide) > duration('0s') && duration(self.slide) <= duration(self.size)")
    .message("window.sliding.slide must be greater than zero and no larger than window.sliding.size")
    .field_path(".slide"))]
pub struct SlidingWindow {
    /// Window length.
    pub size: Duration,
    /// Distance between the starts of consecutive windows.
    pub slide: Duration,
}

/// Windows per key that grow while events keep arriving within `gap` of each other.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("duration(self.gap) > duration('0s')")
    .message("window.session.gap must be greater than zero"))]
pub struct SessionWindow {
    /// Inactivity that closes a session.
    pub gap: Duration,
}

/// One output column of the window result. Set `name` and exactly one function.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new(
    "(has(self.count) ? 1 : 0) + (has(self.sum) ? 1 : 0) + (has(self.min) ? 1 : 0) + (has(self.max) ? 1 : 0) + (has(self.avg) ? 1 : 0) == 1"
).message("set exactly one of count, sum, min, max or avg"))]
pub struct Aggregation {
    /// Output column name; not `window_start`, `window_end` or a groupBy column.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[A-Za-z_][A-Za-z0-9_]*$")
    )]
    pub name: String,
    /// Number of events (`count: {}`), or of events where `field` is present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<CountAggregation>,
    /// Sum of a numeric field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sum: Option<FieldAggregation>,
    /// Smallest value of a numeric field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<FieldAggregation>,
    /// Largest value of a numeric field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<FieldAggregation>,
    /// Mean of a numeric field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avg: Option<FieldAggregation>,
}

/// `count: {}` counts events; with `field`, only events where the field is present.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct CountAggregation {
    /// Count only events that have this field (dot-separated path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub field: Option<String>,
}

/// An aggregation over one numeric field. Events without the field are skipped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct FieldAggregation {
    /// Dot-separated path of the field.
    #[schemars(length(min = 1, max = 253))]
    pub field: String,
}
