//! The checked-in CRD must be exactly what the Rust types generate.

#[test]
fn checked_in_crd_matches_the_types() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/streampipeline.yaml");
    let checked_in = std::fs::read_to_string(path).expect("crds/streampipeline.yaml exists");
    let generated = sluice_crds::crd_yaml().expect("the CRD serializes");
    assert!(
        checked_in == generated,
        "crds/streampipeline.yaml is stale; regenerate it with \
         `cargo run -p sluice-crds --bin crdgen > crds/streampipeline.yaml`"
    );
}

#[test]
fn crd_has_the_documented_names_and_columns() {
    let crd: serde_json::Value = serde_yaml::from_str(&sluice_crds::crd_yaml().unwrap()).unwrap();
    assert_eq!(crd["metadata"]["name"], "streampipelines.sluice.dev");
    assert_eq!(
        crd["spec"]["names"]["shortNames"],
        serde_json::json!(["sp", "spipe"])
    );
    let version = &crd["spec"]["versions"][0];
    assert_eq!(version["subresources"]["status"], serde_json::json!({}));
    let columns: Vec<&str> = version["additionalPrinterColumns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    for column in ["Phase", "Lag", "Events/s", "Age"] {
        assert!(columns.contains(&column), "missing printer column {column}");
    }
}

/// Every field needs a description: it is the `kubectl explain` text.
#[test]
fn every_spec_field_is_documented() {
    fn walk(path: &str, schema: &serde_json::Value, undocumented: &mut Vec<String>) {
        if let Some(properties) = schema["properties"].as_object() {
            for (name, property) in properties {
                let child = format!("{path}.{name}");
                // Fields of Kubernetes' own types (resources, tolerations) are documented upstream.
                let upstream =
                    path.contains("runner.resources") || path.contains("runner.tolerations");
                if property.get("description").is_none() && !upstream {
                    undocumented.push(child.clone());
                }
                walk(&child, property, undocumented);
            }
        }
        if let Some(items) = schema.get("items") {
            walk(&format!("{path}[]"), items, undocumented);
        }
    }
    let crd: serde_json::Value = serde_yaml::from_str(&sluice_crds::crd_yaml().unwrap()).unwrap();
    let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"];
    let mut undocumented = Vec::new();
    walk("spec", &schema["spec"], &mut undocumented);
    walk("status", &schema["status"], &mut undocumented);
    assert!(
        undocumented.is_empty(),
        "fields without a doc comment: {undocumented:#?}"
    );
}

/// The API server refuses a CRD whose CEL rules could exceed its cost budget,
/// and estimates the cost from the schema: a list, map or string without
/// `maxItems`, `maxProperties` or `maxLength` counts as big as a whole request.
/// So every value a rule reads must be bounded (an enum string is), and so
/// must every list or map that holds a rule: the rule runs once per element.
#[test]
fn every_cel_rule_reads_only_bounded_values() {
    let crd: Value = serde_yaml::from_str(&sluice_crds::crd_yaml().unwrap()).unwrap();
    let root = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    let mut rules = Vec::new();
    collect_rules("", root, None, &mut rules);
    assert!(rules.len() > 30, "found only {} rules", rules.len());
    let mut problems = Vec::new();
    for (path, node, rule, unbounded_container) in &rules {
        if let Some(container) = unbounded_container {
            problems.push(format!(
                "{path}: rule `{rule}` runs once per element of {container}"
            ));
        }
        let program = cel::Program::compile(rule)
            .unwrap_or_else(|e| panic!("the rule at {path:?} does not parse: {rule}\n{e}"));
        let mut reads = Vec::new();
        let scope = vec![("self".to_owned(), Read::Schema(path.clone(), node))];
        walk(&program.expression().expr, &scope, &mut reads);
        for read in reads {
            if let Some(problem) = unbounded(&read) {
                problems.push(format!("{path}: rule `{rule}` reads {problem}"));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "unbounded CEL inputs:\n{}",
        problems.join("\n")
    );
}

use cel::common::ast::{EntryExpr, Expr};
use serde_json::Value;

/// A rule: the path and schema of its `self`, its text, and the innermost
/// list or map without a size bound that holds it, if any.
type FoundRule<'a> = (String, &'a Value, String, Option<String>);

/// Every `x-kubernetes-validations` rule under `node`.
fn collect_rules<'a>(
    path: &str,
    node: &'a Value,
    unbounded_container: Option<String>,
    rules: &mut Vec<FoundRule<'a>>,
) {
    for rule in node["x-kubernetes-validations"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let text = rule["rule"].as_str().unwrap().to_owned();
        rules.push((path.to_owned(), node, text, unbounded_container.clone()));
    }
    for (name, child) in node["properties"].as_object().into_iter().flatten() {
        collect_rules(
            &format!("{path}.{name}"),
            child,
            unbounded_container.clone(),
            rules,
        );
    }
    let elements = [
        ("items", "maxItems", "[]"),
        ("additionalProperties", "maxProperties", "{}"),
    ];
    for (key, bound, suffix) in elements {
        if let Some(element) = node.get(key).filter(|v| v.is_object()) {
            let container = match node.get(bound) {
                Some(_) => unbounded_container.clone(),
                None => Some(format!("{path} (no {bound})")),
            };
            collect_rules(&format!("{path}{suffix}"), element, container, rules);
        }
    }
}

/// What an expression evaluates to, as far as the schema tells.
#[derive(Clone)]
enum Read<'a> {
    /// A value of the object, with its path and schema.
    Schema(String, &'a Value),
    /// A name the schema does not describe.
    Unknown(String),
    /// A literal, or a value computed by the rule: bounded by the rule itself.
    Computed,
}

/// Resolves `expr` and records every value of the object it reads.
fn walk<'a>(expr: &Expr, scope: &[(String, Read<'a>)], reads: &mut Vec<Read<'a>>) -> Read<'a> {
    let read = match expr {
        Expr::Ident(name) => scope
            .iter()
            .rev()
            .find(|(bound, _)| bound == name)
            .map_or(Read::Unknown(name.clone()), |(_, read)| read.clone()),
        Expr::Select(select) => {
            let operand = walk(&select.operand.expr, scope, reads);
            let field = match operand {
                Read::Schema(path, node) => {
                    let path = format!("{path}.{}", select.field);
                    match node["properties"].get(&select.field) {
                        Some(child) => Read::Schema(path, child),
                        None => Read::Unknown(path),
                    }
                }
                Read::Unknown(path) => Read::Unknown(format!("{path}.{}", select.field)),
                Read::Computed => Read::Computed,
            };
            if select.test {
                // `has(x.f)` looks up a key; it reads no value.
                return Read::Computed;
            }
            field
        }
        Expr::Call(call) => {
            if let Some(target) = &call.target {
                walk(&target.expr, scope, reads);
            }
            let args: Vec<Read> = call
                .args
                .iter()
                .map(|a| walk(&a.expr, scope, reads))
                .collect();
            match (call.func_name.as_str(), args.first()) {
                // `list[i]` or `map[key]`: an element.
                ("_[_]", Some(Read::Schema(path, node))) => node
                    .get("items")
                    .or_else(|| node.get("additionalProperties"))
                    .map_or(Read::Computed, |e| Read::Schema(format!("{path}[]"), e)),
                _ => Read::Computed,
            }
        }
        Expr::Comprehension(comprehension) => {
            let range = walk(&comprehension.iter_range.expr, scope, reads);
            let element = match &range {
                Read::Schema(path, node) => match node.get("items") {
                    Some(items) => Read::Schema(format!("{path}[]"), items),
                    // Iterating a map binds its keys.
                    None => Read::Unknown(format!("{path} keys")),
                },
                _ => Read::Computed,
            };
            let mut inner = scope.to_vec();
            inner.push((comprehension.iter_var.clone(), element));
            inner.push((comprehension.accu_var.clone(), Read::Computed));
            for part in [
                &comprehension.accu_init,
                &comprehension.loop_cond,
                &comprehension.loop_step,
                &comprehension.result,
            ] {
                walk(&part.expr, &inner, reads);
            }
            Read::Computed
        }
        Expr::List(list) => {
            for element in &list.elements {
                walk(&element.expr, scope, reads);
            }
            Read::Computed
        }
        Expr::Map(map) => {
            for entry in &map.entries {
                if let EntryExpr::MapEntry(entry) = &entry.expr {
                    walk(&entry.key.expr, scope, reads);
                    walk(&entry.value.expr, scope, reads);
                }
            }
            Read::Computed
        }
        _ => Read::Computed,
    };
    if !matches!(read, Read::Computed) {
        reads.push(read.clone());
    }
    read
}

/// Why a value a rule reads has no bound the API server can use, if it has none.
fn unbounded(read: &Read) -> Option<String> {
    let (path, node) = match read {
        Read::Computed => return None,
        // The API server adds `metadata` to the schema rules see, with the
        // name bounded (253 characters).
        Read::Unknown(path) if path == ".metadata" || path == ".metadata.name" => return None,
        Read::Unknown(path) => return Some(format!("{path}, which the schema does not describe")),
        Read::Schema(path, node) => (path, node),
    };
    let bound = match node["type"].as_str() {
        Some("array") => "maxItems",
        Some("string") if node.get("enum").is_some() => return None,
        Some("string") => "maxLength",
        Some("object")
            if node
                .get("additionalProperties")
                .is_some_and(Value::is_object) =>
        {
            "maxProperties"
        }
        _ => return None,
    };
    node.get(bound)
        .is_none()
        .then(|| format!("{path} without {bound}"))
}
