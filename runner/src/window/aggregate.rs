//! Aggregate functions as mergeable accumulators (so panes merge into windows).

use serde::{Deserialize, Serialize};
use sluice_crds::Aggregation;

/// One aggregation of the spec.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AggregateKind {
    /// Events (with `field`: events that have the field).
    Count,
    Sum,
    Min,
    Max,
    Avg,
}

impl AggregateKind {
    /// The kind and the input field (`None` for `count: {}`).
    pub fn from_spec(aggregation: &Aggregation) -> Option<(Self, Option<&str>)> {
        if let Some(count) = &aggregation.count {
            return Some((Self::Count, count.field.as_deref()));
        }
        let pairs = [
            (Self::Sum, &aggregation.sum),
            (Self::Min, &aggregation.min),
            (Self::Max, &aggregation.max),
            (Self::Avg, &aggregation.avg),
        ];
        pairs
            .into_iter()
            .find_map(|(kind, field)| Some((kind, Some(field.as_ref()?.field.as_str()))))
    }
}

/// Running state of one aggregate; `n` counts the values seen.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Accumulator {
    Count(i64),
    Sum { sum: f64, n: i64 },
    Min(Option<f64>),
    Max(Option<f64>),
    Avg { sum: f64, n: i64 },
}

impl Accumulator {
    fn new(kind: AggregateKind) -> Self {
        match kind {
            AggregateKind::Count => Self::Count(0),
            AggregateKind::Sum => Self::Sum { sum: 0.0, n: 0 },
            AggregateKind::Min => Self::Min(None),
            AggregateKind::Max => Self::Max(None),
            AggregateKind::Avg => Self::Avg { sum: 0.0, n: 0 },
        }
    }

    /// The aggregate's value: an integer count, or a number (`None` when no
    /// event had the field).
    pub fn count(&self) -> Option<i64> {
        match self {
            Self::Count(n) => Some(*n),
            _ => None,
        }
    }

    pub fn value(&self) -> Option<f64> {
        match *self {
            Self::Count(n) => Some(n as f64),
            Self::Sum { sum, n } => (n > 0).then_some(sum),
            Self::Min(v) | Self::Max(v) => v,
            Self::Avg { sum, n } => (n > 0).then(|| sum / n as f64),
        }
    }
}

pub fn empty(kinds: &[AggregateKind]) -> Box<[Accumulator]> {
    kinds.iter().map(|kind| Accumulator::new(*kind)).collect()
}

/// Adds one event. `inputs[i]` is the value of aggregate `i`'s field, `None`
/// when absent; `count: {}` (no field) receives `Some(_)` for every event.
pub fn update(accumulators: &mut [Accumulator], inputs: &[Option<f64>]) {
    for (accumulator, input) in accumulators.iter_mut().zip(inputs) {
        let Some(x) = *input else { continue };
        match accumulator {
            Accumulator::Count(n) => *n += 1,
            Accumulator::Sum { sum, n } | Accumulator::Avg { sum, n } => {
                *sum += x;
                *n += 1;
            }
            Accumulator::Min(v) => *v = Some(v.map_or(x, |v| v.min(x))),
            Accumulator::Max(v) => *v = Some(v.map_or(x, |v| v.max(x))),
        }
    }
}

/// Folds `other` into `total` (same aggregate kinds, same order).
pub fn merge(total: &mut [Accumulator], other: &[Accumulator]) {
    for (into, from) in total.iter_mut().zip(other) {
        match (into, from) {
            (Accumulator::Count(a), Accumulator::Count(b)) => *a += b,
            (Accumulator::Sum { sum: s, n }, Accumulator::Sum { sum, n: m })
            | (Accumulator::Avg { sum: s, n }, Accumulator::Avg { sum, n: m }) => {
                *s += sum;
                *n += m;
            }
            (Accumulator::Min(a), Accumulator::Min(b)) => {
                *a = match (*a, *b) {
                    (Some(x), Some(y)) => Some(x.min(y)),
                    (x, y) => x.or(y),
                }
            }
            (Accumulator::Max(a), Accumulator::Max(b)) => {
                *a = match (*a, *b) {
                    (Some(x), Some(y)) => Some(x.max(y)),
                    (x, y) => x.or(y),
                }
            }
            _ => {}
        }
    }
}
