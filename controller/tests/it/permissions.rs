//! The controller's API calls equal `PERMISSIONS` plus the Lease permissions
//! (and so the chart's RBAC): every request it sends in every scenario is
//! recorded on its way to the in-memory API, and the recorded set must match
//! the lists exactly; Lease calls go to its own namespace and, but for
//! `create`, to its own Lease by name.

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use crate::common::*;
use kube::{Api, Client, api::DeleteParams};
use sluice_controller::{
    leader::LeaderElection,
    permissions::{LEASE_BY_NAME, LEASE_CREATE, PERMISSIONS},
    run::run,
};
use sluice_crds::StreamPipeline;

/// (API group, resource, verb) triples.
type Calls = Arc<Mutex<BTreeSet<(String, String, String)>>>;
/// Lease calls: (verb, namespace, name); the name is empty for create.
type LeaseCalls = Arc<Mutex<BTreeSet<(String, String, String)>>>;

/// Wraps `inner` so that each request is recorded as the RBAC verbs it
/// needs, and each server-side apply's path and query string in `applies`.
fn recording(
    inner: Client,
    calls: Calls,
    leases: LeaseCalls,
    applies: Arc<Mutex<Vec<String>>>,
) -> Client {
    let service = tower::service_fn(move |request: http::Request<kube::client::Body>| {
        let (inner, calls, leases, applies) = (
            inner.clone(),
            calls.clone(),
            leases.clone(),
            applies.clone(),
        );
        async move {
            let made = rbac_calls(&request);
            if let Some(lease) = lease_call(&request) {
                leases.lock().unwrap().extend(
                    made.iter()
                        .map(|(_, _, verb)| (verb.clone(), lease.0.clone(), lease.1.clone())),
                );
            }
            calls.lock().unwrap().extend(made);
            if is_apply(&request) {
                applies.lock().unwrap().push(request.uri().to_string());
            }
            inner.send(request).await
        }
    });
    Client::new(service, "default")
}

fn is_apply(request: &http::Request<kube::client::Body>) -> bool {
    request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes() == b"application/apply-patch+yaml")
}

/// The (namespace, name) of a request on Leases (name empty for a collection).
fn lease_call(request: &http::Request<kube::client::Body>) -> Option<(String, String)> {
    let path = request.uri().path();
    let rest = path.strip_prefix("/apis/coordination.k8s.io/v1/")?;
    let segments: Vec<&str> = rest.split('/').collect();
    match segments.as_slice() {
        ["namespaces", namespace, "leases"] => Some(((*namespace).into(), String::new())),
        ["namespaces", namespace, "leases", name] => Some(((*namespace).into(), (*name).into())),
        _ => panic!("Lease call outside one namespace: {path}"),
    }
}

/// The RBAC (group, resource, verb)s of one request. A server-side apply may
/// create the object, so it needs `create` as well as `patch`.
fn rbac_calls(request: &http::Request<kube::client::Body>) -> Vec<(String, String, String)> {
    let segments: Vec<&str> = request
        .uri()
        .path()
        .trim_start_matches('/')
        .split('/')
        .collect();
    let (group, rest) = match segments.as_slice() {
        ["api", _version, rest @ ..] => ("", rest),
        ["apis", group, _version, rest @ ..] => (*group, rest),
        _ => panic!("unexpected request path {}", request.uri()),
    };
    let rest = match rest {
        ["namespaces", _namespace, rest @ ..] if !rest.is_empty() => rest,
        other => other,
    };
    let (resource, named, subresource) = match rest {
        [resource] => (resource.to_string(), false, false),
        [resource, _name] => (resource.to_string(), true, false),
        [resource, _name, subresource] => (format!("{resource}/{subresource}"), true, true),
        _ => panic!("unexpected request path {}", request.uri()),
    };
    let query = request.uri().query().unwrap_or_default();
    let apply = is_apply(request);
    let verbs: &[&str] = match (request.method().as_str(), named) {
        ("GET", true) => &["get"],
        ("GET", false) if query.contains("watch=true") => &["watch"],
        ("GET", false) => &["list"],
        ("POST", _) => &["create"],
        // A subresource's object exists already: applying to it never creates.
        ("PATCH", _) if apply && !subresource => &["patch", "create"],
        ("PATCH", _) => &["patch"],
        ("PUT", _) => &["update"],
        ("DELETE", _) => &["delete"],
        (method, _) => panic!("unexpected method {method}"),
    };
    verbs
        .iter()
        .map(|verb| (group.to_owned(), resource.clone(), (*verb).to_owned()))
        .collect()
}

#[tokio::test]
async fn api_calls_are_exactly_the_listed_permissions() {
    let calls = Calls::default();
    let leases = LeaseCalls::default();
    let applies = Arc::new(Mutex::new(Vec::new()));
    let runners = RunnerStatuses::default();
    let template = runners.serve().await;
    let clickstream = pipeline("clickstream");
    let secrets = pipeline_secrets();
    let fake = fake_api(vec![clickstream], secrets.clone()).await;
    let ctx = context(
        recording(fake.clone(), calls.clone(), leases.clone(), applies.clone()),
        template,
    );
    let secret_api: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(fake.clone(), NS);

    // The test reads objects through `fake` directly, so only the
    // controller's own calls are recorded.
    let reconcile_stored = |ctx: Arc<sluice_controller::Context>, name: &'static str| {
        let fake = fake.clone();
        async move {
            let stored = Api::<StreamPipeline>::namespaced(fake, NS)
                .get(name)
                .await
                .unwrap();
            sluice_controller::reconcile(Arc::new(stored), ctx)
                .await
                .unwrap()
        }
    };

    // Runs with a Secret that goes missing twice: a repeated Event becomes a series (patch).
    reconcile_stored(ctx.clone(), "clickstream").await;
    reconcile_stored(ctx.clone(), "clickstream").await;
    for _ in 0..2 {
        secret_api
            .delete("kafka-user", &DeleteParams::default())
            .await
            .unwrap();
        reconcile_stored(ctx.clone(), "clickstream").await;
        let kafka_user = secrets
            .iter()
            .find(|s| s.metadata.name.as_deref() == Some("kafka-user"))
            .unwrap();
        secret_api
            .create(&Default::default(), kafka_user)
            .await
            .unwrap();
        reconcile_stored(ctx.clone(), "clickstream").await;
    }
    // Deletion through the finalizer, on a pipeline being deleted.
    let doomed_fake = fake_api(vec![terminating(pipeline("doomed"))], secrets.clone()).await;
    let deleting = context(
        recording(
            doomed_fake.clone(),
            calls.clone(),
            leases.clone(),
            applies.clone(),
        ),
        runners.serve().await,
    );
    let stored = Api::<StreamPipeline>::namespaced(doomed_fake.clone(), NS)
        .get("doomed")
        .await
        .unwrap();
    sluice_controller::reconcile(Arc::new(stored), deleting)
        .await
        .unwrap();
    let left = Api::<StreamPipeline>::namespaced(doomed_fake, NS)
        .get("doomed")
        .await
        .unwrap();
    assert_eq!(
        left.metadata.finalizers,
        Some(vec![OTHER_FINALIZER.to_owned()])
    );

    // Leader election: acquire, then renew once.
    let election = LeaderElection::new(
        ctx.client.clone(),
        "sluice-system",
        "sluice-controller",
        "test-holder",
        Duration::from_millis(600),
    );
    election.acquire().await;
    let _ = tokio::time::timeout(Duration::from_millis(500), election.hold()).await;
    election.release().await;

    // The Controller's watches: wait until it listed and watched each kind.
    let controller = tokio::spawn(run(ctx.clone(), None));
    let watched = [
        "streampipelines",
        "configmaps",
        "statefulsets",
        "services",
        "serviceaccounts",
        "pods",
    ];
    eventually(
        Duration::from_secs(60),
        "the Controller to list and watch every kind",
        || async {
            let calls = calls.lock().unwrap();
            watched
                .iter()
                .all(|resource| {
                    ["list", "watch"]
                        .iter()
                        .all(|verb| calls.iter().any(|(_, r, v)| r == resource && v == verb))
                })
                .then_some(())
        },
    )
    .await;
    controller.abort();

    let made: BTreeSet<(String, String, String)> = calls.lock().unwrap().clone();
    let listed: BTreeSet<(String, String, String)> = PERMISSIONS
        .iter()
        .chain([&LEASE_BY_NAME, &LEASE_CREATE])
        .flat_map(|p| {
            p.resources.iter().flat_map(move |r| {
                p.verbs
                    .iter()
                    .map(move |v| (p.api_group.to_owned(), (*r).to_owned(), (*v).to_owned()))
            })
        })
        .collect();
    let unlisted: Vec<_> = made.difference(&listed).collect();
    let unused: Vec<_> = listed.difference(&made).collect();
    assert!(
        unlisted.is_empty(),
        "calls missing from PERMISSIONS: {unlisted:?}"
    );
    assert!(
        unused.is_empty(),
        "PERMISSIONS no scenario uses: {unused:?}"
    );

    // Leases: only the controller's own, in its own namespace.
    let lease_calls = leases.lock().unwrap().clone();
    let expected: BTreeSet<(String, String, String)> = LEASE_BY_NAME
        .verbs
        .iter()
        .map(|verb| {
            (
                verb.to_string(),
                "sluice-system".into(),
                "sluice-controller".into(),
            )
        })
        .chain(
            LEASE_CREATE
                .verbs
                .iter()
                .map(|verb| (verb.to_string(), "sluice-system".into(), String::new())),
        )
        .collect();
    assert_eq!(lease_calls, expected);
}
