//! Every Secret field of the CRD reaches the runner pod the way the runner
//! reads it, or, for the sections only the controller reads, stays out of it.

use std::collections::BTreeSet;

use k8s_openapi::{
    api::core::v1::PodSpec,
    apiextensions_apiserver::pkg::apis::apiextensions::v1::{
        JSONSchemaProps, JSONSchemaPropsOrArray,
    },
};
use kube::CustomResourceExt;
use sluice_controller::{
    Settings,
    render::{self, Runners, SecretUse, secret_references},
};
use sluice_crds::StreamPipeline;

/// Not a valid pipeline (it has three sources): it sets every Secret field
/// of the CRD at once, each to a Secret of its own.
const EVERY_SECRET: &str = r#"
apiVersion: sluice.dev/v1alpha1
kind: StreamPipeline
metadata: {name: every-secret, namespace: analytics, uid: uid-every-secret}
spec:
  source:
    kafka:
      bootstrapServers: kafka:9092
      topics: [events]
      consumerGroup: g
      tls:
        caSecretRef: {name: kafka-ca, key: ca.crt}
        certSecretRef: {name: kafka-cert, key: tls.crt}
        keySecretRef: {name: kafka-key, key: tls.key}
      sasl: {mechanism: SCRAM-SHA-512, secretRef: {name: kafka-user, usernameKey: login}}
    eventHub:
      namespace: hub.servicebus.windows.net
      eventHub: events
      connectionStringSecretRef: {name: hub-connection, key: connection}
    rest:
      url: https://api.example.com/events
      headers:
        - {name: Authorization, valueFrom: {name: rest-token, key: token}}
  sinks:
    - name: lake
      delta: {uri: "s3://lake/t", credentialsSecretRef: {name: lake-creds}}
    - name: ch
      clickhouse: {url: "http://ch:8123", table: t, credentialsSecretRef: {name: ch-user}}
    - name: es
      elasticsearch:
        url: https://es:9200
        index: i
        credentialsSecretRef: {name: es-user}
        apiKeySecretRef: {name: es-api-key, key: key}
  checkpoint: {uri: "s3://checkpoints/p", credentialsSecretRef: {name: checkpoint-creds}}
  alerts:
    webhooks:
      - {urlSecretRef: {name: alert-hook, key: url}}
"#;

/// Paths (arrays as `[]`) of the CRD's objects shaped like one of the Secret
/// reference types: `{name, key}`, `{name, usernameKey, passwordKey}`, `{name}`.
fn secret_shaped_fields(schema: &JSONSchemaProps, path: &str, found: &mut BTreeSet<String>) {
    if let Some(properties) = &schema.properties {
        let names: BTreeSet<&str> = properties.keys().map(String::as_str).collect();
        let shapes: [&[&str]; 3] = [
            &["key", "name"],
            &["name", "passwordKey", "usernameKey"],
            &["name"],
        ];
        if shapes
            .iter()
            .any(|shape| names == shape.iter().copied().collect())
        {
            found.insert(path.to_owned());
            return;
        }
        for (name, property) in properties {
            secret_shaped_fields(property, &format!("{path}.{name}"), found);
        }
    }
    if let Some(JSONSchemaPropsOrArray::Schema(items)) = &schema.items {
        secret_shaped_fields(items, &format!("{path}[]"), found);
    }
}

/// `a[0].b[12]` → `a[].b[]`.
fn without_indices(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut in_index = false;
    for c in path.chars() {
        match c {
            '[' => in_index = true,
            ']' => in_index = false,
            _ if in_index => continue,
            _ => {}
        }
        out.push(c);
    }
    out
}

fn pod_spec(pipeline: &StreamPipeline) -> PodSpec {
    let rendered = render::render(pipeline, &Settings::default(), 0, Runners::of(pipeline))
        .expect("the manifest renders");
    rendered
        .stateful_set
        .spec
        .and_then(|s| s.template.spec)
        .expect("a pod template")
}

#[test]
fn every_secret_field_of_the_crd_is_found_and_given_to_the_runner() {
    let crd = StreamPipeline::crd();
    let schema = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .and_then(|s| s.properties.as_ref())
        .and_then(|p| p.get("spec"))
        .expect("the CRD has a spec schema");
    let mut in_crd = BTreeSet::new();
    secret_shaped_fields(schema, "spec", &mut in_crd);
    assert!(in_crd.len() >= 12, "found only {in_crd:?} in the CRD");

    let pipeline: StreamPipeline = serde_yaml::from_str(EVERY_SECRET).expect("manifest parses");
    let references = secret_references(&pipeline.spec).expect("references listed");
    let found: BTreeSet<String> = references
        .iter()
        .map(|r| without_indices(&r.field))
        .collect();
    assert_eq!(
        found, in_crd,
        "every Secret field of the CRD is set in this test's manifest and found by its type"
    );

    let pod = pod_spec(&pipeline);
    let container = &pod.containers[0];
    let env = container.env.clone().unwrap_or_default();
    let env_from = container.env_from.clone().unwrap_or_default();
    let volumes = pod.volumes.clone().unwrap_or_default();
    let mounts = container.volume_mounts.clone().unwrap_or_default();
    let pod_text = serde_json::to_string(&pod).expect("pod spec serialises");
    for reference in &references {
        let secret = reference.secret.as_str();
        match reference.usage {
            SecretUse::File => {
                let volume = volumes
                    .iter()
                    .find(|v| {
                        v.secret
                            .as_ref()
                            .is_some_and(|s| s.secret_name.as_deref() == Some(secret))
                    })
                    .unwrap_or_else(|| panic!("{} ({secret}) is not mounted", reference.field));
                let items = volume
                    .secret
                    .as_ref()
                    .and_then(|s| s.items.clone())
                    .unwrap_or_default();
                for key in &reference.keys {
                    assert!(
                        items.iter().any(|item| &item.key == key),
                        "{}: key {key} of {secret} is not in its volume",
                        reference.field
                    );
                }
                assert!(
                    mounts.iter().any(|m| m.name == volume.name),
                    "{}: the volume of {secret} is not mounted",
                    reference.field
                );
            }
            SecretUse::Env => {
                for key in &reference.keys {
                    assert!(
                        env.iter().any(|var| var
                            .value_from
                            .as_ref()
                            .and_then(|from| from.secret_key_ref.as_ref())
                            .is_some_and(|r| r.name == secret && &r.key == key)),
                        "{}: key {key} of {secret} is not in the environment",
                        reference.field
                    );
                }
            }
            SecretUse::EnvFrom => assert!(
                env_from
                    .iter()
                    .any(|from| from.secret_ref.as_ref().is_some_and(|r| r.name == secret)),
                "{}: {secret} is not in envFrom",
                reference.field
            ),
            SecretUse::Controller => assert!(
                !pod_text.contains(secret),
                "{}: {secret} is for the controller only but reaches the pod",
                reference.field
            ),
        }
    }
    assert!(
        references.iter().any(|r| r.usage == SecretUse::Controller
            && r.field == "spec.alerts.webhooks[0].urlSecretRef"),
        "the webhook URL is read by the controller"
    );
}
