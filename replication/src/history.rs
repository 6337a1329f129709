//! Epoch histories and where two logs diverge (leader-epoch truncation, as Kafka does after
//! KIP-101 and KIP-279, and Raft's log matching).
//!
//! A partition's epoch history lists, for every leadership epoch with records, the LSN of its
//! first record: `(epoch, first_lsn)`, ascending in both (the WAL keeps it; snapshots carry
//! it). From it, the epoch of any record of the log is known without reading the record.
//!
//! **Why two logs agree up to a point iff their records' epochs agree there.** Records of
//! epoch `e` are written only by the leader of epoch `e` (at most one per epoch: promise 1),
//! and a follower copies only a prefix of its leader's log after checking that its own last
//! record is on that log. So two logs holding a record of the same epoch at the same LSN hold
//! the same record there and the same records before it. Agreement is therefore downward
//! closed, and the last LSN where both logs' epochs agree is where they diverge: the follower
//! truncates everything after it and copies the leader's records from there.

/// A log's last record: its epoch and LSN (`(0, 0)` for an empty log).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LogEnd {
    /// Epoch of the last record (compared first: a later epoch is a more recent log).
    pub epoch: u64,
    /// LSN of the last record.
    pub lsn: u64,
}

/// The epoch of record `lsn` by `history`; `None` for LSN 0 or an LSN before the first epoch.
/// Says nothing of whether the log reaches `lsn`: the caller bounds it by the log's end.
pub fn epoch_at(history: &[(u64, u64)], lsn: u64) -> Option<u64> {
    if lsn == 0 {
        return None;
    }
    let after = history.partition_point(|&(_, first_lsn)| first_lsn <= lsn);
    after.checked_sub(1).map(|index| history[index].0)
}

/// The first LSN of the epoch run that holds `lsn` (the start of its history entry).
fn run_start(history: &[(u64, u64)], lsn: u64) -> u64 {
    let after = history.partition_point(|&(_, first_lsn)| first_lsn <= lsn);
    after.checked_sub(1).map_or(1, |index| history[index].1)
}

/// The last record of a log that ends at `end_lsn` with `history`.
pub fn log_end(history: &[(u64, u64)], end_lsn: u64) -> LogEnd {
    LogEnd {
        epoch: epoch_at(history, end_lsn).unwrap_or(0),
        lsn: end_lsn,
    }
}

/// Whether a log ending at `end_lsn` with `history` holds `record` (by the log matching
/// property, then also every record before it). The empty position (LSN 0) is on every log.
pub fn holds(history: &[(u64, u64)], end_lsn: u64, record: LogEnd) -> bool {
    record.lsn == 0
        || (record.lsn <= end_lsn && epoch_at(history, record.lsn) == Some(record.epoch))
}

/// The last LSN at which two logs agree (0 if nowhere): the follower keeps its records up to
/// it and truncates the rest. Each log is its epoch history and its last LSN.
///
/// Walks down from the shorter log's end: where the two records' epochs differ, they differ
/// throughout the part of the log where neither epoch run changes, so the walk jumps to just
/// before the later of the two runs' starts. Each step leaves at least one run behind, so it
/// takes at most as many steps as the two histories have entries.
pub fn divergence(
    leader: &[(u64, u64)],
    leader_end_lsn: u64,
    follower: &[(u64, u64)],
    follower_end_lsn: u64,
) -> u64 {
    let mut lsn = leader_end_lsn.min(follower_end_lsn);
    while lsn > 0 {
        if epoch_at(leader, lsn) == epoch_at(follower, lsn) {
            return lsn;
        }
        lsn = run_start(leader, lsn).max(run_start(follower, lsn)) - 1;
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The epoch history of a log given as the epoch of each record (LSN 1 first).
    fn history_of(epochs: &[u64]) -> Vec<(u64, u64)> {
        let mut history: Vec<(u64, u64)> = Vec::new();
        for (index, &epoch) in epochs.iter().enumerate() {
            if history.last().is_none_or(|&(last, _)| epoch > last) {
                history.push((epoch, index as u64 + 1));
            }
        }
        history
    }

    #[test]
    fn epoch_at_reads_the_runs() {
        let history = [(0, 1), (3, 4), (5, 9)];
        assert_eq!(epoch_at(&history, 0), None);
        assert_eq!(epoch_at(&history, 1), Some(0));
        assert_eq!(epoch_at(&history, 3), Some(0));
        assert_eq!(epoch_at(&history, 4), Some(3));
        assert_eq!(epoch_at(&history, 8), Some(3));
        assert_eq!(epoch_at(&history, 9), Some(5));
        assert_eq!(epoch_at(&history, 1000), Some(5));
        assert_eq!(epoch_at(&[(2, 10)], 9), None);
        assert_eq!(log_end(&history, 8), LogEnd { epoch: 3, lsn: 8 });
        assert_eq!(log_end(&[], 0), LogEnd::default());
    }

    #[test]
    fn holds_checks_the_last_record_epoch_and_the_end() {
        let history = [(0, 1), (3, 4)];
        assert!(holds(&history, 6, LogEnd { epoch: 3, lsn: 6 }));
        assert!(holds(&history, 6, LogEnd { epoch: 0, lsn: 3 }));
        assert!(holds(&history, 6, LogEnd { epoch: 0, lsn: 0 }));
        assert!(
            !holds(&history, 6, LogEnd { epoch: 3, lsn: 7 }),
            "past the end"
        );
        assert!(
            !holds(&history, 6, LogEnd { epoch: 2, lsn: 5 }),
            "other epoch"
        );
        assert!(
            !holds(&history, 6, LogEnd { epoch: 0, lsn: 4 }),
            "other epoch"
        );
    }

    #[test]
    fn a_deposed_leaders_tail_is_cut_where_the_new_epoch_began() {
        // Both copied epoch 1 up to LSN 5; the old leader went on in epoch 1 to 9; the new
        // leader began epoch 2 at LSN 6.
        let old = [(1, 1)];
        let new = [(1, 1), (2, 6)];
        assert_eq!(divergence(&new, 12, &old, 9), 5);
        // The follower behind the new epoch's start keeps all it has.
        assert_eq!(divergence(&new, 12, &old, 4), 4);
        // Same history, follower behind or ahead (ahead cannot happen with durable-only
        // streaming, but the answer is still the shorter log).
        assert_eq!(divergence(&new, 12, &new, 7), 7);
        assert_eq!(divergence(&new, 7, &new, 12), 7);
        // Nothing in common.
        assert_eq!(divergence(&[(2, 1)], 5, &[(1, 1)], 5), 0);
        assert_eq!(divergence(&[], 0, &[(1, 1)], 5), 0);
    }

    /// Logs as a real cluster makes them: a sequence of leaders, each taking over some prefix
    /// of the previous leader's log (what it had copied), beginning a higher epoch and
    /// appending; a log of any node is then some prefix of some leader's log.
    fn cluster_logs() -> impl Strategy<Value = Vec<Vec<u64>>> {
        prop::collection::vec((0usize..12, 0usize..8), 1..8).prop_map(|reigns| {
            let mut leaders: Vec<Vec<u64>> = Vec::new();
            let mut log: Vec<u64> = Vec::new();
            for (epoch, (kept, written)) in reigns.into_iter().enumerate() {
                // The new leader held only a prefix of the last leader's log.
                log.truncate(kept.min(log.len()));
                log.extend(std::iter::repeat_n(epoch as u64 + 1, written));
                leaders.push(log.clone());
            }
            leaders
        })
    }

    proptest! {
        /// `divergence` is the longest common prefix of the two logs, for any two prefixes of
        /// any two leaders' logs.
        #[test]
        fn divergence_is_the_longest_common_prefix(
            leaders in cluster_logs(),
            picks in (any::<prop::sample::Index>(), any::<prop::sample::Index>(),
                      any::<prop::sample::Index>(), any::<prop::sample::Index>()),
        ) {
            let a = &leaders[picks.0.index(leaders.len())];
            let b = &leaders[picks.1.index(leaders.len())];
            let a = &a[..picks.2.index(a.len() + 1)];
            let b = &b[..picks.3.index(b.len() + 1)];
            let common = a.iter().zip(b).take_while(|(x, y)| x == y).count() as u64;
            let (ha, hb) = (history_of(a), history_of(b));
            prop_assert_eq!(divergence(&ha, a.len() as u64, &hb, b.len() as u64), common);
            prop_assert_eq!(divergence(&hb, b.len() as u64, &ha, a.len() as u64), common);
            let end = log_end(&hb, b.len() as u64);
            prop_assert_eq!(holds(&ha, a.len() as u64, end), common == b.len() as u64);
        }
    }
}
