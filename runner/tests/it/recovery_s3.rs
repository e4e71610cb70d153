//! The crash test of `recovery.rs` with the checkpoints, the dead-letter
//! output and the Delta table on S3, served by a real S3 endpoint
//! (`moto_server`, started by the test harness).

use crate::common::*;
use sluice_runner::sink::delta::read_table_with_options;
use sluice_tests::moto::MotoS3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_runs_on_s3_resume_to_exactly_the_expected_rows() {
    let s3 = MotoS3::start("sluice").await;
    let dir = tempfile::tempdir().unwrap();
    let lines = data_set(60_000, 23);
    let data = dir.path().join("events.jsonl");
    write_jsonl(&lines, &data);
    let table = s3.uri("lake/reference");
    let manifest = dir.path().join("pipeline.yaml");
    std::fs::write(
        &manifest,
        reference_manifest(&data, &table, &s3.uri("checkpoints/reference"), "100ms"),
    )
    .unwrap();

    let env = s3.env();
    for (message, epoch) in [
        ("epoch planned", 1),
        ("epoch committed", 4),
        ("checkpoint written", 7),
    ] {
        let (mut child, logs) = spawn_runner(&manifest, &env);
        assert!(
            wait_for_log(&logs, message, epoch),
            "no {message:?} log for epoch {epoch}"
        );
        child.kill().unwrap();
        child.wait().unwrap();
    }
    let (child, logs) = spawn_runner(&manifest, &env);
    wait_success(child, logs);

    let Expected {
        windows: expected, ..
    } = expected_windows(&lines);
    let actual = table_windows(
        &read_table_with_options(&table, s3.storage_options())
            .await
            .unwrap(),
    );
    assert_eq!(actual, expected);
}
