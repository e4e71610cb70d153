//! The reference query (5-minute windows sliding by 1 minute, grouped by
//! event_type, 2-minute watermark, count) run by the `sluice-runner` binary
//! over a data set with out-of-order, late and malformed events, compared row
//! by row with a brute-force computation that follows Spark Structured
//! Streaming's rules (watermark from the previous micro-batch, lateness per
//! window, one micro-batch per planned epoch).

use crate::common::*;
use sluice_runner::sink::delta::read_table;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reference_query_matches_a_batch_computation_row_by_row() {
    let LocalReferenceRun {
        dir: _dir,
        lines,
        table,
        checkpoints,
        manifest,
        ..
    } = LocalReferenceRun::prepare(60_000, 7, "0s");

    let (child, logs) = spawn_runner(&manifest, &[]);
    wait_success(child, logs);

    let Expected {
        windows: expected,
        late,
        partly_late,
        ..
    } = expected_windows(&lines);
    assert!(late > 300, "the data set has late events ({late})");
    assert!(
        partly_late > 100,
        "the data set has events still counted in some of their windows ({partly_late})"
    );
    assert!(expected.len() > 30, "the data set closes windows");
    let actual = table_windows(&read_table(table.to_str().unwrap()).await.unwrap());
    assert_eq!(actual.len(), expected.len(), "number of window rows");
    for ((key, want), (got_key, got)) in expected.iter().zip(&actual) {
        assert_eq!((key, want), (got_key, got), "window row");
    }

    // Every late and malformed event is in the dead-letter output, with its reason.
    let malformed = lines
        .iter()
        .filter(|l| matches!(l, Line::Malformed(_)))
        .count();
    let mut reasons = std::collections::BTreeMap::<String, usize>::new();
    for file in std::fs::read_dir(checkpoints.join("dead-letter/replica-0")).unwrap() {
        let text = std::fs::read_to_string(file.unwrap().path()).unwrap();
        for line in text.lines() {
            let json: serde_json::Value = serde_json::from_str(line).unwrap();
            *reasons
                .entry(json["reason"].as_str().unwrap().to_owned())
                .or_default() += 1;
            assert!(json["payload"].is_string() && json["offset"].is_i64());
        }
    }
    assert_eq!(reasons.get("late"), Some(&late));
    assert_eq!(reasons.get("malformed"), Some(&malformed));
}

/// Off a terminal (a pod's log), a run ends with its counts only: reading the
/// Delta table back for the summary would hold a whole table in memory.
#[test]
fn the_end_of_run_summary_reads_no_table_off_a_terminal() {
    let run = LocalReferenceRun::prepare(20_000, 5, "0s");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_sluice-runner"))
        .arg("run")
        .arg(&run.manifest)
        .args(["--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("events processed"), "{stdout}");
    assert!(!stdout.contains("Delta table"), "{stdout}");
}
