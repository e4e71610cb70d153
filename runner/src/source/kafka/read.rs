//! Reading an epoch: exactly the planned offset ranges, in chunks, with the
//! consumer's assignment and pauses arranged so that only partitions with
//! something left to read are fetched.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::{Duration, Instant},
};

use futures::{FutureExt, StreamExt};
use rdkafka::{
    Message, Offset, TopicPartitionList, consumer::Consumer, error::KafkaError as RdKafkaError,
    types::RDKafkaErrorCode,
};

use super::{KIND, KafkaSource};
use crate::{
    kafka::KafkaError,
    source::{Chunk, PartitionId, PartitionRange, Position, SourceError},
};

/// Records per chunk handed to the pipeline, and bytes: a chunk is handed
/// out when it holds either (large records would otherwise make every
/// partition's chunk in the making megabytes long).
const CHUNK_RECORDS: usize = 8192;
const CHUNK_BYTES: usize = 1 << 20;
/// How long `next_chunk` waits for a record before handing out a partial chunk.
const POLL_SLICE: Duration = Duration::from_millis(100);
/// No record for this long while a range is unfinished and the broker is
/// unreachable: give up on the epoch (it is re-read from its start).
const STALL_TIMEOUT: Duration = Duration::from_secs(15);

/// A record fetched past the end of its epoch's range, kept for the next one.
#[derive(Debug)]
pub(super) struct StashedRecord {
    offset: i64,
    timestamp_ms: Option<i64>,
    payload: Vec<u8>,
}

/// One range of the epoch being read.
#[derive(Debug)]
pub(super) struct ReadRange {
    partition: PartitionId,
    end: i64,
    /// Next offset this epoch wants.
    next: i64,
    building: Chunk,
}

impl ReadRange {
    fn done(&self) -> bool {
        self.next >= self.end
    }
}

impl KafkaSource {
    /// Prepares to read exactly `ranges`.
    pub(super) fn start_reading(&mut self, ranges: &[PartitionRange]) -> Result<(), SourceError> {
        let mut starts = HashMap::new();
        self.reading.clear();
        self.range_of.clear();
        self.ready.clear();
        for (index, range) in ranges.iter().enumerate() {
            let (Position::Offset(start), Position::Offset(end)) = (&range.start, &range.end)
            else {
                return Err(SourceError::BadPosition {
                    source_kind: KIND,
                    partition: range.partition.clone(),
                    position: range.start.clone(),
                });
            };
            // A replayed plan may name partitions this process has not listed yet.
            self.owned.entry(range.partition.clone()).or_default();
            starts.insert(range.partition.clone(), *start);
            self.range_of
                .entry(range.partition.stream.clone())
                .or_default()
                .insert(range.partition.partition, index);
            self.reading.push(ReadRange {
                partition: range.partition.clone(),
                end: *end,
                next: *start,
                building: Chunk::new(index),
            });
        }
        self.arrange_consumer(&starts)?;
        self.drain_stash()
    }

    /// The next chunk of the epoch, or `None` once every range is read.
    pub(super) async fn read_chunk(&mut self) -> Result<Option<Chunk>, SourceError> {
        let mut last_progress = Instant::now();
        // A clone of the handle, so that records borrow it rather than `self`.
        let consumer = Arc::clone(&self.consumer);
        let mut stream = consumer.stream();
        loop {
            if let Some(chunk) = self.ready.pop_front() {
                return Ok(Some(chunk));
            }
            if self.unfinished() == 0 {
                self.on_idle();
                return Ok(self.ready.pop_front());
            }
            // Records already fetched are taken without arming a timer.
            let received = match stream.next().now_or_never() {
                Some(received) => received,
                None => tokio::time::timeout(POLL_SLICE, stream.next())
                    .await
                    .ok()
                    .flatten(),
            };
            match received {
                Some(Ok(message)) => {
                    if let Some(index) = self.range_index(message.topic(), message.partition()) {
                        self.accept(
                            index,
                            message.offset(),
                            message.timestamp().to_millis(),
                            message.payload().unwrap_or_default(),
                        )?;
                        last_progress = Instant::now();
                    }
                }
                Some(Err(error)) => {
                    if let RdKafkaError::MessageConsumption(code) = &error
                        && *code == RDKafkaErrorCode::OffsetOutOfRange
                    {
                        return Err(KafkaError::OffsetsDeleted {
                            target: self.target(),
                            error: Box::new(error),
                        }
                        .into());
                    }
                    tracing::warn!(%error, "kafka consume error");
                }
                None => {
                    self.on_idle();
                    if last_progress.elapsed() > STALL_TIMEOUT
                        && let Some(cause) = self.consumer.context().error_since(last_progress)
                    {
                        return Err(KafkaError::Stalled {
                            target: self.target(),
                            waited: STALL_TIMEOUT,
                            cause,
                        }
                        .into());
                    }
                }
            }
        }
    }

    /// Makes the consumer's assignment and pause state match the epoch.
    fn arrange_consumer(&mut self, starts: &HashMap<PartitionId, i64>) -> Result<(), SourceError> {
        let wanted: HashSet<PartitionId> = starts.keys().cloned().collect();
        let mut reseek = wanted != self.assigned;
        for range in &self.reading {
            let state = self.owned.get(&range.partition);
            let continues = state.and_then(|s| s.read_to) == starts.get(&range.partition).copied();
            if !range.done() && !continues {
                reseek = true;
            }
        }
        if reseek {
            const ASSIGNING: &str = "assigning partitions";
            let mut list = TopicPartitionList::new();
            for (id, start) in starts {
                list.add_partition_offset(&id.stream, id.partition, Offset::Offset(*start))
                    .map_err(|error| {
                        KafkaError::request(
                            ASSIGNING,
                            self.target().partition(&id.stream, id.partition),
                            error,
                        )
                    })?;
                let state = self.owned.entry(id.clone()).or_default();
                state.stash.clear();
                state.read_to = Some(*start);
            }
            self.consumer
                .assign(&list)
                .map_err(|error| KafkaError::request(ASSIGNING, self.target(), error))?;
            // librdkafka keeps a partition's pause across a new assignment:
            // resume every partition, then pause the ones with nothing to read.
            self.consumer.resume(&list).map_err(|error| {
                KafkaError::request("resuming partitions", self.target(), error)
            })?;
            self.assigned = wanted;
            self.paused.clear();
        }
        let active: HashSet<&PartitionId> = self
            .reading
            .iter()
            .filter(|range| !range.done())
            .map(|range| &range.partition)
            .collect();
        let mut pause = TopicPartitionList::new();
        let mut resume = TopicPartitionList::new();
        for id in &self.assigned {
            match (active.contains(id), self.paused.contains(id)) {
                (true, true) => resume.add_partition(&id.stream, id.partition),
                (false, false) => pause.add_partition(&id.stream, id.partition),
                _ => continue,
            };
        }
        self.apply_pause(&pause, true)?;
        self.apply_pause(&resume, false)
    }

    fn apply_pause(&mut self, list: &TopicPartitionList, pause: bool) -> Result<(), SourceError> {
        if list.count() == 0 {
            return Ok(());
        }
        let (operation, result) = if pause {
            ("pausing partitions", self.consumer.pause(list))
        } else {
            ("resuming partitions", self.consumer.resume(list))
        };
        result.map_err(|error| KafkaError::request(operation, self.target(), error))?;
        for element in list.elements() {
            let id = PartitionId::new(element.topic(), element.partition());
            if pause {
                self.paused.insert(id);
            } else {
                self.paused.remove(&id);
            }
        }
        Ok(())
    }

    /// Stops fetching a partition whose range is read.
    fn pause_one(&mut self, id: &PartitionId) -> Result<(), SourceError> {
        if self.paused.contains(id) {
            return Ok(());
        }
        let mut list = TopicPartitionList::new();
        list.add_partition(&id.stream, id.partition);
        self.apply_pause(&list, true)
    }

    /// Files one fetched record into its range's chunk, or the stash when it
    /// belongs to a later epoch.
    fn accept(
        &mut self,
        index: usize,
        offset: i64,
        timestamp_ms: Option<i64>,
        payload: &[u8],
    ) -> Result<(), SourceError> {
        let range = &mut self.reading[index];
        let Some(state) = self.owned.get_mut(&range.partition) else {
            return Ok(());
        };
        if offset < range.next {
            // Re-delivered after a seek or resume: already handed out.
            return Ok(());
        }
        if offset >= range.end {
            state.stash.push_back(StashedRecord {
                offset,
                timestamp_ms,
                payload: payload.to_vec(),
            });
            let id = range.partition.clone();
            return self.pause_one(&id);
        }
        range.building.push(payload, offset);
        range.next = offset + 1;
        state.read_to = Some(range.next);
        state.size.observe(payload.len());
        if timestamp_ms.is_some() {
            state.last_timestamp_ms = timestamp_ms;
        }
        if range.done()
            || range.building.len() >= CHUNK_RECORDS
            || range.building.bytes() >= CHUNK_BYTES
        {
            let full = std::mem::replace(&mut range.building, Chunk::new(index));
            self.ready.push_back(full);
        }
        if self.reading[index].done() {
            let id = self.reading[index].partition.clone();
            self.pause_one(&id)?;
        }
        Ok(())
    }

    /// Moves stashed records that fall in the new epoch's ranges into chunks.
    fn drain_stash(&mut self) -> Result<(), SourceError> {
        for index in 0..self.reading.len() {
            let id = self.reading[index].partition.clone();
            let Some(state) = self.owned.get_mut(&id) else {
                continue;
            };
            let stash = std::mem::take(&mut state.stash);
            for record in stash {
                if self.reading[index].done() {
                    if let Some(state) = self.owned.get_mut(&id) {
                        state.stash.push_back(record);
                    }
                    continue;
                }
                self.accept(index, record.offset, record.timestamp_ms, &record.payload)?;
            }
        }
        Ok(())
    }

    /// Hands out partial chunks and finishes ranges that ended in a gap
    /// (transaction markers, compaction) by asking the consumer's position.
    fn on_idle(&mut self) {
        for (index, range) in self.reading.iter_mut().enumerate() {
            if !range.building.is_empty() {
                let partial = std::mem::replace(&mut range.building, Chunk::new(index));
                self.ready.push_back(partial);
            }
        }
        let Ok(positions) = self.consumer.position() else {
            return;
        };
        for element in positions.elements() {
            if let (Offset::Offset(position), Some(index)) = (
                element.offset(),
                self.range_index(element.topic(), element.partition()),
            ) {
                let range = &mut self.reading[index];
                if position >= range.end && range.next < range.end {
                    range.next = range.end;
                    if let Some(state) = self.owned.get_mut(&range.partition) {
                        state.read_to = Some(range.end);
                    }
                }
            }
        }
    }

    fn range_index(&self, topic: &str, partition: i32) -> Option<usize> {
        self.range_of.get(topic)?.get(&partition).copied()
    }

    fn unfinished(&self) -> usize {
        self.reading.iter().filter(|range| !range.done()).count()
    }
}
