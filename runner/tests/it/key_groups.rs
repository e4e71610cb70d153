//! Several replicas compute the windows one runner would: three runners read
//! a six-partition topic whose partitions have nothing to do with the
//! group-by key, exchange pre-aggregates through the repartition topic they
//! create, and their Delta table equals the batch computation row by row.

use crate::common::*;
use crate::kafka::{Replicas, replicated_manifest, scattered_messages, wait_for_table};
use sluice_tests::kafka::KafkaBroker;

const TOPIC: &str = "clicks";
const PARTITIONS: i32 = 6;
const REPLICAS: u32 = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_write_the_rows_of_the_batch_computation() {
    let broker = KafkaBroker::start().unwrap();
    broker.create_topic(TOPIC, PARTITIONS).unwrap();
    let events = 30_000;
    let mut lines = data_set_without_stragglers(events, 11);
    let text = reference_jsonl(&lines, None);
    let messages = scattered_messages(&mut lines, &text, events, PARTITIONS);
    let dir = tempfile::tempdir().unwrap();
    let table = dir.path().join("table").display().to_string();
    let checkpoints = dir.path().join("checkpoints").display().to_string();
    let manifest = dir.path().join("pipeline.yaml");
    let spec = reference_query_spec(&table, &checkpoints, "0s", "0s");
    std::fs::write(
        &manifest,
        replicated_manifest(&broker, TOPIC, "clicks", REPLICAS, 8, &spec),
    )
    .unwrap();
    let Expected {
        windows: expected,
        late,
        ..
    } = expected_windows(&lines);
    assert!(late > 100, "the data set has late events ({late})");

    let mut replicas = Replicas::start(&broker, TOPIC, &messages, &manifest, REPLICAS).await;
    let actual = wait_for_table(&table, &expected, &mut replicas.runners[0]).await;
    assert_eq!(
        actual, expected,
        "three replicas' Delta rows differ from the batch computation"
    );
    replicas.stop();
}
