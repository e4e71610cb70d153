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

/// Reconciles until SIGTERM or SIGINT (then finishes the reconciles in
/// flight). `namespace` limits it to one namespace.
pub async fn run(ctx: Arc<Context>, namespace: Option<&str>) {
    let client = ctx.client.clone();
    let owned = || watcher::Config::default().labels(OWNED_SELECTOR);
    fn owns<K>(
        controller: Controller<StreamPipeline>,
        client: &Client,
        namespace: Option<&str>,
        config: watcher::Config,
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
        controller.owns(api::<K>(client, namespace), config)
    }
    let mut controller = Controller::new(
        api::<StreamPipeline>(&client, namespace),
        watcher::Config::default(),
    );
    controller = owns::<ConfigMap>(controller, &client, namespace, owned());
    controller = owns::<StatefulSet>(controller, &client, namespace, owned());
    controller = owns::<Service>(controller, &client, namespace, owned());
    controller = owns::<ServiceAccount>(controller, &client, namespace, owned());
    controller
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "reconcile not run");
            }
        })
        .await;
}
