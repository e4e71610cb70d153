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

// ---- What can never run is refused at apply (issue 16) ----------------------
//
// Each class below has manifests the CRD accepts and manifests it refuses,
// judged by `parse_pipeline`: the generated CRD's OpenAPI schema, then its CEL
// rules, as the API server judges them at `kubectl apply`.

use serde_json::{Value, json};

/// Applies a change to the valid manifest; panics if it is refused.
fn accept(edit: impl FnOnce(&mut Value)) {
    let mut document: Value = serde_yaml::from_str(VALID).unwrap();
    edit(&mut document);
    let yaml = serde_yaml::to_string(&document).unwrap();
    if let Err(e) = parse_pipeline(&yaml) {
        panic!("refused a valid manifest:\n{yaml}\n{e}");
    }
}

/// Sets the value at a JSON pointer such as `/spec/window/groupBy`, creating
/// objects on the way.
fn set(document: &mut Value, pointer: &str, value: Value) {
    let mut target = document;
    for segment in pointer.split('/').skip(1) {
        target = match segment.parse::<usize>() {
            Ok(index) => &mut target[index],
            Err(_) => &mut target[segment],
        };
    }
    *target = value;
}

/// Each value at `pointer` is refused, with a message naming `field`.
fn refuses_each(pointer: &str, field: &str, values: &[Value]) {
    for value in values {
        let e = refuse(|d| set(d, pointer, value.clone()));
        let text = e.to_string();
        assert!(
            text.contains(field),
            "{value} at {pointer}: the error should name {field}, got:\n{text}"
        );
    }
}

/// Each value at `pointer` is accepted.
fn accepts_each(pointer: &str, values: &[Value]) {
    for value in values {
        accept(|d| set(d, pointer, value.clone()));
    }
}

/// The valid manifest with a Kafka source instead of the generator.
fn with_kafka(d: &mut Value) {
    d["spec"]["source"] = json!({"kafka": {
        "bootstrapServers": "kafka:9092", "topics": ["events"], "consumerGroup": "g"}});
}

fn with_rest(d: &mut Value) {
    d["spec"]["source"] = json!({"rest": {"url": "https://api.example.com/events"}});
}

#[test]
fn empty_names_in_lists_are_refused() {
    let cases = [
        (
            "/spec/window/groupBy",
            "spec.window.groupBy[1]",
            json!(["event_type", ""]),
        ),
        (
            "/spec/source/generator/eventTypes",
            "spec.source.generator.eventTypes[0]",
            json!([""]),
        ),
        (
            "/spec/sinks/0",
            "spec.sinks[0].delta.partitionBy[0]",
            json!({"name": "lake", "delta": {"uri": "s3://lake/t", "partitionBy": [""]}}),
        ),
    ];
    for (pointer, field, value) in cases {
        refuses_each(pointer, field, &[value]);
    }
    let e = refuse(|d| {
        with_kafka(d);
        d["spec"]["source"]["kafka"]["topics"] = json!(["events", ""]);
    });
    assert_names(&e, "spec.source.kafka.topics[1]");
    accept(|d| {
        with_kafka(d);
        d["spec"]["source"]["kafka"]["topics"] = json!(["events", "clicks"]);
    });
    accepts_each(
        "/spec/source/generator/eventTypes",
        &[json!(["view", "click"])],
    );
}

#[test]
fn object_store_uris_need_a_scheme_the_runner_opens() {
    let bad = [
        json!("https://lake.example.com/t"),
        json!("gs://lake/t"),
        json!("az://lake/t"),
    ];
    let good = [
        json!("s3://lake/t"),
        json!("file:///data/t"),
        json!("/data/t"),
        json!("data/t"),
    ];
    refuses_each("/spec/checkpoint/uri", "spec.checkpoint.uri", &bad);
    accepts_each("/spec/checkpoint/uri", &good);
    for uri in &bad {
        refuses_each(
            "/spec/sinks/0",
            "spec.sinks[0].delta.uri",
            &[json!({"name": "lake", "delta": {"uri": uri}})],
        );
        refuses_each(
            "/spec/deadLetter",
            "spec.deadLetter.objectStore.uri",
            &[json!({"objectStore": {"uri": uri}})],
        );
    }
    for uri in &good {
        accepts_each(
            "/spec/sinks/0",
            &[json!({"name": "lake", "delta": {"uri": uri}})],
        );
        accepts_each("/spec/deadLetter", &[json!({"objectStore": {"uri": uri}})]);
    }
}

#[test]
fn service_urls_must_be_http() {
    let bad = [
        json!("clickhouse:8123"),
        json!("ftp://clickhouse:8123"),
        json!("http://"),
        json!("tcp://es:9200"),
    ];
    let good = [
        json!("http://clickhouse:8123"),
        json!("https://es.example.com:9200/prefix"),
    ];
    for url in &bad {
        refuses_each(
            "/spec/sinks/0",
            "spec.sinks[0].clickhouse.url",
            &[json!({"name": "ch", "clickhouse": {"url": url, "table": "t"}})],
        );
        refuses_each(
            "/spec/sinks/0",
            "spec.sinks[0].elasticsearch.url",
            &[json!({"name": "es", "elasticsearch": {"url": url, "index": "i"}})],
        );
        let e = refuse(|d| {
            with_rest(d);
            d["spec"]["source"]["rest"]["url"] = url.clone();
        });
        assert_names(&e, "spec.source.rest.url");
    }
    for url in &good {
        accepts_each(
            "/spec/sinks/0",
            &[json!({"name": "ch", "clickhouse": {"url": url, "table": "t"}})],
        );
        accepts_each(
            "/spec/sinks/0",
            &[json!({"name": "es", "elasticsearch": {"url": url, "index": "i"}})],
        );
        accept(|d| {
            with_rest(d);
            d["spec"]["source"]["rest"]["url"] = url.clone();
        });
    }
}

#[test]
fn elasticsearch_index_names_follow_its_rules() {
    let sink = |index: &str| json!({"name": "es", "elasticsearch": {"url": "http://es:9200", "index": index}});
    let too_long = "é".repeat(128); // 128 characters, 256 bytes
    let bad: Vec<Value> = [
        "Clicks",
        "ÉVÉNEMENTS",
        "clicks*",
        "a\\b",
        "a/b",
        "a?b",
        "a\"b",
        "a<b",
        "a>b",
        "a|b",
        "a b",
        "a,b",
        "a#b",
        "a:b",
        "-clicks",
        "_clicks",
        "+clicks",
        ".",
        "..",
        &too_long,
    ]
    .iter()
    .map(|index| sink(index))
    .collect();
    refuses_each("/spec/sinks/0", "spec.sinks[0].elasticsearch.index", &bad);
    let good: Vec<Value> = [
        "clicks",
        "clicks-2026.11.30",
        ".hidden",
        "événements",
        "a_b+c",
    ]
    .iter()
    .map(|index| sink(index))
    .collect();
    accepts_each("/spec/sinks/0", &good);
}

#[test]
fn numbers_and_durations_have_sane_bounds() {
    let refused = [
        (
            "/spec/source/generator/eventsPerSecond",
            "spec.source.generator.eventsPerSecond",
            json!(-1),
        ),
        (
            "/spec/source/generator/lateFraction",
            "spec.source.generator.lateFraction",
            json!(1.5),
        ),
        (
            "/spec/source/generator/lateFraction",
            "spec.source.generator.lateFraction",
            json!(-0.1),
        ),
        (
            "/spec/source/generator/eventSpacing",
            "spec.source.generator.eventSpacing",
            json!("0s"),
        ),
        (
            "/spec/window/idleTimeout",
            "spec.window.idleTimeout",
            json!("0s"),
        ),
        (
            "/spec/alerts",
            "spec.alerts.maxCheckpointAge",
            json!({"maxCheckpointAge": "0s"}),
        ),
        (
            "/spec/alerts",
            "spec.alerts.maxDeadLetterRate",
            json!({"maxDeadLetterRate": -1.0}),
        ),
        (
            "/spec/transforms",
            "spec.transforms[0].dedup.horizon",
            json!([{"dedup": {"idField": "id", "horizon": "0s"}}]),
        ),
        (
            "/spec/sinks/0",
            "spec.sinks[0].clickhouse.timeout",
            json!({"name": "ch", "clickhouse": {"url": "http://ch:8123", "table": "t", "timeout": "0s"}}),
        ),
        (
            "/spec/sinks/0",
            "spec.sinks[0].elasticsearch.timeout",
            json!({"name": "es", "elasticsearch": {"url": "http://es:9200", "index": "i", "timeout": "0ms"}}),
        ),
        // Finer than the runner's millisecond resolution.
        (
            "/spec/window/sliding",
            "spec.window.sliding.size",
            json!({"size": "500us", "slide": "100us"}),
        ),
        (
            "/spec/window/watermark",
            "spec.window.watermark",
            json!("1.0005s"),
        ),
        (
            "/spec/trigger",
            "spec.trigger.interval",
            json!({"interval": "100ns"}),
        ),
    ];
    for (pointer, field, value) in refused {
        refuses_each(pointer, field, &[value]);
    }
    for (field, value) in [
        ("maxRequestsPerSecond", json!(-0.5)),
        ("timeout", json!("0s")),
        ("pollInterval", json!("0s")),
    ] {
        let e = refuse(|d| {
            with_rest(d);
            d["spec"]["source"]["rest"][field] = value.clone();
        });
        assert_names(&e, &format!("spec.source.rest.{field}"));
    }
    // Zero where zero means something: start the next epoch at once,
    // checkpoint after every epoch, no out-of-orderness, no rate limit.
    accepts_each("/spec/trigger", &[json!({"interval": "0s"})]);
    accepts_each("/spec/checkpoint/interval", &[json!("0s")]);
    accepts_each(
        "/spec/window/watermark",
        &[json!("0s"), json!("1.5s"), json!("250ms")],
    );
    accepts_each("/spec/source/generator/eventsPerSecond", &[json!(0)]);
    accepts_each(
        "/spec/source/generator/lateFraction",
        &[json!(0.0), json!(1.0)],
    );
    accept(|d| {
        with_rest(d);
        d["spec"]["source"]["rest"]["maxRequestsPerSecond"] = json!(0.5);
    });
}

#[test]
fn resource_quantities_are_checked() {
    let resources = |memory: Value| json!({"resources": {"limits": {"memory": memory}, "requests": {"cpu": "500m"}}});
    for memory in [json!("lots"), json!("-1Gi"), json!("1 Gi"), json!("2GB")] {
        refuses_each(
            "/spec/runner",
            "spec.runner.resources.limits.memory",
            &[resources(memory)],
        );
    }
    for memory in [
        json!("2Gi"),
        json!("512M"),
        json!("1e9"),
        json!(1073741824),
        json!("0.5Gi"),
    ] {
        accepts_each("/spec/runner", &[resources(memory)]);
    }
}

#[test]
fn the_pipeline_name_must_fit_every_derived_object() {
    let longest = "p".repeat(52);
    accepts_each("/metadata/name", &[json!(longest), json!("clickstream-v2")]);
    let too_long = "p".repeat(53);
    for name in [
        json!(too_long),
        json!("click.stream"),
        json!("Clickstream"),
        json!("2clicks"),
        json!("clicks-"),
    ] {
        refuses_each("/metadata/name", "metadata.name", &[name]);
    }
}

#[test]
fn aggregation_names_must_not_collide_with_other_columns() {
    for name in ["window_start", "window_end", "event_type"] {
        refuses_each(
            "/spec/window/aggregations",
            "spec.window.aggregations",
            &[json!([{"name": name, "count": {}}])],
        );
    }
    // A nested group-by path becomes a column with `_` for `.`.
    let e = refuse(|d| {
        d["spec"]["window"]["groupBy"] = json!(["user.id"]);
        d["spec"]["window"]["aggregations"] = json!([{"name": "user_id", "count": {}}]);
    });
    assert_names(&e, "spec.window.aggregations");
    for group_by in [
        json!(["user.id", "user_id"]),
        json!(["window_end"]),
        json!(["a", "a"]),
    ] {
        refuses_each("/spec/window/groupBy", "spec.window.groupBy", &[group_by]);
    }
    accept(|d| {
        d["spec"]["window"]["groupBy"] = json!(["user.id", "event_type"]);
        d["spec"]["window"]["aggregations"] = json!([{"name": "events", "count": {}}, {"name": "user_count", "count": {"field": "user.id"}}]);
    });
}

#[test]
fn secrets_written_inline_are_refused() {
    for property in [
        "sasl.password",
        "sasl.jaas.config",
        "ssl.key.password",
        "ssl.keystore.password",
        "sasl.oauthbearer.client.secret",
    ] {
        let e = refuse(|d| {
            with_kafka(d);
            d["spec"]["source"]["kafka"]["properties"] =
                json!({"fetch.min.bytes": "1", property: "hunter2"});
        });
        assert_names(&e, "spec.source.kafka.properties");
        assert_names(&e, "sasl.secretRef");
    }
    accept(|d| {
        with_kafka(d);
        d["spec"]["source"]["kafka"]["properties"] =
            json!({"fetch.min.bytes": "1", "sasl.username": "app"});
    });
    for name in [
        "Authorization",
        "authorization",
        "Proxy-Authorization",
        "X-Api-Key",
    ] {
        let e = refuse(|d| {
            with_rest(d);
            d["spec"]["source"]["rest"]["headers"] = json!([{"name": "Accept", "value": "application/json"}, {"name": name, "value": "Bearer hunter2"}]);
        });
        assert_names(&e, "spec.source.rest.headers[1].value");
        assert_names(&e, "valueFrom");
    }
    accept(|d| {
        with_rest(d);
        d["spec"]["source"]["rest"]["headers"] = json!([
            {"name": "Accept", "value": "application/json"},
            {"name": "Authorization", "valueFrom": {"name": "api-token", "key": "header"}},
        ]);
    });
}

#[test]
fn an_event_hubs_namespace_is_the_name_alone() {
    let source = |namespace: &str| {
        json!({"eventHub": {"namespace": namespace, "eventHub": "orders",
            "connectionStringSecretRef": {"name": "eh", "key": "connection"}}})
    };
    refuses_each(
        "/spec/source",
        "spec.source.eventHub.namespace",
        &[
            source("shop.servicebus.windows.net"),
            source(&"n".repeat(51)),
        ],
    );
    accepts_each("/spec/source", &[source("shop-prod")]);
}

#[test]
fn a_dead_letter_topic_needs_brokers_when_the_source_has_none() {
    let e = refuse(|d| d["spec"]["deadLetter"] = json!({"kafka": {"topic": "dlq"}}));
    assert_names(&e, "spec.deadLetter.kafka");
    assert_names(&e, "bootstrapServers");
    accepts_each(
        "/spec/deadLetter",
        &[json!({"kafka": {"topic": "dlq", "bootstrapServers": "kafka:9092"}})],
    );
    accept(|d| {
        with_kafka(d);
        d["spec"]["deadLetter"] = json!({"kafka": {"topic": "dlq"}});
    });
}

/// The API server cannot compile a transform's CEL (it is a plain string to
/// it), so such a manifest is accepted at apply; the controller then reports
/// `Ready=False` (reason `InvalidExpression`) and the runner refuses to start,
/// both through `check_expressions`.
#[test]
fn a_transform_that_cannot_compile_is_found_before_anything_runs() {
    let mut document: Value = serde_yaml::from_str(VALID).unwrap();
    document["spec"]["transforms"] = json!([
        {"filter": "event_type != 'heartbeat'"},
        {"compute": {"field": "cents", "expression": "value * 100.0 +"}},
    ]);
    let pipeline = parse_pipeline(&serde_yaml::to_string(&document).unwrap()).unwrap();
    let invalid = sluice_crds::check_expressions(&pipeline.spec.transforms).unwrap_err();
    let text = invalid.to_string();
    assert!(
        text.starts_with("spec.transforms[1].compute.expression: invalid CEL expression"),
        "{text}"
    );
    assert!(!text.contains("transforms[0]"), "{text}");

    document["spec"]["transforms"] = json!([{"filter": "event_type != 'heartbeat'"}]);
    let pipeline = parse_pipeline(&serde_yaml::to_string(&document).unwrap()).unwrap();
    assert_eq!(
        sluice_crds::check_expressions(&pipeline.spec.transforms),
        Ok(())
    );
}

#[test]
fn parallelism_is_bounded_by_key_groups_and_by_what_key_groups_can_run() {
    let kafka = json!({"kafka": {"bootstrapServers": "kafka:9092", "topics": ["events"], "consumerGroup": "g"}});
    accept(|d| {
        d["spec"]["source"] = kafka.clone();
        d["spec"]["parallelism"] = json!(4);
        d["spec"]["keyGroups"] = json!(4);
    });
    let e = refuse(|d| {
        d["spec"]["parallelism"] = json!(5);
        d["spec"]["keyGroups"] = json!(4);
    });
    assert_names(&e, "spec.parallelism must be at most spec.keyGroups");
    refuses_each(
        "/spec/keyGroups",
        "spec.keyGroups",
        &[json!(0), json!(5000)],
    );
    let e = refuse(|d| {
        d["spec"]["source"] = kafka.clone();
        d["spec"]["parallelism"] = json!(2);
        if let Some(window) = d["spec"]["window"].as_object_mut() {
            window.remove("sliding");
        }
        d["spec"]["window"]["session"] = json!({"gap": "5m"});
    });
    assert_names(&e, "session windows over Kafka run on one replica");
    let e = refuse(|d| {
        d["spec"]["source"] = json!({"eventHub": {"namespace": "ns", "eventHub": "events", "consumerGroup": "g", "connectionStringSecretRef": {"name": "eh", "key": "conn"}}});
        d["spec"]["parallelism"] = json!(2);
    });
    assert_names(&e, "windows over Event Hubs run on one replica");
}
