//! The ClickHouse sink against a real ClickHouse server (Debian's 18.16,
//! started by the test): rows land correctly in a ReplacingMergeTree table
//! laid out as the README says, a replayed epoch leaves the `FINAL` rows
//! unchanged, and errors carry the server's message.

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
    sink::{ClickHouseSink, EpochKey, Lane, Sink, WriteOutcome},
    telemetry::SinkMetrics,
};
use sluice_tests::clickhouse::ClickHouse;

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
    let spec: ClickHouseSpec = serde_json::from_value(
        json!({"url": server.url(), "table": table, "batchRows": batch_rows, "timeout": "10s"}),
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn window_rows_land_and_a_replayed_epoch_leaves_the_final_rows_unchanged() {
    let server = ClickHouse::start().await;
    server.query(WINDOW_TABLE).await;
    let mut sink = sink(&server, "event_counts", 4);
    sink.open(window_schema()).await.unwrap();
    assert!(
        !sink.uses_deduplication_tokens(),
        "18.16 predates insert_deduplication_token"
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_tables_columns_and_bad_rows_fail_with_clear_messages() {
    let server = ClickHouse::start().await;
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
        .query("CREATE TABLE default.wrong (window_start DateTime, window_end DateTime, event_type Nullable(String), event_count Array(String), total_value Nullable(Float64)) ENGINE = MergeTree ORDER BY window_start")
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

/// Event rows (`input: events`) into the raw-events layout of
/// examples/eventhub-to-clickhouse.yaml; a replay collapses there too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_rows_fit_the_example_layout_and_replays_collapse() {
    let server = ClickHouse::start().await;
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
