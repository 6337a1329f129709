//! Proves that a node's election state machine survives any sequence of messages, however
//! wrong (random kinds, senders that are voters, non-voters or strangers, terms from zero to
//! `u64::MAX`, maps with the wrong partition count or term, ring messages naming unknown
//! nodes), interleaved with timer ticks: it never panics, its term never goes down, every
//! `Persist` precedes the first message of its term, and it never publishes an epoch at or
//! below one it published before.

use coregrid_cluster::election::{ControlMessage, Controller, Output, Strategy as Election};
use coregrid_cluster::map::{FencedPosition, LeadershipMap, PartitionAssignment};
use coregrid_cluster::sim::SimConfig;
use coregrid_cluster::types::{Epoch, MapVersion, NodeId, PartitionId, Term, Time};
use proptest::prelude::*;
use std::time::Duration;

fn term() -> impl Strategy<Value = Term> {
    prop_oneof![
        (0u64..6).prop_map(Term),
        Just(Term(u64::MAX)),
        any::<u64>().prop_map(Term)
    ]
}

fn node() -> impl Strategy<Value = NodeId> {
    prop_oneof![(0u64..8).prop_map(NodeId), Just(NodeId(u64::MAX))]
}

fn version() -> impl Strategy<Value = MapVersion> {
    (term(), 0u64..6).prop_map(|(term, epoch)| MapVersion {
        term,
        epoch: Epoch(epoch),
    })
}

fn map() -> impl Strategy<Value = LeadershipMap> {
    (term(), 0u64..8, 0usize..10, prop::option::of(node())).prop_map(
        |(term, epoch, partitions, leader)| LeadershipMap {
            epoch: Epoch(epoch),
            term,
            partitions: (0..partitions)
                .map(|_| PartitionAssignment {
                    leader,
                    replicas: leader.into_iter().collect(),
                })
                .collect(),
        },
    )
}

fn message() -> impl Strategy<Value = ControlMessage> {
    prop_oneof![
        (term(), term(), version()).prop_map(|(term, proposed_term, stored)| {
            ControlMessage::PreVote {
                term,
                proposed_term,
                stored,
            }
        }),
        (term(), term(), any::<bool>()).prop_map(|(term, proposed_term, granted)| {
            ControlMessage::PreVoteReply {
                term,
                proposed_term,
                granted,
            }
        }),
        (term(), version()).prop_map(|(term, stored)| ControlMessage::Claim { term, stored }),
        (term(), any::<bool>(), version(), prop::option::of(map())).prop_map(
            |(term, granted, stored, map)| ControlMessage::ClaimReply {
                term,
                granted,
                stored,
                map,
            }
        ),
        (term(), map()).prop_map(|(term, map)| ControlMessage::Propose { term, map }),
        (term(), version())
            .prop_map(|(term, version)| ControlMessage::ProposeAck { term, version }),
        (term(), map()).prop_map(|(term, map)| ControlMessage::Commit { term, map }),
        (term(), version()).prop_map(|(term, committed)| ControlMessage::Heartbeat {
            term,
            committed,
            handoffs: Vec::new(),
        }),
        (
            term(),
            version(),
            version(),
            prop::collection::vec(position(), 0..6)
        )
            .prop_map(|(term, committed, stored, positions)| {
                ControlMessage::HeartbeatReply {
                    term,
                    committed,
                    stored,
                    positions,
                    ready: Vec::new(),
                }
            }),
        term().prop_map(|term| ControlMessage::Refuse { term }),
        term().prop_map(|term| ControlMessage::BullyElection { term }),
        term().prop_map(|term| ControlMessage::BullyAlive { term }),
        (
            term(),
            node(),
            0u64..3,
            prop::collection::vec(node(), 0..8),
            term()
        )
            .prop_map(|(term, initiator, round, collected, highest_term)| {
                ControlMessage::RingElection {
                    term,
                    initiator,
                    round,
                    collected,
                    highest_term,
                }
            }),
        (term(), node(), 0u64..3, node(), term()).prop_map(
            |(term, initiator, round, winner, highest_term)| ControlMessage::RingCoordinator {
                term,
                initiator,
                round,
                winner,
                highest_term,
            }
        ),
        (term(), node(), 0u64..3, any::<bool>()).prop_map(
            |(term, initiator, round, coordinator)| ControlMessage::RingAck {
                term,
                initiator,
                round,
                coordinator,
            }
        ),
    ]
}

#[derive(Clone, Debug)]
enum Input {
    Message(NodeId, ControlMessage),
    Tick(u64),
}

fn input() -> impl Strategy<Value = Input> {
    prop_oneof![
        4 => (node(), message()).prop_map(|(from, message)| Input::Message(from, message)),
        1 => (0u64..2000).prop_map(Input::Tick),
    ]
}

fn strategy() -> impl Strategy<Value = Election> {
    prop_oneof![
        Just(Election::Vote),
        Just(Election::Bully),
        Just(Election::Ring)
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn any_message_sequence_is_survived(
        strategy in strategy(),
        me in 1u64..=3,
        inputs in prop::collection::vec(input(), 1..60),
    ) {
        // Three voters 1..=3 among members 1..=5 (4 and 5 non-voters); others are strangers.
        let config = SimConfig::new(0, 5, strategy).election_config();
        let mut config = config;
        config.voters.truncate(3);
        let mut node = Controller::new(config, NodeId(me), None, Time::ZERO, me).unwrap();
        let mut now = Time::ZERO;
        let mut durable_term = Term(0);
        let mut highest_term = Term(0);
        let mut published = Epoch(0);
        for input in inputs {
            match input {
                Input::Message(from, message) => node.handle_message(now, from, message),
                Input::Tick(advance_ms) => {
                    now += Duration::from_millis(advance_ms);
                    node.tick(now);
                }
            }
            while let Some(output) = node.poll_output() {
                match output {
                    Output::Persist(persisted) => {
                        prop_assert!(persisted.term >= durable_term);
                        durable_term = persisted.term;
                    }
                    Output::Send { message, .. } => {
                        prop_assert!(message.term() <= durable_term, "{message:?} before its term was persisted");
                    }
                    Output::Publish(map) => {
                        prop_assert!(map.epoch > published);
                        published = map.epoch;
                    }
                }
            }
            let status = node.status();
            prop_assert!(status.term >= highest_term);
            highest_term = status.term;
            prop_assert_eq!(status.persisted_term, status.term);
        }
    }
}

/// Any fenced position, sensible or not: the controller must take it without panicking.
fn position() -> impl Strategy<Value = FencedPosition> {
    (
        any::<u32>(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        any::<bool>(),
    )
        .prop_map(
            |(partition, map_epoch, last_epoch, last_lsn, usable)| FencedPosition {
                partition: PartitionId(partition),
                map_epoch: Epoch(map_epoch),
                last_epoch: Epoch(last_epoch),
                last_lsn,
                usable,
            },
        )
}
