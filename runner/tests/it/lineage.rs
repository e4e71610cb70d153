//! A new checkpoint lineage (what `upgradePolicy: reset` starts) continues
//! where the old one committed and its rows land: its epochs count from 0
//! again, and sinks that remember the last epoch they hold per writer
//! (Delta's transaction ids) must not take them for replays.

use crate::common::*;
use crate::kafka::{replicated_manifest, send_all, stop_gracefully, wait_for_table};
use sluice_tests::kafka::KafkaBroker;

const TOPIC: &str = "orders";
const PARTITIONS: i32 = 2;
const TYPES: [&str; 3] = ["view", "click", "buy"];

/// Events (time, type) and the messages (partition, payload) that carry them.
type Phase = (Vec<(i64, &'static str)>, Vec<(i32, String)>);

/// `n` in-order events from `start`, a second apart, and a closing event per
/// partition 30 minutes later (type `close`): every window of the events
/// closes, the closing events' own windows stay open.
fn phase(start: i64, n: usize) -> Phase {
    let events: Vec<(i64, &'static str)> = (0..n)
        .map(|i| (start + i as i64 * 1000, TYPES[i % TYPES.len()]))
        .collect();
    let close = start + n as i64 * 1000 + 30 * MINUTE;
    let mut messages: Vec<(i32, String)> = events
        .iter()
        .enumerate()
        .map(|(i, (time, kind))| ((i % PARTITIONS as usize) as i32, event(*time, kind)))
        .collect();
    messages.extend((0..PARTITIONS).map(|p| (p, event(close, "close"))));
    (events, messages)
}

fn event(time: i64, kind: &str) -> String {
    format!(
        r#"{{"timestamp":"{}","event_type":"{kind}"}}"#,
        rfc3339(time)
    )
}

/// The reference query's rows for in-order events (nothing late).
fn windows(events: &[(i64, &str)]) -> Windows {
    let mut windows = Windows::new();
    for (time, kind) in events {
        for back in 0..5 {
            let start = time.div_euclid(MINUTE) * MINUTE - back * MINUTE;
            *windows
                .entry((start, start + 5 * MINUTE, (*kind).to_owned()))
                .or_default() += 1;
        }
    }
    windows
}

fn manifest(dir: &std::path::Path, broker: &KafkaBroker, lineage: u32) -> std::path::PathBuf {
    let table = dir.join("table").display().to_string();
    // The controller gives each lineage its own folder under the URI.
    let checkpoints = dir
        .join("checkpoints")
        .join(format!("lineage-{lineage}"))
        .display()
        .to_string();
    let path = dir.join(format!("pipeline-{lineage}.yaml"));
    let spec = reference_query_spec(&table, &checkpoints, "0s", "0s");
    std::fs::write(
        &path,
        replicated_manifest(broker, TOPIC, "orders", 1, 32, &spec),
    )
    .unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_lineage_continues_where_the_old_one_committed_and_its_rows_land() {
    let broker = KafkaBroker::start().unwrap();
    broker.create_topic(TOPIC, PARTITIONS).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let table = dir.path().join("table").display().to_string();

    // Lineage 0: many epochs (one per trigger), all of its windows written.
    let (first, messages) = phase(START, 600);
    let mut expected = windows(&first);
    let (mut runner, logs) = spawn_runner(&manifest(dir.path(), &broker, 0), &[]);
    for chunk in messages.chunks(50) {
        send_all(&broker, TOPIC, chunk);
        assert!(wait_for_log(&logs, "epoch committed", 0));
    }
    let actual = wait_for_table(&table, &expected, &mut runner).await;
    assert_eq!(actual, expected, "lineage 0 wrote its windows");
    stop_gracefully(runner, logs);

    // Lineage 1 (a reset): fresh checkpoints, few epochs. Its windows must
    // land, and the events lineage 0 read must not be read again.
    let (second, messages) = phase(START + 60 * MINUTE, 60);
    expected.extend(windows(&second));
    send_all(&broker, TOPIC, &messages);
    let (mut runner, logs) = spawn_runner(&manifest(dir.path(), &broker, 1), &[]);
    let actual = wait_for_table(&table, &expected, &mut runner).await;
    assert_eq!(
        actual, expected,
        "the new lineage's rows are missing, or the old lineage's events were read again"
    );
    stop_gracefully(runner, logs);
}
