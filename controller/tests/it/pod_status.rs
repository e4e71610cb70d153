//! What the status says when runners cannot run (crash loop, image pull,
//! unschedulable, out of memory), when a spec is refused after an alert, and
//! when `suspend` comes with a refused change. Each case's status is kept in
//! tests/fixtures/pipeline-status, where the GitOps health checks are tested
//! against it.

use std::{sync::Arc, time::Duration};

use crate::common::*;
use k8s_openapi::api::{apps::v1::StatefulSet, core::v1::Secret};
use kube::{Api, api::DeleteParams};
use sluice_controller::Context;
use sluice_crds::{CheckpointStatus, PartitionLag, Phase, RunnerStatus, StreamPipeline};

const NAME: &str = "clickstream";

async fn setup() -> (Arc<Context>, RunnerStatuses) {
    let runners = RunnerStatuses::default();
    let template = runners.serve().await;
    let client = fake_api(vec![pipeline(NAME)], pipeline_secrets()).await;
    (context(client, template), runners)
}

fn runner(
    replica: u32,
    lag: i64,
    events_per_second: f64,
    checkpoint_age: Duration,
) -> RunnerStatus {
    let checkpoint_time =
        jiff::Timestamp::now() - jiff::SignedDuration::try_from(checkpoint_age).unwrap();
    RunnerStatus {
        replica,
        replicas: 2,
        ready: true,
        committed_epoch: Some(41),
        watermark: Some("2026-11-24T10:00:00Z".into()),
        events_per_second,
        partitions: vec![PartitionLag {
            topic: "events".into(),
            partition: replica as i32,
            records: lag,
            seconds: 0.0,
        }],
        last_checkpoint: Some(CheckpointStatus {
            epoch: 41,
            time: checkpoint_time.to_string(),
            uri: format!("s3://checkpoints/{NAME}/lineage-0/epoch-41"),
        }),
        ..RunnerStatus::default()
    }
}

/// Both replicas answer ready, caught up.
fn healthy(runners: &RunnerStatuses) {
    for replica in 0..2 {
        runners.set(
            &format!("{NAME}-{replica}"),
            runner(replica, 0, 100.0, Duration::from_secs(5)),
        );
    }
}

/// Replica 0 stops answering (its pod cannot run); replica 1 is healthy.
fn replica_0_down(runners: &RunnerStatuses) {
    runners.remove(&format!("{NAME}-0"));
    runners.set(
        &format!("{NAME}-1"),
        runner(1, 0, 100.0, Duration::from_secs(5)),
    );
}

async fn edit(ctx: &Context, change: impl FnOnce(&mut StreamPipeline)) {
    edit_stored(ctx, NAME, change).await;
}

/// (status, reason, message) of a condition of the stored pipeline.
async fn cond(ctx: &Context, type_: &str) -> (String, String, String) {
    let pipeline = stored(ctx, NAME).await;
    let c = condition(&pipeline, type_);
    (c.status.clone(), c.reason.clone(), c.message.clone())
}

async fn phase(ctx: &Context) -> Option<Phase> {
    stored(ctx, NAME).await.status.and_then(|s| s.phase)
}

async fn warning_events(ctx: &Context, reason: &str) -> Vec<String> {
    events(&ctx.client)
        .await
        .into_iter()
        .filter(|(t, r, _)| t == "Warning" && r == reason)
        .map(|(_, _, note)| note)
        .collect()
}

#[tokio::test]
async fn healthy_runners_are_ready_and_runners_without_pods_are_starting() {
    let (ctx, runners) = setup().await;
    reconcile_settled(&ctx, NAME).await;
    let (status, reason, _) = cond(&ctx, "Ready").await;
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "RunnersStarting")
    );
    assert_eq!(cond(&ctx, "Progressing").await.0, "True");
    assert_status_fixture(&ctx, NAME, "starting").await;

    healthy(&runners);
    for replica in 0..2 {
        put_runner_pod(
            &ctx.client,
            &format!("{NAME}-{replica}"),
            running_pod_status(),
        )
        .await;
    }
    reconcile_stored(&ctx, NAME).await.unwrap();
    assert_eq!(cond(&ctx, "Ready").await.0, "True");
    assert_eq!(phase(&ctx).await, Some(Phase::Running));
    assert_status_fixture(&ctx, NAME, "running").await;
}

#[tokio::test]
async fn a_crash_looping_runner_is_not_ready_and_degraded_with_the_pods_message() {
    let (ctx, runners) = setup().await;
    reconcile_settled(&ctx, NAME).await;
    replica_0_down(&runners);
    put_runner_pod(
        &ctx.client,
        "clickstream-0",
        waiting_pod_status(
            "CrashLoopBackOff",
            "back-off 2m40s restarting failed container=runner pod=clickstream-0_analytics(4b1c)",
            Some(serde_json::json!({
                "exitCode": 1, "reason": "Error",
                "message": "cannot reach Kafka at kafka.data:9092: connection refused",
            })),
        ),
    )
    .await;
    put_runner_pod(&ctx.client, "clickstream-1", running_pod_status()).await;
    reconcile_stored(&ctx, NAME).await.unwrap();

    let (status, reason, message) = cond(&ctx, "Ready").await;
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "CrashLoopBackOff")
    );
    assert!(
        message
            .starts_with("1/2 runners ready; pod clickstream-0: CrashLoopBackOff: back-off 2m40s"),
        "{message}"
    );
    assert!(
        message.contains("last exit: Error (exit code 1): cannot reach Kafka at kafka.data:9092: connection refused"),
        "{message}"
    );
    let (status, reason, message) = cond(&ctx, "Degraded").await;
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "CrashLoopBackOff")
    );
    assert!(
        message.contains("pod clickstream-0: CrashLoopBackOff"),
        "{message}"
    );
    let (status, reason, _) = cond(&ctx, "Progressing").await;
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "CrashLoopBackOff")
    );
    assert_eq!(phase(&ctx).await, Some(Phase::Degraded));
    assert_eq!(warning_events(&ctx, "CrashLoopBackOff").await.len(), 1);
    assert_status_fixture(&ctx, NAME, "crash-loop").await;

    // The pod recovers: everything clears.
    healthy(&runners);
    put_runner_pod(&ctx.client, "clickstream-0", running_pod_status()).await;
    reconcile_stored(&ctx, NAME).await.unwrap();
    assert_eq!(cond(&ctx, "Ready").await.0, "True");
    assert_eq!(cond(&ctx, "Degraded").await.0, "False");
    assert_eq!(phase(&ctx).await, Some(Phase::Running));
}

#[tokio::test]
async fn an_image_that_cannot_be_pulled_is_reported_with_the_kubelets_message() {
    let (ctx, runners) = setup().await;
    reconcile_settled(&ctx, NAME).await;
    runners.clear();
    for (replica, reason) in [(0, "ErrImagePull"), (1, "ImagePullBackOff")] {
        put_runner_pod(
            &ctx.client,
            &format!("{NAME}-{replica}"),
            waiting_pod_status(
                reason,
                "Back-off pulling image \"registry.example.com/sluice-runner:0.1.0\": pull access denied",
                None,
            ),
        )
        .await;
    }
    reconcile_stored(&ctx, NAME).await.unwrap();
    let (status, reason, message) = cond(&ctx, "Ready").await;
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "ImagePullBackOff")
    );
    assert!(
        message.contains("pod clickstream-0: ErrImagePull: Back-off pulling image \"registry.example.com/sluice-runner:0.1.0\"")
            && message.contains("pod clickstream-1: ImagePullBackOff"),
        "{message}"
    );
    assert_eq!(cond(&ctx, "Degraded").await.1, "ImagePullBackOff");
    assert_eq!(phase(&ctx).await, Some(Phase::Degraded));
    assert_status_fixture(&ctx, NAME, "image-pull").await;
}

#[tokio::test]
async fn an_unschedulable_runner_waits_then_degrades() {
    let (ctx, runners) = setup().await;
    reconcile_settled(&ctx, NAME).await;
    replica_0_down(&runners);
    put_runner_pod(&ctx.client, "clickstream-1", running_pod_status()).await;
    let unschedulable = |since: jiff::Timestamp| {
        serde_json::json!({
            "phase": "Pending",
            "conditions": [{
                "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                "message": "0/3 nodes are available: 3 Insufficient memory. preemption: 0/3 nodes are available: 3 No preemption victims found for incoming pod.",
                "lastTransitionTime": since.to_string(),
            }],
        })
    };
    // Just now: a cluster autoscaler may still add a node.
    put_runner_pod(
        &ctx.client,
        "clickstream-0",
        unschedulable(jiff::Timestamp::now()),
    )
    .await;
    reconcile_stored(&ctx, NAME).await.unwrap();
    let (status, reason, message) = cond(&ctx, "Ready").await;
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "Unschedulable")
    );
    assert!(
        message.contains(
            "pod clickstream-0: Unschedulable: 0/3 nodes are available: 3 Insufficient memory."
        ),
        "{message}"
    );
    let (status, reason, message) = cond(&ctx, "Progressing").await;
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "Unschedulable")
    );
    assert!(message.contains("Insufficient memory"), "{message}");
    assert_eq!(cond(&ctx, "Degraded").await.0, "False");
    assert_eq!(phase(&ctx).await, Some(Phase::Pending));
    assert_status_fixture(&ctx, NAME, "unschedulable-waiting").await;

    // Still unschedulable after the grace period: Degraded.
    let long_ago = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(600);
    put_runner_pod(&ctx.client, "clickstream-0", unschedulable(long_ago)).await;
    reconcile_stored(&ctx, NAME).await.unwrap();
    let (status, reason, _) = cond(&ctx, "Degraded").await;
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "Unschedulable")
    );
    assert_eq!(cond(&ctx, "Progressing").await.0, "False");
    assert_eq!(phase(&ctx).await, Some(Phase::Degraded));
    assert_status_fixture(&ctx, NAME, "unschedulable").await;
}

#[tokio::test]
async fn an_oom_killed_runner_names_its_memory_limit() {
    let (ctx, runners) = setup().await;
    reconcile_settled(&ctx, NAME).await;
    replica_0_down(&runners);
    put_runner_pod(&ctx.client, "clickstream-1", running_pod_status()).await;
    put_runner_pod(
        &ctx.client,
        "clickstream-0",
        waiting_pod_status(
            "CrashLoopBackOff",
            "back-off 1m20s restarting failed container=runner pod=clickstream-0_analytics(4b1c)",
            Some(serde_json::json!({"exitCode": 137, "reason": "OOMKilled"})),
        ),
    )
    .await;
    reconcile_stored(&ctx, NAME).await.unwrap();
    let (status, reason, message) = cond(&ctx, "Ready").await;
    assert_eq!((status.as_str(), reason.as_str()), ("False", "OOMKilled"));
    assert!(
        message.contains("pod clickstream-0: container runner was OOMKilled, out of memory (memory limit 512Mi; 5 restarts); raise spec.runner.resources.limits.memory"),
        "{message}"
    );
    assert!(
        message.contains("CrashLoopBackOff: back-off 1m20s"),
        "{message}"
    );
    let (status, reason, _) = cond(&ctx, "Degraded").await;
    assert_eq!((status.as_str(), reason.as_str()), ("True", "OOMKilled"));
    assert_status_fixture(&ctx, NAME, "oom-killed").await;
}

#[tokio::test]
async fn a_refused_spec_replaces_a_stale_alert_by_the_refusal() {
    let (ctx, runners) = setup().await;
    for replica in 0..2 {
        runners.set(
            &format!("{NAME}-{replica}"),
            runner(replica, 5000, 100.0, Duration::from_secs(5)),
        );
    }
    reconcile_settled(&ctx, NAME).await;
    let (status, reason, _) = cond(&ctx, "Degraded").await;
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "AlertThresholdExceeded")
    );
    assert_status_fixture(&ctx, NAME, "alert-firing").await;

    Api::<Secret>::namespaced(ctx.client.clone(), NS)
        .delete("kafka-user", &DeleteParams::default())
        .await
        .unwrap();
    reconcile_stored(&ctx, NAME).await.unwrap();
    let (status, reason, message) = cond(&ctx, "Ready").await;
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "SecretNotFound")
    );
    assert!(message.contains("kafka-user"), "{message}");
    let (status, reason, message) = cond(&ctx, "Degraded").await;
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("Unknown", "SecretNotFound"),
        "the alert is no longer known to hold: {message}"
    );
    assert!(
        message.contains("not evaluated while the spec is refused"),
        "{message}"
    );
    assert_eq!(phase(&ctx).await, Some(Phase::Failed));
    assert_status_fixture(&ctx, NAME, "refused-after-alert").await;
}

#[tokio::test]
async fn a_missing_secret_is_refused() {
    let runners = RunnerStatuses::default();
    let template = runners.serve().await;
    let secrets = pipeline_secrets()
        .into_iter()
        .filter(|s| s.metadata.name.as_deref() != Some("lake-creds"))
        .collect();
    let ctx = context(fake_api(vec![pipeline(NAME)], secrets).await, template);
    reconcile_settled(&ctx, NAME).await;
    let (status, reason, _) = cond(&ctx, "Ready").await;
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "SecretNotFound")
    );
    assert_eq!(phase(&ctx).await, Some(Phase::Failed));
    assert_status_fixture(&ctx, NAME, "missing-secret").await;
}

#[tokio::test]
async fn suspended_and_suspended_with_a_refused_change_say_what_runs() {
    let (ctx, runners) = setup().await;
    healthy(&runners);
    reconcile_settled(&ctx, NAME).await;
    let replicas = |ctx: Arc<Context>| async move {
        Api::<StatefulSet>::namespaced(ctx.client.clone(), NS)
            .get(NAME)
            .await
            .unwrap()
            .spec
            .unwrap()
            .replicas
    };
    assert_eq!(replicas(ctx.clone()).await, Some(2));

    edit(&ctx, |p| p.spec.suspend = true).await;
    reconcile_stored(&ctx, NAME).await.unwrap();
    assert_eq!(phase(&ctx).await, Some(Phase::Suspended));
    assert_status_fixture(&ctx, NAME, "suspended").await;

    // Resume, then suspend together with a change the checkpoints cannot take.
    edit(&ctx, |p| p.spec.suspend = false).await;
    reconcile_stored(&ctx, NAME).await.unwrap();
    assert_eq!(replicas(ctx.clone()).await, Some(2));
    edit(&ctx, |p| {
        p.spec.suspend = true;
        p.spec.window.as_mut().unwrap().group_by = vec!["country".into()];
    })
    .await;
    reconcile_stored(&ctx, NAME).await.unwrap();
    assert_eq!(
        replicas(ctx.clone()).await,
        Some(0),
        "suspend is honoured although the change is refused"
    );
    let (status, reason, message) = cond(&ctx, "Ready").await;
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "IncompatibleStateChange")
    );
    assert!(
        message.contains("spec.suspend is applied all the same: the runners are stopped"),
        "{message}"
    );
    assert_eq!(
        phase(&ctx).await,
        Some(Phase::Failed),
        "not Suspended: the change was refused"
    );
    assert_eq!(cond(&ctx, "Degraded").await.0, "False");
    let pipeline = stored(&ctx, NAME).await;
    let status = pipeline.status.unwrap();
    assert_eq!((status.replicas, status.ready_replicas), (0, 0));
    assert_status_fixture(&ctx, NAME, "suspended-refused").await;
}

#[tokio::test]
async fn an_idle_caught_up_pipeline_has_no_checkpoint_age_alert() {
    let (ctx, runners) = setup().await;
    edit(&ctx, |p| {
        p.spec.alerts.as_mut().unwrap().max_checkpoint_age = Some("5m".parse().unwrap());
    })
    .await;
    // Idle: no lag, nothing flowing, last checkpoint an hour ago.
    let idle = Duration::from_secs(3600);
    for replica in 0..2 {
        runners.set(&format!("{NAME}-{replica}"), runner(replica, 0, 0.0, idle));
    }
    reconcile_settled(&ctx, NAME).await;
    assert_eq!(cond(&ctx, "Degraded").await.0, "False");
    assert!(stored(&ctx, NAME).await.status.unwrap().alerts.is_empty());

    // Work waiting and no checkpoint for an hour: stale.
    runners.set(&format!("{NAME}-0"), runner(0, 10, 0.0, idle));
    reconcile_stored(&ctx, NAME).await.unwrap();
    let (status, reason, message) = cond(&ctx, "Degraded").await;
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "AlertThresholdExceeded")
    );
    assert!(message.contains("over maxCheckpointAge 300s"), "{message}");

    // Data flowing (no lag measured) and no checkpoint: stale too.
    runners.set(&format!("{NAME}-0"), runner(0, 0, 50.0, idle));
    reconcile_stored(&ctx, NAME).await.unwrap();
    assert_eq!(cond(&ctx, "Degraded").await.0, "True");

    // Caught up again: clears.
    runners.set(&format!("{NAME}-0"), runner(0, 0, 0.0, idle));
    reconcile_stored(&ctx, NAME).await.unwrap();
    assert_eq!(cond(&ctx, "Degraded").await.0, "False");
}
