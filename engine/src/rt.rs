//! Every glommio call of the engine lives here (style.md rule 3): glommio 0.9.0 is the last
//! crates.io release, so if it must be patched or replaced, this is the one module to change.
//!
//! What it offers the rest of the engine: shard threads ([`spawn_shard`]), local tasks
//! ([`spawn_local`]), a doorbell between local tasks ([`Doorbell`]), timers, and
//! [`DmaStorage`], the production [`Storage`]: files opened with O_DIRECT and written through
//! io_uring with `DmaFile`.

use crate::constants::ALIGNMENT_BYTES_MAX;
use crate::error::{EngineError, Result};
use crate::io::{Storage, StorageFile, WriteBuffer};
use glommio::io::{DmaBuffer, DmaFile, OpenOptions, ReadResult};
use glommio::{LocalExecutorBuilder, Placement};
use std::future::Future;
use std::io;
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

/// Memory each shard registers with io_uring for I/O buffers when the process may lock
/// memory without limit (root, or `ulimit -l unlimited`): every group commit is copied into
/// it and written with a fixed buffer. Large groups (up to [`crate::constants::STAGED_BYTES_MAX`])
/// fit, so a flush of 256 × 64 KiB puts neither faults in fresh pages nor pins them per write:
/// measured 605 → 1,052 MiB/s of WAL, the copy of a 16.8 MB group 6.5 → 1.7 ms and its write
/// 13 → 6 ms (docs/perf.md, session 4).
pub const SHARD_IO_MEMORY_BYTES: usize = 64 * 1024 * 1024;

/// The same under a finite memlock limit: kept below common defaults (8 MiB) so unprivileged
/// users start; larger buffers fall back to ordinary aligned allocations.
pub const SHARD_IO_MEMORY_BYTES_LIMITED: usize = 2 * 1024 * 1024;

/// Whether this process may lock any amount of memory: root (`CAP_IPC_LOCK`) or an
/// unlimited `RLIMIT_MEMLOCK`.
fn memlock_unlimited() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    let read = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) } == 0;
    read && limit.rlim_cur == libc::RLIM_INFINITY
}

/// I/O memory per shard: [`SHARD_IO_MEMORY_BYTES`] when memory locking is unlimited, else
/// [`SHARD_IO_MEMORY_BYTES_LIMITED`].
pub fn shard_io_memory_bytes() -> usize {
    if memlock_unlimited() {
        SHARD_IO_MEMORY_BYTES
    } else {
        SHARD_IO_MEMORY_BYTES_LIMITED
    }
}

/// The least locked memory glommio accepts per executor.
pub const MEMLOCK_BYTES_MIN: u64 = 512 * 1024;

/// Checks, before any shard starts, that io_uring is enabled and the memlock limit suffices,
/// and says how to fix what is wrong.
pub fn check_runtime(shards: usize) -> Result<()> {
    if let Ok(text) = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled") {
        if text.trim() != "0" {
            let is_root = unsafe { libc::geteuid() } == 0;
            if text.trim() == "2" || !is_root {
                return Err(EngineError::Runtime(format!(
                    "io_uring is disabled on this machine (kernel.io_uring_disabled = {}); \
                     enable it with `sysctl -w kernel.io_uring_disabled=0`",
                    text.trim()
                )));
            }
        }
    }
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) } == 0 {
        let has_ipc_lock = unsafe { libc::geteuid() } == 0;
        let needed = MEMLOCK_BYTES_MIN.max(shard_io_memory_bytes() as u64) * shards as u64;
        if !has_ipc_lock && limit.rlim_cur != libc::RLIM_INFINITY && limit.rlim_cur < needed {
            return Err(EngineError::Runtime(format!(
                "the locked-memory limit is {} KiB but {shards} shard(s) need {} KiB for io_uring; \
                 raise it with `ulimit -l {}` (shell), `LimitMEMLOCK=infinity` (systemd unit), \
                 `--ulimit memlock=-1` (docker) or a `memlock` line in /etc/security/limits.conf",
                limit.rlim_cur / 1024,
                needed / 1024,
                needed / 1024
            )));
        }
    }
    Ok(())
}

/// Turns a glommio executor start error into a message that says how to fix it.
fn runtime_error(error: glommio::GlommioError<()>) -> EngineError {
    let text = error.to_string();
    let hint = if text.contains("memlock") || text.contains("MemLock") {
        " (raise the memlock limit: `ulimit -l unlimited`, systemd `LimitMEMLOCK=infinity`, docker `--ulimit memlock=-1`)"
    } else if text.contains("Operation not permitted") || text.contains("Function not implemented")
    {
        " (io_uring is unavailable: check `kernel.io_uring_disabled` and the container's seccomp profile)"
    } else {
        ""
    };
    EngineError::Runtime(format!("{text}{hint}"))
}

/// Number of CPUs this process may run on.
pub fn available_cores() -> usize {
    std::thread::available_parallelism()
        .map(|cores| cores.get())
        .unwrap_or(1)
}

/// A running shard thread.
pub struct ShardThread<T: Send + 'static> {
    handle: glommio::ExecutorJoinHandle<T>,
}

impl<T: Send + 'static> ShardThread<T> {
    /// The shard's thread.
    pub fn id(&self) -> std::thread::ThreadId {
        self.handle.thread().id()
    }

    /// Whether the calling thread is this shard's thread.
    pub fn is_current(&self) -> bool {
        self.id() == std::thread::current().id()
    }

    /// Waits for the shard's main future to end.
    pub fn join(self) -> Result<T> {
        self.handle.join().map_err(runtime_error)
    }
}

/// Starts shard `shard` on a thread of its own running a glommio executor, pinned to `cpu` if
/// given, and runs `main` on it. With nothing to run, the executor polls its rings for
/// `idle_spin` before it sleeps (glommio's `spin_before_park`).
pub fn spawn_shard<G, F, T>(
    shard: usize,
    cpu: Option<usize>,
    idle_spin: Duration,
    main: G,
) -> Result<ShardThread<T>>
where
    G: FnOnce() -> F + Send + 'static,
    F: Future<Output = T> + 'static,
    T: Send + 'static,
{
    spawn_with_io_memory(
        &format!("coregrid-shard-{shard}"),
        cpu,
        shard_io_memory_bytes(),
        idle_spin,
        main,
    )
}

/// Starts a glommio executor named `name` on a thread of its own, pinned to `cpu` if given,
/// and runs `main` on it: for work without large disk writes, such as the node's control
/// shard, so it registers only [`SHARD_IO_MEMORY_BYTES_LIMITED`] of I/O memory.
pub fn spawn_executor<G, F, T>(name: &str, cpu: Option<usize>, main: G) -> Result<ShardThread<T>>
where
    G: FnOnce() -> F + Send + 'static,
    F: Future<Output = T> + 'static,
    T: Send + 'static,
{
    spawn_with_io_memory(
        name,
        cpu,
        SHARD_IO_MEMORY_BYTES_LIMITED,
        Duration::ZERO,
        main,
    )
}

fn spawn_with_io_memory<G, F, T>(
    name: &str,
    cpu: Option<usize>,
    io_memory: usize,
    idle_spin: Duration,
    main: G,
) -> Result<ShardThread<T>>
where
    G: FnOnce() -> F + Send + 'static,
    F: Future<Output = T> + 'static,
    T: Send + 'static,
{
    let placement = match cpu {
        Some(cpu) => Placement::Fixed(cpu),
        None => Placement::Unbound,
    };
    // A zero spin is glommio's own default: park at once.
    let handle = LocalExecutorBuilder::new(placement)
        .name(name)
        .io_memory(io_memory)
        .spin_before_park(idle_spin)
        .spawn(main)
        .map_err(runtime_error)?;
    Ok(ShardThread { handle })
}

/// Settles, for this shard's thread, whether the data directory's device takes polled I/O,
/// before any WAL file is opened; call it first on every shard.
///
/// Why: glommio decides it once per device and per thread, at the first `DmaFile` open, by
/// reading the opened file's first block through its polled ring, and takes any success as
/// support. On a fresh data directory the first file opened is a new, empty segment: that
/// read ends at once at end of file without reaching the device, so every file of the shard
/// went to the polled ring on a device without polled queues, where every read failed with
/// `EOPNOTSUPP` (measured: `read_raw` of a segment written in the same life, which replication
/// serves from, failed; after a restart, whose first open was a segment with data, it worked).
/// Here the first open is of a small file with data, so the probe reads the device.
pub async fn settle_iopoll_support(dir: &Path, shard: usize) -> Result<()> {
    let path = dir.join(format!(".iopoll-probe-{shard}"));
    let fail =
        |what: &str, error: io::Error| EngineError::io(format!("{what} {}", path.display()), error);
    {
        let mut file = std::fs::File::create(&path).map_err(|error| fail("create", error))?;
        std::io::Write::write_all(&mut file, &[0xA5; IOPOLL_PROBE_BYTES])
            .map_err(|error| fail("write", error))?;
        file.sync_all().map_err(|error| fail("sync", error))?;
    }
    let opened = DmaFile::open(&path).await;
    let _ = std::fs::remove_file(&path);
    let file = opened.map_err(|error| fail("open", error.into()))?;
    let _ = file.close().await;
    Ok(())
}

/// Bytes of the polled-I/O probe file: at least any device's logical block.
const IOPOLL_PROBE_BYTES: usize = 4096;

/// Runs `main` on a fresh, unpinned executor on the calling thread (tests, tools).
pub fn run_local<F, T>(main: impl FnOnce() -> F) -> T
where
    F: Future<Output = T>,
{
    let executor = LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(SHARD_IO_MEMORY_BYTES_LIMITED)
        .make()
        .expect("start a local glommio executor (io_uring and memlock needed)");
    executor.run(main())
}

/// A task on the current shard.
pub type Task<T> = glommio::Task<T>;

/// Spawns a task on the current shard.
pub fn spawn_local<T: 'static>(future: impl Future<Output = T> + 'static) -> Task<T> {
    glommio::spawn_local(future)
}

/// Spawns a task that runs to its end on its own.
pub fn spawn_detached(future: impl Future<Output = ()> + 'static) {
    glommio::spawn_local(future).detach();
}

/// Yields to other tasks of the shard if this one has used up its time slice.
pub async fn yield_if_needed() {
    glommio::yield_if_needed().await;
}

/// Lets the shard hand every I/O request queued so far to the kernel before the calling task
/// goes on. glommio submits queued requests only between runs of its tasks, so a request
/// queued while many tasks are runnable waits for all of them; a one-microsecond timer parks
/// this task until the executor's next turn, which submits first.
pub async fn submit_queued_io() {
    glommio::timer::sleep(Duration::from_micros(1)).await;
}

/// Sleeps on the shard's timer.
pub async fn sleep(duration: Duration) {
    glommio::timer::sleep(duration).await;
}

/// One-slot wake-up between tasks of one shard: `ring` never blocks and coalesces; `wait`
/// returns once rung at least once since the last `wait`.
#[derive(Clone)]
pub struct Doorbell {
    sender: Rc<glommio::channels::local_channel::LocalSender<()>>,
    receiver: Rc<glommio::channels::local_channel::LocalReceiver<()>>,
}

impl Default for Doorbell {
    fn default() -> Self {
        let (sender, receiver) = glommio::channels::local_channel::new_bounded(1);
        Self {
            sender: Rc::new(sender),
            receiver: Rc::new(receiver),
        }
    }
}

impl Doorbell {
    /// Rings; a ring while one is pending is absorbed.
    pub fn ring(&self) {
        let _already_pending = self.sender.try_send(());
    }
    /// Waits for a ring.
    pub async fn wait(&self) {
        let _ = self.receiver.recv().await;
    }
}

/// The production storage: a directory of O_DIRECT files.
#[derive(Clone)]
pub struct DmaStorage {
    dir: Rc<PathBuf>,
    domain: Option<u64>,
}

impl DmaStorage {
    /// A storage over `dir`, created if missing.
    pub fn open(dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        // Absolute: glommio 0.9's `Directory::open` fails with EBADF on a relative path.
        let dir = std::fs::canonicalize(dir)?;
        Ok(Self {
            domain: device_flush_domain(&dir)?,
            dir: Rc::new(dir),
        })
    }
}

/// The flush domain of the file system holding `dir` (its device number), if a sync of any
/// one of its files flushes the device's write cache for all: ext4 and XFS issue the flush in
/// `fdatasync` even for a file with nothing of its own to commit (ext4: `ext4_sync_file`
/// flushes unless the journal commit it waits for flushes after the call began; XFS:
/// `xfs_file_fsync` flushes when its log force was a no-op), and tmpfs has no cache to flush.
/// Other file systems (btrfs skips the flush for an inode already in its log tree, network and
/// FUSE file systems promise nothing) get `None`: each file is synced on its own. Checked on
/// the disk by `engine/tests/device_flush.rs`.
pub fn device_flush_domain(dir: &Path) -> io::Result<Option<u64>> {
    use nix::sys::statfs::{statfs, EXT4_SUPER_MAGIC, TMPFS_MAGIC, XFS_SUPER_MAGIC};
    use std::os::unix::fs::MetadataExt;
    let kind = statfs(dir).map_err(io::Error::from)?.filesystem_type();
    let flushes_for_all = [EXT4_SUPER_MAGIC, XFS_SUPER_MAGIC, TMPFS_MAGIC].contains(&kind);
    flushes_for_all
        .then(|| std::fs::metadata(dir).map(|meta| meta.dev()))
        .transpose()
}

/// An O_DIRECT file.
pub struct DmaStorageFile {
    file: DmaFile,
    path: PathBuf,
    /// The same file opened `O_DIRECT | O_DSYNC`, for durable writes: opened at the first one,
    /// dropped by [`StorageFile::end_durable_writes`].
    dsync: std::cell::RefCell<Option<Rc<DmaFile>>>,
}

impl DmaStorageFile {
    fn new(file: DmaFile, path: PathBuf) -> Self {
        Self {
            file,
            path,
            dsync: Default::default(),
        }
    }

    /// The file's `O_DSYNC` descriptor, opened if need be.
    async fn dsync(&self) -> io::Result<Rc<DmaFile>> {
        if let Some(file) = &*self.dsync.borrow() {
            return Ok(file.clone());
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_DSYNC)
            .dma_open(&self.path)
            .await?;
        // Another write may have opened one meanwhile: keep the first.
        let mut slot = self.dsync.borrow_mut();
        Ok(slot.get_or_insert_with(|| Rc::new(file)).clone())
    }
}

/// Writes all of `buffer` at `offset` through `file`; a short write is an error.
async fn write_whole(file: &DmaFile, buffer: DmaBuf, offset: u64) -> io::Result<()> {
    let len = buffer.len();
    let written = file.write_at(buffer.0, offset).await?;
    if written != len {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            format!("short write: {written} of {len} bytes at {offset}"),
        ));
    }
    Ok(())
}

/// An aligned buffer from glommio's allocator.
pub struct DmaBuf(DmaBuffer);

impl Deref for DmaBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.0.as_bytes()
    }
}
impl DerefMut for DmaBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.0.as_bytes_mut()
    }
}

impl DmaBuf {
    /// `len` bytes from the shard's registered I/O memory while it lasts (no page faults, no
    /// pinning per write), else from the heap. Not zeroed: callers set every byte they write
    /// (a 16 MB memset per flush showed in profiles).
    fn new(len: usize) -> DmaBuf {
        DmaBuf(glommio::allocate_dma_buffer(len))
    }
}

impl WriteBuffer for DmaBuf {
    fn truncate(&mut self, len: usize) {
        assert!(len <= self.0.len(), "a buffer only shrinks");
        self.0.trim_to_size(len);
    }
}

/// Bytes read from an O_DIRECT file.
pub struct DmaRead(ReadResult);

impl Deref for DmaRead {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl Storage for DmaStorage {
    type File = DmaStorageFile;

    async fn create(&self, name: &str, size_bytes: u64) -> io::Result<DmaStorageFile> {
        let path = self.dir.join(name);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .dma_open(&path)
            .await?;
        if size_bytes > 0 {
            file.pre_allocate(size_bytes, false).await?;
            // The allocation (size and extents) is durable before any write lands in it.
            file.fdatasync().await?;
        }
        Ok(DmaStorageFile::new(file, path))
    }

    async fn open(&self, name: &str) -> io::Result<DmaStorageFile> {
        let path = self.dir.join(name);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .dma_open(&path)
            .await?;
        Ok(DmaStorageFile::new(file, path))
    }

    fn list(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&*self.dir)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                if let Some(name) = entry.file_name().to_str() {
                    names.push(name.to_string());
                }
            }
        }
        Ok(names)
    }

    async fn remove(&self, name: &str) -> io::Result<()> {
        glommio::io::remove(self.dir.join(name)).await?;
        Ok(())
    }

    async fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        glommio::io::rename(self.dir.join(from), self.dir.join(to)).await?;
        Ok(())
    }

    async fn sync_dir(&self) -> io::Result<()> {
        let dir = glommio::io::Directory::open(&*self.dir).await?;
        dir.sync().await?;
        dir.close().await?;
        Ok(())
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn alloc_buffer(&self, len: usize) -> DmaBuf {
        assert_eq!(len % ALIGNMENT_BYTES_MAX, 0, "unaligned buffer");
        DmaBuf::new(len)
    }

    fn flush_domain(&self) -> Option<u64> {
        self.domain
    }
}

impl StorageFile for DmaStorageFile {
    type Buffer = DmaBuf;
    type Read = DmaRead;

    fn alignment(&self) -> usize {
        self.file.alignment() as usize
    }

    fn alloc_buffer(&self, len: usize) -> DmaBuf {
        assert_eq!(len % self.alignment(), 0, "unaligned buffer");
        DmaBuf::new(len)
    }

    async fn write_at(&self, buffer: DmaBuf, offset: u64) -> io::Result<()> {
        assert_eq!(offset % self.alignment() as u64, 0, "unaligned write");
        write_whole(&self.file, buffer, offset).await
    }

    /// Through the file's `O_DSYNC` descriptor: the kernel syncs the write as it completes
    /// (on this virtio disk, which has no FUA, a device flush after the write), without a
    /// second round trip through io_uring.
    async fn write_durable_at(&self, buffer: DmaBuf, offset: u64) -> io::Result<()> {
        assert_eq!(offset % self.alignment() as u64, 0, "unaligned write");
        let dsync = self.dsync().await?;
        write_whole(&dsync, buffer, offset).await
    }

    fn end_durable_writes(&self) {
        // Closed by glommio on drop (the shard is running: its next I/O cycle closes it), or
        // by a durable write still in flight once it ends.
        self.dsync.borrow_mut().take();
    }

    async fn read_at(&self, offset: u64, len: usize) -> io::Result<DmaRead> {
        Ok(DmaRead(self.file.read_at(offset, len).await?))
    }

    /// `fdatasync` through io_uring. Plain writes are not `O_DSYNC` (since session 15), so
    /// that the flushes of a shard's partitions can share one device flush
    /// ([`crate::shared_sync`]); a write that must be durable alone goes through
    /// [`StorageFile::write_durable_at`] instead, one round trip rather than two (fio: 10,775
    /// `O_DSYNC` writes of 4 KiB per second against 8,653 write + `fdatasync`).
    async fn sync(&self) -> io::Result<()> {
        Ok(self.file.fdatasync().await?)
    }

    /// `fdatasync`, which on the file systems [`device_flush_domain`] accepts always flushes
    /// the device.
    async fn sync_device(&self) -> io::Result<()> {
        self.sync().await
    }

    async fn size(&self) -> io::Result<u64> {
        Ok(self.file.file_size().await?)
    }

    async fn close(self) -> io::Result<()> {
        let dsync = self.dsync.borrow_mut().take();
        // Both are closed even if one fails; the first error is returned. A durable write
        // still in flight holds the `O_DSYNC` descriptor, which then closes on drop.
        let dsync_closed = match dsync.and_then(|file| Rc::try_unwrap(file).ok()) {
            Some(dsync) => dsync.close().await,
            None => Ok(()),
        };
        let closed = self.file.close().await;
        dsync_closed?;
        Ok(closed?)
    }
}

/// A counting semaphore for tasks of one shard.
pub struct Semaphore(Rc<glommio::sync::Semaphore>);

/// A held unit of a [`Semaphore`], released on drop.
pub struct Permit(#[expect(dead_code, reason = "held for its drop")] glommio::sync::StaticPermit);

impl Semaphore {
    /// A semaphore with `units` available.
    pub fn new(units: u64) -> Self {
        Self(Rc::new(glommio::sync::Semaphore::new(units)))
    }
    /// Waits for one unit.
    pub async fn acquire(&self) -> Permit {
        Permit(
            self.0
                .acquire_static_permit(1)
                .await
                .expect("the semaphore is never closed"),
        )
    }
}
