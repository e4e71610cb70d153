//! Event time across partitions, against the Kafka broker: a partition's
//! progress comes from every record it reads (filtered ones included), a
//! partition with a small backlog is read every epoch, and an event from the
//! far future is malformed instead of closing every window.

use std::{collections::BTreeMap, path::Path};

use sluice_tests::kafka::KafkaBroker;

use crate::{
    common::*,
    kafka::{stop_gracefully, wait_for_table},
};

const TOPIC: &str = "clicks";
const SECOND: i64 = 1000;

fn event(time: i64, event_type: &str) -> String {
    format!(
        r#"{{"timestamp":"{}","event_type":"{event_type}"}}"#,
        rfc3339(time)
    )
}

/// Produces `(partition, payload)` messages to a new two-partition topic.
fn produce(broker: &KafkaBroker, messages: &[(i32, String)]) {
    broker.create_topic(TOPIC, 2).unwrap();
    crate::kafka::send_all(broker, TOPIC, messages);
}

/// The reference query over the topic, `max` records per epoch, with `extra`
/// appended to the spec; returns the manifest's and the table's paths.
fn manifest(dir: &Path, broker: &KafkaBroker, max: usize, extra: &str) -> (String, String) {
    let table = dir.join("table").display().to_string();
    let checkpoints = dir.join("checkpoints").display().to_string();
    let text = format!(
        r#"apiVersion: sluice.dev/v1alpha1
kind: StreamPipeline
metadata: {{name: event-time, namespace: test, uid: 0b7e4d51-event-time}}
spec:
  source:
    kafka:
      bootstrapServers: "{bootstrap}"
      topics: [{TOPIC}]
      consumerGroup: event-time
      startingOffsets: earliest
      maxOffsetsPerTrigger: {max}
{spec}{extra}"#,
        bootstrap = broker.bootstrap_servers(),
        spec = reference_query_spec(&table, &checkpoints, "0s", "0s"),
    );
    let path = dir.join("pipeline.yaml");
    std::fs::write(&path, text).unwrap();
    (path.display().to_string(), checkpoints)
}

/// The reference query's rows when every event counts (none is late): each
/// 5-minute window sliding by 1 minute that ends by `watermark`.
fn all_counted(events: &[(i64, &str)], watermark: i64) -> Windows {
    let mut windows = BTreeMap::new();
    for (time, event_type) in events {
        for back in 0..5 {
            let start = time.div_euclid(MINUTE) * MINUTE - back * MINUTE;
            if start + 5 * MINUTE <= watermark {
                *windows
                    .entry((start, start + 5 * MINUTE, (*event_type).to_owned()))
                    .or_default() += 1;
            }
        }
    }
    windows
}

/// Dead-lettered events of the object-store dead-letter output: (reason, detail).
fn dead_letters(checkpoints: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let dir = Path::new(checkpoints).join("dead-letter/replica-0");
    for file in std::fs::read_dir(dir).into_iter().flatten() {
        let text = std::fs::read_to_string(file.unwrap().path()).unwrap();
        for line in text.lines() {
            let json: serde_json::Value = serde_json::from_str(line).unwrap();
            out.push((
                json["reason"].as_str().unwrap_or_default().to_owned(),
                json.to_string(),
            ));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filtered_events_move_event_time_and_far_future_events_are_dead_lettered() {
    // Partition 0: a click or a view every second for 20 minutes. Partition
    // 1: one view, then only heartbeats, which the pipeline filters out.
    // One event of each partition is stamped 2099: a clock error.
    let mut counted = Vec::new();
    let mut messages = Vec::new();
    for i in 0..1200 {
        let time = START + i * SECOND;
        let event_type = if i % 3 == 0 { "click" } else { "view" };
        counted.push((time, event_type));
        messages.push((0, event(time, event_type)));
        if i == 0 {
            counted.push((time + 500, "view"));
            messages.push((1, event(time + 500, "view")));
        } else {
            messages.push((1, event(time, "heartbeat")));
        }
        if i == 600 {
            let year_2099 = 4_070_908_800_000;
            messages.push((0, event(year_2099, "view")));
            messages.push((1, event(year_2099, "heartbeat")));
        }
    }
    let broker = KafkaBroker::start().unwrap();
    produce(&broker, &messages);
    let dir = tempfile::tempdir().unwrap();
    let (manifest, checkpoints) = manifest(
        dir.path(),
        &broker,
        400,
        "  transforms:\n    - filter: \"event_type != 'heartbeat'\"\n",
    );
    // Both partitions end at 19:59; the heartbeats carry partition 1 there.
    let watermark = START + 1199 * SECOND - 2 * MINUTE;
    let expected = all_counted(&counted, watermark);
    assert!(expected.len() > 20, "windows close: {}", expected.len());

    let (mut runner, logs) = spawn_runner(Path::new(&manifest), &[]);
    let table = dir.path().join("table").display().to_string();
    let actual = wait_for_table(&table, &expected, &mut runner).await;
    assert_eq!(
        actual, expected,
        "windows fire as both partitions' event time moves"
    );
    stop_gracefully(runner, logs);

    let dead = dead_letters(&checkpoints);
    assert_eq!(dead.len(), 2, "the two 2099 events: {dead:?}");
    for (reason, detail) in dead {
        assert_eq!(reason, "malformed");
        assert!(detail.contains("maxEventTimeAhead"), "{detail}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_with_a_small_backlog_is_read_every_epoch() {
    // Partition 0 has 20,000 events (10 ms apart, in order), partition 1
    // ten events from the same first seconds. With 1,000 records per epoch,
    // a share in proportion to backlog gives partition 1 nothing for 20
    // epochs; with a 1 s idle timeout it would then count as idle, the
    // watermark would pass its events, and they would be late when read.
    let mut counted = Vec::new();
    let mut messages = Vec::new();
    for i in 0..20_000 {
        let time = START + i * 10;
        counted.push((time, "view"));
        messages.push((0, event(time, "view")));
    }
    for i in 0..10 {
        let time = START + i * SECOND;
        counted.push((time, "click"));
        messages.push((1, event(time, "click")));
    }
    // Closing events ten minutes on close every window of the data.
    let closing = START + 20_000 * 10 + 10 * MINUTE;
    for partition in 0..2 {
        messages.push((partition, event(closing, "close")));
    }
    let broker = KafkaBroker::start().unwrap();
    produce(&broker, &messages);
    let dir = tempfile::tempdir().unwrap();
    let (manifest, checkpoints) = manifest(dir.path(), &broker, 1000, "");
    edit_spec(Path::new(&manifest), |spec| {
        spec["window"]["idleTimeout"] = "1s".into();
    });
    let expected = all_counted(&counted, closing - 2 * MINUTE);

    let (mut runner, logs) = spawn_runner(Path::new(&manifest), &[]);
    let table = dir.path().join("table").display().to_string();
    let actual = wait_for_table(&table, &expected, &mut runner).await;
    assert_eq!(actual, expected, "partition 1's clicks all count");
    stop_gracefully(runner, logs);
    assert!(
        dead_letters(&checkpoints).is_empty(),
        "no event is late or malformed"
    );
}
