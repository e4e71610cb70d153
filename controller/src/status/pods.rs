//! Runner pods that cannot run, as the kubelet and the scheduler describe
//! them: a crash loop, an image that cannot be pulled, an out-of-memory kill,
//! a pod no node can take. A runner in one of these states never answers its
//! `/status`, so without this the pipeline would look "starting" forever.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use kube::ResourceExt;

/// How long a pod may stay unschedulable (a cluster autoscaler adding a node)
/// before the pipeline is Degraded rather than only not Ready.
pub const UNSCHEDULABLE_GRACE: Duration = Duration::from_secs(300);

/// Condition reasons of runner pod problems.
pub const CRASH_LOOP: &str = "CrashLoopBackOff";
pub const IMAGE_PULL: &str = "ImagePullBackOff";
pub const OOM_KILLED: &str = "OOMKilled";
pub const UNSCHEDULABLE: &str = "Unschedulable";
pub const CANNOT_START: &str = "RunnerCannotStart";

/// Why one runner pod cannot run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodProblem {
    /// Condition reason: one of the constants above.
    pub reason: &'static str,
    /// `pod <name>: ` and what the kubelet or scheduler said, in its own words.
    pub message: String,
    /// False while it may still resolve itself (an unschedulable pod within
    /// [`UNSCHEDULABLE_GRACE`]): not Ready, but not Degraded yet.
    pub persistent: bool,
}

/// The problem of `pod`, if it has one, at `now`.
pub fn problem(pod: &Pod, now: Timestamp) -> Option<PodProblem> {
    let name = pod.name_any();
    let status = pod.status.as_ref()?;
    let limit = |container: &str| {
        pod.spec
            .as_ref()?
            .containers
            .iter()
            .find(|c| c.name == container)?
            .resources
            .as_ref()?
            .limits
            .as_ref()?
            .get("memory")
            .map(|q| q.0.clone())
    };
    for container in status.container_statuses.iter().flatten() {
        if let Some(found) = container_problem(&name, container, limit(&container.name)) {
            return Some(found);
        }
    }
    let unscheduled = status.conditions.iter().flatten().find(|c| {
        c.type_ == "PodScheduled"
            && c.status == "False"
            && c.reason.as_deref() == Some(UNSCHEDULABLE)
    })?;
    let waited = unscheduled
        .last_transition_time
        .as_ref()
        .map(|since| now.duration_since(since.0).as_secs_f64());
    Some(PodProblem {
        reason: UNSCHEDULABLE,
        message: format!(
            "pod {name}: Unschedulable: {}",
            unscheduled
                .message
                .as_deref()
                .unwrap_or("no node can run it")
        ),
        persistent: waited.is_none_or(|secs| secs >= UNSCHEDULABLE_GRACE.as_secs_f64()),
    })
}

fn container_problem(
    pod: &str,
    container: &ContainerStatus,
    memory_limit: Option<String>,
) -> Option<PodProblem> {
    let state = container.state.as_ref();
    let waiting = state.and_then(|s| s.waiting.as_ref());
    let waiting_reason = waiting.and_then(|w| w.reason.as_deref()).unwrap_or("");
    let kubelet_says = |reason: &str| match waiting.and_then(|w| w.message.as_deref()) {
        Some(message) if !message.is_empty() => format!("{reason}: {message}"),
        _ => reason.to_owned(),
    };
    // The last exit: the current one if the container is terminated now,
    // else the previous run's.
    let terminated = state
        .and_then(|s| s.terminated.as_ref())
        .or_else(|| container.last_state.as_ref()?.terminated.as_ref());
    let last_exit = terminated.map(|t| {
        let mut text = format!(
            "last exit: {} (exit code {})",
            t.reason.as_deref().unwrap_or("Error"),
            t.exit_code
        );
        if let Some(message) = t.message.as_deref().filter(|m| !m.trim().is_empty()) {
            text.push_str(": ");
            text.push_str(message.trim());
        }
        text
    });
    let oom_killed = terminated.is_some_and(|t| t.reason.as_deref() == Some(OOM_KILLED));
    let restarts = container.restart_count;

    if oom_killed && !container.ready {
        let limit = memory_limit.map_or_else(
            || "no memory limit is set".to_owned(),
            |limit| format!("memory limit {limit}"),
        );
        let mut message = format!(
            "pod {pod}: container {} was OOMKilled, out of memory ({limit}; {restarts} restarts); raise \
             spec.runner.resources.limits.memory",
            container.name
        );
        if waiting.is_some() {
            message.push_str("; ");
            message.push_str(&kubelet_says(waiting_reason));
        }
        return Some(PodProblem {
            reason: OOM_KILLED,
            message,
            persistent: true,
        });
    }
    let (reason, with_exit) = match waiting_reason {
        "CrashLoopBackOff" => (CRASH_LOOP, true),
        "ImagePullBackOff" | "ErrImagePull" | "InvalidImageName" | "ErrImageNeverPull" => {
            (IMAGE_PULL, false)
        }
        "CreateContainerConfigError" | "CreateContainerError" | "RunContainerError" => {
            (CANNOT_START, true)
        }
        _ => return None,
    };
    let mut message = format!("pod {pod}: {}", kubelet_says(waiting_reason));
    if with_exit && let Some(exit) = last_exit {
        message.push_str("; ");
        message.push_str(&exit);
    }
    Some(PodProblem {
        reason,
        message,
        persistent: true,
    })
}
