//! One runner process rides out repeated outages of the services it talks
//! to: the Kafka broker twice and the S3 endpoint (its checkpoints and its
//! Delta table) once, each cut off through a front while the service keeps
//! its data, long enough that the runner fails epochs and recovers in
//! process; and an S3 endpoint that is down when the runner starts. It must
//! never exit, say it is not ready (and why) during each outage, and end
//! with exactly the rows of the batch computation.

use std::{process::Child, sync::mpsc};

use crate::{
    common::*,
    kafka::{Topic, manifest_at, stop_gracefully, wait_for_table_with, wait_until_readyz},
};
use sluice_runner::sink::delta::read_table_with_options;
use sluice_tests::{kafka::KafkaBroker, moto::MotoS3};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_and_object_store_outages_in_one_process_lose_and_duplicate_nothing() {
    let mut broker = KafkaBroker::start().unwrap();
    let s3 = MotoS3::start("sluice").await;
    let topic = Topic::generate(60_000, 41);
    let phases = [0, 15_000, 30_000, 45_000, topic.messages.len()];
    topic.create(&broker);
    topic.produce_up_to(&broker, phases[0], phases[1]);
    let dir = tempfile::tempdir().unwrap();
    let table = s3.uri("lake/outages");
    let manifest = manifest_at(
        dir.path(),
        &broker,
        &table,
        &s3.uri("checkpoints/outages"),
        "",
        "",
    );
    let Expected {
        windows: expected, ..
    } = expected_windows(&topic.lines);

    let (mut runner, logs) = spawn_runner(&manifest, &s3.env());
    let address = runner_address(&logs);
    assert!(
        wait_for_log(&logs, "epoch committed", 0),
        "no first epoch"
    );

    // The broker goes away while the runner works through the first phase.
    broker.cut_off();
    let error = wait_until_interrupted(&address, &mut runner).await;
    assert!(error.contains("kafka"), "the error names the broker: {error}");
    broker.restore().unwrap();
    wait_until_readyz(&format!("{address}/readyz"), &mut runner, true).await;

    // The object store goes away in the middle of an epoch: its plan is
    // written, its Delta commit or checkpoint is not, so the recovery
    // replays it (and checkpoints the replay).
    topic.produce_up_to(&broker, phases[1], phases[2]);
    drain(&logs);
    assert!(
        wait_for_log(&logs, "epoch planned", 0),
        "no epoch after the broker came back"
    );
    s3.cut_off();
    let error = wait_until_interrupted(&address, &mut runner).await;
    assert!(
        error.contains(s3.endpoint().trim_start_matches("http://")),
        "the error names the object store: {error}"
    );
    s3.restore().unwrap();
    wait_until_readyz(&format!("{address}/readyz"), &mut runner, true).await;

    // The broker again: a later recovery in the same process restores the
    // replay's checkpoint without writing it a second time.
    topic.produce_up_to(&broker, phases[2], phases[3]);
    drain(&logs);
    assert!(
        wait_for_log(&logs, "epoch committed", 0),
        "no epoch after the object store came back"
    );
    broker.cut_off();
    wait_until_interrupted(&address, &mut runner).await;
    broker.restore().unwrap();
    wait_until_readyz(&format!("{address}/readyz"), &mut runner, true).await;

    topic.produce_up_to(&broker, phases[3], phases[4]);
    let actual =
        wait_for_table_with(&table, &s3.storage_options(), &expected, &mut runner).await;
    assert_eq!(
        actual, expected,
        "Delta rows differ from the batch computation"
    );
    stop_gracefully(runner, logs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_started_while_the_object_store_is_down_waits_for_it() {
    let s3 = MotoS3::start("sluice").await;
    let dir = tempfile::tempdir().unwrap();
    let lines = data_set(20_000, 43);
    let data = dir.path().join("events.jsonl");
    write_jsonl(&lines, &data);
    let table = s3.uri("lake/late-store");
    let manifest = dir.path().join("pipeline.yaml");
    std::fs::write(
        &manifest,
        reference_manifest(&data, &table, &s3.uri("checkpoints/late-store"), "0s"),
    )
    .unwrap();

    s3.cut_off();
    let (mut runner, logs) = spawn_runner(&manifest, &s3.env());
    let address = runner_address(&logs);
    let error = wait_until_interrupted(&address, &mut runner).await;
    assert!(
        error.contains(s3.endpoint().trim_start_matches("http://")),
        "the error names the object store: {error}"
    );
    s3.restore().unwrap();
    wait_success(runner, logs);

    let Expected {
        windows: expected, ..
    } = expected_windows(&lines);
    let batches = read_table_with_options(&table, s3.storage_options())
        .await
        .unwrap();
    assert_eq!(table_windows(&batches), expected);
}

/// Polls the runner's `/status` until it reports that it is not ready and
/// why; returns the reason.
async fn wait_until_interrupted(address: &str, runner: &mut Child) -> String {
    let url = format!("{address}/status");
    poll_runner(runner, &url, "an interruption", async |response| {
        let status = response.json::<serde_json::Value>().await.ok()?;
        if status["ready"] == false {
            status["error"].as_str().map(str::to_lowercase)
        } else {
            None
        }
    })
    .await
}

/// Forgets the log lines so far, so that the next wait sees only new ones.
fn drain(logs: &mpsc::Receiver<String>) {
    logs.try_iter().for_each(drop);
}
