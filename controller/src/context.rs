//! What every reconcile shares: the API client, settings, the Event recorder,
//! metrics, the runner status client, the webhook notifier and per-object backoff.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Mutex,
    time::Duration,
};

use kube::{
    Client,
    runtime::{events::Recorder, events::Reporter, reflector::ObjectRef},
};
use sluice_crds::StreamPipeline;

use crate::{
    alerts::webhook::WebhookNotifier, metrics::Metrics, status::runner::RunnerStatusClient,
};

/// The one field manager of everything the controller writes.
pub const FIELD_MANAGER: &str = "sluice-controller";

/// Controller settings (command-line flags of the binary).
#[derive(Clone, Debug)]
pub struct Settings {
    /// Runner image when a pipeline does not set `spec.runner.image`.
    pub runner_image: String,
    /// Secrets (in each pipeline's namespace) the kubelet pulls runner images with.
    pub runner_image_pull_secrets: Vec<String>,
    /// Annotations of every runner ServiceAccount, e.g. for workload identity
    /// (`eks.amazonaws.com/role-arn`, `iam.gke.io/gcp-service-account`).
    pub runner_service_account_annotations: BTreeMap<String, String>,
    /// URL of one runner's `/status`; see [`RunnerStatusClient`] for its placeholders.
    pub status_url_template: String,
    /// How often a healthy pipeline's status is refreshed.
    pub resync_interval: Duration,
    /// Time allowed for one runner's `/status` answer.
    pub status_timeout: Duration,
    /// First retry delay after a failure; doubles per consecutive failure.
    pub min_backoff: Duration,
    /// Longest retry delay.
    pub max_backoff: Duration,
    /// Webhook delivery: first retry delay and number of retries.
    pub webhook_min_delay: Duration,
    pub webhook_retries: usize,
    /// This replica's name in the Events it records (the pod name).
    pub instance: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            runner_image: "ghcr.io/sluice-dev/sluice-runner:latest".into(),
            runner_image_pull_secrets: Vec::new(),
            runner_service_account_annotations: BTreeMap::new(),
            status_url_template: RunnerStatusClient::IN_CLUSTER_TEMPLATE.into(),
            resync_interval: Duration::from_secs(30),
            status_timeout: Duration::from_secs(3),
            min_backoff: Duration::from_secs(5),
            max_backoff: Duration::from_secs(300),
            webhook_min_delay: Duration::from_millis(500),
            webhook_retries: 8,
            instance: None,
        }
    }
}

/// Shared state of all reconciles.
pub struct Context {
    pub client: Client,
    pub settings: Settings,
    pub recorder: Recorder,
    pub metrics: Metrics,
    pub runners: RunnerStatusClient,
    pub webhooks: WebhookNotifier,
    failures: Mutex<HashMap<ObjectRef<StreamPipeline>, u32>>,
}

impl Context {
    pub fn new(client: Client, settings: Settings, metrics: Metrics) -> Self {
        let reporter = Reporter {
            controller: FIELD_MANAGER.into(),
            instance: settings.instance.clone(),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            runners: RunnerStatusClient::new(
                settings.status_url_template.clone(),
                settings.status_timeout,
            ),
            webhooks: WebhookNotifier::new(settings.webhook_min_delay, settings.webhook_retries),
            client,
            settings,
            metrics,
            failures: Mutex::default(),
        }
    }

    /// The delay before retrying `pipeline` after one more consecutive failure.
    pub fn backoff(&self, pipeline: &StreamPipeline) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let count = failures.entry(ObjectRef::from_obj(pipeline)).or_default();
        let delay = self
            .settings
            .min_backoff
            .saturating_mul(2u32.saturating_pow(*count))
            .min(self.settings.max_backoff);
        *count = count.saturating_add(1);
        delay
    }

    /// Forgets past failures of `pipeline` after a successful reconcile.
    pub fn reset_backoff(&self, pipeline: &StreamPipeline) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&ObjectRef::from_obj(pipeline));
    }
}
