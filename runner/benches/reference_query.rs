//! Throughput of the reference query (5-minute windows sliding by 1 minute,
//! grouped by event_type, 2-minute watermark, count) from the file source into
//! a local Delta table, checkpoints every 10 s, on one core (a
//! current-thread runtime). Run with
//! `cargo bench -p sluice-runner --bench reference_query`; set
//! `SLUICE_BENCH_EVENTS` to change the number of events (default 5,000,000).
//! With `SLUICE_BENCH_DEDUP=1`, every event gets a unique `id` field and the
//! pipeline a `dedup` transform on it with a 10-minute horizon, so that the
//! cost of remembering and expiring ids shows.
//! With `SLUICE_BENCH_DATA=<file>`, the events are read from that file,
//! written there first only if it does not exist (so it must hold
//! `SLUICE_BENCH_EVENTS` events of the same kind), and the Delta table and
//! checkpoints are left in `<file without extension>.sluice/`, emptied
//! first: another engine can then run on the same events and its windows be
//! compared (bench/spark/run.sh).

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
    let events: i64 = std::env::var("SLUICE_BENCH_EVENTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(5_000_000);
    let runtime = tokio::runtime::Builder::new_current_thread()
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
    let manifest = format!(
        r#"apiVersion: sluice.dev/v1alpha1
kind: StreamPipeline
metadata: {{name: bench}}
spec:
  source:
    file: {{path: "{data}", maxLinesPerTrigger: {LINES_PER_EPOCH}}}
  transforms: {transforms}
{spec}"#,
        data = data.display(),
        spec = common::reference_query_spec(
            &out.join("table").display().to_string(),
            &out.join("checkpoints").display().to_string(),
            "10s",
            "0s",
        ),
    );
    let spec = sluice_crds::parse_pipeline(&manifest)?.spec;
    let telemetry = Arc::new(Telemetry::new(0, 1)?);
    let identity = RunnerIdentity {
        pipeline: "bench".into(),
        replica: 0,
        replicas: 1,
        repartition_topic: String::new(),
        generation: 0,
    };
    let pipeline = Pipeline::from_spec(&spec, identity, Arc::clone(&telemetry))?;
    let (_stop_tx, stop) = tokio::sync::watch::channel(false);
    let started = Instant::now();
    let summary = runtime.block_on(pipeline.run(stop))?;
    let seconds = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        summary.counts.records == events as u64,
        "read {} events from {}, expected {events}",
        summary.counts.records,
        data.display()
    );
    println!(
        "reference query{}, file source → Delta: {events} events in {seconds:.2} s = {:.0} events/s on one core ({} window rows, {} late, {} duplicates)",
        if dedup { " with dedup" } else { "" },
        events as f64 / seconds,
        summary.counts.windows,
        summary.counts.late,
        summary.counts.duplicates,
    );
    println!(
        "state at the end: {} open (pane, key) entries, {} dedup ids; peak resident memory {} MiB (an epoch's {LINES_PER_EPOCH} input lines are held while it runs)",
        telemetry.open_window_entries.get(),
        telemetry.dedup_remembered_ids.get(),
        peak_resident_mib().map_or_else(|| "unknown".to_owned(), |mib| mib.to_string()),
    );
    Ok(())
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
