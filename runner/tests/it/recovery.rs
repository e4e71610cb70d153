//! Exactly-once after crashes: the runner is killed with SIGKILL at several
//! points of a run (right after an epoch is planned, right after its sinks
//! committed, right after a checkpoint), restarted each time, and the Delta
//! table ends up with exactly the rows of the batch computation: nothing
//! lost, nothing twice.

use crate::common::*;
use sluice_runner::sink::delta::read_table;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_runs_resume_to_exactly_the_expected_rows() {
    let LocalReferenceRun {
        dir: _dir,
        lines,
        table,
        manifest,
        ..
    } = LocalReferenceRun::prepare(120_000, 11, "100ms");

    for (message, epoch) in [
        ("epoch planned", 2),
        ("epoch committed", 6),
        ("checkpoint written", 10),
        ("epoch committed", 14),
    ] {
        kill_runner_at(&manifest, message, epoch);
    }
    let (child, logs) = spawn_runner(&manifest, &[]);
    wait_success(child, logs);

    let Expected {
        windows: expected, ..
    } = expected_windows(&lines);
    let actual = table_windows(&read_table(table.to_str().unwrap()).await.unwrap());
    assert_eq!(actual, expected);
}
