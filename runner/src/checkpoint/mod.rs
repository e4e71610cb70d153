//! The checkpoint store: the write-ahead log of epoch plans and the
//! checkpoints (end positions, watermark, window state, ids remembered by
//! dedup transforms) of completed epochs.
//!
//! Layout under the checkpoint URI, one lineage per [`Lane`]:
//! `<lane>/plans/<epoch>.json` and `<lane>/checkpoints/<epoch>.json`, where
//! `<lane>` is `replica-<r>` (a replica's source stage, or its whole pipeline)
//! or `keygroups-replica-<r>` (its key-group stage), epochs zero-padded to 20
//! digits so that names sort by epoch. Every object is written once
//! (`PutMode::Create`): a second runner that believes it owns the same replica
//! fails on its first plan instead of corrupting the lineage. Finding an
//! object with exactly the bytes being written is not a conflict: it is the
//! same put, sent again by the store client after its answer was lost.

use std::sync::Arc;

use async_trait::async_trait;
use futures::TryStreamExt;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, path::Path};
use serde::{Deserialize, Serialize};

use crate::{
    shuffle::KeyGroupsState,
    source::{PartitionId, PartitionRange, Positions},
    transform::DedupState,
    window::WindowState,
};

/// Which of a replica's stages an epoch sequence belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stage {
    /// The source stage, or the whole pipeline when the replica computes
    /// its windows itself.
    Source,
    /// The key-group stage.
    KeyGroups,
}

/// Whose epoch sequence: one stage of one replica in one *generation* (the
/// replicas started together with one `spec.parallelism`; a rescale starts
/// the next generation from the previous one's checkpoints). Each lane has
/// its own plans, checkpoints, dead-letter objects and sink writer ids.
/// Its checkpoint *lineage* (a new one after `upgradePolicy: reset`) is the
/// folder the checkpoint URI already names; it goes into writer ids, so that
/// a new lineage's epochs, counted from 0 again, never meet an old one's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Lane {
    pub stage: Stage,
    pub replica: u32,
    pub generation: u64,
    pub lineage: u64,
}

impl Lane {
    /// The source stage (or whole pipeline) of `replica`, first generation.
    pub fn replica(replica: u32) -> Self {
        Self {
            stage: Stage::Source,
            replica,
            generation: 0,
            lineage: 0,
        }
    }

    /// The folder of its plans, checkpoints and dead-letter objects. The
    /// first generation's lanes sit at the top, as before generations existed.
    pub fn folder(&self) -> String {
        let lane = match self.stage {
            Stage::Source => format!("replica-{}", self.replica),
            Stage::KeyGroups => format!("keygroups-replica-{}", self.replica),
        };
        match self.generation {
            0 => lane,
            generation => format!("{GENERATION_PREFIX}{generation}/{lane}"),
        }
    }

    /// Its part of sink writer ids; a first-lineage, first-generation
    /// replica's is its bare index, as in the writes of earlier versions.
    pub fn writer(&self) -> String {
        let mut writer = match self.stage {
            Stage::Source => self.replica.to_string(),
            Stage::KeyGroups => format!("keygroups-{}", self.replica),
        };
        if self.generation > 0 {
            writer = format!("g{}-{writer}", self.generation);
        }
        if self.lineage > 0 {
            writer = format!("l{}-{writer}", self.lineage);
        }
        writer
    }
}

/// Folders of the generations after the first: `generation-<g>/`.
pub const GENERATION_PREFIX: &str = "generation-";

/// The lineage a checkpoint URI names: the controller gives runners
/// `<spec.checkpoint.uri>/lineage-<n>`; any other URI (a local run) is lineage 0.
pub fn lineage_of(uri: &str) -> u64 {
    uri.trim_end_matches('/')
        .rsplit('/')
        .next()
        .and_then(|folder| folder.strip_prefix("lineage-"))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

impl std::fmt::Display for Lane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.stage {
            Stage::Source => write!(f, "replica {}", self.replica)?,
            Stage::KeyGroups => write!(f, "the key-group stage of replica {}", self.replica)?,
        }
        if self.generation > 0 {
            write!(f, " (generation {})", self.generation)?;
        }
        Ok(())
    }
}

/// The write-ahead record of one epoch: exactly what it reads.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EpochPlan {
    pub epoch: u64,
    pub ranges: Vec<PartitionRange>,
    /// Partitions idle for longer than the idle timeout when the epoch was
    /// planned: they do not hold the watermark back at the end of this epoch.
    /// Decided at planning time so that a replay computes the same watermark.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub idle: Vec<PartitionId>,
    /// The runner's clock when the epoch was planned (milliseconds since the
    /// Unix epoch): event times further ahead than `maxEventTimeAhead` are
    /// malformed, decided by this clock so that a replay decides the same.
    /// Absent in plans written before it existed (then no bound applies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub planned_at: Option<i64>,
}

/// The durable state after an epoch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Checkpoint {
    pub epoch: u64,
    /// Where the next epoch starts, per partition.
    #[serde(with = "crate::source::positions_as_list")]
    pub positions: Positions,
    /// Watermark, per-partition event-time maxima and open windows.
    pub state: WindowState,
    /// Ids remembered by each dedup transform, in transform order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dedup: Vec<DedupState>,
    /// The key-group stage's key groups (windows, watermark inputs and what
    /// each has applied from every source partition).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub key_groups: KeyGroupsState,
    /// How many replicas the pipeline ran with: partitions and key groups
    /// are shared out by it. Absent in checkpoints written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u32>,
    /// The generation of the lane it belongs to (see [`Lane`]).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub generation: u64,
    /// Wall-clock time it was written (RFC 3339).
    pub written_at: String,
}

fn is_zero(value: &u64) -> bool {
    *value == 0
}

/// Why the checkpoint store failed.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint store {uri}: {error}")]
    Store {
        uri: String,
        error: object_store::Error,
    },
    #[error(
        "checkpoint store {uri}: {object} already exists; is another runner working as {lane}?"
    )]
    Conflict {
        uri: String,
        object: String,
        lane: Lane,
    },
    #[error("checkpoint store {uri}: {object} is not a valid checkpoint object: {error}")]
    Corrupt {
        uri: String,
        object: String,
        error: serde_json::Error,
    },
    #[error(transparent)]
    Storage(#[from] crate::storage::StorageError),
}

impl CheckpointError {
    /// The store being unreachable or failing for now (see
    /// [`crate::storage::is_transient`]); never a conflict with another
    /// runner or an unreadable checkpoint.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Store { error, .. } if crate::storage::is_transient(error))
    }
}

/// Durable epoch plans and checkpoints of one replica.
#[async_trait]
pub trait CheckpointStore: Send + Sync {
    /// Where the checkpoints live, for status and logs.
    fn uri(&self) -> String;

    /// Writes an epoch's plan; fails with [`CheckpointError::Conflict`] if
    /// another one exists for that epoch.
    async fn put_plan(&self, plan: &EpochPlan) -> Result<(), CheckpointError>;

    /// Plans of epochs after `epoch` (all plans for `None`), in epoch order.
    async fn plans_after(&self, epoch: Option<u64>) -> Result<Vec<EpochPlan>, CheckpointError>;

    /// Writes a checkpoint; fails with [`CheckpointError::Conflict`] if
    /// another one exists for that epoch.
    async fn put_checkpoint(&self, checkpoint: &Checkpoint) -> Result<(), CheckpointError>;

    /// The newest checkpoint, if any.
    async fn latest_checkpoint(&self) -> Result<Option<Checkpoint>, CheckpointError>;

    /// Deletes all but the newest `keep` checkpoints, and the plans of epochs
    /// up to the oldest checkpoint kept (recovery needs only the newest
    /// checkpoint and the plans after it). Returns the objects deleted.
    async fn prune(&self, keep: usize) -> Result<usize, CheckpointError>;
}

/// [`CheckpointStore`] on any `object_store` backend.
pub struct ObjectStoreCheckpoints {
    store: Arc<dyn ObjectStore>,
    uri: String,
    lane: Lane,
}

const PLANS: &str = "plans";
const CHECKPOINTS: &str = "checkpoints";

impl ObjectStoreCheckpoints {
    /// Checkpoints of `lane` under `uri` (see [`crate::storage::store_for`]).
    pub fn open(uri: &str, lane: Lane) -> Result<Self, CheckpointError> {
        Ok(Self::new(crate::storage::store_for(uri)?, uri, lane))
    }

    pub fn new(store: Arc<dyn ObjectStore>, uri: &str, lane: Lane) -> Self {
        Self {
            store,
            uri: uri.to_owned(),
            lane,
        }
    }

    fn folder(&self, kind: &str) -> Path {
        Path::from(format!("{}/{kind}", self.lane.folder()))
    }

    fn object(&self, kind: &str, epoch: u64) -> Path {
        self.folder(kind).join(format!("{epoch:020}.json"))
    }

    fn store_error(&self, error: object_store::Error) -> CheckpointError {
        CheckpointError::Store {
            uri: self.uri.clone(),
            error,
        }
    }

    async fn put_once<T: Serialize + Sync>(
        &self,
        kind: &str,
        epoch: u64,
        value: &T,
    ) -> Result<(), CheckpointError> {
        let object = self.object(kind, epoch);
        let bytes = serde_json::to_vec(value).map_err(|error| CheckpointError::Corrupt {
            uri: self.uri.clone(),
            object: object.to_string(),
            error,
        })?;
        let options = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        match self
            .store
            .put_opts(&object, bytes.clone().into(), options)
            .await
        {
            Ok(_) => Ok(()),
            // A put whose answer was lost (a dropped connection) and that was
            // sent again finds its own object: exactly these bytes.
            Err(object_store::Error::AlreadyExists { .. })
                if self.stored_bytes(&object).await? == bytes =>
            {
                Ok(())
            }
            Err(object_store::Error::AlreadyExists { .. }) => Err(CheckpointError::Conflict {
                uri: self.uri.clone(),
                object: object.to_string(),
                lane: self.lane,
            }),
            Err(error) => Err(self.store_error(error)),
        }
    }

    async fn stored_bytes(&self, object: &Path) -> Result<bytes::Bytes, CheckpointError> {
        self.store
            .get(object)
            .await
            .map_err(|e| self.store_error(e))?
            .bytes()
            .await
            .map_err(|e| self.store_error(e))
    }

    /// Epoch numbers present in a folder, ascending.
    async fn epochs(&self, kind: &str) -> Result<Vec<u64>, CheckpointError> {
        let folder = self.folder(kind);
        let objects: Vec<_> = self
            .store
            .list(Some(&folder))
            .try_collect()
            .await
            .map_err(|e| self.store_error(e))?;
        let mut epochs: Vec<u64> = objects
            .iter()
            .filter_map(|meta| {
                meta.location
                    .filename()?
                    .strip_suffix(".json")?
                    .parse()
                    .ok()
            })
            .collect();
        epochs.sort_unstable();
        Ok(epochs)
    }

    async fn read<T: for<'de> Deserialize<'de>>(
        &self,
        kind: &str,
        epoch: u64,
    ) -> Result<T, CheckpointError> {
        let object = self.object(kind, epoch);
        let bytes = self.stored_bytes(&object).await?;
        serde_json::from_slice(&bytes).map_err(|error| CheckpointError::Corrupt {
            uri: self.uri.clone(),
            object: object.to_string(),
            error,
        })
    }
}

/// What one lane holds: its newest checkpoint and the epochs it planned after it.
#[derive(Clone, Debug)]
pub struct LaneState {
    pub lane: Lane,
    pub latest: Option<Checkpoint>,
    pub unfinished: Vec<u64>,
}

impl ObjectStoreCheckpoints {
    /// The generations that have lanes under the store's root, oldest first.
    pub async fn generations(
        store: &Arc<dyn ObjectStore>,
        uri: &str,
    ) -> Result<Vec<u64>, CheckpointError> {
        let folders = Self::folders(store, uri, None).await?;
        let mut generations: Vec<u64> = folders
            .iter()
            .filter_map(|name| name.strip_prefix(GENERATION_PREFIX)?.parse().ok())
            .collect();
        if folders.iter().any(|name| lane_of(name, 0).is_some()) {
            generations.push(0);
        }
        generations.sort_unstable();
        Ok(generations)
    }

    /// Every lane of `generation`, with its newest checkpoint and unfinished plans.
    pub async fn lanes(
        store: &Arc<dyn ObjectStore>,
        uri: &str,
        generation: u64,
    ) -> Result<Vec<LaneState>, CheckpointError> {
        let mut lanes = Vec::new();
        for lane in Self::lane_names(store, uri, generation).await? {
            let checkpoints = Self::new(store.clone(), uri, lane);
            let latest = checkpoints.latest_checkpoint().await?;
            let unfinished = checkpoints
                .plans_after(latest.as_ref().map(|c| c.epoch))
                .await?
                .into_iter()
                .map(|plan| plan.epoch)
                .collect();
            lanes.push(LaneState {
                lane,
                latest,
                unfinished,
            });
        }
        Ok(lanes)
    }

    /// The lanes of `generation` that have a folder (listing only, no reads).
    pub async fn lane_names(
        store: &Arc<dyn ObjectStore>,
        uri: &str,
        generation: u64,
    ) -> Result<Vec<Lane>, CheckpointError> {
        let prefix =
            (generation > 0).then(|| Path::from(format!("{GENERATION_PREFIX}{generation}")));
        Ok(Self::folders(store, uri, prefix.as_ref())
            .await?
            .iter()
            .filter_map(|name| lane_of(name, generation))
            .collect())
    }

    /// Names of the folders directly under `prefix` (the root for `None`).
    async fn folders(
        store: &Arc<dyn ObjectStore>,
        uri: &str,
        prefix: Option<&Path>,
    ) -> Result<Vec<String>, CheckpointError> {
        let listing =
            store
                .list_with_delimiter(prefix)
                .await
                .map_err(|error| CheckpointError::Store {
                    uri: uri.to_owned(),
                    error,
                })?;
        Ok(listing
            .common_prefixes
            .iter()
            .filter_map(|path| path.filename().map(str::to_owned))
            .collect())
    }
}

/// The lane a folder name denotes (`replica-<r>`, `keygroups-replica-<r>`).
fn lane_of(name: &str, generation: u64) -> Option<Lane> {
    let (stage, replica) = match name.strip_prefix("keygroups-replica-") {
        Some(replica) => (Stage::KeyGroups, replica),
        None => (Stage::Source, name.strip_prefix("replica-")?),
    };
    Some(Lane {
        stage,
        replica: replica.parse().ok()?,
        generation,
        lineage: 0,
    })
}

#[async_trait]
impl CheckpointStore for ObjectStoreCheckpoints {
    fn uri(&self) -> String {
        format!("{}/{}", self.uri.trim_end_matches('/'), self.lane.folder())
    }

    async fn put_plan(&self, plan: &EpochPlan) -> Result<(), CheckpointError> {
        self.put_once(PLANS, plan.epoch, plan).await
    }

    async fn plans_after(&self, epoch: Option<u64>) -> Result<Vec<EpochPlan>, CheckpointError> {
        let mut plans = Vec::new();
        for planned in self.epochs(PLANS).await? {
            if epoch.is_none_or(|epoch| planned > epoch) {
                plans.push(self.read(PLANS, planned).await?);
            }
        }
        Ok(plans)
    }

    async fn put_checkpoint(&self, checkpoint: &Checkpoint) -> Result<(), CheckpointError> {
        self.put_once(CHECKPOINTS, checkpoint.epoch, checkpoint)
            .await
    }

    async fn latest_checkpoint(&self) -> Result<Option<Checkpoint>, CheckpointError> {
        match self.epochs(CHECKPOINTS).await?.last() {
            Some(&epoch) => Ok(Some(self.read(CHECKPOINTS, epoch).await?)),
            None => Ok(None),
        }
    }

    async fn prune(&self, keep: usize) -> Result<usize, CheckpointError> {
        let checkpoints = self.epochs(CHECKPOINTS).await?;
        let Some(&oldest_kept) = checkpoints.get(checkpoints.len().saturating_sub(keep.max(1)))
        else {
            return Ok(0);
        };
        let mut doomed: Vec<Path> = checkpoints
            .iter()
            .filter(|&&epoch| epoch < oldest_kept)
            .map(|&epoch| self.object(CHECKPOINTS, epoch))
            .collect();
        doomed.extend(
            self.epochs(PLANS)
                .await?
                .into_iter()
                .filter(|&epoch| epoch <= oldest_kept)
                .map(|epoch| self.object(PLANS, epoch)),
        );
        for object in &doomed {
            match self.store.delete(object).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(error) => return Err(self.store_error(error)),
            }
        }
        Ok(doomed.len())
    }
}

#[cfg(test)]
mod tests {
    use futures::stream::BoxStream;
    use object_store::{
        CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta,
        PutMultipartOptions, PutPayload, PutResult, memory::InMemory,
    };

    use super::*;

    /// A store whose client sends every put twice, as an S3 client does
    /// when the answer to the first is lost with its connection: the first
    /// lands, the second answers.
    #[derive(Debug, Default)]
    struct AnswerLost(InMemory);

    impl std::fmt::Display for AnswerLost {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "AnswerLost({})", self.0)
        }
    }

    #[async_trait]
    impl ObjectStore for AnswerLost {
        async fn put_opts(
            &self,
            location: &Path,
            payload: PutPayload,
            opts: PutOptions,
        ) -> object_store::Result<PutResult> {
            let _lost = self
                .0
                .put_opts(location, payload.clone(), opts.clone())
                .await;
            self.0.put_opts(location, payload, opts).await
        }

        async fn put_multipart_opts(
            &self,
            location: &Path,
            opts: PutMultipartOptions,
        ) -> object_store::Result<Box<dyn MultipartUpload>> {
            self.0.put_multipart_opts(location, opts).await
        }

        async fn get_opts(
            &self,
            location: &Path,
            options: GetOptions,
        ) -> object_store::Result<GetResult> {
            self.0.get_opts(location, options).await
        }

        fn delete_stream(
            &self,
            locations: BoxStream<'static, object_store::Result<Path>>,
        ) -> BoxStream<'static, object_store::Result<Path>> {
            self.0.delete_stream(locations)
        }

        fn list(
            &self,
            prefix: Option<&Path>,
        ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
            self.0.list(prefix)
        }

        async fn list_with_delimiter(
            &self,
            prefix: Option<&Path>,
        ) -> object_store::Result<ListResult> {
            self.0.list_with_delimiter(prefix).await
        }

        async fn copy_opts(
            &self,
            from: &Path,
            to: &Path,
            options: CopyOptions,
        ) -> object_store::Result<()> {
            self.0.copy_opts(from, to, options).await
        }
    }

    fn plan(epoch: u64, planned_at: i64) -> EpochPlan {
        EpochPlan {
            epoch,
            ranges: Vec::new(),
            idle: Vec::new(),
            planned_at: Some(planned_at),
        }
    }

    fn checkpoint(epoch: u64) -> Checkpoint {
        Checkpoint {
            epoch,
            positions: Positions::new(),
            state: WindowState::default(),
            dedup: Vec::new(),
            key_groups: Vec::new(),
            replicas: Some(1),
            generation: 0,
            written_at: "2026-12-01T10:00:00Z".into(),
        }
    }

    /// The checkpoints of `replica` in `store`.
    fn lane_in(store: impl ObjectStore, replica: u32) -> ObjectStoreCheckpoints {
        ObjectStoreCheckpoints::new(Arc::new(store), "s3://checkpoints", Lane::replica(replica))
    }

    #[tokio::test]
    async fn a_put_sent_again_after_its_answer_was_lost_finds_itself_and_succeeds() {
        let store = lane_in(AnswerLost::default(), 0);
        store.put_plan(&plan(0, 1)).await.unwrap();
        store.put_checkpoint(&checkpoint(0)).await.unwrap();
        assert_eq!(store.plans_after(None).await.unwrap(), vec![plan(0, 1)]);
        assert_eq!(
            store.latest_checkpoint().await.unwrap(),
            Some(checkpoint(0))
        );
    }

    #[tokio::test]
    async fn another_object_for_the_same_epoch_is_a_conflict_never_transient() {
        let store = lane_in(InMemory::new(), 3);
        store.put_plan(&plan(7, 1)).await.unwrap();
        let error = store.put_plan(&plan(7, 2)).await.unwrap_err();
        assert!(matches!(error, CheckpointError::Conflict { .. }), "{error}");
        assert!(!error.is_transient());
        assert!(
            error
                .to_string()
                .contains("another runner working as replica 3"),
            "{error}"
        );
    }

    #[test]
    fn an_unreachable_store_is_transient() {
        let unreachable = CheckpointError::Store {
            uri: "s3://checkpoints".into(),
            error: object_store::Error::Generic {
                store: "S3",
                source: "error sending request: connection refused".into(),
            },
        };
        assert!(unreachable.is_transient());
    }

    #[test]
    fn writer_ids_name_lineage_generation_and_stage_and_keep_the_first_ones_bare() {
        let lane = |stage, generation, lineage| Lane {
            stage,
            replica: 2,
            generation,
            lineage,
        };
        assert_eq!(lane(Stage::Source, 0, 0).writer(), "2");
        assert_eq!(lane(Stage::KeyGroups, 0, 0).writer(), "keygroups-2");
        assert_eq!(lane(Stage::Source, 3, 0).writer(), "g3-2");
        assert_eq!(lane(Stage::KeyGroups, 3, 1).writer(), "l1-g3-keygroups-2");
        assert_eq!(lane(Stage::Source, 3, 1).folder(), "generation-3/replica-2");
        assert_eq!(lineage_of("s3://bucket/checkpoints/orders/lineage-4"), 4);
        assert_eq!(lineage_of("/tmp/checkpoints/lineage-1/"), 1);
        assert_eq!(lineage_of("/tmp/checkpoints"), 0);
    }
}
