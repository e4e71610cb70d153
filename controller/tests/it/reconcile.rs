//! Reconcile behaviour against an in-memory Kubernetes API, with runner
//! `/status` documents served by a local HTTP server.

use std::time::Duration;

use crate::common::*;
use k8s_openapi::api::{
    apps::v1::StatefulSet,
    core::v1::{ConfigMap, Service, ServiceAccount},
};
use kube::{Api, Resource};
use sluice_controller::render::{CONFIG_HASH_ANNOTATION, CONFIG_KEY};
use sluice_crds::{AlertType, CheckpointStatus, PartitionLag, Phase, RunnerStatus, StreamPipeline};

const NAME: &str = "clickstream";

async fn setup(
    secrets: Vec<k8s_openapi::api::core::v1::Secret>,
) -> (std::sync::Arc<sluice_controller::Context>, RunnerStatuses) {
    setup_with(pipeline(NAME), secrets).await
}

/// An API holding `pipeline` and `secrets`.
async fn setup_with(
    pipeline: StreamPipeline,
    secrets: Vec<k8s_openapi::api::core::v1::Secret>,
) -> (std::sync::Arc<sluice_controller::Context>, RunnerStatuses) {
    let runners = RunnerStatuses::default();
    let template = runners.serve().await;
    let client = fake_api(vec![pipeline], secrets).await;
    (context(client, template), runners)
}

/// The next reconcile no longer reports `reason`, and the runners exist.
async fn assert_runs_after_the_fix(ctx: &std::sync::Arc<sluice_controller::Context>, reason: &str) {
    reconcile_stored(ctx, NAME).await.unwrap();
    assert_ne!(condition(&stored(ctx, NAME).await, "Ready").reason, reason);
    stateful_set(ctx).await;
}

async fn stateful_set(ctx: &sluice_controller::Context) -> StatefulSet {
    Api::<StatefulSet>::namespaced(ctx.client.clone(), NS)
        .get(NAME)
        .await
        .expect("StatefulSet")
}

async fn edit(ctx: &sluice_controller::Context, change: impl FnOnce(&mut StreamPipeline)) {
    edit_stored(ctx, NAME, change).await;
}

fn runner(replica: u32, ready: bool, partitions: Vec<PartitionLag>) -> RunnerStatus {
    RunnerStatus {
        replica,
        replicas: 2,
        ready,
        committed_epoch: Some(41),
        watermark: Some(format!("2026-11-24T10:0{replica}:00Z")),
        events_per_second: 1000.0,
        dead_letter_per_second: 0.5,
        duplicates_per_second: 2.5,
        partitions,
        last_checkpoint: Some(CheckpointStatus {
            epoch: 41 + i64::from(replica),
            time: jiff::Timestamp::now().to_string(),
            uri: format!("s3://checkpoints/{NAME}/lineage-0/replica-{replica}/epoch-41"),
        }),
        ..RunnerStatus::default()
    }
}

fn lag(topic: &str, partition: i32, records: i64) -> PartitionLag {
    PartitionLag {
        topic: topic.into(),
        partition,
        records,
        seconds: records as f64 / 100.0,
    }
}

#[tokio::test]
async fn create_applies_owned_objects_with_owner_refs_and_locked_down_pods() {
    let (ctx, _runners) = setup(pipeline_secrets()).await;
    reconcile_settled(&ctx, NAME).await;
    let owner = stored(&ctx, NAME).await;
    assert_eq!(
        owner.metadata.finalizers,
        Some(vec![
            OTHER_FINALIZER.to_owned(),
            sluice_controller::FINALIZER.to_owned()
        ])
    );
    let owner_uid = owner.meta().uid.clone().unwrap();

    let client = ctx.client.clone();
    let config_map = Api::<ConfigMap>::namespaced(client.clone(), NS)
        .get("clickstream-pipeline")
        .await
        .unwrap();
    let service = Api::<Service>::namespaced(client.clone(), NS)
        .get(NAME)
        .await
        .unwrap();
    let account = Api::<ServiceAccount>::namespaced(client.clone(), NS)
        .get("clickstream-runner")
        .await
        .unwrap();
    let sts = stateful_set(&ctx).await;
    for meta in [
        &config_map.metadata,
        &service.metadata,
        &account.metadata,
        &sts.metadata,
    ] {
        let owners = meta.owner_references.as_ref().expect("owner references");
        assert_eq!(owners.len(), 1);
        assert_eq!(owners[0].uid, owner_uid);
        assert_eq!(owners[0].kind, "StreamPipeline");
        assert_eq!(owners[0].controller, Some(true));
    }

    // The rendered manifest is the pipeline with the lineage's checkpoint URI
    // and secret references only.
    let manifest = &config_map.data.as_ref().unwrap()[CONFIG_KEY];
    let rendered =
        sluice_crds::parse_pipeline(manifest).expect("the runner can parse the manifest");
    assert_eq!(
        rendered.spec.checkpoint.uri,
        "s3://checkpoints/clickstream/lineage-0"
    );
    assert_eq!(rendered.metadata.uid.as_deref(), Some(owner_uid.as_str()));
    for secret in pipeline_secrets() {
        for value in secret.data.unwrap().values() {
            let value = String::from_utf8(value.0.clone()).unwrap();
            assert!(
                !manifest.contains(&value),
                "secret value {value:?} copied into the ConfigMap"
            );
        }
    }

    let spec = service.spec.unwrap();
    assert_eq!(spec.cluster_ip.as_deref(), Some("None"), "headless");
    assert_eq!(spec.ports.unwrap()[0].port, 8080);

    let sts_spec = sts.spec.unwrap();
    assert_eq!(sts_spec.replicas, Some(2));
    assert_eq!(sts_spec.service_name.as_deref(), Some(NAME));
    let pod = sts_spec.template.spec.unwrap();
    assert_eq!(
        pod.service_account_name.as_deref(),
        Some("clickstream-runner")
    );
    let pod_security = pod.security_context.unwrap();
    assert_eq!(pod_security.run_as_non_root, Some(true));
    assert_eq!(
        pod_security.seccomp_profile.unwrap().type_,
        "RuntimeDefault"
    );
    let container = &pod.containers[0];
    assert_eq!(container.image.as_deref(), Some("sluice-runner:test"));
    assert_eq!(
        container.args.as_deref(),
        Some(&["run".to_owned(), "/etc/sluice/pipeline.yaml".to_owned()][..])
    );
    let security = container.security_context.as_ref().unwrap();
    assert_eq!(security.run_as_non_root, Some(true));
    assert_eq!(security.read_only_root_filesystem, Some(true));
    assert_eq!(security.allow_privilege_escalation, Some(false));
    assert_eq!(
        security.capabilities.as_ref().unwrap().drop.as_deref(),
        Some(&["ALL".to_owned()][..])
    );
    assert_eq!(
        security.seccomp_profile.as_ref().unwrap().type_,
        "RuntimeDefault"
    );

    // Secrets only by reference: env from secretKeyRef / envFrom, files from secret volumes.
    let env = container.env.as_ref().unwrap();
    let var = |name: &str| {
        env.iter()
            .find(|e| e.name == name)
            .unwrap_or_else(|| panic!("no env {name}"))
    };
    assert!(
        env.iter()
            .all(|e| e.value.as_deref().is_none_or(|v| !v.contains("s3cr3t")))
    );
    let password = var("SLUICE_SECRET_KAFKA_USER_PASSWORD")
        .value_from
        .as_ref()
        .unwrap();
    let selector = password.secret_key_ref.as_ref().unwrap();
    assert_eq!(
        (selector.name.as_str(), selector.key.as_str()),
        ("kafka-user", "password")
    );
    let replica = var("SLUICE_REPLICA")
        .value_from
        .as_ref()
        .unwrap()
        .field_ref
        .as_ref()
        .unwrap();
    assert_eq!(
        replica.field_path,
        "metadata.labels['apps.kubernetes.io/pod-index']"
    );
    assert_eq!(var("SLUICE_REPLICAS").value.as_deref(), Some("2"));
    // The runner sizes its epochs from the container's memory limit, in bytes.
    let memory = var(sluice_crds::MEMORY_LIMIT_ENV)
        .value_from
        .as_ref()
        .unwrap()
        .resource_field_ref
        .as_ref()
        .unwrap();
    assert_eq!(
        (
            memory.container_name.as_deref(),
            memory.resource.as_str(),
            memory.divisor.as_ref().map(|d| d.0.as_str())
        ),
        (Some(container.name.as_str()), "limits.memory", Some("1"))
    );
    assert_eq!(
        var("SLUICE_PIPELINE_UID").value.as_deref(),
        Some(owner_uid.as_str())
    );
    let env_from: Vec<_> = container
        .env_from
        .as_ref()
        .unwrap()
        .iter()
        .map(|e| e.secret_ref.as_ref().unwrap().name.clone())
        .collect();
    assert_eq!(env_from, ["lake-creds", "checkpoint-creds"]);
    let ca_volume = pod
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| {
            v.secret
                .as_ref()
                .is_some_and(|s| s.secret_name.as_deref() == Some("kafka-ca"))
        })
        .expect("kafka-ca mounted");
    let mount = container
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .find(|m| m.name == ca_volume.name)
        .unwrap();
    assert_eq!(mount.mount_path, "/var/run/secrets/sluice/kafka-ca");
    assert_eq!(mount.read_only, Some(true));
}

#[tokio::test]
async fn spec_change_rolls_the_statefulset() {
    let (ctx, _runners) = setup(pipeline_secrets()).await;
    reconcile_settled(&ctx, NAME).await;
    let hash = |sts: &StatefulSet| {
        sts.spec
            .as_ref()
            .unwrap()
            .template
            .metadata
            .as_ref()
            .unwrap()
            .annotations
            .as_ref()
            .unwrap()[CONFIG_HASH_ANNOTATION]
            .clone()
    };
    let before = hash(&stateful_set(&ctx).await);

    // (A change of spec.parallelism is a rescale instead: tests/it/rescale.rs.)
    edit(&ctx, |p| {
        p.spec
            .source
            .kafka
            .as_mut()
            .unwrap()
            .topics
            .push("more-events".into());
    })
    .await;
    reconcile_stored(&ctx, NAME).await.unwrap();

    let sts = stateful_set(&ctx).await;
    assert_eq!(sts.spec.as_ref().unwrap().replicas, Some(2));
    assert_ne!(
        hash(&sts),
        before,
        "the pod template changes so the runners roll"
    );
    let status = stored(&ctx, NAME).await.status.unwrap();
    assert_eq!(
        status.observed_generation,
        stored(&ctx, NAME).await.metadata.generation
    );
    assert_eq!(
        status.lineage, 0,
        "a compatible change resumes the same lineage"
    );
}

#[tokio::test]
async fn window_change_is_refused_without_reset_then_starts_a_new_lineage_with_it() {
    let (ctx, _runners) = setup(pipeline_secrets()).await;
    reconcile_settled(&ctx, NAME).await;
    let fingerprint = stored(&ctx, NAME)
        .await
        .status
        .unwrap()
        .state_fingerprint
        .unwrap();
    let configured = || async {
        let cm = Api::<ConfigMap>::namespaced(ctx.client.clone(), NS)
            .get("clickstream-pipeline")
            .await
            .unwrap();
        sluice_crds::parse_pipeline(&cm.data.unwrap()[CONFIG_KEY]).unwrap()
    };

    edit(&ctx, |p| {
        p.spec
            .window
            .as_mut()
            .unwrap()
            .group_by
            .push("country".into())
    })
    .await;
    let action = reconcile_stored(&ctx, NAME).await.unwrap();
    assert_eq!(
        action,
        kube::runtime::controller::Action::requeue(Duration::from_secs(5)),
        "backoff, not a hot loop"
    );
    let refused = stored(&ctx, NAME).await;
    let ready = condition(&refused, "Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "IncompatibleStateChange")
    );
    assert!(
        ready.message.contains("upgradePolicy: reset"),
        "{}",
        ready.message
    );
    assert_eq!(
        refused
            .status
            .as_ref()
            .unwrap()
            .state_fingerprint
            .as_deref(),
        Some(fingerprint.as_str())
    );
    assert_eq!(
        configured().await.spec.window.unwrap().group_by,
        ["event_type"],
        "the old config stays"
    );
    assert!(
        events(&ctx.client)
            .await
            .iter()
            .any(|(t, r, _)| t == "Warning" && r == "IncompatibleStateChange")
    );
    let second = reconcile_stored(&ctx, NAME).await.unwrap();
    assert_eq!(
        second,
        kube::runtime::controller::Action::requeue(Duration::from_secs(10)),
        "backoff grows"
    );

    edit(&ctx, |p| {
        p.spec.upgrade_policy = sluice_crds::UpgradePolicy::Reset
    })
    .await;
    reconcile_stored(&ctx, NAME).await.unwrap();
    let reset = stored(&ctx, NAME).await;
    let status = reset.status.as_ref().unwrap();
    assert_eq!(status.lineage, 1);
    assert_ne!(
        status.state_fingerprint.as_deref(),
        Some(fingerprint.as_str())
    );
    assert_ne!(condition(&reset, "Ready").reason, "IncompatibleStateChange");
    let config = configured().await;
    assert_eq!(
        config.spec.checkpoint.uri,
        "s3://checkpoints/clickstream/lineage-1"
    );
    assert_eq!(
        config.spec.window.unwrap().group_by,
        ["event_type", "country"]
    );
    assert!(
        events(&ctx.client)
            .await
            .iter()
            .any(|(_, r, _)| r == "CheckpointLineageReset")
    );
}

#[tokio::test]
async fn dedup_id_change_is_refused_but_a_filter_is_not() {
    let (ctx, _runners) = setup(pipeline_secrets()).await;
    let transform = |json| serde_json::from_value::<sluice_crds::Transform>(json).unwrap();
    edit(&ctx, |p| {
        p.spec.transforms.push(transform(
            serde_json::json!({"dedup": {"idField": "id", "horizon": "10m"}}),
        ))
    })
    .await;
    reconcile_settled(&ctx, NAME).await;
    let lineage_with_dedup = stored(&ctx, NAME).await.status.unwrap();

    edit(&ctx, |p| {
        p.spec
            .transforms
            .insert(0, transform(serde_json::json!({"filter": "true"})))
    })
    .await;
    reconcile_stored(&ctx, NAME).await.unwrap();
    let status = stored(&ctx, NAME).await.status.unwrap();
    assert_eq!(
        status.state_fingerprint,
        lineage_with_dedup.state_fingerprint
    );
    assert_eq!(status.lineage, lineage_with_dedup.lineage);

    edit(&ctx, |p| {
        p.spec.transforms[1].dedup.as_mut().unwrap().id_field = "event.id".into()
    })
    .await;
    reconcile_stored(&ctx, NAME).await.unwrap();
    let refused = stored(&ctx, NAME).await;
    let ready = condition(&refused, "Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "IncompatibleStateChange")
    );
    assert!(ready.message.contains("dedup"), "{}", ready.message);
}

#[tokio::test]
async fn suspend_scales_to_zero_and_keeps_checkpoints() {
    let (ctx, runners) = setup(pipeline_secrets()).await;
    for replica in 0..2 {
        runners.set(&format!("{NAME}-{replica}"), runner(replica, true, vec![]));
    }
    reconcile_settled(&ctx, NAME).await;
    let checkpoint = stored(&ctx, NAME)
        .await
        .status
        .unwrap()
        .last_checkpoint
        .expect("checkpoint reported");

    edit(&ctx, |p| p.spec.suspend = true).await;
    reconcile_stored(&ctx, NAME).await.unwrap();

    assert_eq!(stateful_set(&ctx).await.spec.unwrap().replicas, Some(0));
    let suspended = stored(&ctx, NAME).await;
    let status = suspended.status.as_ref().unwrap();
    assert_eq!(status.phase, Some(Phase::Suspended));
    assert_eq!(condition(&suspended, "Ready").reason, "Suspended");
    assert_eq!(
        status.last_checkpoint.as_ref(),
        Some(&checkpoint),
        "checkpoint kept"
    );
    let config_map = Api::<ConfigMap>::namespaced(ctx.client.clone(), NS)
        .get("clickstream-pipeline")
        .await
        .unwrap();
    assert!(
        config_map.data.unwrap()[CONFIG_KEY].contains("s3://checkpoints/clickstream/lineage-0")
    );
}

#[tokio::test]
async fn missing_secret_sets_ready_false_with_event_and_backs_off() {
    let secrets = pipeline_secrets()
        .into_iter()
        .filter(|s| s.metadata.name.as_deref() != Some("kafka-user"))
        .collect();
    let (ctx, _runners) = setup(secrets).await;
    reconcile_stored(&ctx, NAME).await.unwrap();
    let first = reconcile_stored(&ctx, NAME).await.unwrap();
    let second = reconcile_stored(&ctx, NAME).await.unwrap();
    assert_eq!(
        first,
        kube::runtime::controller::Action::requeue(Duration::from_secs(5))
    );
    assert_eq!(
        second,
        kube::runtime::controller::Action::requeue(Duration::from_secs(10)),
        "exponential backoff"
    );

    let refused = stored(&ctx, NAME).await;
    let ready = condition(&refused, "Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "SecretNotFound")
    );
    assert!(
        ready.message.contains("\"kafka-user\"")
            && ready.message.contains("spec.source.kafka.sasl.secretRef"),
        "{}",
        ready.message
    );
    assert_eq!(ready.observed_generation, refused.metadata.generation);
    let warnings: Vec<_> = events(&ctx.client)
        .await
        .into_iter()
        .filter(|(t, r, _)| t == "Warning" && r == "SecretNotFound")
        .collect();
    assert_eq!(
        warnings.len(),
        1,
        "one Event per transition, not per retry: {warnings:?}"
    );
    assert!(!has_runners(&ctx).await, "no runners without their Secrets");

    // Creating the Secret lets the next attempt through.
    let secret = pipeline_secrets()
        .into_iter()
        .find(|s| s.metadata.name.as_deref() == Some("kafka-user"))
        .unwrap();
    Api::namespaced(ctx.client.clone(), NS)
        .create(&Default::default(), &secret)
        .await
        .unwrap();
    assert_runs_after_the_fix(&ctx, "SecretNotFound").await;
}

#[tokio::test]
async fn local_checkpoint_path_is_refused_with_an_actionable_message() {
    let mut local = pipeline(NAME);
    local.spec.checkpoint.uri = "/var/lib/sluice/checkpoints".into();
    let (ctx, _runners) = setup_with(local, pipeline_secrets()).await;
    reconcile_settled(&ctx, NAME).await;
    let message = assert_refused_before_any_runner(&ctx, "UnsupportedCheckpointUri").await;
    assert!(message.contains("s3://"), "{message}");
}

/// `Ready=False` with `reason`, phase Failed, a Warning Event, and no runners.
async fn assert_refused_before_any_runner(
    ctx: &sluice_controller::Context,
    reason: &str,
) -> String {
    let refused = stored(ctx, NAME).await;
    let ready = condition(&refused, "Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", reason)
    );
    assert_eq!(refused.status.as_ref().unwrap().phase, Some(Phase::Failed));
    assert!(
        events(&ctx.client)
            .await
            .iter()
            .any(|(t, r, _)| t == "Warning" && r == reason)
    );
    assert!(!has_runners(ctx).await, "no runner starts");
    ready.message.clone()
}

/// Whether the runners' StatefulSet exists.
async fn has_runners(ctx: &sluice_controller::Context) -> bool {
    Api::<StatefulSet>::namespaced(ctx.client.clone(), NS)
        .get_opt(NAME)
        .await
        .unwrap()
        .is_some()
}

#[tokio::test]
async fn a_transform_that_cannot_compile_is_reported_before_any_runner_starts() {
    let mut broken = pipeline(NAME);
    broken.spec.transforms = serde_json::from_value(serde_json::json!([
        {"filter": "event_type != 'heartbeat'"},
        {"compute": {"field": "cents", "expression": "value * 100.0 +"}},
        {"filter": "'click'"},
    ]))
    .unwrap();
    let (ctx, _runners) = setup_with(broken, pipeline_secrets()).await;
    reconcile_settled(&ctx, NAME).await;
    let message = assert_refused_before_any_runner(&ctx, "InvalidExpression").await;
    assert!(
        message.contains("spec.transforms[1].compute.expression: invalid CEL expression \"value * 100.0 +\": line 1"),
        "{message}"
    );
    assert!(
        message.contains("spec.transforms[2].filter") && message.contains("true or false"),
        "{message}"
    );
    assert!(!message.contains("transforms[0]"), "{message}");

    // Fixing the expressions lets the runners start.
    edit(&ctx, |p| {
        p.spec.transforms.truncate(1);
    })
    .await;
    assert_runs_after_the_fix(&ctx, "InvalidExpression").await;
}

#[tokio::test]
async fn a_webhook_secret_without_an_http_url_is_reported() {
    let mut with_webhook = pipeline(NAME);
    with_webhook.spec.alerts.as_mut().unwrap().webhooks = serde_json::from_value(
        serde_json::json!([{"urlSecretRef": {"name": "alert-hook", "key": "url"}}]),
    )
    .unwrap();
    let mut secrets = pipeline_secrets();
    let token = "hooks.example.com/services/T0/B0/s3cr3t-token";
    secrets.push(secret("alert-hook", &[("url", token)]));
    let (ctx, _runners) = setup_with(with_webhook, secrets).await;
    reconcile_settled(&ctx, NAME).await;
    let message = assert_refused_before_any_runner(&ctx, "InvalidWebhookUrl").await;
    assert!(
        message.contains("spec.alerts.webhooks[0].urlSecretRef")
            && message.contains("\"alert-hook\""),
        "{message}"
    );
    assert!(
        !message.contains("s3cr3t"),
        "the message shows the secret: {message}"
    );
}

#[tokio::test]
async fn runner_status_becomes_pipeline_status_with_lag() {
    let (ctx, runners) = setup(pipeline_secrets()).await;
    runners.set(
        "clickstream-0",
        runner(0, true, vec![lag("events", 0, 120), lag("events", 2, 30)]),
    );
    runners.set(
        "clickstream-1",
        runner(1, true, vec![lag("events", 1, 300)]),
    );
    reconcile_settled(&ctx, NAME).await;

    let running = stored(&ctx, NAME).await;
    let status = running.status.as_ref().unwrap();
    assert_eq!(status.phase, Some(Phase::Running));
    assert_eq!((status.replicas, status.ready_replicas), (2, 2));
    let total = status.lag.as_ref().unwrap();
    assert_eq!(total.records, 450);
    assert_eq!(total.seconds, 3.0);
    let worst: Vec<_> = total.worst_partitions.iter().map(|p| p.partition).collect();
    assert_eq!(worst, [1, 0, 2]);
    assert_eq!(
        status.watermark.as_deref(),
        Some("2026-11-24T10:00:00Z"),
        "lowest watermark"
    );
    assert_eq!(status.events_per_second, Some(2000.0));
    assert_eq!(status.dead_letter_per_second, Some(1.0));
    assert_eq!(status.duplicates_per_second, Some(5.0));
    assert_eq!(
        status.last_checkpoint.as_ref().unwrap().epoch,
        41,
        "oldest of the newest checkpoints"
    );
    let ready = condition(&running, "Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("True", "RunnersReady")
    );
    assert_eq!(condition(&running, "Degraded").status, "False");
    let metrics = ctx.metrics.render();
    assert!(
        metrics.contains(
            r#"sluice_pipeline_lag_records{namespace="analytics",pipeline="clickstream"} 450"#
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"sluice_controller_reconciles_total{result="ok"} 2"#),
        "{metrics}"
    );
    assert!(
        metrics.contains("sluice_controller_reconcile_duration_seconds_count 2"),
        "{metrics}"
    );

    // Nothing changed: no status write, and lastTransitionTime stays.
    let version = running.metadata.resource_version.clone();
    reconcile_stored(&ctx, NAME).await.unwrap();
    let again = stored(&ctx, NAME).await;
    assert_eq!(
        again.metadata.resource_version, version,
        "unchanged status is not written"
    );

    // One runner falls behind and stops being ready.
    runners.set(
        "clickstream-1",
        RunnerStatus {
            ready: false,
            error: Some("sink lake: connection refused".into()),
            ..runner(1, false, vec![lag("events", 1, 300)])
        },
    );
    reconcile_stored(&ctx, NAME).await.unwrap();
    let degraded = stored(&ctx, NAME).await;
    let ready = condition(&degraded, "Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "RunnerError")
    );
    assert!(
        ready.message.contains("1/2 runners ready") && ready.message.contains("connection refused"),
        "{}",
        ready.message
    );
}

#[tokio::test]
async fn alert_threshold_sets_degraded_with_warning_event_and_clears_after() {
    let (ctx, runners) = setup(pipeline_secrets()).await;
    let set_lag = |records: i64| {
        runners.set(
            "clickstream-0",
            runner(0, true, vec![lag("events", 0, records)]),
        );
        runners.set("clickstream-1", runner(1, true, vec![]));
    };
    set_lag(10);
    reconcile_settled(&ctx, NAME).await;
    assert_eq!(
        condition(&stored(&ctx, NAME).await, "Degraded").status,
        "False"
    );

    set_lag(5000);
    reconcile_stored(&ctx, NAME).await.unwrap();
    let firing = stored(&ctx, NAME).await;
    let degraded = condition(&firing, "Degraded");
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", "AlertThresholdExceeded")
    );
    assert!(
        degraded.message.contains("maxLag 1000"),
        "{}",
        degraded.message
    );
    let status = firing.status.as_ref().unwrap();
    assert_eq!(status.phase, Some(Phase::Degraded));
    assert_eq!(status.alerts.len(), 1);
    assert_eq!(status.alerts[0].alert_type, AlertType::Lag);
    assert_eq!(status.alerts[0].value, 5000.0);
    let warnings = || async {
        events(&ctx.client)
            .await
            .into_iter()
            .filter(|(t, r, _)| t == "Warning" && r == "AlertFiring")
            .count()
    };
    assert_eq!(warnings().await, 1);
    reconcile_stored(&ctx, NAME).await.unwrap();
    assert_eq!(warnings().await, 1, "no new Event while it keeps firing");

    assert_eq!(
        condition(&firing, "Ready").last_transition_time,
        condition(&stored(&ctx, NAME).await, "Ready").last_transition_time,
        "Ready stayed True: its lastTransitionTime does not move"
    );

    set_lag(20);
    reconcile_stored(&ctx, NAME).await.unwrap();
    let recovered = stored(&ctx, NAME).await;
    assert_eq!(condition(&recovered, "Degraded").status, "False");
    assert_eq!(
        recovered.status.as_ref().unwrap().phase,
        Some(Phase::Running)
    );
    assert!(recovered.status.unwrap().alerts.is_empty());
    assert!(
        events(&ctx.client)
            .await
            .iter()
            .any(|(t, r, note)| t == "Normal" && r == "AlertCleared" && note.contains("lag"))
    );
}

#[tokio::test]
async fn delete_keeps_checkpoints_by_default() {
    let runners = RunnerStatuses::default();
    let ctx = context(
        fake_api(vec![terminating(pipeline(NAME))], pipeline_secrets()).await,
        runners.serve().await,
    );
    assert!(reconcile_deletion(&ctx, NAME).await, "finalizer removed");
    assert!(
        events(&ctx.client)
            .await
            .iter()
            .any(|(_, r, note)| r == "CheckpointsRetained"
                && note.contains("s3://checkpoints/clickstream"))
    );
}

#[tokio::test]
async fn delete_removes_checkpoints_when_not_retained() {
    use futures::TryStreamExt;
    use object_store::{ObjectStore, ObjectStoreExt, PutPayload, aws::AmazonS3Builder, path::Path};

    let s3 = sluice_tests::moto::MotoS3::start("checkpoints").await;
    let store = s3
        .env()
        .into_iter()
        .fold(
            AmazonS3Builder::new().with_bucket_name(s3.bucket()),
            |builder, (key, value)| match key.to_ascii_lowercase().parse() {
                Ok(key) => builder.with_config(key, value),
                Err(_) => builder,
            },
        )
        .build()
        .unwrap();
    for key in [
        "clickstream/lineage-0/replica-0/epoch-1",
        "clickstream/lineage-1/replica-0/epoch-7",
        "other/lineage-0/epoch-1",
    ] {
        store
            .put(&Path::from(key), PutPayload::from_static(b"state"))
            .await
            .unwrap();
    }
    let mut secrets = pipeline_secrets();
    secrets.retain(|s| s.metadata.name.as_deref() != Some("checkpoint-creds"));
    let settings = s3.env();
    let settings: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (*k, v.as_str())).collect();
    secrets.push(secret("checkpoint-creds", &settings));
    let runners = RunnerStatuses::default();
    let mut doomed = pipeline(NAME);
    doomed.spec.checkpoint.retain_on_delete = false;
    let ctx = context(
        fake_api(vec![terminating(doomed)], secrets).await,
        runners.serve().await,
    );
    assert!(reconcile_deletion(&ctx, NAME).await, "finalizer removed");
    let left: Vec<String> = store
        .list(None)
        .map_ok(|m| m.location.to_string())
        .try_collect()
        .await
        .unwrap();
    assert_eq!(
        left,
        ["other/lineage-0/epoch-1"],
        "every lineage of this pipeline deleted, nothing else"
    );
    assert!(
        events(&ctx.client)
            .await
            .iter()
            .any(|(_, r, note)| r == "CheckpointsDeleted" && note.contains("deleted 2"))
    );
}

#[tokio::test]
async fn runner_pods_get_pull_secrets_workload_identity_and_no_fixed_uid() {
    let runners = RunnerStatuses::default();
    let mut settings = settings(runners.serve().await);
    settings.runner_image_pull_secrets = vec!["registry-creds".into()];
    settings.runner_service_account_annotations = [(
        "eks.amazonaws.com/role-arn".to_owned(),
        "arn:aws:iam::123456789012:role/sluice-runner".to_owned(),
    )]
    .into();
    let client = fake_api(vec![pipeline(NAME)], pipeline_secrets()).await;
    let ctx = std::sync::Arc::new(sluice_controller::Context::new(
        client,
        settings,
        sluice_controller::metrics::Metrics::new().unwrap(),
    ));
    reconcile_settled(&ctx, NAME).await;

    let pod = stateful_set(&ctx)
        .await
        .spec
        .unwrap()
        .template
        .spec
        .unwrap();
    let pull: Vec<_> = pod
        .image_pull_secrets
        .unwrap_or_default()
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(pull, ["registry-creds"]);
    // OpenShift's restricted SCC assigns the UID: none is fixed, non-root is required.
    let security = pod.security_context.unwrap();
    assert_eq!(security.run_as_non_root, Some(true));
    assert_eq!(
        (
            security.run_as_user,
            security.run_as_group,
            security.fs_group
        ),
        (None, None, None)
    );
    assert!(
        pod.containers
            .iter()
            .all(|c| c.security_context.as_ref().unwrap().run_as_user.is_none())
    );
    let account = Api::<ServiceAccount>::namespaced(ctx.client.clone(), NS)
        .get("clickstream-runner")
        .await
        .unwrap();
    assert_eq!(
        account.metadata.annotations.unwrap()["eks.amazonaws.com/role-arn"],
        "arn:aws:iam::123456789012:role/sluice-runner"
    );
    assert_eq!(account.automount_service_account_token, Some(false));
}
