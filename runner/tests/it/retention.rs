//! Checkpoint retention: with `retainEpochs: 3` and a checkpoint after every
//! epoch, a run of 20 and more epochs leaves at most 3 completed epochs plus
//! the two in flight (one committing while the next is processed) in the
//! checkpoint store whenever the runner is killed
//! with SIGKILL, and exactly the 3 newest after a clean finish; restarted
//! after each kill, the runner still resumes exactly: the Delta table ends
//! up with the batch computation's rows, none twice.

use std::{collections::BTreeSet, path::Path};

use crate::common::*;
use sluice_runner::sink::delta::read_table;

const RETAIN: usize = 3;

/// Epochs with a checkpoint, and epochs with a plan, in replica 0's lineage.
fn stored_epochs(checkpoints: &Path) -> (BTreeSet<u64>, BTreeSet<u64>) {
    let epochs = |kind: &str| -> BTreeSet<u64> {
        std::fs::read_dir(checkpoints.join("replica-0").join(kind))
            .unwrap()
            .filter_map(|entry| {
                let name = entry.unwrap().file_name().into_string().unwrap();
                name.strip_suffix(".json")?.parse().ok()
            })
            .collect()
    };
    (epochs("checkpoints"), epochs("plans"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_epochs_are_retained_and_a_restart_after_cleanup_resumes_exactly() {
    let run = LocalReferenceRun::prepare(150_000, 17, "20ms");
    let (manifest, checkpoints) = (&run.manifest, &run.checkpoints);
    edit_spec(manifest, |spec| {
        spec["checkpoint"]["interval"] = "0s".into();
        spec["checkpoint"]["retainEpochs"] = RETAIN.into();
    });

    for (message, epoch) in [("checkpoint written", 20), ("epoch planned", 25)] {
        kill_runner_at(manifest, message, epoch);
        let (checkpointed, planned) = stored_epochs(checkpoints);
        let newest = *checkpointed.last().expect("a checkpoint");
        // The epoch before the one planned may still be committing.
        assert!(newest + 2 >= epoch, "checkpoints {checkpointed:?}");
        let stored: BTreeSet<u64> = checkpointed.union(&planned).copied().collect();
        assert!(
            stored.len() <= RETAIN + 2,
            "after a kill at {message:?} {epoch}: checkpoints {checkpointed:?}, plans {planned:?}"
        );
        assert!(
            checkpointed.len() <= RETAIN + 1,
            "checkpoints {checkpointed:?}"
        );
    }
    let (child, logs) = spawn_runner(manifest, &[]);
    wait_success(child, logs);

    let (checkpointed, planned) = stored_epochs(checkpoints);
    assert_eq!(checkpointed.len(), RETAIN, "after a clean finish");
    let newest = *checkpointed.last().unwrap();
    assert!(newest >= 29, "all 30 epochs ran: {checkpointed:?}");
    assert!(
        planned
            .iter()
            .all(|e| e > checkpointed.first().unwrap() && *e <= newest),
        "plans {planned:?} beyond checkpoints {checkpointed:?}"
    );

    let Expected {
        windows: expected, ..
    } = expected_windows(&run.lines);
    let actual = table_windows(&read_table(run.table.to_str().unwrap()).await.unwrap());
    assert_eq!(actual, expected);
}
