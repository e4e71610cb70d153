//! Checks of the Helm chart (`charts/sluice`) that need no `helm` binary: its
//! plain files parse, its CRD is the generated one, its values match their
//! schema, and its RBAC grants exactly the API calls the controller makes.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
};

use serde::Deserialize;
use serde_json::Value;
use sluice_controller::permissions::PERMISSIONS;

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the repository")
        .to_path_buf()
}

pub fn chart() -> PathBuf {
    repo_root().join("charts/sluice")
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Every file under `dir`, recursively, sorted.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(files_under(&path));
        } else {
            files.push(path);
        }
    }
    files.sort();
    files
}

fn yaml_documents(text: &str) -> Result<Vec<Value>, serde_yaml::Error> {
    serde_yaml::Deserializer::from_str(text)
        .map(Value::deserialize)
        .collect()
}

fn values() -> Value {
    serde_yaml::from_str(&read(&chart().join("values.yaml"))).unwrap()
}

fn values_schema() -> jsonschema::Validator {
    let schema: Value = serde_json::from_str(&read(&chart().join("values.schema.json"))).unwrap();
    jsonschema::validator_for(&schema).expect("values.schema.json is a valid JSON Schema")
}

#[test]
fn every_plain_yaml_and_json_file_of_the_chart_parses() {
    let templates = chart().join("templates");
    let mut checked = Vec::new();
    for path in files_under(&chart()) {
        if path.starts_with(&templates) {
            continue;
        }
        let name = path.display().to_string();
        match path.extension().and_then(|e| e.to_str()) {
            Some("yaml" | "yml") => {
                let documents =
                    yaml_documents(&read(&path)).unwrap_or_else(|e| panic!("{name}: {e}"));
                assert!(!documents.is_empty(), "{name} holds no YAML document");
            }
            Some("json") => {
                serde_json::from_str::<Value>(&read(&path))
                    .unwrap_or_else(|e| panic!("{name}: {e}"));
            }
            _ => continue,
        }
        checked.push(name);
    }
    for expected in [
        "Chart.yaml",
        "values.yaml",
        "values.schema.json",
        "crds/streampipeline.yaml",
        "files/rbac-rules.yaml",
        "dashboards/sluice.json",
    ] {
        assert!(
            checked.iter().any(|c| c.ends_with(expected)),
            "{expected} was not found in the chart"
        );
    }
    let chart_yaml: Value = serde_yaml::from_str(&read(&chart().join("Chart.yaml"))).unwrap();
    assert_eq!(chart_yaml["apiVersion"], "v2");
    assert_eq!(chart_yaml["name"], "sluice");
}

#[test]
fn the_charts_crd_is_the_generated_crd() {
    let in_chart = read(&chart().join("crds/streampipeline.yaml"));
    let generated = read(&repo_root().join("crds/streampipeline.yaml"));
    assert!(
        in_chart == generated,
        "charts/sluice/crds/streampipeline.yaml differs from crds/streampipeline.yaml; \
         copy it: cp crds/streampipeline.yaml charts/sluice/crds/"
    );
}

#[test]
fn values_yaml_validates_against_values_schema_json() {
    let validator = values_schema();
    let values = values();
    let errors: Vec<String> = validator
        .iter_errors(&values)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "values.yaml is invalid: {errors:#?}");
}

#[test]
fn values_schema_rejects_typos_and_bad_choices() {
    let validator = values_schema();
    let mut typo = values();
    typo["rbac"]["scopes"] = "namespace".into();
    assert!(!validator.is_valid(&typo), "an unknown key must be refused");
    let mut bad_scope = values();
    bad_scope["rbac"]["scope"] = "everywhere".into();
    assert!(
        !validator.is_valid(&bad_scope),
        "rbac.scope is cluster or namespace"
    );
    let mut bad_port = values();
    bad_port["httpPort"] = 0.into();
    assert!(!validator.is_valid(&bad_port), "a port is 1..=65535");
}

/// (API group, resource, verb) triples.
type Grants = BTreeSet<(String, String, String)>;

fn chart_rbac_grants() -> Grants {
    let rules: Vec<Value> =
        serde_yaml::from_str(&read(&chart().join("files/rbac-rules.yaml"))).unwrap();
    let strings = |rule: &Value, key: &str| -> Vec<String> {
        rule[key]
            .as_array()
            .unwrap_or_else(|| panic!("rule without {key}: {rule}"))
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    };
    let mut grants = Grants::new();
    for rule in &rules {
        assert!(
            rule.get("resourceNames").is_none() && rule.get("nonResourceURLs").is_none(),
            "rules only use apiGroups, resources and verbs: {rule}"
        );
        for group in strings(rule, "apiGroups") {
            for resource in strings(rule, "resources") {
                for verb in strings(rule, "verbs") {
                    assert!(
                        ![&group, &resource, &verb].contains(&&"*".to_owned()),
                        "no wildcards: {rule}"
                    );
                    grants.insert((group.clone(), resource.clone(), verb));
                }
            }
        }
    }
    grants
}

#[test]
fn rbac_grants_exactly_the_api_calls_the_controller_makes() {
    let template = read(&chart().join("templates/rbac.yaml"));
    assert!(
        template.contains(r#".Files.Get "files/rbac-rules.yaml""#),
        "templates/rbac.yaml must take its rules from files/rbac-rules.yaml"
    );
    let controller: Grants = PERMISSIONS
        .iter()
        .flat_map(|p| {
            p.resources.iter().flat_map(move |resource| {
                p.verbs.iter().map(move |verb| {
                    (
                        p.api_group.to_owned(),
                        (*resource).to_owned(),
                        (*verb).to_owned(),
                    )
                })
            })
        })
        .collect();
    let chart = chart_rbac_grants();
    let missing: Vec<_> = controller.difference(&chart).collect();
    let extra: Vec<_> = chart.difference(&controller).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "charts/sluice/files/rbac-rules.yaml must equal controller/src/permissions.rs\n\
         missing from the chart: {missing:#?}\nnot used by the controller: {extra:#?}"
    );
}

/// The templates, by file name.
fn templates() -> Vec<(String, String)> {
    files_under(&chart().join("templates"))
        .into_iter()
        .map(|path| {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, read(&path))
        })
        .collect()
}

/// The Go-template actions (`{{ ... }}`) of a template, trimmed of `-` and spaces.
fn actions(template: &str) -> Vec<&str> {
    template
        .split("{{")
        .skip(1)
        .filter_map(|rest| rest.split_once("}}").map(|(action, _)| action))
        .map(|action| action.trim_matches(|c: char| c == '-' || c.is_whitespace()))
        .collect()
}

/// Each `word` following `prefix` in `text`, such as the `a.b` of `.Values.a.b`.
fn references<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
    text.match_indices(prefix)
        .map(|(at, _)| {
            let rest = &text[at + prefix.len()..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
                .unwrap_or(rest.len());
            rest[..end].trim_end_matches('.')
        })
        .collect()
}

#[test]
fn every_template_block_is_closed() {
    for (name, text) in templates() {
        let mut depth = 0i32;
        for action in actions(&text) {
            let keyword = action.split_whitespace().next().unwrap_or("");
            match keyword {
                "if" | "with" | "range" | "define" | "block" => depth += 1,
                "end" => depth -= 1,
                _ => {}
            }
            assert!(depth >= 0, "{name}: `end` without a block");
        }
        assert_eq!(depth, 0, "{name}: a block is not closed with `end`");
    }
}

#[test]
fn templates_only_use_values_that_the_schema_declares() {
    let schema: Value = serde_json::from_str(&read(&chart().join("values.schema.json"))).unwrap();
    for (name, text) in templates() {
        for path in references(&text, ".Values.") {
            let mut node = &schema;
            for key in path.split('.') {
                node = &node["properties"][key];
                assert!(
                    node.is_object(),
                    "{name} uses .Values.{path}, which values.schema.json does not declare"
                );
            }
        }
    }
}

#[test]
fn templates_only_include_defined_helpers_and_existing_files() {
    let all: String = templates().into_iter().map(|(_, text)| text).collect();
    let defined: BTreeSet<&str> = actions(&all)
        .into_iter()
        .filter_map(|action| action.strip_prefix("define "))
        .map(|name| name.trim().trim_matches('"'))
        .collect();
    for (name, text) in templates() {
        for action in actions(&text) {
            if let Some(rest) = action.split("include \"").nth(1) {
                let helper = rest.split('"').next().unwrap();
                assert!(
                    defined.contains(helper),
                    "{name} includes undefined {helper:?}"
                );
            }
            if let Some(rest) = action.split(".Files.Get \"").nth(1) {
                let file = rest.split('"').next().unwrap();
                assert!(
                    chart().join(file).is_file(),
                    "{name} reads missing file {file}"
                );
            }
        }
    }
}

/// Text of every Rust file under `dir`.
fn rust_sources(dir: &Path) -> String {
    files_under(dir)
        .into_iter()
        .filter(|path| path.extension().is_some_and(|e| e == "rs"))
        .map(|path| read(&path))
        .collect()
}

#[test]
fn alerts_dashboard_and_readme_only_name_metrics_that_sluice_exports() {
    let sources = rust_sources(&repo_root().join("runner/src"))
        + &rust_sources(&repo_root().join("controller/src"));
    let queries = read(&chart().join("templates/prometheusrule.yaml"))
        + &read(&chart().join("dashboards/sluice.json"))
        + &read(&repo_root().join("README.md"));
    let used: BTreeSet<&str> = references(&queries, "sluice_")
        .into_iter()
        .map(|name| {
            ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .unwrap_or(name)
        })
        .collect();
    assert!(
        used.len() >= 6,
        "expected the alert and panel metrics, found {used:?}"
    );
    // The runner registers its metrics under the `sluice` namespace, so its
    // sources name them without the prefix.
    let unknown: Vec<_> = used
        .iter()
        .filter(|name| {
            !sources.contains(&format!("\"sluice_{name}\""))
                && !sources.contains(&format!("\"{name}\""))
        })
        .collect();
    assert!(
        unknown.is_empty(),
        "the chart or README names metrics that neither runner/src nor controller/src registers: {unknown:?}"
    );
}

#[test]
fn the_deployment_sets_only_variables_the_controller_reads() {
    let main = read(&repo_root().join("controller/src/main.rs"));
    let deployment = read(&chart().join("templates/deployment.yaml"));
    let variables: Vec<&str> = references(&deployment, "- name: ")
        .into_iter()
        .filter(|name| name.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
        .collect();
    assert!(variables.contains(&"SLUICE_RUNNER_IMAGE"), "{variables:?}");
    for variable in variables {
        // RUST_LOG is tracing-subscriber's filter, read from the environment.
        let read_by_controller = main.contains(&format!("env = \"{variable}\""))
            || (variable == "RUST_LOG" && main.contains("EnvFilter::try_from_default_env"));
        assert!(
            read_by_controller,
            "deployment.yaml sets {variable}, which controller/src/main.rs does not read"
        );
    }
}

#[test]
fn the_pod_monitor_selects_the_runner_pods_the_controller_creates() {
    let render = rust_sources(&repo_root().join("controller/src/render"));
    let pod_monitor = read(&chart().join("templates/podmonitor.yaml"));
    for (in_chart, in_controller) in [
        ("app.kubernetes.io/name: sluice-runner", "\"sluice-runner\""),
        // Prometheus turns the label sluice.dev/pipeline into this meta label.
        (
            "__meta_kubernetes_pod_label_sluice_dev_pipeline",
            "\"sluice.dev/pipeline\"",
        ),
        ("port: http", "name: Some(\"http\".into())"),
    ] {
        assert!(
            pod_monitor.contains(in_chart),
            "podmonitor.yaml lacks {in_chart}"
        );
        assert!(
            render.contains(in_controller),
            "controller/src/render no longer has {in_controller}; update podmonitor.yaml"
        );
    }
}

#[test]
fn the_charts_app_version_is_the_workspace_version() {
    let chart_yaml: Value = serde_yaml::from_str(&read(&chart().join("Chart.yaml"))).unwrap();
    let cargo = read(&repo_root().join("Cargo.toml"));
    let workspace_version = cargo
        .lines()
        .skip_while(|line| line.trim() != "[workspace.package]")
        .find_map(|line| line.strip_prefix("version = "))
        .map(|version| version.trim_matches('"'))
        .expect("Cargo.toml has [workspace.package] version");
    assert_eq!(
        chart_yaml["appVersion"], workspace_version,
        "the images default to the chart's appVersion, so it must be the binaries' version"
    );
}
