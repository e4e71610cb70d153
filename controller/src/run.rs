//! The controller process: kube's `Controller` over StreamPipelines, the
//! objects they own and their runner pods, behind a leader Lease.
//! `main.rs` and the tests start it through [`start`].

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use futures::StreamExt;
use k8s_openapi::{
    NamespaceResourceScope,
    api::{
        apps::v1::StatefulSet,
        core::v1::{ConfigMap, Pod, Service, ServiceAccount},
    },
};
use kube::{
    Api, Client, Resource, ResourceExt,
    runtime::{Controller, reflector::ObjectRef, watcher},
};
use serde::de::DeserializeOwned;
use sluice_crds::StreamPipeline;

use crate::{
    Context, Settings, error_policy,
    leader::LeaderElection,
    metrics::Metrics,
    reconcile,
    render::PIPELINE_LABEL,
    server::{self, Readiness},
};

/// Label selecting the objects this controller owns.
const OWNED_SELECTOR: &str = "app.kubernetes.io/managed-by=sluice-controller";
/// Label selecting the runner pods of every pipeline (their StatefulSets'
/// pod template carries the owned objects' labels).
pub const RUNNER_POD_SELECTOR: &str =
    "app.kubernetes.io/name=sluice-runner,app.kubernetes.io/managed-by=sluice-controller";

fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>,
{
    match namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    }
}

/// Adds a watch of owned `K` objects (this controller's only) to `controller`.
fn owns<K>(
    controller: Controller<StreamPipeline>,
    client: &Client,
    namespace: Option<&str>,
) -> Controller<StreamPipeline>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    controller.owns(
        api::<K>(client, namespace),
        watcher::Config::default().labels(OWNED_SELECTOR),
    )
}

/// The pipeline a runner pod belongs to (pods are owned by the StatefulSet,
/// not the pipeline, so the label names it).
fn pipeline_of(pod: Pod) -> Option<ObjectRef<StreamPipeline>> {
    let name = pod.labels().get(PIPELINE_LABEL)?;
    Some(ObjectRef::new(name).within(&pod.namespace()?))
}

/// Reconciles until dropped (reconciles are idempotent, so stopping in the
/// middle of one is safe). `namespace` limits it to one namespace.
pub async fn run(ctx: Arc<Context>, namespace: Option<&str>) {
    let client = ctx.client.clone();
    let mut controller = Controller::new(
        api::<StreamPipeline>(&client, namespace),
        watcher::Config::default(),
    );
    controller = owns::<ConfigMap>(controller, &client, namespace);
    controller = owns::<StatefulSet>(controller, &client, namespace);
    controller = owns::<Service>(controller, &client, namespace);
    controller = owns::<ServiceAccount>(controller, &client, namespace);
    controller = controller.watches(
        api::<Pod>(&client, namespace),
        watcher::Config::default().labels(RUNNER_POD_SELECTOR),
        pipeline_of,
    );
    controller
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "reconcile not run");
            }
        })
        .await;
}

/// How the process runs (the binary's flags, beyond [`Settings`]).
#[derive(Clone, Debug)]
pub struct Options {
    /// Address of `/metrics`, `/healthz` and `/readyz`.
    pub http_addr: SocketAddr,
    /// Watch only this namespace (default: all).
    pub watch_namespace: Option<String>,
    /// The leader-election Lease: its name and namespace (the controller's own).
    pub lease_name: String,
    pub lease_namespace: String,
    /// This replica's identity in the Lease (the pod name).
    pub holder: String,
    /// The Lease expires this long after its holder's last renewal.
    pub lease_ttl: Duration,
}

/// Runs the controller process until `shutdown` completes: serves the HTTP
/// endpoints, waits for the leader Lease, reconciles while holding it, and
/// on shutdown stops reconciling and releases the Lease, so that a standby
/// replica takes over at once (a rollout has no leaderless gap). An error
/// means it must stop: the Lease was lost or the HTTP server failed.
pub async fn start(
    client: Client,
    settings: Settings,
    options: Options,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let metrics = Metrics::new().context("cannot register metrics")?;
    let settings = Settings {
        instance: Some(options.holder.clone()),
        ..settings
    };
    let ctx = Arc::new(Context::new(client.clone(), settings, metrics.clone()));

    let readiness = Readiness::default();
    let router = server::router(metrics, readiness.clone());
    let listener = tokio::net::TcpListener::bind(options.http_addr)
        .await
        .with_context(|| format!("cannot listen on {}", options.http_addr))?;
    let mut server = tokio::spawn(async move { axum::serve(listener, router).await });

    let election = LeaderElection::new(
        client,
        &options.lease_namespace,
        &options.lease_name,
        &options.holder,
        options.lease_ttl,
    );
    // Standing by is a healthy state: ready as soon as the endpoints answer.
    readiness.set_ready();
    tokio::pin!(shutdown);
    let (holder, lease) = (&options.holder, &options.lease_name);
    tracing::info!(%holder, %lease, "waiting for leadership");
    tokio::select! {
        () = election.acquire() => {}
        () = &mut shutdown => return Ok(()),
    }
    tracing::info!(%holder, "leading; starting the controller");
    let outcome = tokio::select! {
        () = run(ctx, options.watch_namespace.as_deref()) => Ok(()),
        () = election.hold() => {
            // Another replica may be reconciling already: stop at once.
            return Err(anyhow::anyhow!("lost the leader Lease {lease}"));
        }
        result = &mut server => {
            result.context("HTTP server task failed")?.context("HTTP server failed")?;
            Err(anyhow::anyhow!("HTTP server stopped"))
        }
        () = &mut shutdown => {
            tracing::info!("terminating");
            Ok(())
        }
    };
    // The reconciles have stopped (their futures are dropped): hand over.
    election.release().await;
    server.abort();
    outcome
}
