//! Several replicas compute the windows one runner would: three runners read
//! a six-partition topic whose partitions have nothing to do with the
//! group-by key, exchange pre-aggregates through the repartition topic they
//! create, and their Delta table equals the batch computation row by row.

use std::{process::Child, sync::mpsc};

use crate::common::*;
use crate::kafka::{send_all, stop_gracefully, wait_for_table};
use sluice_tests::kafka::KafkaBroker;

const TOPIC: &str = "clicks";
const PARTITIONS: i32 = 6;
const REPLICAS: u32 = 3;

/// Lines as messages, each to a partition chosen from its position (not its
/// event type, the group-by key), and a closing event per partition.
fn messages(lines: &mut Vec<Line>, events: usize) -> Vec<(i32, String)> {
    topic_messages(lines, events, PARTITIONS, |i| {
        ((i * 7 + i / 3) % PARTITIONS as usize) as i32
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_write_the_rows_of_the_batch_computation() {
    let broker = KafkaBroker::start().unwrap();
    broker.create_topic(TOPIC, PARTITIONS).unwrap();
    let events = 30_000;
    let mut lines = data_set_without_stragglers(events, 11);
    let messages = messages(&mut lines, events);
    let dir = tempfile::tempdir().unwrap();
    let table = dir.path().join("table").display().to_string();
    let checkpoints = dir.path().join("checkpoints").display().to_string();
    let manifest = dir.path().join("pipeline.yaml");
    std::fs::write(
        &manifest,
        format!(
            r#"apiVersion: sluice.dev/v1alpha1
kind: StreamPipeline
metadata: {{name: clicks, namespace: test, uid: 0c4f-key-groups}}
spec:
  source:
    kafka:
      bootstrapServers: "{bootstrap}"
      topics: [{TOPIC}]
      consumerGroup: clicks
      startingOffsets: earliest
      maxOffsetsPerTrigger: 1000
  parallelism: {REPLICAS}
  keyGroups: 8
{spec}"#,
            bootstrap = broker.bootstrap_servers(),
            spec = reference_query_spec(&table, &checkpoints, "0s", "0s"),
        ),
    )
    .unwrap();
    let Expected {
        windows: expected,
        late,
        ..
    } = expected_windows(&lines);
    assert!(late > 100, "the data set has late events ({late})");

    // The first epoch's worth of lines has no late events. Only once every
    // runner has a watermark do the others arrive, so that every event an
    // hour late is late in its key group too, as it is for one runner after
    // its first epoch (before any watermark, nothing is late).
    let first = messages.len().min(LINES_PER_EPOCH);
    send_all(&broker, TOPIC, &messages[..first]);
    let mut runners: Vec<(Child, mpsc::Receiver<String>, String)> = (0..REPLICAS)
        .map(|replica| {
            let (runner, logs) = spawn_runner(
                &manifest,
                &[
                    ("SLUICE_REPLICA", replica.to_string()),
                    ("SLUICE_REPLICAS", REPLICAS.to_string()),
                ],
            );
            let address = runner_address(&logs);
            (runner, logs, address)
        })
        .collect();
    for (runner, _, address) in &mut runners {
        poll_runner(
            runner,
            &format!("{address}/status"),
            "a watermark in every key group",
            async |response| {
                let status: serde_json::Value = response.json().await.ok()?;
                status["watermark"].as_str().map(str::to_owned)
            },
        )
        .await;
    }
    send_all(&broker, TOPIC, &messages[first..]);
    let actual = wait_for_table(&table, &expected, &mut runners[0].0).await;
    assert_eq!(
        actual, expected,
        "three replicas' Delta rows differ from the batch computation"
    );
    for (runner, logs, _) in runners {
        stop_gracefully(runner, logs);
    }
}
