//! Manifests are checked the way the API server checks them: the examples
//! parse, and invalid ones are refused with a message naming the field.

use std::path::Path;

use sluice_crds::{ManifestError, parse_pipeline};

fn examples() -> Vec<std::path::PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("examples/ exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_example_is_a_valid_pipeline() {
    let files = examples();
    assert!(
        files.len() >= 4,
        "expected at least four examples, found {files:?}"
    );
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        if let Err(e) = parse_pipeline(&text) {
            panic!("{} is invalid: {e}", file.display());
        }
    }
}

#[test]
fn the_kafka_example_is_the_reference_query() {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/kafka-to-delta.yaml"),
    )
    .unwrap();
    let pipeline = parse_pipeline(&text).unwrap();
    let window = pipeline.spec.window.expect("a window");
    let sliding = window.sliding.expect("a sliding window");
    assert_eq!(sliding.size, "5m".parse().unwrap());
    assert_eq!(sliding.slide, "1m".parse().unwrap());
    assert_eq!(window.watermark, "2m".parse().unwrap());
    assert_eq!(window.group_by, ["event_type"]);
    assert!(window.aggregations[0].count.is_some());
    assert!(pipeline.spec.sinks[0].delta.is_some());
    assert!(pipeline.spec.source.kafka.is_some());
}

const VALID: &str = r#"
apiVersion: sluice.dev/v1alpha1
kind: StreamPipeline
metadata: {name: t}
spec:
  source:
    generator: {}
  window:
    sliding: {size: 5m, slide: 1m}
    watermark: 2m
    groupBy: [event_type]
    aggregations: [{name: n, count: {}}]
  sinks: [{name: out, stdout: {}}]
  checkpoint: {uri: s3://bucket/prefix}
"#;

/// Applies a change to the valid manifest and returns the refusal.
fn refuse(edit: impl FnOnce(&mut serde_json::Value)) -> ManifestError {
    let mut document: serde_json::Value = serde_yaml::from_str(VALID).unwrap();
    edit(&mut document);
    let yaml = serde_yaml::to_string(&document).unwrap();
    match parse_pipeline(&yaml) {
        Ok(_) => panic!("accepted an invalid manifest:\n{yaml}"),
        Err(e) => e,
    }
}

fn assert_names(error: &ManifestError, field: &str) {
    let text = error.to_string();
    assert!(
        text.contains(field),
        "the error should name {field}, got:\n{text}"
    );
}

#[test]
fn the_baseline_manifest_is_valid() {
    let pipeline = parse_pipeline(VALID).unwrap();
    assert_eq!(pipeline.spec.parallelism, 1);
    assert_eq!(pipeline.spec.checkpoint.interval, "10s".parse().unwrap());
}

#[test]
fn two_sources_are_refused() {
    let e = refuse(|d| d["spec"]["source"]["file"] = serde_json::json!({"path": "/data"}));
    assert_names(&e, "exactly one of source.kafka");
    assert_names(&e, "spec.source");
}

#[test]
fn no_source_is_refused() {
    let e = refuse(|d| d["spec"]["source"] = serde_json::json!({}));
    assert_names(&e, "spec.source");
}

#[test]
fn slide_larger_than_size_is_refused() {
    let e = refuse(|d| {
        d["spec"]["window"]["sliding"] = serde_json::json!({"size": "1m", "slide": "5m"})
    });
    assert_names(&e, "spec.window.sliding.slide");
}

#[test]
fn zero_sinks_are_refused() {
    let e = refuse(|d| d["spec"]["sinks"] = serde_json::json!([]));
    assert_names(&e, "spec.sinks");
}

#[test]
fn a_bad_duration_is_refused() {
    let e = refuse(|d| d["spec"]["window"]["watermark"] = serde_json::json!("two minutes"));
    assert_names(&e, "spec.window.watermark");
}

#[test]
fn zero_parallelism_is_refused() {
    let e = refuse(|d| d["spec"]["parallelism"] = serde_json::json!(0));
    assert_names(&e, "spec.parallelism");
}

#[test]
fn duplicate_sink_names_are_refused() {
    let e = refuse(|d| {
        d["spec"]["sinks"] =
            serde_json::json!([{"name": "a", "stdout": {}}, {"name": "a", "stdout": {}}])
    });
    assert_names(&e, "sink names must be unique");
}

#[test]
fn a_sink_with_two_targets_is_refused() {
    let e = refuse(|d| d["spec"]["sinks"][0]["delta"] = serde_json::json!({"uri": "/tmp/t"}));
    assert_names(&e, "spec.sinks[0]");
}

#[test]
fn an_unknown_checkpoint_scheme_is_refused() {
    let e = refuse(|d| d["spec"]["checkpoint"]["uri"] = serde_json::json!("hdfs://nn/checkpoints"));
    assert_names(&e, "spec.checkpoint.uri");
}

#[test]
fn window_results_need_a_window() {
    let e = refuse(|d| {
        d["spec"].as_object_mut().unwrap().remove("window");
    });
    assert_names(&e, "spec.window is required");
}

#[test]
fn an_unknown_aggregation_field_type_is_refused() {
    let e = refuse(|d| d["spec"]["window"]["aggregations"] = serde_json::json!([{"name": "n"}]));
    assert_names(&e, "spec.window.aggregations[0]");
}

#[test]
fn another_kind_is_refused() {
    let e = parse_pipeline(&VALID.replace("kind: StreamPipeline", "kind: Deployment")).unwrap_err();
    assert!(matches!(e, ManifestError::WrongKind { .. }), "{e}");
}
