//! A leader's view of its followers for one partition: the durable LSN each has acknowledged,
//! and the writes waiting for enough of them (LSN waiters: `Quorum` and `All` writes).
//!
//! Plain state (style.md rule 1): acks go in with [`Progress::note_ack`] or
//! [`Progress::note_fetch`], questions come out ([`Progress::acked_by`],
//! [`Progress::in_sync`]); a waiting write registers its waker with [`Progress::poll_acked`]
//! and is woken when an ack may have satisfied it. No clock, no runtime: time comes in as
//! milliseconds from the caller. A leader's data shard owns one per partition it leads, and
//! the simulation drives the same code.
//!
//! A follower's ack is the durable LSN it names in its next sync request: it asks for the
//! records after its last durable one, so everything up to it is on its disk (its
//! `append_replicated` returned only once they were durable).
//!
//! **In sync** (Kafka's in-sync replicas, `replica.lag.time.max.ms`): a follower is in sync
//! while it has caught up within the last `lag_ms`. A fetch catches it up when it names an
//! LSN at least the leader's durable end at its previous fetch, so a follower that keeps
//! pulling under a steady write load stays in sync although it is never exactly at the end,
//! and one that stopped pulling, or cannot keep up, drops out. A write at `Quorum` or `All`
//! is refused up front (`NotEnoughReplicas`) when too few followers are in sync, instead of
//! waiting for acks that will not come.

use std::collections::BTreeMap;
use std::task::{Context, Poll, Waker};

/// Why a wait for acks ended without them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AckError {
    /// The partition has fewer followers than the wait needs: it can never be met with this
    /// replica set (refused up front as `NotEnoughReplicas`, never downgraded).
    #[error("{needed} follower acks needed, the partition has {followers} followers")]
    NotEnoughReplicas {
        /// Follower acks the write needs.
        needed: usize,
        /// Followers in the replica set.
        followers: usize,
    },
    /// The replica set changed (a new leadership map) while the write waited: whether enough
    /// replicas hold it is unknown to this leader (outcome `Unknown`).
    #[error("the partition's replica set changed while the write waited for acks")]
    ReplicaSetChanged,
}

/// What the leader knows of one follower.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Follower {
    /// The highest durable LSN it acknowledged.
    acked: u64,
    /// The leader's durable end when this follower last fetched.
    end_at_last_fetch: u64,
    /// When (caller's milliseconds) it last caught up; `None`: never since it joined.
    caught_up_at: Option<u64>,
}

/// Acks and waiters of one partition on its leader.
#[derive(Debug, Default)]
pub struct Progress {
    /// By follower node.
    acked: BTreeMap<u64, Follower>,
    /// Bumped when the replica set changes: waits registered before fail.
    generation: u64,
    /// `(lsn, follower acks needed, generation, waker)`.
    waiters: Vec<(u64, usize, u64, Waker)>,
}

impl Progress {
    /// Progress for a partition whose followers are `followers` (the leader excluded), none
    /// of which has acknowledged anything yet, each counted in sync from `now_ms` (a leader
    /// that just took the partition gives its followers `lag_ms` to show up, as Kafka's
    /// controller hands a new leader the in-sync set).
    pub fn new(followers: impl IntoIterator<Item = u64>, now_ms: u64) -> Self {
        Self {
            acked: followers
                .into_iter()
                .map(|node| (node, Follower::joined(now_ms)))
                .collect(),
            ..Self::default()
        }
    }

    /// The followers, by node id.
    pub fn followers(&self) -> impl Iterator<Item = u64> + '_ {
        self.acked.keys().copied()
    }

    /// What `follower` acknowledged; `None` if it is not a follower of this partition.
    pub fn acked(&self, follower: u64) -> Option<u64> {
        self.acked.get(&follower).map(|known| known.acked)
    }

    /// Notes that `follower` holds every record up to `lsn` durably. Acks only grow (a stale
    /// or reordered one changes nothing); an ack from a node outside the replica set is
    /// ignored. Wakes the waits it may satisfy. Returns whether anything changed.
    pub fn note_ack(&mut self, follower: u64, lsn: u64) -> bool {
        let Some(known) = self.acked.get_mut(&follower) else {
            return false;
        };
        if lsn <= known.acked {
            return false;
        }
        known.acked = lsn;
        let acked = &self.acked;
        self.waiters.retain(|(wanted, needed, _, waker)| {
            let done = acked
                .values()
                .filter(|known| known.acked >= *wanted)
                .count()
                >= *needed;
            if done {
                waker.wake_by_ref();
            }
            !done
        });
        true
    }

    /// A fetch from `follower` naming `lsn` as its last durable record (known to be on this
    /// leader's log), at `now_ms`, while the leader's durable end is `leader_end`: the ack of
    /// [`Progress::note_ack`], and the follower caught up if `lsn` reaches the leader's end at
    /// its previous fetch. Returns whether the ack changed anything.
    pub fn note_fetch(&mut self, follower: u64, lsn: u64, leader_end: u64, now_ms: u64) -> bool {
        let Some(known) = self.acked.get_mut(&follower) else {
            return false;
        };
        if lsn >= known.end_at_last_fetch {
            known.caught_up_at = Some(known.caught_up_at.map_or(now_ms, |at| at.max(now_ms)));
        }
        known.end_at_last_fetch = leader_end;
        self.note_ack(follower, lsn)
    }

    /// Followers that caught up within the last `lag_ms` before `now_ms`.
    pub fn in_sync(&self, now_ms: u64, lag_ms: u64) -> usize {
        self.acked
            .values()
            .filter(|known| {
                known
                    .caught_up_at
                    .is_some_and(|at| now_ms.saturating_sub(at) <= lag_ms)
            })
            .count()
    }

    /// The highest LSN that at least `count` followers hold (`u64::MAX` for 0: the leader's
    /// own durability is its WAL's business).
    pub fn acked_by(&self, count: usize) -> u64 {
        if count == 0 {
            return u64::MAX;
        }
        let mut lsns: Vec<u64> = self.acked.values().map(|known| known.acked).collect();
        if lsns.len() < count {
            return 0;
        }
        lsns.sort_unstable_by(|a, b| b.cmp(a));
        lsns[count - 1]
    }

    /// The lowest LSN every follower acknowledged (`u64::MAX` with no followers): the records
    /// after it are still needed by someone.
    pub fn acked_by_all(&self) -> u64 {
        self.acked
            .values()
            .map(|known| known.acked)
            .min()
            .unwrap_or(u64::MAX)
    }

    /// A new replica set (a new leadership map): followers kept keep what is known of them,
    /// new ones start at 0 and in sync from `now_ms` (see [`Progress::new`]), and every
    /// registered wait fails with [`AckError::ReplicaSetChanged`].
    pub fn set_followers(&mut self, followers: impl IntoIterator<Item = u64>, now_ms: u64) {
        let known = std::mem::take(&mut self.acked);
        self.acked = followers
            .into_iter()
            .map(|node| {
                let follower = known
                    .get(&node)
                    .copied()
                    .unwrap_or_else(|| Follower::joined(now_ms));
                (node, follower)
            })
            .collect();
        self.fail_waits();
    }

    /// Fails every registered wait with [`AckError::ReplicaSetChanged`] (the replica set
    /// changed, or this node no longer leads the partition).
    pub fn fail_waits(&mut self) {
        self.generation += 1;
        for (_, _, _, waker) in self.waiters.drain(..) {
            waker.wake();
        }
    }

    /// The current replica-set generation, to pass to [`Progress::poll_acked`] for the whole
    /// of one wait.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether `needed` followers hold `lsn`; if not, registers the waker to be woken when an
    /// ack may have changed that. `generation` is [`Progress::generation`] when the wait began.
    pub fn poll_acked(
        &mut self,
        lsn: u64,
        needed: usize,
        generation: u64,
        context: &mut Context<'_>,
    ) -> Poll<Result<(), AckError>> {
        if generation != self.generation {
            return Poll::Ready(Err(AckError::ReplicaSetChanged));
        }
        if needed > self.acked.len() {
            return Poll::Ready(Err(AckError::NotEnoughReplicas {
                needed,
                followers: self.acked.len(),
            }));
        }
        if self.acked_by(needed) >= lsn {
            return Poll::Ready(Ok(()));
        }
        let waker = context.waker();
        if !self
            .waiters
            .iter()
            .any(|(at, count, _, known)| *at == lsn && *count == needed && known.will_wake(waker))
        {
            self.waiters.push((lsn, needed, generation, waker.clone()));
        }
        Poll::Pending
    }
}

impl Follower {
    /// A follower just added to the replica set at `now_ms`.
    fn joined(now_ms: u64) -> Follower {
        Follower {
            caught_up_at: Some(now_ms),
            ..Follower::default()
        }
    }
}

/// Follower acks a write needs beyond the leader for a replica set of `replicas` (leader
/// included): `Quorum` is a majority of the set, `All` every member.
pub fn follower_acks_needed(quorum: bool, replicas: usize) -> usize {
    let total = if quorum { replicas / 2 + 1 } else { replicas };
    total.saturating_sub(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    struct Counter(AtomicUsize);
    impl Wake for Counter {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn counter() -> (Arc<Counter>, Waker) {
        let counter = Arc::new(Counter(AtomicUsize::new(0)));
        (counter.clone(), Waker::from(counter))
    }

    #[test]
    fn acks_only_grow_and_count_per_follower() {
        let mut progress = Progress::new([2, 3], 0);
        assert_eq!(progress.acked_by(1), 0);
        assert!(progress.note_ack(2, 10));
        assert!(!progress.note_ack(2, 7), "a stale ack changes nothing");
        assert!(!progress.note_ack(9, 50), "not a follower");
        assert_eq!(progress.acked(2), Some(10));
        assert_eq!(progress.acked_by(1), 10);
        assert_eq!(progress.acked_by(2), 0);
        progress.note_ack(3, 4);
        assert_eq!(progress.acked_by(2), 4);
        assert_eq!(progress.acked_by(3), 0, "more than there are followers");
        assert_eq!(progress.acked_by(0), u64::MAX);
    }

    #[test]
    fn a_wait_is_woken_by_the_ack_that_meets_it_and_fails_on_a_new_replica_set() {
        let mut progress = Progress::new([2, 3], 0);
        let (woken, waker) = counter();
        let mut context = Context::from_waker(&waker);
        let generation = progress.generation();
        assert!(progress
            .poll_acked(5, 2, generation, &mut context)
            .is_pending());
        assert!(progress
            .poll_acked(5, 2, generation, &mut context)
            .is_pending());
        assert_eq!(progress.waiters.len(), 1, "registered once");
        progress.note_ack(2, 9);
        assert_eq!(woken.0.load(Ordering::SeqCst), 0, "one ack of two");
        progress.note_ack(3, 5);
        assert_eq!(woken.0.load(Ordering::SeqCst), 1);
        assert_eq!(
            progress.poll_acked(5, 2, generation, &mut context),
            Poll::Ready(Ok(()))
        );
        assert_eq!(
            progress.poll_acked(1, 3, generation, &mut context),
            Poll::Ready(Err(AckError::NotEnoughReplicas {
                needed: 3,
                followers: 2
            }))
        );

        assert!(progress
            .poll_acked(20, 1, generation, &mut context)
            .is_pending());
        progress.set_followers([3, 4], 0);
        assert_eq!(woken.0.load(Ordering::SeqCst), 2);
        assert_eq!(
            progress.poll_acked(20, 1, generation, &mut context),
            Poll::Ready(Err(AckError::ReplicaSetChanged))
        );
        assert_eq!(progress.acked(3), Some(5), "kept");
        assert_eq!(progress.acked(4), Some(0), "new");
        assert_eq!(progress.acked(2), None, "gone");
    }

    #[test]
    fn a_follower_is_in_sync_while_it_keeps_reaching_the_end_of_the_previous_fetch() {
        const LAG: u64 = 1_000;
        let mut progress = Progress::new([2, 3], 0);
        assert_eq!(
            progress.in_sync(LAG, LAG),
            2,
            "a new follower gets the lag to show up"
        );
        assert_eq!(
            progress.in_sync(LAG + 1, LAG),
            0,
            "and drops out without a fetch"
        );

        // Follower 2 pulls under a steady load: never at the end, always at the end of the
        // previous fetch.
        progress.note_fetch(2, 0, 10, 1_500);
        progress.note_fetch(2, 10, 25, 1_600);
        progress.note_fetch(2, 25, 40, 2_400);
        assert_eq!(progress.in_sync(3_000, LAG), 1);
        assert_eq!(progress.acked(2), Some(25));
        // Follower 3 pulls but falls behind: it caught up once, at 1,500, and never again.
        progress.note_fetch(3, 0, 10, 1_500);
        progress.note_fetch(3, 5, 25, 1_600);
        progress.note_fetch(3, 20, 40, 2_600);
        assert_eq!(progress.in_sync(2_500, LAG), 2);
        assert_eq!(
            progress.in_sync(2_501, LAG),
            1,
            "3 lags by more than the limit"
        );
        assert_eq!(progress.in_sync(3_401, LAG), 0, "2 stopped fetching");

        // A kept follower keeps its standing in a new replica set; a new one starts afresh.
        progress.set_followers([2, 4], 3_000);
        assert_eq!(progress.in_sync(3_400, LAG), 2);
        assert_eq!(progress.in_sync(3_401, LAG), 1);
        assert_eq!(progress.acked(2), Some(25));
    }

    #[test]
    fn acks_needed_by_level() {
        assert_eq!(follower_acks_needed(true, 1), 0);
        assert_eq!(follower_acks_needed(true, 3), 1);
        assert_eq!(follower_acks_needed(true, 4), 2);
        assert_eq!(follower_acks_needed(true, 5), 2);
        assert_eq!(follower_acks_needed(false, 3), 2);
        assert_eq!(follower_acks_needed(false, 1), 0);
    }
}
