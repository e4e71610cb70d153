//! `window.outputMode: update` end to end: the reference query with a Delta
//! table and an Elasticsearch index, both written every epoch with the
//! current values of the windows the epoch changed. Values appear before
//! their window closes, each window has one row (Delta merges, Elasticsearch
//! overwrites by id), and the rows of closed windows equal append mode's.

use sluice_runner::sink::delta::{read_table, read_table_version};
use sluice_tests::opensearch::OpenSearch;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_mode_shows_open_windows_and_ends_with_append_modes_rows() {
    let es = OpenSearch::start();
    let run = LocalReferenceRun::prepare(30_000, 17, "0s");
    let search_sink = format!(
        "{{name: search, elasticsearch: {{url: \"{}\", index: windows}}}}",
        es.url()
    );
    edit_spec(&run.manifest, |spec| {
        spec["window"]["outputMode"] = "update".into();
        let sinks = spec["sinks"].as_sequence_mut().unwrap();
        sinks.push(serde_yaml::from_str(&search_sink).unwrap());
    });
    let (child, logs) = spawn_runner(&run.manifest, &[]);
    wait_success(child, logs);

    let expected = expected_windows(&run.lines);
    let uri = run.table.to_str().unwrap();
    // One row per window and key (table_windows checks it).
    let table = table_windows(&read_table(uri).await.unwrap());
    let (closed, open): (Windows, Windows) = table
        .iter()
        .map(|(key, count)| (key.clone(), *count))
        .partition(|((_, end, _), _)| *end <= expected.watermark);
    assert_eq!(
        closed, expected.windows,
        "closed windows hold append mode's rows"
    );
    assert!(
        !open.is_empty(),
        "windows still open at the end show their current values"
    );

    // The first epoch's commit already holds windows that closed later,
    // with the smaller counts they had then.
    let first = table_windows(&read_table_version(uri, 1).await.unwrap());
    let grew = first
        .iter()
        .filter(|(key, count)| table.get(*key).is_some_and(|last| last > *count))
        .count();
    assert!(
        grew > 0,
        "no window's value grew after the first epoch: {first:?}"
    );

    // Elasticsearch holds the same latest values, each document overwritten
    // as its window changed.
    let documents = es.documents("windows").await;
    let mut indexed = Windows::new();
    let millis = |v: &serde_json::Value| {
        v.as_str()
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
            .map(|t| t.as_millisecond())
            .unwrap()
    };
    for document in documents.values() {
        let source = &document.source;
        indexed.insert(
            (
                millis(&source["window_start"]),
                millis(&source["window_end"]),
                source["event_type"].as_str().unwrap().to_owned(),
            ),
            source["event_count"].as_i64().unwrap(),
        );
    }
    assert_eq!(indexed, table, "Elasticsearch and Delta hold the same rows");
    assert!(
        documents.values().any(|d| d.version > 1),
        "documents are overwritten with newer values"
    );
}
