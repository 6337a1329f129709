//! Proves that snapshots bound disk use: under a workload that keeps overwriting the same keys,
//! the bytes of WAL segments and snapshots on disk stop growing (old segments and snapshots are
//! deleted once a newer snapshot covers them), while every key keeps its latest value, also
//! across a reopen.

mod common;

use bytes::Bytes;
use coregrid_engine::constants::SEGMENT_BYTES_MIN;
use coregrid_engine::io::Storage;
use coregrid_engine::rt;
use coregrid_engine::sim::SimDisk;

const KEYS: u32 = 100;
const VALUE_BYTES: usize = 4096;
const WRITERS: u32 = 10;
/// Each round writes ~20 MB of WAL (2.5 segments).
const ROUNDS: u32 = 5;
const PUTS_PER_ROUND: u32 = 5_000;

fn disk_bytes(disk: &SimDisk) -> u64 {
    disk.list()
        .expect("list")
        .iter()
        .map(|name| disk.file_bytes(name).map_or(0, |bytes| bytes.len() as u64))
        .sum()
}

fn value(key: u32, round: u32, index: u32) -> Bytes {
    let tag = format!("{key}/{round}/{index};");
    Bytes::from(tag.repeat(VALUE_BYTES / tag.len() + 1)[..VALUE_BYTES].to_string())
}

#[test]
fn overwriting_the_same_keys_keeps_disk_use_bounded() {
    rt::run_local(|| async {
        let disk = SimDisk::new();
        // Snapshot every 2 MiB of WAL; segments are the smallest legal size.
        let config = common::config(2 * 1024 * 1024);
        let partition = common::open(&disk, config).await.unwrap();
        partition.create_collection("c").await.unwrap();
        let mut after_round = Vec::new();
        let mut latest = std::collections::BTreeMap::new();
        for round in 0..ROUNDS {
            let writers: Vec<_> = (0..WRITERS)
                .map(|writer| {
                    let partition = partition.clone();
                    rt::spawn_local(async move {
                        let mut last = Vec::new();
                        for index in 0..PUTS_PER_ROUND / WRITERS {
                            // Writer w owns keys w, w + WRITERS, ...: one write per key at a time.
                            let key = writer + (index % (KEYS / WRITERS)) * WRITERS;
                            let value = value(key, round, index);
                            partition
                                .put("c", Bytes::from(format!("key-{key}")), value.clone())
                                .await
                                .unwrap();
                            last.push((key, value));
                        }
                        last
                    })
                })
                .collect();
            for writer in writers {
                for (key, value) in writer.await {
                    latest.insert(key, value);
                }
            }
            let stats = partition.stats();
            after_round.push(disk_bytes(&disk));
            println!(
                "round {round}: {} bytes on disk, {} segments, {} snapshots so far, durable LSN {}",
                after_round[round as usize], stats.segments, stats.snapshots, stats.durable_lsn
            );
        }
        let written = u64::from(ROUNDS * PUTS_PER_ROUND) * VALUE_BYTES as u64;
        let live = u64::from(KEYS) * VALUE_BYTES as u64;
        // A bound independent of how much was written: a few segments (the active one, the
        // ones the next snapshot will cover) and a snapshot or two of the live data.
        let bound = 4 * SEGMENT_BYTES_MIN + 4 * live;
        let last = *after_round.last().unwrap();
        assert!(partition.stats().snapshots >= 3, "snapshots did not run");
        assert!(
            last <= bound,
            "{last} bytes on disk after writing {written} bytes (bound {bound})"
        );
        assert!(
            last < written / 4,
            "disk use {last} grows with the {written} bytes written"
        );
        let snapshots: Vec<String> = disk
            .list()
            .unwrap()
            .into_iter()
            .filter(|name| name.ends_with(".snap"))
            .collect();
        assert_eq!(
            snapshots.len(),
            1,
            "superseded snapshots stay: {snapshots:?}"
        );
        // Disk use does not grow from round to round once snapshots run.
        let peak_late = after_round[2..].iter().max().unwrap();
        assert!(*peak_late <= bound, "late rounds peaked at {peak_late}");

        // Every key holds its latest value, before and after a reopen.
        let check = |partition: std::rc::Rc<coregrid_engine::Partition<SimDisk>>,
                     latest: std::collections::BTreeMap<u32, Bytes>| async move {
            for (key, value) in latest {
                let found = partition
                    .get("c", format!("key-{key}").as_bytes())
                    .await
                    .unwrap()
                    .expect("key present");
                assert_eq!(found.value, value, "key-{key}");
            }
        };
        check(partition.clone(), latest.clone()).await;
        partition.close().await.unwrap();
        let reopened = common::open(&disk, config).await.unwrap();
        check(reopened, latest).await;
    });
}
