//! The REST source against a local API that paginates, rate-limits (429 with
//! `Retry-After`) and fails transiently (503s, answers slower than the
//! client's timeout): every event is read exactly once, in order, across
//! epochs, a feed that keeps growing, a replay by a fresh source, and a
//! restart of the runner binary.

use crate::common::{self, poll_until};
use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use sluice_crds::RestSource as RestSpec;
use sluice_runner::{
    secrets::Secrets,
    source::{Planned, Positions, RestSource, Source, SourceContext},
    telemetry::{RequestMeter, Telemetry},
};
use sluice_tests::{
    opensearch::OpenSearch,
    rest_api::{Faults, RestApi, ScriptedResponse},
};

const DEADLINE: Duration = Duration::from_secs(120);

fn event(id: u64) -> Value {
    // One event per second from 2026-11-24T10:00:00Z, three kinds in turn.
    let kind = ["a", "b", "c"][(id % 3) as usize];
    json!({"id": id, "ts": common::START + id as i64 * 1000, "kind": kind})
}

fn events(ids: std::ops::Range<u64>) -> Vec<Value> {
    ids.map(event).collect()
}

fn faults() -> Faults {
    Faults {
        max_requests_per_second: Some(8),
        retry_after_secs: 1,
        fail_every: Some(5),
        slow_every: Some(7),
        slow_delay: Duration::from_secs(2),
    }
}

fn spec(value: Value) -> RestSpec {
    serde_json::from_value(value).expect("REST source spec")
}

fn cursor_spec(api: &RestApi) -> RestSpec {
    spec(json!({
        "url": format!("{}/cursor?limit=7", api.url()),
        "eventsPath": "data.events",
        "pagination": {"cursor": {"param": "after", "responsePath": "data.next_cursor"}},
        "pollInterval": "100ms",
        "timeout": "500ms",
    }))
}

fn context(max_records_per_epoch: i64) -> SourceContext {
    SourceContext {
        replica: 0,
        replicas: 1,
        max_records_per_epoch,
        max_bytes_per_epoch: i64::MAX,
    }
}

/// A meter of its own for each source a test makes.
fn requests() -> RequestMeter {
    Telemetry::new(0, 1).expect("telemetry").source_requests
}

/// A source over `spec` with no mounted secrets and a meter of its own.
fn source(spec: &RestSpec, max_records_per_epoch: i64) -> RestSource {
    RestSource::new(
        spec,
        &context(max_records_per_epoch),
        &Secrets::in_dir("/nonexistent"),
        requests(),
    )
    .expect("REST source")
}

/// One epoch read like the runner reads it: what it read and rejected.
#[derive(Default)]
struct Read {
    events: Vec<(i64, Value)>,
    rejected: Vec<String>,
}

async fn run_epoch(source: &mut RestSource, committed: &mut Positions, read: &mut Read) -> bool {
    let Planned::Ranges(ranges) = source.plan(committed).await.expect("plan") else {
        panic!("a REST source is never exhausted");
    };
    if ranges.iter().all(|r| r.is_empty()) {
        return false;
    }
    source.start_epoch(&ranges).await.expect("start epoch");
    while let Some(chunk) = source.next_chunk().await.expect("chunk") {
        for record in chunk.iter() {
            read.events.push((
                record.offset,
                serde_json::from_slice(record.payload).unwrap(),
            ));
        }
        read.rejected
            .extend(chunk.rejected().map(|r| r.reason.to_owned()));
    }
    for range in ranges {
        committed.insert(range.partition, range.end);
    }
    true
}

/// Runs epochs until `n` events were read (or the deadline passes).
async fn read_until(source: &mut RestSource, committed: &mut Positions, read: &mut Read, n: usize) {
    let deadline = Instant::now() + DEADLINE;
    while read.events.len() < n {
        assert!(
            Instant::now() < deadline,
            "read only {} of {n} events",
            read.events.len()
        );
        run_epoch(source, committed, read).await;
    }
}

fn assert_exactly(read: &Read, n: u64) {
    let ids: Vec<u64> = read
        .events
        .iter()
        .map(|(_, e)| e["id"].as_u64().unwrap())
        .collect();
    assert_eq!(
        ids,
        (0..n).collect::<Vec<_>>(),
        "every event once, in order"
    );
    let offsets: Vec<i64> = read.events.iter().map(|(offset, _)| *offset).collect();
    assert_eq!(
        offsets,
        (0..n as i64).collect::<Vec<_>>(),
        "offsets count the events"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursor_pages_are_read_once_through_rate_limits_errors_and_timeouts() {
    let api = RestApi::start(Faults {
        max_requests_per_second: Some(3),
        ..faults()
    })
    .await;
    api.push(events(0..60));
    let meter = requests();
    let mut source = RestSource::new(
        &cursor_spec(&api),
        &context(25),
        &Secrets::in_dir("/nonexistent"),
        meter.clone(),
    )
    .unwrap();
    let (mut committed, mut read) = (Positions::new(), Read::default());
    read_until(&mut source, &mut committed, &mut read, 60).await;
    // The feed grows while the source polls.
    api.push(events(60..75));
    read_until(&mut source, &mut committed, &mut read, 75).await;
    assert_exactly(&read, 75);
    // Nothing new: more polls read nothing.
    let polled = Instant::now();
    while polled.elapsed() < Duration::from_millis(500) {
        run_epoch(&mut source, &mut committed, &mut read).await;
    }
    assert_exactly(&read, 75);

    let requests = api.requests();
    let count = |status| requests.iter().filter(|r| r.status == status).count();
    assert!(count(429) > 0, "the rate limit was hit");
    assert!(count(503) > 0, "transient errors happened");
    assert_eq!(api.retry_after_violations(), 0, "Retry-After was honoured");
    assert!(read.rejected.is_empty());
    // The source's request metrics account for every request the API saw;
    // answers slower than the timeout count as transient failures too.
    let (ok, transient) = (meter.ok.get() as usize, meter.transient.get() as usize);
    assert_eq!(ok + transient, requests.len(), "every request counted once");
    assert!(
        transient > count(429) + count(503),
        "timeouts are transient"
    );
    assert!(ok <= count(200));
    assert_eq!(meter.permanent.get(), 0);
    assert_eq!(
        meter.seconds.get_sample_count(),
        requests.len() as u64,
        "every request timed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numbered_pages_that_fill_up_later_are_neither_skipped_nor_reread() {
    let api = RestApi::start(faults()).await;
    api.push(events(0..23));
    let spec = spec(json!({
        "url": format!("{}/pages", api.url()),
        "pagination": {"page": {"param": "page", "sizeParam": "per_page", "size": 10}},
        "pollInterval": "100ms",
        "timeout": "500ms",
        "maxRequestsPerSecond": 20,
    }));
    let mut source = source(&spec, 1000);
    let (mut committed, mut read) = (Positions::new(), Read::default());
    read_until(&mut source, &mut committed, &mut read, 23).await;
    // Page 3 held 3 events; it fills up and page 4 starts.
    api.push(events(23..41));
    read_until(&mut source, &mut committed, &mut read, 41).await;
    assert_exactly(&read, 41);
    let requests = api.requests();
    let pages: Vec<&str> = requests.iter().map(|r| r.query["page"].as_str()).collect();
    assert_eq!(pages.first(), Some(&"1"), "the first page is 1: {pages:?}");
    assert!(
        api.requests()
            .iter()
            .all(|r| r.query.get("per_page").map(String::as_str) == Some("10"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_source_replays_a_planned_epoch_exactly() {
    let api = RestApi::start(Faults::default()).await;
    api.push(events(0..30));
    let spec = cursor_spec(&api);
    let mut first = source(&spec, 12);
    let Planned::Ranges(ranges) = first.plan(&Positions::new()).await.unwrap() else {
        panic!("exhausted")
    };
    // The runner crashed after writing the plan; more events arrived meanwhile.
    drop(first);
    api.push(events(30..50));
    let mut second = source(&spec, 12);
    second.start_epoch(&ranges).await.unwrap();
    let mut read = Read::default();
    while let Some(chunk) = second.next_chunk().await.unwrap() {
        for record in chunk.iter() {
            read.events.push((
                record.offset,
                serde_json::from_slice(record.payload).unwrap(),
            ));
        }
    }
    assert_exactly(&read, 12);
    // And the next epoch continues right after the replayed one.
    let mut committed: Positions = ranges.into_iter().map(|r| (r.partition, r.end)).collect();
    read_until(&mut second, &mut committed, &mut read, 50).await;
    assert_exactly(&read, 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_responses_are_rejected_with_the_reason_and_asked_again() {
    let api = RestApi::start(Faults::default()).await;
    api.push(events(0..5));
    api.respond_next(ScriptedResponse {
        status: 200,
        content_type: "text/html",
        body: "<html>maintenance</html>".into(),
    });
    api.respond_next(ScriptedResponse {
        status: 200,
        content_type: "application/json",
        body: r#"{"data": {"events": {"oops": 1}}}"#.into(),
    });
    let mut source = source(&cursor_spec(&api), 100);
    let (mut committed, mut read) = (Positions::new(), Read::default());
    read_until(&mut source, &mut committed, &mut read, 5).await;
    assert_eq!(read.rejected.len(), 2, "{:?}", read.rejected);
    assert!(
        read.rejected[0].contains("not JSON"),
        "{}",
        read.rejected[0]
    );
    assert!(
        read.rejected[1].contains("`data.events` is an object, not an array"),
        "{}",
        read.rejected[1]
    );
    let ids: Vec<u64> = read
        .events
        .iter()
        .map(|(_, e)| e["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, (0..5).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_come_from_mounted_secrets_and_client_errors_stop_the_source() {
    let secrets = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(secrets.path().join("tickets-api")).unwrap();
    std::fs::write(
        secrets.path().join("tickets-api/bearer-header"),
        "Bearer s3cr3t\n",
    )
    .unwrap();
    let api = RestApi::start(Faults::default()).await;
    api.push(events(0..3));
    let mut spec = cursor_spec(&api);
    spec.headers = serde_json::from_value(json!([
        {"name": "Accept", "value": "application/json"},
        {"name": "Authorization", "valueFrom": {"name": "tickets-api", "key": "bearer-header"}},
    ]))
    .unwrap();
    let mut source = RestSource::new(
        &spec,
        &context(100),
        &Secrets::in_dir(secrets.path()),
        requests(),
    )
    .unwrap();
    let (mut committed, mut read) = (Positions::new(), Read::default());
    read_until(&mut source, &mut committed, &mut read, 3).await;
    let request = &api.requests()[0];
    assert_eq!(request.headers["authorization"], "Bearer s3cr3t");
    assert_eq!(request.headers["accept"], "application/json");

    api.respond_next(ScriptedResponse {
        status: 401,
        content_type: "application/json",
        body: r#"{"error": "token expired"}"#.into(),
    });
    let deadline = Instant::now() + DEADLINE;
    let error = loop {
        match source.plan(&committed).await {
            Err(error) => break error.to_string(),
            Ok(_) => assert!(Instant::now() < deadline, "the 401 never surfaced"),
        }
    };
    assert!(
        error.contains("401") && error.contains("token expired"),
        "{error}"
    );
    assert!(!error.contains("s3cr3t"), "{error}");

    let missing = RestSource::new(
        &spec,
        &context(100),
        &Secrets::in_dir("/nonexistent"),
        requests(),
    );
    let error = missing
        .err()
        .expect("a missing secret is an error")
        .to_string();
    assert!(
        error.contains("/nonexistent/tickets-api/bearer-header"),
        "{error}"
    );
}

/// Waits until `index` holds `n` documents, while `runner` stays up.
async fn wait_for_documents(
    es: &OpenSearch,
    runner: &mut std::process::Child,
    index: &str,
    n: usize,
) {
    let indexed = poll_until(
        &mut [runner],
        async || es.documents(index).await.len(),
        |indexed| *indexed >= n,
    )
    .await;
    assert!(indexed >= n, "only {indexed} of {n} documents in {index}");
}

/// Every event is processed exactly once across a crash of the runner: the
/// events sink holds each event under one id, and every closed window counts
/// exactly its events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_is_processed_exactly_once_across_a_runner_restart() {
    let api = RestApi::start(faults()).await;
    let es = OpenSearch::start();
    api.push(events(0..400));
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("secrets");
    std::fs::create_dir_all(secrets.join("api")).unwrap();
    std::fs::write(secrets.join("api/token"), "Bearer t0ken").unwrap();
    let manifest = dir.path().join("pipeline.yaml");
    std::fs::write(
        &manifest,
        format!(
            r#"
apiVersion: sluice.dev/v1alpha1
kind: StreamPipeline
metadata: {{name: rest-restart, namespace: tests}}
spec:
  source:
    rest:
      url: {api}/cursor?limit=9
      headers:
        - {{name: Authorization, valueFrom: {{name: api, key: token}}}}
      eventsPath: data.events
      pagination:
        cursor: {{param: after, responsePath: data.next_cursor}}
      pollInterval: 200ms
      timeout: 1s
      maxRequestsPerSecond: 20
  format:
    json: {{timestampField: ts, timestampFormat: epochMillis}}
  window:
    tumbling: {{size: 1m}}
    watermark: 0s
    groupBy: [kind]
    aggregations:
      - {{name: events, count: {{}}}}
  sinks:
    - name: raw
      input: events
      elasticsearch: {{url: "{es}", index: events, batchRows: 50}}
    - name: counts
      elasticsearch: {{url: "{es}", index: counts}}
  checkpoint:
    uri: {checkpoints}
    interval: 0s
  trigger: {{interval: 100ms}}
"#,
            api = api.url(),
            es = es.url(),
            checkpoints = dir.path().join("checkpoints").display(),
        ),
    )
    .unwrap();
    let env = [("SLUICE_SECRETS_DIR", secrets.display().to_string())];

    let (mut runner, _logs) = common::spawn_runner(&manifest, &env);
    wait_for_documents(&es, &mut runner, "events", 150).await;
    runner.kill().unwrap();
    runner.wait().unwrap();
    api.push(events(400..700));
    let (mut runner, _logs) = common::spawn_runner(&manifest, &env);
    wait_for_documents(&es, &mut runner, "events", 700).await;
    // 700 one-second events close 11 full minutes of three kinds.
    wait_for_documents(&es, &mut runner, "counts", 33).await;
    runner.kill().unwrap();
    runner.wait().unwrap();

    let indexed = es.documents("events").await;
    let mut ids: Vec<u64> = indexed
        .values()
        .map(|d| d.source["event"]["id"].as_u64().unwrap())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, (0..700).collect::<Vec<_>>(), "each event exactly once");
    let mut expected = BTreeMap::new();
    for id in 0..700u64 {
        let minute = common::START + (id as i64 * 1000) / common::MINUTE * common::MINUTE;
        *expected
            .entry((minute, ["a", "b", "c"][(id % 3) as usize].to_owned()))
            .or_insert(0) += 1;
    }
    for document in es.documents("counts").await.values() {
        let start = document.source["window_start"]
            .as_str()
            .unwrap()
            .parse::<jiff::Timestamp>()
            .unwrap()
            .as_millisecond();
        let kind = document.source["kind"].as_str().unwrap().to_owned();
        assert_eq!(
            document.source["events"].as_i64().unwrap(),
            expected[&(start, kind)],
            "window {document:?} counts its events exactly once"
        );
    }
    assert!(
        api.requests()
            .iter()
            .all(|r| r.headers.get("authorization").map(String::as_str) == Some("Bearer t0ken"))
    );
    assert_eq!(api.retry_after_violations(), 0);
}

/// With `parallelism: 2`, replica 0 reads the whole API and replica 1 reads
/// nothing: every window row is written once, with each event counted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_count_each_event_once() {
    let api = RestApi::start(Faults::default()).await;
    api.push(events(0..600));
    let dir = tempfile::tempdir().unwrap();
    let table = dir.path().join("table");
    let manifest = dir.path().join("pipeline.yaml");
    std::fs::write(
        &manifest,
        format!(
            r#"
apiVersion: sluice.dev/v1alpha1
kind: StreamPipeline
metadata: {{name: rest-parallel, namespace: tests, uid: 3f1c9a70-rest-parallel}}
spec:
  parallelism: 2
  source:
    rest:
      url: {api}/cursor?limit=50
      eventsPath: data.events
      pagination:
        cursor: {{param: after, responsePath: data.next_cursor}}
      pollInterval: 100ms
  format:
    json: {{timestampField: ts, timestampFormat: epochMillis}}
  window:
    tumbling: {{size: 1m}}
    watermark: 0s
    groupBy: [kind]
    aggregations:
      - {{name: events, count: {{}}}}
  sinks:
    - name: lake
      delta: {{uri: "{table}"}}
  checkpoint: {{uri: "{checkpoints}", interval: 0s}}
  trigger: {{interval: 100ms}}
"#,
            api = api.url(),
            table = table.display(),
            checkpoints = dir.path().join("checkpoints").display(),
        ),
    )
    .unwrap();
    let replica = |index: u32| {
        common::spawn_runner(
            &manifest,
            &[
                ("SLUICE_REPLICA", index.to_string()),
                ("SLUICE_REPLICAS", "2".into()),
            ],
        )
    };
    // The log receivers live as long as the runners: a runner whose stderr
    // closes stops (tracing panics when it cannot write).
    let (mut first, _first_logs) = replica(0);
    let (mut second, second_logs) = replica(1);
    let second_status = format!("{}/status", common::runner_address(&second_logs));

    // 600 one-second events close 9 full minutes of three kinds.
    let mut expected = BTreeMap::new();
    for id in 0..540u64 {
        let minute = common::START + (id as i64 * 1000) / common::MINUTE * common::MINUTE;
        *expected
            .entry((minute, ["a", "b", "c"][(id % 3) as usize].to_owned()))
            .or_insert(0i64) += 1;
    }
    let deadline = Instant::now() + DEADLINE;
    let rows = loop {
        let rows = window_counts(&table).await;
        if rows.len() >= expected.len() {
            break rows;
        }
        assert!(Instant::now() < deadline, "windows did not close: {rows:?}");
        assert!(first.try_wait().unwrap().is_none(), "replica 0 exited");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(rows, expected, "each window once, each event counted once");
    let status: Value = reqwest::get(&second_status)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        status["eventsTotal"], 0,
        "replica 1 reads nothing: {status}"
    );
    assert!(second.try_wait().unwrap().is_none(), "replica 1 stays up");
    for runner in [&mut first, &mut second] {
        runner.kill().unwrap();
        runner.wait().unwrap();
    }
}

/// (window start, kind) → count of the Delta table's window rows; a window
/// written twice fails the test.
async fn window_counts(table: &std::path::Path) -> BTreeMap<(i64, String), i64> {
    use arrow::array::{Array, Int64Array, StringArray, TimestampMicrosecondArray};

    let mut rows = BTreeMap::new();
    let Ok(batches) = sluice_runner::sink::delta::read_table(table.to_str().unwrap()).await else {
        return rows;
    };
    for batch in batches {
        let column = |name: &str| batch.column_by_name(name).unwrap().clone();
        let (starts, kinds, counts) = (column("window_start"), column("kind"), column("events"));
        let starts = starts
            .as_any()
            .downcast_ref::<TimestampMicrosecondArray>()
            .unwrap();
        let kinds = kinds.as_any().downcast_ref::<StringArray>().unwrap();
        let counts = counts.as_any().downcast_ref::<Int64Array>().unwrap();
        for row in 0..batch.num_rows() {
            let key = (starts.value(row) / 1000, kinds.value(row).to_owned());
            let previous = rows.insert(key.clone(), counts.value(row));
            assert!(previous.is_none(), "window {key:?} written twice");
        }
    }
    rows
}
