//! The controller's Prometheus metrics (prefix `sluice_controller_`, and
//! `sluice_pipeline_` for per-pipeline figures).

use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, IntCounterVec, Opts, Registry, TextEncoder,
};

/// Registered metrics of one controller process.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Reconciles by `result` (`ok`, `error`).
    pub reconciles: IntCounterVec,
    /// Failed reconciles by `error` kind.
    pub errors: IntCounterVec,
    pub reconcile_duration: Histogram,
    /// Records behind, per `namespace` and `pipeline`.
    pub lag_records: GaugeVec,
    /// Seconds behind (worst partition), per `namespace` and `pipeline`.
    pub lag_seconds: GaugeVec,
    /// Runners a pipeline should have (0 when suspended or draining for a
    /// rescale), per `namespace` and `pipeline`.
    pub runners_desired: GaugeVec,
    /// Runners that answer their `/status` ready, per `namespace` and `pipeline`.
    pub runners_ready: GaugeVec,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let reconciles = IntCounterVec::new(
            Opts::new(
                "sluice_controller_reconciles_total",
                "Reconciles of StreamPipelines",
            ),
            &["result"],
        )?;
        let errors = IntCounterVec::new(
            Opts::new(
                "sluice_controller_reconcile_errors_total",
                "Failed reconciles by kind of error",
            ),
            &["error"],
        )?;
        let reconcile_duration = Histogram::with_opts(
            HistogramOpts::new(
                "sluice_controller_reconcile_duration_seconds",
                "Time of one reconcile",
            )
            .buckets(vec![
                0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
        )?;
        let labels = &["namespace", "pipeline"];
        let lag_records = GaugeVec::new(
            Opts::new(
                "sluice_pipeline_lag_records",
                "Records behind the source, summed over partitions",
            ),
            labels,
        )?;
        let lag_seconds = GaugeVec::new(
            Opts::new(
                "sluice_pipeline_lag_seconds",
                "Seconds behind by event time, worst partition",
            ),
            labels,
        )?;
        let runners_desired = GaugeVec::new(
            Opts::new(
                "sluice_pipeline_runners_desired",
                "Runners the pipeline should have: spec.parallelism, 0 when suspended or while a rescale stops the old runners",
            ),
            labels,
        )?;
        let runners_ready = GaugeVec::new(
            Opts::new(
                "sluice_pipeline_runners_ready",
                "Runners that answer their /status and are ready",
            ),
            labels,
        )?;
        registry.register(Box::new(runners_desired.clone()))?;
        registry.register(Box::new(runners_ready.clone()))?;
        registry.register(Box::new(reconciles.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        registry.register(Box::new(reconcile_duration.clone()))?;
        registry.register(Box::new(lag_records.clone()))?;
        registry.register(Box::new(lag_seconds.clone()))?;
        Ok(Self {
            registry,
            reconciles,
            errors,
            reconcile_duration,
            lag_records,
            lag_seconds,
            runners_desired,
            runners_ready,
        })
    }

    /// Sets (or, with `None`, removes) a pipeline's lag.
    pub fn set_lag(&self, namespace: &str, pipeline: &str, lag: Option<(f64, f64)>) {
        let labels = [namespace, pipeline];
        match lag {
            Some((records, seconds)) => {
                self.lag_records.with_label_values(&labels).set(records);
                self.lag_seconds.with_label_values(&labels).set(seconds);
            }
            None => {
                // Absent series are fine: removal only fails when never set.
                let _ = self.lag_records.remove_label_values(&labels);
                let _ = self.lag_seconds.remove_label_values(&labels);
            }
        }
    }

    /// Sets (or, with `None`, removes) a pipeline's (desired, ready) runners.
    pub fn set_runners(&self, namespace: &str, pipeline: &str, runners: Option<(i32, i32)>) {
        let labels = [namespace, pipeline];
        match runners {
            Some((desired, ready)) => {
                self.runners_desired
                    .with_label_values(&labels)
                    .set(f64::from(desired));
                self.runners_ready
                    .with_label_values(&labels)
                    .set(f64::from(ready));
            }
            None => {
                let _ = self.runners_desired.remove_label_values(&labels);
                let _ = self.runners_ready.remove_label_values(&labels);
            }
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        // Encoding gathered families into a Vec cannot fail.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buffer);
        String::from_utf8_lossy(&buffer).into_owned()
    }
}
