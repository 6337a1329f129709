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
    pub value: InlineBytes,
    /// LSN of the write that set it: the key's revision for compare-and-set.
    pub revision: u64,
    /// HLC timestamp of that write.
    pub hlc: u64,
}

/// Longest key or value stored inline in the index.
pub const INLINE_BYTES_MAX: usize = 22;

/// Bytes as the index holds them (keys and values): short ones inline, in the B-tree node
/// itself, longer ones shared with the caller (reference-counted).
///
/// Why: the comparisons of a lookup then read the node's cache lines instead of one heap
/// allocation per key (the B-tree's key comparisons were a quarter of a small put's CPU), and
/// a small key or value costs no allocation of its own (cloning a `Bytes` made from a `Vec`
/// allocates its shared header). Measured: +6% durable 100 B puts, 236 → 203 B/key at 2 M keys
/// for inline keys alone.
#[derive(Clone)]
pub enum InlineBytes {
    /// Up to [`INLINE_BYTES_MAX`] bytes, in place.
    Inline {
        /// Bytes used.
        len: u8,
        /// The bytes, zero after `len`.
        bytes: [u8; INLINE_BYTES_MAX],
    },
    /// Longer: shared.
    Shared(Bytes),
}

const _: () = assert!(std::mem::size_of::<InlineBytes>() <= 32);
const _: () = assert!(INLINE_BYTES_MAX <= u8::MAX as usize);

impl InlineBytes {
    /// Short bytes inline; `None` if they are too long.
    fn inline(bytes: &[u8]) -> Option<Self> {
        let mut inline = [0u8; INLINE_BYTES_MAX];
        inline.get_mut(..bytes.len())?.copy_from_slice(bytes);
        Some(Self::Inline {
            len: bytes.len() as u8,
            bytes: inline,
        })
    }

    /// From a live write: shared with the caller when long.
    pub fn new(bytes: &Bytes) -> Self {
        Self::inline(bytes).unwrap_or_else(|| Self::Shared(bytes.clone()))
    }

    /// Copied out of a buffer (replay).
    pub fn copied(bytes: &[u8]) -> Self {
        Self::inline(bytes).unwrap_or_else(|| Self::Shared(Bytes::copy_from_slice(bytes)))
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        match self {
            Self::Inline { len, bytes } => &bytes[..*len as usize],
            Self::Shared(bytes) => bytes,
        }
    }

    /// As `Bytes`: a copy if inline (at most [`INLINE_BYTES_MAX`] bytes), else shared.
    pub fn to_bytes(&self) -> Bytes {
        match self {
            Self::Inline { .. } => Bytes::copy_from_slice(self.as_slice()),
            Self::Shared(bytes) => bytes.clone(),
        }
    }
}

impl From<Bytes> for InlineBytes {
    fn from(bytes: Bytes) -> Self {
        Self::inline(&bytes).unwrap_or(Self::Shared(bytes))
    }
}

impl std::ops::Deref for InlineBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl std::borrow::Borrow<[u8]> for InlineBytes {
    fn borrow(&self) -> &[u8] {
        self.as_slice()
    }
}

impl PartialEq for InlineBytes {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for InlineBytes {}

impl PartialOrd for InlineBytes {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for InlineBytes {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_slice().cmp(other.as_slice())
    }
}

impl std::fmt::Debug for InlineBytes {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "{:?}", self.as_slice())
    }
}

/// Entries at which a bucket splits in two: a full `hashbrown` table of 4,096 slots (7/8 of
/// them usable), so that a bucket's table never grows past that size and each half starts in
/// a table of the same size, about half full. Measured at 10 M keys: splitting at 2,048 instead
/// left tables half empty (199 bytes of RSS per key against 162 for the B-tree before).
const BUCKET_SPLIT_ENTRIES: usize = 3_584;

/// Deepest a bucket splits: past it (keys whose 64-bit hashes share 40 leading bits, which
/// random seeding makes unreachable) a bucket only grows.
const BUCKET_DEPTH_MAX: u32 = 40;

/// One collection's keys: a hash table in buckets, by extendible hashing. A directory of
/// `2^depth` slots, indexed by a key hash's top `depth` bits, points at buckets; a bucket of
/// local depth `d` holds every key whose hash starts with its `d`-bit prefix, in a
/// `hashbrown` table. A bucket past [`BUCKET_SPLIT_ENTRIES`] splits on its next bit (the
/// directory doubles when the bucket was as deep as it); buckets never merge.
///
/// Why not a B-tree ordered by key, as before session 9: a lookup among 100,000 keys walked
/// five levels of nodes, two or more cache misses each, and that was a quarter of a durable
/// 100-byte put's CPU (docs/perf.md). Here a lookup reads the directory (small, cached) and
/// one table slot. Why buckets rather than one table: a snapshot walks the index between
/// writes ([`Index::entries_after`]) and needs a position that stays meaningful while keys come
/// and go. A hash value is one: a bucket covers a fixed range of hashes, splitting only makes
/// ranges finer, so "every key whose hash is below `h`" names the same keys before and after
/// any write, and a walk that takes whole buckets in hash order returns each key present
/// throughout exactly once. Nothing reads keys in key order. The hash is seeded at random per
/// index (`foldhash`), so that colliding keys cannot be prepared in advance.
#[derive(Debug, Default)]
struct Keys {
    /// The directory's depth: it has `1 << depth` slots.
    depth: u32,
    /// Bucket indexes, by the top `depth` bits of a hash; empty until the first key.
    directory: Vec<u32>,
    buckets: Vec<Bucket>,
    len: usize,
}

#[derive(Debug)]
struct Bucket {
    /// How many leading hash bits all its keys share.
    depth: u32,
    table: hashbrown::HashTable<Stored>,
}

#[derive(Debug)]
struct Stored {
    key: InlineBytes,
    entry: Entry,
}

/// Hints the CPU to load the cache lines of `value` (a hint only: it never faults and has no
/// effect on what the program computes).
fn prefetch_read<T>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let first = std::ptr::from_ref(value).cast::<i8>();
        let last = first.wrapping_add(std::mem::size_of::<T>().saturating_sub(1));
        // SAFETY: a prefetch reads nothing the program sees and does not fault, whatever the
        // address; both addresses are within (or at the end of) a live reference's value.
        unsafe {
            _mm_prefetch(first, _MM_HINT_T0);
            _mm_prefetch(last, _MM_HINT_T0);
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}

/// The hash a bucket's table is given for a key of hash `hash`. `hashbrown` takes a slot's
/// 7-bit tag from the hash's top bits, which every key of a bucket shares (they chose the
/// bucket): given as is, every tag in a bucket is equal, and each probe compares keys, a cache
/// miss apiece (get 160 ns against 93 ns with this at 100,000 keys). Mixing the low bits into
/// the top ones gives back distinct tags; the low bits, which choose the slot, stay.
fn in_table(hash: u64) -> u64 {
    hash ^ (hash << 57)
}

impl Keys {
    fn bucket_of(&self, hash: u64) -> Option<usize> {
        let slot = if self.depth == 0 {
            0
        } else {
            (hash >> (64 - self.depth)) as usize
        };
        self.directory.get(slot).map(|&bucket| bucket as usize)
    }

    fn get(&self, hash: u64, key: &[u8]) -> Option<&Entry> {
        let bucket = &self.buckets[self.bucket_of(hash)?];
        bucket
            .table
            .find(in_table(hash), |stored| stored.key.as_slice() == key)
            .map(|stored| &stored.entry)
    }

    /// Sets `key` (of hash `hash`; `hash_of` hashes any key, to move keys when a table grows or a
    /// bucket splits); true if it is new.
    fn insert(
        &mut self,
        hash: u64,
        key: InlineBytes,
        entry: Entry,
        hash_of: &impl Fn(&[u8]) -> u64,
    ) -> bool {
        if self.directory.is_empty() {
            self.directory.push(0);
            self.buckets.push(Bucket {
                depth: 0,
                table: hashbrown::HashTable::new(),
            });
        }
        let index = self
            .bucket_of(hash)
            .expect("the directory covers every hash");
        let bucket = &mut self.buckets[index];
        if let Some(stored) = bucket
            .table
            .find_mut(in_table(hash), |stored| stored.key == key)
        {
            stored.entry = entry;
            return false;
        }
        bucket
            .table
            .insert_unique(in_table(hash), Stored { key, entry }, |stored| {
                in_table(hash_of(&stored.key))
            });
        self.len += 1;
        if bucket.table.len() >= BUCKET_SPLIT_ENTRIES && bucket.depth < BUCKET_DEPTH_MAX {
            self.split(index, hash_of);
        }
        true
    }

    /// Asks the CPU to bring in the table slots a lookup of `key` will read, without reading
    /// them: the probe runs over the control bytes (small, mostly cached) and stops at each
    /// candidate's address. See [`Index::prefetch`].
    fn prefetch(&self, hash: u64) {
        let Some(index) = self.bucket_of(hash) else {
            return;
        };
        // The closure is given each slot whose tag matches and answers "not this one", so the
        // probe goes on to the end without dereferencing a slot.
        let _ = self.buckets[index]
            .table
            .find(in_table(hash), |stored: &Stored| {
                prefetch_read(stored);
                false
            });
    }

    fn remove(&mut self, hash: u64, key: &[u8]) -> Option<Entry> {
        let index = self.bucket_of(hash)?;
        let found = self.buckets[index]
            .table
            .find_entry(in_table(hash), |stored| stored.key.as_slice() == key)
            .ok()?;
        let (stored, _) = found.remove();
        self.len -= 1;
        Some(stored.entry)
    }

    /// Splits bucket `index` on the hash bit after its prefix.
    fn split(&mut self, index: usize, hash_of: &impl Fn(&[u8]) -> u64) {
        let depth = self.buckets[index].depth;
        if depth == self.depth {
            // Slot `i` becomes slots `2i` and `2i + 1`: one more bit of the hash.
            self.directory = self
                .directory
                .iter()
                .flat_map(|&bucket| [bucket, bucket])
                .collect();
            self.depth += 1;
        }
        let bit = 63 - depth;
        let old = std::mem::take(&mut self.buckets[index].table);
        let (mut low, mut high) = (
            hashbrown::HashTable::with_capacity(BUCKET_SPLIT_ENTRIES),
            hashbrown::HashTable::with_capacity(BUCKET_SPLIT_ENTRIES),
        );
        for stored in old {
            let hash = hash_of(&stored.key);
            let side = if (hash >> bit) & 1 == 1 {
                &mut high
            } else {
                &mut low
            };
            side.insert_unique(in_table(hash), stored, |stored| {
                in_table(hash_of(&stored.key))
            });
        }
        self.buckets[index] = Bucket {
            depth: depth + 1,
            table: low,
        };
        let new = u32::try_from(self.buckets.len()).expect("fewer than 2^32 buckets");
        self.buckets.push(Bucket {
            depth: depth + 1,
            table: high,
        });
        // The slots of the old bucket whose split bit is set now name the new one.
        let shift = self.depth - 1 - depth;
        for (slot, bucket) in self.directory.iter_mut().enumerate() {
            if *bucket as usize == index && (slot >> shift) & 1 == 1 {
                *bucket = new;
            }
        }
    }

    /// The bucket holding hash `from`, and the end of its range of hashes (`None`: the last).
    fn bucket_from(&self, from: u64) -> Option<(&Bucket, Option<u64>)> {
        let bucket = &self.buckets[self.bucket_of(from)?];
        if bucket.depth == 0 {
            return Some((bucket, None));
        }
        let span = 1u64 << (64 - bucket.depth);
        let start = from & !(span - 1);
        Some((bucket, start.checked_add(span)))
    }
}

/// Where a snapshot's walk over an index stands ([`Index::entries_after`]): in `collection`,
/// the keys whose hash is at least `next` remain (`None`: none of that collection), then the
/// collections after it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexCursor {
    collection: String,
    next: Option<u64>,
}

/// All collections of one partition.
#[derive(Debug, Default)]
pub struct Index {
    collections: BTreeMap<String, Keys>,
    keys: usize,
    /// Seeds the hash that orders each collection's keys.
    hasher: foldhash::fast::RandomState,
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

    fn hash(&self, key: &[u8]) -> u64 {
        use std::hash::BuildHasher;
        self.hasher.hash_one(key)
    }

    /// Starts loading the memory a put or a read of `key` will touch, so that the cache miss
    /// overlaps work done before it (encoding and checksumming the WAL record).
    ///
    /// Why: a durable 100-byte put among 100,000 keys spent 17% of its CPU stalled on the
    /// one load of its key's table slot (`perf annotate` of `Index::put_key`, session 10);
    /// issued before the record is staged, that load runs beside the staging.
    pub fn prefetch(&self, collection: &str, key: &[u8]) {
        if let Some(keys) = self.collections.get(collection) {
            keys.prefetch(self.hash(key));
        }
    }

    /// A key's entry; `None` if the collection or key is missing.
    pub fn get(&self, collection: &str, key: &[u8]) -> Option<&Entry> {
        self.collections.get(collection)?.get(self.hash(key), key)
    }

    /// Creates a collection; false if it existed.
    pub fn create_collection(&mut self, name: &str) -> bool {
        if self.collections.contains_key(name) {
            return false;
        }
        self.collections.insert(name.to_string(), Keys::default());
        true
    }

    /// Drops a collection and its keys; false if it did not exist.
    pub fn drop_collection(&mut self, name: &str) -> bool {
        match self.collections.remove(name) {
            Some(keys) => {
                self.keys -= keys.len;
                true
            }
            None => false,
        }
    }

    /// Sets a key. The collection must exist unless `create` is set.
    pub fn put(&mut self, collection: &str, key: Bytes, entry: Entry, create: bool) {
        self.put_key(collection, InlineBytes::new(&key), entry, create);
    }

    fn put_key(&mut self, collection: &str, key: InlineBytes, entry: Entry, create: bool) {
        if create {
            self.create_collection(collection);
        }
        let hash = self.hash(&key);
        let hasher = &self.hasher;
        let hash_of = |key: &[u8]| {
            use std::hash::BuildHasher;
            hasher.hash_one(key)
        };
        let Some(keys) = self.collections.get_mut(collection) else {
            return;
        };
        if keys.insert(hash, key, entry, &hash_of) {
            self.keys += 1;
        }
    }

    /// Sets a key from a live write: the collection was checked to exist, the key and value
    /// are shared with the caller (reference-counted, not copied).
    pub fn put_live(&mut self, collection: &str, key: &Bytes, value: &Bytes, lsn: u64, hlc: u64) {
        let entry = Entry {
            value: InlineBytes::new(value),
            revision: lsn,
            hlc,
        };
        self.put_key(collection, InlineBytes::new(key), entry, false);
    }

    /// Removes a key; returns its entry if it was there.
    pub fn delete(&mut self, collection: &str, key: &[u8]) -> Option<Entry> {
        let hash = self.hash(key);
        let removed = self.collections.get_mut(collection)?.remove(hash, key);
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
            value: InlineBytes::copied(value),
            revision: meta.lsn,
            hlc: meta.hlc,
        };
        match operation {
            Operation::Put {
                collection,
                key,
                value,
            } => self.put_key(collection, InlineBytes::copied(key), entry(value), create),
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
                        } => {
                            self.put_key(collection, InlineBytes::copied(key), entry(value), create)
                        }
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

    /// Up to about `limit` entries after `cursor` (a bucket's keys come in the same call),
    /// cloned (long values are reference-counted, so this copies no value bytes), and the
    /// cursor to continue from; no entries once the walk is over. For snapshots that run
    /// between writes: a key present throughout the walk is returned exactly once, wherever
    /// writes land meanwhile, since the order (collection, then the key's hash) does not
    /// depend on what else is stored (see [`Keys`]).
    pub fn entries_after(
        &self,
        cursor: Option<&IndexCursor>,
        limit: usize,
    ) -> (Vec<(String, Bytes, Entry)>, Option<IndexCursor>) {
        let mut out = Vec::with_capacity(limit);
        let mut last = None;
        let collections: Box<dyn Iterator<Item = (&String, &Keys)>> = match cursor {
            None => Box::new(self.collections.iter()),
            Some(cursor) => Box::new(self.collections.range::<str, _>((
                Bound::Included(cursor.collection.as_str()),
                Bound::Unbounded,
            ))),
        };
        for (name, keys) in collections {
            let mut from = match cursor {
                Some(cursor) if cursor.collection == *name => match cursor.next {
                    Some(next) => next,
                    None => continue,
                },
                _ => 0,
            };
            while let Some((bucket, end)) = keys.bucket_from(from) {
                if out.len() >= limit {
                    let next = Some(from);
                    let collection = name.clone();
                    return (out, Some(IndexCursor { collection, next }));
                }
                let within = |hash: u64| hash >= from && end.is_none_or(|end| hash < end);
                out.extend(
                    bucket
                        .table
                        .iter()
                        .filter(|stored| within(self.hash(&stored.key)))
                        .map(|stored| {
                            let key = stored.key.to_bytes();
                            (name.clone(), key, stored.entry.clone())
                        }),
                );
                match end {
                    Some(end) => from = end,
                    None => break,
                }
            }
            last = Some(IndexCursor {
                collection: name.clone(),
                next: None,
            });
        }
        (out, last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry(revision: u64) -> Entry {
        Entry {
            value: InlineBytes::copied(&revision.to_le_bytes()),
            revision,
            hlc: 0,
        }
    }

    fn key(text: &str) -> InlineBytes {
        InlineBytes::copied(text.as_bytes())
    }

    /// The test's hash: spread over the top bits for numbers, a run sharing 30 leading bits
    /// for `run<n>`, and a collision of `other` with `3`.
    fn test_hash(key: &[u8]) -> u64 {
        let text = std::str::from_utf8(key).unwrap();
        let mix = |n: u64| n.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (n << 40);
        match text.strip_prefix("run") {
            Some(n) => 7 << 34 | n.parse::<u64>().unwrap(),
            None if text == "other" => mix(3),
            None => mix(text.parse().unwrap()),
        }
    }

    #[test]
    fn buckets_split_and_every_key_stays_found() {
        let mut keys = Keys::default();
        assert_eq!(keys.get(1, b"x"), None);
        assert_eq!(keys.remove(1, b"x"), None);
        keys.prefetch(1); // a hint: nothing to load in an empty directory
        let put = |keys: &mut Keys, text: &str, revision: u64| {
            keys.insert(
                test_hash(text.as_bytes()),
                key(text),
                entry(revision),
                &test_hash,
            )
        };
        fn get<'a>(keys: &'a Keys, text: &str) -> Option<&'a Entry> {
            keys.get(test_hash(text.as_bytes()), text.as_bytes())
        }
        let count = 5 * BUCKET_SPLIT_ENTRIES as u64;
        for n in 0..count {
            assert!(put(&mut keys, &n.to_string(), n));
        }
        for n in 0..64 {
            assert!(put(&mut keys, &format!("run{n}"), n));
        }
        assert!(keys.buckets.len() > 4, "{} buckets", keys.buckets.len());
        assert_eq!(keys.len as u64, count + 64);
        for n in 0..count {
            assert_eq!(get(&keys, &n.to_string()), Some(&entry(n)));
            assert!(!put(&mut keys, &n.to_string(), n + 1), "overwrite");
        }
        // Two keys of one hash are two keys.
        assert!(put(&mut keys, "other", 9));
        // A prefetch visits both slots of the shared hash and reads neither.
        keys.prefetch(test_hash(b"other"));
        assert_eq!(get(&keys, "3"), Some(&entry(4)));
        assert_eq!(get(&keys, "other"), Some(&entry(9)));
        assert_eq!(keys.remove(test_hash(b"other"), b"other"), Some(entry(9)));
        assert_eq!(get(&keys, "other"), None);
        for n in 0..count {
            let text = n.to_string();
            assert_eq!(
                keys.remove(test_hash(text.as_bytes()), text.as_bytes()),
                Some(entry(n + 1))
            );
        }
        assert_eq!(keys.len, 64);
        // Every bucket holds only hashes of its prefix, and the directory agrees.
        for (slot, &bucket) in keys.directory.iter().enumerate() {
            let bucket = &keys.buckets[bucket as usize];
            assert!(bucket.depth <= keys.depth);
            for stored in bucket.table.iter().filter(|_| bucket.depth > 0) {
                assert_eq!(
                    test_hash(&stored.key) >> (64 - bucket.depth),
                    slot as u64 >> (keys.depth - bucket.depth),
                    "slot {slot} of depth {}, bucket of depth {}",
                    keys.depth,
                    bucket.depth
                );
            }
        }
    }

    #[test]
    fn a_walk_while_buckets_split_returns_every_key_present_throughout_once() {
        let mut index = Index::default();
        index.create_collection("c");
        let put = |index: &mut Index, n: u32| {
            index.put(
                "c",
                Bytes::from(format!("k{n}")),
                entry(u64::from(n)),
                false,
            );
        };
        let initial = 20_000;
        for n in 0..initial {
            put(&mut index, n);
        }
        let buckets_before = index.collections["c"].buckets.len();
        let mut seen = std::collections::HashMap::new();
        let mut cursor = None;
        let mut added = initial;
        loop {
            let (chunk, next) = index.entries_after(cursor.as_ref(), 700);
            if chunk.is_empty() {
                break;
            }
            for (_, key, _) in chunk {
                *seen.entry(key).or_insert(0) += 1;
            }
            cursor = next;
            // Enough new keys between chunks that buckets split under the walk, and some of
            // the initial keys deleted.
            for _ in 0..1_500 {
                put(&mut index, added);
                added += 1;
            }
            index.delete("c", format!("k{}", added % initial).as_bytes());
        }
        let deleted: std::collections::BTreeSet<u32> = (initial..added)
            .step_by(1_500)
            .map(|n| (n + 1_500) % initial)
            .collect();
        assert!(
            seen.values().all(|&count| count == 1),
            "a key returned twice"
        );
        for n in (0..initial).filter(|n| !deleted.contains(n)) {
            assert_eq!(seen.get(format!("k{n}").as_bytes()), Some(&1), "k{n}");
        }
        let buckets_after = index.collections["c"].buckets.len();
        assert!(
            buckets_after > buckets_before,
            "buckets split under the walk: {buckets_before} -> {buckets_after}"
        );
    }

    proptest! {
        /// A snapshot's walk, with writes between its chunks: every key present from the walk's
        /// start to its end is returned exactly once, with an entry it held meanwhile; nothing
        /// is returned that was never stored.
        #[test]
        fn a_walk_between_writes_returns_every_key_present_throughout_once(
            initial in proptest::collection::vec(0u16..400, 0..300),
            writes in proptest::collection::vec((any::<bool>(), 0u16..400), 0..400),
            limit in 1usize..40,
        ) {
            let mut index = Index::default();
            index.create_collection("a");
            index.create_collection("b");
            let name = |n: u16| if n.is_multiple_of(3) { "a" } else { "b" };
            let put = |index: &mut Index, n: u16, revision: u64| {
                index.put(name(n), Bytes::from(format!("k{n}")), entry(revision), false);
            };
            for (at, n) in initial.iter().enumerate() {
                put(&mut index, *n, at as u64);
            }
            let mut touched = std::collections::BTreeSet::new();
            let mut seen = Vec::new();
            let mut cursor = None;
            let mut writes = writes.into_iter();
            loop {
                let (chunk, next) = index.entries_after(cursor.as_ref(), limit);
                if chunk.is_empty() {
                    break;
                }
                seen.extend(chunk.into_iter().map(|(collection, key, _)| (collection, key)));
                cursor = next;
                // A few writes between chunks.
                for (delete, n) in writes.by_ref().take(3) {
                    touched.insert(n);
                    if delete {
                        index.delete(name(n), format!("k{n}").as_bytes());
                    } else {
                        put(&mut index, n, 1000 + u64::from(n));
                    }
                }
            }
            let mut unique = seen.clone();
            unique.sort();
            unique.dedup();
            prop_assert_eq!(unique.len(), seen.len(), "a key returned twice");
            for n in initial.iter().filter(|n| !touched.contains(n)) {
                let wanted = (name(*n).to_string(), Bytes::from(format!("k{n}")));
                prop_assert!(unique.contains(&wanted), "k{} missed", n);
            }
            for (_, key) in &unique {
                let n: u16 = std::str::from_utf8(&key[1..]).unwrap().parse().unwrap();
                prop_assert!(initial.contains(&n) || touched.contains(&n));
            }
        }
    }
}
