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
