//! Dedup across crashes: about one event in ten arrives twice (an identical
//! copy 1 to 3,000 lines later, as a retrying producer sends it), so copies
//! land in the epoch after their original at every epoch boundary. The
//! runner is killed with SIGKILL after a checkpoint, after an epoch's sinks
//! committed and after an epoch was planned — each time between the first
//! and second occurrence of some ids — and restarted. In the end the window
//! counts equal a batch computation that counts each id once, and the raw
//! events table holds each id once, as its first occurrence.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::common::*;
use arrow::array::{Array, Int64Array, StringArray};
use sluice_runner::sink::delta::read_table;

const COPY_DISTANCE: u64 = 3_000;

/// Lines with copies inserted, the id of each line, and whether it is a copy.
struct Duplicated {
    lines: Vec<Line>,
    ids: Vec<usize>,
    copy: Vec<bool>,
}

fn duplicated(base: Vec<Line>, seed: u64) -> Duplicated {
    let mut rng = Rng::new(seed);
    // (place, line, id, copy): a copy of line i goes right after line i + d.
    let mut placed = Vec::new();
    for (i, line) in base.into_iter().enumerate() {
        if let Line::Event { time, event_type } = &line
            && rng.below(10) == 0
        {
            let after = i + 1 + rng.below(COPY_DISTANCE) as usize;
            let copy = Line::Event {
                time: *time,
                event_type,
            };
            placed.push((2 * after + 1, copy, i, true));
        }
        placed.push((2 * i, line, i, false));
    }
    placed.sort_by_key(|(place, ..)| *place);
    let mut duplicated = Duplicated {
        lines: Vec::new(),
        ids: Vec::new(),
        copy: Vec::new(),
    };
    for (_, line, id, copy) in placed {
        duplicated.lines.push(line);
        duplicated.ids.push(id);
        duplicated.copy.push(copy);
    }
    duplicated
}

/// Byte offset of the first line holding each id in a JSON-lines file.
fn first_offsets(data: &str) -> HashMap<String, i64> {
    let mut first = HashMap::new();
    let mut offset = 0;
    for line in data.split_inclusive('\n') {
        if let Ok(event) = serde_json::from_str::<serde_json::Value>(line)
            && let Some(id) = event["id"].as_str()
        {
            first.entry(id.to_owned()).or_insert(offset);
        }
        offset += line.len() as i64;
    }
    first
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_runs_count_each_id_once() {
    let Duplicated { lines, ids, copy } = duplicated(data_set(60_000, 31), 32);
    assert!(copy.iter().filter(|&&c| c).count() > 5_000);
    let LocalReferenceRun {
        dir,
        lines,
        data,
        table,
        manifest,
        ..
    } = LocalReferenceRun::with_lines(lines, Some(&ids), "100ms");
    let raw = dir.path().join("raw");
    edit_spec(&manifest, |spec| {
        spec["transforms"] =
            serde_yaml::from_str("[{dedup: {idField: id, horizon: 10m}}]").unwrap();
        let raw_sink = format!("{{name: raw, input: events, delta: {{uri: {raw:?}}}}}");
        spec["sinks"]
            .as_sequence_mut()
            .unwrap()
            .push(serde_yaml::from_str(&raw_sink).unwrap());
    });

    let checkpointed = kill_runner_at(&manifest, "checkpoint written", 2);
    // The premise: some ids were first seen up to that checkpoint and come again after it.
    let boundary = (checkpointed as usize + 1) * LINES_PER_EPOCH;
    let before: HashSet<usize> = ids[..boundary].iter().copied().collect();
    let straddling = (boundary..lines.len())
        .filter(|&i| copy[i] && before.contains(&ids[i]))
        .count();
    assert!(
        straddling > 10,
        "{straddling} ids straddle epoch {checkpointed}"
    );
    kill_runner_at(&manifest, "epoch committed", checkpointed + 3);
    kill_runner_at(&manifest, "epoch planned", checkpointed + 6);
    let (child, logs) = spawn_runner(&manifest, &[]);
    wait_success(child, logs);

    let Expected {
        windows: expected,
        late,
        ..
    } = expected_windows_counting(&lines, |i| !copy[i]);
    let actual = table_windows(&read_table(table.to_str().unwrap()).await.unwrap());
    assert_eq!(actual, expected, "window counts with each id once");

    let first = first_offsets(&std::fs::read_to_string(&data).unwrap());
    let mut kept: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for batch in read_table(raw.to_str().unwrap()).await.unwrap() {
        let column = |name: &str| batch.column_by_name(name).unwrap().clone();
        let (offsets, events) = (column("offset"), column("event"));
        let offsets = offsets.as_any().downcast_ref::<Int64Array>().unwrap();
        let events = events.as_any().downcast_ref::<StringArray>().unwrap();
        for row in 0..batch.num_rows() {
            let event: serde_json::Value = serde_json::from_str(events.value(row)).unwrap();
            let id = event["id"].as_str().unwrap().to_owned();
            kept.entry(id).or_default().push(offsets.value(row));
        }
    }
    let twice: Vec<_> = kept.iter().filter(|(_, o)| o.len() > 1).collect();
    assert!(twice.is_empty(), "ids written more than once: {twice:?}");
    let not_first: Vec<_> = kept
        .iter()
        .filter(|(id, offsets)| first.get(*id) != Some(&offsets[0]))
        .collect();
    assert!(
        not_first.is_empty(),
        "kept a copy instead of the first occurrence: {not_first:?}"
    );
    let originals = copy
        .iter()
        .zip(&lines)
        .filter(|(c, l)| !**c && matches!(l, Line::Event { .. }))
        .count();
    assert_eq!(kept.len(), originals - late, "every id not late, once");
}
