//! The controller's real loop: `run::start` (what `main.rs` runs: HTTP
//! endpoints, leader Lease, kube-runtime's `Controller` with its watches)
//! against the in-memory API, whose patched copy answers watches
//! (tests/vendor/kube-fake-client). No test here calls `reconcile`: every
//! status change comes from a watch event.

use std::time::Duration;

use crate::common::*;
use k8s_openapi::api::{apps::v1::StatefulSet, coordination::v1::Lease};
use kube::Api;
use sluice_controller::run::{Options, start};
use sluice_crds::{RunnerStatus, StreamPipeline};

const NAME: &str = "clickstream";
const LEASE_NAMESPACE: &str = "sluice-system";
const LEASE: &str = "sluice-controller";

/// (status, reason, message) of the stored pipeline's condition, if set.
async fn ready(client: &kube::Client) -> Option<(String, String, String)> {
    let pipeline = Api::<StreamPipeline>::namespaced(client.clone(), NS)
        .get(NAME)
        .await
        .ok()?;
    let c = pipeline
        .status?
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Ready")?;
    Some((c.status, c.reason, c.message))
}

/// The controller running against an in-memory API holding the test pipeline.
struct Running {
    client: kube::Client,
    runners: RunnerStatuses,
    stop: tokio::sync::oneshot::Sender<()>,
    controller: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn start_controller() -> Running {
    let runners = RunnerStatuses::default();
    let template = runners.serve().await;
    let client = fake_api(vec![pipeline(NAME)], pipeline_secrets()).await;
    // No periodic resync and no retry within the test: only watch events can
    // make it reconcile again.
    let settings = sluice_controller::Settings {
        resync_interval: Duration::from_secs(3600),
        min_backoff: Duration::from_secs(3600),
        ..settings(template)
    };
    let options = Options {
        http_addr: "127.0.0.1:0".parse().unwrap(),
        watch_namespace: None,
        lease_name: LEASE.into(),
        lease_namespace: LEASE_NAMESPACE.into(),
        holder: "sluice-controller-0".into(),
        lease_ttl: Duration::from_secs(15),
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let controller = tokio::spawn(start(client.clone(), settings, options, async move {
        let _ = stopped.await;
    }));
    Running {
        client,
        runners,
        stop,
        controller,
    }
}

/// Stops the controller as a SIGTERM would, cleanly and in time.
async fn shut_down(
    stop: tokio::sync::oneshot::Sender<()>,
    controller: tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(60), controller)
        .await
        .expect("the controller stops on shutdown")
        .unwrap()
        .expect("a clean stop");
}

#[tokio::test]
async fn the_running_controller_turns_a_crash_looping_runner_pod_into_a_condition() {
    let Running {
        client,
        runners,
        stop,
        controller,
    } = start_controller().await;

    // It takes the Lease, applies the runners and reports them starting.
    let deadline = Duration::from_secs(60);
    eventually(deadline, "the runners to be reported starting", || async {
        ready(&client)
            .await
            .filter(|(_, reason, _)| reason == "RunnersStarting")
    })
    .await;
    let sts = Api::<StatefulSet>::namespaced(client.clone(), NS)
        .get(NAME)
        .await
        .expect("the controller applied the StatefulSet");
    assert_eq!(sts.spec.unwrap().replicas, Some(2));

    // Kubernetes' StatefulSet controller starts the pods; replica 0 crash loops.
    runners.set(
        "clickstream-1",
        RunnerStatus {
            replica: 1,
            replicas: 2,
            ready: true,
            ..RunnerStatus::default()
        },
    );
    put_runner_pod(&client, "clickstream-1", running_pod_status()).await;
    put_runner_pod(
        &client,
        "clickstream-0",
        waiting_pod_status(
            "CrashLoopBackOff",
            "back-off 40s restarting failed container=runner pod=clickstream-0_analytics(4b1c)",
            Some(serde_json::json!({"exitCode": 2, "reason": "Error",
                "message": "invalid pipeline: unknown field `topcs`"})),
        ),
    )
    .await;
    let (status, _, message) = eventually(deadline, "Ready=False CrashLoopBackOff", || async {
        ready(&client)
            .await
            .filter(|(_, reason, _)| reason == "CrashLoopBackOff")
    })
    .await;
    assert_eq!(status, "False");
    assert!(
        message.contains("pod clickstream-0: CrashLoopBackOff: back-off 40s")
            && message.contains("invalid pipeline: unknown field `topcs`"),
        "{message}"
    );

    // The pod recovers: the next pod event makes the pipeline Ready.
    runners.set(
        "clickstream-0",
        RunnerStatus {
            replica: 0,
            replicas: 2,
            ready: true,
            ..RunnerStatus::default()
        },
    );
    put_runner_pod(&client, "clickstream-0", running_pod_status()).await;
    eventually(deadline, "Ready=True after the pod recovered", || async {
        ready(&client)
            .await
            .filter(|(status, _, _)| status == "True")
    })
    .await;

    // Shutting down releases the Lease for the next replica.
    let leases = Api::<Lease>::namespaced(client.clone(), LEASE_NAMESPACE);
    let holder = |lease: Lease| lease.spec.and_then(|s| s.holder_identity);
    assert_eq!(
        holder(leases.get(LEASE).await.unwrap()).as_deref(),
        Some("sluice-controller-0")
    );
    shut_down(stop, controller).await;
    assert_eq!(
        holder(leases.get(LEASE).await.unwrap()).as_deref(),
        Some(""),
        "released"
    );
}

#[tokio::test]
async fn the_running_controller_carries_a_rescale_through_on_pod_and_statefulset_events() {
    let Running {
        client,
        stop,
        controller,
        ..
    } = start_controller().await;
    let deadline = Duration::from_secs(60);
    let set = || runner_set(&client, NAME);
    eventually(deadline, "the set of 2 runners", || async {
        set().await.filter(|set| *set == (2, "2".into()))
    })
    .await;
    put_running_runner_pods(&client, NAME, 2).await;

    let pipelines = Api::<StreamPipeline>::namespaced(client.clone(), NS);
    let patch = serde_json::json!({"spec": {"parallelism": 3}});
    pipelines
        .patch(NAME, &Default::default(), &kube::api::Patch::Merge(&patch))
        .await
        .unwrap();
    eventually(deadline, "the old set scaled to zero", || async {
        set().await.filter(|set| *set == (0, "2".into()))
    })
    .await;
    eventually(deadline, "Ready=False Rescaling", || async {
        ready(&client)
            .await
            .filter(|(_, reason, _)| reason == "Rescaling")
    })
    .await;

    // Kubernetes' StatefulSet controller stops the pods, then reports none.
    statefulset_stops_its_pods(&client, NAME, 2).await;
    eventually(deadline, "the new set of 3 runners", || async {
        set().await.filter(|set| *set == (3, "3".into()))
    })
    .await;
    let recorded = pipelines
        .get(NAME)
        .await
        .unwrap()
        .status
        .and_then(|s| s.running_parallelism);
    assert_eq!(recorded, Some(3));

    shut_down(stop, controller).await;
}
