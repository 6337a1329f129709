//! Proves that the client routes a key to the partition the engine stores it in: the client's
//! `partition_for_key` (net must not depend on the engine) equals the engine's, on many keys
//! and partition counts. If they drifted, every request would be answered `WrongShard` or,
//! worse, a node would look up a key in the wrong partition.

use coregrid_engine::engine::partition_for_key as engine_partition;
use coregrid_net::client::partition_for_key as client_partition;

#[test]
fn client_and_engine_agree_on_every_key_tried() {
    let mut keys: Vec<Vec<u8>> = (0..20_000u64)
        .map(|n| format!("k{n:015}").into_bytes())
        .collect();
    // Raw bytes of every length up to 64, and a largest key.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for length in 1..=64usize {
        let key = (0..length)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        keys.push(key);
    }
    keys.push(vec![0xff; coregrid_net::constants::KEY_BYTES_MAX]);
    for partitions in [1u32, 2, 3, 7, 64, 1000, 65_536] {
        for key in &keys {
            assert_eq!(
                client_partition(key, partitions).get(),
                engine_partition(key, partitions),
                "key {key:?} over {partitions} partitions"
            );
        }
    }
}
