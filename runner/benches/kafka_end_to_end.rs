//! End-to-end events/s of the reference query (5m sliding 1m by event_type,
//! 2m watermark, count, into a local Delta table) reading a topic of a local
//! tansu broker, next to the rate at which a plain rdkafka consumer reads the
//! same topic: the broker's own ceiling on this machine.
//!
//! `cargo bench -p sluice-runner --bench kafka_end_to_end` (release build);
//! `SLUICE_BENCH_EVENTS` sets the number of events (default 1,000,000).

#[path = "../tests/it/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::{data_set, reference_query_spec, spawn_runner, wait_for_line, write_jsonl};
use rdkafka::{
    Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer},
};
use sluice_tests::kafka::KafkaBroker;

const TOPIC: &str = "bench";
const PARTITIONS: i32 = 4;

fn main() {
    let events: usize = std::env::var("SLUICE_BENCH_EVENTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1_000_000);
    let broker = KafkaBroker::start().expect("start tansu (run tests/scripts/setup.sh)");
    broker
        .create_topic(TOPIC, PARTITIONS)
        .expect("create the topic");
    let dir = tempfile::tempdir().expect("temporary folder");

    let lines_path = dir.path().join("events.jsonl");
    write_jsonl(&data_set(events, 1), &lines_path);
    let text = std::fs::read_to_string(&lines_path).expect("read the data set");
    let producer = broker.producer().expect("producer");
    let produce_started = Instant::now();
    let mut bytes = 0;
    for (i, line) in text.lines().enumerate() {
        bytes += line.len();
        producer
            .send(
                TOPIC,
                (i % PARTITIONS as usize) as i32,
                None,
                line.as_bytes(),
            )
            .expect("produce");
    }
    producer.flush().expect("flush");
    let produce_took = produce_started.elapsed();
    let stored: i64 = broker.end_offsets(TOPIC).expect("end offsets").iter().sum();
    assert_eq!(stored, events as i64, "the broker's end offsets");
    println!(
        "produced {events} events ({:.0} bytes each) in {:.1}s",
        bytes as f64 / events as f64,
        produce_took.as_secs_f64()
    );

    let plain = plain_consumer_rate(&broker, events);
    println!("plain rdkafka consumer:        {plain:>12.0} events/s");
    let pipeline = pipeline_rate(&broker, dir.path(), events);
    println!("sluice-runner reference query: {pipeline:>12.0} events/s");
    println!("ratio pipeline / plain consumer: {:.2}", pipeline / plain);
}

/// Reads every partition from the beginning with a `BaseConsumer`, touching each payload.
fn plain_consumer_rate(broker: &KafkaBroker, events: usize) -> f64 {
    let consumer: BaseConsumer = broker
        .client_config()
        .set("group.id", "bench-plain")
        .set("enable.auto.commit", "false")
        .set("queued.max.messages.kbytes", "16384")
        .set("fetch.max.bytes", "16777216")
        .create()
        .expect("consumer");
    let mut assignment = TopicPartitionList::new();
    for partition in 0..PARTITIONS {
        assignment
            .add_partition_offset(TOPIC, partition, Offset::Beginning)
            .expect("assignment");
    }
    consumer.assign(&assignment).expect("assign");
    let started = Instant::now();
    let mut read = 0;
    let mut checksum = 0u64;
    while read < events {
        match consumer.poll(Duration::from_secs(10)) {
            Some(Ok(message)) => {
                use rdkafka::Message;
                checksum += message.payload().map_or(0, |p| p.len() as u64);
                read += 1;
            }
            Some(Err(error)) => panic!("consume: {error}"),
            None => panic!("the plain consumer stalled at {read} of {events} events"),
        }
    }
    assert!(checksum > 0);
    events as f64 / started.elapsed().as_secs_f64()
}

/// Runs `sluice-runner` over the topic and times the epochs, from the first
/// plan to the commit of the epoch that reaches the last event.
fn pipeline_rate(broker: &KafkaBroker, dir: &std::path::Path, events: usize) -> f64 {
    let manifest = dir.join("pipeline.yaml");
    std::fs::write(
        &manifest,
        format!(
            r#"apiVersion: sluice.dev/v1alpha1
kind: StreamPipeline
metadata: {{name: kafka-bench, namespace: bench, uid: bench}}
spec:
  source:
    kafka:
      bootstrapServers: "{}"
      topics: [{TOPIC}]
      consumerGroup: bench-pipeline
      startingOffsets: earliest
      maxOffsetsPerTrigger: 500000
{}"#,
            broker.bootstrap_servers(),
            reference_query_spec(
                &dir.join("table").display().to_string(),
                &dir.join("checkpoints").display().to_string(),
                "10s",
                "0s",
            ),
        ),
    )
    .expect("write the manifest");
    let (mut runner, logs) = spawn_runner(&manifest, &[]);
    // Each wait gives up after two minutes without the line it waits for.
    wait_for_line(&logs, "epoch planned", |_| true).expect("the runner planned no epoch");
    let started = Instant::now();
    let mut read = 0u64;
    while read < events as u64 {
        let Some(epoch) = wait_for_line(&logs, "epoch committed", |_| true) else {
            let _ = runner.kill();
            panic!("the runner stopped committing epochs after {read} of {events} events");
        };
        read += epoch["records"].as_u64().unwrap_or(0);
    }
    let took = started.elapsed();
    let _ = runner.kill();
    let _ = runner.wait();
    events as f64 / took.as_secs_f64()
}
