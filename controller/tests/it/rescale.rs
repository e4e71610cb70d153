//! Changing `spec.parallelism`: the controller stops every runner of the old
//! set (StatefulSet at zero, old `SLUICE_REPLICAS` kept) and starts the new
//! set only when no runner pod of the pipeline is left and the StatefulSet
//! controller confirms it runs none, so two runners never own one partition.
//! The in-memory API has no StatefulSet controller: the tests delete the
//! pods and write the StatefulSet's status as it would.

use std::sync::Arc;

use crate::common::{self, *};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::{
    Api,
    api::{Patch, PatchParams},
};
use sluice_controller::{Context, render::CONFIG_KEY, rescale::DRAIN_POLL};
use sluice_crds::{Phase, StreamPipeline};

const NAME: &str = "clickstream";

async fn setup() -> Arc<Context> {
    let runners = RunnerStatuses::default();
    let template = runners.serve().await;
    let client = fake_api(vec![pipeline(NAME)], pipeline_secrets()).await;
    context(client, template)
}

/// The pipeline runs its 2 runners (pods `-0` and `-1` exist).
async fn running_with_two_runners() -> Arc<Context> {
    let ctx = setup().await;
    reconcile_settled(&ctx, NAME).await;
    put_running_runner_pods(&ctx.client, NAME, 2).await;
    reconcile_stored(&ctx, NAME).await.unwrap();
    ctx
}

async fn edit(ctx: &Context, change: impl FnOnce(&mut StreamPipeline)) {
    edit_stored(ctx, NAME, change).await;
}

/// Points the Delta sink's credentials at Secret `name`.
fn lake_secret(pipeline: &mut StreamPipeline, name: &str) {
    let sink = pipeline.spec.sinks[0].delta.as_mut().unwrap();
    sink.credentials_secret_ref.as_mut().unwrap().name = name.into();
}

/// (replicas, SLUICE_REPLICAS) of the stored StatefulSet.
async fn runner_set(ctx: &Context) -> (i32, String) {
    common::runner_set(&ctx.client, NAME)
        .await
        .expect("StatefulSet")
}

/// `spec.parallelism` in the manifest the runners read.
async fn manifest_parallelism(ctx: &Context) -> i64 {
    let config_map = Api::<ConfigMap>::namespaced(ctx.client.clone(), NS)
        .get(&format!("{NAME}-pipeline"))
        .await
        .unwrap();
    let manifest: serde_yaml::Value =
        serde_yaml::from_str(&config_map.data.unwrap()[CONFIG_KEY]).unwrap();
    manifest["spec"]["parallelism"].as_i64().unwrap()
}

async fn running_parallelism(ctx: &Context) -> Option<i32> {
    stored(ctx, NAME)
        .await
        .status
        .and_then(|s| s.running_parallelism)
}

async fn phase(ctx: &Context) -> Option<Phase> {
    stored(ctx, NAME).await.status.and_then(|s| s.phase)
}

/// (status, reason, message) of a condition of the stored pipeline.
async fn cond(ctx: &Context, type_: &str) -> (String, String, String) {
    let pipeline = stored(ctx, NAME).await;
    let c = condition(&pipeline, type_);
    (c.status.clone(), c.reason.clone(), c.message.clone())
}

/// Notes of the Events with `reason`, and their types.
async fn events_of(ctx: &Context, reason: &str) -> Vec<(String, String)> {
    events(&ctx.client)
        .await
        .into_iter()
        .filter(|(_, r, _)| r == reason)
        .map(|(t, _, note)| (t, note))
        .collect()
}

async fn delete_pod(ctx: &Context, name: &str) {
    Api::<Pod>::namespaced(ctx.client.clone(), NS)
        .delete(name, &Default::default())
        .await
        .expect("delete pod");
}

#[tokio::test]
async fn raising_parallelism_stops_every_old_runner_before_the_new_set_starts() {
    let ctx = running_with_two_runners().await;
    // First creation started the set directly and recorded its parallelism.
    assert_eq!(runner_set(&ctx).await, (2, "2".into()));
    assert_eq!(running_parallelism(&ctx).await, Some(2));
    assert!(events_of(&ctx, "Rescaling").await.is_empty());

    edit(&ctx, |p| p.spec.parallelism = 3).await;
    let action = reconcile_stored(&ctx, NAME).await.unwrap();
    assert_eq!(
        action,
        kube::runtime::controller::Action::requeue(DRAIN_POLL),
        "a drain is looked at again soon, without blocking the reconcile"
    );
    assert_eq!(
        runner_set(&ctx).await,
        (0, "2".into()),
        "the old set is scaled to zero with its own SLUICE_REPLICAS: no pod of another parallelism"
    );
    assert_eq!(manifest_parallelism(&ctx).await, 2);
    assert_eq!(running_parallelism(&ctx).await, Some(2));
    assert_eq!(phase(&ctx).await, Some(Phase::Rescaling));
    let (status, reason, message) = cond(&ctx, "Progressing").await;
    assert_eq!((status.as_str(), reason.as_str()), ("True", "Rescaling"));
    assert!(
        message.starts_with(
            "rescaling from 2 to 3 runners: waiting for 2 runners to stop after their last checkpoint"
        ),
        "{message}"
    );
    assert!(
        message.contains("clickstream-0, clickstream-1"),
        "{message}"
    );
    let (status, reason, _) = cond(&ctx, "Ready").await;
    assert_eq!((status.as_str(), reason.as_str()), ("False", "Rescaling"));
    assert_eq!(cond(&ctx, "Degraded").await.0, "Unknown");
    let started = events_of(&ctx, "Rescaling").await;
    assert_eq!(started.len(), 1, "{started:?}");
    assert_eq!(started[0].0, "Normal");
    assert!(started[0].1.starts_with("rescaling from 2 to 3 runners"));
    assert_status_fixture(&ctx, NAME, "rescaling").await;

    // One runner has stopped, one is still finishing its epoch.
    delete_pod(&ctx, "clickstream-0").await;
    reconcile_stored(&ctx, NAME).await.unwrap();
    assert_eq!(runner_set(&ctx).await, (0, "2".into()));
    let message = cond(&ctx, "Progressing").await.2;
    assert!(
        message.contains(
            "waiting for 1 runner to stop after its last checkpoint (pods clickstream-1)"
        ),
        "{message}"
    );

    // No pod is left, but the StatefulSet controller has not confirmed yet.
    delete_pod(&ctx, "clickstream-1").await;
    reconcile_stored(&ctx, NAME).await.unwrap();
    assert_eq!(runner_set(&ctx).await, (0, "2".into()));
    assert_eq!(phase(&ctx).await, Some(Phase::Rescaling));
    let message = cond(&ctx, "Progressing").await.2;
    assert!(message.contains("StatefulSet controller"), "{message}");
    assert!(events_of(&ctx, "Rescaled").await.is_empty());

    statefulset_stops_its_pods(&ctx.client, NAME, 0).await;
    reconcile_stored(&ctx, NAME).await.unwrap();
    assert_eq!(runner_set(&ctx).await, (3, "3".into()));
    assert_eq!(manifest_parallelism(&ctx).await, 3);
    assert_eq!(running_parallelism(&ctx).await, Some(3));
    assert_eq!(phase(&ctx).await, Some(Phase::Pending));
    assert_eq!(cond(&ctx, "Progressing").await.0, "True");
    let (status, reason, message) = cond(&ctx, "Ready").await;
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "RunnersStarting")
    );
    assert!(message.contains("0/3"), "{message}");
    let done = events_of(&ctx, "Rescaled").await;
    assert_eq!(done.len(), 1, "{done:?}");
    assert_eq!(done[0].0, "Normal");
    assert!(
        done[0].1.starts_with("rescaled from 2 to 3 runners"),
        "{}",
        done[0].1
    );
    assert_eq!(events_of(&ctx, "Rescaling").await.len(), 1);

    // Settled: the next reconcile changes nothing and starts no new drain.
    reconcile_stored(&ctx, NAME).await.unwrap();
    assert_eq!(runner_set(&ctx).await, (3, "3".into()));
    assert_eq!(events_of(&ctx, "Rescaled").await.len(), 1);
}

#[tokio::test]
async fn lowering_parallelism_drains_the_same_way() {
    let ctx = running_with_two_runners().await;
    edit(&ctx, |p| p.spec.parallelism = 1).await;
    reconcile_stored(&ctx, NAME).await.unwrap();
    assert_eq!(runner_set(&ctx).await, (0, "2".into()));
    let message = cond(&ctx, "Ready").await.2;
    assert!(
        message.starts_with("rescaling from 2 to 1 runners"),
        "{message}"
    );

    statefulset_stops_its_pods(&ctx.client, NAME, 2).await;
    reconcile_stored(&ctx, NAME).await.unwrap();
    assert_eq!(runner_set(&ctx).await, (1, "1".into()));
    assert_eq!(running_parallelism(&ctx).await, Some(1));
}

#[tokio::test]
async fn suspend_during_a_rescale_keeps_the_old_set_stopped_and_resume_starts_the_new_one() {
    let ctx = running_with_two_runners().await;
    edit(&ctx, |p| p.spec.parallelism = 3).await;
    reconcile_stored(&ctx, NAME).await.unwrap();
    assert_eq!(phase(&ctx).await, Some(Phase::Rescaling));

    edit(&ctx, |p| p.spec.suspend = true).await;
    reconcile_stored(&ctx, NAME).await.unwrap();
    assert_eq!(phase(&ctx).await, Some(Phase::Suspended));
    assert_eq!(runner_set(&ctx).await, (0, "2".into()));
    assert_eq!(running_parallelism(&ctx).await, Some(2));
    let (status, reason, message) = cond(&ctx, "Ready").await;
    assert_eq!((status.as_str(), reason.as_str()), ("False", "Suspended"));
    assert!(
        message
            .contains("spec.parallelism changed from 2 to 3: 3 runners start when it is resumed"),
        "{message}"
    );

    // The old runners stop while suspended: nothing starts.
    statefulset_stops_its_pods(&ctx.client, NAME, 2).await;
    reconcile_stored(&ctx, NAME).await.unwrap();
    assert_eq!(phase(&ctx).await, Some(Phase::Suspended));
    assert_eq!(runner_set(&ctx).await, (0, "2".into()));
    assert!(events_of(&ctx, "Rescaled").await.is_empty());

    edit(&ctx, |p| p.spec.suspend = false).await;
    reconcile_stored(&ctx, NAME).await.unwrap();
    assert_eq!(runner_set(&ctx).await, (3, "3".into()));
    assert_eq!(running_parallelism(&ctx).await, Some(3));
    assert_eq!(events_of(&ctx, "Rescaled").await.len(), 1);
    assert_eq!(cond(&ctx, "Ready").await.1, "RunnersStarting");
}

#[tokio::test]
async fn a_parallelism_change_while_suspended_starts_the_new_set_on_resume() {
    let ctx = running_with_two_runners().await;
    edit(&ctx, |p| p.spec.suspend = true).await;
    reconcile_stored(&ctx, NAME).await.unwrap();
    assert_eq!(runner_set(&ctx).await, (0, "2".into()));
    statefulset_stops_its_pods(&ctx.client, NAME, 2).await;

    edit(&ctx, |p| p.spec.parallelism = 4).await;
    reconcile_stored(&ctx, NAME).await.unwrap();
    assert_eq!(phase(&ctx).await, Some(Phase::Suspended));
    assert_eq!(runner_set(&ctx).await, (0, "2".into()));

    edit(&ctx, |p| p.spec.suspend = false).await;
    reconcile_stored(&ctx, NAME).await.unwrap();
    assert_eq!(runner_set(&ctx).await, (4, "4".into()));
    assert_eq!(running_parallelism(&ctx).await, Some(4));
    assert!(
        events_of(&ctx, "Rescaling").await.is_empty(),
        "nothing to drain"
    );
    assert_eq!(events_of(&ctx, "Rescaled").await.len(), 1);
}

#[tokio::test]
async fn a_refused_spec_with_a_parallelism_change_does_not_drain() {
    let ctx = running_with_two_runners().await;
    edit(&ctx, |p| {
        p.spec.parallelism = 3;
        lake_secret(p, "no-such-secret");
    })
    .await;
    reconcile_stored(&ctx, NAME).await.unwrap();
    let (status, reason, _) = cond(&ctx, "Ready").await;
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "SecretNotFound")
    );
    assert_eq!(phase(&ctx).await, Some(Phase::Failed));
    assert_eq!(
        runner_set(&ctx).await,
        (2, "2".into()),
        "the runners keep the last accepted spec"
    );
    assert_eq!(running_parallelism(&ctx).await, Some(2));
    assert!(events_of(&ctx, "Rescaling").await.is_empty());
}

#[tokio::test]
async fn a_spec_refused_during_a_rescale_keeps_the_runners_stopped_and_says_so() {
    let ctx = running_with_two_runners().await;
    edit(&ctx, |p| p.spec.parallelism = 3).await;
    reconcile_stored(&ctx, NAME).await.unwrap();
    assert_eq!(runner_set(&ctx).await, (0, "2".into()));

    edit(&ctx, |p| lake_secret(p, "no-such-secret")).await;
    for _ in 0..2 {
        // Twice: the second refusal still knows about the paused rescale.
        reconcile_stored(&ctx, NAME).await.unwrap();
        let (_, reason, message) = cond(&ctx, "Ready").await;
        assert_eq!(reason, "SecretNotFound");
        assert!(message.contains("a rescale was under way"), "{message}");
        assert!(
            cond(&ctx, "Progressing")
                .await
                .2
                .starts_with("a rescale is paused")
        );
    }
    assert_eq!(runner_set(&ctx).await, (0, "2".into()));

    // Fixed: the drain goes on from where it was.
    edit(&ctx, |p| lake_secret(p, "lake-creds")).await;
    reconcile_stored(&ctx, NAME).await.unwrap();
    assert_eq!(phase(&ctx).await, Some(Phase::Rescaling));
    assert_eq!(runner_set(&ctx).await, (0, "2".into()));
}

#[tokio::test]
async fn a_pipeline_without_a_recorded_parallelism_learns_it_from_its_runner_pods() {
    let ctx = running_with_two_runners().await;
    // As an older controller left it: runners of 2, no runningParallelism.
    let patch = serde_json::json!({"status": {"runningParallelism": null}});
    pipelines(&ctx)
        .patch_status(NAME, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    assert_eq!(running_parallelism(&ctx).await, None);
    let pods = Api::<Pod>::namespaced(ctx.client.clone(), NS);
    for replica in 0..2 {
        let name = format!("{NAME}-{replica}");
        let mut pod = pods.get(&name).await.unwrap();
        pod.spec.as_mut().unwrap().containers[0].env =
            Some(vec![k8s_openapi::api::core::v1::EnvVar {
                name: "SLUICE_REPLICAS".into(),
                value: Some("2".into()),
                ..Default::default()
            }]);
        pod.metadata.managed_fields = None;
        pods.replace(&name, &Default::default(), &pod)
            .await
            .unwrap();
    }

    edit(&ctx, |p| p.spec.parallelism = 3).await;
    reconcile_stored(&ctx, NAME).await.unwrap();
    assert_eq!(runner_set(&ctx).await, (0, "2".into()));
    assert_eq!(running_parallelism(&ctx).await, Some(2));
    assert_eq!(phase(&ctx).await, Some(Phase::Rescaling));
}
