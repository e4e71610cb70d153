//! Reads each runner's `GET /status` (a [`RunnerStatus`]) through the
//! headless Service's per-pod DNS names.

use std::time::Duration;

use futures::future::join_all;
use kube::ResourceExt;
use sluice_crds::{RunnerStatus, StreamPipeline};

use crate::render::{HTTP_PORT, Names};

/// Fetches runner status documents from URLs built from a template.
pub struct RunnerStatusClient {
    http: reqwest::Client,
    template: String,
}

impl RunnerStatusClient {
    /// Placeholders: `{pod}` (`<statefulset>-<replica>`), `{replica}`,
    /// `{service}`, `{namespace}`, `{pipeline}` and `{port}`.
    pub const IN_CLUSTER_TEMPLATE: &'static str =
        "http://{pod}.{service}.{namespace}.svc:{port}/status";

    pub fn new(template: String, timeout: Duration) -> Self {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .unwrap_or_default();
        Self { http, template }
    }

    /// The status URL of replica `replica` of `pipeline`.
    pub fn url(&self, pipeline: &StreamPipeline, replica: i32) -> String {
        self.template
            .replace(
                "{pod}",
                &format!("{}-{replica}", Names::stateful_set(pipeline)),
            )
            .replace("{replica}", &replica.to_string())
            .replace("{service}", &Names::service(pipeline))
            .replace("{namespace}", &pipeline.namespace().unwrap_or_default())
            .replace("{pipeline}", &pipeline.name_any())
            .replace("{port}", &HTTP_PORT.to_string())
    }

    /// The status of replicas `0..replicas`, fetched concurrently; an error
    /// says why a replica did not answer.
    pub async fn fetch_all(
        &self,
        pipeline: &StreamPipeline,
        replicas: i32,
    ) -> Vec<Result<RunnerStatus, String>> {
        join_all((0..replicas).map(|replica| self.fetch(self.url(pipeline, replica)))).await
    }

    async fn fetch(&self, url: String) -> Result<RunnerStatus, String> {
        let response = self
            .http
            .get(&url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| format!("no status from {url}: {e}"))?;
        response
            .json::<RunnerStatus>()
            .await
            .map_err(|e| format!("unreadable status from {url}: {e}"))
    }
}
