//! What one runner process runs: the whole pipeline, or (several replicas of
//! a windowed Kafka pipeline) a source stage and a key-group stage side by
//! side, joined by the repartition topic (see `shuffle`).

use std::sync::Arc;

use sluice_crds::{ReadLimits, SinkInput, StartingOffsets, StreamPipelineSpec};
use tokio::sync::watch;

use super::{
    Pipeline, PipelineError, Role, RunSummary, RunnerIdentity, handover, retrying, sinks_from_spec,
    source_context, worker_threads,
};
use crate::{
    checkpoint::Stage,
    kafka::KafkaConnection,
    secrets::Secrets,
    shuffle::RepartitionTopic,
    source::{self, KafkaSource, KafkaTopics, SourceError},
    telemetry::Telemetry,
};

/// The stages of one runner.
pub struct Job {
    stages: Vec<Pipeline>,
}

impl Job {
    /// The stages a spec needs on this replica. Windows are computed in key
    /// groups when a Kafka source is read by several replicas (or was: see
    /// `handover`); the runner creates the repartition topic if it does not
    /// exist. A changed replica count starts the next generation of lanes
    /// from the previous one's checkpoints.
    pub async fn from_spec(
        spec: &StreamPipelineSpec,
        identity: RunnerIdentity,
        telemetry: Arc<Telemetry>,
    ) -> Result<Self, PipelineError> {
        let key_groups = u32::try_from(spec.key_groups).unwrap_or(1).max(1);
        let takeover = handover::take_over(
            crate::storage::store_for(&spec.checkpoint.uri)?,
            &spec.checkpoint.uri,
            &identity,
            spec.source.kafka.is_some() && spec.window.is_some(),
            key_groups,
        )
        .await?;
        let identity = RunnerIdentity {
            generation: takeover.generation,
            ..identity
        };
        let kafka = match &spec.source.kafka {
            Some(kafka) if takeover.key_groups => kafka,
            _ => {
                return Ok(Self {
                    stages: vec![Pipeline::from_spec(spec, identity, telemetry)?],
                });
            }
        };
        let connection = KafkaConnection::from_kafka_spec(kafka, &Secrets::from_env())
            .map_err(SourceError::from)?;
        let topic = Arc::new(
            RepartitionTopic::ensure(&connection, &identity.repartition_topic, key_groups).await?,
        );
        let threads = worker_threads();
        let context = source_context(spec, &identity)?;
        let source_stage = Pipeline::new(
            spec,
            identity.clone(),
            Role::SourceStage {
                replica: identity.replica,
                replicas: identity.replicas,
                key_groups,
            },
            source::from_spec(&spec.source, &context, &telemetry.source_requests)?,
            sinks_from_spec(spec, &telemetry, |input| input == SinkInput::Events)?,
            telemetry.clone(),
            threads,
        )?
        .sending_to(topic.clone());
        // Key group g is partition g; replica r owns g % replicas == r, as
        // for source partitions.
        let key_group_topic = KafkaTopics {
            topics: vec![topic.name().to_owned()],
            consumer_group: format!("{}.keygroups", kafka.consumer_group),
            starting_offsets: StartingOffsets::Earliest,
            limits: ReadLimits::default(),
        };
        let key_group_stage = Pipeline::new(
            spec,
            identity,
            Role::KeyGroupStage,
            Box::new(KafkaSource::connect(
                &connection,
                key_group_topic,
                &context,
            )?),
            sinks_from_spec(spec, &telemetry, |input| input == SinkInput::Windows)?,
            telemetry,
            threads,
        )?;
        Ok(Self {
            stages: vec![source_stage, key_group_stage],
        })
    }

    /// [`Job::from_spec`], tried again after transient failures (the
    /// checkpoint store or the brokers it reads at start unreachable), the
    /// runner not ready meanwhile and saying why.
    pub async fn start(
        spec: &StreamPipelineSpec,
        identity: RunnerIdentity,
        telemetry: Arc<Telemetry>,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<Self, PipelineError> {
        let reporter = telemetry.clone();
        retrying(&reporter, Stage::Source, stop, async |_| {
            Self::from_spec(spec, identity.clone(), telemetry.clone()).await
        })
        .await
    }

    /// Schema of window rows, when the pipeline has windows.
    pub fn window_schema(&self) -> Option<arrow::datatypes::SchemaRef> {
        self.stages.iter().find_map(Pipeline::window_schema)
    }

    /// Runs every stage until `stop` turns true (or a bounded source ends);
    /// the first stage to fail stops the others.
    pub async fn run(self, stop: watch::Receiver<bool>) -> Result<RunSummary, PipelineError> {
        let runs = self.stages.into_iter().map(|stage| stage.run(stop.clone()));
        let summaries = futures::future::try_join_all(runs).await?;
        let mut total = RunSummary {
            exhausted: true,
            ..RunSummary::default()
        };
        for summary in summaries {
            total.counts += summary.counts;
            total.last_epoch = total.last_epoch.max(summary.last_epoch);
            total.replayed_epochs += summary.replayed_epochs;
            total.watermark = total.watermark.or(summary.watermark);
            total.exhausted &= summary.exhausted;
        }
        Ok(total)
    }
}
