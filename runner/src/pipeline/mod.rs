//! The pipeline loop: plan → write-ahead → process → commit sinks →
//! checkpoint → commit source, epoch after epoch (see DESIGN.md). It sees
//! sources, sinks, the dead-letter output and the checkpoint store only
//! through their traits; [`Pipeline::from_spec`] is the one place that maps a
//! spec to implementations.

mod engine;
mod events;
mod handover;
mod job;
mod workers;

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use arrow::array::RecordBatch;
use sluice_crds::{CheckpointStatus, OutputMode, PartitionLag, SinkInput, StreamPipelineSpec};
use tokio::sync::watch;

pub use self::{
    engine::{Engine, EngineError, EpochCounts, EpochOutput, Role, event_schema, rfc3339},
    job::Job,
    workers::{WORKER_THREADS_VARIABLE, worker_threads},
};
use crate::{
    checkpoint::{
        Checkpoint, CheckpointError, CheckpointStore, EpochPlan, Lane, ObjectStoreCheckpoints,
        Stage,
    },
    dead_letter::{self, DeadEvent, DeadLetter, DeadLetterError, Reason},
    memory::{MAX_EPOCH_BYTES, MIN_EPOCH_BYTES, MemoryError, MemoryLimit},
    shuffle::{RepartitionError, RepartitionTopic},
    sink::{self, ConfiguredSink, EpochKey, RefusedRow, SinkError, WriteOutcome},
    source::{
        self, PartitionId, PartitionRange, Planned, Positions, Source, SourceContext, SourceError,
    },
    telemetry::Telemetry,
    window::WindowState,
};

/// The events behind the event rows a sink refused, for the dead-letter output.
fn refused_events(
    sink: &str,
    rows: &[RecordBatch],
    refused: Vec<RefusedRow>,
) -> Result<Vec<DeadEvent>, PipelineError> {
    refused
        .into_iter()
        .map(|refusal| {
            let batch = rows.get(refusal.batch).ok_or_else(|| SinkError::Failed {
                sink: sink.to_owned(),
                message: format!(
                    "refused a row of batch {}, which it was not given",
                    refusal.batch
                ),
            })?;
            let reason = Reason::Refused(format!("sink {sink}: {}", refusal.reason));
            Ok(engine::event_of_row(batch, refusal.row, reason)?)
        })
        .collect()
}

/// The source settings of a replica: its place among the replicas and how
/// much one epoch may read (`spec.trigger.maxBytes`, else a share of the
/// memory limit).
fn source_context(
    spec: &StreamPipelineSpec,
    identity: &RunnerIdentity,
) -> Result<SourceContext, PipelineError> {
    let max_bytes_per_epoch = match spec.trigger.max_bytes {
        Some(bytes) => bytes.clamp(MIN_EPOCH_BYTES, MAX_EPOCH_BYTES),
        None => {
            let limit = MemoryLimit::detect()?;
            let bytes = limit.epoch_bytes();
            tracing::info!(
                memory_limit = limit.bytes,
                from = ?limit.source,
                max_bytes_per_epoch = bytes,
                "epochs sized to the memory limit"
            );
            bytes
        }
    };
    Ok(SourceContext {
        replica: identity.replica,
        replicas: identity.replicas,
        max_records_per_epoch: DEFAULT_MAX_RECORDS_PER_EPOCH,
        max_bytes_per_epoch,
    })
}

/// The spec's sinks that `wanted` picks (by what they read).
fn sinks_from_spec(
    spec: &StreamPipelineSpec,
    telemetry: &Telemetry,
    wanted: impl Fn(SinkInput) -> bool,
) -> Result<Vec<ConfiguredSink>, PipelineError> {
    let window_updates = spec
        .window
        .as_ref()
        .is_some_and(|w| w.output_mode == OutputMode::Update);
    Ok(spec
        .sinks
        .iter()
        .filter(|sink| wanted(sink.input))
        .map(|sink| sink::from_spec(sink, window_updates, &telemetry.sinks))
        .collect::<Result<Vec<_>, _>>()?)
}

/// Records one epoch reads at most when the source sets no limit of its own.
pub const DEFAULT_MAX_RECORDS_PER_EPOCH: i64 = 1_000_000;

/// Why the pipeline stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error(transparent)]
    DeadLetter(#[from] DeadLetterError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Repartition(#[from] RepartitionError),
    #[error(
        "{uri}: these checkpoints were written by one of {written} replicas and this runner is one of {now}; the replicas of one generation share one count, so another set of runners with a different spec.parallelism may still be running: stop it first"
    )]
    Rescaled { uri: String, written: u32, now: u32 },
    #[error(
        "{uri}: the checkpoint holds windows this replica computed alone, as versions before key groups did with several replicas (each held partial counts); they cannot continue exactly in key groups. Run with spec.parallelism: 1, where they continue, or start a new checkpoint lineage (spec.upgradePolicy: reset together with a change of spec.keyGroups)"
    )]
    WindowsBeforeKeyGroups { uri: String },
    #[error(
        "cannot take over from the previous replicas: {lane} planned epochs {epochs:?} and did not finish them (it was not stopped gracefully). Start the pipeline again with its previous spec.parallelism so that it finishes them, then change it"
    )]
    UnfinishedLane { lane: String, epochs: Vec<u64> },
    #[error(
        "cannot take over from the previous replicas: {lanes} of them computed windows themselves, and windows with different watermarks cannot be merged"
    )]
    Unmergeable { lanes: usize },
    #[error(transparent)]
    Storage(#[from] crate::storage::StorageError),
    #[error("the commit of epoch {epoch} stopped: {message}")]
    CommitLost { epoch: u64, message: String },
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error(
        "the checkpoint store holds plans for epochs {found:?} after checkpoint {checkpoint:?}; expected consecutive epochs"
    )]
    PlanGap {
        checkpoint: Option<u64>,
        found: Vec<u64>,
    },
}

impl PipelineError {
    /// Failures of services that come back by themselves (a broker
    /// restarting, an object store or a sink's destination unreachable, a
    /// network partition): the pipeline reports them, pauses and resumes
    /// from its checkpoint instead of exiting, however often they happen.
    /// Never a conflict with another runner, a corrupt checkpoint or a spec
    /// that cannot work.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Source(error) => matches!(error, SourceError::Unavailable { .. }),
            Self::Sink(error) => error.is_transient(),
            Self::DeadLetter(error) => error.is_transient(),
            Self::Checkpoint(error) => error.is_transient(),
            Self::Repartition(error) => error.is_transient(),
            Self::Engine(_)
            | Self::Rescaled { .. }
            | Self::WindowsBeforeKeyGroups { .. }
            | Self::UnfinishedLane { .. }
            | Self::Unmergeable { .. }
            | Self::Storage(_)
            | Self::CommitLost { .. }
            | Self::Memory(_)
            | Self::PlanGap { .. } => false,
        }
    }
}

/// Longest pause between attempts to resume after a transient failure.
const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Pauses after consecutive transient failures: from half a second, doubling
/// (with jitter) up to [`RETRY_BACKOFF_MAX`], for as long as it takes.
fn retry_delays() -> impl Iterator<Item = Duration> {
    use backon::BackoffBuilder;
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(500))
        .with_max_delay(RETRY_BACKOFF_MAX)
        .with_jitter()
        .without_max_times()
        .build()
}

/// Runs `attempt` until it succeeds or fails for good. After a transient
/// failure (a service that comes back, such as a restarting broker) it
/// reports `stage` interrupted, backs off and tries again, for as long as it
/// takes; once `stop` has turned true, a failure ends it.
async fn retrying<T>(
    telemetry: &Telemetry,
    stage: Stage,
    stop: &mut watch::Receiver<bool>,
    mut attempt: impl AsyncFnMut(&mut watch::Receiver<bool>) -> Result<T, PipelineError>,
) -> Result<T, PipelineError> {
    let mut delays = retry_delays();
    let mut last_failure = Instant::now();
    loop {
        match attempt(stop).await {
            Ok(value) => return Ok(value),
            Err(error) if error.is_transient() && !*stop.borrow() => {
                if last_failure.elapsed() > RETRY_BACKOFF_MAX * 4 {
                    delays = retry_delays();
                }
                last_failure = Instant::now();
                let delay = delays.next().unwrap_or(RETRY_BACKOFF_MAX);
                tracing::warn!(%error, retry_in_seconds = delay.as_secs_f64(), "pipeline interrupted; resuming from the last checkpoint");
                telemetry.stage_interrupted(stage, error.to_string());
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop.changed() => {}
                }
            }
            Err(error) => return Err(error),
        }
    }
}

/// Identity of this runner within its pipeline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunnerIdentity {
    /// The pipeline's uid; the sinks' idempotency keys start with it.
    pub pipeline: String,
    pub replica: u32,
    pub replicas: u32,
    /// The topic key groups are exchanged through when several replicas
    /// compute windows: `sluice-<namespace>-<name>-keygroups`.
    pub repartition_topic: String,
    /// The generation of replicas this one belongs to (see
    /// [`crate::checkpoint::Lane`]); [`Job::from_spec`] finds it.
    pub generation: u64,
}

/// How a run ended.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunSummary {
    /// Last epoch processed (replayed or new).
    pub last_epoch: Option<u64>,
    /// Epochs replayed from the write-ahead log, at start and after
    /// transient failures.
    pub replayed_epochs: u64,
    pub counts: EpochCounts,
    /// Watermark at the end (milliseconds since the Unix epoch).
    pub watermark: Option<i64>,
    /// The source has nothing more (bounded sources).
    pub exhausted: bool,
}

/// Where an epoch's results go.
struct Outputs {
    sinks: Vec<ConfiguredSink>,
    dead_letter: Box<dyn DeadLetter>,
}

/// When an epoch's plan is written ahead of its outputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Planning {
    /// Before it is read (replays, and sources that know their ranges).
    Written,
    /// Once it is read (see [`Planned::Reading`]).
    WhileReading,
}

/// An epoch processed, as the pipeline records it once its commit has ended.
struct Processed {
    epoch: u64,
    /// When the epoch's processing started.
    started: Instant,
    figures: EngineFigures,
}

/// An epoch whose outputs are being committed in the background.
struct Commit {
    processed: Processed,
    task: tokio::task::JoinHandle<Returned>,
}

/// How a background commit ended: what it gave back, or why it stopped.
type Ended = Result<Returned, tokio::task::JoinError>;

/// Waits for the background commit in `committing`, if any, and takes it
/// out once it has ended. Cancel-safe: dropped while waiting, the commit
/// stays where it was.
async fn commit_ended(committing: &mut Option<Commit>) -> Option<(Processed, Ended)> {
    let ended = (&mut committing.as_mut()?.task).await;
    let Commit { processed, .. } = committing.take()?;
    Some((processed, ended))
}

/// What a background commit gives back: the outputs it borrowed, and how it went.
struct Returned {
    outputs: Outputs,
    result: Result<Committed, PipelineError>,
}

/// A committed epoch.
struct Committed {
    /// The epoch's counts, with the rows the sinks refused.
    counts: EpochCounts,
    checkpoint: Option<Written>,
}

/// A checkpoint written, and how long that took.
struct Written {
    checkpoint: Checkpoint,
    took: Duration,
}

/// The engine's figures after an epoch.
#[derive(Clone, Copy)]
struct EngineFigures {
    remembered_ids: usize,
    computes_windows: bool,
    watermark: Option<i64>,
    open_entries: usize,
}

/// Commits one epoch: its rows to each sink, then its dead events (with the
/// rows the sinks refused), then, if given, the checkpoint of the state
/// after it. `key` names the epoch (its `sink` is set per output).
async fn commit(
    mut outputs: Outputs,
    key: EpochKey,
    output: EpochOutput,
    checkpoint: Option<Checkpoint>,
    store: Arc<dyn CheckpointStore>,
) -> Returned {
    let result = write_outputs(&mut outputs, key, output, checkpoint, store.as_ref()).await;
    Returned { outputs, result }
}

async fn write_outputs(
    outputs: &mut Outputs,
    key: EpochKey,
    mut output: EpochOutput,
    checkpoint: Option<Checkpoint>,
    store: &dyn CheckpointStore,
) -> Result<Committed, PipelineError> {
    let key = |sink: &str| EpochKey {
        sink: sink.to_owned(),
        ..key.clone()
    };
    for ConfiguredSink { name, input, sink } in &mut outputs.sinks {
        let rows: Vec<RecordBatch> = match input {
            SinkInput::Windows => output.windows.iter().cloned().collect(),
            SinkInput::Events => output.events.iter().cloned().collect(),
        };
        if rows.iter().all(|b| b.num_rows() == 0) {
            continue;
        }
        let outcome = sink.write_epoch(&key(name), &rows).await?;
        tracing::debug!(
            epoch = key(name).epoch,
            sink = name.as_str(),
            ?outcome,
            "sink written"
        );
        if let WriteOutcome::Written { refused, .. } = outcome {
            output.counts.refused += refused.len() as u64;
            output.dead.extend(refused_events(name, &rows, refused)?);
        }
    }
    if !output.dead.is_empty() {
        outputs
            .dead_letter
            .write_epoch(&key("dead-letter"), &output.dead)
            .await?;
    }
    let checkpoint = match checkpoint {
        Some(checkpoint) => {
            let started = Instant::now();
            store.put_checkpoint(&checkpoint).await?;
            Some(Written {
                checkpoint,
                took: started.elapsed(),
            })
        }
        None => None,
    };
    Ok(Committed {
        counts: output.counts,
        checkpoint,
    })
}

pub struct Pipeline {
    identity: RunnerIdentity,
    lane: Lane,
    source: Box<dyn Source>,
    /// A source stage's output: the repartition topic.
    repartition: Option<std::sync::Arc<RepartitionTopic>>,
    /// The sinks and the dead-letter output; away (`None`) while a
    /// background commit writes to them.
    outputs: Option<Outputs>,
    /// The last epoch's commit, running while the next epoch is processed.
    committing: Option<Commit>,
    checkpoints: Arc<dyn CheckpointStore>,
    engine: Engine,
    telemetry: Arc<Telemetry>,
    trigger: Duration,
    checkpoint_interval: Duration,
    retain_epochs: usize,
    /// The background deletion of old checkpoints, if one is running.
    pruning: Option<tokio::task::JoinHandle<()>>,
    /// Every sink has been opened.
    sinks_open: bool,
    idle_timeout: Duration,
    positions: Positions,
    last_epoch: Option<u64>,
    last_checkpoint: Option<u64>,
    last_checkpoint_at: Instant,
    /// When each partition last read a record with a valid event time.
    last_progress: HashMap<PartitionId, Instant>,
    last_idle: Vec<PartitionId>,
    summary: RunSummary,
}

impl Pipeline {
    /// Builds the pipeline a spec describes, computing its windows itself
    /// (see [`Job`] for the key-group stages of several replicas).
    pub fn from_spec(
        spec: &StreamPipelineSpec,
        identity: RunnerIdentity,
        telemetry: Arc<Telemetry>,
    ) -> Result<Self, PipelineError> {
        Self::from_spec_on_threads(spec, identity, telemetry, worker_threads())
    }

    /// [`Pipeline::from_spec`] with `threads` worker threads instead of
    /// [`worker_threads`]'s number (benchmarks compare thread counts).
    pub fn from_spec_on_threads(
        spec: &StreamPipelineSpec,
        identity: RunnerIdentity,
        telemetry: Arc<Telemetry>,
        threads: usize,
    ) -> Result<Self, PipelineError> {
        let source = source::from_spec(
            &spec.source,
            &source_context(spec, &identity)?,
            &telemetry.source_requests,
        )?;
        let sinks = sinks_from_spec(spec, &telemetry, |_| true)?;
        Self::new(
            spec,
            identity,
            Role::Whole,
            source,
            sinks,
            telemetry,
            threads,
        )
    }

    /// A pipeline, or one stage of it, over a given source and sinks, its
    /// engine on `threads` threads; the dead-letter output and checkpoints
    /// come from the spec.
    pub fn new(
        spec: &StreamPipelineSpec,
        identity: RunnerIdentity,
        role: Role,
        source: Box<dyn Source>,
        sinks: Vec<ConfiguredSink>,
        telemetry: Arc<Telemetry>,
        threads: usize,
    ) -> Result<Self, PipelineError> {
        let lane = Lane {
            stage: match role {
                Role::KeyGroupStage => Stage::KeyGroups,
                Role::Whole | Role::SourceStage { .. } => Stage::Source,
            },
            replica: identity.replica,
            generation: identity.generation,
            lineage: crate::checkpoint::lineage_of(&spec.checkpoint.uri),
        };
        let dead_letter = dead_letter::from_spec(
            spec.dead_letter.as_ref(),
            &spec.source,
            &spec.checkpoint.uri,
        )?;
        let checkpoints = Arc::new(ObjectStoreCheckpoints::open(&spec.checkpoint.uri, lane)?);
        let wants_events = sinks.iter().any(|s| s.input == SinkInput::Events);
        let engine = Engine::new(spec, wants_events, role)?.with_workers(threads)?;
        Ok(Self {
            identity,
            lane,
            source,
            repartition: None,
            outputs: Some(Outputs { sinks, dead_letter }),
            committing: None,
            checkpoints,
            engine,
            telemetry,
            trigger: spec.trigger.interval.as_std(),
            checkpoint_interval: spec.checkpoint.interval.as_std(),
            retain_epochs: usize::try_from(spec.checkpoint.retain_epochs)
                .unwrap_or(1)
                .max(1),
            pruning: None,
            sinks_open: false,
            idle_timeout: spec
                .window
                .as_ref()
                .map_or(Duration::MAX, |w| w.idle_timeout.as_std()),
            positions: Positions::new(),
            last_epoch: None,
            last_checkpoint: None,
            last_checkpoint_at: Instant::now(),
            last_progress: HashMap::new(),
            last_idle: Vec::new(),
            summary: RunSummary::default(),
        })
    }

    /// A source stage: each epoch's pre-aggregates go to the repartition topic.
    pub fn sending_to(mut self, topic: Arc<RepartitionTopic>) -> Self {
        self.repartition = Some(topic);
        self
    }

    /// Schema of window rows, when the pipeline has windows.
    pub fn window_schema(&self) -> Option<arrow::datatypes::SchemaRef> {
        self.engine.window_schema()
    }

    /// Runs until the source is exhausted or `stop` turns true; then
    /// checkpoints and returns. Recovers first: restores the newest
    /// checkpoint and replays the epochs planned after it; and again after
    /// every transient failure, for as long as the process runs.
    pub async fn run(
        mut self,
        mut stop: watch::Receiver<bool>,
    ) -> Result<RunSummary, PipelineError> {
        let telemetry = self.telemetry.clone();
        let stage = self.lane.stage;
        retrying(&telemetry, stage, &mut stop, async |stop| {
            self.run_epochs(stop).await
        })
        .await?;
        self.checkpoint().await?;
        self.finish_pruning().await;
        self.summary.last_epoch = self.last_epoch;
        self.summary.watermark = self.engine.watermark();
        Ok(self.summary)
    }

    /// Opens the sinks (if an earlier attempt did not), recovers from the
    /// checkpoint store, then runs epochs until the source is exhausted or
    /// `stop` turns true; ends with the last epoch's commit finished,
    /// whatever happened.
    async fn run_epochs(&mut self, stop: &mut watch::Receiver<bool>) -> Result<(), PipelineError> {
        let ran = self.recover_and_run_epochs(stop).await;
        let committed = self.finish_commit().await;
        ran.and(committed)
    }

    async fn recover_and_run_epochs(
        &mut self,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<(), PipelineError> {
        if !self.sinks_open {
            self.open_sinks().await?;
            self.sinks_open = true;
        }
        self.recover().await?;
        self.telemetry.stage_running(self.lane.stage);
        loop {
            if *stop.borrow() {
                break;
            }
            let started = Instant::now();
            let (ranges, planning) = match self.source.plan(&self.positions).await? {
                Planned::Exhausted => {
                    self.summary.exhausted = true;
                    break;
                }
                Planned::Ranges(ranges) => (ranges, Planning::Written),
                Planned::Reading(ranges) => (ranges, Planning::WhileReading),
            };
            let idle = self.idle_partitions(&ranges);
            let has_data =
                planning == Planning::WhileReading || ranges.iter().any(|r| !r.is_empty());
            if has_data || self.idle_changed(&idle) {
                let epoch = self.last_epoch.map_or(0, |e| e + 1);
                let plan = EpochPlan {
                    epoch,
                    ranges,
                    idle,
                    planned_at: Some(jiff::Timestamp::now().as_millisecond()),
                };
                // Old checkpoints are gone before a new epoch starts, so the
                // store holds at most `retainEpochs` epochs plus the two in flight
                // (one committing, one being processed).
                self.finish_pruning().await;
                let checkpoint = self.last_checkpoint_at.elapsed() >= self.checkpoint_interval;
                if planning == Planning::Written {
                    self.write_plan(&plan).await?;
                }
                self.run_epoch(plan, planning, checkpoint).await?;
            } else if self.last_checkpoint_at.elapsed() >= self.checkpoint_interval {
                // Caught up: checkpoint the epochs read since the last
                // checkpoint (if any), so that the consumer group (and every
                // lag tool) reaches the end within one interval, and a
                // restart has nothing to replay.
                self.checkpoint().await?;
            }
            let wait = self.trigger.saturating_sub(started.elapsed());
            if !wait.is_zero() || !has_data {
                // An empty plan already waited in the source; pause a little anyway.
                let pause = if has_data {
                    wait
                } else {
                    wait.max(Duration::from_millis(50))
                };
                self.pause(pause, stop).await?;
            }
        }
        Ok(())
    }

    /// Waits `pause` between epochs (less if `stop` turns true), recording
    /// the last epoch's commit as soon as it ends: with no next epoch to
    /// wait for it, an idle pipeline would otherwise never report its last
    /// epoch (status, metrics, checkpoint, consumer-group offsets).
    async fn pause(
        &mut self,
        pause: Duration,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<(), PipelineError> {
        let until = tokio::time::Instant::now() + pause;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => return Ok(()),
                _ = stop.changed() => return Ok(()),
                Some((processed, ended)) = commit_ended(&mut self.committing), if self.committing.is_some() => {
                    self.record_commit(processed, ended).await?;
                }
            }
        }
    }

    async fn open_sinks(&mut self) -> Result<(), PipelineError> {
        let window_schema = self.engine.window_schema();
        let Some(outputs) = &mut self.outputs else {
            return Ok(());
        };
        for ConfiguredSink { name, input, sink } in &mut outputs.sinks {
            let schema = match input {
                SinkInput::Windows => window_schema.clone().ok_or_else(|| SinkError::Failed {
                    sink: name.clone(),
                    message: "reads windows but the pipeline has no spec.window".into(),
                })?,
                SinkInput::Events => event_schema(),
            };
            sink.open(schema).await?;
        }
        Ok(())
    }

    /// Restores the newest checkpoint, then replays every epoch planned after
    /// it with exactly its planned ranges, and checkpoints them. Runs at
    /// start and after every transient failure: whatever this process did
    /// since its last checkpoint is forgotten, as after a crash.
    async fn recover(&mut self) -> Result<(), PipelineError> {
        // Idleness is measured from now, as in a new process: an outage is
        // no reason to call every partition idle.
        self.last_progress.clear();
        self.last_idle.clear();
        if let Some(checkpoint) = self.checkpoints.latest_checkpoint().await? {
            tracing::info!(epoch = checkpoint.epoch, "restoring checkpoint");
            if self.engine.role_is_source_stage() && checkpoint.state != WindowState::default() {
                return Err(PipelineError::WindowsBeforeKeyGroups {
                    uri: self.checkpoints.uri(),
                });
            }
            if let Some(written) = checkpoint.replicas
                && written != self.identity.replicas
            {
                return Err(PipelineError::Rescaled {
                    uri: self.checkpoints.uri(),
                    written,
                    now: self.identity.replicas,
                });
            }
            self.positions = checkpoint.positions;
            self.engine
                .restore(checkpoint.state, checkpoint.key_groups, checkpoint.dedup);
            self.last_epoch = Some(checkpoint.epoch);
            self.last_checkpoint = Some(checkpoint.epoch);
            self.set_checkpoint_status(checkpoint.epoch, checkpoint.written_at);
        } else {
            // Resuming after a failure without a checkpoint: start over.
            self.positions.clear();
            self.engine
                .restore(Default::default(), Vec::new(), Vec::new());
            self.last_epoch = None;
            self.last_checkpoint = None;
        }
        let plans = self.checkpoints.plans_after(self.last_epoch).await?;
        let expected = self.last_epoch.map_or(0, |e| e + 1);
        if plans
            .iter()
            .enumerate()
            .any(|(i, p)| p.epoch != expected + i as u64)
        {
            return Err(PipelineError::PlanGap {
                checkpoint: self.last_epoch,
                found: plans.iter().map(|p| p.epoch).collect(),
            });
        }
        for plan in plans {
            tracing::info!(epoch = plan.epoch, "replaying planned epoch");
            self.run_epoch(plan, Planning::Written, false).await?;
            self.summary.replayed_epochs += 1;
        }
        // Only replayed epochs need a checkpoint: the restored one is there
        // already, and writing it again would look like a second runner.
        if self.last_epoch != self.last_checkpoint {
            self.checkpoint().await?;
        } else {
            // A crash may have interrupted the last deletion of old checkpoints.
            self.start_pruning().await;
        }
        Ok(())
    }

    /// Partitions that have read no record with a valid event time for
    /// longer than the idle timeout: none at all, or only malformed ones.
    /// (Filtered and late events are progress: their times count.)
    fn idle_partitions(&mut self, ranges: &[PartitionRange]) -> Vec<PartitionId> {
        let now = Instant::now();
        ranges
            .iter()
            .filter(|range| {
                let last = *self
                    .last_progress
                    .entry(range.partition.clone())
                    .or_insert(now);
                now.duration_since(last) >= self.idle_timeout
            })
            .map(|range| range.partition.clone())
            .collect()
    }

    /// An epoch without data only matters when newly idle partitions let the
    /// watermark move.
    fn idle_changed(&self, idle: &[PartitionId]) -> bool {
        idle != self.last_idle.as_slice()
    }

    /// Processes one planned epoch, then commits its outputs in the
    /// background once the previous epoch's commit has ended (sinks commit
    /// epochs in order). With `checkpoint`, the commit ends with a checkpoint
    /// of the state after this epoch, taken now.
    async fn run_epoch(
        &mut self,
        mut plan: EpochPlan,
        planning: Planning,
        checkpoint: bool,
    ) -> Result<(), PipelineError> {
        let started = Instant::now();
        if planning == Planning::Written {
            self.source.start_epoch(&plan.ranges).await?;
        }
        let mut run = self.engine.begin_epoch(&plan);
        if let Some(feed) = self.source.feed() {
            self.engine.process_feed(&mut run, feed).await?;
        }
        while let Some(chunk) = self.source.next_chunk().await? {
            self.engine.process(&mut run, chunk);
        }
        if planning == Planning::WhileReading {
            plan.ranges = self.source.ranges_read()?;
            self.write_plan(&plan).await?;
        }
        let plan = &plan;
        let output = self.engine.finish_epoch(run, plan)?;
        if let Some(topic) = &self.repartition {
            topic.send(&output.shuffle).await?;
        }
        for range in &plan.ranges {
            self.positions
                .insert(range.partition.clone(), range.end.clone());
        }
        self.last_epoch = Some(plan.epoch);
        self.last_idle.clone_from(&plan.idle);
        let now = Instant::now();
        for partition in &output.progressed {
            self.last_progress.insert(partition.clone(), now);
        }
        let checkpoint = checkpoint.then(|| {
            self.last_checkpoint_at = Instant::now();
            self.snapshot(plan.epoch)
        });
        let figures = self.figures();
        self.finish_commit().await?;
        let outputs = self.outputs.take().ok_or(PipelineError::CommitLost {
            epoch: plan.epoch,
            message: "the sinks were not given back".into(),
        })?;
        let key = EpochKey {
            pipeline: self.identity.pipeline.clone(),
            lane: self.lane,
            epoch: plan.epoch,
            sink: String::new(),
        };
        let store = Arc::clone(&self.checkpoints);
        let task = tokio::spawn(commit(outputs, key, output, checkpoint, store));
        self.committing = Some(Commit {
            processed: Processed {
                epoch: plan.epoch,
                started,
                figures,
            },
            task,
        });
        Ok(())
    }

    /// Writes an epoch's plan ahead of its outputs.
    async fn write_plan(&self, plan: &EpochPlan) -> Result<(), PipelineError> {
        self.checkpoints.put_plan(plan).await?;
        tracing::info!(epoch = plan.epoch, "epoch planned");
        Ok(())
    }

    /// Waits for the background commit of the last epoch, if one runs,
    /// takes the sinks back and records what it did: metrics, status, and
    /// for a checkpoint the source's commit and the pruning of old ones.
    async fn finish_commit(&mut self) -> Result<(), PipelineError> {
        match commit_ended(&mut self.committing).await {
            Some((processed, ended)) => self.record_commit(processed, ended).await,
            None => Ok(()),
        }
    }

    /// Takes the sinks back from an ended commit and records what it did.
    async fn record_commit(
        &mut self,
        processed: Processed,
        ended: Ended,
    ) -> Result<(), PipelineError> {
        let Processed {
            epoch,
            started,
            figures,
        } = processed;
        let returned = ended.map_err(|error| PipelineError::CommitLost {
            epoch,
            message: error.to_string(),
        })?;
        self.outputs = Some(returned.outputs);
        let committed = returned.result?;
        self.record(committed.counts, &figures, started.elapsed());
        tracing::info!(
            epoch,
            records = committed.counts.records,
            windows = committed.counts.windows,
            dead_lettered = committed.counts.dead_lettered(),
            "epoch committed"
        );
        if let Some(checkpoint) = committed.checkpoint {
            self.checkpoint_written(checkpoint).await?;
        }
        Ok(())
    }

    /// The checkpoint of the state after epoch `epoch` (the last processed).
    fn snapshot(&self, epoch: u64) -> Checkpoint {
        Checkpoint {
            epoch,
            positions: self.positions.clone(),
            state: self.engine.snapshot(),
            dedup: self.engine.dedup_snapshot(),
            key_groups: self.engine.key_groups_snapshot(),
            replicas: Some(self.identity.replicas),
            generation: self.identity.generation,
            written_at: jiff::Timestamp::now().to_string(),
        }
    }

    /// Writes the checkpoint of the last epoch, once its commit has ended,
    /// unless that epoch's commit wrote one; then lets the source commit.
    async fn checkpoint(&mut self) -> Result<(), PipelineError> {
        self.finish_commit().await?;
        let Some(epoch) = self.last_epoch else {
            return Ok(());
        };
        if self.last_checkpoint == Some(epoch) {
            return Ok(());
        }
        let started = Instant::now();
        let checkpoint = self.snapshot(epoch);
        self.checkpoints.put_checkpoint(&checkpoint).await?;
        self.checkpoint_written(Written {
            checkpoint,
            took: started.elapsed(),
        })
        .await
    }

    /// After a checkpoint is written: status, the source's commit of its
    /// positions, the pruning of older checkpoints.
    async fn checkpoint_written(&mut self, written: Written) -> Result<(), PipelineError> {
        let Written { checkpoint, took } = written;
        self.telemetry
            .checkpoint_seconds
            .observe(took.as_secs_f64());
        self.last_checkpoint = Some(checkpoint.epoch);
        self.last_checkpoint_at = Instant::now();
        self.set_checkpoint_status(checkpoint.epoch, checkpoint.written_at);
        self.source.commit(&checkpoint.positions).await?;
        tracing::info!(epoch = checkpoint.epoch, "checkpoint written");
        self.start_pruning().await;
        Ok(())
    }

    /// Starts deleting old checkpoints in the background (after the previous
    /// deletion ended); a failure only delays their removal.
    async fn start_pruning(&mut self) {
        self.finish_pruning().await;
        let (store, keep) = (self.checkpoints.clone(), self.retain_epochs);
        self.pruning = Some(tokio::spawn(async move {
            if let Err(error) = store.prune(keep).await {
                tracing::warn!(%error, "cannot delete old checkpoints");
            }
        }));
    }

    /// Waits for the background deletion of old checkpoints, if one runs.
    async fn finish_pruning(&mut self) {
        if let Some(pruning) = self.pruning.take()
            && let Err(error) = pruning.await
        {
            tracing::warn!(%error, "deleting old checkpoints failed");
        }
    }

    fn set_checkpoint_status(&self, epoch: u64, time: String) {
        let uri = self.checkpoints.uri();
        self.telemetry.update_status(|s| {
            s.last_checkpoint = Some(CheckpointStatus {
                epoch: epoch as i64,
                time,
                uri,
            });
        });
    }

    /// The engine's figures after an epoch, for [`Pipeline::record`] once
    /// the epoch is committed (the engine may be processing the next one).
    fn figures(&self) -> EngineFigures {
        EngineFigures {
            remembered_ids: self.engine.remembered_ids(),
            computes_windows: self.engine.computes_windows(),
            watermark: self.engine.watermark(),
            open_entries: self.engine.open_entries(),
        }
    }

    /// Updates metrics and status after an epoch's commit.
    fn record(&mut self, counts: EpochCounts, figures: &EngineFigures, took: Duration) {
        let t = &self.telemetry;
        t.epochs.inc();
        t.epoch_seconds.observe(took.as_secs_f64());
        t.events_processed.inc_by(counts.records);
        t.late_events.inc_by(counts.late);
        t.late_windows.inc_by(counts.late_windows);
        t.filtered_events.inc_by(counts.filtered);
        t.dedup_dropped.inc_by(counts.duplicates);
        t.dedup_remembered_ids.set(figures.remembered_ids as i64);
        t.windows_emitted.inc_by(counts.windows);
        for (reason, n) in [
            ("malformed", counts.malformed),
            ("transform", counts.transform_failed),
            ("late", counts.late),
            ("refused", counts.refused),
        ] {
            if n > 0 {
                t.dead_lettered.with_label_values(&[reason]).inc_by(n);
            }
        }
        // With key groups, the source stage reports what it reads and the
        // key-group stage the windows: neither overwrites the other's figures.
        let reads_source = self.lane.stage == Stage::Source;
        let EngineFigures {
            computes_windows,
            watermark,
            open_entries,
            ..
        } = *figures;
        if computes_windows {
            t.open_window_entries.set(open_entries as i64);
            if let Some(watermark) = watermark {
                let now = jiff::Timestamp::now().as_millisecond();
                t.watermark_lag_seconds
                    .set((now - watermark) as f64 / 1000.0);
            }
        }
        let backlog = if reads_source {
            self.source.backlog()
        } else {
            None
        };
        if let Some(backlog) = &backlog {
            for b in backlog {
                let labels = [
                    b.partition.stream.as_str(),
                    &b.partition.partition.to_string(),
                ];
                t.consumer_lag.with_label_values(&labels).set(b.records);
                t.consumer_lag_seconds
                    .with_label_values(&labels)
                    .set(b.seconds);
            }
        }
        self.summary.counts += counts;
        let per_second = |n: u64| n as f64 / took.as_secs_f64().max(1e-9);
        let last_epoch = self.last_epoch;
        let summary = self.summary.counts;
        t.update_status(|s| {
            if computes_windows {
                s.watermark = watermark.map(rfc3339);
                s.windows_emitted_total = summary.windows;
            }
            if !reads_source {
                return;
            }
            s.committed_epoch = last_epoch.map(|e| e as i64);
            s.events_per_second = per_second(counts.records);
            s.dead_letter_per_second = per_second(counts.dead_lettered());
            s.duplicates_per_second = per_second(counts.duplicates);
            s.events_total = summary.records;
            s.dead_letter_total = summary.dead_lettered();
            s.duplicates_total = summary.duplicates;
            s.partitions = backlog
                .unwrap_or_default()
                .into_iter()
                .map(|b| PartitionLag {
                    topic: b.partition.stream,
                    partition: b.partition.partition,
                    records: b.records,
                    seconds: b.seconds,
                })
                .collect();
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pipeline over 1,000 generated events, checkpointing under `dir`.
    fn pipeline(dir: &std::path::Path) -> Pipeline {
        let spec: StreamPipelineSpec = serde_yaml::from_str(&format!(
            r#"
source:
  generator: {{totalEvents: 1000, eventsPerSecond: 0, startTime: "2026-11-24T10:00:00Z"}}
sinks: []
checkpoint: {{uri: "{}"}}
"#,
            dir.display()
        ))
        .unwrap();
        let identity = RunnerIdentity {
            pipeline: "uid".into(),
            replica: 0,
            replicas: 1,
            repartition_topic: "sluice-test-keygroups".into(),
            generation: 0,
        };
        let telemetry = Arc::new(Telemetry::new(0, 1).unwrap());
        Pipeline::from_spec(&spec, identity, telemetry).unwrap()
    }

    #[tokio::test]
    async fn recovering_again_in_one_process_replays_and_checkpoints_an_epoch_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut pipeline = pipeline(dir.path());
        pipeline.recover().await.unwrap();
        // An epoch is planned, then an outage interrupts it.
        let Planned::Ranges(ranges) = pipeline.source.plan(&pipeline.positions).await.unwrap()
        else {
            panic!("the generator has events")
        };
        let plan = EpochPlan {
            epoch: 0,
            ranges,
            idle: Vec::new(),
            planned_at: None,
        };
        pipeline.checkpoints.put_plan(&plan).await.unwrap();
        // The first recovery replays and checkpoints it; later ones (more
        // outages) restore that checkpoint without writing it again.
        for _ in 0..3 {
            pipeline.recover().await.unwrap();
        }
        assert_eq!(pipeline.summary.replayed_epochs, 1);
        assert_eq!(pipeline.last_checkpoint, Some(0));
        pipeline.finish_pruning().await;
        let latest = pipeline.checkpoints.latest_checkpoint().await.unwrap();
        assert_eq!(latest.map(|c| c.epoch), Some(0));
    }
}
