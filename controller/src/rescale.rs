//! Changing `spec.parallelism` without two runners ever owning one source
//! partition: replica `i` of `N` owns the partitions `p % N == i`, so the
//! runners of the old `N` must all have stopped (each finishes its epoch and
//! checkpoints on SIGTERM) before any runner of the new `N` starts. The
//! reconcile scales the StatefulSet to zero with the old `SLUICE_REPLICAS`,
//! waits until no runner pod of the pipeline is left, and only then records
//! the new parallelism in `status.runningParallelism` and starts the new set.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::{apps::v1::StatefulSet, core::v1::Pod};
use kube::{Api, ResourceExt, api::ListParams};
use sluice_crds::StreamPipeline;

use crate::{
    error::{self, Error},
    render::{REPLICAS_ENV, runner_pod_selector},
};

/// Condition reason, Event reason and phase of a drain in progress.
pub const RESCALING: &str = "Rescaling";
/// Event reason when the new set of runners is started.
pub const RESCALED: &str = "Rescaled";
/// How soon a drain is looked at again, besides the watches of the runner
/// pods and the StatefulSet that wake the reconcile when they change.
pub const DRAIN_POLL: Duration = Duration::from_secs(5);
/// A pod still there this long after its deletion deadline is stuck (its
/// node does not answer): the message says what a person can do.
const STUCK_AFTER: Duration = Duration::from_secs(60);
/// Pods named in a condition message, at most.
const NAMED_PODS: usize = 5;

/// Every runner pod of `pipeline`, by label (whatever its ordinal), straight
/// from the API server rather than a cache: what the drain waits on.
pub async fn runner_pods(
    pipeline: &StreamPipeline,
    client: &kube::Client,
    namespace: &str,
) -> Result<Vec<Pod>, Error> {
    let api = Api::<Pod>::namespaced(client.clone(), namespace);
    let params = ListParams::default().labels(&runner_pod_selector(pipeline));
    let pods = api
        .list(&params)
        .await
        .map_err(error::api("list", "Pod", &pipeline.name_any()))?;
    let mut pods = pods.items;
    // By ordinal, for messages: `-2` before `-10`.
    pods.sort_by_cached_key(|pod| {
        let name = pod.name_any();
        (name.len(), name)
    });
    Ok(pods)
}

/// The parallelism runner pods were started with (their `SLUICE_REPLICAS`),
/// preferring one that differs from `desired`: how a pipeline whose status
/// has no `runningParallelism` yet (written by an older controller) learns it.
pub fn started_with(pods: &[Pod], desired: i32) -> Option<i32> {
    let values = pods.iter().filter_map(|pod| {
        pod.spec
            .as_ref()?
            .containers
            .iter()
            .find(|c| c.name == "runner")?
            .env
            .as_ref()?
            .iter()
            .find(|e| e.name == REPLICAS_ENV)?
            .value
            .as_deref()?
            .parse::<i32>()
            .ok()
    });
    let mut found = None;
    for value in values {
        if value != desired {
            return Some(value);
        }
        found = Some(value);
    }
    found
}

/// Whether the StatefulSet controller has seen the scale to zero and counts
/// no pod of its own: without this, a pod it was creating from the older
/// replica count could appear after the pods were listed.
pub fn scaled_to_zero(stateful_set: &StatefulSet) -> bool {
    let Some(status) = &stateful_set.status else {
        return false;
    };
    let observed = match (status.observed_generation, stateful_set.metadata.generation) {
        (Some(observed), Some(generation)) => observed >= generation,
        _ => false,
    };
    observed && status.replicas == 0
}

fn runners(count: usize) -> String {
    if count == 1 {
        "1 runner".into()
    } else {
        format!("{count} runners")
    }
}

/// The Ready and Progressing message of a drain from `from` to `to` runners
/// while `pods` are left (none left: the StatefulSet has not confirmed yet).
pub fn waiting_message(from: i32, to: i32, pods: &[Pod], now: Timestamp) -> String {
    let prefix = format!("rescaling from {from} to {to} runners");
    if pods.is_empty() {
        return format!(
            "{prefix}: the runners have stopped; waiting for the StatefulSet controller to confirm \
             it runs none before starting {}",
            runners(usize::try_from(to).unwrap_or_default())
        );
    }
    let count = pods.len();
    let mut names: Vec<String> = pods.iter().take(NAMED_PODS).map(|p| p.name_any()).collect();
    if count > NAMED_PODS {
        names.push(format!("and {} more", count - NAMED_PODS));
    }
    let their = if count == 1 { "its" } else { "their" };
    let mut message = format!(
        "{prefix}: waiting for {} to stop after {their} last checkpoint (pods {})",
        runners(count),
        names.join(", ")
    );
    let stuck: Vec<String> = pods
        .iter()
        .filter(|pod| {
            pod.metadata
                .deletion_timestamp
                .as_ref()
                .is_some_and(|deadline| {
                    now.duration_since(deadline.0).as_secs_f64() > STUCK_AFTER.as_secs_f64()
                })
        })
        .map(|p| p.name_any())
        .collect();
    if !stuck.is_empty() {
        message.push_str(&format!(
            "; {} still terminating well past the grace period: if its node is down, the pod goes \
             only when the node is removed or the pod is force-deleted (kubectl delete pod --force), \
             which is safe only once that node is known to be off",
            stuck.join(", ")
        ));
    }
    message
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;

    fn pod(name: &str, replicas: Option<&str>, deleting_since: Option<Timestamp>) -> Pod {
        let mut pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "spec": {"containers": [{"name": "runner"}]},
        }))
        .unwrap();
        if let Some(value) = replicas {
            pod.spec.as_mut().unwrap().containers[0].env =
                Some(vec![k8s_openapi::api::core::v1::EnvVar {
                    name: REPLICAS_ENV.into(),
                    value: Some(value.into()),
                    ..Default::default()
                }]);
        }
        pod.metadata.deletion_timestamp = deleting_since.map(Time);
        pod
    }

    #[test]
    fn the_parallelism_pods_were_started_with_prefers_the_one_that_differs() {
        assert_eq!(started_with(&[], 3), None);
        assert_eq!(started_with(&[pod("p-0", None, None)], 3), None);
        assert_eq!(started_with(&[pod("p-0", Some("3"), None)], 3), Some(3));
        let mixed = [pod("p-0", Some("3"), None), pod("p-1", Some("2"), None)];
        assert_eq!(started_with(&mixed, 3), Some(2));
    }

    #[test]
    fn only_a_statefulset_that_observed_its_generation_with_no_pod_is_scaled_to_zero() {
        let set = |generation: i64, observed: Option<i64>, replicas: i32| -> StatefulSet {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "p", "generation": generation},
                "status": {"observedGeneration": observed, "replicas": replicas},
            }))
            .unwrap()
        };
        assert!(scaled_to_zero(&set(4, Some(4), 0)));
        assert!(!scaled_to_zero(&set(4, Some(3), 0)), "not observed yet");
        assert!(!scaled_to_zero(&set(4, None, 0)));
        assert!(!scaled_to_zero(&set(4, Some(4), 1)), "a pod left");
        assert!(!scaled_to_zero(&StatefulSet::default()));
    }

    #[test]
    fn the_message_counts_names_and_flags_a_pod_stuck_terminating() {
        let now = Timestamp::now();
        let one = waiting_message(2, 3, &[pod("p-1", None, Some(now))], now);
        assert!(
            one.ends_with("waiting for 1 runner to stop after its last checkpoint (pods p-1)"),
            "{one}"
        );
        let long_ago = now - jiff::SignedDuration::from_secs(600);
        let stuck = waiting_message(2, 1, &[pod("p-0", None, Some(long_ago))], now);
        assert!(stuck.contains("p-0 still terminating"), "{stuck}");
        assert!(stuck.contains("kubectl delete pod --force"), "{stuck}");
        let many: Vec<Pod> = (0..7).map(|i| pod(&format!("p-{i}"), None, None)).collect();
        let message = waiting_message(7, 8, &many, now);
        assert!(
            message.contains("(pods p-0, p-1, p-2, p-3, p-4, and 2 more)"),
            "{message}"
        );
        let none = waiting_message(2, 3, &[], now);
        assert!(none.ends_with("before starting 3 runners"), "{none}");
    }
}
