//! No byte sequence makes the membership panic, and everything that is not a well-formed
//! datagram of our cluster is refused before it reaches foca: random bytes, every truncation
//! and every single-byte corruption of real datagrams. Real datagrams whose body is mutated and
//! then re-sealed with valid checksums (so that foca's and our decoders do see the garbage)
//! never panic either, and leave the node working, with the right state and data address of the
//! other node in its view. Fails on any panic, or on a damaged datagram that is not refused.

mod membership_support;

use coregrid_cluster::membership::{MembershipOutput, DATAGRAM_BYTES_MAX, DATAGRAM_HEADER_BYTES};
use coregrid_cluster::types::NodeState;
use membership_support::{address_of, data_address_of, SimNetwork};
use proptest::prelude::*;
use std::time::Duration;

/// Two joined nodes and the datagrams they exchanged to get there.
fn two_joined_nodes(seed: u64) -> SimNetwork {
    let mut network = SimNetwork::new(seed, 0, (1, 5));
    network.start_cluster(2, Duration::from_millis(50));
    network.set_state_everywhere(NodeState::Joined);
    network.run_until(Duration::from_secs(3));
    assert!(network.all_running_see(&[1, 2], NodeState::Joined));
    network
}

/// Feeds `bytes` to node 1 and returns its outputs.
fn feed(network: &mut SimNetwork, bytes: &[u8]) -> Vec<MembershipOutput> {
    let now = network.now;
    let membership = network.membership(1);
    membership.handle_datagram(now, address_of(2), bytes);
    std::iter::from_fn(|| membership.poll_output()).collect()
}

fn is_refused(outputs: &[MembershipOutput]) -> bool {
    matches!(outputs, [MembershipOutput::Refused { .. }])
}

/// Recomputes the body length and both crc32c of a datagram whose body was changed, so that
/// it passes the header checks and its body reaches the decoders (layout: see the wire docs).
fn reseal(datagram: &mut [u8]) {
    let body_len = (datagram.len() - DATAGRAM_HEADER_BYTES) as u16;
    datagram[10..12].copy_from_slice(&body_len.to_le_bytes());
    let body_crc = crc32c::crc32c(&datagram[DATAGRAM_HEADER_BYTES..]);
    datagram[12..16].copy_from_slice(&body_crc.to_le_bytes());
    let header_crc = crc32c::crc32c(&datagram[8..DATAGRAM_HEADER_BYTES]);
    datagram[4..8].copy_from_slice(&header_crc.to_le_bytes());
}

#[test]
fn every_truncation_and_every_corrupted_byte_of_real_datagrams_is_refused() {
    let mut network = two_joined_nodes(61);
    let datagrams: Vec<Vec<u8>> = network
        .sent
        .iter()
        .map(|(_, _, _, bytes)| bytes.clone())
        .collect();
    assert!(datagrams.len() > 5);
    for datagram in datagrams.iter().take(40) {
        for length in 0..datagram.len() {
            let outputs = feed(&mut network, &datagram[..length]);
            assert!(is_refused(&outputs), "truncated to {length}: {outputs:?}");
        }
        for position in 0..datagram.len() {
            let mut corrupted = datagram.clone();
            corrupted[position] ^= 0x5a;
            let outputs = feed(&mut network, &corrupted);
            assert!(
                is_refused(&outputs),
                "byte {position} corrupted: {outputs:?}"
            );
        }
    }
    let oversized = vec![0u8; DATAGRAM_BYTES_MAX + 1];
    assert!(is_refused(&feed(&mut network, &oversized)));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_are_refused_without_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..DATAGRAM_BYTES_MAX + 64),
        seed in 0u64..4,
    ) {
        let mut network = two_joined_nodes(seed);
        let outputs = feed(&mut network, &bytes);
        prop_assert!(is_refused(&outputs), "{:?}", outputs);
    }

    #[test]
    fn resealed_garbage_reaches_the_decoders_without_panic(
        pick in any::<prop::sample::Index>(),
        mutations in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
        seed in 0u64..4,
    ) {
        let mut network = two_joined_nodes(seed);
        let mut datagram = pick.get(&network.sent).3.clone();
        let body_len = datagram.len() - DATAGRAM_HEADER_BYTES;
        prop_assume!(body_len > 0);
        for (position, value) in &mutations {
            datagram[DATAGRAM_HEADER_BYTES + position.index(body_len)] = *value;
        }
        if truncate {
            datagram.truncate(DATAGRAM_HEADER_BYTES + cut.index(body_len));
        }
        reseal(&mut datagram);
        let _outputs = feed(&mut network, &datagram);
        // Whatever the garbage said, the two real nodes keep seeing each other joined, at the
        // data address each announced (a forged newer announcement is outvoted by its origin).
        let until = network.now + Duration::from_secs(20);
        network.run_until(until);
        prop_assert!(network.all_running_see(&[1, 2], NodeState::Joined));
        for (observer, node) in [(1, 2), (2, 1)] {
            prop_assert_eq!(
                network.data_addr_seen(observer, node),
                Some(data_address_of(node, 1))
            );
        }
    }
}
