//! One runner process rides out repeated outages of the services it talks
//! to: the Kafka broker twice and the S3 endpoint (its checkpoints and its
//! Delta table) once, each cut off through a front while the service keeps
//! its data, long enough that the runner fails epochs and recovers in
//! process; and an S3 endpoint that is down when the runner starts. It must
//! never exit, say it is not ready (and why) during each outage, and end
//! with exactly the rows of the batch computation.

use std::{process::Child, sync::mpsc, time::Duration};

use crate::{
    common::*,
    kafka::{Topic, manifest_at, stop_gracefully, wait_for_table_with, wait_until_readyz},
    recovery_s3::S3ReferenceRun,
};
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
    assert!(wait_for_log(&logs, "epoch committed", 0), "no first epoch");

    // The broker goes away while the runner works through the first phase.
    let error = outage(&mut runner, &address, |up| broker_up(&mut broker, up)).await;
    assert!(
        error.contains("kafka"),
        "the error names the broker: {error}"
    );

    // The object store goes away in the middle of an epoch: its plan is
    // written, its Delta commit or checkpoint is not, so the recovery
    // replays it (and checkpoints the replay).
    topic.produce_up_to(&broker, phases[1], phases[2]);
    wait_for_new_log(&logs, "epoch planned");
    let error = outage(&mut runner, &address, |up| s3_up(&s3, up)).await;
    assert!(
        error.contains(s3.endpoint().trim_start_matches("http://")),
        "the error names the object store: {error}"
    );

    // The broker again: a later recovery in the same process restores the
    // replay's checkpoint without writing it a second time.
    topic.produce_up_to(&broker, phases[2], phases[3]);
    wait_for_new_log(&logs, "epoch committed");
    outage(&mut runner, &address, |up| broker_up(&mut broker, up)).await;

    topic.produce_up_to(&broker, phases[3], phases[4]);
    let actual = wait_for_table_with(&table, &s3.storage_options(), &expected, &mut runner).await;
    assert_eq!(
        actual, expected,
        "Delta rows differ from the batch computation"
    );
    stop_gracefully(runner, logs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_started_while_the_object_store_is_down_waits_for_it() {
    let s3 = MotoS3::start("sluice").await;
    let run = S3ReferenceRun::prepare(&s3, "late-store", 20_000, 43, "0s");
    s3.cut_off();
    let (mut runner, logs) = spawn_runner(&run.manifest, &s3.env());
    let address = runner_address(&logs);
    let error = wait_until_interrupted(&address, &mut runner).await;
    assert!(
        error.contains(s3.endpoint().trim_start_matches("http://")),
        "the error names the object store: {error}"
    );
    s3.restore().unwrap();
    wait_success(runner, logs);
    run.assert_exact_rows(&s3).await;
}

fn broker_up(broker: &mut KafkaBroker, up: bool) {
    if up {
        broker.restore().unwrap();
    } else {
        broker.cut_off();
    }
}

fn s3_up(s3: &MotoS3, up: bool) {
    if up {
        s3.restore().unwrap();
    } else {
        s3.cut_off();
    }
}

/// One outage of a service (`set_up(false)` cuts it off, `set_up(true)`
/// restores it): waits until the runner says it is interrupted, ends the
/// outage and waits until the runner is ready again. Returns the error the
/// runner reported.
async fn outage(runner: &mut Child, address: &str, mut set_up: impl FnMut(bool)) -> String {
    set_up(false);
    let error = wait_until_interrupted(address, runner).await;
    set_up(true);
    wait_until_readyz(&format!("{address}/readyz"), runner, true).await;
    error
}

/// Forgets the log lines so far, then waits for a new one with `message`.
fn wait_for_new_log(logs: &mpsc::Receiver<String>, message: &str) {
    logs.try_iter().for_each(drop);
    assert!(wait_for_log(logs, message, 0), "no {message:?} log");
}

/// Polls the runner's `/status` until it reports that it is not ready and
/// why; returns the reason. A broker cut off may go unnoticed for a minute
/// or two while the consumer's prefetched records last, an object store
/// while its client retries (up to about a minute on a busy machine).
async fn wait_until_interrupted(address: &str, runner: &mut Child) -> String {
    let url = format!("{address}/status");
    let patience = Duration::from_secs(300);
    poll_runner_for(
        patience,
        runner,
        &url,
        "an interruption",
        async |response| {
            let status = response.json::<serde_json::Value>().await.ok()?;
            if status["ready"] == false {
                status["error"].as_str().map(str::to_lowercase)
            } else {
                None
            }
        },
    )
    .await
}
