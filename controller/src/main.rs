//! `sluice-controller`: the StreamPipeline operator.

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use sluice_controller::{
    Settings,
    run::{Options, start},
};

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Json,
    Text,
}

/// Reconciles StreamPipelines into runner StatefulSets and reports their lag
/// and health. Connects with the in-cluster service account or $KUBECONFIG.
#[derive(Parser)]
#[command(name = "sluice-controller", version)]
struct Args {
    /// Runner image for pipelines that do not set spec.runner.image.
    #[arg(
        long,
        env = "SLUICE_RUNNER_IMAGE",
        default_value = "ghcr.io/sluice-dev/sluice-runner:latest"
    )]
    runner_image: String,
    /// Image pull Secrets of the runner pods (comma-separated names; each
    /// must exist in the pipelines' namespaces).
    #[arg(
        long,
        env = "SLUICE_RUNNER_IMAGE_PULL_SECRETS",
        value_delimiter = ',',
        num_args = 0..
    )]
    runner_image_pull_secrets: Vec<String>,
    /// Annotations of the runners' ServiceAccounts, as a JSON object (workload
    /// identity: eks.amazonaws.com/role-arn, iam.gke.io/gcp-service-account, ...).
    #[arg(long, env = "SLUICE_RUNNER_SERVICE_ACCOUNT_ANNOTATIONS", default_value = "{}", value_parser = annotations)]
    runner_service_account_annotations: BTreeMap<String, String>,
    /// Watch only this namespace (default: all).
    #[arg(long, env = "SLUICE_WATCH_NAMESPACE")]
    watch_namespace: Option<String>,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "SLUICE_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    http_addr: SocketAddr,
    /// URL of a runner's /status; placeholders {pod}, {replica}, {service},
    /// {namespace}, {pipeline}, {port}.
    #[arg(long, env = "SLUICE_STATUS_URL_TEMPLATE", default_value = sluice_controller::status::runner::RunnerStatusClient::IN_CLUSTER_TEMPLATE)]
    status_url_template: String,
    /// How often a healthy pipeline's status is refreshed.
    #[arg(long, env = "SLUICE_RESYNC_INTERVAL", default_value = "30s")]
    resync_interval: duration_flag::Duration,
    /// Name of the leader-election Lease.
    #[arg(long, env = "SLUICE_LEASE_NAME", default_value = "sluice-controller")]
    lease_name: String,
    /// Namespace of the Lease (the controller's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// This replica's identity in the Lease.
    #[arg(long, env = "POD_NAME")]
    holder_id: Option<String>,
    /// Log format.
    #[arg(long, env = "SLUICE_LOG_FORMAT", value_enum, default_value = "json")]
    log_format: LogFormat,
}

/// A JSON object of string values.
fn annotations(text: &str) -> Result<BTreeMap<String, String>, String> {
    serde_json::from_str(text).map_err(|e| format!("not a JSON object of strings: {e}"))
}

mod duration_flag {
    /// A `30s`/`5m` duration flag.
    #[derive(Clone, Copy)]
    pub struct Duration(pub std::time::Duration);

    impl std::str::FromStr for Duration {
        type Err = sluice_crds::DurationError;
        fn from_str(text: &str) -> Result<Self, Self::Err> {
            text.parse::<sluice_crds::Duration>()
                .map(|d| Self(d.as_std()))
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt().with_env_filter(filter);
    match args.log_format {
        LogFormat::Json => logs.json().init(),
        LogFormat::Text => logs.init(),
    }

    // Both ring and aws-lc-rs are compiled in (through different
    // dependencies), so rustls cannot choose on its own.
    if rustls::crypto::ring::default_provider()
        .install_default()
        .is_err()
    {
        tracing::debug!("a TLS crypto provider was already installed");
    }
    let client = kube::Client::try_default().await.context(
        "cannot configure a Kubernetes client (in-cluster service account or KUBECONFIG)",
    )?;
    let holder = match args.holder_id {
        Some(holder) => holder,
        None => format!("sluice-controller-{}", std::process::id()),
    };
    let settings = Settings {
        runner_image: args.runner_image,
        runner_image_pull_secrets: args
            .runner_image_pull_secrets
            .into_iter()
            .filter(|name| !name.is_empty())
            .collect(),
        runner_service_account_annotations: args.runner_service_account_annotations,
        status_url_template: args.status_url_template,
        resync_interval: args.resync_interval.0,
        ..Settings::default()
    };
    let options = Options {
        http_addr: args.http_addr,
        watch_namespace: args.watch_namespace,
        lease_name: args.lease_name,
        lease_namespace: args.lease_namespace,
        holder,
        lease_ttl: Duration::from_secs(15),
    };
    start(client, settings, options, terminated()).await
}

/// SIGTERM (from the kubelet) or SIGINT.
async fn terminated() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let sigterm = async {
        match term.as_mut() {
            Some(term) => {
                term.recv().await;
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = sigterm => {}
    }
}
