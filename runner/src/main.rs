//! `sluice-runner`: runs one StreamPipeline replica, in a pod or on a laptop.

use std::{
    io::{IsTerminal, Write},
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use anyhow::Context;
use clap::{Parser, Subcommand};
use sluice_crds::{StreamPipeline, StreamPipelineSpec};
use sluice_runner::{
    pipeline::{Job, RunSummary, RunnerIdentity, rfc3339},
    server,
    sink::delta::read_table,
    telemetry::Telemetry,
};
use tokio::sync::watch;

#[derive(Parser)]
#[command(
    name = "sluice-runner",
    version,
    about = "Sluice stream-processing runner"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a StreamPipeline manifest until its source is exhausted or the
    /// process is asked to stop (SIGTERM, Ctrl-C).
    Run(RunArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    /// The StreamPipeline manifest (YAML).
    manifest: PathBuf,
    /// This replica's index (the StatefulSet ordinal).
    #[arg(long, env = "SLUICE_REPLICA", default_value_t = 0)]
    replica: u32,
    /// Number of replicas (default: the manifest's spec.parallelism).
    #[arg(long, env = "SLUICE_REPLICAS")]
    replicas: Option<u32>,
    /// Address of the health, metrics and status endpoints.
    #[arg(long, env = "SLUICE_LISTEN", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// The pipeline's uid, part of every sink's idempotency key (default: the
    /// manifest's metadata.uid, else its namespace and name).
    #[arg(long, env = "SLUICE_PIPELINE_UID")]
    pipeline_uid: Option<String>,
    /// Print no result summary at the end.
    #[arg(long)]
    quiet: bool,
}

fn main() -> anyhow::Result<()> {
    sluice_runner::memory::bound_allocator_arenas();
    let cli = Cli::parse();
    let Command::Run(args) = cli.command;
    let text = std::fs::read_to_string(&args.manifest)
        .with_context(|| format!("cannot read {}", args.manifest.display()))?;
    let pipeline = match sluice_crds::parse_pipeline(&text) {
        Ok(pipeline) => pipeline,
        Err(error) => refuse(&args.manifest, &error),
    };
    // What the controller reports as Ready=False (InvalidExpression), refused
    // before anything starts.
    if let Err(invalid) = sluice_crds::check_expressions(&pipeline.spec.transforms) {
        refuse(&args.manifest, &invalid);
    }
    let interactive = std::io::stderr().is_terminal();
    init_logging(&pipeline.spec, interactive);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(run(args, pipeline, interactive))
}

/// Reports a manifest that can never run, and exits with status 2.
fn refuse(manifest: &std::path::Path, error: &dyn std::fmt::Display) -> ! {
    eprintln!("{}: {error}", manifest.display());
    std::process::exit(2);
}

fn init_logging(spec: &StreamPipelineSpec, interactive: bool) {
    use tracing_subscriber::EnvFilter;
    // On a terminal the progress line says what matters; keep logs to warnings.
    let default = spec.runner.log_level.clone().unwrap_or_else(|| {
        if interactive {
            "warn"
        } else {
            "warn,sluice_runner=info"
        }
        .into()
    });
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if interactive {
        builder.compact().init();
    } else {
        builder.json().flatten_event(true).init();
    }
}

async fn run(args: RunArgs, manifest: StreamPipeline, interactive: bool) -> anyhow::Result<()> {
    // Listening first: a runner asked to stop while it starts, recovers or
    // takes over finishes that and checkpoints, like any other.
    let (stop_tx, stop) = watch::channel(false);
    let signal = stop_signal();
    tokio::spawn(async move {
        signal.await;
        tracing::info!("stopping after the current epoch");
        let _ = stop_tx.send(true);
    });
    let spec = &manifest.spec;
    let replicas = args
        .replicas
        .unwrap_or(u32::try_from(spec.parallelism).unwrap_or(1));
    anyhow::ensure!(
        args.replica < replicas,
        "--replica {} must be below the number of replicas ({replicas})",
        args.replica
    );
    let namespace = manifest.metadata.namespace.as_deref().unwrap_or("default");
    let name = manifest.metadata.name.as_deref().unwrap_or("pipeline");
    let pipeline_uid = args.pipeline_uid.clone().unwrap_or_else(|| {
        manifest
            .metadata
            .uid
            .clone()
            .unwrap_or_else(|| format!("{namespace}.{name}"))
    });
    let telemetry = Arc::new(Telemetry::new(args.replica, replicas)?);
    let address = server::serve(args.listen, telemetry.clone())
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    tracing::info!(%address, "serving /healthz, /readyz, /metrics and /status");
    let identity = RunnerIdentity {
        pipeline: pipeline_uid,
        replica: args.replica,
        replicas,
        repartition_topic: format!("sluice-{namespace}-{name}-keygroups"),
        generation: 0,
    };
    let job = Job::start(spec, identity, telemetry.clone(), &mut stop.clone()).await?;
    let progress = interactive.then(|| tokio::spawn(show_progress(telemetry.clone())));
    let result = job.run(stop).await;
    if let Some(progress) = progress {
        progress.abort();
        eprintln!();
    }
    let summary = match result {
        Ok(summary) => summary,
        Err(error) => {
            telemetry.update_status(|s| {
                s.ready = false;
                s.error = Some(error.to_string());
            });
            return Err(error.into());
        }
    };
    if !args.quiet {
        // Reading the tables back is for a person at a terminal: in a pod it
        // would load a whole table into memory at every shutdown.
        print_summary(spec, &summary, std::io::stdout().is_terminal()).await;
    }
    Ok(())
}

/// SIGTERM (how Kubernetes stops a pod) or Ctrl-C, registered at once so
/// that none arriving from now on is missed.
fn stop_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    async move {
        #[cfg(unix)]
        if let Some(mut terminate) = terminate {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// One live line on the terminal: events/s, watermark, windows emitted.
async fn show_progress(telemetry: Arc<Telemetry>) {
    let mut ticker = tokio::time::interval(Duration::from_millis(250));
    let mut last = (std::time::Instant::now(), 0u64);
    loop {
        ticker.tick().await;
        let status = telemetry.status();
        let now = std::time::Instant::now();
        let rate = (status.events_total - last.1) as f64 / now.duration_since(last.0).as_secs_f64();
        last = (now, status.events_total);
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r\x1b[2K{} events  {:>10.0} ev/s  watermark {}  windows {}  dead-letter {}",
            status.events_total,
            rate,
            status.watermark.as_deref().unwrap_or("-"),
            status.windows_emitted_total,
            status.dead_letter_total,
        );
        let _ = err.flush();
    }
}

/// What the run did, and (`show_tables`) the latest rows of each Delta table it wrote.
async fn print_summary(spec: &StreamPipelineSpec, summary: &RunSummary, show_tables: bool) {
    let counts = summary.counts;
    println!(
        "{} events processed in epochs up to {}: {} window rows emitted, {} late, {} malformed, {} failed transforms, {} filtered, {} duplicates dropped",
        counts.records,
        summary.last_epoch.map_or("-".into(), |e| e.to_string()),
        counts.windows,
        counts.late,
        counts.malformed,
        counts.transform_failed,
        counts.filtered,
        counts.duplicates,
    );
    if let Some(watermark) = summary.watermark {
        println!(
            "watermark {}: windows ending later stay open in the checkpoint (append mode emits a window once the watermark passes its end)",
            rfc3339(watermark)
        );
    }
    for sink in spec.sinks.iter().filter(|_| show_tables) {
        let Some(delta) = &sink.delta else { continue };
        match read_table(&delta.uri).await {
            Ok(batches) => {
                let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
                println!(
                    "Delta table {} ({}): {rows} rows; the latest windows:",
                    sink.name, delta.uri
                );
                let first = latest_rows(&batches, 12);
                match arrow::util::pretty::pretty_format_batches(&first) {
                    Ok(table) => println!("{table}"),
                    Err(error) => println!("cannot format rows: {error}"),
                }
            }
            Err(error) => println!("cannot read Delta table {}: {error}", delta.uri),
        }
    }
}

/// The `n` rows with the latest window start (or as stored, for tables without one).
fn latest_rows(batches: &[arrow::array::RecordBatch], n: usize) -> Vec<arrow::array::RecordBatch> {
    let Some(schema) = batches.first().map(|b| b.schema()) else {
        return Vec::new();
    };
    let Ok(all) = arrow::compute::concat_batches(&schema, batches) else {
        return Vec::new();
    };
    let sorted = all
        .column_by_name("window_start")
        .and_then(|column| {
            let descending = arrow::compute::SortOptions {
                descending: true,
                nulls_first: false,
            };
            arrow::compute::sort_to_indices(column, Some(descending), Some(n)).ok()
        })
        .and_then(|indices| arrow::compute::take_record_batch(&all, &indices).ok());
    vec![sorted.unwrap_or_else(|| all.slice(0, n.min(all.num_rows())))]
}
