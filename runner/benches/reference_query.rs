//! Throughput of the reference query (5-minute windows sliding by 1 minute,
//! grouped by event_type, 2-minute watermark, count) from the file source into
//! a local Delta table, checkpoints every 10 s, once per worker-thread count
//! (the runner's `SLUICE_WORKER_THREADS`; by default 1 and then 2), each run
//! from scratch over the same events, with its wall and CPU time. Run with
//! `cargo bench -p sluice-runner --bench reference_query`. Settings:
//! - `SLUICE_BENCH_EVENTS`: number of events (default 5,000,000).
//! - `SLUICE_BENCH_THREADS`: comma-separated thread counts (default `1,2`).
//! - `SLUICE_BENCH_RUNS`: runs per thread count (default 1); with more,
//!   each run's time is printed and the median run's figures are reported.
//! - `SLUICE_BENCH_LATE=drop`: `lateEvents: drop` instead of the default
//!   `deadLetter` (the late events then reach no dead-letter file).
//! - `SLUICE_BENCH_DEDUP=1`: every event gets a unique `id` field and the
//!   pipeline a `dedup` transform on it with a 10-minute horizon, so that the
//!   cost of remembering and expiring ids shows (dedup runs on one thread).
//! - `RUST_LOG=sluice_runner=debug` (any `tracing` filter): the runner's
//!   log, to see where an epoch's time goes.
//! - `SLUICE_BENCH_DATA=<file>`: the events are read from that file,
//!   written there first only if it does not exist (so it must hold
//!   `SLUICE_BENCH_EVENTS` events of the same kind), and the Delta table and
//!   checkpoints of the last run are left in `<file without extension>.sluice/`:
//!   another engine can then run on the same events and its windows be
//!   compared (bench/spark/run.sh).
//!
//! The file is read chunk by chunk while the epoch is processed: with 2 or
//! more worker threads each worker reads the chunk it processes next (the
//! file source's feed); with 1 the pipeline loop reads a chunk and
//! processes it itself. Each epoch's Delta commit and checkpoint run on the
//! tokio runtime while the next epoch is read and processed.

#[path = "../tests/it/common/mod.rs"]
mod common;

use std::{io::Write, path::PathBuf, sync::Arc, time::Instant};

use sluice_runner::{
    pipeline::{Pipeline, RunnerIdentity},
    source::{self, Planned, Positions, SourceContext},
    telemetry::Telemetry,
};

/// Lines one epoch reads (the file source's `maxLinesPerTrigger`).
const LINES_PER_EPOCH: u32 = 1_000_000;

fn main() -> anyhow::Result<()> {
    // As the runner's own `main` does.
    sluice_runner::memory::bound_allocator_arenas();
    // The runner's log (epochs planned, processed and committed, with
    // their times) when `RUST_LOG` asks for it.
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_default_env() {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    let events: i64 = std::env::var("SLUICE_BENCH_EVENTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(5_000_000);
    // The runner's own runtime (runner/src/main.rs): the pipeline loop runs
    // on this thread, epochs commit on the runtime's.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let dedup = std::env::var_os("SLUICE_BENCH_DEDUP").is_some();
    let dir = tempfile::tempdir()?;
    let (data, out) = match std::env::var_os("SLUICE_BENCH_DATA") {
        Some(path) => {
            let data = PathBuf::from(path);
            let out = data.with_extension("sluice");
            if out.exists() {
                std::fs::remove_dir_all(&out)?;
            }
            (data, out)
        }
        None => (dir.path().join("events.jsonl"), dir.path().to_path_buf()),
    };
    if !data.exists() {
        // Renamed into place once complete, so an interrupted run leaves no
        // truncated data set to be reused.
        let partial = data.with_extension("partial");
        runtime.block_on(write_events(&partial, events, dedup))?;
        std::fs::rename(&partial, &data)?;
    }
    let bytes = std::fs::metadata(&data)?.len();
    println!(
        "{events} events, {:.0} bytes per event on average",
        bytes as f64 / events as f64
    );

    let transforms = if dedup {
        "[{dedup: {idField: id, horizon: 10m}}]"
    } else {
        "[]"
    };
    let late_events = match std::env::var("SLUICE_BENCH_LATE").as_deref() {
        Ok("drop") => "drop",
        _ => "deadLetter",
    };
    let repeats: usize = std::env::var("SLUICE_BENCH_RUNS")
        .ok()
        .and_then(|n| n.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(1);
    let threads: Vec<usize> = std::env::var("SLUICE_BENCH_THREADS")
        .unwrap_or_else(|_| "1,2".into())
        .split(',')
        .map(|n| n.trim().parse())
        .collect::<Result<_, _>>()?;
    println!(
        "machine: {} cores available, load average {}; lateEvents: {late_events}{}",
        std::thread::available_parallelism().map_or(1, usize::from),
        load_average(),
        if dedup { "; dedup on id" } else { "" },
    );
    let mut runs: Vec<(usize, Run)> = Vec::new();
    for threads in threads {
        let manifest = format!(
            r#"apiVersion: sluice.dev/v1alpha1
kind: StreamPipeline
metadata: {{name: bench}}
spec:
  source:
    file: {{path: "{data}", maxLinesPerTrigger: {LINES_PER_EPOCH}}}
  transforms: {transforms}
  lateEvents: {late_events}
{spec}"#,
            data = data.display(),
            spec = common::reference_query_spec(
                &out.join("table").display().to_string(),
                &out.join("checkpoints").display().to_string(),
                "10s",
                "0s",
            ),
        );
        // The median of `repeats` runs: runs on a shared machine vary by
        // a third, and one slow run should not stand for the engine.
        let mut repeated: Vec<Run> = Vec::with_capacity(repeats);
        for repeat in 1..=repeats {
            // Each run from scratch.
            for output in ["table", "checkpoints"] {
                if out.join(output).exists() {
                    std::fs::remove_dir_all(out.join(output))?;
                }
            }
            let run = run_once(&runtime, &manifest, threads)?;
            if repeats > 1 {
                println!(
                    "  {threads} thread{}, run {repeat} of {repeats}: {:.2} s, CPU {:.2} s",
                    if threads == 1 { "" } else { "s" },
                    run.seconds,
                    run.cpu_seconds
                );
            }
            if let Some(first) = repeated.first() {
                anyhow::ensure!(
                    first.results() == run.results(),
                    "run {repeat} with {threads} threads emitted other results than run 1"
                );
            }
            repeated.push(run);
        }
        repeated.sort_by(|a, b| a.seconds.total_cmp(&b.seconds));
        let run = repeated.swap_remove(repeated.len() / 2);
        anyhow::ensure!(
            run.records == events as u64,
            "read {} events from {}, expected {events}",
            run.records,
            data.display()
        );
        println!(
            "reference query{}, file source → Delta, {threads} thread{}: {events} events in {:.2} s = {:.0} events/s; CPU {:.2} s = {:.2} µs per event ({} window rows, {} late, {} duplicates; load average after {})",
            if dedup { " with dedup" } else { "" },
            if threads == 1 { "" } else { "s" },
            run.seconds,
            events as f64 / run.seconds,
            run.cpu_seconds,
            run.cpu_seconds / events as f64 * 1e6,
            run.windows,
            run.late,
            run.duplicates,
            load_average(),
        );
        println!(
            "  state at the end: {} open (pane, key) entries, {} dedup ids; peak resident memory so far {} MiB (the file is read a few chunks at a time, whatever the epoch's {LINES_PER_EPOCH} lines)",
            run.open_entries,
            run.dedup_ids,
            peak_resident_mib().map_or_else(|| "unknown".to_owned(), |mib| mib.to_string()),
        );
        if let Some((first_threads, first)) = runs.first() {
            anyhow::ensure!(
                first.results() == run.results(),
                "{threads} threads emitted other results than {first_threads}"
            );
        }
        runs.push((threads, run));
    }
    if let Some((one, first)) = runs.first() {
        for (threads, run) in &runs[1..] {
            println!(
                "{threads} threads vs {one}: {:.2}x the events/s, {:.2}x the CPU per event",
                first.seconds / run.seconds,
                run.cpu_seconds / first.cpu_seconds,
            );
        }
    }
    Ok(())
}

/// What one run of the pipeline did.
struct Run {
    seconds: f64,
    cpu_seconds: f64,
    records: u64,
    windows: u64,
    late: u64,
    duplicates: u64,
    open_entries: i64,
    dedup_ids: i64,
}

impl Run {
    /// What the run emitted, which every run over the same events must.
    fn results(&self) -> (u64, u64, u64) {
        (self.windows, self.late, self.duplicates)
    }
}

fn run_once(
    runtime: &tokio::runtime::Runtime,
    manifest: &str,
    threads: usize,
) -> anyhow::Result<Run> {
    let spec = sluice_crds::parse_pipeline(manifest)?.spec;
    let telemetry = Arc::new(Telemetry::new(0, 1)?);
    let identity = RunnerIdentity {
        pipeline: "bench".into(),
        replica: 0,
        replicas: 1,
        repartition_topic: String::new(),
        generation: 0,
    };
    let pipeline =
        Pipeline::from_spec_on_threads(&spec, identity, Arc::clone(&telemetry), threads)?;
    let (_stop_tx, stop) = tokio::sync::watch::channel(false);
    let cpu_before = process_cpu_seconds();
    let started = Instant::now();
    let summary = runtime.block_on(pipeline.run(stop))?;
    let seconds = started.elapsed().as_secs_f64();
    Ok(Run {
        seconds,
        cpu_seconds: process_cpu_seconds() - cpu_before,
        records: summary.counts.records,
        windows: summary.counts.windows,
        late: summary.counts.late,
        duplicates: summary.counts.duplicates,
        open_entries: telemetry.open_window_entries.get(),
        dedup_ids: telemetry.dedup_remembered_ids.get(),
    })
}

/// User and system CPU time of this process, all threads (Linux `/proc`,
/// in the kernel's 100 Hz ticks); 0 elsewhere.
fn process_cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the command name (in parentheses): utime and stime are
    // the 12th and 13th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// The 1-, 5- and 15-minute load averages (Linux).
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// The process's peak resident set (`VmHWM`), on Linux.
fn peak_resident_mib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

/// Writes `n` generator events (~100 bytes each, out of order within 90 s,
/// 0.1% late) as JSON lines, each with a unique `id` first if `ids`.
async fn write_events(path: &std::path::Path, n: i64, ids: bool) -> anyhow::Result<()> {
    let spec: sluice_crds::GeneratorSource = serde_json::from_value(serde_json::json!({
        "eventsPerSecond": 0,
        "totalEvents": n,
        "eventSpacing": "1ms",
        "maxDisorder": "90s",
        "lateFraction": 0.001,
        "seed": 42,
        "startTime": "2026-11-24T10:00:00Z",
    }))?;
    let context = SourceContext {
        replica: 0,
        replicas: 1,
        max_records_per_epoch: n,
        max_bytes_per_epoch: i64::MAX,
    };
    let mut generator = source::GeneratorSource::new(&spec, &context)?;
    let Planned::Ranges(ranges) = source::Source::plan(&mut generator, &Positions::new()).await?
    else {
        anyhow::bail!("the generator planned nothing");
    };
    source::Source::start_epoch(&mut generator, &ranges).await?;
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut line = Vec::new();
    while let Some(chunk) = source::Source::next_chunk(&mut generator).await? {
        for record in chunk.iter() {
            line.clear();
            match record.payload.strip_prefix(b"{") {
                Some(fields) if ids => {
                    write!(line, "{{\"id\":\"e{}\",", record.offset)?;
                    line.extend_from_slice(fields);
                }
                _ => line.extend_from_slice(record.payload),
            }
            line.push(b'\n');
            out.write_all(&line)?;
        }
    }
    out.flush()?;
    Ok(())
}
