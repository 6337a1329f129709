//! Idempotent writes: which client requests a partition has already applied, so that a retry
//! (same [`RequestId`]) is answered with the first attempt's outcome instead of being applied a
//! second time.
//!
//! Why the engine keeps this and not the server: a retry can arrive after the node restarted,
//! so the table must survive restarts. It does without a file of its own: every write that
//! carries a request id has it in its WAL record (the record header's request flag), recovery
//! rebuilds the table while it replays the WAL, and snapshots copy the table (records of kind
//! `ClientRequests`) so that pruned segments do not take it with them. Truncation rebuilds the
//! table like the rest of the state, so a cut write is no longer "applied" and its retry is.
//!
//! Bounds (style.md rule 5): per client, the [`REQUEST_WINDOW_PER_CLIENT`] newest requests are
//! remembered; a request older than the window is refused ([`Lookup::TooOld`]: its outcome is
//! unknown, so it must be neither applied nor reported as done). At most
//! [`REQUEST_CLIENTS_MAX`] clients per partition are remembered; beyond that the client that
//! wrote least recently is forgotten, and a retry of one of its requests would apply again.
//! Kafka's idempotent producer has the same limit (producer state expires); docs/storage.md
//! says so.

use crate::constants::{REQUEST_CLIENTS_MAX, REQUEST_WINDOW_PER_CLIENT};
use std::collections::{HashMap, VecDeque};

/// Identifies one logical client write across its retries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId {
    /// The client (chosen by the client, unique per client process).
    pub client: u64,
    /// The client's sequence number of this write; a retry reuses it.
    pub sequence: u64,
}

/// Where a request stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// Never seen: apply it.
    New,
    /// Applied by the record at `lsn` with timestamp `hlc`: answer that, apply nothing.
    Duplicate {
        /// LSN of the record that applied it.
        lsn: u64,
        /// Its HLC timestamp.
        hlc: u64,
    },
    /// Older than the client's window: whether it was applied is no longer known.
    TooOld,
}

/// One client's applied requests: sequence → (LSN, HLC) of the record that applied it, in
/// ascending sequence order.
///
/// A sorted ring rather than a search tree: a client numbers its writes in order, so nearly
/// every lookup is of a sequence above the newest (answered by one comparison with the ring's
/// last entry), nearly every insert is a push at the back, and forgetting the oldest is a pop
/// at the front. A put touched about eight cache lines of a `BTreeMap` for its lookup and
/// note; the ring touches two or three (session 19: `RequestTable::lookup` alone was 4% of a
/// busy shard's CPU at 64 clients and 64 partitions). Out-of-order sequences (a client's
/// concurrent writes to one partition) are found and placed by binary search.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AppliedRequests {
    entries: VecDeque<(u64, (u64, u64))>,
}

impl AppliedRequests {
    /// The (LSN, HLC) that applied `sequence`, if remembered.
    pub fn get(&self, sequence: u64) -> Option<(u64, u64)> {
        match self.entries.back() {
            None => return None,
            Some(&(last, _)) if sequence > last => return None,
            Some(_) => {}
        }
        self.entries
            .binary_search_by_key(&sequence, |&(sequence, _)| sequence)
            .ok()
            .map(|at| self.entries[at].1)
    }

    /// Remembers `sequence` as applied at `at` (replacing what it had).
    pub fn insert(&mut self, sequence: u64, at: (u64, u64)) {
        if self.entries.back().is_none_or(|&(last, _)| sequence > last) {
            self.entries.push_back((sequence, at));
            return;
        }
        match self
            .entries
            .binary_search_by_key(&sequence, |&(sequence, _)| sequence)
        {
            Ok(found) => self.entries[found].1 = at,
            Err(place) => self.entries.insert(place, (sequence, at)),
        }
    }

    /// Forgets the lowest sequence and returns it.
    pub fn pop_first(&mut self) -> Option<(u64, (u64, u64))> {
        self.entries.pop_front()
    }

    /// The highest sequence and where it was applied.
    pub fn last(&self) -> Option<(u64, (u64, u64))> {
        self.entries.back().copied()
    }

    /// Sequences remembered.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether none is remembered.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every remembered sequence with its (LSN, HLC), ascending.
    pub fn iter(&self) -> impl Iterator<Item = (u64, (u64, u64))> + '_ {
        self.entries.iter().copied()
    }
}

impl FromIterator<(u64, (u64, u64))> for AppliedRequests {
    fn from_iter<I: IntoIterator<Item = (u64, (u64, u64))>>(entries: I) -> Self {
        let mut applied = AppliedRequests::default();
        for (sequence, at) in entries {
            applied.insert(sequence, at);
        }
        applied
    }
}

/// One client's remembered requests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientWindow {
    /// The newest [`REQUEST_WINDOW_PER_CLIENT`] sequences applied.
    pub applied: AppliedRequests,
    /// Sequences at or below this that are not in `applied` were forgotten (`None`: none
    /// were).
    pub forgotten_up_to: Option<u64>,
    /// LSN of this client's newest applied request.
    pub last_lsn: u64,
}

/// A partition's applied requests.
#[derive(Clone, Debug, Default)]
pub struct RequestTable {
    clients: HashMap<u64, ClientWindow>,
}

impl RequestTable {
    /// Where request `id` stands.
    pub fn lookup(&self, id: RequestId) -> Lookup {
        let Some(window) = self.clients.get(&id.client) else {
            return Lookup::New;
        };
        if let Some((lsn, hlc)) = window.applied.get(id.sequence) {
            return Lookup::Duplicate { lsn, hlc };
        }
        if window
            .forgotten_up_to
            .is_some_and(|forgotten| id.sequence <= forgotten)
        {
            return Lookup::TooOld;
        }
        Lookup::New
    }

    /// Notes that the record at `lsn` applied request `id`. Idempotent (replay may note a
    /// request twice: once from a snapshot, once from the WAL).
    pub fn note_applied(&mut self, id: RequestId, lsn: u64, hlc: u64) {
        if !self.clients.contains_key(&id.client) && self.clients.len() >= REQUEST_CLIENTS_MAX {
            self.forget_least_recent_client();
        }
        let window = self.clients.entry(id.client).or_default();
        window.applied.insert(id.sequence, (lsn, hlc));
        window.last_lsn = window.last_lsn.max(lsn);
        while window.applied.len() > REQUEST_WINDOW_PER_CLIENT {
            let (oldest, _) = window.applied.pop_first().expect("over the window");
            window.forgotten_up_to = Some(window.forgotten_up_to.map_or(oldest, |f| f.max(oldest)));
        }
    }

    /// Loads one client's window from a snapshot (merging with what is there).
    pub fn load_client(&mut self, client: u64, window: ClientWindow) {
        for (sequence, (lsn, hlc)) in window.applied.iter() {
            self.note_applied(RequestId { client, sequence }, lsn, hlc);
        }
        if let Some(forgotten) = window.forgotten_up_to {
            if let Some(entry) = self.clients.get_mut(&client) {
                entry.forgotten_up_to = Some(
                    entry
                        .forgotten_up_to
                        .map_or(forgotten, |f| f.max(forgotten)),
                );
            }
        }
    }

    /// Every client's window, by client id (for snapshots).
    pub fn clients(&self) -> impl Iterator<Item = (&u64, &ClientWindow)> {
        self.clients.iter()
    }

    /// Clients remembered.
    pub fn len(&self) -> usize {
        self.clients.len()
    }

    /// Whether no client is remembered.
    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }

    fn forget_least_recent_client(&mut self) {
        // O(clients), and only when a new client arrives with the table full.
        if let Some(client) = self
            .clients
            .iter()
            .min_by_key(|(client, window)| (window.last_lsn, **client))
            .map(|(client, _)| *client)
        {
            self.clients.remove(&client);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    proptest! {
        /// The sorted ring answers like an ordered map under any mix of in-order and
        /// out-of-order inserts, replacements, pops of the oldest and lookups.
        #[test]
        fn applied_requests_behave_like_an_ordered_map(
            steps in proptest::collection::vec((0u8..4, 0u64..64, any::<u64>()), 0..300)
        ) {
            let mut ring = AppliedRequests::default();
            let mut model = BTreeMap::new();
            let mut next = 0u64;
            for (step, sequence, at) in steps {
                match step {
                    // In order, as clients mostly write.
                    0 => {
                        next += 1 + sequence % 3;
                        ring.insert(next, (at, !at));
                        model.insert(next, (at, !at));
                    }
                    // Anywhere, a replacement included.
                    1 => {
                        ring.insert(sequence, (at, !at));
                        model.insert(sequence, (at, !at));
                    }
                    2 => prop_assert_eq!(ring.pop_first(), model.pop_first()),
                    _ => prop_assert_eq!(ring.get(sequence), model.get(&sequence).copied()),
                }
                prop_assert_eq!(ring.len(), model.len());
                prop_assert_eq!(ring.last(), model.last_key_value().map(|(&s, &at)| (s, at)));
            }
            prop_assert!(ring.iter().eq(model.into_iter()));
        }
    }

    fn id(client: u64, sequence: u64) -> RequestId {
        RequestId { client, sequence }
    }

    #[test]
    fn a_noted_request_is_a_duplicate_and_others_are_new() {
        let mut table = RequestTable::default();
        assert_eq!(table.lookup(id(1, 5)), Lookup::New);
        table.note_applied(id(1, 5), 10, 100);
        assert_eq!(
            table.lookup(id(1, 5)),
            Lookup::Duplicate { lsn: 10, hlc: 100 }
        );
        assert_eq!(table.lookup(id(1, 4)), Lookup::New, "out of order is fine");
        assert_eq!(table.lookup(id(2, 5)), Lookup::New);
    }

    #[test]
    fn requests_older_than_the_window_are_too_old() {
        let mut table = RequestTable::default();
        let window = REQUEST_WINDOW_PER_CLIENT as u64;
        for sequence in 0..window + 3 {
            table.note_applied(id(1, sequence), sequence + 1, 0);
        }
        assert_eq!(table.lookup(id(1, 0)), Lookup::TooOld);
        assert_eq!(table.lookup(id(1, 2)), Lookup::TooOld);
        assert!(matches!(table.lookup(id(1, 3)), Lookup::Duplicate { .. }));
        assert_eq!(table.lookup(id(1, window + 3)), Lookup::New);
    }

    #[test]
    fn the_least_recent_client_is_forgotten_when_full() {
        let mut table = RequestTable::default();
        for client in 0..REQUEST_CLIENTS_MAX as u64 {
            table.note_applied(id(client, 0), client + 1, 0);
        }
        table.note_applied(id(u64::MAX, 0), 1_000_000, 0);
        assert_eq!(table.len(), REQUEST_CLIENTS_MAX);
        assert_eq!(
            table.lookup(id(0, 0)),
            Lookup::New,
            "client 0 wrote least recently"
        );
        assert!(matches!(table.lookup(id(1, 0)), Lookup::Duplicate { .. }));
    }

    #[test]
    fn loading_a_window_keeps_what_was_forgotten() {
        let mut table = RequestTable::default();
        let mut window = ClientWindow::default();
        window.applied.insert(9, (20, 2));
        window.forgotten_up_to = Some(7);
        window.last_lsn = 20;
        table.load_client(3, window);
        assert_eq!(
            table.lookup(id(3, 9)),
            Lookup::Duplicate { lsn: 20, hlc: 2 }
        );
        assert_eq!(table.lookup(id(3, 6)), Lookup::TooOld);
        assert_eq!(table.lookup(id(3, 8)), Lookup::New);
    }
}
