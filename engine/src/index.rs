//! A partition's in-memory state: collections of keys, each key with its latest value, its
//! revision (the LSN of the write that set it) and its HLC timestamp.
//!
//! Applying a record is idempotent and absolute (a put sets, a delete removes, a drop empties),
//! which is what lets a snapshot be taken while writes go on: replaying the WAL from the
//! snapshot's start over any mix of older and newer entries ends in the same state.

use crate::record::{BatchOperation, Operation, RecordRef};
use crate::requests::RequestTable;
use bytes::Bytes;
use std::collections::BTreeMap;
use std::ops::Bound;

/// A key's stored value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The value.
    pub value: Bytes,
    /// LSN of the write that set it: the key's revision for compare-and-set.
    pub revision: u64,
    /// HLC timestamp of that write.
    pub hlc: u64,
}

/// All collections of one partition.
#[derive(Default, Debug)]
pub struct Index {
    collections: BTreeMap<String, BTreeMap<Bytes, Entry>>,
    keys: usize,
    /// Client requests applied (for idempotent retries); rebuilt with the rest of the state.
    requests: RequestTable,
}

/// How a replayed record is applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplaySource {
    /// From the WAL: a put into a collection that does not exist was followed by its drop.
    Wal,
    /// From a snapshot: a put may come before its collection (created while the snapshot ran).
    Snapshot,
}

impl Index {
    /// The client requests applied.
    pub fn requests(&self) -> &RequestTable {
        &self.requests
    }

    /// The client requests applied, to note a live write's.
    pub fn requests_mut(&mut self) -> &mut RequestTable {
        &mut self.requests
    }

    /// Whether a collection exists.
    pub fn has_collection(&self, name: &str) -> bool {
        self.collections.contains_key(name)
    }

    /// Collection names, sorted.
    pub fn collection_names(&self) -> Vec<String> {
        self.collections.keys().cloned().collect()
    }

    /// Number of keys in all collections.
    pub fn len(&self) -> usize {
        self.keys
    }

    /// Whether no key is stored.
    pub fn is_empty(&self) -> bool {
        self.keys == 0
    }

    /// A key's entry; `None` if the collection or key is missing.
    pub fn get(&self, collection: &str, key: &[u8]) -> Option<&Entry> {
        self.collections.get(collection)?.get(key)
    }

    /// Creates a collection; false if it existed.
    pub fn create_collection(&mut self, name: &str) -> bool {
        if self.collections.contains_key(name) {
            return false;
        }
        self.collections.insert(name.to_string(), BTreeMap::new());
        true
    }

    /// Drops a collection and its keys; false if it did not exist.
    pub fn drop_collection(&mut self, name: &str) -> bool {
        match self.collections.remove(name) {
            Some(keys) => {
                self.keys -= keys.len();
                true
            }
            None => false,
        }
    }

    /// Sets a key. The collection must exist unless `create` is set.
    pub fn put(&mut self, collection: &str, key: Bytes, entry: Entry, create: bool) {
        if create {
            self.create_collection(collection);
        }
        let Some(keys) = self.collections.get_mut(collection) else {
            return;
        };
        if keys.insert(key, entry).is_none() {
            self.keys += 1;
        }
    }

    /// Sets a key from a live write: the collection was checked to exist, the key and value
    /// are shared with the caller (reference-counted, not copied).
    pub fn put_live(&mut self, collection: &str, key: &Bytes, value: &Bytes, lsn: u64, hlc: u64) {
        let entry = Entry {
            value: value.clone(),
            revision: lsn,
            hlc,
        };
        self.put(collection, key.clone(), entry, false);
    }

    /// Removes a key; returns its entry if it was there.
    pub fn delete(&mut self, collection: &str, key: &[u8]) -> Option<Entry> {
        let removed = self.collections.get_mut(collection)?.remove(key);
        if removed.is_some() {
            self.keys -= 1;
        }
        removed
    }

    /// Applies a replayed record, copying keys and values out of the read buffer.
    pub fn apply_record(&mut self, record: RecordRef<'_>, source: ReplaySource) {
        let meta = record.header.meta();
        let Ok(operation) = record.operation() else {
            // Bodies were crc-checked; an undecodable one is a format bug, not disk damage.
            panic!(
                "record at LSN {} has a valid crc but an undecodable body",
                meta.lsn
            );
        };
        if let Some(request) = record.request_id() {
            self.requests.note_applied(request, meta.lsn, meta.hlc);
        }
        let create = source == ReplaySource::Snapshot;
        let entry = |value: &[u8]| Entry {
            value: Bytes::copy_from_slice(value),
            revision: meta.lsn,
            hlc: meta.hlc,
        };
        match operation {
            Operation::Put {
                collection,
                key,
                value,
            } => self.put(
                collection,
                Bytes::copy_from_slice(key),
                entry(value),
                create,
            ),
            Operation::Delete { collection, key } => {
                self.delete(collection, key);
            }
            Operation::CreateCollection { name } => {
                self.create_collection(name);
            }
            Operation::DropCollection { name } => {
                self.drop_collection(name);
            }
            Operation::Batch(operations) => {
                for operation in operations {
                    match operation {
                        BatchOperation::Put {
                            collection,
                            key,
                            value,
                        } => self.put(
                            collection,
                            Bytes::copy_from_slice(key),
                            entry(value),
                            create,
                        ),
                        BatchOperation::Delete { collection, key } => {
                            self.delete(collection, key);
                        }
                    }
                }
            }
            Operation::ClientRequests(clients) => {
                for (client, window) in clients {
                    self.requests.load_client(client, window);
                }
            }
            Operation::EpochStart
            | Operation::SnapshotBegin { .. }
            | Operation::SnapshotEnd { .. } => {}
        }
    }

    /// Up to `limit` entries after `cursor` in (collection, key) order, cloned (values are
    /// reference-counted, so this copies no value bytes). For snapshots that run between writes.
    pub fn entries_after(
        &self,
        cursor: Option<&(String, Bytes)>,
        limit: usize,
    ) -> Vec<(String, Bytes, Entry)> {
        let mut out = Vec::with_capacity(limit);
        let collections: Box<dyn Iterator<Item = (&String, &BTreeMap<Bytes, Entry>)>> = match cursor
        {
            None => Box::new(self.collections.iter()),
            Some((collection, _)) => Box::new(
                self.collections
                    .range::<str, _>((Bound::Included(collection.as_str()), Bound::Unbounded)),
            ),
        };
        for (name, keys) in collections {
            let range: Box<dyn Iterator<Item = (&Bytes, &Entry)>> = match cursor {
                Some((collection, key)) if collection == name => {
                    Box::new(keys.range::<[u8], _>((Bound::Excluded(&key[..]), Bound::Unbounded)))
                }
                _ => Box::new(keys.iter()),
            };
            for (key, entry) in range {
                if out.len() == limit {
                    return out;
                }
                out.push((name.clone(), key.clone(), entry.clone()));
            }
        }
        out
    }
}
