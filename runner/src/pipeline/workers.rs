//! The engine's worker threads: chunks of an epoch are processed on a
//! `rayon` pool, as many at once as the runner has cores, and their results
//! come back in the order the chunks were read, whatever order the workers
//! finish in. Adding them in that order is what keeps an epoch's output the
//! same for any number of workers. Chunks come either from the pipeline
//! loop, one at a time ([`Pending`]), or from a source's feed, which the
//! workers take from themselves ([`Workers::drain`]): a worker then reads
//! the chunk it processes, with no thread in between to wake and no copy
//! of the chunk in another core's cache.

use std::{
    collections::BTreeMap,
    panic::AssertUnwindSafe,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc,
    },
};

use tokio::sync::oneshot;

use super::events::{ChunkWork, EpochInputs, EventStage};
use crate::{
    source::{Chunk, SharedFeed, SourceError},
    transform::DedupMemory,
};

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
    #[error("the worker threads stopped before the epoch's chunks were processed")]
    WorkersLost,
}

pub(super) type Outcome = Result<ChunkWork, ChunkError>;

/// What the workers did with a feed's chunks: the results in the order
/// the chunks were taken, and why the feed stopped early, if it did.
pub(super) struct Drained {
    pub outcomes: Vec<Outcome>,
    pub failure: Option<SourceError>,
}

/// The state the workers draining a feed share.
struct Draining<'a> {
    feed: &'a SharedFeed,
    stage: &'a EventStage,
    epoch: &'a EpochInputs,
    /// Chunks taken so far: the next chunk's index.
    taken: AtomicU64,
    stop: AtomicBool,
    done: Mutex<Results>,
}

/// The results of the chunks processed so far, with their indices, and
/// why the feed failed, if it did.
#[derive(Default)]
struct Results {
    by_index: Vec<(u64, Outcome)>,
    failure: Option<SourceError>,
}

impl Draining<'_> {
    /// Takes chunks and processes them until the feed is empty (or failed).
    fn take_and_process(&self) {
        while !self.stop.load(Ordering::Relaxed) {
            // The index is taken while the feed is held, so indices follow
            // the order the chunks were read in.
            let mut feed = self.feed.lock().unwrap_or_else(PoisonError::into_inner);
            let (index, chunk) = match feed.next_chunk() {
                Ok(Some(chunk)) => (self.taken.fetch_add(1, Ordering::Relaxed), chunk),
                Ok(None) => return,
                Err(error) => {
                    self.stop.store(true, Ordering::Relaxed);
                    self.done().failure.get_or_insert(error);
                    return;
                }
            };
            drop(feed);
            let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
                self.stage
                    .process(self.epoch, &chunk, &mut DedupMemory::default())
            }))
            .unwrap_or(Err(ChunkError::Panicked(index)));
            drop(chunk);
            self.done().by_index.push((index, outcome));
        }
    }

    fn done(&self) -> MutexGuard<'_, Results> {
        self.done.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

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

    /// Has every worker take chunks from `feed` and process them, each
    /// reading the chunk it then processes (while it is in its core's
    /// cache), until the feed is empty. Runs on the pool: the caller awaits
    /// the result.
    pub fn drain(
        &self,
        feed: SharedFeed,
        stage: Arc<EventStage>,
        epoch: Arc<EpochInputs>,
    ) -> oneshot::Receiver<Drained> {
        let (sender, receiver) = oneshot::channel();
        let threads = self.threads;
        self.pool.spawn(move || {
            let draining = Draining {
                feed: &feed,
                stage: &stage,
                epoch: &epoch,
                taken: AtomicU64::new(0),
                stop: AtomicBool::new(false),
                done: Mutex::default(),
            };
            rayon::scope(|scope| {
                for _ in 0..threads {
                    scope.spawn(|_| draining.take_and_process());
                }
            });
            let Results {
                mut by_index,
                failure,
            } = draining
                .done
                .into_inner()
                .unwrap_or_else(PoisonError::into_inner);
            by_index.sort_unstable_by_key(|(index, _)| *index);
            // The receiver is gone only when the epoch was abandoned.
            let _ = sender.send(Drained {
                outcomes: by_index.into_iter().map(|(_, outcome)| outcome).collect(),
                failure,
            });
        });
        receiver
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
