//! Planning an epoch: which partitions this replica owns, where each one
//! starts, and how the epoch's record and byte budget is shared between them.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::{Duration, Instant},
};

use rdkafka::{Offset, TopicPartitionList, consumer::Consumer, error::KafkaError as RdKafkaError};
use sluice_crds::StartingOffsets;

use super::{KIND, KafkaSource, REQUEST_TIMEOUT};
use crate::{
    kafka::{KafkaError, Target, blocking},
    source::{
        Backlog, PartitionId, PartitionRange, Planned, Position, Positions, SourceError,
        budget::EpochBudget,
    },
};

/// How often partition counts are re-read.
const METADATA_REFRESH: Duration = Duration::from_secs(10);
/// How long `plan` waits before re-checking a topic that had no new records.
const IDLE_WAIT: Duration = Duration::from_millis(200);

impl KafkaSource {
    /// The next epoch's range for every owned partition, from `committed`.
    pub(super) async fn plan_ranges(
        &mut self,
        committed: &Positions,
    ) -> Result<Planned, SourceError> {
        let first_plan = self.metadata_read_at.is_none();
        self.refresh_partitions(first_plan).await?;
        let partitions: Vec<PartitionId> = self.owned.keys().cloned().collect();
        let mut high = self.list_offsets(partitions.clone(), Offset::End).await?;
        let nothing_new = self
            .owned
            .iter()
            .all(|(id, state)| high.get(id).is_none_or(|high| *high <= state.planned_to));
        if nothing_new && !first_plan {
            tokio::time::sleep(IDLE_WAIT).await;
            high = self.list_offsets(partitions.clone(), Offset::End).await?;
        }
        // Where each partition starts: the checkpoint; else, on a fresh
        // checkpoint lineage, the consumer group's committed offset (a lineage
        // reset continues where the old lineage committed) or startingOffsets;
        // else (a partition that appeared later) earliest. A start chosen
        // once is kept until the checkpoint has the partition.
        let fresh = committed.is_empty() && first_plan;
        let use_latest = fresh && self.topics.starting_offsets == StartingOffsets::Latest;
        let undecided: Vec<PartitionId> = partitions
            .iter()
            .filter(|id| {
                !committed.contains_key(*id)
                    && self
                        .owned
                        .get(*id)
                        .is_none_or(|s| s.initial_start.is_none())
            })
            .cloned()
            .collect();
        let group = if fresh {
            self.group_offsets(&undecided).await?
        } else {
            HashMap::new()
        };
        let earliest = if use_latest {
            HashMap::new()
        } else {
            self.list_offsets(undecided, Offset::Beginning).await?
        };
        let mut starts = BTreeMap::new();
        for id in &partitions {
            let state = self.owned.entry(id.clone()).or_default();
            let start = match (committed.get(id), state.initial_start) {
                (Some(Position::Offset(offset)), _) => *offset,
                (Some(position), _) => {
                    return Err(SourceError::BadPosition {
                        source_kind: KIND,
                        partition: id.clone(),
                        position: position.clone(),
                    });
                }
                (None, Some(start)) => start,
                (None, None) => {
                    let chosen = if let Some(start) = group.get(id) {
                        tracing::info!(partition = %id, start, "no checkpoint: continuing from the consumer group's committed offset");
                        Some(start)
                    } else if use_latest {
                        high.get(id)
                    } else {
                        earliest.get(id)
                    };
                    let Some(&start) = chosen else {
                        let target =
                            Target::brokers(&self.brokers).partition(&id.stream, id.partition);
                        return Err(KafkaError::NoOffsets { target }.into());
                    };
                    if !fresh {
                        tracing::info!(partition = %id, start, "new partition: reading from its earliest offset");
                    }
                    state.initial_start = Some(start);
                    start
                }
            };
            starts.insert(id.clone(), start);
        }
        let backlogs: Vec<i64> = partitions
            .iter()
            .map(|id| (high.get(id).copied().unwrap_or(0) - starts[id]).max(0))
            .collect();
        // Sizes learnt from the epochs read so far; a partition not read yet
        // is assumed as large as the largest known, or large when none is.
        let mut sizes: Vec<Option<f64>> = partitions
            .iter()
            .map(|id| {
                self.owned.get_mut(id).and_then(|state| {
                    state.size.settle();
                    state.size.estimate()
                })
            })
            .collect();
        let largest = sizes.iter().flatten().copied().reduce(f64::max);
        for size in &mut sizes {
            *size = size.or(largest);
        }
        let budget = EpochBudget {
            max_records: self.epoch_budget(),
            max_bytes: self.max_bytes_per_epoch,
        };
        let takes = budget.share(&backlogs, &sizes);
        let mut ranges = Vec::with_capacity(partitions.len());
        for ((id, take), high_watermark) in partitions.iter().zip(takes).zip(
            partitions
                .iter()
                .map(|id| high.get(id).copied().unwrap_or(0)),
        ) {
            let start = starts[id];
            if let Some(state) = self.owned.get_mut(id) {
                state.high_watermark = high_watermark;
                state.planned_to = start + take;
            }
            ranges.push(PartitionRange {
                partition: id.clone(),
                start: Position::Offset(start),
                end: Position::Offset(start + take),
            });
        }
        Ok(Planned::Ranges(ranges))
    }

    /// Records not yet planned per owned partition, and how old the last
    /// record read is when some are left.
    pub(super) fn backlogs(&self) -> Vec<Backlog> {
        let now_ms = jiff::Timestamp::now().as_millisecond();
        self.owned
            .iter()
            .map(|(id, state)| {
                let records = (state.high_watermark - state.planned_to).max(0);
                Backlog {
                    partition: id.clone(),
                    records,
                    seconds: match (records, state.last_timestamp_ms) {
                        (0, _) | (_, None) => 0.0,
                        (_, Some(read)) => ((now_ms - read).max(0) as f64) / 1000.0,
                    },
                }
            })
            .collect()
    }

    /// Re-reads partition counts when due; new owned partitions join `owned`.
    async fn refresh_partitions(&mut self, first_plan: bool) -> Result<(), SourceError> {
        if self
            .metadata_read_at
            .is_some_and(|at| at.elapsed() < METADATA_REFRESH)
        {
            return Ok(());
        }
        let topics = self.topics.topics.clone();
        let asked_at = Instant::now();
        let counts = blocking(Arc::clone(&self.metadata), move |client| {
            topics
                .iter()
                .map(|topic| {
                    let metadata = client.fetch_metadata(Some(topic), REQUEST_TIMEOUT)?;
                    let count = metadata
                        .topics()
                        .iter()
                        .find(|t| t.name() == topic && t.error().is_none())
                        .map_or(0, |t| t.partitions().len());
                    Ok((topic.clone(), count))
                })
                .collect::<Result<Vec<_>, RdKafkaError>>()
        })
        .await
        .map_err(|error| {
            self.request_failed("reading topic metadata", self.target(), error, asked_at)
        })?;
        for (topic, count) in counts {
            if count == 0 {
                return Err(KafkaError::NoSuchTopic {
                    target: self.target().topic(&topic),
                }
                .into());
            }
            let previous = self.partition_counts.insert(topic.clone(), count);
            match previous {
                Some(previous) if previous < count => tracing::info!(
                    %topic, previous, count,
                    "partition count grew; new partitions are read from their earliest offset"
                ),
                Some(previous) if previous > count => tracing::error!(
                    %topic, previous, count,
                    "partition count shrank (topic re-created?); the missing partitions are no longer read"
                ),
                _ if first_plan => tracing::info!(%topic, count, "reading topic"),
                _ => {}
            }
            self.owned
                .retain(|id, _| id.stream != topic || (id.partition as usize) < count);
            for partition in 0..count as i32 {
                if partition as u32 % self.replicas == self.replica {
                    self.owned
                        .entry(PartitionId::new(topic.clone(), partition))
                        .or_default();
                }
            }
        }
        self.metadata_read_at = Some(Instant::now());
        Ok(())
    }

    /// Earliest (`Offset::Beginning`) or latest (`Offset::End`) offsets of `partitions`.
    /// The consumer group's committed offsets of `partitions` (those it has).
    async fn group_offsets(
        &self,
        partitions: &[PartitionId],
    ) -> Result<HashMap<PartitionId, i64>, SourceError> {
        const READING: &str = "reading the consumer group's committed offsets";
        let mut list = TopicPartitionList::new();
        for id in partitions {
            list.add_partition(&id.stream, id.partition);
        }
        if list.count() == 0 {
            return Ok(HashMap::new());
        }
        let asked_at = Instant::now();
        let committed = blocking(Arc::clone(&self.consumer), move |consumer| {
            consumer.committed_offsets(list, REQUEST_TIMEOUT)
        })
        .await
        .map_err(|error| self.request_failed(READING, self.target(), error, asked_at))?;
        Ok(committed
            .elements()
            .iter()
            .filter_map(|element| match element.offset() {
                Offset::Offset(offset) => Some((
                    PartitionId::new(element.topic(), element.partition()),
                    offset,
                )),
                _ => None,
            })
            .collect())
    }

    async fn list_offsets(
        &self,
        partitions: Vec<PartitionId>,
        which: Offset,
    ) -> Result<HashMap<PartitionId, i64>, SourceError> {
        const LISTING: &str = "listing offsets";
        if partitions.is_empty() {
            return Ok(HashMap::new());
        }
        let mut list = TopicPartitionList::new();
        for id in &partitions {
            list.add_partition_offset(&id.stream, id.partition, which)
                .map_err(|error| {
                    KafkaError::request(
                        LISTING,
                        self.target().partition(&id.stream, id.partition),
                        error,
                    )
                })?;
        }
        let asked_at = Instant::now();
        let listed = blocking(Arc::clone(&self.metadata), move |client| {
            client.offsets_for_times(list, REQUEST_TIMEOUT)
        })
        .await
        .map_err(|error| self.request_failed(LISTING, self.target(), error, asked_at))?;
        let mut offsets = HashMap::new();
        for element in listed.elements() {
            let id = PartitionId::new(element.topic(), element.partition());
            let target = self.target().partition(&id.stream, id.partition);
            if let Err(error) = element.error() {
                return Err(KafkaError::request(LISTING, target, error).into());
            }
            match element.offset() {
                Offset::Offset(offset) => {
                    offsets.insert(id, offset);
                }
                other => {
                    return Err(KafkaError::UnexpectedOffset {
                        target,
                        answer: format!("{other:?}"),
                    }
                    .into());
                }
            }
        }
        Ok(offsets)
    }

    /// This epoch's record bound: `maxOffsetsPerTrigger`, and the per-second
    /// rate over the time since the previous plan.
    fn epoch_budget(&mut self) -> i64 {
        let now = Instant::now();
        let elapsed = self
            .last_plan_at
            .map_or(Duration::from_secs(1), |at| now - at);
        self.last_plan_at = Some(now);
        match self.topics.limits.max_records_per_second {
            Some(rate) if rate > 0 => {
                let allowed = (rate as f64 * elapsed.as_secs_f64()).ceil() as i64;
                allowed.clamp(1, self.max_records_per_epoch)
            }
            _ => self.max_records_per_epoch,
        }
    }
}
