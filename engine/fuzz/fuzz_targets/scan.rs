//! Any bytes as WAL segment images into the recovery scanner: it may report corruption or cut a
//! tail, never panic, and every record it hands out validates with dense LSNs.
#![no_main]

use coregrid_engine::scan::{scan, SegmentImage};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // First byte: number of segments (1..=3); the rest split evenly between them.
    let Some((&count, rest)) = data.split_first() else {
        return;
    };
    let count = (count % 3 + 1) as usize;
    let size = rest.len() / count;
    let images: Vec<SegmentImage<'_>> = (0..count)
        .map(|index| SegmentImage {
            base_lsn: 1 + index as u64 * 3,
            bytes: &rest[index * size..(index + 1) * size],
        })
        .collect();
    let mut expected = 1u64;
    let _ = scan(&images, 0, 1, 4096, |record| {
        assert_eq!(record.header.lsn(), expected);
        expected += 1;
    });
});
