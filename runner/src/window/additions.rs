//! One chunk's window input, gathered by a worker away from the window
//! state and added to it afterwards, chunk after chunk in the epoch's order.
//!
//! The result must not depend on how an epoch was cut into chunks or on how
//! many workers there were, since replays (and key groups) rely on an
//! epoch's output being a pure function of its plan. Counts add up exactly in
//! any grouping, so count-only aggregates are pre-aggregated per (pane, key)
//! in the worker: most of the window work then runs in parallel. Any other
//! aggregate (floating-point sums depend on the order of additions; min and
//! max of signed zeros) and session windows keep every event, added one by
//! one in the order a single thread would have added them.

use std::collections::HashMap;

use super::{
    GroupKey,
    aggregate::{self, Accumulator, AggregateKind},
};

/// Where [`Additions`] go: the windows, or a source stage's pre-aggregates.
pub trait PaneTarget {
    /// Adds one event: its time, group key and aggregation inputs.
    fn add(&mut self, time: i64, key: &[u8], inputs: &[Option<f64>]);

    /// Adds `events` events of one pane and key, pre-aggregated.
    fn merge_pane(&mut self, pane: i64, key: GroupKey, events: u64, accumulators: &[Accumulator]);
}

type PaneKeys = HashMap<GroupKey, (u64, Box<[Accumulator]>), ahash::RandomState>;

/// A chunk's events for the windows.
pub enum Additions {
    /// Count-only tumbling and sliding windows: events per (pane, key). A
    /// chunk's events fall in a few panes, so they are searched in a list.
    Panes {
        pane: i64,
        aggregates: Vec<AggregateKind>,
        panes: Vec<(i64, PaneKeys)>,
    },
    /// Every event, in order: its time, where its key ends in `keys`, and
    /// `width` inputs each in `inputs`.
    Events {
        width: usize,
        times: Vec<i64>,
        key_ends: Vec<usize>,
        keys: Vec<u8>,
        inputs: Vec<Option<f64>>,
    },
}

impl Additions {
    /// `pane`: the pane width of tumbling and sliding windows (`None` for
    /// sessions).
    pub fn new(pane: Option<i64>, aggregates: &[AggregateKind]) -> Self {
        match pane {
            Some(pane) if aggregates.iter().all(|kind| *kind == AggregateKind::Count) => {
                Self::Panes {
                    pane,
                    aggregates: aggregates.to_vec(),
                    panes: Vec::new(),
                }
            }
            _ => Self::Events {
                width: aggregates.len(),
                times: Vec::new(),
                key_ends: Vec::new(),
                keys: Vec::new(),
                inputs: Vec::new(),
            },
        }
    }

    /// Notes one (non-late) event.
    pub fn add(&mut self, time: i64, key: &[u8], event_inputs: &[Option<f64>]) {
        match self {
            Self::Panes {
                pane,
                aggregates,
                panes,
            } => {
                // Found by its range: a 64-bit division per event cost more
                // than the rest of this function.
                let width = *pane;
                let keyed = match panes
                    .iter()
                    .position(|(start, _)| (*start..*start + width).contains(&time))
                {
                    Some(at) => &mut panes[at].1,
                    None => {
                        panes.push((time.div_euclid(width) * width, PaneKeys::default()));
                        let last = panes.len() - 1;
                        &mut panes[last].1
                    }
                };
                let (events, accumulators) = match keyed.get_mut(key) {
                    Some(entry) => entry,
                    None => keyed
                        .entry(GroupKey::from_bytes(key))
                        .or_insert_with(|| (0, aggregate::empty(aggregates))),
                };
                *events += 1;
                aggregate::update(accumulators, event_inputs);
            }
            Self::Events {
                times,
                key_ends,
                keys,
                inputs,
                ..
            } => {
                times.push(time);
                keys.extend_from_slice(key);
                key_ends.push(keys.len());
                inputs.extend_from_slice(event_inputs);
            }
        }
    }

    /// Adds everything noted to `target`.
    pub fn apply_to(self, target: &mut impl PaneTarget) {
        match self {
            Self::Panes { panes, .. } => {
                for (pane, keyed) in panes {
                    for (key, (events, accumulators)) in keyed {
                        target.merge_pane(pane, key, events, &accumulators);
                    }
                }
            }
            Self::Events {
                width,
                times,
                key_ends,
                keys,
                inputs,
            } => {
                let mut key_start = 0;
                for (i, (time, key_end)) in times.into_iter().zip(key_ends).enumerate() {
                    let event_inputs = &inputs[i * width..(i + 1) * width];
                    target.add(time, &keys[key_start..key_end], event_inputs);
                    key_start = key_end;
                }
            }
        }
    }
}
