//! Proves how `Engine::open` behaves when it cannot simply start:
//! - a partition whose WAL is corrupt before its tail makes `open` return `Corruption` naming the
//!   file, offset and LSN, promptly, while the other shard opened fine (no hang on shutdown of a
//!   half-opened engine), and no byte of the data directory changes;
//! - the data directory's lock held by another process makes `open` wait up to `lock_wait` and
//!   then fail with a clear error; once the holder lets go, `open` succeeds.

use coregrid_engine::constants::SEGMENT_HEADER_BYTES;
use coregrid_engine::record::RecordRef;
use coregrid_engine::{Engine, EngineConfig, EngineError};
use std::io::Write;
use std::path::Path;
use std::time::Duration;

fn config(dir: &Path) -> EngineConfig {
    let mut config = EngineConfig::new(dir);
    config.shards = 2;
    config.partitions = 4;
    config.pin_shards = false;
    config
}

fn all_files(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(all_files(&path));
        } else {
            files.push((path.clone(), std::fs::read(&path).unwrap()));
        }
    }
    files.sort();
    files
}

#[test]
fn a_corrupt_partition_fails_open_with_file_offset_and_lsn() {
    let root = tempfile::tempdir().unwrap();
    let engine = Engine::open(config(root.path())).unwrap();
    futures::executor::block_on(async {
        engine.create_collection("c").await.unwrap();
        // One write at a time: each record is staged after the previous one was durable, so
        // later records vouch for earlier ones.
        for index in 0..200u32 {
            engine
                .put("c", format!("key-{index}"), format!("value-{index}"))
                .await
                .unwrap();
        }
    });
    engine.shutdown();

    // Flip one body byte of a record in the middle of partition 1's WAL.
    let partition_dir = root.path().join("partitions").join("00001");
    let segment = std::fs::read_dir(&partition_dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .find(|path| path.extension().is_some_and(|ext| ext == "wal"))
        .expect("a segment");
    let mut image = std::fs::read(&segment).unwrap();
    let mut offset = SEGMENT_HEADER_BYTES;
    let mut records = Vec::new();
    while let Ok(record) = RecordRef::validate(&image[offset..]) {
        records.push((offset, record.header.lsn(), record.len()));
        offset += record.len();
    }
    assert!(records.len() > 20, "too few records in partition 1");
    let (victim_offset, victim_lsn, victim_len) = records[records.len() / 2];
    image[victim_offset + victim_len - 1] ^= 0x40;
    std::fs::write(&segment, &image).unwrap();
    let before = all_files(root.path());

    match Engine::open(config(root.path())) {
        Err(EngineError::Corruption {
            file, offset, lsn, ..
        }) => {
            assert_eq!(file, std::fs::canonicalize(&segment).unwrap());
            assert_eq!(offset, victim_offset as u64);
            assert_eq!(lsn, victim_lsn);
        }
        Err(other) => panic!("expected corruption, got {other}"),
        Ok(_) => panic!("a corrupt partition opened"),
    }
    let after = all_files(root.path());
    let changed: Vec<_> = before
        .iter()
        .zip(&after)
        .filter(|(a, b)| a != b)
        .map(|(a, _)| a.0.display().to_string())
        .collect();
    assert!(
        changed.is_empty() && before.len() == after.len(),
        "a failed open changed {changed:?}"
    );
}

#[test]
fn a_held_lock_is_waited_for_then_refused_and_released_locks_open() {
    let root = tempfile::tempdir().unwrap();
    drop(Engine::open(config(root.path())).unwrap());
    // Another process holds the lock until we close its stdin.
    let mut holder = std::process::Command::new("flock")
        .arg(root.path().join("LOCK"))
        .args(["-c", "echo locked; read _"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("flock(1) from util-linux");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "locked");

    let mut short = config(root.path());
    short.lock_wait = Duration::from_millis(200);
    match Engine::open(short) {
        Err(EngineError::IncompatibleDataDir { reason, .. }) => {
            assert!(reason.contains("LOCK"), "{reason}")
        }
        Err(other) => panic!("expected a lock error, got {other}"),
        Ok(_) => panic!("opened a locked data directory"),
    }
    // Let go; a generous wait covers the holder's exit.
    holder.stdin.take().unwrap().write_all(b"\n").unwrap();
    let mut patient = config(root.path());
    patient.lock_wait = Duration::from_secs(30);
    let engine = Engine::open(patient).expect("open once the lock is free");
    holder.wait().unwrap();
    drop(engine);
}
