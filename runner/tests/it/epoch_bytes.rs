//! Epochs bounded by bytes: a real runner reads a backlog of 1 KB events,
//! several times its memory limit, from a real broker (tansu) into a Delta
//! table of raw events (a sink that receives each epoch's rows at once), and
//! stays within the limit while writing every event exactly once.

use std::{collections::HashSet, path::Path, time::Duration};

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::{Int32Type, Int64Type};
use sluice_crds::MEMORY_LIMIT_ENV;
use sluice_runner::sink::delta::read_table;
use sluice_tests::kafka::KafkaBroker;

use crate::common::*;
use crate::kafka::stop_gracefully;

const TOPIC: &str = "large-events";
const PARTITIONS: i32 = 2;
/// Bytes of each event's JSON text.
const EVENT_BYTES: usize = 1024;
/// The memory limit the runner is told it has (as the controller tells it
/// from the pod's `limits.memory`).
const MEMORY_LIMIT: u64 = 160 << 20;
/// A backlog a quarter larger than the limit (with epochs of a sixteenth of
/// it, 20 epochs): enough to show the bound, small enough for a debug-build
/// runner to read in a few minutes on two busy cores.
const EVENTS: usize = (MEMORY_LIMIT as usize / EVENT_BYTES) * 5 / 4;

/// Event `n`: an event time, its number, and random letters and digits up
/// to [`EVENT_BYTES`], which compress about as little as real payloads do
/// (a sink that encodes them holds about as many bytes as it was given).
fn event(n: usize, rng: &mut Rng) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut text = format!(
        r#"{{"timestamp":"{}","n":{n},"pad":""#,
        rfc3339(1_790_000_000_000 + n as i64)
    );
    while text.len() < EVENT_BYTES - 2 {
        text.push(ALPHABET[rng.below(64) as usize] as char);
    }
    text.push_str("\"}");
    text
}

fn produce(broker: &KafkaBroker) {
    broker.create_topic(TOPIC, PARTITIONS).unwrap();
    let producer = broker.producer().unwrap();
    let mut rng = Rng::new(7);
    for n in 0..EVENTS {
        let payload = event(n, &mut rng);
        assert_eq!(payload.len(), EVENT_BYTES);
        producer
            .send(TOPIC, n as i32 % PARTITIONS, None, payload.as_bytes())
            .unwrap();
    }
    producer.flush().unwrap();
    let end: i64 = broker.end_offsets(TOPIC).unwrap().iter().sum();
    assert_eq!(end, EVENTS as i64);
}

/// Raw events from the topic's start into a Delta table, with no pause
/// between epochs.
fn manifest(dir: &Path, broker: &KafkaBroker) -> (std::path::PathBuf, String) {
    let table = dir.join("events").display().to_string();
    let pipeline = serde_json::json!({
        "apiVersion": "sluice.dev/v1alpha1",
        "kind": "StreamPipeline",
        "metadata": {"name": "large-events", "namespace": "test", "uid": "3f0a-large-events"},
        "spec": {
            "source": {"kafka": {
                "bootstrapServers": broker.bootstrap_servers(),
                "topics": [TOPIC],
                "consumerGroup": "large-events",
                "startingOffsets": "earliest",
            }},
            "sinks": [{"name": "raw", "input": "events", "delta": {"uri": table}}],
            "checkpoint": {"uri": dir.join("checkpoints").display().to_string()},
            "trigger": {"interval": "0s"},
        },
    });
    let path = dir.join("pipeline.yaml");
    std::fs::write(&path, serde_yaml::to_string(&pipeline).unwrap()).unwrap();
    (path, table)
}

/// The process's peak resident set (`VmHWM`), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().strip_suffix("kB"))
        .and_then(|kib| kib.trim().parse().ok())
        .expect("VmHWM in /proc/<pid>/status");
    kib * 1024
}

/// (partition, offset) of every row, and whether any repeats.
fn row_ids(batches: &[RecordBatch]) -> (usize, HashSet<(i32, i64)>) {
    let mut rows = 0;
    let mut ids = HashSet::new();
    for batch in batches {
        let partition = batch
            .column_by_name("partition")
            .unwrap()
            .as_primitive::<Int32Type>();
        let offset = batch
            .column_by_name("offset")
            .unwrap()
            .as_primitive::<Int64Type>();
        rows += batch.num_rows();
        ids.extend(
            partition
                .values()
                .iter()
                .copied()
                .zip(offset.values().iter().copied()),
        );
    }
    (rows, ids)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_of_large_events_beyond_the_memory_limit_is_read_within_it() {
    let broker = KafkaBroker::start().unwrap();
    produce(&broker);
    let dir = tempfile::tempdir().unwrap();
    let (manifest, table) = manifest(dir.path(), &broker);
    let (mut runner, logs) =
        spawn_runner(&manifest, &[(MEMORY_LIMIT_ENV, MEMORY_LIMIT.to_string())]);
    let address = runner_address(&logs);
    // A debug-build runner writes these 1 KB rows to Delta at well under
    // 1 MB/s on busy cores.
    let total = poll_until_for(
        Duration::from_secs(900),
        &mut [&mut runner],
        async || {
            let status: serde_json::Value = reqwest::get(format!("{address}/status"))
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            status["eventsTotal"].as_u64()
        },
        |total| total.is_some_and(|total| total >= EVENTS as u64),
    )
    .await;
    assert_eq!(total, Some(EVENTS as u64), "events read");
    let peak = peak_rss(runner.id());
    stop_gracefully(runner, logs);
    println!(
        "{EVENTS} events of {EVENT_BYTES} bytes ({} MiB) under a {} MiB limit: peak RSS {} MiB",
        (EVENTS * EVENT_BYTES) >> 20,
        MEMORY_LIMIT >> 20,
        peak >> 20
    );
    assert!(
        peak < MEMORY_LIMIT,
        "peak RSS {} MiB is over the {} MiB memory limit",
        peak >> 20,
        MEMORY_LIMIT >> 20
    );
    let (rows, ids) = row_ids(&read_table(&table).await.unwrap());
    assert_eq!(ids.len(), EVENTS, "distinct events in the table");
    assert_eq!(rows, EVENTS, "rows in the table: each event exactly once");
}
