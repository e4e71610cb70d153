//! Shared by the runner's integration tests: a data set written by the test
//! itself, an independent batch computation of the reference query over it,
//! and helpers to run the `sluice-runner` binary.

#![allow(dead_code)]

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use arrow::array::{Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};

pub const MINUTE: i64 = 60_000;
/// 2026-11-24T10:00:00Z.
pub const START: i64 = 1_795_514_400_000;
pub const LINES_PER_EPOCH: usize = 5_000;
const TYPES: [&str; 4] = ["view", "click", "add_to_cart", "purchase"];

/// One line of the data set.
pub enum Line {
    Event { time: i64, event_type: &'static str },
    Malformed(String),
}

/// A tiny deterministic generator (xorshift64*), independent of the runner's.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// `n` events 10 ms apart, up to 90 s out of order; about 0.5% of them
/// 150–600 s late (some of their sliding windows have closed by the time
/// they are read, the others are still open), about 1% an hour late (all
/// after the first epoch, so every window of theirs has closed whatever the
/// epoch split) and about 0.2% malformed lines.
pub fn data_set(n: usize, seed: u64) -> Vec<Line> {
    generate(n, seed, true)
}

/// [`data_set`] without the events 150–600 s late, for sources whose epochs
/// the batch computation cannot know (a partitioned topic, where the broker
/// decides how much of each partition an epoch reads): which windows of such
/// an event have closed depends on that split. Everything else is late
/// whatever the split, or not at all.
pub fn data_set_without_stragglers(n: usize, seed: u64) -> Vec<Line> {
    generate(n, seed, false)
}

fn generate(n: usize, seed: u64, stragglers: bool) -> Vec<Line> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|i| {
            let nominal = START + i as i64 * 10;
            let roll = rng.below(1000);
            if roll < 2 {
                return Line::Malformed(match rng.below(3) {
                    0 => "{\"timestamp\": \"2026-11-24T10:0".into(),
                    1 => "{\"event_type\": \"view\"}".into(),
                    _ => "not json at all".into(),
                });
            }
            let mut time = nominal - rng.below(90_001) as i64;
            if roll < 12 && i > LINES_PER_EPOCH {
                time = nominal - 60 * MINUTE;
            } else if stragglers && roll >= 995 {
                time = nominal - 150_000 - rng.below(450_001) as i64;
            }
            Line::Event {
                time,
                event_type: TYPES[rng.below(4) as usize],
            }
        })
        .collect()
}

pub fn rfc3339(millis: i64) -> String {
    jiff::Timestamp::from_millisecond(millis)
        .unwrap()
        .strftime("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

pub fn write_jsonl(lines: &[Line], path: &Path) {
    write_jsonl_with_ids(lines, None, path);
}

/// [`write_jsonl`], with an `id` field per event when `ids` gives one per
/// line: lines with the same id are identical copies of one event.
pub fn write_jsonl_with_ids(lines: &[Line], ids: Option<&[usize]>, path: &Path) {
    std::fs::write(path, reference_jsonl(lines, ids)).unwrap();
}

/// The text [`write_jsonl_with_ids`] writes.
pub fn reference_jsonl(lines: &[Line], ids: Option<&[usize]>) -> String {
    jsonl_text(lines, |i, time, event_type| {
        let id = ids.map_or(i, |ids| ids[i]);
        format!(
            "{{{}\"timestamp\":\"{}\",\"event_type\":\"{event_type}\",\"key\":\"k{}\",\"value\":{}}}",
            ids.map_or(String::new(), |_| format!("\"id\":\"e{id}\",")),
            rfc3339(time),
            id % 100,
            id % 7
        )
    })
}

/// The lines as JSON lines: `event(index, time, event type)` writes an
/// event's JSON object, malformed lines are kept as they are.
pub fn jsonl_text(lines: &[Line], event: impl Fn(usize, i64, &str) -> String) -> String {
    let mut text = String::new();
    for (i, line) in lines.iter().enumerate() {
        match line {
            Line::Event { time, event_type } => text.push_str(&event(i, *time, event_type)),
            Line::Malformed(bad) => text.push_str(bad),
        }
        text.push('\n');
    }
    text
}

/// The time of the closing events [`topic_messages`] appends: ten minutes
/// after the data.
pub fn closing_time(events: usize) -> i64 {
    START + events as i64 * 10 + 10 * MINUTE
}

/// The data set as Kafka messages, (partition, payload) in production
/// order: line `i` to partition `partition_of(i)`, then a closing event per
/// partition (also appended to `lines`), ten minutes after the data: the
/// final watermark (the minimum over partitions) then passes every data
/// window whatever order the partitions were read in.
pub fn topic_messages(
    lines: &mut Vec<Line>,
    events: usize,
    partitions: i32,
    partition_of: impl Fn(usize) -> i32,
) -> Vec<(i32, String)> {
    let text = reference_jsonl(lines, None);
    messages_of(&text, lines, events, partitions, partition_of)
}

/// [`topic_messages`] over JSON lines `text` written from `lines`.
pub fn messages_of(
    text: &str,
    lines: &mut Vec<Line>,
    events: usize,
    partitions: i32,
    partition_of: impl Fn(usize) -> i32,
) -> Vec<(i32, String)> {
    let mut messages: Vec<(i32, String)> = text
        .lines()
        .enumerate()
        .map(|(i, line)| (partition_of(i), line.to_owned()))
        .collect();
    let closing = closing_time(events);
    for partition in 0..partitions {
        lines.push(Line::Event {
            time: closing,
            event_type: "view",
        });
        messages.push((
            partition,
            format!(
                "{{\"timestamp\":\"{}\",\"event_type\":\"view\",\"key\":\"close\",\"value\":0}}",
                rfc3339(closing)
            ),
        ));
    }
    messages
}

/// (window start, window end, event type) → count, in milliseconds.
pub type Windows = BTreeMap<(i64, i64, String), i64>;

/// The reference query's expected output.
pub struct Expected {
    pub windows: Windows,
    /// Events whose windows had all closed.
    pub late: usize,
    /// Events counted in some of their windows only, the others having closed.
    pub partly_late: usize,
    /// The final watermark (milliseconds).
    pub watermark: i64,
}

/// What the reference query must produce, computed by brute force with
/// Spark Structured Streaming's rules: one micro-batch per epoch of
/// `LINES_PER_EPOCH` lines; the watermark in force for a micro-batch is
/// (largest event time of the earlier micro-batches − 2 min), never moving
/// back; an event counts in each of its 5-minute windows (sliding by 1
/// minute) that ends after that watermark, and is late when none does; a
/// window is emitted once the final watermark is at or past its end.
pub fn expected_windows(lines: &[Line]) -> Expected {
    expected_windows_counting(lines, |_| true)
}

/// [`expected_windows`] over the lines `counted` accepts (by index); the
/// others still fill their place in the epochs and move event time, as
/// events a dedup transform drops do.
pub fn expected_windows_counting(lines: &[Line], counted: impl Fn(usize) -> bool) -> Expected {
    let memberships = memberships(lines, counted);
    let mut windows = Windows::new();
    for (index, start) in memberships.emitted {
        let Line::Event { event_type, .. } = &lines[index] else {
            unreachable!("only events have windows")
        };
        *windows
            .entry((start, start + 5 * MINUTE, (*event_type).to_owned()))
            .or_default() += 1;
    }
    Expected {
        windows,
        late: memberships.late,
        partly_late: memberships.partly_late,
        watermark: memberships.watermark,
    }
}

/// Which windows of the reference query (5 minutes sliding by 1, 2-minute
/// watermark) each event counts in, by Spark's rules (see
/// [`expected_windows`]), whatever the query groups by and aggregates.
pub struct Memberships {
    /// (line index, window start) for every window the final watermark
    /// closes, so that it is emitted.
    pub emitted: Vec<(usize, i64)>,
    pub late: usize,
    pub partly_late: usize,
    pub watermark: i64,
}

/// [`Memberships`] of the lines `counted` accepts (by index).
pub fn memberships(lines: &[Line], counted: impl Fn(usize) -> bool) -> Memberships {
    let mut watermark: Option<i64> = None;
    let mut max_time: Option<i64> = None;
    let mut memberships = Vec::new();
    let (mut late, mut partly_late) = (0, 0);
    for (first, epoch) in (0..)
        .step_by(LINES_PER_EPOCH)
        .zip(lines.chunks(LINES_PER_EPOCH))
    {
        for (index, line) in (first..).zip(epoch) {
            let Line::Event { time, .. } = line else {
                continue;
            };
            max_time = Some(max_time.map_or(*time, |m: i64| m.max(*time)));
            if !counted(index) {
                continue;
            }
            // Every window start (a whole minute) with start <= time < start + 5 min.
            let open: Vec<i64> = (0..5)
                .map(|back| time.div_euclid(MINUTE) * MINUTE - back * MINUTE)
                .filter(|start| watermark.is_none_or(|w| start + 5 * MINUTE > w))
                .collect();
            match open.len() {
                0 => late += 1,
                5 => {}
                _ => partly_late += 1,
            }
            memberships.extend(open.into_iter().map(|start| (index, start)));
        }
        if let Some(max) = max_time {
            watermark = Some(watermark.map_or(max - 2 * MINUTE, |w| w.max(max - 2 * MINUTE)));
        }
    }
    let watermark = watermark.expect("some events");
    memberships.retain(|(_, start)| start + 5 * MINUTE <= watermark);
    Memberships {
        emitted: memberships,
        late,
        partly_late,
        watermark,
    }
}

/// The reference query's rows as read back from the Delta table, checking
/// that no (window, key) appears twice.
pub fn table_windows(batches: &[RecordBatch]) -> Windows {
    let mut windows = Windows::new();
    for batch in batches {
        let column = |name: &str| batch.column_by_name(name).unwrap().clone();
        let starts = column("window_start");
        let starts = starts
            .as_any()
            .downcast_ref::<TimestampMicrosecondArray>()
            .unwrap();
        let ends = column("window_end");
        let ends = ends
            .as_any()
            .downcast_ref::<TimestampMicrosecondArray>()
            .unwrap();
        let types = column("event_type");
        let types = types.as_any().downcast_ref::<StringArray>().unwrap();
        let counts = column("event_count");
        let counts = counts.as_any().downcast_ref::<Int64Array>().unwrap();
        for row in 0..batch.num_rows() {
            let key = (
                starts.value(row) / 1000,
                ends.value(row) / 1000,
                types.value(row).to_owned(),
            );
            let previous = windows.insert(key.clone(), counts.value(row));
            assert!(previous.is_none(), "window {key:?} written twice");
        }
    }
    windows
}

/// The manifest of the reference query over a JSON-lines file.
pub fn reference_manifest(data: &Path, table: &str, checkpoints: &str, trigger: &str) -> String {
    format!(
        r#"apiVersion: sluice.dev/v1alpha1
kind: StreamPipeline
metadata: {{name: reference, namespace: test, uid: 7d0c3c1e-reference}}
spec:
  source:
    file: {{path: "{}", maxLinesPerTrigger: {LINES_PER_EPOCH}}}
{spec}"#,
        data.display(),
        spec = reference_query_spec(table, checkpoints, "300ms", trigger),
    )
}

/// The reference query (5-minute windows sliding by 1 minute, grouped by
/// event_type, 2-minute watermark, count) into a Delta table: the part of a
/// manifest's spec after its source.
pub fn reference_query_spec(
    table: &str,
    checkpoints: &str,
    checkpoint_interval: &str,
    trigger: &str,
) -> String {
    format!(
        r#"  window:
    sliding: {{size: 5m, slide: 1m}}
    watermark: 2m
    groupBy: [event_type]
    aggregations:
      - {{name: event_count, count: {{}}}}
  sinks:
    - name: lake
      delta: {{uri: "{table}"}}
  checkpoint: {{uri: "{checkpoints}", interval: {checkpoint_interval}}}
  trigger: {{interval: {trigger}}}
"#
    )
}

/// A generated data set written as JSON lines under a scratch folder, and a
/// reference-query manifest over it whose Delta table and checkpoints are
/// local folders beside it.
pub struct LocalReferenceRun {
    pub dir: tempfile::TempDir,
    pub lines: Vec<Line>,
    pub data: PathBuf,
    pub table: PathBuf,
    pub checkpoints: PathBuf,
    pub manifest: PathBuf,
}

impl LocalReferenceRun {
    pub fn prepare(events: usize, seed: u64, trigger: &str) -> Self {
        Self::with_lines(data_set(events, seed), None, trigger)
    }

    /// Over given lines, with ids as [`write_jsonl_with_ids`] writes them.
    pub fn with_lines(lines: Vec<Line>, ids: Option<&[usize]>, trigger: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("events.jsonl");
        write_jsonl_with_ids(&lines, ids, &data);
        let table = dir.path().join("table");
        let checkpoints = dir.path().join("checkpoints");
        let manifest = dir.path().join("pipeline.yaml");
        std::fs::write(
            &manifest,
            reference_manifest(
                &data,
                table.to_str().unwrap(),
                checkpoints.to_str().unwrap(),
                trigger,
            ),
        )
        .unwrap();
        Self {
            dir,
            lines,
            data,
            table,
            checkpoints,
            manifest,
        }
    }
}

/// Changes the `spec` of a manifest file in place.
pub fn edit_spec(manifest: &Path, edit: impl FnOnce(&mut serde_yaml::Value)) {
    let text = std::fs::read_to_string(manifest).unwrap();
    let mut document: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    edit(&mut document["spec"]);
    std::fs::write(manifest, serde_yaml::to_string(&document).unwrap()).unwrap();
}

/// Where to keep every runner's log besides handing it to the test, and at
/// what level: for a test that fails only now and then.
const KEEP_LOGS_ENV: &str = "SLUICE_TEST_RUNNER_LOGS";
const LOG_LEVEL_ENV: &str = "SLUICE_TEST_RUNNER_LOG_LEVEL";

/// Starts `sluice-runner run <manifest>` with JSON logs on stderr, which are
/// forwarded line by line to the returned receiver (and, with
/// `SLUICE_TEST_RUNNER_LOGS=<dir>`, kept in `<dir>/runner-<pid>.log`).
pub fn spawn_runner(manifest: &Path, env: &[(&str, String)]) -> (Child, mpsc::Receiver<String>) {
    let level =
        std::env::var(LOG_LEVEL_ENV).unwrap_or_else(|_| "warn,sluice_runner=info".to_owned());
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice-runner"))
        .arg("run")
        .arg(manifest)
        .args(["--listen", "127.0.0.1:0", "--quiet"])
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("RUST_LOG", level)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start sluice-runner");
    let stderr = child.stderr.take().unwrap();
    let mut kept = std::env::var_os(KEEP_LOGS_ENV).map(|dir| {
        let path = Path::new(&dir).join(format!("runner-{}.log", child.id()));
        std::fs::File::create(&path)
            .unwrap_or_else(|error| panic!("cannot keep the runner's log in {path:?}: {error}"))
    });
    let (lines, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(file) = kept.as_mut() {
                let _ = writeln!(file, "{line}");
            }
            // The test may have stopped listening; the log is still kept.
            let _ = lines.send(line);
        }
    });
    (child, receiver)
}

/// Waits for a log line with `message` and an `epoch` of at least `epoch`.
pub fn wait_for_log(logs: &mpsc::Receiver<String>, message: &str, epoch: u64) -> bool {
    wait_for_line(logs, message, |json| {
        json["epoch"].as_u64().is_some_and(|e| e >= epoch)
    })
    .is_some()
}

/// Waits (two minutes at most) for a JSON log line with `message` that
/// `matches`; returns it.
pub fn wait_for_line(
    logs: &mpsc::Receiver<String>,
    message: &str,
    matches: impl Fn(&serde_json::Value) -> bool,
) -> Option<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(120);
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        let line = logs.recv_timeout(left).ok()?;
        let Ok(json) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if json["message"] == message && matches(&json) {
            return Some(json);
        }
    }
    None
}

/// Runs `sluice-runner run <manifest>` until it logs `message` for epoch
/// `epoch` or a later one, then kills it with SIGKILL; returns the epoch of
/// that log line.
pub fn kill_runner_at(manifest: &Path, message: &str, epoch: u64) -> u64 {
    let (mut child, logs) = spawn_runner(manifest, &[]);
    let line = wait_for_line(&logs, message, |json| {
        json["epoch"].as_u64().is_some_and(|e| e >= epoch)
    });
    let logged = line.and_then(|json| json["epoch"].as_u64());
    child.kill().unwrap();
    child.wait().unwrap();
    logged.unwrap_or_else(|| panic!("no {message:?} log for epoch {epoch}"))
}

/// Waits for the runner to exit and asserts that it succeeded.
pub fn wait_success(mut child: Child, logs: mpsc::Receiver<String>) {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let output: Vec<String> = logs.try_iter().collect();
            assert!(
                status.success(),
                "runner failed with {status}:\n{}",
                output.join("\n")
            );
            return;
        }
        assert!(Instant::now() < deadline, "runner did not finish in time");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The runner's HTTP address, from the log line that announces it.
pub fn runner_address(logs: &mpsc::Receiver<String>) -> String {
    let line = wait_for_line(
        logs,
        "serving /healthz, /readyz, /metrics and /status",
        |_| true,
    )
    .expect("the runner announces its address");
    format!("http://{}", line["address"].as_str().unwrap())
}

/// Reads with `read` every 200 ms until `done` accepts what it read or
/// five minutes pass, checking that every runner stays up meanwhile;
/// returns what it read last.
pub async fn poll_until<T>(
    runners: &mut [&mut Child],
    read: impl AsyncFnMut() -> T,
    done: impl Fn(&T) -> bool,
) -> T {
    poll_until_for(Duration::from_secs(300), runners, read, done).await
}

/// [`poll_until`] for at most `patience`.
pub async fn poll_until_for<T>(
    patience: Duration,
    runners: &mut [&mut Child],
    mut read: impl AsyncFnMut() -> T,
    done: impl Fn(&T) -> bool,
) -> T {
    let deadline = Instant::now() + patience;
    loop {
        let value = read().await;
        if done(&value) || Instant::now() > deadline {
            return value;
        }
        for runner in runners.iter_mut() {
            assert!(
                runner.try_wait().unwrap().is_none(),
                "a runner exited before writing every window"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Polls a runner endpoint every 200 ms (two minutes at most) until
/// `accept` takes its answer, checking that the runner stays up meanwhile.
pub async fn poll_runner<T>(
    runner: &mut Child,
    url: &str,
    waiting_for: &str,
    accept: impl AsyncFn(reqwest::Response) -> Option<T>,
) -> T {
    poll_runner_for(Duration::from_secs(120), runner, url, waiting_for, accept).await
}

/// [`poll_runner`] for at most `patience`.
pub async fn poll_runner_for<T>(
    patience: Duration,
    runner: &mut Child,
    url: &str,
    waiting_for: &str,
    accept: impl AsyncFn(reqwest::Response) -> Option<T>,
) -> T {
    let deadline = Instant::now() + patience;
    loop {
        assert!(
            runner.try_wait().unwrap().is_none(),
            "the runner exited while waiting for {waiting_for}"
        );
        if let Ok(response) = reqwest::get(url).await
            && let Some(accepted) = accept(response).await
        {
            return accepted;
        }
        assert!(
            Instant::now() < deadline,
            "{url} never showed {waiting_for}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
