//! kube's `Controller` over StreamPipelines and the objects they own.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::{
    NamespaceResourceScope,
    api::{
        apps::v1::StatefulSet,
        core::v1::{ConfigMap, Service, ServiceAccount},
    },
};
use kube::{
    Api, Client, Resource,
    runtime::{Controller, watcher},
};
use serde::de::DeserializeOwned;
use sluice_crds::StreamPipeline;

use crate::{Context, error_policy, reconcile};

/// Label selecting the objects this controller owns.
const OWNED_SELECTOR: &str = "app.kubernetes.io/managed-by=sluice-controller";

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
    controller
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "reconcile not run");
            }
        })
        .await;
}
