//! One device flush shared by the flushes of a shard's partitions (docs/storage.md, "One sync
//! for a shard's partitions").
//!
//! Each partition has its own log and its own group-commit writer, so with many partitions and
//! few writes each (64 network clients writing random keys into 64 partitions), every flush
//! carries about one record and the shard issues one sync per partition where a single log
//! would issue one for all of them. The writes themselves are cheap; the device flush each
//! sync waits for is not.
//!
//! A sync of one file makes durable more than that file: the file system flushes the device's
//! write cache (ext4 and XFS issue the flush even when the file has nothing of its own to
//! commit: `rt::device_flush_domain` says which file systems, a test checks it on the disk),
//! and every write the device completed before that flush began is durable after it. What it
//! does not make durable is another file's *metadata*: a write into never-written
//! (fallocated) blocks converts their extents, which only that file's own sync commits. So a
//! partition's flush joins a shared round only when every block it writes was written and
//! synced before ([`crate::wal::Wal::take_flush`] decides); otherwise it syncs its own file.
//!
//! Rounds: a flush whose writes completed joins the next round to begin. Up to
//! [`SYNC_ROUNDS_IN_FLIGHT_MAX`] rounds run at once, each a sync of the file of the flush that
//! opened it; a flush arriving while that many run waits in the pending round, which begins
//! when one of them ends, so every waiter's round began after its writes completed.

use crate::constants::SYNC_ROUNDS_IN_FLIGHT_MAX;
use crate::rt;
use futures::channel::oneshot;
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;

/// A device flush, not yet begun.
pub type Flush = Pin<Box<dyn Future<Output = io::Result<()>>>>;

/// What a round's waiters learn: `Ok`, or the sync's error (an `io::Error` is not `Clone`).
type RoundOutcome = Result<(), (io::ErrorKind, String)>;

/// The round that begins next, with the flushes waiting for it.
struct Pending {
    flush: Flush,
    waiters: Vec<oneshot::Sender<RoundOutcome>>,
}

/// The rounds of one flush domain (one device).
struct Domain {
    id: u64,
    running: usize,
    pending: Option<Pending>,
}

/// Counters of a shard's shared syncs, since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SharedSyncStats {
    /// Device flushes issued for shared rounds.
    pub rounds: u64,
    /// Partition flushes those rounds made durable.
    pub flushes: u64,
}

/// A shard's shared device flushes (see the module docs). Clones share the state; it lives on
/// one shard.
#[derive(Clone, Default)]
pub struct SharedSync {
    domains: Rc<RefCell<Vec<Domain>>>,
    rounds: Rc<Cell<u64>>,
    flushes: Rc<Cell<u64>>,
    disabled: bool,
    in_flight: Rc<Cell<usize>>,
}

/// One of a shard's flushes in flight (any partition's, shared or not), counted while it
/// lives.
pub struct FlushInFlight(Rc<Cell<usize>>);

impl Drop for FlushInFlight {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

impl SharedSync {
    /// A coordinator that never shares: every flush syncs its own file (the engine's
    /// `shared_sync = false`).
    pub fn disabled() -> Self {
        Self {
            disabled: true,
            ..Self::default()
        }
    }

    /// Whether flushes may share rounds at all.
    pub fn enabled(&self) -> bool {
        !self.disabled
    }

    /// Counts a flush in flight until the returned token is dropped.
    pub fn count_flush(&self) -> FlushInFlight {
        self.in_flight.set(self.in_flight.get() + 1);
        FlushInFlight(self.in_flight.clone())
    }

    /// Flushes of the shard's partitions in flight now.
    pub fn flushes_in_flight(&self) -> usize {
        self.in_flight.get()
    }

    /// Counters since the shard started.
    pub fn stats(&self) -> SharedSyncStats {
        SharedSyncStats {
            rounds: self.rounds.get(),
            flushes: self.flushes.get(),
        }
    }

    /// Returns once a device flush of `domain` that began after this call has ended: every
    /// write into written, synced blocks of the domain's files that completed before the
    /// call is then durable. `flush` makes the sync to issue if this call opens a round (a
    /// sync of the caller's own file); it is not called otherwise.
    pub async fn cover(&self, domain: u64, flush: impl FnOnce() -> Flush) -> io::Result<()> {
        let (sender, receiver) = oneshot::channel();
        let opens = {
            let mut domains = self.domains.borrow_mut();
            let index = match domains.iter().position(|known| known.id == domain) {
                Some(index) => index,
                None => {
                    domains.push(Domain {
                        id: domain,
                        running: 0,
                        pending: None,
                    });
                    domains.len() - 1
                }
            };
            let state = &mut domains[index];
            self.flushes.set(self.flushes.get() + 1);
            if state.running < SYNC_ROUNDS_IN_FLIGHT_MAX {
                state.running += 1;
                Some(Pending {
                    flush: flush(),
                    waiters: vec![sender],
                })
            } else {
                match &mut state.pending {
                    Some(pending) => pending.waiters.push(sender),
                    None => {
                        state.pending = Some(Pending {
                            flush: flush(),
                            waiters: vec![sender],
                        })
                    }
                }
                None
            }
        };
        // Spawned only now: glommio runs a spawned task at once, and the round borrows the
        // state when it ends.
        if let Some(round) = opens {
            rt::spawn_detached(self.clone().run(domain, round));
        }
        match receiver.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err((kind, message))) => Err(io::Error::new(kind, message)),
            Err(oneshot::Canceled) => Err(io::Error::other(
                "the shard stopped while a shared sync was in flight",
            )),
        }
    }

    /// Runs a round, then the pending one while there is one.
    async fn run(self, domain: u64, first: Pending) {
        let mut round = first;
        loop {
            self.rounds.set(self.rounds.get() + 1);
            let outcome = round
                .flush
                .await
                .map_err(|error| (error.kind(), error.to_string()));
            for waiter in round.waiters {
                let _gone = waiter.send(outcome.clone());
            }
            let next = {
                let mut domains = self.domains.borrow_mut();
                let state = domains
                    .iter_mut()
                    .find(|known| known.id == domain)
                    .expect("a running round's domain");
                let next = state.pending.take();
                if next.is_none() {
                    state.running -= 1;
                }
                next
            };
            match next {
                Some(next) => round = next,
                None => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::yield_now;
    use std::cell::RefCell;

    /// A flush that records when it began and ended, in the order of a shared log.
    fn logged(log: &Rc<RefCell<Vec<String>>>, name: &str, turns: usize, fail: bool) -> Flush {
        let log = log.clone();
        let name = name.to_string();
        Box::pin(async move {
            log.borrow_mut().push(format!("begin {name}"));
            for _ in 0..turns {
                yield_now().await;
            }
            log.borrow_mut().push(format!("end {name}"));
            if fail {
                Err(io::Error::from_raw_os_error(libc::EIO))
            } else {
                Ok(())
            }
        })
    }

    #[test]
    fn late_flushes_wait_for_a_round_that_begins_after_them() {
        rt::run_local(|| async {
            let sync = SharedSync::default();
            let log = Rc::new(RefCell::new(Vec::new()));
            let mut tasks = Vec::new();
            // Two rounds may run; the third and fourth callers share the pending round,
            // which the third caller's flush opens.
            for name in ["a", "b", "c", "d"] {
                let sync = sync.clone();
                // Long enough that the first two rounds still run when the last caller comes.
                let flush = logged(&log, name, 20, false);
                let log = log.clone();
                tasks.push(rt::spawn_local(async move {
                    sync.cover(7, move || flush).await.expect("sync");
                    log.borrow_mut().push(format!("covered {name}"));
                }));
                yield_now().await;
            }
            for task in tasks {
                task.await;
            }
            let log = log.borrow();
            let at = |entry: &str| log.iter().position(|seen| seen == entry).expect(entry);
            assert!(
                !log.iter()
                    .any(|entry| entry.ends_with(" d") && entry != "covered d"),
                "{log:?}"
            );
            assert!(at("begin c") > at("end a").min(at("end b")), "{log:?}");
            assert!(at("covered d") > at("end c"), "{log:?}");
            assert_eq!(
                sync.stats(),
                SharedSyncStats {
                    rounds: 3,
                    flushes: 4
                }
            );
        });
    }

    #[test]
    fn a_failed_round_fails_every_waiter_and_the_next_round_runs() {
        rt::run_local(|| async {
            let sync = SharedSync::default();
            let log = Rc::new(RefCell::new(Vec::new()));
            let mut tasks = Vec::new();
            for (name, fail) in [("a", true), ("b", false), ("c", false), ("d", false)] {
                let sync = sync.clone();
                let flush = logged(&log, name, 2, fail);
                tasks.push(rt::spawn_local(async move {
                    (name, sync.cover(1, move || flush).await)
                }));
                yield_now().await;
            }
            for task in tasks {
                let (name, result) = task.await;
                assert_eq!(result.is_err(), name == "a", "{name}: {result:?}");
            }
        });
    }

    #[test]
    fn domains_do_not_share_rounds() {
        rt::run_local(|| async {
            let sync = SharedSync::default();
            let log = Rc::new(RefCell::new(Vec::new()));
            let mut tasks = Vec::new();
            for (name, domain) in [("a", 1), ("b", 1), ("x", 2), ("y", 2)] {
                let sync = sync.clone();
                let flush = logged(&log, name, 2, false);
                tasks.push(rt::spawn_local(async move {
                    sync.cover(domain, move || flush).await.expect("sync")
                }));
            }
            for task in tasks {
                task.await;
            }
            // Two rounds per domain may run at once, so all four began.
            assert_eq!(sync.stats().rounds, 4);
        });
    }
}
