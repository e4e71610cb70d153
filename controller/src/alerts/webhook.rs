//! Alert webhooks: a JSON POST when an alert fires and when it clears,
//! retried with exponential backoff in a background task so reconciling
//! never waits for a slow or failing receiver. URLs come from Secrets and
//! are never logged.

use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use serde::{Deserialize, Serialize};
use sluice_crds::{ActiveAlert, AlertType};
use tokio::task::JoinHandle;

/// Whether the alert started or stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum AlertState {
    Firing,
    Resolved,
}

/// The JSON body of a webhook call.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AlertNotice {
    pub pipeline: String,
    pub namespace: String,
    pub alert: AlertType,
    pub state: AlertState,
    pub value: f64,
    pub threshold: f64,
    /// When this happened (RFC 3339).
    pub time: String,
}

impl AlertNotice {
    pub fn new(
        namespace: &str,
        pipeline: &str,
        alert: &ActiveAlert,
        state: AlertState,
        time: String,
    ) -> Self {
        Self {
            pipeline: pipeline.to_owned(),
            namespace: namespace.to_owned(),
            alert: alert.alert_type,
            state,
            value: alert.value,
            threshold: alert.threshold,
            time,
        }
    }
}

/// Delivers alert notices.
pub struct WebhookNotifier {
    http: reqwest::Client,
    min_delay: Duration,
    retries: usize,
}

impl WebhookNotifier {
    pub fn new(min_delay: Duration, retries: usize) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap_or_default();
        Self {
            http,
            min_delay,
            retries,
        }
    }

    /// Starts delivering `notice` to `url`; the task ends true once the
    /// receiver answered 2xx, false when every retry failed.
    pub fn notify(&self, url: String, label: String, notice: AlertNotice) -> JoinHandle<bool> {
        let http = self.http.clone();
        let policy = ExponentialBuilder::default()
            .with_min_delay(self.min_delay)
            .with_max_delay(Duration::from_secs(60))
            .with_max_times(self.retries)
            .with_jitter();
        tokio::spawn(async move {
            let post = || async {
                http.post(url.as_str())
                    .json(&notice)
                    .send()
                    .await
                    .and_then(reqwest::Response::error_for_status)
                    .map_err(reqwest::Error::without_url)
            };
            let delivered = post
                .retry(policy)
                .notify(|error, delay| {
                    tracing::debug!(%label, %error, ?delay, "alert webhook failed; retrying");
                })
                .await;
            match delivered {
                Ok(_) => true,
                Err(error) => {
                    tracing::warn!(%label, %error, "alert webhook failed after all retries");
                    false
                }
            }
        })
    }
}
