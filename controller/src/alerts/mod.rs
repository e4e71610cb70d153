//! Alert thresholds (`spec.alerts`): which are exceeded now, and which
//! started or stopped being exceeded since the last status.

pub mod webhook;

use jiff::Timestamp;
use sluice_crds::{ActiveAlert, AlertType, AlertsSpec, StreamPipelineStatus};

/// Alerts that started and stopped firing between two statuses.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Transitions {
    pub fired: Vec<ActiveAlert>,
    pub cleared: Vec<ActiveAlert>,
}

/// The thresholds `status` exceeds; alerts already firing in `previous`
/// keep their `since`.
pub fn evaluate(
    thresholds: Option<&AlertsSpec>,
    status: &StreamPipelineStatus,
    previous: &[ActiveAlert],
    now: Timestamp,
) -> Vec<ActiveAlert> {
    let Some(thresholds) = thresholds else {
        return Vec::new();
    };
    // Runners checkpoint after epochs that read data: an idle pipeline that
    // has caught up (no lag, nothing flowing) is healthy however old its last
    // checkpoint. The chart's SluiceCheckpointStale alert has the same rule.
    let pending = status.lag.as_ref().is_some_and(|lag| lag.records > 0)
        || status.events_per_second.is_some_and(|rate| rate > 0.0);
    let checkpoint_age = status
        .last_checkpoint
        .as_ref()
        .filter(|_| pending)
        .and_then(|c| c.time.parse::<Timestamp>().ok())
        .map(|time| now.duration_since(time).as_secs_f64());
    let measured = [
        (
            AlertType::Lag,
            status.lag.as_ref().map(|lag| lag.records as f64),
            thresholds.max_lag.map(|max| max as f64),
        ),
        (
            AlertType::CheckpointAge,
            checkpoint_age,
            thresholds
                .max_checkpoint_age
                .map(|max| max.as_std().as_secs_f64()),
        ),
        (
            AlertType::DeadLetterRate,
            status.dead_letter_per_second,
            thresholds.max_dead_letter_rate,
        ),
    ];
    measured
        .into_iter()
        .filter_map(|(alert_type, value, threshold)| {
            let (value, threshold) = (value?, threshold?);
            (value > threshold).then(|| ActiveAlert {
                alert_type,
                value,
                threshold,
                since: previous
                    .iter()
                    .find(|a| a.alert_type == alert_type)
                    .map_or_else(|| now.to_string(), |a| a.since.clone()),
            })
        })
        .collect()
}

/// What changed from `before` to `after`.
pub fn transitions(before: &[ActiveAlert], after: &[ActiveAlert]) -> Transitions {
    let missing_from = |list: &[ActiveAlert], alert: &ActiveAlert| {
        !list.iter().any(|a| a.alert_type == alert.alert_type)
    };
    Transitions {
        fired: after
            .iter()
            .filter(|a| missing_from(before, a))
            .cloned()
            .collect(),
        cleared: before
            .iter()
            .filter(|a| missing_from(after, a))
            .cloned()
            .collect(),
    }
}

/// One line describing `alert`, for conditions and Events.
pub fn describe(alert: &ActiveAlert) -> String {
    match alert.alert_type {
        AlertType::Lag => format!(
            "lag {} records exceeds maxLag {}",
            alert.value, alert.threshold
        ),
        AlertType::CheckpointAge => format!(
            "last checkpoint is {:.0}s old, over maxCheckpointAge {:.0}s",
            alert.value, alert.threshold
        ),
        AlertType::DeadLetterRate => format!(
            "{:.2} dead-lettered events/s exceeds maxDeadLetterRate {}",
            alert.value, alert.threshold
        ),
    }
}
