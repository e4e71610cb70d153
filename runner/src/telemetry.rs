//! Prometheus metrics (prefix `sluice_`) and the `/status` document, shared
//! between the pipeline loop, the HTTP server and the terminal progress line.

use std::{
    collections::HashMap,
    sync::{Mutex, PoisonError},
};

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, exponential_buckets,
};
use sluice_crds::RunnerStatus;

use crate::checkpoint::Stage;

pub struct Telemetry {
    pub registry: Registry,
    pub events_processed: IntCounter,
    pub dead_lettered: IntCounterVec,
    pub late_events: IntCounter,
    pub late_windows: IntCounter,
    pub filtered_events: IntCounter,
    pub dedup_dropped: IntCounter,
    pub dedup_remembered_ids: IntGauge,
    pub windows_emitted: IntCounter,
    pub epochs: IntCounter,
    pub epoch_seconds: Histogram,
    pub checkpoint_seconds: Histogram,
    pub watermark_lag_seconds: prometheus::Gauge,
    pub consumer_lag: IntGaugeVec,
    pub consumer_lag_seconds: prometheus::GaugeVec,
    pub open_window_entries: IntGauge,
    pub sinks: SinkMetrics,
    /// Requests of sources that poll over HTTP (the REST source).
    pub source_requests: RequestMeter,
    status: Mutex<RunnerStatus>,
    /// The stages interrupted by a transient failure, with it.
    interrupted: Mutex<HashMap<Stage, String>>,
}

/// Why metrics could not be registered (a programming error, reported at start).
pub type TelemetryError = prometheus::Error;

impl Telemetry {
    pub fn new(replica: u32, replicas: u32) -> Result<Self, TelemetryError> {
        let registry = Registry::new_custom(Some("sluice".into()), None)?;
        let counter = |name: &str, help: &str| -> Result<IntCounter, TelemetryError> {
            let counter = IntCounter::new(name, help)?;
            registry.register(Box::new(counter.clone()))?;
            Ok(counter)
        };
        let histogram = |name: &str, help: &str| -> Result<Histogram, TelemetryError> {
            let buckets = exponential_buckets(0.001, 2.0, 16)?;
            let histogram = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))?;
            registry.register(Box::new(histogram.clone()))?;
            Ok(histogram)
        };
        let dead_lettered = IntCounterVec::new(
            Opts::new(
                "dead_lettered_events_total",
                "Events sent to the dead-letter output (or dropped, for late events with lateEvents: drop), by reason",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(dead_lettered.clone()))?;
        let consumer_lag = IntGaugeVec::new(
            Opts::new(
                "consumer_lag_records",
                "Records between the last planned position and the end of each source partition",
            ),
            &["stream", "partition"],
        )?;
        registry.register(Box::new(consumer_lag.clone()))?;
        let consumer_lag_seconds = prometheus::GaugeVec::new(
            Opts::new(
                "consumer_lag_seconds",
                "While a source partition has unread records: wall-clock time minus the timestamp of the last record read",
            ),
            &["stream", "partition"],
        )?;
        registry.register(Box::new(consumer_lag_seconds.clone()))?;
        let watermark_lag_seconds = prometheus::Gauge::new(
            "watermark_lag_seconds",
            "Wall-clock time minus the event-time watermark",
        )?;
        registry.register(Box::new(watermark_lag_seconds.clone()))?;
        let open_window_entries = IntGauge::new(
            "open_window_entries",
            "Open (pane or session, key) entries held in window state",
        )?;
        registry.register(Box::new(open_window_entries.clone()))?;
        let dedup_remembered_ids = IntGauge::new(
            "dedup_remembered_ids",
            "Ids held by dedup transforms (seen within their horizon)",
        )?;
        registry.register(Box::new(dedup_remembered_ids.clone()))?;
        let source_requests = IntCounterVec::new(
            Opts::new(
                "source_requests_total",
                "Source requests (REST API polls) by outcome: ok, transient (retried) or permanent (failed)",
            ),
            &["outcome"],
        )?;
        registry.register(Box::new(source_requests.clone()))?;
        let source_request_seconds = histogram(
            "source_request_duration_seconds",
            "Time of one source request (a REST API poll)",
        )?;
        Ok(Self {
            events_processed: counter(
                "events_processed_total",
                "Records read from the source and processed",
            )?,
            late_events: counter(
                "late_events_total",
                "Late events: every window holding them had closed (ended at or before the watermark in force)",
            )?,
            late_windows: counter(
                "late_window_memberships_total",
                "Window memberships dropped because the window had closed: all of a late event's windows, and the closed ones of an event counted in its open windows",
            )?,
            filtered_events: counter(
                "filtered_events_total",
                "Events dropped by filter transforms",
            )?,
            dedup_dropped: counter(
                "dedup_dropped_total",
                "Events dropped by dedup transforms as duplicates of an id seen within the horizon",
            )?,
            dedup_remembered_ids,
            windows_emitted: counter("windows_emitted_total", "Window rows emitted")?,
            epochs: counter("epochs_total", "Epochs (micro-batches) completed")?,
            epoch_seconds: histogram(
                "epoch_processing_seconds",
                "Time to process one epoch, from reading to committed sinks",
            )?,
            checkpoint_seconds: histogram(
                "checkpoint_duration_seconds",
                "Time to write one checkpoint",
            )?,
            watermark_lag_seconds,
            consumer_lag,
            consumer_lag_seconds,
            open_window_entries,
            dead_lettered,
            sinks: SinkMetrics::register(&registry)?,
            source_requests: RequestMeter::new(&source_requests, &[], source_request_seconds),
            registry,
            status: Mutex::new(RunnerStatus {
                replica,
                replicas,
                ..RunnerStatus::default()
            }),
            interrupted: Mutex::default(),
        })
    }

    /// A copy of the current status.
    pub fn status(&self) -> RunnerStatus {
        self.status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Changes the status in place.
    pub fn update_status(&self, change: impl FnOnce(&mut RunnerStatus)) {
        change(&mut self.status.lock().unwrap_or_else(PoisonError::into_inner));
    }

    /// A stage (the whole pipeline, or one of a replica's two) stopped on
    /// `error` and will resume: the runner is not ready and says why.
    pub fn stage_interrupted(&self, stage: Stage, error: String) {
        let mut interrupted = self
            .interrupted
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        interrupted.insert(stage, error.clone());
        self.update_status(|s| {
            s.ready = false;
            s.error = Some(error);
        });
    }

    /// A stage runs again; the runner is ready once no stage is interrupted.
    pub fn stage_running(&self, stage: Stage) {
        let mut interrupted = self
            .interrupted
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        interrupted.remove(&stage);
        let still = interrupted.values().next().cloned();
        self.update_status(|s| {
            s.ready = still.is_none();
            s.error = still;
        });
    }

    /// The metrics in the Prometheus text format.
    pub fn render(&self) -> String {
        let encoder = prometheus::TextEncoder::new();
        encoder
            .encode_to_string(&self.registry.gather())
            .unwrap_or_else(|e| format!("# cannot encode metrics: {e}\n"))
    }
}

/// Request metrics of the sinks that talk HTTP, labelled by sink name.
#[derive(Clone)]
pub struct SinkMetrics {
    rows_written: IntCounterVec,
    requests: IntCounterVec,
    retries: IntCounterVec,
    item_retries: IntCounterVec,
    item_failures: IntCounterVec,
    request_seconds: HistogramVec,
}

impl SinkMetrics {
    pub fn register(registry: &Registry) -> Result<Self, TelemetryError> {
        let counter =
            |name: &str, help: &str, labels: &[&str]| -> Result<IntCounterVec, TelemetryError> {
                let counter = IntCounterVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(counter.clone()))?;
                Ok(counter)
            };
        let request_seconds = HistogramVec::new(
            HistogramOpts::new(
                "sink_request_duration_seconds",
                "Time of one sink request (an INSERT, a _bulk call)",
            )
            .buckets(exponential_buckets(0.001, 2.0, 16)?),
            &["sink"],
        )?;
        registry.register(Box::new(request_seconds.clone()))?;
        Ok(Self {
            rows_written: counter(
                "sink_rows_written_total",
                "Rows a sink wrote (replays included)",
                &["sink"],
            )?,
            requests: counter(
                "sink_requests_total",
                "Sink requests by outcome: ok, transient (retried) or permanent (failed)",
                &["sink", "outcome"],
            )?,
            retries: counter(
                "sink_retries_total",
                "Sink requests sent again after a transient failure",
                &["sink"],
            )?,
            item_retries: counter(
                "sink_item_retries_total",
                "Documents refused with 429/5xx inside a successful bulk request and sent again",
                &["sink"],
            )?,
            item_failures: counter(
                "sink_item_failures_total",
                "Documents refused for good (4xx) inside a bulk request: events go to the dead-letter output, window rows fail their epoch",
                &["sink"],
            )?,
            request_seconds,
        })
    }

    /// The metrics of one sink.
    pub fn meter(&self, sink: &str) -> SinkMeter {
        SinkMeter {
            rows_written: self.rows_written.with_label_values(&[sink]),
            requests: RequestMeter::new(
                &self.requests,
                &[sink],
                self.request_seconds.with_label_values(&[sink]),
            ),
            retries: self.retries.with_label_values(&[sink]),
            item_retries: self.item_retries.with_label_values(&[sink]),
            item_failures: self.item_failures.with_label_values(&[sink]),
        }
    }
}

/// [`SinkMetrics`] of one sink.
#[derive(Clone)]
pub struct SinkMeter {
    pub rows_written: IntCounter,
    pub requests: RequestMeter,
    pub retries: IntCounter,
    pub item_retries: IntCounter,
    pub item_failures: IntCounter,
}

/// Requests to one HTTP peer: counted by outcome, and timed.
#[derive(Clone)]
pub struct RequestMeter {
    pub ok: IntCounter,
    pub transient: IntCounter,
    pub permanent: IntCounter,
    pub seconds: Histogram,
}

impl RequestMeter {
    /// The meter whose outcomes are `requests{labels…, outcome}`.
    fn new(requests: &IntCounterVec, labels: &[&str], seconds: Histogram) -> Self {
        let outcome = |outcome: &str| {
            let labels: Vec<&str> = labels.iter().copied().chain([outcome]).collect();
            requests.with_label_values(&labels)
        };
        Self {
            ok: outcome("ok"),
            transient: outcome("transient"),
            permanent: outcome("permanent"),
            seconds,
        }
    }

    /// Counts a failed request by kind and hands the failure on.
    pub fn failure(&self, failure: crate::http::Failure) -> crate::http::Failure {
        match &failure {
            crate::http::Failure::Transient { .. } => self.transient.inc(),
            crate::http::Failure::Permanent { .. } => self.permanent.inc(),
        }
        failure
    }
}
