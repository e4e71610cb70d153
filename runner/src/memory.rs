//! How much memory this runner may use, and so how many bytes of source
//! records one epoch may hold. An epoch is read whole before its sinks are
//! written (sinks reading `events` receive every row at once), so its input
//! has to fit in the pod beside everything else the runner keeps.

use sysinfo::{MemoryRefreshKind, RefreshKind, System};

/// Environment variable that states the memory limit in bytes, in place of
/// the cgroup's. The controller sets it from the container's
/// `limits.memory` (the Downward API), so the runner sees the limit its pod
/// has even where the cgroup files are not where sysinfo looks.
pub use sluice_crds::MEMORY_LIMIT_ENV;

/// One epoch's input takes at most this share of the memory limit: the
/// epoch's records are held as read, again as event rows (Arrow strings
/// grow by doubling), and once more while a sink encodes them (Parquet,
/// JSON), besides the Kafka client's prefetch, the window state and the
/// allocator's slack; and the sinks of one epoch write while the next is
/// read. Measured (`tests/it/epoch_bytes.rs`): 1 KB events under a 160 MiB
/// limit peak at 102 MiB with a sixteenth (and two allocator arenas, see
/// [`bound_allocator_arenas`]); most of it is the runtime and its libraries.
pub const EPOCH_SHARE_OF_MEMORY: u64 = 16;

/// Smallest and largest epoch sizes in bytes, set or default: below 1 MiB
/// epochs are mostly overhead; above 1 GiB the event rows' string column
/// (32-bit offsets, 2 GiB at most) would come close to its limit.
pub use sluice_crds::{MAX_EPOCH_BYTES, MIN_EPOCH_BYTES};

/// Where the memory limit came from, for the start-up log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitSource {
    /// [`MEMORY_LIMIT_ENV`].
    Environment,
    /// The cgroup's `memory.max` (v2) or `memory.limit_in_bytes` (v1).
    Cgroup,
    /// No limit anywhere: the machine's memory.
    Machine,
}

/// The memory this runner may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryLimit {
    pub bytes: u64,
    pub source: LimitSource,
}

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("{MEMORY_LIMIT_ENV}={value:?} is not a number of bytes greater than zero")]
    BadEnvironment { value: String },
}

impl MemoryLimit {
    /// The limit: [`MEMORY_LIMIT_ENV`] when set, else the cgroup's (a pod's
    /// container limit), else the machine's memory.
    pub fn detect() -> Result<Self, MemoryError> {
        if let Ok(value) = std::env::var(MEMORY_LIMIT_ENV) {
            return match value.trim().parse::<u64>() {
                Ok(bytes) if bytes > 0 => Ok(Self {
                    bytes,
                    source: LimitSource::Environment,
                }),
                _ => Err(MemoryError::BadEnvironment { value }),
            };
        }
        let system = System::new_with_specifics(
            RefreshKind::nothing().with_memory(MemoryRefreshKind::nothing().with_ram()),
        );
        let machine = system.total_memory();
        // sysinfo reports the smaller of the cgroup's limit and the machine's
        // memory, and the machine's when the cgroup says `max`.
        Ok(match system.cgroup_limits() {
            Some(cgroup) if cgroup.total_memory < machine => Self {
                bytes: cgroup.total_memory,
                source: LimitSource::Cgroup,
            },
            _ => Self {
                bytes: machine,
                source: LimitSource::Machine,
            },
        })
    }

    /// The default bound on one epoch's input: [`EPOCH_SHARE_OF_MEMORY`] of
    /// the limit, within [`MIN_EPOCH_BYTES`]..=[`MAX_EPOCH_BYTES`].
    pub fn epoch_bytes(&self) -> i64 {
        let share = i64::try_from(self.bytes / EPOCH_SHARE_OF_MEMORY).unwrap_or(i64::MAX);
        share.clamp(MIN_EPOCH_BYTES, MAX_EPOCH_BYTES)
    }
}

/// Environment variable with which glibc's own arena limit is set; when the
/// user sets it, [`bound_allocator_arenas`] leaves theirs.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const ARENA_MAX_ENV: &str = "MALLOC_ARENA_MAX";
/// Heap arenas glibc may keep.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const ARENAS: i32 = 2;

/// Bounds glibc's heap arenas to two. By default glibc opens one per
/// thread that allocates (up to eight per core): memory an epoch freed on
/// one thread then stays resident in its arena while the next epoch fills
/// another, and a runner whose epochs fit a 160 MiB limit peaked at 164 MiB
/// (103 MiB with two arenas; jemalloc 158 MiB, mimalloc 222 MiB). Call it
/// first thing in `main`, before any thread starts.
pub fn bound_allocator_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os(ARENA_MAX_ENV).is_none() {
        // SAFETY: `mallopt` only sets a parameter of glibc's allocator, and
        // no other thread is allocating yet.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, ARENAS);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(bytes: u64) -> MemoryLimit {
        MemoryLimit {
            bytes,
            source: LimitSource::Cgroup,
        }
    }

    #[test]
    fn an_epoch_takes_a_sixteenth_of_the_memory_limit_within_bounds() {
        assert_eq!(limit(2 << 30).epoch_bytes(), 128 << 20);
        assert_eq!(limit(256 << 20).epoch_bytes(), 16 << 20);
        assert_eq!(limit(8 << 20).epoch_bytes(), MIN_EPOCH_BYTES);
        assert_eq!(limit(64 << 30).epoch_bytes(), MAX_EPOCH_BYTES);
        assert_eq!(limit(u64::MAX).epoch_bytes(), MAX_EPOCH_BYTES);
    }

    #[test]
    fn the_machine_has_a_limit() {
        let detected = MemoryLimit::detect().unwrap();
        assert!(detected.bytes > 0);
    }
}
