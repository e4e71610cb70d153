//! Checks that keep the user documentation true: the README's configuration
//! reference lists exactly the CRD's fields, and the Argo CD and Flux health
//! checks in docs/gitops* map the statuses the controller writes (kept by its
//! tests in tests/fixtures/pipeline-status) to the health docs/gitops.md
//! documents; the Argo CD script runs under Lua 5.1 (mlua) and the real lua5.4.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::Path,
    process::Command,
};

use mlua::{Lua, LuaSerdeExt};
use serde_json::{Value, json};
use sluice_tests::tools::{run, tool};

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
/// Lua 5.1, the dialect Argo CD embeds (through mlua).
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

/// `value` as a Lua table constructor (or scalar).
fn lua_literal(value: &Value) -> String {
    match value {
        Value::Null => "nil".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(text) => {
            let mut quoted = String::from("\"");
            for c in text.chars() {
                match c {
                    '\\' => quoted.push_str("\\\\"),
                    '"' => quoted.push_str("\\\""),
                    c if (c as u32) < 0x20 => quoted.push_str(&format!("\\{:03}", c as u32)),
                    c => quoted.push(c),
                }
            }
            quoted.push('"');
            quoted
        }
        Value::Array(items) => format!(
            "{{{}}}",
            items.iter().map(lua_literal).collect::<Vec<_>>().join(", ")
        ),
        Value::Object(fields) => format!(
            "{{{}}}",
            fields
                .iter()
                .map(|(k, v)| format!(
                    "[{}] = {}",
                    lua_literal(&Value::String(k.clone())),
                    lua_literal(v)
                ))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Runs the same script under the real `lua5.4` interpreter (Debian's): a
/// second dialect, and no embedding of ours in between.
fn lua54_health(object: &Value) -> (String, String) {
    let driver = format!(
        "obj = {}\nlocal hs = assert(loadfile(arg[1]))()\nio.write(hs.status, \"\\n\", hs.message)\n",
        lua_literal(object)
    );
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/gitops/streampipeline-health.lua");
    let output = run(
        Command::new(tool("lua5.4")).arg("-").arg(&script),
        Some(&driver),
    );
    let (status, message) = output
        .split_once('\n')
        .unwrap_or_else(|| panic!("lua5.4 printed {output:?}"));
    (status.to_owned(), message.to_owned())
}

/// The statuses the controller tests write (controller/tests/it/pod_status.rs
/// keeps them in tests/fixtures/pipeline-status), by case name.
fn controller_statuses() -> BTreeMap<String, Value> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/pipeline-status");
    fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "json"))
        .map(|path| {
            let case = path.file_stem().unwrap().to_string_lossy().into_owned();
            let object = serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
            (case, object)
        })
        .collect()
}

/// A StreamPipeline in one situation, and what each GitOps tool must show.
struct Scenario {
    name: String,
    pipeline: Value,
    argocd: &'static str,
    /// The condition whose message Argo CD must show, if any.
    argocd_message: Option<&'static str>,
    flux: &'static str,
}

/// What Argo CD and Flux show for each status the controller writes, as
/// docs/gitops.md's table says: (case, Argo CD health, message from, Flux).
const EXPECTED: &[(&str, &str, Option<&str>, &str)] = &[
    ("starting", "Progressing", Some("Progressing"), "InProgress"),
    ("running", "Healthy", Some("Ready"), "Current"),
    ("alert-firing", "Degraded", Some("Degraded"), "Failed"),
    ("crash-loop", "Degraded", Some("Degraded"), "Failed"),
    ("image-pull", "Degraded", Some("Degraded"), "Failed"),
    ("oom-killed", "Degraded", Some("Degraded"), "Failed"),
    (
        "unschedulable-waiting",
        "Progressing",
        Some("Progressing"),
        "InProgress",
    ),
    ("unschedulable", "Degraded", Some("Degraded"), "Failed"),
    ("missing-secret", "Degraded", Some("Ready"), "Failed"),
    ("refused-after-alert", "Degraded", Some("Ready"), "Failed"),
    (
        "rescaling",
        "Progressing",
        Some("Progressing"),
        "InProgress",
    ),
    ("suspended", "Suspended", Some("Ready"), "Current"),
    ("suspended-refused", "Degraded", Some("Ready"), "Failed"),
    ("not-observed-yet", "Progressing", None, "InProgress"),
    ("no-status-yet", "Progressing", None, "InProgress"),
];

fn scenarios() -> Vec<Scenario> {
    let mut statuses = controller_statuses();
    // Two situations before the controller acted, made from a healthy one.
    let running = statuses
        .get("running")
        .expect("the running fixture")
        .clone();
    let mut behind = running.clone();
    behind["metadata"]["generation"] =
        json!(running["metadata"]["generation"].as_i64().unwrap() + 1);
    statuses.insert("not-observed-yet".into(), behind);
    let mut fresh = running;
    fresh.as_object_mut().unwrap().remove("status");
    statuses.insert("no-status-yet".into(), fresh);

    let expected: BTreeSet<&str> = EXPECTED.iter().map(|(case, ..)| *case).collect();
    let found: BTreeSet<&str> = statuses.keys().map(String::as_str).collect();
    assert_eq!(
        found, expected,
        "every status the controller tests keep needs its expected health here and in docs/gitops.md"
    );
    EXPECTED
        .iter()
        .map(|(case, argocd, message, flux)| Scenario {
            name: (*case).to_owned(),
            pipeline: statuses[*case].clone(),
            argocd,
            argocd_message: *message,
            flux,
        })
        .collect()
}

fn condition_message(pipeline: &Value, kind: &str) -> String {
    pipeline["status"]["conditions"]
        .as_array()
        .and_then(|conditions| conditions.iter().find(|c| c["type"] == kind))
        .and_then(|c| c["message"].as_str())
        .unwrap_or_else(|| panic!("no {kind} condition in {pipeline}"))
        .to_owned()
}

#[test]
fn argocd_health_follows_the_documented_mapping() {
    for scenario in scenarios() {
        let (health, message) = argocd_health(&scenario.pipeline);
        assert_eq!(health, scenario.argocd, "{}: {message}", scenario.name);
        if let Some(kind) = scenario.argocd_message {
            assert_eq!(
                message,
                condition_message(&scenario.pipeline, kind),
                "{}",
                scenario.name
            );
        }
    }
}

#[test]
fn argocd_health_script_runs_under_lua_5_4_with_the_same_answers() {
    for scenario in scenarios() {
        let (health, message) = lua54_health(&scenario.pipeline);
        assert_eq!(health, scenario.argocd, "{}: {message}", scenario.name);
        assert_eq!(
            (health, message),
            argocd_health(&scenario.pipeline),
            "{}: Lua 5.4 and 5.1 disagree",
            scenario.name
        );
    }
}

/// docs/gitops.md's table: `| `case` | ... | Argo CD | Flux |` rows.
#[test]
fn gitops_doc_table_says_what_each_tool_shows_in_each_case() {
    let doc = read("docs/gitops.md");
    let rows: BTreeMap<String, Vec<String>> = doc
        .lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|rest| {
            let (case, rest) = rest.split_once('`')?;
            let cells = rest
                .split('|')
                .map(|c| c.trim().to_owned())
                .collect::<Vec<_>>();
            Some((case.to_owned(), cells))
        })
        .collect();
    for scenario in scenarios() {
        let cells = rows
            .get(&scenario.name)
            .unwrap_or_else(|| panic!("docs/gitops.md has no row for `{}`", scenario.name));
        let cells: Vec<&str> = cells
            .iter()
            .map(String::as_str)
            .filter(|c| !c.is_empty())
            .collect();
        let argocd = cells[cells.len() - 2];
        let flux = cells[cells.len() - 1];
        assert!(
            argocd.starts_with(scenario.argocd),
            "docs/gitops.md `{}`: Argo CD shows {}, the page says {argocd:?}",
            scenario.name,
            scenario.argocd
        );
        assert!(
            flux.starts_with(scenario.flux),
            "docs/gitops.md `{}`: Flux shows {}, the page says {flux:?}",
            scenario.name,
            scenario.flux
        );
    }
}

/// The `healthCheckExprs` entry of the Flux Kustomization in docs/gitops.md.
fn flux_health_expressions() -> Value {
    let doc = read("docs/gitops.md");
    let block = doc
        .split("```yaml")
        .skip(1)
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
