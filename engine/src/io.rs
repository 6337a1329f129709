//! The small I/O surface the WAL and snapshots are written against (style.md rule 2).
//!
//! In production it is [`crate::rt::DmaStorage`]: glommio `DmaFile`s opened with O_DIRECT and
//! driven through io_uring. In tests it is [`crate::sim::SimDisk`]: an in-memory directory that
//! knows which bytes are written and which are durable, and can crash at any sync.
//!
//! Contract: a `write_at` is durable only after a later `sync` of the same file returns; a
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
    /// Writes the whole buffer at `offset`; a short write is an error.
    async fn write_at(&self, buffer: Self::Buffer, offset: u64) -> io::Result<()>;
    /// Reads up to `len` bytes at `offset` (fewer at the end of the file).
    async fn read_at(&self, offset: u64, len: usize) -> io::Result<Self::Read>;
    /// `fdatasync`: every completed write becomes durable.
    async fn sync(&self) -> io::Result<()>;
    /// Size of the file in bytes.
    async fn size(&self) -> io::Result<u64>;
    /// Closes the file now. Dropping it instead defers the close to the runtime's next I/O
    /// cycle, which never comes if the runtime is stopping: the descriptor would leak (and,
    /// for one, keep its file system busy).
    async fn close(self) -> io::Result<()>;
}
