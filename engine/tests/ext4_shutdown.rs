//! Proves, on a real file system and real io_uring O_DIRECT I/O, that a sudden loss of the
//! device loses no acknowledged write: an `Engine` on a loop-mounted ext4 image takes puts from
//! several threads; mid-workload `EXT4_IOC_SHUTDOWN` with `EXT4_GOING_FLAGS_NOLOGFLUSH` cuts
//! the file system off as a power failure would (the journal is not flushed); writes start
//! failing and the shard poisons; after unmount and mount (journal replay) a reopened engine
//! finds every write that was acknowledged, with its value.
//!
//! Run twice: with small segments (segment creations, zeros written ahead: flushes that commit
//! file metadata), and with many writers over several partitions in large segments, where most
//! flushes share a device flush with other partitions' ([`coregrid_engine::shared_sync`]): a
//! shared flush that wrote into blocks whose extents were never committed would read back as
//! zeros after the journal replay.
//!
//! Needs root, `mkfs.ext4`, loop devices and io_uring; otherwise it prints
//! "skipped: <reason>" and passes.

use coregrid_engine::constants::SEGMENT_BYTES_MIN;
use coregrid_engine::{Engine, EngineConfig, EngineError};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};

#[path = "common/skipped.rs"]
mod skipped;
use skipped::skipped;

/// This file's name in the list of skipped tests.
const TEST: &str = "ext4_shutdown";

/// `_IOR('X', 125, __u32)`.
const EXT4_IOC_SHUTDOWN: u64 = 0x8004_587d;
/// Shut down without flushing the journal: what survives is what was committed.
const EXT4_GOING_FLAGS_NOLOGFLUSH: u32 = 2;
const IMAGE_BYTES: u64 = 256 * 1024 * 1024;
/// Acknowledged writes before the shutdown.
const ACKED_BEFORE_SHUTDOWN: usize = 300;
/// Bound on each writer, in case writes never fail (the test then fails).
const WRITES_PER_WRITER_MAX: usize = 20_000;

/// A loop-mounted ext4 image in a temporary directory; unmounted and removed on drop.
struct Mount {
    _dir: tempfile::TempDir,
    image: PathBuf,
    point: PathBuf,
    mounted: bool,
}

fn run(command: &mut Command) -> Result<(), String> {
    let output = command
        .output()
        .map_err(|error| format!("{command:?}: {error}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{command:?}: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

impl Mount {
    fn create() -> Result<Mount, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not root".into());
        }
        if !Path::new("/dev/loop-control").exists() {
            return Err("no loop devices (/dev/loop-control missing)".into());
        }
        let dir = tempfile::tempdir().map_err(|error| error.to_string())?;
        let image = dir.path().join("ext4.img");
        let point = dir.path().join("mnt");
        std::fs::create_dir(&point).map_err(|error| error.to_string())?;
        std::fs::File::create(&image)
            .and_then(|file| file.set_len(IMAGE_BYTES))
            .map_err(|error| error.to_string())?;
        run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&image))?;
        let mut mount = Mount {
            _dir: dir,
            image,
            point,
            mounted: false,
        };
        mount.mount()?;
        Ok(mount)
    }

    fn mount(&mut self) -> Result<(), String> {
        run(Command::new("mount")
            .args(["-t", "ext4", "-o", "loop"])
            .arg(&self.image)
            .arg(&self.point))?;
        self.mounted = true;
        Ok(())
    }

    fn unmount(&mut self) -> Result<(), String> {
        run(Command::new("umount").arg(&self.point))?;
        self.mounted = false;
        Ok(())
    }

    /// Cuts the file system off like a power failure.
    fn shut_down(&self) -> std::io::Result<()> {
        let dir = std::fs::File::open(&self.point)?;
        let mut flags = EXT4_GOING_FLAGS_NOLOGFLUSH;
        // SAFETY: the ioctl reads one u32 through a pointer to a live local.
        let result = unsafe {
            libc::ioctl(
                std::os::fd::AsRawFd::as_raw_fd(&dir),
                EXT4_IOC_SHUTDOWN as _,
                &mut flags as *mut u32,
            )
        };
        if result == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if self.mounted && self.unmount().is_err() {
            let _ = run(Command::new("umount").arg("-l").arg(&self.point));
        }
    }
}

/// One run's shape.
#[derive(Clone, Copy)]
struct Shape {
    partitions: u32,
    segment_bytes: u64,
    writers: usize,
    /// Flushes that must have shared a device flush before the shutdown.
    shared_before_shutdown: u64,
    /// Whether the shard journal is on (it takes the small rounds that would share flushes).
    journal: bool,
}

fn config(point: &Path, shape: Shape) -> EngineConfig {
    EngineConfig {
        data_dir: point.join("data"),
        shards: 1,
        partitions: shape.partitions,
        pin_shards: false,
        segment_bytes: shape.segment_bytes,
        journal: shape.journal,
        ..EngineConfig::default()
    }
}

fn shared_flushes(engine: &Engine) -> u64 {
    futures::executor::block_on(engine.stats())
        .unwrap()
        .iter()
        .map(|stats| stats.flushes_shared)
        .sum()
}

#[derive(Default)]
struct Progress {
    acked: Vec<(String, String)>,
    errors: Vec<String>,
}

#[test]
fn acknowledged_writes_survive_an_ext4_shutdown() {
    survive_shutdown(Shape {
        partitions: 4,
        segment_bytes: SEGMENT_BYTES_MIN,
        writers: 4,
        shared_before_shutdown: 0,
        journal: true,
    });
}

#[test]
fn acknowledged_journaled_writes_survive_an_ext4_shutdown() {
    survive_shutdown(Shape {
        partitions: 8,
        segment_bytes: 16 * 1024 * 1024,
        writers: 16,
        shared_before_shutdown: 0,
        journal: true,
    });
}

#[test]
fn acknowledged_shared_flushes_survive_an_ext4_shutdown() {
    survive_shutdown(Shape {
        partitions: 8,
        segment_bytes: 16 * 1024 * 1024,
        writers: 16,
        shared_before_shutdown: 200,
        journal: false,
    });
}

fn survive_shutdown(shape: Shape) {
    let mut mount = match Mount::create() {
        Ok(mount) => mount,
        Err(reason) => {
            skipped(TEST, &reason);
            return;
        }
    };
    let engine = match Engine::open(config(&mount.point, shape)) {
        Ok(engine) => engine,
        Err(EngineError::Runtime(reason)) => {
            skipped(TEST, &reason);
            return;
        }
        Err(error) => panic!("open: {error}"),
    };
    futures::executor::block_on(engine.create_collection("c")).unwrap();

    let progress = Arc::new((Mutex::new(Progress::default()), Condvar::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..shape.writers)
        .map(|writer| {
            let (engine, progress, stop) = (engine.clone(), progress.clone(), stop.clone());
            std::thread::spawn(move || {
                for index in 0..WRITES_PER_WRITER_MAX {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let key = format!("w{writer}-{index}");
                    let value = format!("value of {key}: {}", "x".repeat(index % 300));
                    let result =
                        futures::executor::block_on(engine.put("c", key.clone(), value.clone()));
                    let (lock, changed) = &*progress;
                    let mut progress = lock.lock().unwrap();
                    match result {
                        Ok(_) => progress.acked.push((key, value)),
                        Err(error) => {
                            progress.errors.push(error.to_string());
                            changed.notify_all();
                            return;
                        }
                    }
                    changed.notify_all();
                }
            })
        })
        .collect();

    {
        let (lock, changed) = &*progress;
        let guard = lock.lock().unwrap();
        let guard = changed
            .wait_while(guard, |progress| {
                let enough = progress.acked.len() >= ACKED_BEFORE_SHUTDOWN
                    && (shape.shared_before_shutdown == 0
                        || shared_flushes(&engine) >= shape.shared_before_shutdown);
                !enough && progress.errors.is_empty()
            })
            .unwrap();
        assert!(
            guard.errors.is_empty(),
            "writes failed before the shutdown: {:?}",
            guard.errors
        );
    }
    let shared = shared_flushes(&engine);
    let shutdown = mount.shut_down();
    if shutdown.is_err() {
        stop.store(true, Ordering::SeqCst);
    }
    for writer in writers {
        writer.join().unwrap();
    }
    if let Err(error) = shutdown {
        drop(engine);
        skipped(TEST, &format!("EXT4_IOC_SHUTDOWN failed: {error}"));
        return;
    }
    let progress = std::mem::take(&mut *progress.0.lock().unwrap());
    println!(
        "{} writes acknowledged ({shared} flushes shared a device flush before the shutdown), \
         {} writers failed after the shutdown (first: {:?})",
        progress.acked.len(),
        progress.errors.len(),
        progress.errors.first()
    );
    assert_eq!(
        progress.errors.len(),
        shape.writers,
        "every writer must see writes fail after the shutdown"
    );
    let health = futures::executor::block_on(engine.health()).unwrap();
    assert!(
        health.iter().all(|shard| shard.poisoned.is_some()),
        "the shard must be poisoned: {health:?}"
    );
    drop(engine);
    // Dropping the engine closes every file it had open in the mount (or unmount fails).

    mount.unmount().expect("unmount after the shutdown");
    mount.mount().expect("mount again (journal replay)");
    let engine = Engine::open(config(&mount.point, shape)).expect("reopen after the shutdown");
    let mut missing = Vec::new();
    for (key, value) in &progress.acked {
        let found = futures::executor::block_on(engine.get("c", key.clone())).unwrap();
        if found.as_ref().map(|found| &found.value[..]) != Some(value.as_bytes()) {
            missing.push((key.clone(), found.map(|found| found.value.len())));
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged writes lost or wrong, first: {:?}",
        missing.len(),
        progress.acked.len(),
        &missing[..missing.len().min(5)]
    );
    // The reopened engine takes writes again.
    futures::executor::block_on(engine.put("c", "after", "restart")).unwrap();
    drop(engine);
}
