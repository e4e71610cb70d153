//! Rescaling without a reset. The replicas started with one
//! `spec.parallelism` form a *generation*; when a runner finds that the
//! newest generation in the checkpoint store ran with another replica count
//! (the controller has drained it: every runner finished its epoch and
//! checkpointed), it starts the next generation: it gathers, from the old
//! generation's newest checkpoints, the positions (and dedup memory) of the
//! source partitions it now owns and the key groups it now owns, and writes
//! them as the first checkpoints of its own lanes. Nothing is re-read and
//! nothing is skipped; sink writer ids carry the generation, so the new
//! lanes' epoch numbers never meet the old ones'.

use std::{collections::BTreeMap, sync::Arc};

use object_store::ObjectStore;

use super::{PipelineError, RunnerIdentity};
use crate::{
    checkpoint::{
        Checkpoint, CheckpointError, CheckpointStore, Lane, LaneState, ObjectStoreCheckpoints,
        Stage,
    },
    shuffle::{KeyGroupState, key_group},
    source::{PartitionId, Positions},
    transform::DedupState,
    window::WindowState,
};

/// Where this runner's lanes stand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Takeover {
    /// The generation its lanes belong to.
    pub generation: u64,
    /// Whether windows are computed in key groups (the pipeline could use
    /// them, and runs on several replicas or has key-group state already).
    pub key_groups: bool,
}

/// Finds this runner's generation, starting the next one from the previous
/// one's checkpoints when the replica count changed. `uses_key_groups`: the
/// pipeline reads Kafka into windows.
pub async fn take_over(
    store: Arc<dyn ObjectStore>,
    uri: &str,
    identity: &RunnerIdentity,
    uses_key_groups: bool,
    key_groups: u32,
) -> Result<Takeover, PipelineError> {
    let generations = ObjectStoreCheckpoints::generations(&store, uri).await?;
    let Some(&newest) = generations.last() else {
        return Ok(Takeover {
            generation: 0,
            key_groups: uses_key_groups && identity.replicas > 1,
        });
    };
    // An ordinary restart: this runner's own lane says the count is the same,
    // so no other lane's checkpoint (window state included) need be read.
    let own = Lane {
        generation: newest,
        ..Lane::replica(identity.replica)
    };
    let own_latest = ObjectStoreCheckpoints::new(store.clone(), uri, own)
        .latest_checkpoint()
        .await?;
    if own_latest.is_some_and(|c| c.replicas == Some(identity.replicas)) {
        let names = ObjectStoreCheckpoints::lane_names(&store, uri, newest).await?;
        return Ok(Takeover {
            generation: newest,
            key_groups: uses_key_groups && (identity.replicas > 1 || has_key_groups(names)),
        });
    }
    let lanes = ObjectStoreCheckpoints::lanes(&store, uri, newest).await?;
    // Checkpoints from before replica counts were recorded: the replicas
    // that checkpointed tell it.
    let written = lanes
        .iter()
        .find_map(|lane| lane.latest.as_ref()?.replicas)
        .or_else(|| {
            lanes
                .iter()
                .filter(|l| l.lane.stage == Stage::Source && l.latest.is_some())
                .map(|l| l.lane.replica + 1)
                .max()
        });
    let (generation, previous) = match written {
        // No checkpoint yet.
        None => (newest, None),
        Some(replicas) if replicas == identity.replicas => {
            let mine = lanes
                .iter()
                .any(|l| l.lane.replica == identity.replica && l.latest.is_some());
            if mine || newest == 0 {
                (newest, None)
            } else {
                // A sibling started this generation; this runner joins it.
                (newest, Some(newest - 1))
            }
        }
        Some(_) => (newest + 1, Some(newest)),
    };
    let Some(previous) = previous else {
        return Ok(Takeover {
            generation,
            key_groups: uses_key_groups
                && (identity.replicas > 1 || has_key_groups(lanes.iter().map(|l| l.lane))),
        });
    };
    let old = if previous == newest {
        lanes
    } else {
        ObjectStoreCheckpoints::lanes(&store, uri, previous).await?
    };
    // Once windows live in key groups they stay there (at one replica too):
    // the repartition topic may still hold partials the old set sent.
    let takeover = Takeover {
        generation,
        key_groups: uses_key_groups
            && (identity.replicas > 1 || has_key_groups(old.iter().map(|l| l.lane))),
    };
    let slices = Slices::gather(&old, identity, takeover, key_groups)?;
    tracing::info!(
        generation,
        previous,
        partitions = slices.source.positions.len(),
        key_groups = slices.key_groups.as_ref().map_or(0, |c| c.key_groups.len()),
        "taking over the previous generation's partitions and key groups"
    );
    let lane = |stage| Lane {
        stage,
        replica: identity.replica,
        generation,
        lineage: crate::checkpoint::lineage_of(uri),
    };
    write_once(&store, uri, lane(Stage::Source), &slices.source).await?;
    if let Some(key_groups) = &slices.key_groups {
        write_once(&store, uri, lane(Stage::KeyGroups), key_groups).await?;
    }
    Ok(takeover)
}

/// Whether key groups already exist among `lanes`.
fn has_key_groups(lanes: impl IntoIterator<Item = Lane>) -> bool {
    lanes.into_iter().any(|lane| lane.stage == Stage::KeyGroups)
}

/// Writes a lane's first checkpoint; one already there is this runner's own
/// earlier attempt (the old generation does not change, so it is the same).
async fn write_once(
    store: &Arc<dyn ObjectStore>,
    uri: &str,
    lane: Lane,
    checkpoint: &Checkpoint,
) -> Result<(), PipelineError> {
    match ObjectStoreCheckpoints::new(store.clone(), uri, lane)
        .put_checkpoint(checkpoint)
        .await
    {
        Ok(()) | Err(CheckpointError::Conflict { .. }) => Ok(()),
        Err(error) => Err(error.into()),
    }
}

/// This runner's share of the old generation, as its lanes' first checkpoints.
struct Slices {
    source: Checkpoint,
    key_groups: Option<Checkpoint>,
}

impl Slices {
    fn gather(
        old: &[LaneState],
        identity: &RunnerIdentity,
        takeover: Takeover,
        key_groups: u32,
    ) -> Result<Self, PipelineError> {
        if let Some(lane) = old.iter().find(|l| !l.unfinished.is_empty()) {
            return Err(PipelineError::UnfinishedLane {
                lane: lane.lane.to_string(),
                epochs: lane.unfinished.clone(),
            });
        }
        let replicas = identity.replicas.max(1);
        let mine = |partition: &PartitionId| {
            u32::try_from(partition.partition).unwrap_or(0) % replicas == identity.replica
        };
        let checkpoints = |stage: Stage| {
            old.iter()
                .filter(move |l| l.lane.stage == stage)
                .filter_map(|l| l.latest.as_ref())
        };
        let mut positions = Positions::new();
        let mut read_so_far = Vec::new();
        let mut dedup: Vec<Vec<DedupState>> = Vec::new();
        let mut windows: Vec<WindowState> = Vec::new();
        for checkpoint in checkpoints(Stage::Source) {
            for (partition, position) in &checkpoint.positions {
                read_so_far.push((partition.clone(), position.clone()));
                if mine(partition) {
                    positions.insert(partition.clone(), position.clone());
                }
            }
            for (i, state) in checkpoint.dedup.iter().enumerate() {
                if dedup.len() <= i {
                    dedup.resize_with(i + 1, Vec::new);
                }
                dedup[i].push(state.clone());
            }
            if checkpoint.state != WindowState::default() {
                windows.push(checkpoint.state.clone());
            }
        }
        if windows.len() > 1 {
            return Err(PipelineError::Unmergeable {
                lanes: windows.len(),
            });
        }
        let computed_here = windows.pop();
        let first = |key_groups: Vec<KeyGroupState>, positions: Positions| Checkpoint {
            epoch: 0,
            positions,
            state: WindowState::default(),
            dedup: Vec::new(),
            key_groups,
            replicas: Some(replicas),
            generation: takeover.generation,
            written_at: jiff::Timestamp::now().to_string(),
        };
        let mut source = first(Vec::new(), positions);
        source.dedup = dedup.into_iter().filter_map(DedupState::union).collect();
        if !takeover.key_groups {
            // One replica (or a source read by replica 0 alone) computes the
            // windows: they go with the replica that reads what fed them.
            if identity.replica == 0 {
                source.state = computed_here.unwrap_or_default();
            }
            return Ok(Self {
                source,
                key_groups: None,
            });
        }
        let owned = |group: u32| group % replicas == identity.replica;
        let mut groups: BTreeMap<u32, KeyGroupState> = BTreeMap::new();
        let mut topic_positions = Positions::new();
        for checkpoint in checkpoints(Stage::KeyGroups) {
            for state in &checkpoint.key_groups {
                if owned(state.group) {
                    groups.insert(state.group, state.clone());
                }
            }
            for (partition, position) in &checkpoint.positions {
                if owned(u32::try_from(partition.partition).unwrap_or(0)) {
                    topic_positions.insert(partition.clone(), position.clone());
                }
            }
        }
        if let Some(state) = computed_here {
            // From one runner's windows to key groups: split them by key.
            for (group, part) in state.split(|key| key_group(key.as_bytes(), key_groups)) {
                if owned(group) {
                    groups.insert(
                        group,
                        KeyGroupState::from_windows(group, part, read_so_far.clone()),
                    );
                }
            }
        }
        Ok(Self {
            source,
            key_groups: Some(first(groups.into_values().collect(), topic_positions)),
        })
    }
}
