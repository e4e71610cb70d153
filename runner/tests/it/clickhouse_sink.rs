//! The ClickHouse sink against real ClickHouse servers started by the test,
//! Debian's 18.16 and the current engine (chdb-core 26.9 behind its HTTP
//! front): rows land correctly in tables laid out as the README says, a
//! replayed epoch leaves the rows unchanged, tables that would keep replays
//! twice are refused with the statements that fix them, and errors carry
//! the server's message. Tests that hold on every engine have one body and
//! one test per engine ([`on_each_engine`]).

use std::sync::Arc;

use arrow::{
    array::{
        ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
    },
    datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit},
};
use serde_json::{Value, json};
use sluice_crds::ClickHouseSink as ClickHouseSpec;
use sluice_runner::{
    http::RetryPolicy,
    secrets::Secrets,
    sink::{ClickHouseSink, EpochKey, Lane, Sink, WriteOutcome, clickhouse::Guarantee},
    telemetry::SinkMetrics,
};
use sluice_tests::clickhouse::{ClickHouse, Engine, InsertGate};

/// One test per engine (`<body>::debian_18`, `<body>::current`) running the
/// async fn `body(engine)`.
macro_rules! on_each_engine {
    ($body:ident) => {
        mod $body {
            use sluice_tests::clickhouse::Engine;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn debian_18() {
                super::$body(Engine::Debian18).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn current() {
                super::$body(Engine::Current).await
            }
        }
    };
}

/// 2026-11-24T10:00:00Z in microseconds.
const START_MICROS: i64 = 1_795_514_400_000_000;
const MINUTE_MICROS: i64 = 60_000_000;

/// The README's layout for window rows: the row identity (window bounds and
/// group columns, nullable ones through isNull/ifNull) is the sorting key.
const WINDOW_TABLE: &str = "CREATE TABLE default.event_counts (
    window_start DateTime,
    window_end DateTime,
    event_type Nullable(String),
    event_count Int64,
    total_value Nullable(Float64)
) ENGINE = ReplacingMergeTree
ORDER BY (window_start, window_end, isNull(event_type), ifNull(event_type, ''))";

fn window_schema() -> SchemaRef {
    let time = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    Arc::new(Schema::new(vec![
        Field::new("window_start", time.clone(), false),
        Field::new("window_end", time, false),
        Field::new("event_type", DataType::Utf8, true),
        Field::new("event_count", DataType::Int64, false),
        Field::new("total_value", DataType::Float64, true),
    ]))
}

/// Rows of minute windows `minutes`, one per event type (and one null type).
fn window_rows(minutes: std::ops::Range<i64>) -> RecordBatch {
    let mut starts = Vec::new();
    let mut types = Vec::new();
    let mut counts = Vec::new();
    let mut totals = Vec::new();
    for minute in minutes {
        for (i, event_type) in [Some("view"), Some("click"), None].into_iter().enumerate() {
            starts.push(START_MICROS + minute * MINUTE_MICROS);
            types.push(event_type);
            counts.push(minute * 10 + i as i64);
            totals.push((i != 1).then_some(minute as f64 + 0.5));
        }
    }
    let ends: Vec<i64> = starts.iter().map(|s| s + MINUTE_MICROS).collect();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(TimestampMicrosecondArray::from(starts).with_timezone("UTC")),
        Arc::new(TimestampMicrosecondArray::from(ends).with_timezone("UTC")),
        Arc::new(StringArray::from(types)),
        Arc::new(Int64Array::from(counts)),
        Arc::new(Float64Array::from(totals)),
    ];
    RecordBatch::try_new(window_schema(), columns).unwrap()
}

fn sink(server: &ClickHouse, table: &str, batch_rows: i64) -> ClickHouseSink {
    sink_at(&server.url(), table, batch_rows)
}

/// A sink writing to `url` (a server, or a gate before one).
fn sink_at(url: &str, table: &str, batch_rows: i64) -> ClickHouseSink {
    let spec: ClickHouseSpec = serde_json::from_value(
        json!({"url": url, "table": table, "batchRows": batch_rows, "timeout": "10s"}),
    )
    .unwrap();
    let metrics = SinkMetrics::register(&prometheus::Registry::new()).unwrap();
    ClickHouseSink::new(
        "counts",
        &spec,
        &Secrets::in_dir("/nonexistent"),
        metrics.meter("counts"),
    )
    .unwrap()
    .with_retry(RetryPolicy {
        min: std::time::Duration::from_millis(10),
        max: std::time::Duration::from_millis(100),
        attempts: Some(2),
    })
}

fn key(epoch: u64) -> EpochKey {
    EpochKey {
        pipeline: "uid-1".into(),
        lane: Lane::replica(0),
        epoch,
        sink: "counts".into(),
    }
}

async fn final_rows(server: &ClickHouse) -> Vec<Value> {
    server
        .rows(
            "SELECT toUnixTimestamp(window_start) AS start, toUnixTimestamp(window_end) AS end, event_type, event_count, total_value \
             FROM default.event_counts FINAL ORDER BY start, event_type",
        )
        .await
}

on_each_engine!(window_rows_land_and_a_replayed_epoch_leaves_the_final_rows_unchanged);
async fn window_rows_land_and_a_replayed_epoch_leaves_the_final_rows_unchanged(engine: Engine) {
    let server = ClickHouse::start_engine(engine).await;
    server.query(WINDOW_TABLE).await;
    let mut sink = sink(&server, "event_counts", 4);
    sink.open(window_schema()).await.unwrap();
    assert_eq!(
        sink.guarantee(),
        Some(Guarantee::ReplacingOnIdentity),
        "a ReplacingMergeTree without a deduplication window collapses replays by its key"
    );

    let first = window_rows(0..3);
    assert_eq!(
        sink.write_epoch(&key(0), std::slice::from_ref(&first))
            .await
            .unwrap(),
        WriteOutcome::all(9)
    );
    let second = window_rows(3..5);
    sink.write_epoch(&key(1), std::slice::from_ref(&second))
        .await
        .unwrap();

    let rows = final_rows(&server).await;
    assert_eq!(rows.len(), 15);
    let start = START_MICROS / 1_000_000;
    // ORDER BY start, event_type puts NULL last within a minute.
    assert_eq!(
        rows[0],
        json!({"start": start, "end": start + 60, "event_type": "click", "event_count": "1", "total_value": null})
    );
    assert_eq!(rows[1]["event_type"], "view");
    assert_eq!(rows[1]["total_value"], 0.5);
    assert_eq!(rows[2]["event_type"], Value::Null);
    assert_eq!(rows[14]["event_count"], "42");

    // The runner crashed after the sink wrote epoch 1 but before its checkpoint:
    // recovery writes the identical epoch again.
    sink.write_epoch(&key(1), &[second]).await.unwrap();
    assert_eq!(
        final_rows(&server).await,
        rows,
        "FINAL rows are unchanged by the replay"
    );
    let raw = server
        .query("SELECT count() FROM default.event_counts")
        .await;
    assert!(raw.trim().parse::<u64>().unwrap() >= 15);
    server
        .query("OPTIMIZE TABLE default.event_counts FINAL")
        .await;
    assert_eq!(
        server
            .query("SELECT count() FROM default.event_counts")
            .await
            .trim(),
        "15"
    );
}

on_each_engine!(missing_tables_columns_and_bad_rows_fail_with_clear_messages);
async fn missing_tables_columns_and_bad_rows_fail_with_clear_messages(engine: Engine) {
    let server = ClickHouse::start_engine(engine).await;
    let mut missing = sink(&server, "nowhere", 100);
    let error = missing.open(window_schema()).await.unwrap_err().to_string();
    assert!(
        error.contains("`default`.`nowhere` does not exist") && error.contains("creates nothing"),
        "{error}"
    );
    assert_eq!(
        server.query("EXISTS TABLE default.nowhere").await.trim(),
        "0",
        "nothing was created"
    );

    server
        .query("CREATE TABLE default.narrow (window_start DateTime, window_end DateTime, event_type Nullable(String)) ENGINE = MergeTree ORDER BY window_start")
        .await;
    let mut narrow = sink(&server, "narrow", 100);
    let error = narrow.open(window_schema()).await.unwrap_err().to_string();
    assert!(
        error.contains("lacks the columns event_count, total_value"),
        "{error}"
    );

    // A column whose type cannot hold the rows: the server's message is in the error.
    server
        .query("CREATE TABLE default.wrong (window_start DateTime, window_end DateTime, event_type Nullable(String), event_count Array(String), total_value Nullable(Float64)) \
                ENGINE = ReplacingMergeTree ORDER BY (window_start, window_end, isNull(event_type), ifNull(event_type, ''))")
        .await;
    let mut wrong = sink(&server, "wrong", 100);
    wrong.open(window_schema()).await.unwrap();
    let error = wrong
        .write_epoch(&key(0), &[window_rows(0..1)])
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("Code: ") && error.contains("event_count"),
        "{error}"
    );
}

on_each_engine!(event_rows_fit_the_example_layout_and_replays_collapse);
/// Event rows (`input: events`) into the raw-events layout of
/// examples/eventhub-to-clickhouse.yaml; a replay collapses there too.
async fn event_rows_fit_the_example_layout_and_replays_collapse(engine: Engine) {
    let server = ClickHouse::start_engine(engine).await;
    server
        .query(
            "CREATE TABLE default.orders_raw (
                stream String, partition Int32, offset Int64, event_time DateTime, event String
            ) ENGINE = ReplacingMergeTree
            ORDER BY (stream, partition, offset)",
        )
        .await;
    let schema = sluice_runner::pipeline::event_schema();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(vec!["orders"; 3])),
        Arc::new(arrow::array::Int32Array::from(vec![0, 0, 1])),
        Arc::new(Int64Array::from(vec![7, 8, 7])),
        Arc::new(
            TimestampMicrosecondArray::from(vec![START_MICROS + 1_500_000; 3]).with_timezone("UTC"),
        ),
        Arc::new(StringArray::from(vec![
            r#"{"amount":1}"#,
            r#"{"amount":2}"#,
            r#"{"amount":3}"#,
        ])),
    ];
    let rows = RecordBatch::try_new(schema.clone(), columns).unwrap();
    let spec: ClickHouseSpec =
        serde_json::from_value(json!({"url": server.url(), "table": "orders_raw"})).unwrap();
    let metrics = SinkMetrics::register(&prometheus::Registry::new()).unwrap();
    let mut sink = ClickHouseSink::new(
        "raw",
        &spec,
        &Secrets::in_dir("/nonexistent"),
        metrics.meter("raw"),
    )
    .unwrap();
    sink.open(schema).await.unwrap();
    sink.write_epoch(&key(3), std::slice::from_ref(&rows))
        .await
        .unwrap();
    sink.write_epoch(&key(3), &[rows]).await.unwrap();
    let stored = server
        .rows("SELECT partition, offset, toUnixTimestamp(event_time) AS t, event FROM default.orders_raw FINAL ORDER BY partition, offset")
        .await;
    let second = START_MICROS / 1_000_000 + 1;
    assert_eq!(
        stored,
        vec![
            json!({"partition": 0, "offset": "7", "t": second, "event": r#"{"amount":1}"#}),
            json!({"partition": 0, "offset": "8", "t": second, "event": r#"{"amount":2}"#}),
            json!({"partition": 1, "offset": "7", "t": second, "event": r#"{"amount":3}"#}),
        ]
    );
}

/// Event rows of `stream` "orders" at the given (partition, offset)s, in
/// the order given.
fn event_rows(positions: &[(i32, i64)]) -> RecordBatch {
    let n = positions.len();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(vec!["orders"; n])),
        Arc::new(arrow::array::Int32Array::from_iter_values(
            positions.iter().map(|p| p.0),
        )),
        Arc::new(Int64Array::from_iter_values(positions.iter().map(|p| p.1))),
        Arc::new(TimestampMicrosecondArray::from(vec![START_MICROS; n]).with_timezone("UTC")),
        Arc::new(StringArray::from_iter_values(
            positions
                .iter()
                .map(|(p, o)| format!(r#"{{"p":{p},"o":{o}}}"#)),
        )),
    ];
    RecordBatch::try_new(sluice_runner::pipeline::event_schema(), columns).unwrap()
}

/// How many times each (partition, offset) is in `default.raw`.
async fn event_copies(server: &ClickHouse) -> Vec<(i64, i64, i64)> {
    let number = |value: &Value| match value {
        Value::String(text) => text.parse().unwrap(),
        value => value.as_i64().unwrap(),
    };
    server
        .rows("SELECT partition, offset, count() AS copies FROM default.raw GROUP BY partition, offset ORDER BY partition, offset")
        .await
        .iter()
        .map(|row| (number(&row["partition"]), number(&row["offset"]), number(&row["copies"])))
        .collect()
}

/// The `CREATE TABLE` statements a refusal names, in order.
fn statements_in(message: &str) -> Vec<String> {
    message
        .split("CREATE TABLE ")
        .skip(1)
        .map(|rest| format!("CREATE TABLE {}", rest.split("   --").next().unwrap()))
        .collect()
}

on_each_engine!(tables_that_would_keep_replays_twice_are_refused_with_statements_that_work);
/// Tables on which a replay would leave rows twice are refused at `open`
/// with the reason and the statements that create a table that works; the
/// first statement (a ReplacingMergeTree keyed by the row identity) works on
/// every engine, the second (tokens) on the current one.
async fn tables_that_would_keep_replays_twice_are_refused_with_statements_that_work(
    engine: Engine,
) {
    let server = ClickHouse::start_engine(engine).await;
    let schema = sluice_runner::pipeline::event_schema();
    let columns = "stream String, partition Int32, offset Int64, event_time DateTime, event String";
    let refusal = async |table: &str| {
        let error = sink(&server, table, 10)
            .open(schema.clone())
            .await
            .unwrap_err()
            .to_string();
        assert!(
            error.contains(&format!(
                "CREATE TABLE `default`.`{table}` (`stream` String, `partition` Int32, `offset` Int64, `event_time` DateTime, `event` String) \
                 ENGINE = ReplacingMergeTree ORDER BY (`stream`, `partition`, `offset`)"
            )),
            "{error}"
        );
        error
    };

    server
        .query(&format!("CREATE TABLE default.plain ({columns}) ENGINE = MergeTree ORDER BY (stream, partition, offset)"))
        .await;
    let error = refusal("plain").await;
    let expected_reason = match engine {
        Engine::Debian18 => "this server predates deduplication tokens (22.2)",
        Engine::Current => "its non_replicated_deduplication_window is 0",
    };
    assert!(
        error.contains("would keep the rows of a replayed epoch twice")
            && error.contains(expected_reason)
            && error.contains("it is a MergeTree, not a ReplacingMergeTree"),
        "{error}"
    );

    server
        .query(&format!("CREATE TABLE default.by_time ({columns}) ENGINE = ReplacingMergeTree ORDER BY (stream, event_time)"))
        .await;
    let error = refusal("by_time").await;
    assert!(
        error.contains(
            "its sorting key (stream, event_time) is not the row identity (stream, partition, offset)"
        ),
        "{error}"
    );

    let error = refusal("raw").await;
    assert!(error.contains("does not exist"), "{error}");
    let statements = statements_in(&error);
    assert_eq!(statements.len(), 2, "{error}");
    server.query(&statements[0]).await;
    let mut replacing = sink(&server, "raw", 10);
    replacing.open(schema.clone()).await.unwrap();
    assert_eq!(replacing.guarantee(), Some(Guarantee::ReplacingOnIdentity));

    if engine == Engine::Current {
        server.query("DROP TABLE default.raw").await;
        server.query(&statements[1]).await;
        let mut tokens = sink(&server, "raw", 10);
        tokens.open(schema.clone()).await.unwrap();
        assert_eq!(tokens.guarantee(), Some(Guarantee::Tokens { window: 1000 }));
        // The setting does what it says: a replayed epoch adds nothing.
        let rows = event_rows(&[(0, 1), (0, 2), (1, 1)]);
        tokens
            .write_epoch(&key(0), std::slice::from_ref(&rows))
            .await
            .unwrap();
        tokens.write_epoch(&key(0), &[rows]).await.unwrap();
        assert_eq!(
            event_copies(&server).await,
            vec![(0, 1, 1), (0, 2, 1), (1, 1, 1)]
        );
    }
}

/// Event rows in a plain MergeTree that honours deduplication tokens
/// (22.2 and later).
const RAW_WITH_TOKENS: &str = "CREATE TABLE default.raw (stream String, partition Int32, offset Int64, event_time DateTime, event String) \
    ENGINE = MergeTree ORDER BY (stream, partition, offset) SETTINGS non_replicated_deduplication_window = 100";

/// The epoch's rows as partitions delivered them on a first attempt and on
/// a replay: the same rows, partition chunks in another order.
fn epoch_in_two_arrival_orders() -> (Vec<RecordBatch>, Vec<RecordBatch>) {
    let partition = |p: i32| event_rows(&(0..10).map(|o| (p, o)).collect::<Vec<_>>());
    (
        (0..4).map(partition).collect(),
        (0..4).rev().map(partition).collect(),
    )
}

/// A writer stopped after 3 of the 6 blocks of an epoch (the first attempt
/// died there), then the epoch replayed with its rows delivered in another
/// order: every event is in the table exactly once. Before blocks were cut
/// in row-identity order, the replay's first blocks held other rows under
/// the tokens of the blocks already written: dropped as duplicates (lost),
/// while rows already written came again under new tokens (twice).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_epoch_cut_off_midway_and_replayed_in_another_order_lands_exactly_once() {
    let server = ClickHouse::start_engine(Engine::Current).await;
    server.query(RAW_WITH_TOKENS).await;
    let (first_attempt, replay) = epoch_in_two_arrival_orders();
    let schema = sluice_runner::pipeline::event_schema();

    let gate = InsertGate::start(&server, 3).await;
    let mut dying = sink_at(&gate.url(), "raw", 7);
    dying.open(schema.clone()).await.unwrap();
    assert_eq!(dying.guarantee(), Some(Guarantee::Tokens { window: 100 }));
    let attempt = tokio::spawn(async move { dying.write_epoch(&key(5), &first_attempt).await });
    gate.wait_until_holding().await;
    attempt.abort();
    let written: i64 = event_copies(&server).await.iter().map(|c| c.2).sum();
    assert_eq!(
        written, 21,
        "three blocks of 7 rows landed before the crash"
    );

    let mut recovered = sink(&server, "raw", 7);
    recovered.open(schema).await.unwrap();
    recovered.write_epoch(&key(5), &replay).await.unwrap();
    let expected: Vec<(i64, i64, i64)> = (0..4)
        .flat_map(|p| (0..10).map(move |o| (p, o, 1)))
        .collect();
    assert_eq!(
        event_copies(&server).await,
        expected,
        "each event exactly once"
    );
}

/// sluice-runner reads a 4-partition Kafka topic into ClickHouse event rows
/// (current engine, tokens), in one epoch of 20 blocks; it is killed with
/// SIGKILL while the sixth block is on its way, and restarted: the replayed
/// epoch leaves every event in the table exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_killed_in_the_middle_of_a_multi_block_epoch_restarts_to_exact_rows() {
    const EVENTS: i64 = 400;
    const PARTITIONS: i64 = 4;
    let broker = sluice_tests::kafka::KafkaBroker::start().unwrap();
    broker.create_topic("orders", PARTITIONS as i32).unwrap();
    let messages: Vec<(i32, String)> = (0..EVENTS)
        .map(|i| {
            let time = crate::common::rfc3339(START_MICROS / 1000 + i * 1000);
            (
                (i % PARTITIONS) as i32,
                format!(r#"{{"timestamp":"{time}","n":{i}}}"#),
            )
        })
        .collect();
    crate::kafka::send_all(&broker, "orders", &messages);
    let server = ClickHouse::start_engine(Engine::Current).await;
    server.query(RAW_WITH_TOKENS).await;
    let gate = InsertGate::start(&server, 5).await;
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("pipeline.yaml");
    std::fs::write(
        &manifest,
        format!(
            r#"apiVersion: sluice.dev/v1alpha1
kind: StreamPipeline
metadata: {{name: raw-orders, namespace: test, uid: 7c2f-raw-orders}}
spec:
  source:
    kafka:
      bootstrapServers: "{bootstrap}"
      topics: [orders]
      consumerGroup: raw-orders
      startingOffsets: earliest
      maxOffsetsPerTrigger: 1000
  format: {{json: {{timestampField: timestamp}}}}
  sinks:
    - name: raw
      input: events
      clickhouse: {{url: "{gate}", table: raw, batchRows: 20, timeout: 10s}}
  checkpoint: {{uri: "{checkpoints}", interval: 0s}}
  trigger: {{interval: 100ms}}
"#,
            bootstrap = broker.bootstrap_servers(),
            gate = gate.url(),
            checkpoints = dir.path().join("checkpoints").display(),
        ),
    )
    .unwrap();

    let (mut runner, _logs) = crate::common::spawn_runner(&manifest, &[]);
    gate.wait_until_holding().await;
    runner.kill().unwrap();
    runner.wait().unwrap();
    assert_eq!(
        gate.inserts_passed(),
        5,
        "killed in the middle of the epoch"
    );
    gate.open();

    let (mut runner, _logs) = crate::common::spawn_runner(&manifest, &[]);
    let copies = crate::common::poll_until(
        &mut [&mut runner],
        async || event_copies(&server).await,
        |copies| copies.iter().map(|c| c.2).sum::<i64>() >= EVENTS,
    )
    .await;
    runner.kill().unwrap();
    runner.wait().unwrap();
    let expected: Vec<(i64, i64, i64)> = (0..PARTITIONS)
        .flat_map(|p| (0..EVENTS / PARTITIONS).map(move |o| (p, o, 1)))
        .collect();
    assert_eq!(copies, expected, "each event exactly once");
}
