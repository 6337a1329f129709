//! Checks, on the disk the tests run on, what shared syncs rely on
//! ([`coregrid_engine::shared_sync`]): `fdatasync` of a file that has nothing of its own to
//! commit still flushes the device's write cache, so a sync of one file covers the completed
//! overwrites of every other file on the device. Counted from the device's own flush counter
//! (`/sys/dev/block/<major>:<minor>/stat`, field 16), through the engine's production storage.
//!
//! Skipped, with the reason printed, where it cannot be observed: a file system the engine does
//! not share syncs on (tmpfs, overlay), no block device behind it, or a device without a
//! volatile write cache (no flushes to count; nothing to lose either).

use coregrid_engine::io::{Storage, StorageFile};
use coregrid_engine::rt::{self, DmaStorage};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

#[path = "common/skipped.rs"]
mod skipped;
use skipped::skipped;

const TEST: &str = "device_flush";
const SYNCS: u64 = 20;

/// The sysfs directory of the block device holding `dir`.
fn block_device(dir: &Path) -> Result<PathBuf, String> {
    let dev = std::fs::metadata(dir)
        .map_err(|error| error.to_string())?
        .dev();
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    let sys = PathBuf::from(format!("/sys/dev/block/{major}:{minor}"));
    if !sys.join("stat").exists() {
        return Err(format!("no block device behind {dir:?} ({major}:{minor})"));
    }
    Ok(sys)
}

/// Whether the device (or, for a partition, its disk) caches writes.
fn write_cache(sys: &Path) -> Option<String> {
    [
        sys.join("queue/write_cache"),
        sys.join("../queue/write_cache"),
    ]
    .iter()
    .find_map(|path| std::fs::read_to_string(path).ok())
    .map(|text| text.trim().to_string())
}

/// Flush requests the device completed so far.
fn flushes(sys: &Path) -> Result<u64, String> {
    let text = std::fs::read_to_string(sys.join("stat")).map_err(|error| error.to_string())?;
    let fields: Vec<u64> = text
        .split_whitespace()
        .filter_map(|field| field.parse().ok())
        .collect();
    fields.get(15).copied().ok_or_else(|| {
        format!(
            "the kernel counts no flushes ({} stat fields)",
            fields.len()
        )
    })
}

#[test]
fn a_sync_of_a_clean_file_flushes_the_device() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir");
    let storage = DmaStorage::open(dir.path()).expect("storage");
    if storage.flush_domain().is_none() {
        skipped(
            TEST,
            "the file system under target/ gets no shared syncs (not ext4, XFS or tmpfs)",
        );
        return;
    }
    let sys = match block_device(dir.path()) {
        Ok(sys) => sys,
        Err(reason) => {
            skipped(TEST, &reason);
            return;
        }
    };
    match write_cache(&sys).as_deref() {
        Some("write back") => {}
        other => {
            skipped(TEST, &format!("the device caches no writes ({other:?})"));
            return;
        }
    }
    let (before, after) = rt::run_local(|| async {
        let file = storage.create("clean", 4096).await.expect("create");
        let mut block = file.alloc_buffer(4096);
        block.fill(7);
        file.write_at(block, 0).await.expect("write");
        file.sync().await.expect("sync");
        // Nothing of its own to commit from here on.
        let before = flushes(&sys);
        for _ in 0..SYNCS {
            file.sync_device().await.expect("sync");
        }
        let after = flushes(&sys);
        file.close().await.expect("close");
        (before, after)
    });
    let (before, after) = match (before, after) {
        (Ok(before), Ok(after)) => (before, after),
        (Err(reason), _) | (_, Err(reason)) => {
            skipped(TEST, &reason);
            return;
        }
    };
    // Other processes' flushes only add to the count.
    assert!(
        after - before >= SYNCS,
        "{SYNCS} syncs of a clean file made {} device flushes: a sync of one file would not \
         cover other files' writes, and shared syncs lose data here",
        after - before
    );
}
