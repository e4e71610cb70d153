//! Many runners' status documents into one pipeline-level summary.

use jiff::Timestamp;
use sluice_crds::{CheckpointStatus, LagStatus, PartitionLag, RunnerStatus};

/// Partitions listed in `status.lag.worstPartitions`.
const WORST_PARTITIONS: usize = 5;

/// What the runners report, summed up.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunnersSummary {
    /// Replicas that answered.
    pub reporting: i32,
    /// Replicas that answered and are ready.
    pub ready: i32,
    pub lag: Option<LagStatus>,
    /// The lowest watermark.
    pub watermark: Option<String>,
    pub events_per_second: Option<f64>,
    pub dead_letter_per_second: Option<f64>,
    pub duplicates_per_second: Option<f64>,
    /// The oldest of the replicas' newest checkpoints.
    pub last_checkpoint: Option<CheckpointStatus>,
    /// Replicas that did not answer, and why.
    pub unreachable: Vec<String>,
    /// Errors the runners themselves report.
    pub errors: Vec<String>,
}

/// Aggregates the answers of replicas `0..answers.len()`.
pub fn aggregate(answers: &[Result<RunnerStatus, String>]) -> RunnersSummary {
    let mut summary = RunnersSummary::default();
    let mut partitions: Vec<&PartitionLag> = Vec::new();
    let mut watermark: Option<(Timestamp, &str)> = None;
    let mut checkpoint: Option<(Timestamp, &CheckpointStatus)> = None;
    let (mut events, mut dead, mut duplicates) = (0.0, 0.0, 0.0);
    for (replica, answer) in answers.iter().enumerate() {
        let runner = match answer {
            Ok(runner) => runner,
            Err(why) => {
                summary
                    .unreachable
                    .push(format!("replica {replica}: {why}"));
                continue;
            }
        };
        summary.reporting += 1;
        if runner.ready {
            summary.ready += 1;
        }
        if let Some(error) = &runner.error {
            summary.errors.push(format!("replica {replica}: {error}"));
        }
        events += runner.events_per_second;
        dead += runner.dead_letter_per_second;
        duplicates += runner.duplicates_per_second;
        partitions.extend(&runner.partitions);
        if let Some((time, text)) = parsed(runner.watermark.as_deref())
            && watermark.is_none_or(|(lowest, _)| time < lowest)
        {
            watermark = Some((time, text));
        }
        if let Some(done) = &runner.last_checkpoint
            && let Some((time, _)) = parsed(Some(&done.time))
            && checkpoint.is_none_or(|(oldest, _)| time < oldest)
        {
            checkpoint = Some((time, done));
        }
    }
    if summary.reporting > 0 {
        summary.events_per_second = Some(events);
        summary.dead_letter_per_second = Some(dead);
        summary.duplicates_per_second = Some(duplicates);
    }
    if !partitions.is_empty() {
        partitions.sort_by(|a, b| {
            b.records
                .cmp(&a.records)
                .then(b.seconds.total_cmp(&a.seconds))
                .then_with(|| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)))
        });
        summary.lag = Some(LagStatus {
            records: partitions.iter().map(|p| p.records).sum(),
            seconds: partitions.iter().map(|p| p.seconds).fold(0.0, f64::max),
            worst_partitions: partitions
                .iter()
                .take(WORST_PARTITIONS)
                .map(|p| (*p).clone())
                .collect(),
        });
    }
    summary.watermark = watermark.map(|(_, text)| text.to_owned());
    summary.last_checkpoint = checkpoint.map(|(_, done)| done.clone());
    summary
}

fn parsed(text: Option<&str>) -> Option<(Timestamp, &str)> {
    let text = text?;
    text.parse().ok().map(|time| (time, text))
}
