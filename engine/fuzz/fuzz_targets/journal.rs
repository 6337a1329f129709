//! Shard journal slot images into the journal's recovery scan, two ways (the first byte's top
//! bit chooses):
//!
//! - **raw**: any bytes as slot images. The scan stops at what is not a whole chunk of the right
//!   life and sequence and never panics.
//! - **built**: the input is a program that writes chunks with valid checksums (the fuzzer
//!   cannot forge a crc32c): proper next chunks of one journal, chunks with any life and
//!   sequence numbers (up to `u64::MAX`) at any block, and byte flips. Every entry the scan
//!   hands out must be one a chunk was written with, no life number past `NUMBER_MAX` is taken;
//!   a program of proper chunks only must come back whole and in order.
#![no_main]

use coregrid_engine::journal::{
    chunk_len, encode_barrier, encode_chunk, encode_records, scan, EntryKind, JournalEntry,
    JOURNAL_BLOCK_BYTES, NUMBER_MAX,
};
use libfuzzer_sys::fuzz_target;

/// Blocks per slot in built images.
const SLOT_BLOCKS: usize = 4;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 0x80 == 0 {
        raw(mode, rest);
    } else {
        built(mode, rest);
    }
});

fn raw(mode: u8, rest: &[u8]) {
    // Number of slots (1..=3); the rest split evenly between them.
    let count = (mode % 3 + 1) as usize;
    let size = rest.len() / count;
    let images: Vec<Vec<u8>> = (0..count)
        .map(|index| rest[index * size..(index + 1) * size].to_vec())
        .collect();
    let recovered = scan(&images);
    assert!(recovered.last_file_no <= NUMBER_MAX);
}

/// Reads program bytes; zeros once they run out.
struct Program<'a>(&'a [u8]);

impl Program<'_> {
    fn byte(&mut self) -> u8 {
        let Some((&byte, rest)) = self.0.split_first() else {
            return 0;
        };
        self.0 = rest;
        byte
    }

    fn number(&mut self) -> u64 {
        match self.byte() {
            // Any 64-bit number, to reach the bounds.
            255 => (0..8).fold(0, |number, _| number << 8 | u64::from(self.byte())),
            small => u64::from(small % 8),
        }
    }
}

fn built(mode: u8, rest: &[u8]) {
    let slots = (mode % 4 + 1) as usize;
    let slot_bytes = SLOT_BLOCKS * JOURNAL_BLOCK_BYTES;
    let mut images = vec![vec![0u8; slot_bytes]; slots];
    let mut program = Program(rest);
    let mut written: Vec<JournalEntry> = Vec::new();
    // The proper journal: life `life` in slot `(life - 1) % slots`, at `offset`, chunk `seq`.
    let (mut life, mut offset, mut seq) = (1u64, 0usize, 1u64);
    let mut proper: Vec<JournalEntry> = Vec::new();
    let mut only_proper = true;
    let mut steps = 0;
    while !program.0.is_empty() && steps < 64 {
        steps += 1;
        let op = program.byte();
        match op % 4 {
            0 | 1 => {
                let (payload, entries) = payload(&mut program);
                let len = chunk_len(payload.len());
                if len > slot_bytes {
                    continue;
                }
                let (slot, at, file_no, chunk_seq) = if op % 4 == 0 {
                    if offset + len > slot_bytes {
                        life += 1;
                        offset = 0;
                    }
                    (((life - 1) % slots as u64) as usize, offset, life, seq)
                } else {
                    only_proper = false;
                    let slot = program.byte() as usize % slots;
                    let at = program.byte() as usize % SLOT_BLOCKS * JOURNAL_BLOCK_BYTES;
                    (slot, at, program.number(), program.number())
                };
                if at + len > slot_bytes {
                    continue;
                }
                encode_chunk(&mut images[slot][at..at + len], file_no, chunk_seq, &payload);
                if op % 4 == 0 {
                    offset += len;
                    seq += 1;
                    proper.extend(entries.iter().cloned());
                }
                written.extend(entries);
            }
            2 => {
                only_proper = false;
                let slot = program.byte() as usize % slots;
                let at = (usize::from(program.byte()) << 8 | usize::from(program.byte())) % slot_bytes;
                images[slot][at] ^= program.byte() | 1;
            }
            _ => {
                // A slot emptied to zeros (as a fresh journal's).
                only_proper = false;
                let slot = program.byte() as usize % slots;
                images[slot].fill(0);
            }
        }
    }
    let recovered = scan(&images);
    assert!(recovered.last_file_no <= NUMBER_MAX);
    for entry in &recovered.entries {
        assert!(written.contains(entry), "an entry no chunk was written with: {entry:?}");
    }
    // A journal written properly comes back whole unless it lapped its oldest slot.
    if only_proper && life <= slots as u64 {
        assert_eq!(recovered.entries, proper);
    }
}

/// A payload of up to three entries from the program, and the entries it holds.
fn payload(program: &mut Program<'_>) -> (Vec<u8>, Vec<JournalEntry>) {
    let mut payload = Vec::new();
    let mut entries = Vec::new();
    for _ in 0..program.byte() % 4 {
        let partition = u32::from(program.byte() % 4);
        let kind = program.byte();
        if kind % 3 == 0 {
            encode_barrier(&mut payload, partition);
            entries.push(JournalEntry {
                partition,
                kind: EntryKind::Barrier,
            });
        } else {
            let first_lsn = program.number();
            let len = usize::from(kind % 32) * 197 + 1;
            let bytes: Vec<u8> = (0..len).map(|index| kind ^ index as u8).collect();
            encode_records(&mut payload, partition, first_lsn, &bytes);
            entries.push(JournalEntry {
                partition,
                kind: EntryKind::Records { first_lsn, bytes },
            });
        }
    }
    (payload, entries)
}
