//! The crash test of `recovery.rs` with the checkpoints, the dead-letter
//! output and the Delta table on S3, served by a real S3 endpoint
//! (`moto_server`, started by the test harness).

use std::path::PathBuf;

use crate::common::*;
use sluice_runner::sink::delta::read_table_with_options;
use sluice_tests::moto::MotoS3;

/// A generated data set written as JSON lines under a scratch folder, and a
/// reference-query manifest over it whose Delta table and checkpoints are
/// on S3 under `name`.
pub(crate) struct S3ReferenceRun {
    _dir: tempfile::TempDir,
    lines: Vec<Line>,
    table: String,
    pub manifest: PathBuf,
}

impl S3ReferenceRun {
    pub(crate) fn prepare(
        s3: &MotoS3,
        name: &str,
        events: usize,
        seed: u64,
        trigger: &str,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let lines = data_set(events, seed);
        let data = dir.path().join("events.jsonl");
        write_jsonl(&lines, &data);
        let table = s3.uri(&format!("lake/{name}"));
        let manifest = dir.path().join("pipeline.yaml");
        let checkpoints = s3.uri(&format!("checkpoints/{name}"));
        std::fs::write(
            &manifest,
            reference_manifest(&data, &table, &checkpoints, trigger),
        )
        .unwrap();
        Self {
            _dir: dir,
            lines,
            table,
            manifest,
        }
    }

    /// Asserts that the Delta table holds exactly the batch computation's rows.
    pub(crate) async fn assert_exact_rows(&self, s3: &MotoS3) {
        let Expected {
            windows: expected, ..
        } = expected_windows(&self.lines);
        let batches = read_table_with_options(&self.table, s3.storage_options())
            .await
            .unwrap();
        assert_eq!(table_windows(&batches), expected);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_runs_on_s3_resume_to_exactly_the_expected_rows() {
    let s3 = MotoS3::start("sluice").await;
    let run = S3ReferenceRun::prepare(&s3, "reference", 60_000, 23, "100ms");
    let env = s3.env();
    for (message, epoch) in [
        ("epoch planned", 1),
        ("epoch committed", 4),
        ("checkpoint written", 7),
    ] {
        let (mut child, logs) = spawn_runner(&run.manifest, &env);
        assert!(
            wait_for_log(&logs, message, epoch),
            "no {message:?} log for epoch {epoch}"
        );
        child.kill().unwrap();
        child.wait().unwrap();
    }
    let (child, logs) = spawn_runner(&run.manifest, &env);
    wait_success(child, logs);
    run.assert_exact_rows(&s3).await;
}
