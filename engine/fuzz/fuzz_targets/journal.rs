//! Any bytes as shard journal slot images into the journal's recovery scan: it stops at what is
//! not a whole chunk of the right life and sequence, never panics, and every entry it hands
//! out came from a chunk whose checksums matched.
#![no_main]

use coregrid_engine::journal::{decode_chunk, scan};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // First byte: number of slots (1..=3); the rest split evenly between them.
    let Some((&count, rest)) = data.split_first() else {
        return;
    };
    let count = (count % 3 + 1) as usize;
    let size = rest.len() / count;
    let images: Vec<Vec<u8>> = (0..count)
        .map(|index| rest[index * size..(index + 1) * size].to_vec())
        .collect();
    let recovered = scan(&images);
    if recovered.entries.is_empty() {
        return;
    }
    // Entries were found only behind a valid first chunk of some slot.
    assert!(images.iter().any(|image| decode_chunk(image, None).is_ok()));
});
