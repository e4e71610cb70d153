//! How many records an epoch plans: at most `max_records`, and records
//! whose bytes fit in `max_bytes`. A plan is made before its records are
//! read, so the bytes are estimated from what each partition's previous
//! epoch read (a partition not read yet is assumed to hold large records,
//! so that the first epoch stays small and teaches the size). The plan is
//! written ahead and replayed as planned, so estimates never change a replay.

/// Bytes per record assumed for a partition whose records were never read:
/// large, so the first epoch after a start is small whatever the records.
pub const UNKNOWN_RECORD_BYTES: f64 = 64.0 * 1024.0;

/// Per-epoch bounds of one replica's reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EpochBudget {
    pub max_records: i64,
    pub max_bytes: i64,
}

impl EpochBudget {
    /// No bound: reading a range already planned.
    pub const UNBOUNDED: Self = Self {
        max_records: i64::MAX,
        max_bytes: i64::MAX,
    };

    /// Whether an epoch that has read `records` records of `bytes` bytes
    /// has spent the budget: reading stops there (the record that reaches
    /// the byte bound is the last).
    pub fn is_spent(&self, records: i64, bytes: i64) -> bool {
        records >= self.max_records || bytes >= self.max_bytes
    }

    /// Records of one partition the budget allows, for records of
    /// `bytes_per_record` (`None`: not known yet); at least one, so that a
    /// record larger than the whole budget is still read, alone.
    pub fn records_of(&self, bytes_per_record: Option<f64>) -> i64 {
        let size = bytes_per_record.unwrap_or(UNKNOWN_RECORD_BYTES).max(1.0);
        let by_bytes = (self.max_bytes as f64 / size).floor() as i64;
        by_bytes.clamp(1, self.max_records.max(1))
    }

    /// Splits the budget over partitions with `backlogs` records waiting
    /// whose records average `sizes` bytes: the bytes first (see
    /// [`share_budget`]), then the records.
    pub fn share(&self, backlogs: &[i64], sizes: &[Option<f64>]) -> Vec<i64> {
        let size_of = |size: Option<f64>| size.unwrap_or(UNKNOWN_RECORD_BYTES).max(1.0);
        let backlog_bytes: Vec<i64> = backlogs
            .iter()
            .zip(sizes)
            .map(|(backlog, size)| (*backlog as f64 * size_of(*size)).ceil() as i64)
            .collect();
        let byte_takes = share_budget(&backlog_bytes, self.max_bytes);
        let records: Vec<i64> = backlogs
            .iter()
            .zip(sizes)
            .zip(byte_takes)
            .map(|((backlog, size), bytes)| {
                let fit = (bytes as f64 / size_of(*size)).floor() as i64;
                fit.clamp((*backlog).min(1), *backlog)
            })
            .collect();
        share_budget(&records, self.max_records)
    }
}

/// The average size of a partition's records, from the last epoch that read
/// any of them.
#[derive(Clone, Copy, Debug, Default)]
pub struct RecordSize {
    last: Option<f64>,
    bytes: u64,
    records: u64,
}

impl RecordSize {
    /// Counts one record read.
    pub fn observe(&mut self, bytes: usize) {
        self.bytes += bytes as u64;
        self.records += 1;
    }

    /// Counts `records` records of `bytes` bytes in all.
    pub fn observe_many(&mut self, records: usize, bytes: usize) {
        self.bytes += bytes as u64;
        self.records += records as u64;
    }

    /// Ends a sample (an epoch): what it read becomes the estimate.
    pub fn settle(&mut self) {
        if self.records > 0 {
            self.last = Some(self.bytes as f64 / self.records as f64);
            self.bytes = 0;
            self.records = 0;
        }
    }

    /// Bytes per record of the last settled sample.
    pub fn estimate(&self) -> Option<f64> {
        self.last
    }
}

/// Splits `budget` over partitions. Every partition with a backlog gets a
/// fair floor first (an even share of half the budget, at least one), so a
/// partition with a small backlog is read every epoch instead of waiting
/// behind big ones until it is taken for idle; the rest goes in proportion
/// to what is left of each backlog. With a budget smaller than the number
/// of partitions with data, each still takes one.
pub fn share_budget(backlogs: &[i64], budget: i64) -> Vec<i64> {
    let total: i64 = backlogs.iter().fold(0, |sum, b| sum.saturating_add(*b));
    if total <= budget {
        return backlogs.to_vec();
    }
    let with_data = backlogs.iter().filter(|backlog| **backlog > 0).count() as i64;
    let floor = (budget / (2 * with_data.max(1))).max(1);
    let mut takes: Vec<i64> = backlogs
        .iter()
        .map(|backlog| (*backlog).min(floor))
        .collect();
    let budget = (budget - takes.iter().sum::<i64>()).max(0);
    let rest: Vec<i64> = backlogs.iter().zip(&takes).map(|(b, t)| b - t).collect();
    let rest_total: i128 = rest.iter().map(|r| *r as i128).sum();
    let mut shares: Vec<i64> = rest
        .iter()
        .map(|left| ((*left as i128 * budget as i128) / rest_total.max(1)) as i64)
        .collect();
    let mut left = budget - shares.iter().sum::<i64>();
    for (share, rest) in shares.iter_mut().zip(&rest) {
        if left == 0 {
            break;
        }
        if *share < *rest {
            *share += 1;
            left -= 1;
        }
    }
    for (take, share) in takes.iter_mut().zip(shares) {
        *take += share;
    }
    takes
}

#[cfg(test)]
mod tests {
    use super::*;

    const KIB: i64 = 1024;
    const MIB: i64 = 1024 * KIB;

    #[test]
    fn budget_is_shared_in_proportion_to_backlog() {
        assert_eq!(share_budget(&[10, 0, 5], 100), vec![10, 0, 5]);
        // A floor of 25 each, then the other 50 in proportion to 275 and 75.
        assert_eq!(share_budget(&[300, 100], 100), vec![65, 35]);
        assert_eq!(share_budget(&[1_000_000, 0], 100), vec![100, 0]);
    }

    #[test]
    fn every_partition_with_a_backlog_is_read_every_epoch() {
        // One huge backlog and a few records elsewhere: proportional shares
        // would round the small ones down to nothing, epoch after epoch.
        let backlogs = [10_000_000, 3, 40, 0];
        let takes = share_budget(&backlogs, 100_000);
        assert_eq!(&takes[1..], &[3, 40, 0]);
        assert_eq!(takes.iter().sum::<i64>(), 100_000);
        // Fewer records in the budget than partitions with data: one each.
        assert_eq!(share_budget(&[5, 5, 5], 2), vec![1, 1, 1]);
    }

    #[test]
    fn records_fit_the_byte_budget_once_their_size_is_known() {
        let budget = EpochBudget {
            max_records: 1_000_000,
            max_bytes: 32 * MIB,
        };
        // 1 KiB events: 32 Ki of them, not the million the record bound allows.
        assert_eq!(budget.records_of(Some(1024.0)), 32 * KIB);
        // Unknown size: a small first epoch.
        assert_eq!(budget.records_of(None), 512);
        // Tiny events: the record bound.
        assert_eq!(budget.records_of(Some(10.0)), 1_000_000);
        // One record larger than the budget is still read, alone.
        assert_eq!(budget.records_of(Some(64.0 * MIB as f64)), 1);
    }

    #[test]
    fn a_plan_shares_bytes_between_partitions_of_different_record_sizes() {
        let budget = EpochBudget {
            max_records: 1_000_000,
            max_bytes: 10 * MIB,
        };
        // Partition 0 holds 1 KiB records, partition 1 100-byte ones; both
        // have a backlog far beyond the budget.
        let sizes = [Some(1024.0), Some(100.0)];
        let takes = budget.share(&[1_000_000, 1_000_000], &sizes);
        let bytes = takes[0] as f64 * 1024.0 + takes[1] as f64 * 100.0;
        assert!(bytes <= (10 * MIB) as f64, "{takes:?} hold {bytes} bytes");
        assert!(
            bytes > (9 * MIB) as f64,
            "{takes:?} leave the budget unused"
        );
        // Partition 0's backlog holds ten times the bytes and gets the larger
        // share of them, yet fewer records.
        assert!(takes[0] * 1024 > takes[1] * 100, "{takes:?}");
        assert!(takes[1] > takes[0], "{takes:?}");
    }

    #[test]
    fn the_record_bound_still_applies_and_small_backlogs_are_taken_whole() {
        let budget = EpochBudget {
            max_records: 1000,
            max_bytes: 1024 * MIB,
        };
        let takes = budget.share(&[50_000, 7, 0], &[Some(100.0), None, Some(100.0)]);
        assert_eq!(takes.iter().sum::<i64>(), 1000);
        assert_eq!(&takes[1..], &[7, 0]);
    }

    #[test]
    fn a_partition_of_unknown_size_starts_small_and_every_backlog_moves() {
        let budget = EpochBudget {
            max_records: 1_000_000,
            max_bytes: MIB,
        };
        let takes = budget.share(&[1_000_000, 1_000_000, 3], &[None, Some(1024.0), None]);
        let bytes = takes[0] as f64 * UNKNOWN_RECORD_BYTES
            + takes[1] as f64 * 1024.0
            + takes[2] as f64 * UNKNOWN_RECORD_BYTES;
        assert!(
            bytes <= MIB as f64 + 2.0 * UNKNOWN_RECORD_BYTES,
            "{takes:?}"
        );
        assert!(takes.iter().all(|take| *take >= 1), "{takes:?}");
    }

    #[test]
    fn the_size_estimate_is_the_last_epochs_average() {
        let mut size = RecordSize::default();
        assert_eq!(size.estimate(), None);
        size.observe(1000);
        size.observe(3000);
        size.settle();
        assert_eq!(size.estimate(), Some(2000.0));
        // An epoch that read nothing of the partition keeps the estimate.
        size.settle();
        assert_eq!(size.estimate(), Some(2000.0));
        size.observe_many(10, 1000);
        size.settle();
        assert_eq!(size.estimate(), Some(100.0));
    }
}
