//! Checks that keep the user documentation true: the README's configuration
//! reference lists exactly the CRD's fields, and the Argo CD and Flux health
//! checks in docs/gitops* map StreamPipeline statuses to the documented health.

use std::{collections::BTreeSet, fs, path::Path};

use mlua::{Lua, LuaSerdeExt};
use serde_json::{Value, json};

fn read(relative: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Dotted paths of every field under `schema`, arrays as `[]`. Fields of
/// Kubernetes' own types (resources, tolerations, conditions) are documented
/// upstream, so the walk stops at them.
fn field_paths(path: &str, schema: &Value, paths: &mut BTreeSet<String>) {
    const UPSTREAM: [&str; 3] = [
        "spec.runner.resources",
        "spec.runner.tolerations",
        "status.conditions",
    ];
    let Some(properties) = schema["properties"].as_object() else {
        return;
    };
    for (name, property) in properties {
        let child = format!("{path}.{name}");
        paths.insert(child.clone());
        if UPSTREAM.contains(&child.as_str()) {
            continue;
        }
        match property.get("items") {
            Some(items) => field_paths(&format!("{child}[]"), items, paths),
            None => field_paths(&child, property, paths),
        }
    }
}

fn crd_field_paths() -> BTreeSet<String> {
    let crd: Value = serde_yaml::from_str(&sluice_crds::crd_yaml().unwrap()).unwrap();
    let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"];
    let mut paths = BTreeSet::new();
    field_paths("spec", &schema["spec"], &mut paths);
    field_paths("status", &schema["status"], &mut paths);
    paths
}

/// The first cell of each reference table row: `` | `spec.x.y` | ... ``.
fn readme_reference_paths() -> BTreeSet<String> {
    read("README.md")
        .lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|rest| rest.split_once('`').map(|(path, _)| path.to_owned()))
        .filter(|path| path.starts_with("spec.") || path.starts_with("status."))
        .collect()
}

#[test]
fn readme_reference_lists_exactly_the_crd_fields() {
    let crd = crd_field_paths();
    let readme = readme_reference_paths();
    assert!(
        crd.len() > 150,
        "the CRD walk found only {} fields",
        crd.len()
    );
    let undocumented: Vec<_> = crd.difference(&readme).collect();
    let stale: Vec<_> = readme.difference(&crd).collect();
    assert!(
        undocumented.is_empty() && stale.is_empty(),
        "README.md's configuration reference is out of date\n\
         fields missing from it: {undocumented:#?}\n\
         rows for fields the CRD no longer has: {stale:#?}"
    );
}

/// Runs docs/gitops/streampipeline-health.lua the way Argo CD does: the
/// resource as the global `obj`, the script's return value as the health.
fn argocd_health(object: &Value) -> (String, String) {
    let lua = Lua::new();
    lua.globals()
        .set("obj", lua.to_value(object).unwrap())
        .unwrap();
    let health: mlua::Table = lua
        .load(read("docs/gitops/streampipeline-health.lua"))
        .set_name("streampipeline-health.lua")
        .eval()
        .unwrap_or_else(|e| panic!("the health script failed on {object}: {e}"));
    (
        health.get("status").unwrap(),
        health.get("message").unwrap(),
    )
}

fn pipeline(generation: i64, suspend: bool, status: Option<Value>) -> Value {
    let mut object = json!({
        "apiVersion": "sluice.dev/v1alpha1",
        "kind": "StreamPipeline",
        "metadata": {"name": "clickstream", "namespace": "analytics", "generation": generation},
        "spec": {"suspend": suspend},
    });
    if let Some(status) = status {
        object["status"] = status;
    }
    object
}

fn condition(kind: &str, status: &str, reason: &str, message: &str) -> Value {
    json!({"type": kind, "status": status, "reason": reason, "message": message,
           "lastTransitionTime": "2026-11-24T10:00:00Z", "observedGeneration": 2})
}

fn status(phase: &str, conditions: Vec<Value>) -> Option<Value> {
    Some(
        json!({"observedGeneration": 2, "phase": phase, "conditions": conditions,
                "replicas": 2, "readyReplicas": 2}),
    )
}

/// A StreamPipeline as the controller leaves it (controller/src/reconcile.rs),
/// and the health each GitOps tool must show for it.
struct Scenario {
    name: &'static str,
    pipeline: Value,
    argocd: &'static str,
    /// The Argo CD message, when it must be the deciding condition's.
    argocd_message: Option<&'static str>,
    flux: &'static str,
}

fn scenarios() -> Vec<Scenario> {
    let ready = condition("Ready", "True", "RunnersReady", "2/2 runners ready");
    let settled = condition(
        "Progressing",
        "False",
        "RunnersUpToDate",
        "every runner runs the current spec",
    );
    let within = condition(
        "Degraded",
        "False",
        "WithinThresholds",
        "no alert threshold exceeded",
    );
    let lag = condition(
        "Degraded",
        "True",
        "AlertThresholdExceeded",
        "lag 250000 records > maxLag 100000",
    );
    let missing = condition(
        "Ready",
        "False",
        "SecretNotFound",
        "Secret analytics/lake-creds not found",
    );
    let refused = condition(
        "Progressing",
        "False",
        "SecretNotFound",
        "waiting for the problem in Ready to be fixed",
    );
    let starting = condition("Ready", "False", "RunnersStarting", "1/2 runners ready");
    let rolling = condition(
        "Progressing",
        "True",
        "RollingUpdate",
        "rolling out the new runner configuration: 1/2 replicas updated",
    );
    let suspended = condition("Ready", "False", "Suspended", "spec.suspend is true");
    let healthy = vec![ready.clone(), settled.clone(), within.clone()];
    let scenario = |name, pipeline, argocd, argocd_message, flux| Scenario {
        name,
        pipeline,
        argocd,
        argocd_message,
        flux,
    };
    vec![
        scenario(
            "no status yet",
            pipeline(2, false, None),
            "Progressing",
            None,
            "InProgress",
        ),
        scenario(
            "generation 3 not observed",
            pipeline(3, false, status("Running", healthy.clone())),
            "Progressing",
            None,
            "InProgress",
        ),
        scenario(
            "ready",
            pipeline(2, false, status("Running", healthy)),
            "Healthy",
            Some("2/2 runners ready"),
            "Current",
        ),
        scenario(
            "alert firing",
            pipeline(2, false, status("Degraded", vec![ready, settled, lag])),
            "Degraded",
            Some("lag 250000 records > maxLag 100000"),
            "Failed",
        ),
        scenario(
            "missing Secret",
            pipeline(2, false, status("Failed", vec![missing, refused])),
            "Degraded",
            Some("Secret analytics/lake-creds not found"),
            "Failed",
        ),
        scenario(
            "runners rolling",
            pipeline(2, false, status("Pending", vec![starting, rolling, within])),
            "Progressing",
            Some("rolling out the new runner configuration: 1/2 replicas updated"),
            "InProgress",
        ),
        scenario(
            "suspended",
            pipeline(2, true, status("Suspended", vec![suspended])),
            "Suspended",
            None,
            "Current",
        ),
    ]
}

#[test]
fn argocd_health_follows_the_documented_mapping() {
    for scenario in scenarios() {
        let (health, message) = argocd_health(&scenario.pipeline);
        assert_eq!(health, scenario.argocd, "{}: {message}", scenario.name);
        if let Some(expected) = scenario.argocd_message {
            assert_eq!(message, expected, "{}", scenario.name);
        }
    }
}

/// The `healthCheckExprs` entry of the Flux Kustomization in docs/gitops.md.
fn flux_health_expressions() -> Value {
    let doc = read("docs/gitops.md");
    let block = doc
        .split("```yaml")
        .filter_map(|rest| rest.split("```").next())
        .find(|block| block.contains("healthCheckExprs"))
        .expect("docs/gitops.md has a Kustomization with healthCheckExprs");
    let kustomization: Value = serde_yaml::from_str(block).unwrap();
    let check = kustomization["spec"]["healthCheckExprs"][0].clone();
    assert_eq!(check["apiVersion"], "sluice.dev/v1alpha1");
    assert_eq!(check["kind"], "StreamPipeline");
    check
}

/// Evaluates the expressions as Flux does: the object's top-level fields are
/// variables; `inProgress`, then `failed`, then `current`; an expression that
/// cannot be evaluated (a field not there yet) leaves the resource in progress.
fn flux_health(object: &Value) -> &'static str {
    let check = flux_health_expressions();
    let mut context = cel::Context::default();
    for (field, value) in object.as_object().unwrap() {
        context.add_variable(field.as_str(), value).unwrap();
    }
    let holds = |key: &str| {
        let expression = check[key].as_str().unwrap();
        let program = cel::Program::compile(expression)
            .unwrap_or_else(|e| panic!("{key} does not compile: {e}"));
        matches!(program.execute(&context), Ok(cel::Value::Bool(true)))
    };
    if holds("inProgress") {
        "InProgress"
    } else if holds("failed") {
        "Failed"
    } else if holds("current") {
        "Current"
    } else {
        "InProgress"
    }
}

#[test]
fn flux_health_check_follows_the_documented_mapping() {
    for scenario in scenarios() {
        assert_eq!(
            flux_health(&scenario.pipeline),
            scenario.flux,
            "{}",
            scenario.name
        );
    }
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces as `-`.
fn anchor(heading: &str) -> String {
    heading
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

#[test]
fn readme_and_gitops_links_lead_somewhere() {
    for page in ["README.md", "docs/gitops.md"] {
        let text = read(page);
        let folder = Path::new(page).parent().unwrap();
        let anchors: BTreeSet<String> = text
            .lines()
            .filter_map(|line| line.strip_prefix('#'))
            .map(|heading| anchor(heading.trim_start_matches('#').trim()))
            .collect();
        for target in text
            .split("](")
            .skip(1)
            .filter_map(|rest| rest.split(')').next())
        {
            if target.starts_with("http") {
                continue;
            }
            match target.strip_prefix('#') {
                Some(fragment) => assert!(
                    anchors.contains(fragment),
                    "{page} links to #{fragment}, which is no heading"
                ),
                None => assert!(
                    Path::new(env!("CARGO_MANIFEST_DIR"))
                        .join("..")
                        .join(folder)
                        .join(target)
                        .exists(),
                    "{page} links to {target}, which does not exist"
                ),
            }
        }
    }
}
