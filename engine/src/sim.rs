//! A simulated disk for tests (style.md rule 2): an in-memory directory whose files know which
//! bytes were written and which are durable.
//!
//! Every write lands in the file's volatile image; `sync` copies it to the durable image.
//! Directory changes (create, rename, remove) are durable only after `sync_dir`. [`SimDisk::crash`]
//! returns what a machine would find after a power cut: the durable images plus, chosen by a
//! seeded PRNG, some of the unsynced sectors (torn writes, reordered blocks) or none of them.
//! [`SimDisk::crash_at_sync`] freezes the disk at the n-th sync (of a file or of the directory):
//! that sync and every later operation fail, as if power went out at that moment.

use crate::io::{Storage, StorageFile, WriteBuffer};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::io;
use std::ops::{Deref, DerefMut};
use std::path::PathBuf;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

/// Sector size of the simulated device: the unit in which unsynced data survives or not.
pub const SIM_SECTOR_BYTES: usize = 512;

#[derive(Clone, Default)]
struct SimFile {
    volatile: Vec<u8>,
    durable: Vec<u8>,
    /// Sectors written since the last sync.
    dirty_sectors: BTreeSet<usize>,
    /// Sectors whose extent a sync of this file found written (`true`): an overwrite of them
    /// needs no metadata, so a device flush through any file makes it durable. Fallocated
    /// sectors are unwritten until then, as on ext4.
    committed: Vec<bool>,
}

impl SimFile {
    /// A file of `len` preallocated, never-written bytes.
    fn preallocated(len: usize) -> SimFile {
        SimFile {
            volatile: vec![0; len],
            // Preallocation is metadata: durable at once here, as a file system's fallocate
            // is once the file's metadata is synced; the directory entry is not.
            durable: vec![0; len],
            dirty_sectors: BTreeSet::new(),
            committed: Vec::new(),
        }
    }

    /// Marks `sector`'s extent written and synced.
    fn commit(&mut self, sector: usize) {
        if self.committed.len() <= sector {
            self.committed.resize(sector + 1, false);
        }
        self.committed[sector] = true;
    }

    fn is_committed(&self, sector: usize) -> bool {
        self.committed.get(sector).copied().unwrap_or(false)
    }

    /// Makes `sector` durable with `bytes` (its volatile bytes when it was captured).
    fn make_durable(&mut self, sector: usize, bytes: &[u8]) {
        let start = sector * SIM_SECTOR_BYTES;
        let end = start + bytes.len();
        if self.durable.len() < end {
            self.durable.resize(end, 0);
        }
        self.durable[start..end].copy_from_slice(bytes);
        if self.volatile[start..end] == *bytes {
            self.dirty_sectors.remove(&sector);
        }
    }

    /// The volatile bytes of a sector.
    fn sector_bytes(&self, sector: usize) -> Vec<u8> {
        let start = sector * SIM_SECTOR_BYTES;
        let end = (start + SIM_SECTOR_BYTES).min(self.volatile.len());
        self.volatile[start..end].to_vec()
    }
}

#[derive(Clone, Default)]
struct SimState {
    /// Files by inode number.
    inodes: BTreeMap<u64, SimFile>,
    next_inode: u64,
    /// The directory as processes see it.
    names: BTreeMap<String, u64>,
    /// The directory as it would be found after a crash.
    durable_names: BTreeMap<String, u64>,
    syncs: u64,
    crash_at_sync: Option<u64>,
    frozen: Option<Box<SimState>>,
    fail_writes_after: Option<u64>,
    fail_syncs_after: Option<u64>,
    writes: u64,
    /// Writes begun, for how long each stays in flight.
    writes_begun: u64,
    /// Device flushes (`sync_device`) so far.
    device_syncs: u64,
}

impl SimState {
    /// Counts a sync (of a file or a directory); at the crash point, freezes the disk as it is
    /// and fails, as every later operation will.
    fn count_sync(&mut self) -> io::Result<()> {
        self.syncs += 1;
        if self.crash_at_sync == Some(self.syncs) {
            let mut image = self.clone();
            image.frozen = None;
            self.frozen = Some(Box::new(image));
            return Err(powered_off());
        }
        Ok(())
    }
}

/// How a crash treats unsynced sectors.
#[derive(Clone, Copy, Debug)]
pub enum CrashMode {
    /// Every unsynced sector is lost.
    LoseUnsynced,
    /// Every unsynced sector survives.
    KeepUnsynced,
    /// Each unsynced sector survives or not by a coin flip from this seed; surviving sectors
    /// may also come back zeroed (an unwritten extent) where nothing had been synced before.
    /// A sector that held durable bytes comes back with its old or its new bytes, never zeros.
    Torn(u64),
}

/// An in-memory directory. Clones share the same state.
#[derive(Clone, Default)]
pub struct SimDisk {
    state: Rc<RefCell<SimState>>,
    prefix: String,
}

fn powered_off() -> io::Error {
    io::Error::other("simulated power loss")
}

impl SimDisk {
    /// An empty disk.
    pub fn new() -> Self {
        Self::default()
    }

    /// A view of the same disk where every name is prefixed by `dir/` (a subdirectory).
    pub fn subdir(&self, dir: &str) -> Self {
        Self {
            state: self.state.clone(),
            prefix: format!("{}{dir}/", self.prefix),
        }
    }

    /// Number of syncs (of files and of directories) so far.
    pub fn syncs(&self) -> u64 {
        self.state.borrow().syncs
    }

    /// Number of device flushes ([`StorageFile::sync_device`]) so far, of any file.
    pub fn device_syncs(&self) -> u64 {
        self.state.borrow().device_syncs
    }

    /// The `n`-th file sync (1-based) and every operation after it fail; [`SimDisk::crash`]
    /// then starts from the state just before that sync.
    pub fn crash_at_sync(&self, n: u64) {
        self.state.borrow_mut().crash_at_sync = Some(n);
    }

    /// Every write after the first `n` fails with EIO (the disk stays powered).
    pub fn fail_writes_after(&self, n: u64) {
        self.state.borrow_mut().fail_writes_after = Some(n);
    }

    /// Every file sync after the first `n` fails with EIO and, as Linux does after a failed
    /// `fsync` ("fsyncgate"), marks the dirty sectors clean without making them durable: a
    /// retried sync would succeed and lie. The disk stays powered.
    pub fn fail_syncs_after(&self, n: u64) {
        self.state.borrow_mut().fail_syncs_after = Some(n);
    }

    /// Number of file writes issued so far, failed ones included (for tests that check a
    /// failed write is never retried).
    pub fn writes(&self) -> u64 {
        self.state.borrow().writes
    }

    /// Whether the disk froze at its crash point.
    pub fn is_frozen(&self) -> bool {
        self.state.borrow().frozen.is_some()
    }

    /// What a restarted machine finds: a new disk with the durable state and, per `mode`,
    /// some unsynced sectors.
    pub fn crash(&self, mode: CrashMode) -> SimDisk {
        let source = {
            let state = self.state.borrow();
            state
                .frozen
                .as_deref()
                .cloned()
                .unwrap_or_else(|| state.clone())
        };
        let mut rng = match mode {
            CrashMode::Torn(seed) => seed | 1,
            _ => 1,
        };
        let mut next = || {
            // xorshift64*: deterministic per seed
            rng ^= rng >> 12;
            rng ^= rng << 25;
            rng ^= rng >> 27;
            rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
        };
        let mut after = SimState {
            next_inode: source.next_inode,
            ..SimState::default()
        };
        for (name, inode) in &source.durable_names {
            let file = &source.inodes[inode];
            let mut durable = file.durable.clone();
            for &sector in &file.dirty_sectors {
                let keep = match mode {
                    CrashMode::LoseUnsynced => false,
                    CrashMode::KeepUnsynced => true,
                    CrashMode::Torn(_) => next() % 2 == 0,
                };
                if !keep {
                    continue;
                }
                let start = sector * SIM_SECTOR_BYTES;
                let end = (start + SIM_SECTOR_BYTES).min(file.volatile.len());
                if durable.len() < end {
                    durable.resize(end, 0);
                }
                if matches!(mode, CrashMode::Torn(_)) && next() % 4 == 0 {
                    // The write reached the platter but the extent is still marked unwritten:
                    // reads return zeros, but only where nothing was ever synced. A sector
                    // that was durable before keeps its old bytes (an overwrite of a written
                    // extent comes back old or new, never zeroed).
                    let old_is_zero = durable[start..end].iter().all(|&byte| byte == 0);
                    if old_is_zero {
                        durable[start..end].fill(0);
                    }
                } else {
                    durable[start..end].copy_from_slice(&file.volatile[start..end]);
                }
            }
            after.inodes.insert(
                *inode,
                SimFile {
                    volatile: durable.clone(),
                    durable,
                    dirty_sectors: BTreeSet::new(),
                    // Sectors that survived unsynced are not counted as committed: the next
                    // writer must sync them on its own before a device flush covers them.
                    committed: file.committed.clone(),
                },
            );
            after.names.insert(name.clone(), *inode);
            after.durable_names.insert(name.clone(), *inode);
        }
        SimDisk {
            state: Rc::new(RefCell::new(after)),
            prefix: String::new(),
        }
    }

    /// Reads a whole file as the running process sees it (for tests that corrupt bytes).
    pub fn file_bytes(&self, name: &str) -> Option<Vec<u8>> {
        let state = self.state.borrow();
        let inode = state.names.get(&format!("{}{name}", self.prefix))?;
        Some(state.inodes[inode].volatile.clone())
    }

    /// Replaces a file's bytes, durably (for tests that corrupt bytes between runs).
    pub fn set_file_bytes(&self, name: &str, bytes: Vec<u8>) {
        let mut state = self.state.borrow_mut();
        let inode = state.names[&format!("{}{name}", self.prefix)];
        let file = state.inodes.get_mut(&inode).expect("inode");
        file.committed = vec![true; bytes.len().div_ceil(SIM_SECTOR_BYTES)];
        file.volatile = bytes.clone();
        file.durable = bytes;
        file.dirty_sectors.clear();
    }

    fn check_power(&self) -> io::Result<()> {
        if self.state.borrow().frozen.is_some() {
            return Err(powered_off());
        }
        Ok(())
    }

    fn full(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }
}

/// A file of a [`SimDisk`].
pub struct SimHandle {
    disk: SimDisk,
    inode: u64,
}

/// A plain byte buffer standing in for an aligned DMA buffer.
pub struct SimBuffer(Vec<u8>);

impl Deref for SimBuffer {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}
impl DerefMut for SimBuffer {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.0
    }
}

impl SimBuffer {
    /// `len` bytes (a multiple of the sector) that are not zeros, so that a byte a caller
    /// forgets to set is visible garbage in tests.
    fn garbage(len: usize) -> SimBuffer {
        assert_eq!(len % SIM_SECTOR_BYTES, 0, "unaligned buffer");
        SimBuffer(vec![0xA5; len])
    }
}

impl WriteBuffer for SimBuffer {
    fn truncate(&mut self, len: usize) {
        assert!(len <= self.0.len(), "a buffer only shrinks");
        self.0.truncate(len);
    }
}

impl Storage for SimDisk {
    type File = SimHandle;

    async fn create(&self, name: &str, size_bytes: u64) -> io::Result<SimHandle> {
        self.check_power()?;
        let mut state = self.state.borrow_mut();
        let inode = state.next_inode;
        state.next_inode += 1;
        state
            .inodes
            .insert(inode, SimFile::preallocated(size_bytes as usize));
        state.names.insert(self.full(name), inode);
        Ok(SimHandle {
            disk: self.clone(),
            inode,
        })
    }

    async fn open(&self, name: &str) -> io::Result<SimHandle> {
        self.check_power()?;
        let state = self.state.borrow();
        let inode = *state
            .names
            .get(&self.full(name))
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, name.to_string()))?;
        Ok(SimHandle {
            disk: self.clone(),
            inode,
        })
    }

    fn list(&self) -> io::Result<Vec<String>> {
        self.check_power()?;
        let state = self.state.borrow();
        Ok(state
            .names
            .keys()
            .filter_map(|name| name.strip_prefix(&self.prefix))
            .filter(|name| !name.contains('/'))
            .map(str::to_string)
            .collect())
    }

    async fn remove(&self, name: &str) -> io::Result<()> {
        self.check_power()?;
        let mut state = self.state.borrow_mut();
        state
            .names
            .remove(&self.full(name))
            .map(|_| ())
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, name.to_string()))
    }

    async fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        self.check_power()?;
        let mut state = self.state.borrow_mut();
        let inode = state
            .names
            .remove(&self.full(from))
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, from.to_string()))?;
        state.names.insert(self.full(to), inode);
        Ok(())
    }

    async fn sync_dir(&self) -> io::Result<()> {
        self.check_power()?;
        let mut state = self.state.borrow_mut();
        // A crash point like a file's sync: renames and removals become durable here, so the
        // orders of directory changes are tested too.
        state.count_sync()?;
        let prefix = self.prefix.clone();
        state
            .durable_names
            .retain(|name, _| !name.starts_with(&prefix) || name[prefix.len()..].contains('/'));
        let own: Vec<(String, u64)> = state
            .names
            .iter()
            .filter(|(name, _)| name.starts_with(&prefix) && !name[prefix.len()..].contains('/'))
            .map(|(name, inode)| (name.clone(), *inode))
            .collect();
        state.durable_names.extend(own);
        Ok(())
    }

    fn path(&self, name: &str) -> PathBuf {
        PathBuf::from(format!("sim:/{}", self.full(name)))
    }

    fn alloc_buffer(&self, len: usize) -> SimBuffer {
        SimBuffer::garbage(len)
    }

    /// One domain per simulated disk (its state's address): a device flush through any of
    /// its files, in any subdirectory, covers them all.
    fn flush_domain(&self) -> Option<u64> {
        Some(Rc::as_ptr(&self.state) as usize as u64)
    }
}

impl SimHandle {
    /// A write into the file's volatile image; returns the sectors written.
    async fn write_volatile(
        &self,
        buffer: SimBuffer,
        offset: u64,
    ) -> io::Result<std::ops::Range<usize>> {
        // A real write is in flight for a while, and other tasks run meanwhile: so here too,
        // so that what the engine does while a write is in flight (the pipelined group
        // commit wakes the previous flush's writers then, and writes the next flush beside
        // it) runs on the simulated disk. Writes stay in flight for one to eight turns of the
        // other tasks, so writes handed over in one order may land in another; the length
        // follows from the count of writes begun, so a run replays the same way.
        let turns = {
            let mut state = self.disk.state.borrow_mut();
            state.writes_begun += 1;
            1 + (state.writes_begun.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 61)
        };
        for _ in 0..turns {
            yield_now().await;
        }
        self.disk.check_power()?;
        let mut state = self.disk.state.borrow_mut();
        state.writes += 1;
        if let Some(limit) = state.fail_writes_after {
            if state.writes > limit {
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
        }
        let offset = offset as usize;
        assert_eq!(offset % SIM_SECTOR_BYTES, 0, "unaligned write offset");
        assert_eq!(buffer.len() % SIM_SECTOR_BYTES, 0, "unaligned write length");
        let file = state.inodes.get_mut(&self.inode).expect("inode");
        let end = offset + buffer.len();
        if file.volatile.len() < end {
            file.volatile.resize(end, 0);
        }
        file.volatile[offset..end].copy_from_slice(&buffer);
        let sectors = offset / SIM_SECTOR_BYTES..end / SIM_SECTOR_BYTES;
        file.dirty_sectors.extend(sectors.clone());
        Ok(sectors)
    }
}

impl StorageFile for SimHandle {
    type Buffer = SimBuffer;
    type Read = Vec<u8>;

    fn alignment(&self) -> usize {
        SIM_SECTOR_BYTES
    }

    fn alloc_buffer(&self, len: usize) -> SimBuffer {
        SimBuffer::garbage(len)
    }

    async fn write_at(&self, buffer: SimBuffer, offset: u64) -> io::Result<()> {
        self.write_volatile(buffer, offset).await.map(|_| ())
    }

    async fn write_durable_at(&self, buffer: SimBuffer, offset: u64) -> io::Result<()> {
        let sectors = self.write_volatile(buffer, offset).await?;
        // The write's own sync: a crash point like any sync.
        let mut state = self.disk.state.borrow_mut();
        state.count_sync()?;
        let failed = state
            .fail_syncs_after
            .is_some_and(|limit| state.syncs > limit);
        let file = state.inodes.get_mut(&self.inode).expect("inode");
        for sector in sectors {
            if failed {
                file.dirty_sectors.remove(&sector);
                continue;
            }
            let bytes = file.sector_bytes(sector);
            file.make_durable(sector, &bytes);
            file.commit(sector);
        }
        if failed {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        Ok(())
    }

    fn end_durable_writes(&self) {}

    async fn read_at(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        self.disk.check_power()?;
        let state = self.disk.state.borrow();
        let file = &state.inodes[&self.inode];
        let start = (offset as usize).min(file.volatile.len());
        let end = (start + len).min(file.volatile.len());
        Ok(file.volatile[start..end].to_vec())
    }

    async fn sync(&self) -> io::Result<()> {
        self.disk.check_power()?;
        let mut state = self.disk.state.borrow_mut();
        state.count_sync()?;
        if state
            .fail_syncs_after
            .is_some_and(|limit| state.syncs > limit)
        {
            let file = state.inodes.get_mut(&self.inode).expect("inode");
            file.dirty_sectors.clear();
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        let file = state.inodes.get_mut(&self.inode).expect("inode");
        for sector in file.dirty_sectors.clone() {
            let bytes = file.sector_bytes(sector);
            file.make_durable(sector, &bytes);
            file.commit(sector);
        }
        Ok(())
    }

    /// This file's sync, and a device flush for every file of the disk: their completed
    /// overwrites of committed sectors become durable, their writes into never-synced sectors
    /// do not (the extent conversion is this file's metadata only). The flush stays in flight
    /// for a few turns of the other tasks, and covers only what completed before it began.
    async fn sync_device(&self) -> io::Result<()> {
        let (captured, turns) = {
            self.disk.check_power()?;
            let mut state = self.disk.state.borrow_mut();
            state.count_sync()?;
            state.device_syncs += 1;
            if state
                .fail_syncs_after
                .is_some_and(|limit| state.syncs > limit)
            {
                for file in state.inodes.values_mut() {
                    file.dirty_sectors.clear();
                }
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
            let mut captured = Vec::new();
            for (inode, file) in &state.inodes {
                for &sector in &file.dirty_sectors {
                    if *inode == self.inode || file.is_committed(sector) {
                        captured.push((*inode, sector, file.sector_bytes(sector)));
                    }
                }
            }
            // Longer than a write (one to eight turns), as a device flush is.
            let turns = 4 + (state.device_syncs.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 61);
            (captured, turns)
        };
        for _ in 0..turns {
            yield_now().await;
        }
        // Power lost while the flush was in flight: it never completed.
        self.disk.check_power()?;
        let mut state = self.disk.state.borrow_mut();
        for (inode, sector, bytes) in captured {
            let Some(file) = state.inodes.get_mut(&inode) else {
                continue;
            };
            file.make_durable(sector, &bytes);
            if inode == self.inode {
                file.commit(sector);
            }
        }
        Ok(())
    }

    async fn size(&self) -> io::Result<u64> {
        self.disk.check_power()?;
        Ok(self.disk.state.borrow().inodes[&self.inode].volatile.len() as u64)
    }

    async fn close(self) -> io::Result<()> {
        Ok(())
    }
}

/// Returns `Pending` once after waking itself: lets every other runnable task of the shard run
/// before the caller goes on (the simulated disk's writes; tests that interleave tasks).
pub fn yield_now() -> YieldNow {
    YieldNow(false)
}

/// See [`yield_now`].
pub struct YieldNow(bool);

impl Future for YieldNow {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            return Poll::Ready(());
        }
        self.0 = true;
        context.waker().wake_by_ref();
        Poll::Pending
    }
}
