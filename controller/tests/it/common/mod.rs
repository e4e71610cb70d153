//! Shared test fixtures: an in-memory Kubernetes API (kube-fake-client), a
//! pipeline manifest, and a local HTTP server playing the runners' `/status`.
#![allow(dead_code)] // each test binary uses a different subset

use std::{
    collections::BTreeMap,
    future::Future,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Json, Router,
    extract::{Path, State},
    http::StatusCode,
    routing::get,
};
use k8s_openapi::{
    ByteString,
    api::{core::v1::Secret, events::v1::Event},
    apimachinery::pkg::apis::meta::v1::Condition,
};
use kube::{Api, Client, api::ListParams, runtime::controller::Action};
use kube_fake_client::ClientBuilder;
use sluice_controller::{Context, Error, Settings, metrics::Metrics, reconcile};
use sluice_crds::{RunnerStatus, StreamPipeline};

pub const NS: &str = "analytics";
pub const OTHER_FINALIZER: &str = "example.com/backup";

/// A Kafka → S3 pipeline with two replicas, SASL credentials, TLS CA,
/// checkpoint credentials and alert thresholds.
pub fn pipeline(name: &str) -> StreamPipeline {
    let yaml = format!(
        r#"
apiVersion: sluice.dev/v1alpha1
kind: StreamPipeline
metadata: {{name: {name}, namespace: {NS}}}
spec:
  source:
    kafka:
      bootstrapServers: kafka.data:9092
      topics: [events]
      consumerGroup: clickstream
      tls: {{caSecretRef: {{name: kafka-ca, key: ca.crt}}}}
      sasl: {{mechanism: SCRAM-SHA-512, secretRef: {{name: kafka-user}}}}
  window:
    sliding: {{size: 5m, slide: 1m}}
    watermark: 2m
    groupBy: [event_type]
    aggregations: [{{name: event_count, count: {{}}}}]
  sinks:
    - name: lake
      delta: {{uri: "s3://lake/clickstream", credentialsSecretRef: {{name: lake-creds}}}}
  checkpoint: {{uri: "s3://checkpoints/{name}", credentialsSecretRef: {{name: checkpoint-creds}}}}
  parallelism: 2
  alerts: {{maxLag: 1000, maxDeadLetterRate: 5.0}}
"#
    );
    let mut pipeline = sluice_crds::parse_pipeline(&yaml).expect("valid test manifest");
    pipeline.metadata.uid = Some(format!("uid-{name}"));
    // Another controller's finalizer: kube's finalizer helper guards its
    // first add with a JSON-patch `test` of a missing path against null,
    // which the fake API refuses; with one present it appends instead.
    pipeline.metadata.finalizers = Some(vec![OTHER_FINALIZER.into()]);
    pipeline
}

pub fn secret(name: &str, data: &[(&str, &str)]) -> Secret {
    Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            namespace: Some(NS.into()),
            ..Default::default()
        },
        data: Some(
            data.iter()
                .map(|(k, v)| ((*k).to_owned(), ByteString(v.as_bytes().to_vec())))
                .collect(),
        ),
        ..Secret::default()
    }
}

/// Every Secret [`pipeline`] references, with made-up values.
pub fn pipeline_secrets() -> Vec<Secret> {
    vec![
        secret("kafka-ca", &[("ca.crt", "-----BEGIN CERTIFICATE-----")]),
        secret(
            "kafka-user",
            &[
                ("username", "kafka-login-name"),
                ("password", "s3cr3t-kafka-password"),
            ],
        ),
        secret(
            "lake-creds",
            &[
                ("AWS_ACCESS_KEY_ID", "lake-key-id"),
                ("AWS_SECRET_ACCESS_KEY", "lake-s3cr3t"),
            ],
        ),
        secret(
            "checkpoint-creds",
            &[("AWS_SECRET_ACCESS_KEY", "checkpoint-s3cr3t")],
        ),
    ]
}

/// The fake API holding `pipelines` and `secrets`.
pub async fn fake_api(pipelines: Vec<StreamPipeline>, secrets: Vec<Secret>) -> Client {
    ClientBuilder::new()
        .with_resource::<StreamPipeline>()
        .with_status_subresource::<StreamPipeline>()
        // As in a cluster: applying the StatefulSet leaves the status the
        // StatefulSet controller writes alone.
        .with_status_subresource::<k8s_openapi::api::apps::v1::StatefulSet>()
        .with_objects(pipelines)
        .with_objects(secrets)
        .build()
        .await
        .expect("fake API")
}

/// Settings for tests: runner status from `status_url_template`, short backoff.
pub fn settings(status_url_template: String) -> Settings {
    Settings {
        runner_image: "sluice-runner:test".into(),
        status_url_template,
        status_timeout: Duration::from_secs(5),
        webhook_min_delay: Duration::from_millis(50),
        ..Settings::default()
    }
}

pub fn context(client: Client, status_url_template: String) -> Arc<Context> {
    Arc::new(Context::new(
        client,
        settings(status_url_template),
        Metrics::new().expect("metrics"),
    ))
}

/// Reconciles the stored version of `name`, as the controller would after a watch event.
pub async fn reconcile_stored(ctx: &Arc<Context>, name: &str) -> Result<Action, Error> {
    let stored = pipelines(ctx).get(name).await.expect("stored pipeline");
    reconcile(Arc::new(stored), ctx.clone()).await
}

/// Reconciles until the finalizer is in place and one full pass ran.
pub async fn reconcile_settled(ctx: &Arc<Context>, name: &str) -> Action {
    reconcile_stored(ctx, name)
        .await
        .expect("reconcile adding the finalizer");
    reconcile_stored(ctx, name).await.expect("reconcile")
}

pub fn pipelines(ctx: &Context) -> Api<StreamPipeline> {
    Api::namespaced(ctx.client.clone(), NS)
}

/// Changes the stored `name` as `kubectl apply` of an edited manifest would.
pub async fn edit_stored(ctx: &Context, name: &str, change: impl FnOnce(&mut StreamPipeline)) {
    let mut pipeline = stored(ctx, name).await;
    change(&mut pipeline);
    pipeline.metadata.managed_fields = None;
    pipelines(ctx)
        .replace(name, &Default::default(), &pipeline)
        .await
        .expect("update pipeline");
}

pub async fn stored(ctx: &Context, name: &str) -> StreamPipeline {
    pipelines(ctx).get(name).await.expect("stored pipeline")
}

/// `pipeline` as the API server shows it after `kubectl delete`: a deletion
/// timestamp, and our finalizer still holding it. (kube-fake-client deletes
/// at once on DELETE, so tests start from this state.)
pub fn terminating(mut pipeline: StreamPipeline) -> StreamPipeline {
    pipeline.metadata.deletion_timestamp = Some(
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now()),
    );
    pipeline.metadata.finalizers = Some(vec![
        OTHER_FINALIZER.into(),
        sluice_controller::FINALIZER.into(),
    ]);
    pipeline
}

/// Reconciles a [`terminating`] pipeline; true once the controller let go
/// of it (only the other controller's finalizer is left).
pub async fn reconcile_deletion(ctx: &Arc<Context>, name: &str) -> bool {
    reconcile_stored(ctx, name)
        .await
        .expect("cleanup reconcile");
    let left = stored(ctx, name).await;
    left.metadata.finalizers == Some(vec![OTHER_FINALIZER.into()])
}

pub fn condition<'a>(pipeline: &'a StreamPipeline, type_: &str) -> &'a Condition {
    pipeline
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == type_))
        .unwrap_or_else(|| panic!("no {type_} condition in {:?}", pipeline.status))
}

/// Events recorded in the test namespace, as (type, reason, note).
pub async fn events(client: &Client) -> Vec<(String, String, String)> {
    Api::<Event>::namespaced(client.clone(), NS)
        .list(&ListParams::default())
        .await
        .expect("list events")
        .items
        .into_iter()
        .map(|e| {
            (
                e.type_.unwrap_or_default(),
                e.reason.unwrap_or_default(),
                e.note.unwrap_or_default(),
            )
        })
        .collect()
}

/// Polls `check` until it returns Some, or panics after `deadline`.
pub async fn eventually<T, F, Fut>(deadline: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(start.elapsed() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Plays every runner's `GET /status` at `/<namespace>/<pod>/status`; a pod
/// with no document set answers 503.
#[derive(Clone, Default)]
pub struct RunnerStatuses(Arc<Mutex<BTreeMap<String, RunnerStatus>>>);

impl RunnerStatuses {
    pub fn set(&self, pod: &str, status: RunnerStatus) {
        self.0.lock().unwrap().insert(pod.to_owned(), status);
    }

    /// `pod` stops answering (503).
    pub fn remove(&self, pod: &str) {
        self.0.lock().unwrap().remove(pod);
    }

    /// No pod answers.
    pub fn clear(&self) {
        self.0.lock().unwrap().clear();
    }

    /// Serves on a free port of 127.0.0.1; returns the URL template for [`Settings`].
    pub async fn serve(&self) -> String {
        async fn status(
            State(statuses): State<RunnerStatuses>,
            Path((_namespace, pod)): Path<(String, String)>,
        ) -> Result<Json<RunnerStatus>, StatusCode> {
            let found = statuses.0.lock().unwrap().get(&pod).cloned();
            found.map(Json).ok_or(StatusCode::SERVICE_UNAVAILABLE)
        }
        let router = Router::new()
            .route("/{namespace}/{pod}/status", get(status))
            .with_state(self.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address: SocketAddr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await });
        format!("http://{address}/{{namespace}}/{{pod}}/status")
    }
}

/// Runner pod `name` as the StatefulSet controller creates it (the labels of
/// the stored StatefulSet's pod template, a 512Mi memory limit) with `status`
/// (a PodStatus as JSON) as the kubelet or scheduler reports it.
pub async fn put_runner_pod(client: &Client, name: &str, status: serde_json::Value) {
    use k8s_openapi::api::{apps::v1::StatefulSet, core::v1::Pod};
    let pipeline = name.rsplit_once('-').expect("<pipeline>-<replica>").0;
    let sts = Api::<StatefulSet>::namespaced(client.clone(), NS)
        .get(pipeline)
        .await
        .expect("the controller applied the StatefulSet");
    let labels = sts
        .spec
        .and_then(|s| s.template.metadata)
        .and_then(|m| m.labels)
        .expect("pod template labels");
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": labels},
        "spec": {"containers": [{
            "name": "runner",
            "image": "sluice-runner:test",
            "resources": {"limits": {"memory": "512Mi"}},
        }]},
        "status": status,
    }))
    .expect("a Pod");
    let pods = Api::<Pod>::namespaced(client.clone(), NS);
    if pods.get_opt(name).await.expect("get pod").is_some() {
        pods.delete(name, &Default::default())
            .await
            .expect("delete pod");
    }
    pods.create(&Default::default(), &pod)
        .await
        .expect("create pod");
}

/// Runner pods `<pipeline>-0 .. <pipeline>-<count - 1>`, running and ready.
pub async fn put_running_runner_pods(client: &Client, pipeline: &str, count: u32) {
    for replica in 0..count {
        put_runner_pod(
            client,
            &format!("{pipeline}-{replica}"),
            running_pod_status(),
        )
        .await;
    }
}

/// (replicas, `SLUICE_REPLICAS`) of the StatefulSet `name`, once it exists.
pub async fn runner_set(client: &Client, name: &str) -> Option<(i32, String)> {
    use k8s_openapi::api::apps::v1::StatefulSet;
    let spec = Api::<StatefulSet>::namespaced(client.clone(), NS)
        .get(name)
        .await
        .ok()?
        .spec?;
    let env = spec.template.spec?.containers.first()?.env.clone()?;
    let replicas = env
        .into_iter()
        .find(|e| e.name == "SLUICE_REPLICAS")?
        .value?;
    Some((spec.replicas?, replicas))
}

/// What Kubernetes' StatefulSet controller does after a scale to zero: the
/// runner pods `<name>-0 .. <name>-<count - 1>` go, then the StatefulSet's
/// status reports its current generation with no pod.
pub async fn statefulset_stops_its_pods(client: &Client, name: &str, count: u32) {
    use k8s_openapi::api::{apps::v1::StatefulSet, core::v1::Pod};
    let pods = Api::<Pod>::namespaced(client.clone(), NS);
    for replica in 0..count {
        pods.delete(&format!("{name}-{replica}"), &Default::default())
            .await
            .expect("delete pod");
    }
    let statefulsets = Api::<StatefulSet>::namespaced(client.clone(), NS);
    let generation = statefulsets
        .get(name)
        .await
        .expect("StatefulSet")
        .metadata
        .generation;
    let status = serde_json::json!({"status": {"observedGeneration": generation, "replicas": 0}});
    statefulsets
        .patch_status(name, &Default::default(), &kube::api::Patch::Merge(&status))
        .await
        .expect("StatefulSet status");
}

/// A PodStatus whose `runner` container is waiting with `reason`/`message`,
/// after `last_exit` (a ContainerStateTerminated as JSON), if any.
pub fn waiting_pod_status(
    reason: &str,
    message: &str,
    last_exit: Option<serde_json::Value>,
) -> serde_json::Value {
    let mut container = serde_json::json!({
        "name": "runner",
        "image": "sluice-runner:test",
        "imageID": "",
        "ready": false,
        "restartCount": if last_exit.is_some() { 5 } else { 0 },
        "state": {"waiting": {"reason": reason, "message": message}},
    });
    if let Some(exit) = last_exit {
        container["lastState"] = serde_json::json!({"terminated": exit});
    }
    serde_json::json!({
        "phase": if container["restartCount"] == 0 { "Pending" } else { "Running" },
        "containerStatuses": [container],
    })
}

/// A PodStatus of a running, ready runner.
pub fn running_pod_status() -> serde_json::Value {
    serde_json::json!({
        "phase": "Running",
        "conditions": [{"type": "Ready", "status": "True"}],
        "containerStatuses": [{
            "name": "runner", "image": "sluice-runner:test", "imageID": "",
            "ready": true, "restartCount": 0,
            "state": {"running": {"startedAt": "2026-11-24T10:00:00Z"}},
        }],
    })
}

/// Where the statuses the controller tests produce are kept: the GitOps
/// health checks of docs/gitops are tested against these very files
/// (tests/tests/it/docs.rs).
pub fn status_fixture_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/pipeline-status")
}

/// `pipeline` as a GitOps tool sees it, without what changes from run to run
/// (timestamps, the runners' local status URL): what its health depends on.
pub fn health_view(pipeline: &StreamPipeline, status_url_template: &str) -> serde_json::Value {
    let base = status_url_template
        .split("/{namespace}")
        .next()
        .unwrap_or_default()
        .to_owned();
    let status = pipeline.status.clone().unwrap_or_default();
    let conditions: Vec<serde_json::Value> = status
        .conditions
        .iter()
        .map(|c| {
            serde_json::json!({
                "type": c.type_,
                "status": c.status,
                "reason": c.reason,
                "message": c.message.replace(&base, "http://runner-status"),
                "observedGeneration": c.observed_generation,
                "lastTransitionTime": "2026-11-24T10:00:00Z",
            })
        })
        .collect();
    serde_json::json!({
        "apiVersion": "sluice.dev/v1alpha1",
        "kind": "StreamPipeline",
        "metadata": {
            "name": pipeline.metadata.name,
            "namespace": pipeline.metadata.namespace,
            "generation": pipeline.metadata.generation,
        },
        "spec": {"suspend": pipeline.spec.suspend},
        "status": {
            "observedGeneration": status.observed_generation,
            "phase": status.phase,
            "conditions": conditions,
            "replicas": status.replicas,
            "readyReplicas": status.ready_replicas,
        },
    })
}

/// Checks that the stored `name`'s [`health_view`] equals
/// tests/fixtures/pipeline-status/`case`.json; `SLUICE_BLESS=1` writes it instead.
pub async fn assert_status_fixture(ctx: &Context, name: &str, case: &str) {
    let view = health_view(&stored(ctx, name).await, &ctx.settings.status_url_template);
    let path = status_fixture_dir().join(format!("{case}.json"));
    let text = serde_json::to_string_pretty(&view).unwrap() + "\n";
    if std::env::var_os("SLUICE_BLESS").is_some() {
        std::fs::create_dir_all(status_fixture_dir()).unwrap();
        std::fs::write(&path, text).unwrap();
        return;
    }
    let kept = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        kept == text,
        "{} differs from what the controller writes now:\n{text}\n\
         If the change is intended, run the controller tests with SLUICE_BLESS=1 and check \
         docs/gitops.md and tests/tests/it/docs.rs still say what GitOps tools show.",
        path.display()
    );
}
