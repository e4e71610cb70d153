//! Conditions per the Kubernetes API conventions: `lastTransitionTime` moves
//! only when the status changes.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

pub const READY: &str = "Ready";
pub const PROGRESSING: &str = "Progressing";
pub const DEGRADED: &str = "Degraded";

/// A desired condition, before timestamps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    pub type_: &'static str,
    /// `None` is `Unknown`: the controller cannot tell.
    pub status: Option<bool>,
    pub reason: &'static str,
    pub message: String,
}

impl Desired {
    pub fn new(
        type_: &'static str,
        status: bool,
        reason: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            type_,
            status: Some(status),
            reason,
            message: message.into(),
        }
    }

    /// A condition whose status is `Unknown`.
    pub fn unknown(type_: &'static str, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            type_,
            status: None,
            reason,
            message: message.into(),
        }
    }

    /// Whether the status is `True`.
    pub fn is_true(&self) -> bool {
        self.status == Some(true)
    }
}

/// Sets `desired` in `conditions`; true when its status or reason changed
/// (what deserves an Event).
pub fn set(
    conditions: &mut Vec<Condition>,
    desired: Desired,
    generation: Option<i64>,
    now: &Time,
) -> bool {
    let status = match desired.status {
        Some(true) => "True",
        Some(false) => "False",
        None => "Unknown",
    };
    let existing = conditions.iter_mut().find(|c| c.type_ == desired.type_);
    let changed = existing
        .as_ref()
        .is_none_or(|c| c.status != status || c.reason != desired.reason);
    let last_transition_time = match &existing {
        Some(c) if c.status == status => c.last_transition_time.clone(),
        _ => now.clone(),
    };
    let condition = Condition {
        type_: desired.type_.into(),
        status: status.into(),
        reason: desired.reason.into(),
        message: desired.message,
        observed_generation: generation,
        last_transition_time,
    };
    match existing {
        Some(slot) => *slot = condition,
        None => conditions.push(condition),
    }
    changed
}

/// The condition of `type_`, if set.
pub fn get<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}
