//! Window sinks behind key groups: replicas that exchange pre-aggregates
//! through the repartition topic fill Elasticsearch, ClickHouse and Delta
//! with exactly the rows of a batch computation, for a query grouped by two
//! fields with count, sum, min, max and avg.
//!
//! The data set is the runner's shared one (`common`), each event with a
//! region (absent from some: a null group value) and a value in tenths
//! (absent from some, so sum, min, max and avg see fewer values than count).
//! The expected rows are computed here by brute force with Spark's rules
//! (`common::memberships`). Sums add per-partial sums, in another order
//! than the batch computation, so floats are compared with a relative
//! tolerance.

use std::collections::BTreeMap;

use arrow::{
    array::{Array, AsArray, RecordBatch},
    datatypes::{Float64Type, Int64Type, TimestampMicrosecondType},
};
use serde_json::{Value, json};
use sluice_runner::sink::delta::read_table;
use sluice_tests::{clickhouse::ClickHouse, kafka::KafkaBroker, opensearch::OpenSearch};

use crate::common::*;
use crate::kafka::{Replicas, replicated_manifest, scattered_messages};

const TOPIC: &str = "orders";
const REGIONS: [&str; 3] = ["eu", "us", "apac"];
const RELATIVE_TOLERANCE: f64 = 1e-9;

/// Event `i`'s region; every 17th event has none.
fn region(i: usize) -> Option<&'static str> {
    (i % 17 != 3).then(|| REGIONS[(i * 5 + i / 7) % REGIONS.len()])
}

/// Event `i`'s value, in tenths from -20 to 79.9; every 11th event has none.
fn value(i: usize) -> Option<f64> {
    (i % 11 != 5).then(|| ((i * 37) % 1000) as f64 / 10.0 - 20.0)
}

/// The lines as JSON lines, with a region and a value.
fn regional_jsonl(lines: &[Line]) -> String {
    jsonl_text(lines, |i, time, event_type| {
        let mut event = json!({"timestamp": rfc3339(time), "event_type": event_type});
        if let Some(region) = region(i) {
            event["region"] = json!(region);
        }
        if let Some(value) = value(i) {
            event["value"] = json!(value);
        }
        event.to_string()
    })
}

/// (window start, window end, event type, region), times in milliseconds.
type Key = (i64, i64, String, Option<String>);

/// One window row's aggregates.
#[derive(Clone, Debug, PartialEq)]
struct Aggregates {
    count: i64,
    sum: Option<f64>,
    min: Option<f64>,
    max: Option<f64>,
    avg: Option<f64>,
}

impl Aggregates {
    fn approx_eq(&self, other: &Self) -> bool {
        let close = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => (a - b).abs() <= RELATIVE_TOLERANCE * a.abs().max(b.abs()),
            (a, b) => a == b,
        };
        self.count == other.count
            && close(self.sum, other.sum)
            && close(self.min, other.min)
            && close(self.max, other.max)
            && close(self.avg, other.avg)
    }
}

type Rows = BTreeMap<Key, Aggregates>;

/// Adds a row read back from a sink, checking that its identity is new.
fn insert(rows: &mut Rows, key: Key, aggregates: Aggregates) {
    let previous = rows.insert(key.clone(), aggregates);
    assert!(previous.is_none(), "window {key:?} written twice");
}

/// What the query must produce: every (window, event type, region) by
/// Spark's rules, with count(*), and sum, min, max and avg over the events
/// that have a value (null when none has). `events` lines come from
/// [`regional_jsonl`]; the closing events after them have a value of 0 and
/// no region.
fn expected_rows(lines: &[Line], events: usize) -> Rows {
    #[derive(Default)]
    struct Totals {
        count: i64,
        values: Vec<f64>,
    }
    let mut totals: BTreeMap<Key, Totals> = BTreeMap::new();
    for (index, start) in memberships(lines, |_| true).emitted {
        let Line::Event { event_type, .. } = &lines[index] else {
            unreachable!("only events have windows")
        };
        let (region, value) = if index < events {
            (region(index), value(index))
        } else {
            (None, Some(0.0))
        };
        let key = (
            start,
            start + 5 * MINUTE,
            (*event_type).to_owned(),
            region.map(str::to_owned),
        );
        let totals = totals.entry(key).or_default();
        totals.count += 1;
        totals.values.extend(value);
    }
    totals
        .into_iter()
        .map(|(key, Totals { count, values })| {
            let sum = (!values.is_empty()).then(|| values.iter().sum::<f64>());
            let aggregates = Aggregates {
                count,
                sum,
                min: values.iter().copied().reduce(f64::min),
                max: values.iter().copied().reduce(f64::max),
                avg: sum.map(|sum| sum / values.len() as f64),
            };
            (key, aggregates)
        })
        .collect()
}

/// Whether `actual` has exactly the rows of `expected`, floats within the
/// tolerance.
fn same_rows(actual: &Rows, expected: &Rows) -> bool {
    actual.len() == expected.len()
        && actual
            .iter()
            .zip(expected)
            .all(|((ka, a), (ke, e))| ka == ke && a.approx_eq(e))
}

/// Asserts [`same_rows`], listing the rows that differ.
fn assert_same_rows(actual: &Rows, expected: &Rows, sink: &str) {
    let mut differences = Vec::new();
    for (key, want) in expected {
        match actual.get(key) {
            Some(got) if got.approx_eq(want) => {}
            got => differences.push(format!("{key:?}: expected {want:?}, got {got:?}")),
        }
    }
    for (key, got) in actual {
        if !expected.contains_key(key) {
            differences.push(format!("{key:?}: unexpected {got:?}"));
        }
    }
    assert!(
        differences.is_empty(),
        "{sink}: {} of {} rows differ from the batch computation ({} read back):\n{}",
        differences.len(),
        expected.len(),
        actual.len(),
        differences[..differences.len().min(20)].join("\n")
    );
}

/// The query (the reference query's windows and watermark, grouped by
/// event type and region, five aggregations) into `sinks` (lines of the
/// spec's `sinks` list).
fn regional_spec(sinks: &str, checkpoints: &str) -> String {
    format!(
        r#"  window:
    sliding: {{size: 5m, slide: 1m}}
    watermark: 2m
    groupBy: [event_type, region]
    aggregations:
      - {{name: event_count, count: {{}}}}
      - {{name: total_value, sum: {{field: value}}}}
      - {{name: min_value, min: {{field: value}}}}
      - {{name: max_value, max: {{field: value}}}}
      - {{name: avg_value, avg: {{field: value}}}}
  sinks:
{sinks}  checkpoint: {{uri: "{checkpoints}", interval: 0s}}
  trigger: {{interval: 0s}}
"#
    )
}

/// A run of the query over the reference data set on a topic of
/// `partitions` partitions, read by `replicas` runners.
struct Run {
    replicas: Replicas,
    expected: Rows,
    _dir: tempfile::TempDir,
}

impl Run {
    /// Produces the data set (partitions chosen from each line's position,
    /// not from its group key) and starts the runners as
    /// [`Replicas::start`] does; `sinks(dir)` gives the spec's sinks.
    async fn start(
        broker: &KafkaBroker,
        events: usize,
        partitions: i32,
        replicas: u32,
        key_groups: u32,
        sinks: impl FnOnce(&std::path::Path) -> String,
    ) -> Self {
        broker.create_topic(TOPIC, partitions).unwrap();
        let mut lines = data_set_without_stragglers(events, 29);
        let text = regional_jsonl(&lines);
        let messages = scattered_messages(&mut lines, &text, events, partitions);
        let expected = expected_rows(&lines, events);
        assert!(
            memberships(&lines, |_| true).late > 100,
            "the data set has late events"
        );
        assert!(
            expected.keys().any(|key| key.3.is_none()),
            "some rows have a null region"
        );
        let dir = tempfile::tempdir().unwrap();
        let checkpoints = dir.path().join("checkpoints").display().to_string();
        let spec = regional_spec(&sinks(dir.path()), &checkpoints);
        let manifest = dir.path().join("pipeline.yaml");
        std::fs::write(
            &manifest,
            replicated_manifest(broker, TOPIC, "orders", replicas, key_groups, &spec),
        )
        .unwrap();
        Self {
            replicas: Replicas::start(broker, TOPIC, &messages, &manifest, replicas).await,
            expected,
            _dir: dir,
        }
    }

    /// Polls `read` until it gives the expected rows (or the deadline
    /// passes), then asserts that it does.
    async fn assert_sink_rows(&mut self, sink: &str, read: impl AsyncFnMut() -> Rows) {
        let expected = &self.expected;
        let actual = poll_until(&mut self.replicas.children(), read, |rows| {
            same_rows(rows, expected)
        })
        .await;
        assert_same_rows(&actual, expected, sink);
    }
}

/// The window rows, as the README lays them out for a ReplacingMergeTree
/// (group columns through isNull/ifNull in the sorting key, which 18.16
/// requires).
const CLICKHOUSE_TABLE: &str = "CREATE TABLE default.windows (
    window_start DateTime,
    window_end DateTime,
    event_type Nullable(String),
    region Nullable(String),
    event_count Int64,
    total_value Nullable(Float64),
    min_value Nullable(Float64),
    max_value Nullable(Float64),
    avg_value Nullable(Float64)
) ENGINE = ReplacingMergeTree
ORDER BY (window_start, window_end, isNull(event_type), ifNull(event_type, ''),
          isNull(region), ifNull(region, ''))";

/// The aggregates of a row read back as JSON (absent numbers are null).
fn json_aggregates(row: &Value) -> Aggregates {
    let number = |name: &str| row.get(name).and_then(Value::as_f64);
    Aggregates {
        // ClickHouse sends 64-bit integers as strings.
        count: match &row["event_count"] {
            Value::String(count) => count.parse().unwrap(),
            count => count.as_i64().unwrap(),
        },
        sum: number("total_value"),
        min: number("min_value"),
        max: number("max_value"),
        avg: number("avg_value"),
    }
}

/// The group values of a row read back as JSON (absent values are null).
fn json_groups(row: &Value) -> (String, Option<String>) {
    let text = |name: &str| row.get(name).and_then(Value::as_str).map(str::to_owned);
    (text("event_type").expect("an event type"), text("region"))
}

/// The rows of the ClickHouse table as its `FINAL` view shows them.
async fn clickhouse_rows(server: &ClickHouse) -> Rows {
    let mut rows = Rows::new();
    for row in server
        .rows(
            "SELECT toUnixTimestamp(window_start) AS start, toUnixTimestamp(window_end) AS end, \
             event_type, region, event_count, total_value, min_value, max_value, avg_value \
             FROM default.windows FINAL",
        )
        .await
    {
        let (event_type, region) = json_groups(&row);
        let second = |name: &str| row[name].as_i64().unwrap() * 1000;
        let key = (second("start"), second("end"), event_type, region);
        insert(&mut rows, key, json_aggregates(&row));
    }
    rows
}

/// The documents of the Elasticsearch index.
async fn elasticsearch_rows(es: &OpenSearch) -> Rows {
    let mut rows = Rows::new();
    for document in es.documents("windows").await.into_values() {
        let row = document.source;
        let (event_type, region) = json_groups(&row);
        let time = |name: &str| {
            let text = row[name].as_str().unwrap();
            text.parse::<jiff::Timestamp>().unwrap().as_millisecond()
        };
        let key = (time("window_start"), time("window_end"), event_type, region);
        insert(&mut rows, key, json_aggregates(&row));
    }
    rows
}

/// The rows of the Delta table (none while it does not exist).
async fn delta_rows(table: &str) -> Rows {
    let mut rows = Rows::new();
    let Ok(batches) = read_table(table).await else {
        return rows;
    };
    for batch in &batches {
        add_batch_rows(&mut rows, batch);
    }
    rows
}

fn add_batch_rows(rows: &mut Rows, batch: &RecordBatch) {
    let column = |name: &str| batch.column_by_name(name).unwrap();
    let starts = column("window_start").as_primitive::<TimestampMicrosecondType>();
    let ends = column("window_end").as_primitive::<TimestampMicrosecondType>();
    let types = column("event_type").as_string::<i32>();
    let regions = column("region").as_string::<i32>();
    let counts = column("event_count").as_primitive::<Int64Type>();
    let number = |name: &str, row: usize| {
        let values = column(name).as_primitive::<Float64Type>();
        values.is_valid(row).then(|| values.value(row))
    };
    for row in 0..batch.num_rows() {
        let key = (
            starts.value(row) / 1000,
            ends.value(row) / 1000,
            types.value(row).to_owned(),
            regions.is_valid(row).then(|| regions.value(row).to_owned()),
        );
        let aggregates = Aggregates {
            count: counts.value(row),
            sum: number("total_value", row),
            min: number("min_value", row),
            max: number("max_value", row),
            avg: number("avg_value", row),
        };
        insert(rows, key, aggregates);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_fill_elasticsearch_and_clickhouse_with_the_rows_of_the_batch_computation() {
    let broker = KafkaBroker::start().unwrap();
    let es = OpenSearch::start();
    let clickhouse = ClickHouse::start().await;
    clickhouse.query(CLICKHOUSE_TABLE).await;
    let sinks = format!(
        "    - name: search\n      elasticsearch: {{url: \"{}\", index: windows, batchRows: 50}}\n    - name: warehouse\n      clickhouse: {{url: \"{}\", table: windows, batchRows: 50}}\n",
        es.url(),
        clickhouse.url(),
    );
    let mut run = Run::start(&broker, 20_000, 4, 2, 4, |_| sinks).await;
    run.assert_sink_rows("Elasticsearch", async || elasticsearch_rows(&es).await)
        .await;
    run.assert_sink_rows("ClickHouse", async || clickhouse_rows(&clickhouse).await)
        .await;
    run.replicas.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_write_two_field_groups_and_five_aggregates_to_delta() {
    let broker = KafkaBroker::start().unwrap();
    let mut table = String::new();
    let mut run = Run::start(&broker, 30_000, 6, 3, 12, |dir| {
        table = dir.join("table").display().to_string();
        format!("    - name: lake\n      delta: {{uri: \"{table}\"}}\n")
    })
    .await;
    run.assert_sink_rows("Delta", async || delta_rows(&table).await)
        .await;
    run.replicas.stop();
}
