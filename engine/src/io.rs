//! The small I/O surface the WAL and snapshots are written against (style.md rule 2).
//!
//! In production it is [`crate::rt::DmaStorage`]: glommio `DmaFile`s opened with O_DIRECT and
//! driven through io_uring. In tests it is [`crate::sim::SimDisk`]: an in-memory directory that
//! knows which bytes are written and which are durable, and can crash at any sync.
//!
//! Contract: a `write_at` is durable only after a later `sync` of the same file returns (or,
//! for an overwrite of synced blocks, a later `sync_device` of any file of its flush domain); a
//! created, renamed or removed name is durable only after `sync_dir`. Offsets and lengths of
//! writes are multiples of [`StorageFile::alignment`].

use std::io;
use std::ops::{Deref, DerefMut};
use std::path::PathBuf;

/// A directory of files (one per partition).
#[expect(
    async_fn_in_trait,
    reason = "futures are !Send by design: every implementation runs on one shard"
)]
pub trait Storage: Clone + 'static {
    /// The file type.
    type File: StorageFile;

    /// Creates (or truncates) `name`, preallocated to `size_bytes`, open for reads and writes.
    async fn create(&self, name: &str, size_bytes: u64) -> io::Result<Self::File>;
    /// Opens an existing file for reads and writes.
    async fn open(&self, name: &str) -> io::Result<Self::File>;
    /// Names of the files in the directory.
    fn list(&self) -> io::Result<Vec<String>>;
    /// Removes a file.
    async fn remove(&self, name: &str) -> io::Result<()>;
    /// Renames a file (atomically replacing `to`).
    async fn rename(&self, from: &str, to: &str) -> io::Result<()>;
    /// Makes creations, renames and removals in the directory durable.
    async fn sync_dir(&self) -> io::Result<()>;
    /// Path of a file, for messages.
    fn path(&self, name: &str) -> PathBuf;
    /// An aligned buffer of `len` bytes (`len` a multiple of the alignment), contents
    /// unspecified, for any file of this storage: the WAL encodes records straight into it.
    fn alloc_buffer(&self, len: usize) -> <Self::File as StorageFile>::Buffer;
    /// The flush domain of this storage's files (one per device), if a sync of any one file
    /// flushes the device for all of them: after [`StorageFile::sync_device`] of a file of the
    /// domain, every write of any file of the domain that completed before that sync began is
    /// durable, provided it went into blocks that were written and then synced by their own
    /// file's sync before (an overwrite: no file metadata to commit). `None`: every file must
    /// be synced on its own (see [`crate::shared_sync`]).
    fn flush_domain(&self) -> Option<u64>;
}

/// An aligned buffer that [`StorageFile::write_at`] writes whole.
pub trait WriteBuffer: DerefMut<Target = [u8]> {
    /// Keeps only the first `len` bytes (a multiple of the alignment): what is written.
    fn truncate(&mut self, len: usize);
}

/// An open file.
#[expect(
    async_fn_in_trait,
    reason = "futures are !Send by design: every implementation runs on one shard"
)]
pub trait StorageFile: 'static {
    /// An aligned buffer for writes.
    type Buffer: WriteBuffer;
    /// The bytes a read returned.
    type Read: Deref<Target = [u8]>;

    /// Offset and length alignment of writes (O_DIRECT).
    fn alignment(&self) -> usize;
    /// An aligned buffer of `len` bytes (`len` a multiple of the alignment) whose contents are
    /// unspecified: the caller sets every byte it hands to `write_at`.
    fn alloc_buffer(&self, len: usize) -> Self::Buffer;
    /// Writes the whole buffer at `offset`; a short write is an error. Durable only after a
    /// later sync.
    async fn write_at(&self, buffer: Self::Buffer, offset: u64) -> io::Result<()>;
    /// Writes the whole buffer at `offset` and returns once it is durable, with the metadata
    /// needed to read it back (`O_DSYNC`: a sync of its own, in one round trip). A crash
    /// before it returns leaves any subset of its sectors.
    async fn write_durable_at(&self, buffer: Self::Buffer, offset: u64) -> io::Result<()>;
    /// The file will take no more [`StorageFile::write_durable_at`]: what serves them may be
    /// released (a sealed WAL segment).
    fn end_durable_writes(&self);
    /// Reads up to `len` bytes at `offset` (fewer at the end of the file).
    async fn read_at(&self, offset: u64, len: usize) -> io::Result<Self::Read>;
    /// `fdatasync`: every completed write becomes durable.
    async fn sync(&self) -> io::Result<()>;
    /// The same sync, relied upon to flush the device for every file of the storage's
    /// [`Storage::flush_domain`] as well (see there for what it makes durable).
    async fn sync_device(&self) -> io::Result<()>;
    /// Size of the file in bytes.
    async fn size(&self) -> io::Result<u64>;
    /// Closes the file now. Dropping it instead defers the close to the runtime's next I/O
    /// cycle, which never comes if the runtime is stopping: the descriptor would leak (and,
    /// for one, keep its file system busy).
    async fn close(self) -> io::Result<()>;
}
