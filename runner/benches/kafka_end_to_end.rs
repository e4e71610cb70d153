//! End-to-end events/s of the reference query (5m sliding 1m by event_type,
//! 2m watermark, count, into a local Delta table) reading a 4-partition topic
//! of librdkafka's in-process mock cluster (the real Kafka protocol on
//! localhost, no external broker): at parallelism 1, and at parallelism 2
//! with key groups (two replicas, each a `Job` on its own runtime of two
//! worker threads, as in two runner processes, exchanging pre-aggregates
//! through the repartition topic). Beside them, the rate at which a plain
//! rdkafka consumer reads the same topic, and what the repartition hop costs:
//! records and bytes sent to the repartition topic per event, and events per
//! CPU-second at parallelism 2 against 1.
//!
//! A pipeline run is timed from the moment every replica's `Job` is built
//! (its consumers created, the repartition topic checked) to its end. The
//! end: each partition ends with a closing event ten
//! minutes after the data, so the reference query's last data windows can
//! only be emitted once every partition has been read to its end (the
//! watermark is the minimum over partitions); the run ends when every
//! replica's window stage reports the watermark of the closing events, which
//! it does after writing that epoch's windows to the Delta table. The table
//! is then checked: it holds the last data window of every event type, and
//! as many rows as the runners report emitting.
//!
//! `cargo bench -p sluice-runner --bench kafka_end_to_end` (release build);
//! `SLUICE_BENCH_EVENTS` sets the number of events (default 1,000,000),
//! `RUST_LOG` shows the runners' logs.

#[path = "../tests/it/common/mod.rs"]
mod common;

use std::{
    sync::{Arc, Barrier},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use common::{MINUTE, closing_time, data_set, reference_query_spec, table_windows, topic_messages};
use rdkafka::{
    ClientConfig, Message, Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer},
    mocking::MockCluster,
    producer::{BaseProducer, BaseRecord, Producer},
};
use sluice_runner::{
    pipeline::{Job, RunSummary, RunnerIdentity},
    sink::delta::read_table,
    telemetry::Telemetry,
};
use tokio::sync::watch;

const TOPIC: &str = "bench";
const PARTITIONS: i32 = 4;
const NAMESPACE: &str = "bench";
const TIMEOUT: Duration = Duration::from_secs(600);

fn main() {
    let events: usize = std::env::var("SLUICE_BENCH_EVENTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1_000_000);
    // The runners' logs, when asked for (`RUST_LOG=sluice_runner=info`).
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    println!("load average at the start: {}", load_average());
    let cluster = MockCluster::new(1).expect("start the mock cluster");
    let broker = mock_thread();
    let cpu = Cpu { broker };
    cluster
        .create_topic(TOPIC, PARTITIONS, 1)
        .expect("create the topic");
    let bootstrap = cluster.bootstrap_servers();
    let dir = tempfile::tempdir().expect("temporary folder");

    // Round robin over the partitions, then a closing event per partition.
    let messages = topic_messages(&mut data_set(events, 1), events, PARTITIONS, |i| {
        (i % PARTITIONS as usize) as i32
    });
    let produce_started = Instant::now();
    let bytes = produce(&bootstrap, &messages);
    println!(
        "produced {} messages ({:.0} bytes each, {PARTITIONS} partitions, zstd batches) in {:.1}s",
        messages.len(),
        bytes as f64 / messages.len() as f64,
        produce_started.elapsed().as_secs_f64()
    );
    assert_eq!(
        stored_records(&bootstrap, TOPIC, PARTITIONS),
        messages.len(),
        "the topic's end offsets"
    );

    let plain = plain_consumer(&cpu, &bootstrap, messages.len());
    plain.print("plain rdkafka consumer");
    let closing = closing_time(events);
    let one = run_pipeline(&cpu, &bootstrap, dir.path(), 1, messages.len(), closing);
    one.print("sluice, parallelism 1");
    // The mock cluster serves no CreateTopics (its admin requests time out):
    // the repartition topic is created beforehand, as an administrator may.
    cluster
        .create_topic(&repartition_topic(2), sluice_crds::DEFAULT_KEY_GROUPS, 1)
        .expect("create the repartition topic");
    let two = run_pipeline(&cpu, &bootstrap, dir.path(), 2, messages.len(), closing);
    two.print("sluice, parallelism 2");

    let shuffle = read_repartition_topic(&bootstrap, &repartition_topic(2));
    let per_event = |n: u64| n as f64 / messages.len() as f64;
    println!(
        "repartition topic: {} records ({} partials, {} progress markers), {} bytes of keys and JSON payloads (zstd on the wire): {:.5} records and {:.3} bytes per event",
        shuffle.records,
        shuffle.partials,
        shuffle.records - shuffle.partials,
        shuffle.bytes,
        per_event(shuffle.records),
        per_event(shuffle.bytes),
    );
    println!(
        "parallelism 2 / 1: {:.2}x events/s, {:.2}x events per CPU-second without the broker (CPU per event {:+.0}%: the repartition hop and the second stage)",
        two.rate() / one.rate(),
        two.per_cpu_second() / one.per_cpu_second(),
        (one.per_cpu_second() / two.per_cpu_second() - 1.0) * 100.0,
    );
    println!(
        "sluice / plain consumer: {:.2} at parallelism 1, {:.2} at parallelism 2",
        one.rate() / plain.rate(),
        two.rate() / plain.rate()
    );
    println!("load average at the end: {}", load_average());
}

/// Produces the messages and waits for them; returns their payload bytes.
fn produce(bootstrap: &str, messages: &[(i32, String)]) -> usize {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        // Compressed batches: the mock cluster keeps only 5 MiB of batches
        // per partition (1,000,000 events are 21 MB per partition).
        .set("compression.type", "zstd")
        .create()
        .expect("producer");
    let mut bytes = 0;
    for (partition, payload) in messages {
        bytes += payload.len();
        let mut record = BaseRecord::<(), [u8]>::to(TOPIC)
            .partition(*partition)
            .payload(payload.as_bytes());
        loop {
            match producer.send(record) {
                Ok(()) => break,
                // The local queue is full: let the broker catch up, then retry.
                Err((rdkafka::error::KafkaError::MessageProduction(_), returned)) => {
                    record = returned;
                    producer.poll(Duration::from_millis(10));
                }
                Err((error, _)) => panic!("produce: {error}"),
            }
        }
    }
    producer.flush(TIMEOUT).expect("flush");
    bytes
}

/// The number of records in `topic`, checking that the broker still holds
/// each partition from offset 0: the mock cluster keeps only the newest
/// 5 MiB of record batches per partition.
fn stored_records(bootstrap: &str, topic: &str, partitions: i32) -> usize {
    let consumer = consumer(bootstrap, "bench-offsets");
    (0..partitions)
        .map(|partition| {
            let (start, end) = consumer
                .fetch_watermarks(topic, partition, TIMEOUT)
                .expect("the partition's offsets");
            assert_eq!(start, 0, "{topic} [{partition}] lost its oldest records");
            end as usize
        })
        .sum()
}

fn consumer(bootstrap: &str, group: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("queued.max.messages.kbytes", "16384")
        .set("fetch.max.bytes", "16777216")
        .create()
        .expect("consumer")
}

/// Reads `partitions` of `topic` from the beginning until `records` were
/// read, calling `read` on each message.
fn consume_all(
    consumer: &BaseConsumer,
    topic: &str,
    partitions: i32,
    records: usize,
    mut read: impl FnMut(&rdkafka::message::BorrowedMessage<'_>),
) {
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        assignment
            .add_partition_offset(topic, partition, Offset::Beginning)
            .expect("assignment");
    }
    consumer.assign(&assignment).expect("assign");
    for done in 0..records {
        match consumer.poll(Duration::from_secs(30)) {
            Some(Ok(message)) => read(&message),
            Some(Err(error)) => panic!("consume {topic}: {error}"),
            None => panic!("reading {topic} stalled at {done} of {records} records"),
        }
    }
}

/// Reads every partition from the beginning with a `BaseConsumer`, touching each payload.
fn plain_consumer(cpu: &Cpu, bootstrap: &str, records: usize) -> Figures {
    let consumer = consumer(bootstrap, "bench-plain");
    let clock = Clock::start(cpu, records);
    let mut checksum = 0u64;
    consume_all(&consumer, TOPIC, PARTITIONS, records, |message| {
        checksum += message.payload().map_or(0, |p| p.len() as u64);
    });
    assert!(checksum > 0);
    clock.stop()
}

fn repartition_topic(replicas: u32) -> String {
    format!("sluice-{NAMESPACE}-{}-keygroups", pipeline_name(replicas))
}

fn pipeline_name(replicas: u32) -> String {
    format!("kafka-bench-p{replicas}")
}

/// Runs the reference query with `replicas` replicas until every replica's
/// window stage has the watermark of the closing events (see the top of the
/// file); then stops the replicas and checks the Delta table.
fn run_pipeline(
    cpu: &Cpu,
    bootstrap: &str,
    dir: &std::path::Path,
    replicas: u32,
    records: usize,
    closing: i64,
) -> Figures {
    let name = pipeline_name(replicas);
    let table = dir.join(format!("{name}-table")).display().to_string();
    let checkpoints = dir
        .join(format!("{name}-checkpoints"))
        .display()
        .to_string();
    let manifest = format!(
        r#"apiVersion: sluice.dev/v1alpha1
kind: StreamPipeline
metadata: {{name: {name}, namespace: {NAMESPACE}, uid: {name}}}
spec:
  source:
    kafka:
      bootstrapServers: "{bootstrap}"
      topics: [{TOPIC}]
      consumerGroup: {name}
      startingOffsets: earliest
      maxOffsetsPerTrigger: 500000
  parallelism: {replicas}
{}"#,
        reference_query_spec(&table, &checkpoints, "10s", "0s"),
    );
    let spec = Arc::new(
        sluice_crds::parse_pipeline(&manifest)
            .expect("the bench manifest")
            .spec,
    );
    let (stop_sender, stop) = watch::channel(false);
    let built = Arc::new(Barrier::new(replicas as usize + 1));
    let runners: Vec<(Arc<Telemetry>, JoinHandle<RunSummary>)> = (0..replicas)
        .map(|replica| {
            let telemetry = Arc::new(Telemetry::new(replica, replicas).expect("telemetry"));
            let identity = RunnerIdentity {
                pipeline: name.clone(),
                replica,
                replicas,
                repartition_topic: repartition_topic(replicas),
                generation: 0,
            };
            let (spec, stop, built) = (spec.clone(), stop.clone(), built.clone());
            let runner_telemetry = telemetry.clone();
            let thread = std::thread::spawn(move || {
                // As `sluice-runner run`: a runtime of two worker threads.
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("runtime")
                    .block_on(async move {
                        let job = Job::from_spec(&spec, identity, runner_telemetry).await;
                        built.wait();
                        match job {
                            Ok(job) => job.run(stop).await,
                            Err(error) => Err(error),
                        }
                    })
                    .unwrap_or_else(|error| panic!("replica {replica}: {error}"))
            });
            (telemetry, thread)
        })
        .collect();
    built.wait();
    let clock = Clock::start(cpu, records);
    let target = closing - 2 * MINUTE;
    loop {
        let done = runners.iter().all(|(telemetry, _)| {
            telemetry
                .status()
                .watermark
                .and_then(|w| w.parse::<jiff::Timestamp>().ok())
                .is_some_and(|w| w.as_millisecond() >= target)
        });
        if done {
            break;
        }
        if runners.iter().any(|(_, thread)| thread.is_finished()) {
            let _ = stop_sender.send(true);
            for (_, thread) in runners {
                if let Err(panic) = thread.join() {
                    std::panic::resume_unwind(panic);
                }
            }
            panic!("parallelism {replicas}: a replica stopped before the end");
        }
        assert!(
            clock.started.elapsed() < TIMEOUT,
            "parallelism {replicas}: the watermark never passed the data"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let figures = clock.stop();
    stop_sender.send(true).expect("stop the replicas");
    let mut emitted = 0;
    for (telemetry, thread) in runners {
        thread.join().expect("a replica panicked");
        emitted += telemetry.windows_emitted.get();
    }
    check_table(&table, emitted, closing);
    figures
}

/// The table holds one row per window the runners emitted, among them the
/// last data window of every event type.
fn check_table(table: &str, emitted: u64, closing: i64) {
    let batches = tokio::runtime::Runtime::new()
        .expect("runtime")
        .block_on(read_table(table))
        .expect("read the Delta table");
    let windows = table_windows(&batches);
    assert_eq!(
        windows.len() as u64,
        emitted,
        "rows against windows emitted"
    );
    // The data's newest event is 10 minutes before the closing one.
    let last_start = (closing - 10 * MINUTE).div_euclid(MINUTE) * MINUTE;
    for event_type in ["view", "click", "add_to_cart", "purchase"] {
        let key = (last_start, last_start + 5 * MINUTE, event_type.to_owned());
        assert!(
            windows.contains_key(&key),
            "the table lacks the last window of {event_type}"
        );
    }
}

struct Shuffle {
    records: u64,
    partials: u64,
    bytes: u64,
}

/// Counts the records of the repartition topic and their key and payload bytes.
fn read_repartition_topic(bootstrap: &str, topic: &str) -> Shuffle {
    let partitions = sluice_crds::DEFAULT_KEY_GROUPS;
    let records = stored_records(bootstrap, topic, partitions);
    let consumer = consumer(bootstrap, "bench-shuffle");
    let mut shuffle = Shuffle {
        records: records as u64,
        partials: 0,
        bytes: 0,
    };
    consume_all(&consumer, topic, partitions, records, |message| {
        let payload = message.payload().unwrap_or_default();
        shuffle.bytes += (payload.len() + message.key().map_or(0, <[u8]>::len)) as u64;
        if payload.starts_with(br#"{"kind":"partial""#) {
            shuffle.partials += 1;
        }
    });
    shuffle
}

/// Wall time and CPU time of this process over a span, and the part of the
/// CPU time spent by the mock cluster's thread.
struct Clock<'a> {
    cpu: &'a Cpu,
    records: usize,
    started: Instant,
    process: f64,
    broker: f64,
}

struct Figures {
    records: usize,
    seconds: f64,
    cpu: f64,
    broker_cpu: f64,
}

impl<'a> Clock<'a> {
    fn start(cpu: &'a Cpu, records: usize) -> Self {
        let (process, broker) = cpu.seconds();
        Self {
            cpu,
            records,
            started: Instant::now(),
            process,
            broker,
        }
    }

    fn stop(&self) -> Figures {
        let seconds = self.started.elapsed().as_secs_f64();
        let (process, broker) = self.cpu.seconds();
        Figures {
            records: self.records,
            seconds,
            cpu: process - self.process,
            broker_cpu: broker - self.broker,
        }
    }
}

impl Figures {
    fn rate(&self) -> f64 {
        self.records as f64 / self.seconds
    }

    /// Events per CPU-second of everything but the broker.
    fn per_cpu_second(&self) -> f64 {
        self.records as f64 / (self.cpu - self.broker_cpu)
    }

    fn print(&self, what: &str) {
        println!(
            "{what:<24} {:>10.0} events/s ({:.2}s; CPU {:.2}s, of which the mock broker {:.2}s: {:.0} events per CPU-second without the broker)",
            self.rate(),
            self.seconds,
            self.cpu,
            self.broker_cpu,
            self.per_cpu_second(),
        );
    }
}

/// CPU time (user and system) from /proc: Linux only, clock ticks of 10 ms.
struct Cpu {
    /// The mock cluster's thread id.
    broker: String,
}

impl Cpu {
    /// This process's CPU seconds, and those of the mock cluster's thread.
    fn seconds(&self) -> (f64, f64) {
        const TICK: f64 = 0.01;
        // utime and stime, the 14th and 15th fields, after the parenthesized name.
        let ticks = |path: String| -> f64 {
            let stat = std::fs::read_to_string(path).unwrap_or_default();
            let fields: Vec<&str> = stat
                .rsplit_once(')')
                .map_or("", |(_, rest)| rest)
                .split_whitespace()
                .collect();
            let field = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
            field(11).unwrap_or(0.0) + field(12).unwrap_or(0.0)
        };
        (
            ticks("/proc/self/stat".into()) * TICK,
            ticks(format!("/proc/self/task/{}/stat", self.broker)) * TICK,
        )
    }
}

/// The id of the mock cluster's thread, which names itself `rdk:mock`.
fn mock_thread() -> String {
    let started = Instant::now();
    loop {
        let named: Vec<String> = std::fs::read_dir("/proc/self/task")
            .into_iter()
            .flatten()
            .filter_map(|task| Some(task.ok()?.file_name().to_string_lossy().into_owned()))
            .filter(|task| {
                std::fs::read_to_string(format!("/proc/self/task/{task}/comm"))
                    .is_ok_and(|name| name.trim() == "rdk:mock")
            })
            .collect();
        match named.as_slice() {
            [task] => return task.clone(),
            [] if started.elapsed() < Duration::from_secs(5) => {
                std::thread::sleep(Duration::from_millis(10));
            }
            _ => panic!("expected one rdk:mock thread, found {named:?}"),
        }
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}
