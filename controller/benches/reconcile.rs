//! Reconciles 1,000 StreamPipelines against the in-memory API (kube-fake-client)
//! with runner `/status` served over local HTTP, and prints reconciles/s, the
//! p99 reconcile time and the process's peak memory.
//!
//! `cargo bench -p sluice-controller --bench reconcile`

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{Json, Router, extract::Path, routing::get};
use futures::{StreamExt, stream};
use kube::{Api, api::ListParams};
use kube_fake_client::ClientBuilder;
use sluice_controller::{Context, Settings, metrics::Metrics, reconcile};
use sluice_crds::{PartitionLag, RunnerStatus, StreamPipeline};

const PIPELINES: usize = 1_000;
/// Reconciles in flight at once, as kube's Controller runs them.
const CONCURRENCY: usize = 16;
const NS: &str = "bench";

fn pipeline(i: usize) -> StreamPipeline {
    let yaml = format!(
        r#"
apiVersion: sluice.dev/v1alpha1
kind: StreamPipeline
metadata: {{name: pipeline-{i}, namespace: {NS}, uid: uid-{i}}}
spec:
  source: {{kafka: {{bootstrapServers: "kafka:9092", topics: [events], consumerGroup: g{i}}}}}
  window:
    sliding: {{size: 5m, slide: 1m}}
    watermark: 2m
    groupBy: [event_type]
    aggregations: [{{name: event_count, count: {{}}}}]
  sinks: [{{name: out, stdout: {{}}}}]
  checkpoint: {{uri: "s3://checkpoints/pipeline-{i}"}}
  parallelism: 2
  alerts: {{maxLag: 1000000}}
"#
    );
    let mut pipeline = sluice_crds::parse_pipeline(&yaml).expect("valid manifest");
    // kube-fake-client refuses the JSON-patch `test` against a missing
    // finalizers list that guards the first finalizer; start with one.
    pipeline.metadata.finalizers = Some(vec!["example.com/backup".into()]);
    pipeline
}

async fn runner_status(Path(pod): Path<String>) -> Json<RunnerStatus> {
    Json(RunnerStatus {
        ready: true,
        replicas: 2,
        events_per_second: 1000.0,
        partitions: vec![PartitionLag {
            topic: "events".into(),
            partition: 0,
            records: pod.len() as i64,
            seconds: 1.0,
        }],
        ..RunnerStatus::default()
    })
}

fn peak_memory_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

async fn reconcile_all(ctx: &Arc<Context>, names: &[String]) -> Vec<Duration> {
    let api: Api<StreamPipeline> = Api::namespaced(ctx.client.clone(), NS);
    stream::iter(names)
        .map(|name| {
            let (api, ctx) = (api.clone(), ctx.clone());
            async move {
                let pipeline = api.get(name).await.expect("stored pipeline");
                let started = Instant::now();
                reconcile(Arc::new(pipeline), ctx).await.expect("reconcile");
                started.elapsed()
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await
}

#[tokio::main]
async fn main() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let template = format!(
        "http://{}/{{pod}}/status",
        listener.local_addr().expect("address")
    );
    let router = Router::new().route("/{pod}/status", get(runner_status));
    tokio::spawn(async move { axum::serve(listener, router).await });

    let pipelines: Vec<StreamPipeline> = (0..PIPELINES).map(pipeline).collect();
    let names: Vec<String> = pipelines
        .iter()
        .map(|p| p.metadata.name.clone().unwrap_or_default())
        .collect();
    let client = ClientBuilder::new()
        .with_resource::<StreamPipeline>()
        .with_status_subresource::<StreamPipeline>()
        .with_objects(pipelines)
        .build()
        .await
        .expect("fake API");
    let settings = Settings {
        status_url_template: template,
        ..Settings::default()
    };
    let ctx = Arc::new(Context::new(
        client,
        settings,
        Metrics::new().expect("metrics"),
    ));

    // First pass: finalizers; second: owned objects, runner status, status
    // writes (the work of a new pipeline); third: the steady-state resync.
    let mut report = Vec::new();
    for pass in ["add finalizer", "create", "resync"] {
        let started = Instant::now();
        let mut times = reconcile_all(&ctx, &names).await;
        let elapsed = started.elapsed();
        times.sort();
        let p99 = times[times.len() * 99 / 100];
        report.push(format!(
            "{pass:>13}: {PIPELINES} reconciles in {:.2}s = {:.0} reconciles/s, p50 {:.1} ms, p99 {:.1} ms",
            elapsed.as_secs_f64(),
            PIPELINES as f64 / elapsed.as_secs_f64(),
            times[times.len() / 2].as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3,
        ));
    }
    let api: Api<StreamPipeline> = Api::namespaced(ctx.client.clone(), NS);
    let running = api
        .list(&ListParams::default())
        .await
        .expect("list")
        .items
        .iter()
        .filter(|p| p.status.as_ref().is_some_and(|s| s.ready_replicas == 2))
        .count();
    assert_eq!(running, PIPELINES, "every pipeline reconciled to Ready");
    for line in report {
        println!("{line}");
    }
    println!(
        "concurrency {CONCURRENCY}; peak memory (VmHWM): {} MiB",
        peak_memory_kib().unwrap_or(0) / 1024
    );
}
