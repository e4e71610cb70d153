//! The Kafka source end to end, against a real Kafka-protocol broker (tansu,
//! started by `sluice_tests::kafka`; see tests/README.md): the reference
//! query over a multi-partition topic, crashes and a broker restart (the
//! broker keeps its data in a SQLite file), and the dead-letter topic.
//!
//! The data set and the independent batch computation are the runner's
//! shared ones (`common`): every JSON line becomes one message. Each
//! partition ends with a closing event ten minutes after the data, so the
//! final watermark (the minimum over partitions) passes every data window
//! whatever the order in which partitions were read.

use std::{
    collections::{BTreeMap, HashMap},
    path::Path,
    process::{Child, Command},
    sync::mpsc,
    time::{Duration, Instant},
};

use crate::common::*;
use rdkafka::{
    Message,
    consumer::{BaseConsumer, Consumer},
    message::Headers,
};
use sluice_crds::{SECRETS_DIR_ENV, secret_env_var};
use sluice_runner::sink::delta::read_table_with_options;
use sluice_tests::kafka::{KafkaBroker, ScramLogin};

const TOPIC: &str = "events";
const PARTITIONS: i32 = 4;
const GROUP: &str = "clickstream";
/// Records per epoch: small enough that the first epoch ends long before the
/// first late event, whatever share each partition gets.
const MAX_OFFSETS_PER_TRIGGER: usize = 2_000;

/// The data set as Kafka messages: (partition, payload), in production order.
pub(crate) struct Topic {
    pub lines: Vec<Line>,
    pub messages: Vec<(i32, String)>,
}

impl Topic {
    pub(crate) fn generate(events: usize, seed: u64) -> Self {
        let mut lines = data_set_without_stragglers(events, seed);
        let messages = topic_messages(&mut lines, events, PARTITIONS, |i| {
            (i % PARTITIONS as usize) as i32
        });
        Self { lines, messages }
    }

    /// Creates the topic on `broker`, empty.
    pub(crate) fn create(&self, broker: &KafkaBroker) {
        broker.create_topic(TOPIC, PARTITIONS).unwrap();
    }

    fn produce(&self, broker: &KafkaBroker) {
        self.create(broker);
        self.produce_up_to(broker, 0, self.messages.len());
    }

    /// Produces `messages[from..to]`, then checks that the broker's end
    /// offsets count exactly `messages[..to]`.
    pub(crate) fn produce_up_to(&self, broker: &KafkaBroker, from: usize, to: usize) {
        send_all(broker, TOPIC, &self.messages[from..to]);
        let mut per_partition = vec![0i64; PARTITIONS as usize];
        for (partition, _) in &self.messages[..to] {
            per_partition[*partition as usize] += 1;
        }
        assert_eq!(broker.end_offsets(TOPIC).unwrap(), per_partition);
    }

    /// (partition, offset) of every message, in the order `lines` lists them.
    fn offsets(&self) -> Vec<(i32, i64)> {
        let mut next = vec![0i64; PARTITIONS as usize];
        self.messages
            .iter()
            .map(|(partition, _)| {
                let offset = next[*partition as usize];
                next[*partition as usize] += 1;
                (*partition, offset)
            })
            .collect()
    }
}

/// Produces `(partition, payload)` messages to `topic` and waits for them.
pub(crate) fn send_all(broker: &KafkaBroker, topic: &str, messages: &[(i32, String)]) {
    let producer = broker.producer().unwrap();
    for (partition, payload) in messages {
        producer
            .send(topic, *partition, None, payload.as_bytes())
            .unwrap();
    }
    producer.flush().unwrap();
}

/// The reference query over the topic, with its Delta table and checkpoints
/// in local folders under `dir`; `kafka_extra` adds lines to the source's
/// `kafka` block, `extra` to the spec. Returns the manifest and the table.
fn manifest(
    dir: &Path,
    broker: &KafkaBroker,
    kafka_extra: &str,
    extra: &str,
) -> (std::path::PathBuf, String) {
    let table = dir.join("table").display().to_string();
    let checkpoints = dir.join("checkpoints").display().to_string();
    let manifest = manifest_at(dir, broker, &table, &checkpoints, kafka_extra, extra);
    (manifest, table)
}

/// [`manifest`] with the Delta table and the checkpoints at given URIs.
pub(crate) fn manifest_at(
    dir: &Path,
    broker: &KafkaBroker,
    table: &str,
    checkpoints: &str,
    kafka_extra: &str,
    extra: &str,
) -> std::path::PathBuf {
    let text = format!(
        r#"apiVersion: sluice.dev/v1alpha1
kind: StreamPipeline
metadata: {{name: kafka-reference, namespace: test, uid: 5b1e0d2a-kafka}}
spec:
  source:
    kafka:
      bootstrapServers: "{bootstrap}"
      topics: [{TOPIC}]
      consumerGroup: {GROUP}
      startingOffsets: earliest
      maxOffsetsPerTrigger: {MAX_OFFSETS_PER_TRIGGER}
{kafka_extra}{spec}{extra}"#,
        bootstrap = broker.bootstrap_servers(),
        spec = reference_query_spec(table, checkpoints, "0s", "0s"),
    );
    let path = dir.join("pipeline.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Polls the Delta table until it holds `expected` (or the deadline passes),
/// checking the runner stays up meanwhile; returns what it last read.
pub(crate) async fn wait_for_table(table: &str, expected: &Windows, runner: &mut Child) -> Windows {
    wait_for_table_with(table, &HashMap::new(), expected, runner).await
}

/// [`wait_for_table`] with storage options (S3 settings).
pub(crate) async fn wait_for_table_with(
    table: &str,
    options: &HashMap<String, String>,
    expected: &Windows,
    runner: &mut Child,
) -> Windows {
    poll_until(
        &mut [runner],
        async || match read_table_with_options(table, options.clone()).await {
            Ok(batches) => table_windows(&batches),
            Err(_) => Windows::new(),
        },
        |actual| actual == expected,
    )
    .await
}

/// Lines as messages, each to a partition chosen from its position (not
/// from any field, so not from a group-by key), and a closing event per
/// partition. `text` holds the lines as JSON lines.
pub(crate) fn scattered_messages(
    lines: &mut Vec<Line>,
    text: &str,
    events: usize,
    partitions: i32,
) -> Vec<(i32, String)> {
    messages_of(text, lines, events, partitions, |i| {
        ((i * 7 + i / 3) % partitions as usize) as i32
    })
}

/// A manifest reading `topic` from its start with `replicas` replicas and
/// `key_groups` key groups; `spec` is the rest of the spec (window, sinks,
/// checkpoint, trigger).
pub(crate) fn replicated_manifest(
    broker: &KafkaBroker,
    topic: &str,
    name: &str,
    replicas: u32,
    key_groups: u32,
    spec: &str,
) -> String {
    format!(
        r#"apiVersion: sluice.dev/v1alpha1
kind: StreamPipeline
metadata: {{name: {name}, namespace: test, uid: 0c4f-{name}}}
spec:
  source:
    kafka:
      bootstrapServers: "{bootstrap}"
      topics: [{topic}]
      consumerGroup: {name}
      startingOffsets: earliest
      maxOffsetsPerTrigger: 1000
  parallelism: {replicas}
  keyGroups: {key_groups}
{spec}"#,
        bootstrap = broker.bootstrap_servers(),
    )
}

/// One runner process of a test, with its logs and HTTP address.
pub(crate) struct Runner {
    pub child: Child,
    pub logs: mpsc::Receiver<String>,
    pub address: String,
}

impl Runner {
    /// Starts replica `replica` of `replicas` of `manifest`.
    pub(crate) fn start(manifest: &Path, replica: u32, replicas: u32) -> Self {
        let (child, logs) = spawn_runner(
            manifest,
            &[
                ("SLUICE_REPLICA", replica.to_string()),
                ("SLUICE_REPLICAS", replicas.to_string()),
            ],
        );
        let address = runner_address(&logs);
        Self {
            child,
            logs,
            address,
        }
    }
}

/// Runners of one pipeline, one per replica; a failed test leaves none behind.
pub(crate) struct Replicas {
    pub runners: Vec<Runner>,
}

impl Replicas {
    /// Starts `replicas` runners of `manifest`.
    pub(crate) fn start_all(manifest: &Path, replicas: u32) -> Self {
        Self {
            runners: (0..replicas)
                .map(|replica| Runner::start(manifest, replica, replicas))
                .collect(),
        }
    }

    /// Produces the first epoch's worth of `messages` (it holds no late
    /// events), starts `replicas` runners of `manifest`, and waits until
    /// every runner has a watermark in every key group, so that every event
    /// an hour late produced after is late in its key group too, as it is
    /// for one runner after its first epoch (before any watermark, nothing
    /// is late). Returns the runners and the messages not yet produced.
    pub(crate) async fn start_after_first_epoch<'m>(
        broker: &KafkaBroker,
        topic: &str,
        messages: &'m [(i32, String)],
        manifest: &Path,
        replicas: u32,
    ) -> (Self, &'m [(i32, String)]) {
        let first = messages.len().min(LINES_PER_EPOCH);
        send_all(broker, topic, &messages[..first]);
        let mut started = Self::start_all(manifest, replicas);
        for runner in &mut started.runners {
            poll_runner(
                &mut runner.child,
                &format!("{}/status", runner.address),
                "a watermark in every key group",
                async |response| {
                    let status: serde_json::Value = response.json().await.ok()?;
                    status["watermark"].as_str().map(str::to_owned)
                },
            )
            .await;
        }
        (started, &messages[first..])
    }

    /// [`Replicas::start_after_first_epoch`], then the rest of `messages`.
    pub(crate) async fn start(
        broker: &KafkaBroker,
        topic: &str,
        messages: &[(i32, String)],
        manifest: &Path,
        replicas: u32,
    ) -> Self {
        let (started, rest) =
            Self::start_after_first_epoch(broker, topic, messages, manifest, replicas).await;
        send_all(broker, topic, rest);
        started
    }

    /// The runner processes, to check they stay up.
    pub(crate) fn children(&mut self) -> Vec<&mut Child> {
        self.runners.iter_mut().map(|r| &mut r.child).collect()
    }

    /// Stops every runner as the controller does before starting another
    /// set: SIGTERM; each finishes its epoch and checkpoints.
    pub(crate) fn stop(mut self) {
        for runner in std::mem::take(&mut self.runners) {
            stop_gracefully(runner.child, runner.logs);
        }
    }
}

impl Drop for Replicas {
    fn drop(&mut self) {
        for runner in &mut self.runners {
            let _ = runner.child.kill();
            let _ = runner.child.wait();
        }
    }
}

/// Asks the runner to stop (SIGTERM: it finishes the epoch, checkpoints and
/// commits the consumer group) and waits for it.
pub(crate) fn stop_gracefully(runner: Child, logs: mpsc::Receiver<String>) {
    let status = Command::new("kill")
        .args(["-TERM", &runner.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    wait_success(runner, logs);
}

/// Runs the pipeline until its Delta table holds exactly `expected` (the
/// batch computation) and, while it still runs, the consumer group's
/// offsets reach the end of the topic (as lag tools would show); then stops
/// it gracefully.
async fn run_to_the_end(
    manifest: &Path,
    env: &[(&str, String)],
    table: &str,
    expected: &Windows,
    broker: &KafkaBroker,
) {
    let (mut runner, logs) = spawn_runner(manifest, env);
    let actual = wait_for_table(table, expected, &mut runner).await;
    assert_eq!(
        &actual, expected,
        "Delta rows differ from the batch computation"
    );
    wait_for_committed_end(broker);
    assert!(
        runner.try_wait().unwrap().is_none(),
        "the runner exited (which also commits the offsets)"
    );
    stop_gracefully(runner, logs);
}

/// Polls until the consumer group's committed offsets are the topic's end offsets.
fn wait_for_committed_end(broker: &KafkaBroker) {
    let end: Vec<Option<i64>> = broker
        .end_offsets(TOPIC)
        .unwrap()
        .into_iter()
        .map(Some)
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let committed = broker.committed_offsets(GROUP, TOPIC).unwrap();
        if committed == end {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "committed offsets {committed:?} never reached the end {end:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reference_query_over_a_partitioned_topic_matches_the_batch_computation() {
    let broker = KafkaBroker::start().unwrap();
    let topic = Topic::generate(40_000, 3);
    topic.produce(&broker);
    let dir = tempfile::tempdir().unwrap();
    let (manifest, table) = manifest(dir.path(), &broker, "", "");

    let Expected {
        windows: expected,
        late,
        ..
    } = expected_windows(&topic.lines);
    assert!(late > 100, "the data set has late events ({late})");
    run_to_the_end(&manifest, &[], &table, &expected, &broker).await;
}

/// With checkpoints due only every 20 s, a pipeline that has read
/// everything still checkpoints its last epochs once the interval has
/// passed, with no new data to start another epoch: lag tools see the
/// consumer group at the end while it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caught_up_pipeline_commits_the_end_of_the_topic_within_the_checkpoint_interval() {
    let broker = KafkaBroker::start().unwrap();
    let topic = Topic::generate(10_000, 3);
    topic.produce(&broker);
    let dir = tempfile::tempdir().unwrap();
    let (manifest, table) = manifest(dir.path(), &broker, "", "");
    edit_spec(&manifest, |spec| {
        spec["checkpoint"]["interval"] = "20s".into();
        // No epoch for partitions turning idle either (it would checkpoint).
        spec["window"]["idleTimeout"] = "1h".into();
    });
    let expected = expected_windows(&topic.lines).windows;
    run_to_the_end(&manifest, &[], &table, &expected, &broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kills_and_a_broker_restart_lose_and_duplicate_nothing() {
    let mut broker = KafkaBroker::start().unwrap();
    let topic = Topic::generate(60_000, 5);
    // Half before the runner starts, the rest once the broker is back, so
    // there is always something to read after the restart.
    let first_part = topic.messages.len() / 2;
    topic.create(&broker);
    topic.produce_up_to(&broker, 0, first_part);
    let produced = broker.end_offsets(TOPIC).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (manifest, table) = manifest(dir.path(), &broker, "", "");
    let Expected {
        windows: expected, ..
    } = expected_windows(&topic.lines);

    let mut rng = Rng::new(2026);
    // Which of the runner's lives sees the broker restart (an early one:
    // each life reads some epochs of the first half).
    let restart_in = 1 + rng.below(2);
    for life in 0..6 {
        let (mut runner, logs) = spawn_runner(&manifest, &[]);
        let readyz = format!("{}/readyz", runner_address(&logs));
        assert!(
            wait_for_log(&logs, "epoch committed", 0),
            "no epoch committed in runner life {life}"
        );
        if life == restart_in {
            // The broker dies under a running runner (a random moment of its
            // processing) and comes back with its data; the runner must ride
            // it out: report not ready, never exit, then go on.
            std::thread::sleep(Duration::from_millis(rng.below(2_000)));
            broker.kill();
            wait_until_readyz(&readyz, &mut runner, false).await;
            broker.start_again().unwrap();
            assert_eq!(
                broker.end_offsets(TOPIC).unwrap(),
                produced,
                "the restarted broker kept every record"
            );
            wait_until_readyz(&readyz, &mut runner, true).await;
            let _ = logs.try_iter().count();
            topic.produce_up_to(&broker, first_part, topic.messages.len());
            for _ in 0..2 {
                assert!(
                    wait_for_log(&logs, "epoch committed", 0),
                    "no progress after the broker restart"
                );
            }
        }
        // A random moment within the next two seconds of processing.
        std::thread::sleep(Duration::from_millis(rng.below(2_000)));
        runner.kill().unwrap();
        runner.wait().unwrap();
    }
    run_to_the_end(&manifest, &[], &table, &expected, &broker).await;
}

/// Polls `/readyz` until it says ready (200) or not (503).
pub(crate) async fn wait_until_readyz(url: &str, runner: &mut Child, ready: bool) {
    let waiting_for = if ready { "ready" } else { "not ready" };
    poll_runner(runner, url, waiting_for, async |response| {
        (response.status().is_success() == ready).then_some(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_late_events_land_in_the_dead_letter_topic() {
    const DLQ: &str = "events-dlq";
    let broker = KafkaBroker::start().unwrap();
    let topic = Topic::generate(20_000, 8);
    topic.produce(&broker);
    broker.create_topic(DLQ, 2).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let extra = format!("  lateEvents: deadLetter\n  deadLetter: {{kafka: {{topic: {DLQ}}}}}\n");
    let (manifest, table) = manifest(dir.path(), &broker, "", &extra);

    // What must be dead-lettered, (topic, partition, offset) → reason: the
    // malformed lines, and the events an hour behind their place in the data
    // set (the only late ones: other events are at most 90 s out of order).
    let Expected {
        windows: expected_windows,
        late,
        ..
    } = expected_windows(&topic.lines);
    let offsets = topic.offsets();
    let mut expected_dead = BTreeMap::new();
    for (index, (line, (partition, offset))) in topic.lines.iter().zip(&offsets).enumerate() {
        let reason = match line {
            Line::Malformed(_) => "malformed",
            Line::Event { time, .. } if *time < START + index as i64 * 10 - 30 * MINUTE => "late",
            Line::Event { .. } => continue,
        };
        expected_dead.insert((TOPIC.to_owned(), *partition, *offset), reason.to_owned());
    }
    assert_eq!(
        expected_dead.values().filter(|r| *r == "late").count(),
        late
    );
    assert!(expected_dead.values().any(|r| r == "malformed"));

    let (mut runner, logs) = spawn_runner(&manifest, &[]);
    let actual = wait_for_table(&table, &expected_windows, &mut runner).await;
    assert_eq!(
        actual, expected_windows,
        "the pipeline kept going past bad events"
    );

    let consumer: BaseConsumer = broker
        .client_config()
        .set("group.id", "dlq-reader")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[DLQ]).unwrap();
    let mut dead = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while dead.len() < expected_dead.len() && Instant::now() < deadline {
        let Some(message) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let message = message.unwrap();
        let header = |name: &str| {
            message
                .headers()
                .and_then(|headers| headers.iter().find(|h| h.key == name))
                .and_then(|h| h.value)
                .map(|v| String::from_utf8(v.to_vec()).unwrap())
                .unwrap_or_else(|| panic!("dead-letter record without header {name}"))
        };
        let key = (
            header("sluice.source.topic"),
            header("sluice.source.partition").parse::<i32>().unwrap(),
            header("sluice.source.offset").parse::<i64>().unwrap(),
        );
        let original = &topic.messages[offsets
            .iter()
            .position(|po| *po == (key.1, key.2))
            .expect("the dead-letter record points at a produced message")]
        .1;
        assert_eq!(
            message.payload(),
            Some(original.as_bytes()),
            "original bytes kept"
        );
        assert!(!header("sluice.detail").is_empty());
        let previous = dead.insert(key.clone(), header("sluice.reason"));
        assert!(previous.is_none(), "{key:?} dead-lettered twice");
    }
    assert_eq!(dead, expected_dead);
    stop_gracefully(runner, logs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_credentials_from_a_secret_log_in_to_an_authenticating_broker() {
    let login = ScramLogin {
        username: "sluice-reader".into(),
        password: "correct horse battery staple".into(),
    };
    let broker = KafkaBroker::start_with_scram(login.clone()).unwrap();
    let topic = Topic::generate(10_000, 13);
    topic.produce(&broker);
    let dir = tempfile::tempdir().unwrap();
    let sasl = "      sasl: {mechanism: SCRAM-SHA-512, secretRef: {name: kafka-user}}\n";
    let (manifest, table) = manifest(dir.path(), &broker, sasl, "");
    // What the controller puts in the runner's environment from the Secret.
    let secret = |password: &str| {
        vec![
            (
                secret_env_var("kafka-user", "username"),
                login.username.clone(),
            ),
            (
                secret_env_var("kafka-user", "password"),
                password.to_owned(),
            ),
        ]
    };

    // A wrong password: the runner says why it is not ready and keeps
    // retrying instead of exiting.
    let wrong = secret("not the password");
    let (mut runner, logs) = spawn_runner(&manifest, &env_refs(&wrong));
    let status = format!("{}/status", runner_address(&logs));
    let error = wait_for_status_error(&status, &mut runner).await;
    assert!(
        error.to_lowercase().contains("auth"),
        "the error names the failed authentication: {error}"
    );
    assert!(
        !error.contains("not the password"),
        "the password stays out of status"
    );
    runner.kill().unwrap();
    runner.wait().unwrap();

    // The right one: the pipeline reads everything.
    let right = secret(&login.password);
    let Expected {
        windows: expected, ..
    } = expected_windows(&topic.lines);
    run_to_the_end(&manifest, &env_refs(&right), &table, &expected, &broker).await;
}

fn env_refs(env: &[(String, String)]) -> Vec<(&str, String)> {
    env.iter()
        .map(|(name, value)| (name.as_str(), value.clone()))
        .collect()
}

/// Polls the runner's `/status` until it reports an error; returns it.
async fn wait_for_status_error(url: &str, runner: &mut Child) -> String {
    poll_runner(runner, url, "an error", async |response| {
        let status = response.json::<serde_json::Value>().await.ok()?;
        status["error"].as_str().map(str::to_owned)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_the_ca_from_a_mounted_secret_reaches_the_broker() {
    let broker = KafkaBroker::start_with_tls().unwrap();
    let topic = Topic::generate(10_000, 17);
    topic.produce(&broker);
    // The Secret `kafka-ca` as the controller mounts it.
    let secrets = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(secrets.path().join("kafka-ca")).unwrap();
    std::fs::write(
        secrets.path().join("kafka-ca/ca.crt"),
        broker.ca_pem().unwrap(),
    )
    .unwrap();
    let env = [(SECRETS_DIR_ENV, secrets.path().display().to_string())];

    // Without the CA the broker's certificate is not trusted: the runner
    // says so and keeps retrying.
    let untrusting = tempfile::tempdir().unwrap();
    let (manifest_without_ca, _) = manifest(untrusting.path(), &broker, "      tls: {}\n", "");
    let (mut runner, logs) = spawn_runner(&manifest_without_ca, &env);
    let status = format!("{}/status", runner_address(&logs));
    let error = wait_for_status_error(&status, &mut runner).await;
    assert!(
        error.contains("certificate verify failed"),
        "the error names the untrusted certificate: {error}"
    );
    runner.kill().unwrap();
    runner.wait().unwrap();

    let dir = tempfile::tempdir().unwrap();
    let tls = "      tls: {caSecretRef: {name: kafka-ca, key: ca.crt}}\n";
    let (manifest, table) = manifest(dir.path(), &broker, tls, "");
    let Expected {
        windows: expected, ..
    } = expected_windows(&topic.lines);
    run_to_the_end(&manifest, &env, &table, &expected, &broker).await;
}
