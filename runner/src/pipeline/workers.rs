//! The engine's worker threads: chunks of an epoch are processed on a
//! `rayon` pool, as many at once as the runner has cores, and their results
//! come back in the order the chunks were read, whatever order the workers
//! finish in. Adding them in that order is what keeps an epoch's output the
//! same for any number of workers.

use std::{
    collections::BTreeMap,
    panic::AssertUnwindSafe,
    sync::{Arc, mpsc},
};

use super::events::{ChunkWork, EpochInputs, EventStage};
use crate::{source::Chunk, transform::DedupMemory};

/// Environment variable that sets the number of worker threads (the
/// default is the CPU limit of the runner's cgroup, or the machine's cores).
pub const WORKER_THREADS_VARIABLE: &str = "SLUICE_WORKER_THREADS";

/// Threads an engine processes chunks on: [`WORKER_THREADS_VARIABLE`] when
/// set to a positive number, else what `available_parallelism` reports, which
/// honours cgroup v1 and v2 CPU quotas (a pod's `resources.limits.cpu`,
/// rounded down, at least 1).
pub fn worker_threads() -> usize {
    std::env::var(WORKER_THREADS_VARIABLE)
        .ok()
        .and_then(|n| n.trim().parse::<usize>().ok())
        .filter(|n| *n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from))
}

/// Why a chunk could not be processed.
#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    #[error("building event rows: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("a worker thread panicked processing chunk {0} of the epoch")]
    Panicked(u64),
}

type Outcome = Result<ChunkWork, ChunkError>;

pub(super) struct Workers {
    pool: rayon::ThreadPool,
    threads: usize,
}

impl Workers {
    /// A pool of `threads` threads (2 or more; one thread processes inline).
    pub fn new(threads: usize) -> Result<Self, rayon::ThreadPoolBuildError> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("sluice-worker-{i}"))
            .build()?;
        Ok(Self { pool, threads })
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Chunks in flight at most: enough to keep every worker busy while the
    /// source reads the next chunk, few enough to bound memory.
    fn in_flight_limit(&self) -> u64 {
        2 * self.threads as u64
    }
}

/// The chunks of one epoch handed to workers, and their results in order.
pub(super) struct Pending {
    sender: mpsc::Sender<(u64, Outcome)>,
    receiver: mpsc::Receiver<(u64, Outcome)>,
    /// Results that came back before an earlier chunk's.
    early: BTreeMap<u64, Outcome>,
    sent: u64,
    taken: u64,
}

impl Default for Pending {
    fn default() -> Self {
        let (sender, receiver) = mpsc::channel();
        Self {
            sender,
            receiver,
            early: BTreeMap::new(),
            sent: 0,
            taken: 0,
        }
    }
}

impl Pending {
    /// Hands a chunk to a worker. Its result always comes back: a panic
    /// becomes an error of the epoch.
    pub fn send(
        &mut self,
        workers: &Workers,
        stage: &Arc<EventStage>,
        epoch: &Arc<EpochInputs>,
        chunk: Chunk,
    ) {
        let (stage, epoch, sender, index) = (
            Arc::clone(stage),
            Arc::clone(epoch),
            self.sender.clone(),
            self.sent,
        );
        self.sent += 1;
        workers.pool.spawn(move || {
            // Only pipelines without dedup steps get here: no memory to share.
            let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
                stage.process(&epoch, &chunk, &mut DedupMemory::default())
            }))
            .unwrap_or(Err(ChunkError::Panicked(index)));
            drop((stage, epoch, chunk));
            // The receiver is gone only when the epoch was abandoned.
            let _ = sender.send((index, outcome));
        });
    }

    /// The next results in chunk order: those already back, and then, while
    /// more than the pool's limit are in flight (or all of them when
    /// `all`), waiting for the oldest.
    pub fn take(&mut self, workers: &Workers, all: bool) -> Vec<Outcome> {
        let mut ready = Vec::new();
        while let Ok((index, outcome)) = self.receiver.try_recv() {
            self.early.insert(index, outcome);
        }
        loop {
            while let Some(outcome) = self.early.remove(&self.taken) {
                ready.push(outcome);
                self.taken += 1;
            }
            let in_flight = self.sent - self.taken;
            if in_flight == 0 || (!all && in_flight < workers.in_flight_limit()) {
                return ready;
            }
            // `self.sender` keeps the channel open, and every chunk sent
            // sends its result back.
            match self.receiver.recv() {
                Ok((index, outcome)) => {
                    self.early.insert(index, outcome);
                }
                Err(_) => {
                    ready.push(Err(ChunkError::Panicked(self.taken)));
                    self.taken += 1;
                }
            }
        }
    }
}
