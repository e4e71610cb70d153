//! Event-time windows, per-window per-key aggregate state and the watermark.
//!
//! Tumbling and sliding windows keep state per *pane*: slices of event time
//! `gcd(size, slide)` wide. An event updates exactly one pane; a window is
//! the merge of its `size / pane` panes when it is emitted. So the cost per
//! event does not grow with `size / slide`, and memory is proportional to the
//! open panes × keys (at most the open windows × keys). Session windows keep a
//! list of open sessions per key.
//!
//! Lateness is per window, as in Spark and Flink: a window is *closed* once
//! the watermark in force for the epoch is at or past its end. An event
//! counts in each of its windows that is still open; it is late only when
//! all of them are closed ([`Windows::lateness`]). Adding it to its pane
//! reaches exactly its open windows, because closed windows have been
//! emitted and are never emitted again. At the end of an epoch the watermark
//! becomes the minimum, over the epoch's non-idle partitions, of each
//! partition's maximum event time minus the allowed delay (never moving
//! backwards), and every window whose end is at or before it is closed.
//! Append mode emits each closed window once; update mode emits, every
//! epoch, the windows that the epoch's events changed.

mod additions;
pub(crate) mod aggregate;
mod key;
mod output;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};
use sluice_crds::WindowSpec;

pub use self::{
    additions::{Additions, PaneTarget},
    aggregate::{Accumulator, AggregateKind},
    key::GroupKey,
    output::WindowRows,
};
use crate::source::PartitionId;

type KeyedAccumulators = HashMap<GroupKey, Box<[Accumulator]>, ahash::RandomState>;

/// The shape of windows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WindowKind {
    /// `size` long windows starting every `slide` (tumbling: `slide == size`),
    /// aligned to the Unix epoch; state kept per `pane`.
    Sliding { size: i64, slide: i64, pane: i64 },
    /// Per key, events closer than `gap` form one window `[first, last + gap)`.
    Session { gap: i64 },
}

impl WindowKind {
    pub fn from_spec(spec: &WindowSpec) -> Option<Self> {
        let sliding = |size: i64, slide: i64| Self::Sliding {
            size,
            slide,
            pane: gcd(size, slide),
        };
        if let Some(tumbling) = &spec.tumbling {
            let size = tumbling.size.as_millis_i64();
            return (size > 0).then(|| sliding(size, size));
        }
        if let Some(window) = &spec.sliding {
            let (size, slide) = (window.size.as_millis_i64(), window.slide.as_millis_i64());
            return (size > 0 && slide > 0 && slide <= size).then(|| sliding(size, slide));
        }
        let gap = spec.session.as_ref()?.gap.as_millis_i64();
        (gap > 0).then_some(Self::Session { gap })
    }
}

fn gcd(a: i64, b: i64) -> i64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// Start of the first window (of `size`, starting every `slide`) that holds `time`.
fn first_start_after(time: i64, size: i64, slide: i64) -> i64 {
    (time - size).div_euclid(slide) * slide + slide
}

/// Start of the last window that ends at or before `watermark`: every window
/// starting there or earlier is closed.
fn last_closed_start(watermark: i64, size: i64, slide: i64) -> i64 {
    (watermark - size).div_euclid(slide) * slide
}

/// One open session of one key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Session {
    start: i64,
    end: i64,
    accumulators: Box<[Accumulator]>,
}

/// One emitted window row: start, end (milliseconds), key and aggregates.
pub type WindowRow = (i64, i64, GroupKey, Box<[Accumulator]>);

/// How many of an event's windows had closed when it arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lateness {
    /// Every window that holds the event is closed.
    pub late: bool,
    /// Those among them that are closed; the event does not count in them.
    pub closed: u32,
}

impl Lateness {
    /// Every window of the event has closed: the event is late.
    pub fn is_late(&self) -> bool {
        self.late
    }
}

/// The window shape and the watermark in force: all that lateness depends
/// on. The watermark moves only between epochs, so an epoch's workers each
/// hold a copy and decide as the windows themselves would.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LatenessRule {
    kind: WindowKind,
    watermark: Option<i64>,
    /// Sliding windows: the start of the last closed window.
    last_closed: Option<i64>,
}

impl LatenessRule {
    /// The watermark in force, in milliseconds since the Unix epoch.
    pub fn watermark(&self) -> Option<i64> {
        self.watermark
    }

    /// How many of the windows holding an event at `time` are closed.
    pub fn lateness(&self, time: i64) -> Lateness {
        match self.kind {
            // Most events: all their windows start after the last closed one.
            WindowKind::Sliding { size, .. }
                if self.last_closed.is_none_or(|last| time >= last + size) =>
            {
                Lateness {
                    late: false,
                    closed: 0,
                }
            }
            WindowKind::Sliding { size, slide, .. } => {
                // Window starts are multiples of `slide` in (time - size, time].
                let last = time.div_euclid(slide) * slide;
                let windows = (last - first_start_after(time, size, slide)) / slide + 1;
                let closed = match self.watermark {
                    // Starts at or before the last closed window's start.
                    Some(watermark) => ((last_closed_start(watermark, size, slide) - last)
                        .div_euclid(slide)
                        + windows)
                        .clamp(0, windows),
                    None => 0,
                };
                Lateness {
                    late: closed == windows,
                    closed: u32::try_from(closed).unwrap_or(u32::MAX),
                }
            }
            // An event opens the session [time, time + gap); it is late when
            // that has closed, as in Spark.
            WindowKind::Session { gap } => {
                let late = self
                    .watermark
                    .is_some_and(|watermark| time.saturating_add(gap) <= watermark);
                Lateness {
                    late,
                    closed: u32::from(late),
                }
            }
        }
    }
}

/// Open windows of one pipeline replica and its watermark.
pub struct Windows {
    kind: WindowKind,
    delay: i64,
    aggregates: Vec<AggregateKind>,
    watermark: Option<i64>,
    partition_max: BTreeMap<PartitionId, i64>,
    panes: BTreeMap<i64, KeyedAccumulators>,
    sessions: HashMap<GroupKey, Vec<Session>, ahash::RandomState>,
    /// Update mode: the (pane, key) pairs this epoch changed; `None` in append mode.
    changed: Option<BTreeSet<(i64, GroupKey)>>,
}

/// Accumulators per group key, in checkpoints.
type KeyedState = Vec<(GroupKey, Box<[Accumulator]>)>;

/// The windows' durable form, inside a checkpoint.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WindowState {
    /// Milliseconds since the Unix epoch; absent before the first event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watermark: Option<i64>,
    /// Largest event time seen per partition.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub partition_max: Vec<(PartitionId, i64)>,
    /// Open panes: start, then (group key, accumulators) per key.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    panes: Vec<(i64, KeyedState)>,
    /// Open sessions per key.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    sessions: Vec<(GroupKey, Vec<Session>)>,
}

impl WindowState {
    /// Splits the open windows by a function of their key (a key group);
    /// every part keeps the watermark and the partitions' event-time maxima.
    /// (There is no inverse: parts with different watermarks would close
    /// windows twice or never.)
    pub fn split(self, part_of: impl Fn(&GroupKey) -> u32) -> BTreeMap<u32, WindowState> {
        let mut parts: BTreeMap<u32, WindowState> = BTreeMap::new();
        let (watermark, partition_max) = (self.watermark, self.partition_max);
        let new_part = || WindowState {
            watermark,
            partition_max: partition_max.clone(),
            ..WindowState::default()
        };
        for (start, keyed) in self.panes {
            for (key, accumulators) in keyed {
                let state = parts.entry(part_of(&key)).or_insert_with(new_part);
                match state.panes.last_mut() {
                    Some((last, keys)) if *last == start => keys.push((key, accumulators)),
                    _ => state.panes.push((start, vec![(key, accumulators)])),
                }
            }
        }
        for (key, sessions) in self.sessions {
            parts
                .entry(part_of(&key))
                .or_insert_with(new_part)
                .sessions
                .push((key, sessions));
        }
        parts
    }
}

impl PaneTarget for Windows {
    fn add(&mut self, time: i64, key: &[u8], inputs: &[Option<f64>]) {
        Windows::add(self, time, key, inputs);
    }

    fn merge_pane(&mut self, pane: i64, key: GroupKey, _: u64, accumulators: &[Accumulator]) {
        Windows::merge_pane(self, pane, &key, accumulators);
    }
}

impl Windows {
    pub fn new(kind: WindowKind, delay: i64, aggregates: Vec<AggregateKind>) -> Self {
        Self {
            kind,
            delay,
            aggregates,
            watermark: None,
            partition_max: BTreeMap::new(),
            panes: BTreeMap::new(),
            sessions: HashMap::default(),
            changed: None,
        }
    }

    /// Update mode (tumbling and sliding windows): [`Windows::advance`]
    /// returns the windows each epoch changed, with their current values,
    /// instead of the windows that closed.
    pub fn emitting_updates(mut self) -> Self {
        if matches!(self.kind, WindowKind::Sliding { .. }) {
            self.changed = Some(BTreeSet::new());
        }
        self
    }

    /// The watermark in force, in milliseconds since the Unix epoch.
    pub fn watermark(&self) -> Option<i64> {
        self.watermark
    }

    /// How many of the windows holding an event at `time` are closed under
    /// the watermark in force.
    pub fn lateness(&self, time: i64) -> Lateness {
        self.lateness_rule().lateness(time)
    }

    /// The epoch's lateness decisions, apart from the window state.
    pub fn lateness_rule(&self) -> LatenessRule {
        let last_closed = match (self.kind, self.watermark) {
            (WindowKind::Sliding { size, slide, .. }, Some(watermark)) => {
                Some(last_closed_start(watermark, size, slide))
            }
            _ => None,
        };
        LatenessRule {
            kind: self.kind,
            watermark: self.watermark,
            last_closed,
        }
    }

    pub fn aggregates(&self) -> &[AggregateKind] {
        &self.aggregates
    }

    /// Adds one (non-late) event: its time, group key and the aggregation
    /// inputs, one per aggregate (`None` when the event lacks the field).
    pub fn add(&mut self, time: i64, key: &[u8], inputs: &[Option<f64>]) {
        match self.kind {
            WindowKind::Sliding { pane, .. } => {
                let start = time.div_euclid(pane) * pane;
                let keyed = self.panes.entry(start).or_default();
                let accumulators = match keyed.get_mut(key) {
                    Some(accumulators) => accumulators,
                    None => keyed
                        .entry(GroupKey::from_bytes(key))
                        .or_insert_with(|| aggregate::empty(&self.aggregates)),
                };
                aggregate::update(accumulators, inputs);
                if let Some(changed) = &mut self.changed {
                    changed.insert((start, GroupKey::from_bytes(key)));
                }
            }
            WindowKind::Session { gap } => {
                let sessions = match self.sessions.get_mut(key) {
                    Some(sessions) => sessions,
                    None => self.sessions.entry(GroupKey::from_bytes(key)).or_default(),
                };
                let mut merged = Session {
                    start: time,
                    end: time + gap,
                    accumulators: aggregate::empty(&self.aggregates),
                };
                aggregate::update(&mut merged.accumulators, inputs);
                sessions.retain(|session| {
                    let overlaps = session.start < merged.end && merged.start < session.end;
                    if overlaps {
                        merged.start = merged.start.min(session.start);
                        merged.end = merged.end.max(session.end);
                        aggregate::merge(&mut merged.accumulators, &session.accumulators);
                    }
                    !overlaps
                });
                let at = sessions.partition_point(|s| s.start < merged.start);
                sessions.insert(at, merged);
            }
        }
    }

    /// Ends an epoch: records each partition's maximum event time in it,
    /// advances the watermark over the non-idle partitions of the epoch, and
    /// returns the windows that closed (append mode) or that the epoch
    /// changed (update mode), ordered by start, end and key.
    pub fn advance(
        &mut self,
        epoch_max: &[(PartitionId, Option<i64>)],
        idle: &[PartitionId],
    ) -> Vec<WindowRow> {
        let updates = self.take_updates();
        self.observe(epoch_max);
        let candidate = epoch_max
            .iter()
            .filter(|(partition, _)| !idle.contains(partition))
            .filter_map(|(partition, _)| self.partition_max.get(partition))
            .min()
            .map(|max| max.saturating_sub(self.delay));
        let previous = self.watermark;
        let Some(watermark) = candidate.max(previous) else {
            return updates.unwrap_or_default();
        };
        self.watermark = Some(watermark);
        let closed = match self.kind {
            WindowKind::Sliding { size, slide, .. } => {
                self.close_sliding(size, slide, previous, watermark)
            }
            WindowKind::Session { .. } => self.close_sessions(watermark),
        };
        updates.unwrap_or(closed)
    }

    /// Records each partition's maximum event time in an epoch without
    /// moving the watermark (a key group that has not yet heard from every
    /// source replica).
    pub fn observe(&mut self, epoch_max: &[(PartitionId, Option<i64>)]) {
        for (partition, max) in epoch_max {
            if let Some(max) = max {
                let entry = self.partition_max.entry(partition.clone()).or_insert(*max);
                *entry = (*entry).max(*max);
            }
        }
    }

    /// Adds pre-aggregated (non-late) events of one pane and key, as
    /// [`Windows::add`] adds one event (tumbling and sliding windows).
    pub fn merge_pane(&mut self, pane: i64, key: &GroupKey, accumulators: &[Accumulator]) {
        let keyed = self.panes.entry(pane).or_default();
        match keyed.get_mut(key) {
            Some(total) => aggregate::merge(total, accumulators),
            None => {
                keyed.insert(key.clone(), accumulators.into());
            }
        }
        if let Some(changed) = &mut self.changed {
            changed.insert((pane, key.clone()));
        }
    }

    /// The width of the panes state is kept in, for tumbling and sliding windows.
    pub fn pane(&self) -> Option<i64> {
        match self.kind {
            WindowKind::Sliding { pane, .. } => Some(pane),
            WindowKind::Session { .. } => None,
        }
    }

    /// Update mode: the current value of every open window that holds a
    /// (pane, key) changed this epoch. Windows closed before the epoch are
    /// left out: the epoch's events did not count in them.
    fn take_updates(&mut self) -> Option<Vec<WindowRow>> {
        let changed = std::mem::take(self.changed.as_mut()?);
        let WindowKind::Sliding { size, slide, .. } = self.kind else {
            return Some(Vec::new());
        };
        let open_from = self.watermark.map_or(i64::MIN, |watermark| {
            last_closed_start(watermark, size, slide) + slide
        });
        let windows: BTreeSet<(i64, &GroupKey)> = changed
            .iter()
            .flat_map(|(pane, key)| {
                let first = first_start_after(*pane, size, slide).max(open_from);
                (first..=*pane)
                    .step_by(usize::try_from(slide).unwrap_or(usize::MAX))
                    .map(move |start| (start, key))
            })
            .collect();
        let rows = windows
            .into_iter()
            .filter_map(|(start, key)| {
                let mut total: Option<Box<[Accumulator]>> = None;
                for keyed in self
                    .panes
                    .range(start..start + size)
                    .map(|(_, keyed)| keyed)
                {
                    if let Some(accumulators) = keyed.get(key) {
                        match &mut total {
                            Some(total) => aggregate::merge(total, accumulators),
                            None => total = Some(accumulators.clone()),
                        }
                    }
                }
                Some((start, start + size, key.clone(), total?))
            })
            .collect();
        Some(rows)
    }

    fn close_sliding(
        &mut self,
        size: i64,
        slide: i64,
        previous: Option<i64>,
        watermark: i64,
    ) -> Vec<WindowRow> {
        let mut closed = Vec::new();
        let Some(&first_pane) = self.panes.keys().next() else {
            return closed;
        };
        let first_start_after = |time: i64| first_start_after(time, size, slide);
        let last_start = last_closed_start(watermark, size, slide);
        let mut start = first_start_after(first_pane);
        if let Some(previous) = previous {
            start = start.max(first_start_after(previous));
        }
        while start <= last_start {
            let mut merged: BTreeMap<&GroupKey, Box<[Accumulator]>> = BTreeMap::new();
            for keyed in self
                .panes
                .range(start..start + size)
                .map(|(_, keyed)| keyed)
            {
                for (key, accumulators) in keyed {
                    match merged.get_mut(key) {
                        Some(total) => aggregate::merge(total, accumulators),
                        None => {
                            merged.insert(key, accumulators.clone());
                        }
                    }
                }
            }
            if merged.is_empty() {
                // Jump to the first window holding the next pane.
                match self.panes.range(start + size..).next() {
                    Some((&pane, _)) => start = first_start_after(pane).max(start + slide),
                    None => break,
                }
                continue;
            }
            closed.extend(
                merged
                    .into_iter()
                    .map(|(key, accumulators)| (start, start + size, key.clone(), accumulators)),
            );
            start += slide;
        }
        // No window still to be emitted starts before `last_start + slide`.
        self.panes = self.panes.split_off(&(last_start + slide));
        closed
    }

    fn close_sessions(&mut self, watermark: i64) -> Vec<WindowRow> {
        let mut closed = Vec::new();
        self.sessions.retain(|key, sessions| {
            sessions.retain(|session| {
                let done = session.end <= watermark;
                if done {
                    closed.push((
                        session.start,
                        session.end,
                        key.clone(),
                        session.accumulators.clone(),
                    ));
                }
                !done
            });
            !sessions.is_empty()
        });
        closed.sort_by(|a, b| (a.0, a.1, &a.2).cmp(&(b.0, b.1, &b.2)));
        closed
    }

    /// Open windows' state, for a checkpoint.
    pub fn snapshot(&self) -> WindowState {
        let sort = |mut keyed: KeyedState| {
            keyed.sort_by(|a, b| a.0.cmp(&b.0));
            keyed
        };
        let mut sessions: Vec<_> = self
            .sessions
            .iter()
            .map(|(key, sessions)| (key.clone(), sessions.clone()))
            .collect();
        sessions.sort_by(|a, b| a.0.cmp(&b.0));
        WindowState {
            watermark: self.watermark,
            partition_max: self
                .partition_max
                .iter()
                .map(|(p, t)| (p.clone(), *t))
                .collect(),
            panes: self
                .panes
                .iter()
                .map(|(start, keyed)| {
                    (
                        *start,
                        sort(keyed.iter().map(|(k, a)| (k.clone(), a.clone())).collect()),
                    )
                })
                .collect(),
            sessions,
        }
    }

    /// Replaces the state with a checkpoint's.
    pub fn restore(&mut self, state: WindowState) {
        self.watermark = state.watermark;
        self.partition_max = state.partition_max.into_iter().collect();
        self.panes = state
            .panes
            .into_iter()
            .map(|(start, keyed)| (start, keyed.into_iter().collect()))
            .collect();
        self.sessions = state.sessions.into_iter().collect();
        // What an interrupted epoch changed is not part of the restored state.
        if let Some(changed) = &mut self.changed {
            changed.clear();
        }
    }

    /// Number of (pane or session, key) entries held, for metrics.
    pub fn open_entries(&self) -> usize {
        self.panes.values().map(HashMap::len).sum::<usize>()
            + self.sessions.values().map(Vec::len).sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;

    fn partition() -> PartitionId {
        PartitionId::new("p", 0)
    }

    fn key(text: &str) -> Vec<u8> {
        let mut out = Vec::new();
        GroupKey::encode_value(&crate::decode::FieldValue::Str(text.into()), &mut out);
        out
    }

    fn counts(closed: &[WindowRow]) -> Vec<(i64, i64, String, i64)> {
        closed
            .iter()
            .map(|(s, e, k, a)| {
                (
                    *s / MIN,
                    *e / MIN,
                    k.values()[0].unwrap().to_owned(),
                    a[0].count().unwrap(),
                )
            })
            .collect()
    }

    fn sliding(size: i64, slide: i64, delay: i64) -> Windows {
        let spec: WindowSpec = serde_json::from_value(serde_json::json!({
            "sliding": {"size": format!("{size}m"), "slide": format!("{slide}m")},
            "watermark": format!("{delay}m"),
            "aggregations": [{"name": "n", "count": {}}],
        }))
        .unwrap();
        Windows::new(
            WindowKind::from_spec(&spec).unwrap(),
            delay * MIN,
            vec![AggregateKind::Count],
        )
    }

    #[test]
    fn an_event_counts_in_every_sliding_window_that_holds_it() {
        let mut windows = sliding(5, 1, 0);
        windows.add(7 * MIN + 30_000, &key("a"), &[Some(1.0)]);
        let closed = windows.advance(&[(partition(), Some(20 * MIN))], &[]);
        let starts: Vec<i64> = counts(&closed).iter().map(|c| c.0).collect();
        assert_eq!(starts, vec![3, 4, 5, 6, 7]);
        assert!(counts(&closed).iter().all(|c| c.1 - c.0 == 5 && c.3 == 1));
    }

    #[test]
    fn windows_are_emitted_once_when_the_watermark_passes_their_end() {
        let mut windows = sliding(2, 1, 1);
        windows.add(0, &key("a"), &[Some(1.0)]);
        windows.add(MIN, &key("a"), &[Some(1.0)]);
        // Largest time 1m, watermark 0m: nothing has ended.
        assert!(windows.advance(&[(partition(), Some(MIN))], &[]).is_empty());
        windows.add(3 * MIN, &key("a"), &[Some(1.0)]);
        // Watermark 2m: windows [-1m, 1m) and [0m, 2m) end.
        let closed = counts(&windows.advance(&[(partition(), Some(3 * MIN))], &[]));
        assert_eq!(closed, vec![(-1, 1, "a".into(), 1), (0, 2, "a".into(), 2)]);
        // The same watermark again emits nothing new.
        assert!(windows.advance(&[(partition(), None)], &[]).is_empty());
    }

    #[test]
    fn an_event_is_late_only_when_all_its_windows_have_closed() {
        let mut windows = sliding(5, 1, 2);
        assert_eq!(
            windows.lateness(0),
            Lateness {
                late: false,
                closed: 0
            },
            "nothing is closed before the first watermark"
        );
        windows.add(20 * MIN, &key("a"), &[Some(1.0)]);
        windows.advance(&[(partition(), Some(20 * MIN))], &[]);
        assert_eq!(windows.watermark(), Some(18 * MIN));
        // 14:30 is in the windows starting 10..=14; those ending by 18 (10..=13) are closed.
        let partly = windows.lateness(14 * MIN + 30_000);
        assert_eq!((partly.late, partly.closed), (false, 4));
        assert!(!partly.is_late());
        // 13:59 is in windows 9..=13, all ended by 18; 14:00 opens window 14.
        assert!(windows.lateness(14 * MIN - 1).is_late());
        assert_eq!(windows.lateness(14 * MIN).closed, 4);
        assert_eq!(windows.lateness(30 * MIN).closed, 0);
    }

    #[test]
    fn lateness_agrees_with_counting_the_closed_windows() {
        for (size, slide) in [(5, 1), (4, 3), (3, 3), (7, 2)] {
            let mut windows = sliding(size, slide, 0);
            for watermark in [-7 * MIN - 1, 0, 11 * MIN, 11 * MIN + 7] {
                windows.watermark = Some(watermark);
                let rule = windows.lateness_rule();
                for time in (watermark - 9 * MIN..watermark + 9 * MIN).step_by(7_001) {
                    let step = slide * MIN;
                    let first = (time - size * MIN).div_euclid(step) * step;
                    let starts = (0..=size / slide + 1)
                        .map(|i| first + i * step)
                        .filter(|start| *start > time - size * MIN && *start <= time)
                        .collect::<Vec<_>>();
                    let closed = starts
                        .iter()
                        .filter(|start| *start + size * MIN <= watermark)
                        .count() as u32;
                    let expected = Lateness {
                        late: closed as usize == starts.len(),
                        closed,
                    };
                    assert_eq!(
                        rule.lateness(time),
                        expected,
                        "{size}/{slide} {watermark} {time}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_partly_late_event_counts_in_its_open_windows_only() {
        let mut windows = sliding(5, 1, 2);
        windows.add(20 * MIN, &key("a"), &[Some(1.0)]);
        let first = counts(&windows.advance(&[(partition(), Some(20 * MIN))], &[]));
        assert!(first.iter().all(|(_, end, ..)| *end <= 18));
        windows.add(14 * MIN + 30_000, &key("a"), &[Some(1.0)]);
        let closed = counts(&windows.advance(&[(partition(), Some(40 * MIN))], &[]));
        let late_one: Vec<_> = closed.iter().filter(|c| c.0 <= 14 && c.1 > 14).collect();
        assert_eq!(late_one, vec![&(14, 19, "a".to_owned(), 1)]);
    }

    #[test]
    fn update_mode_emits_changed_open_windows_each_epoch_and_ends_like_append() {
        let events = [
            (vec![3 * MIN, 4 * MIN], 4 * MIN),
            (vec![4 * MIN + 1, 7 * MIN], 7 * MIN),
            (vec![5 * MIN + 30_000], 30 * MIN),
        ];
        let mut append = sliding(2, 1, 1);
        let mut update = sliding(2, 1, 1).emitting_updates();
        let mut latest = BTreeMap::new();
        let mut appended = BTreeMap::new();
        let mut epochs = Vec::new();
        for (times, max) in events {
            for time in times {
                append.add(time, &key("a"), &[Some(1.0)]);
                update.add(time, &key("a"), &[Some(1.0)]);
            }
            let progress = [(partition(), Some(max))];
            for row in counts(&append.advance(&progress, &[])) {
                appended.insert((row.0, row.1), row.3);
            }
            let rows = counts(&update.advance(&progress, &[]));
            epochs.push(rows.iter().map(|r| (r.0, r.3)).collect::<Vec<_>>());
            for row in rows {
                latest.insert((row.0, row.1), row.3);
            }
        }
        // Epoch 0: 3m and 4m change the windows starting at 2m, 3m and 4m.
        assert_eq!(epochs[0], vec![(2, 1), (3, 2), (4, 1)]);
        // Epoch 1: 4m+1ms changes windows 3 and 4 (open: watermark 3m), 7m windows 6 and 7.
        assert_eq!(epochs[1], vec![(3, 3), (4, 2), (6, 1), (7, 1)]);
        // Epoch 2: 5m30s is in windows 4 (closed at watermark 6m) and 5.
        assert_eq!(epochs[2], vec![(5, 1)]);
        assert_eq!(
            latest, appended,
            "the last update of each window is its final value"
        );
    }

    #[test]
    fn the_slowest_active_partition_holds_the_watermark_until_idle() {
        let mut windows = sliding(1, 1, 0);
        let (fast, slow) = (PartitionId::new("p", 0), PartitionId::new("p", 1));
        windows.advance(
            &[
                (fast.clone(), Some(50 * MIN)),
                (slow.clone(), Some(10 * MIN)),
            ],
            &[],
        );
        assert_eq!(windows.watermark(), Some(10 * MIN));
        windows.advance(&[(fast.clone(), Some(60 * MIN)), (slow.clone(), None)], &[]);
        assert_eq!(
            windows.watermark(),
            Some(10 * MIN),
            "an empty epoch does not free the slow partition"
        );
        windows.advance(&[(fast, None), (slow.clone(), None)], &[slow]);
        assert_eq!(windows.watermark(), Some(60 * MIN));
    }

    #[test]
    fn the_watermark_never_moves_back() {
        let mut windows = sliding(1, 1, 0);
        windows.advance(&[(partition(), Some(10 * MIN))], &[]);
        windows.advance(&[(PartitionId::new("new", 0), Some(MIN))], &[]);
        assert_eq!(windows.watermark(), Some(10 * MIN));
    }

    #[test]
    fn tumbling_windows_and_all_aggregates() {
        let spec: WindowSpec = serde_json::from_value(serde_json::json!({
            "tumbling": {"size": "1m"}, "watermark": "0s",
            "aggregations": [{"name": "n", "count": {}}],
        }))
        .unwrap();
        let kinds = vec![
            AggregateKind::Count,
            AggregateKind::Sum,
            AggregateKind::Min,
            AggregateKind::Max,
            AggregateKind::Avg,
        ];
        let mut windows = Windows::new(WindowKind::from_spec(&spec).unwrap(), 0, kinds);
        for v in [4.0, 1.0, 7.0] {
            windows.add(
                1000,
                &key("a"),
                &[Some(1.0), Some(v), Some(v), Some(v), Some(v)],
            );
        }
        windows.add(2000, &key("a"), &[Some(1.0), None, None, None, None]);
        let closed = windows.advance(&[(partition(), Some(MIN))], &[]);
        assert_eq!(closed.len(), 1);
        let values: Vec<Option<f64>> = closed[0].3.iter().map(Accumulator::value).collect();
        assert_eq!(
            values,
            vec![Some(4.0), Some(12.0), Some(1.0), Some(7.0), Some(4.0)]
        );
    }

    #[test]
    fn sessions_merge_events_within_the_gap_per_key() {
        let mut windows = Windows::new(
            WindowKind::Session { gap: MIN },
            0,
            vec![AggregateKind::Count],
        );
        for time in [0, 30_000, 80_000, 200_000] {
            windows.add(time, &key("a"), &[Some(1.0)]);
        }
        windows.add(10_000, &key("b"), &[Some(1.0)]);
        // An event bridging two sessions merges them.
        windows.add(300_000, &key("c"), &[Some(1.0)]);
        windows.add(400_000, &key("c"), &[Some(1.0)]);
        windows.add(350_000, &key("c"), &[Some(1.0)]);
        let closed = counts(&windows.advance(&[(partition(), Some(10 * MIN))], &[]));
        let ms = |(s, e, k, n): (i64, i64, String, i64)| (s, e, k, n);
        let closed: Vec<_> = closed.into_iter().map(ms).collect();
        assert_eq!(
            closed,
            vec![
                (0, 2, "a".into(), 3),
                (0, 1, "b".into(), 1),
                (3, 4, "a".into(), 1),
                (5, 7, "c".into(), 3),
            ]
        );
    }

    #[test]
    fn state_survives_a_snapshot_round_trip() {
        let mut windows = sliding(5, 1, 2);
        windows.add(MIN, &key("a"), &[Some(1.0)]);
        windows.add(2 * MIN, &key("b"), &[Some(1.0)]);
        windows.advance(&[(partition(), Some(2 * MIN))], &[]);
        let json = serde_json::to_string(&windows.snapshot()).unwrap();
        let mut restored = sliding(5, 1, 2);
        restored.restore(serde_json::from_str(&json).unwrap());
        assert_eq!(restored.snapshot(), windows.snapshot());
        let closed = |w: &mut Windows| counts(&w.advance(&[(partition(), Some(30 * MIN))], &[]));
        assert_eq!(closed(&mut restored), closed(&mut windows));
    }
}
