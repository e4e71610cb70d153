//! The Elasticsearch sink against a real OpenSearch-compatible server
//! (osmem-server): deterministic ids make a replay overwrite, identities over
//! the 512-byte id limit are indexed, an event that does not fit the index
//! mapping goes to the dead-letter output while the rest is written, and a
//! window row that does not fit fails the epoch with the server's reason.
//! Faults a real server cannot be made to show (items refused with 429/503,
//! a whole request failing, the headers sent) use the scripted `_bulk`
//! stand-in, which also checks the NDJSON protocol and `batchRows`.

use std::{sync::Arc, time::Duration};

use arrow::{
    array::{ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray},
    datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit},
};
use serde_json::json;
use sluice_crds::{ElasticsearchSink as ElasticsearchSpec, SinkInput};
use sluice_runner::{
    http::RetryPolicy,
    pipeline::{Pipeline, RunnerIdentity},
    secrets::Secrets,
    sink::{ElasticsearchSink, EpochKey, Lane, Sink, WriteOutcome},
    telemetry::{SinkMetrics, Telemetry},
};
use sluice_tests::{
    elasticsearch::{Elasticsearch, ItemFailure},
    opensearch::OpenSearch,
};

/// 2026-11-24T10:00:00Z in microseconds.
const START_MICROS: i64 = 1_795_514_400_000_000;
const MINUTE_MICROS: i64 = 60_000_000;

fn window_schema() -> SchemaRef {
    let time = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    Arc::new(Schema::new(vec![
        Field::new("window_start", time.clone(), false),
        Field::new("window_end", time, false),
        Field::new("user_id", DataType::Utf8, true),
        Field::new("events", DataType::Int64, false),
    ]))
}

/// One minute window per user `users`, counting `users[i]` events.
fn window_rows(users: &[&str]) -> RecordBatch {
    let n = users.len();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(TimestampMicrosecondArray::from(vec![START_MICROS; n]).with_timezone("UTC")),
        Arc::new(
            TimestampMicrosecondArray::from(vec![START_MICROS + MINUTE_MICROS; n])
                .with_timezone("UTC"),
        ),
        Arc::new(StringArray::from(users.to_vec())),
        Arc::new(Int64Array::from((1..=n as i64).collect::<Vec<_>>())),
    ];
    RecordBatch::try_new(window_schema(), columns).unwrap()
}

fn es_sink(url: &str, extra: serde_json::Value, secrets: &Secrets) -> ElasticsearchSink {
    let mut spec = json!({"url": url, "index": "sessions", "batchRows": 3});
    spec.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    let spec: ElasticsearchSpec = serde_json::from_value(spec).unwrap();
    let metrics = SinkMetrics::register(&prometheus::Registry::new()).unwrap();
    ElasticsearchSink::new(
        "search",
        SinkInput::Windows,
        &spec,
        secrets,
        metrics.meter("search"),
    )
    .unwrap()
    .with_retry(RetryPolicy {
        min: Duration::from_millis(10),
        max: Duration::from_millis(50),
        attempts: Some(5),
    })
}

fn key(epoch: u64) -> EpochKey {
    EpochKey {
        pipeline: "uid-1".into(),
        lane: Lane::replica(0),
        epoch,
        sink: "search".into(),
    }
}

const USERS: [&str; 7] = ["ann", "bob", "cy", "dee", "eve", "fay", "gus"];

#[tokio::test]
async fn documents_get_deterministic_ids_and_a_replay_overwrites_them() {
    let es = OpenSearch::start();
    let mut sink = es_sink(es.url(), json!({}), &Secrets::in_dir("/nonexistent"));
    sink.open(window_schema()).await.unwrap();
    let rows = window_rows(&USERS);
    assert_eq!(
        sink.write_epoch(&key(4), std::slice::from_ref(&rows))
            .await
            .unwrap(),
        WriteOutcome::all(7)
    );
    let documents = es.documents("sessions").await;
    assert_eq!(documents.len(), 7);
    let id = "uid-1/2026-11-24T10:00:00Z/2026-11-24T10:01:00Z/cy";
    let cy = &documents[id];
    assert_eq!(cy.source["user_id"], "cy");
    assert_eq!(cy.source["events"], 3);
    assert_eq!(cy.source["window_start"], "2026-11-24T10:00:00Z");

    sink.write_epoch(&key(4), &[rows]).await.unwrap();
    let replayed = es.documents("sessions").await;
    assert_eq!(replayed.len(), 7, "a replay adds no document");
    assert!(
        replayed.values().all(|d| d.version == 2),
        "a replay overwrites"
    );
}

#[tokio::test]
async fn rows_with_identities_over_512_bytes_are_indexed_under_a_bounded_id() {
    let es = OpenSearch::start();
    let mut sink = es_sink(es.url(), json!({}), &Secrets::in_dir("/nonexistent"));
    sink.open(window_schema()).await.unwrap();
    let long = ["ü".repeat(300), format!("{}b", "ü".repeat(300))];
    let rows = window_rows(&[&long[0], &long[1], "ann"]);
    assert_eq!(
        sink.write_epoch(&key(1), std::slice::from_ref(&rows))
            .await
            .unwrap(),
        WriteOutcome::all(3)
    );
    // A replay lands on the same documents.
    sink.write_epoch(&key(1), &[rows]).await.unwrap();
    let documents = es.documents("sessions").await;
    assert_eq!(documents.len(), 3, "{:?}", documents.keys());
    assert!(documents.keys().all(|id| id.len() <= 512));
    for user in &long {
        let (_, document) = documents
            .iter()
            .find(|(_, d)| d.source["user_id"] == user.as_str())
            .expect("the long group value is in its document, in full");
        assert_eq!(document.version, 2, "the replay overwrote it");
    }
}

#[tokio::test]
async fn items_refused_with_429_or_503_are_sent_again_until_indexed() {
    let es = Elasticsearch::start().await;
    let mut sink = es_sink(es.url(), json!({}), &Secrets::in_dir("/nonexistent"));
    sink.open(window_schema()).await.unwrap();
    let id = |user: &str| format!("uid-1/2026-11-24T10:00:00Z/2026-11-24T10:01:00Z/{user}");
    es.fail_item(&id("bob"), ItemFailure::Rejected, 2);
    es.fail_item(&id("fay"), ItemFailure::Unavailable, 1);
    es.fail_next_request(503);
    sink.write_epoch(&key(0), &[window_rows(&USERS)])
        .await
        .unwrap();

    let documents = es.documents("sessions");
    assert_eq!(documents.len(), 7, "every document indexed in the end");
    assert!(
        documents.values().all(|d| d.version == 1),
        "nothing was indexed twice"
    );
    let requests = es.requests();
    assert!(requests.iter().all(|r| r.protocol_error.is_none()));
    assert!(
        requests.iter().all(|r| r.actions <= 3),
        "requests stay within batchRows"
    );
    let sent: Vec<Vec<String>> = requests.into_iter().map(|r| r.ids).collect();
    let resent_bob = sent.iter().flatten().filter(|i| **i == id("bob")).count();
    assert_eq!(
        resent_bob, 4,
        "bob: first request failed whole, then 2 refusals, then indexed: {sent:?}"
    );
    // The whole failed first request is sent again, then only refused documents.
    assert_eq!(sent[3], sent[0]);
    assert!(
        sent.iter()
            .skip(4)
            .all(|ids| ids.iter().all(|i| *i == id("bob") || *i == id("fay"))),
        "{sent:?}"
    );
}

#[tokio::test]
async fn window_rows_that_can_never_be_indexed_fail_the_epoch_with_the_reason() {
    // The index maps user ids as numbers: "dee" cannot be one.
    let es = OpenSearch::start();
    es.create_index(
        "sessions",
        json!({"properties": {"user_id": {"type": "long"}}}),
    )
    .await;
    let mut sink = es_sink(es.url(), json!({}), &Secrets::in_dir("/nonexistent"));
    let id = "uid-1/2026-11-24T10:00:00Z/2026-11-24T10:01:00Z/dee";
    let error = sink
        .write_epoch(&key(0), &[window_rows(&["11", "12", "dee", "14"])])
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains(id), "{error}");
    assert!(
        error.contains("400 mapper_parsing_exception: failed to parse field [user_id]"),
        "{error}"
    );

    // Retryable refusals that never stop give up with a count, not silence.
    let es = Elasticsearch::start().await;
    let mut sink = es_sink(es.url(), json!({}), &Secrets::in_dir("/nonexistent"));
    es.fail_item(id, ItemFailure::Rejected, usize::MAX);
    let error = sink
        .write_epoch(&key(0), &[window_rows(&USERS)])
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("1 documents still refused after 6 attempts"),
        "{error}"
    );
}

#[tokio::test]
async fn credentials_come_from_secrets_and_never_show_in_errors() {
    let es = Elasticsearch::start().await;
    let secrets = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(secrets.path().join("es-writer")).unwrap();
    std::fs::write(
        secrets.path().join("es-writer/api-key"),
        "a2V5OnNlY3JldA==\n",
    )
    .unwrap();
    let mut sink = es_sink(
        es.url(),
        json!({"apiKeySecretRef": {"name": "es-writer", "key": "api-key"}}),
        &Secrets::in_dir(secrets.path()),
    );
    sink.write_epoch(&key(0), &[window_rows(&USERS[..2])])
        .await
        .unwrap();
    assert_eq!(
        es.requests()[0].authorization.as_deref(),
        Some("ApiKey a2V5OnNlY3JldA==")
    );

    es.fail_next_request(400);
    let error = sink
        .write_epoch(&key(1), &[window_rows(&USERS[..2])])
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("400") && error.contains("scripted failure"),
        "{error}"
    );
    assert!(!error.contains("a2V5OnNlY3JldA"), "{error}");
}

/// A user's event with a field the index maps as a number holding text is
/// bad input: it lands in the dead-letter output with the server's reason
/// and its source position, and every other event is indexed.
#[tokio::test]
async fn events_that_do_not_fit_the_mapping_are_dead_lettered_and_the_rest_indexed() {
    let es = OpenSearch::start();
    es.create_index(
        "events",
        json!({"properties": {"event": {"properties": {"value": {"type": "long"}}}}}),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("events.jsonl");
    let bad = [17, 33];
    let lines: Vec<String> = (0..40)
        .map(|i| {
            let value = if bad.contains(&i) {
                json!("ten")
            } else {
                json!(i)
            };
            json!({"ts": format!("2026-11-24T10:00:{i:02}Z"), "n": i, "value": value}).to_string()
        })
        .collect();
    std::fs::write(&data, lines.join("\n") + "\n").unwrap();
    let checkpoints = dir.path().join("checkpoints");
    let manifest = format!(
        r#"apiVersion: sluice.dev/v1alpha1
kind: StreamPipeline
metadata: {{name: refusals}}
spec:
  source:
    file: {{path: "{data}", maxLinesPerTrigger: 15}}
  format:
    json: {{timestampField: ts}}
  sinks:
    - name: search
      input: events
      elasticsearch: {{url: "{url}", index: events, batchRows: 8}}
  checkpoint: {{uri: "{checkpoints}", interval: 0s}}
  trigger: {{interval: 0s}}
"#,
        data = data.display(),
        url = es.url(),
        checkpoints = checkpoints.display(),
    );
    let spec = sluice_crds::parse_pipeline(&manifest).unwrap().spec;
    let identity = RunnerIdentity {
        pipeline: "uid-1".into(),
        replica: 0,
        replicas: 1,
        repartition_topic: String::new(),
        generation: 0,
    };
    let telemetry = Arc::new(Telemetry::new(0, 1).unwrap());
    let pipeline = Pipeline::from_spec(&spec, identity, telemetry).unwrap();
    let (_stop, stop) = tokio::sync::watch::channel(false);
    let summary = pipeline.run(stop).await.unwrap();
    assert_eq!(summary.counts.refused, 2);

    let mut indexed: Vec<i64> = es
        .documents("events")
        .await
        .values()
        .map(|d| d.source["event"]["n"].as_i64().unwrap())
        .collect();
    indexed.sort_unstable();
    let expected: Vec<i64> = (0..40).filter(|i| !bad.contains(i)).collect();
    assert_eq!(indexed, expected);

    let mut dead = Vec::new();
    for file in std::fs::read_dir(checkpoints.join("dead-letter/replica-0")).unwrap() {
        let text = std::fs::read_to_string(file.unwrap().path()).unwrap();
        dead.extend(
            text.lines()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()),
        );
    }
    dead.sort_by_key(|d| d["offset"].as_i64());
    assert_eq!(dead.len(), 2, "{dead:?}");
    for (line, entry) in bad.iter().zip(&dead) {
        assert_eq!(entry["reason"], "refused");
        let detail = entry["detail"].as_str().unwrap();
        assert!(
            detail.starts_with(
                "sink search: 400 mapper_parsing_exception: failed to parse field [event.value]"
            ),
            "{detail}"
        );
        let offset: usize = lines[..*line as usize].iter().map(|l| l.len() + 1).sum();
        assert_eq!(entry["offset"], offset as i64);
        let event: serde_json::Value =
            serde_json::from_str(entry["payload"].as_str().unwrap()).unwrap();
        assert_eq!(event["n"], *line);
    }
}
