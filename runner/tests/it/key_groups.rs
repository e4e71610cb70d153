//! Several replicas compute the windows one runner would: three runners read
//! a six-partition topic whose partitions have nothing to do with the
//! group-by key, exchange pre-aggregates through the repartition topic they
//! create, and their Delta table equals the batch computation row by row.

use std::{collections::BTreeMap, path::Path};

use crate::common::*;
use crate::kafka::{
    Replicas, Runner, replicated_manifest, scattered_messages, send_all, wait_for_table,
};
use sluice_tests::kafka::KafkaBroker;

const TOPIC: &str = "clicks";
const PARTITIONS: i32 = 6;
const REPLICAS: u32 = 3;

/// The data set on the topic, the manifest of the reference query over it,
/// and what the batch computation says the table must hold.
struct Setup {
    broker: KafkaBroker,
    messages: Vec<(i32, String)>,
    dir: tempfile::TempDir,
    manifest: std::path::PathBuf,
    table: String,
    expected: Windows,
}

impl Setup {
    /// Waits until the Delta table holds the batch computation's rows (or
    /// the deadline passes), asserts that it does, and stops the runners.
    async fn assert_rows_then_stop(&self, mut replicas: Replicas, after: &str) {
        let actual =
            wait_for_table(&self.table, &self.expected, &mut replicas.runners[0].child).await;
        assert_eq!(
            actual, self.expected,
            "{after}: Delta rows differ from the batch computation"
        );
        replicas.stop();
    }
}

fn setup(events: usize, seed: u64) -> Setup {
    let broker = KafkaBroker::start().unwrap();
    broker.create_topic(TOPIC, PARTITIONS).unwrap();
    let mut lines = data_set_without_stragglers(events, seed);
    let text = reference_jsonl(&lines, None);
    let messages = scattered_messages(&mut lines, &text, events, PARTITIONS);
    let dir = tempfile::tempdir().unwrap();
    let table = dir.path().join("table").display().to_string();
    let checkpoints = dir.path().join("checkpoints").display().to_string();
    // Every plan is kept, so that the test can add up what was read.
    let spec = reference_query_spec(&table, &checkpoints, "0s", "0s")
        .replace("interval: 0s}", "interval: 0s, retainEpochs: 100000}");
    let manifest = dir.path().join("pipeline.yaml");
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
    Setup {
        broker,
        messages,
        dir,
        manifest,
        table,
        expected,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_write_the_rows_of_the_batch_computation() {
    let setup = setup(30_000, 11);
    let replicas = Replicas::start(
        &setup.broker,
        TOPIC,
        &setup.messages,
        &setup.manifest,
        REPLICAS,
    )
    .await;
    setup
        .assert_rows_then_stop(replicas, "three replicas")
        .await;
}

/// Kills a runner with SIGKILL once it has committed an epoch, and starts it again.
fn kill_and_restart(manifest: &Path, replicas: &mut Replicas, replica: usize) {
    let count = replicas.runners.len() as u32;
    let runner = &mut replicas.runners[replica];
    assert!(
        wait_for_log(&runner.logs, "epoch committed", 1),
        "replica {replica} committed no epoch"
    );
    runner.child.kill().unwrap();
    runner.child.wait().unwrap();
    replicas.runners[replica] = Runner::start(manifest, replica as u32, count);
}

/// Per source partition, the offset ranges the source stages' plans read,
/// in every lane and generation under the checkpoint folder. Retention
/// deletes the plans up to the oldest checkpoint kept, so each first lane's
/// epoch 0 (read from the start of its partitions) is its checkpoint's end
/// positions.
fn planned_ranges(checkpoints: &Path) -> BTreeMap<i64, Vec<(i64, i64)>> {
    let mut ranges: BTreeMap<i64, Vec<(i64, i64)>> = BTreeMap::new();
    for entry in std::fs::read_dir(checkpoints).unwrap() {
        let lane = entry.unwrap().path();
        let first = lane.join("checkpoints").join(format!("{:020}.json", 0));
        let name = lane.file_name().unwrap().to_string_lossy().into_owned();
        if !name.starts_with("replica-") || !first.exists() {
            continue;
        }
        let checkpoint: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&first).unwrap()).unwrap();
        for pair in checkpoint["positions"].as_array().unwrap() {
            let partition = pair[0]["partition"].as_i64().unwrap();
            let end = pair[1]["offset"].as_i64().unwrap();
            ranges.entry(partition).or_default().push((0, end));
        }
    }
    let mut folders = vec![checkpoints.to_path_buf()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if path.is_dir() && name != "dead-letter" && !name.starts_with("keygroups-") {
                folders.push(path);
            } else if folder.ends_with("plans") {
                let plan: serde_json::Value =
                    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
                for range in plan["ranges"].as_array().unwrap() {
                    let (start, end) = (
                        range["start"]["offset"].as_i64().unwrap(),
                        range["end"]["offset"].as_i64().unwrap(),
                    );
                    if end > start {
                        let partition = range["partition"]["partition"].as_i64().unwrap();
                        ranges.entry(partition).or_default().push((start, end));
                    }
                }
            }
        }
    }
    ranges
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rescaling_three_to_two_to_four_with_kills_keeps_rows_exact_and_reads_each_record_once() {
    let setup = setup(30_000, 17);
    let (messages, manifest) = (&setup.messages, &setup.manifest);
    let part = |share: usize| messages.len() * share / 10;

    let (mut replicas, _) =
        Replicas::start_after_first_epoch(&setup.broker, TOPIC, messages, manifest, 3).await;
    send_all(&setup.broker, TOPIC, &messages[LINES_PER_EPOCH..part(4)]);
    kill_and_restart(manifest, &mut replicas, 1);
    replicas.stop();

    let mut replicas = Replicas::start_all(manifest, 2);
    send_all(&setup.broker, TOPIC, &messages[part(4)..part(7)]);
    kill_and_restart(manifest, &mut replicas, 0);
    replicas.stop();

    let replicas = Replicas::start_all(manifest, 4);
    send_all(&setup.broker, TOPIC, &messages[part(7)..]);
    setup
        .assert_rows_then_stop(replicas, "after rescaling 3 → 2 → 4")
        .await;

    // Each partition was read once from its start to its end: no range read
    // twice (no restart from the earliest offset), none skipped.
    let ends = setup.broker.end_offsets(TOPIC).unwrap();
    let ranges = planned_ranges(&setup.dir.path().join("checkpoints"));
    for (partition, end) in ends.iter().enumerate() {
        let mut read = ranges.get(&(partition as i64)).cloned().unwrap_or_default();
        read.sort_unstable();
        let mut next = 0;
        for (start, stop) in &read {
            assert_eq!(
                *start, next,
                "partition {partition}: ranges {read:?} overlap or leave a gap"
            );
            next = *stop;
        }
        assert_eq!(
            next, *end,
            "partition {partition} was read to {next}, not to its end"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_runners_windows_move_into_the_key_groups_of_two() {
    let setup = setup(20_000, 23);
    let (replicas, _) = Replicas::start_after_first_epoch(
        &setup.broker,
        TOPIC,
        &setup.messages,
        &setup.manifest,
        1,
    )
    .await;
    let half = setup.messages.len() / 2;
    send_all(&setup.broker, TOPIC, &setup.messages[LINES_PER_EPOCH..half]);
    replicas.stop();

    let replicas = Replicas::start_all(&setup.manifest, 2);
    send_all(&setup.broker, TOPIC, &setup.messages[half..]);
    setup
        .assert_rows_then_stop(replicas, "after going from one runner to two")
        .await;
}
