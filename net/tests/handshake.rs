//! Proves the handshake's decisions: a hello from the right cluster, protocol and target is
//! accepted and opens its channel; a wrong cluster id, protocol version, node, shard or channel
//! is refused with a reason that says what to fix, and the refusal travels back intact.

use coregrid_net::constants::{PROTOCOL_VERSION, PROTOCOL_VERSION_MIN};
use coregrid_net::message::{
    answer_hello, Hello, HelloAccepted, HelloReply, LocalIdentity, Peer, Refusal,
};
use coregrid_net::{
    access, encode, ChannelKind, ClientId, ClusterId, Epoch, FrameDecoder, FrameMeta, Message,
    NodeId, ShardId,
};

fn local() -> LocalIdentity {
    LocalIdentity {
        cluster_id: ClusterId([1; 16]),
        node: NodeId(3),
        shard: ShardId(1),
        epoch: Epoch(8),
        serves_client: true,
        serves_replication: true,
    }
}

/// Sends `hello` through the wire and returns the server's answer to what arrived.
fn answer(hello: &Hello, local: &LocalIdentity) -> HelloReply {
    let mut out = Vec::new();
    encode(&mut out, FrameMeta::default(), hello).unwrap();
    let mut decoder = FrameDecoder::new(ChannelKind::Handshake);
    decoder.feed(&out).unwrap();
    let frame = decoder.next_frame().unwrap().unwrap();
    let reply = answer_hello(access::<Hello>(&frame).unwrap(), local);
    // The reply travels back as well.
    let mut back = Vec::new();
    encode(&mut back, FrameMeta::default(), &reply).unwrap();
    let mut decoder = FrameDecoder::new(ChannelKind::Handshake);
    decoder.feed(&back).unwrap();
    let frame = decoder.next_frame().unwrap().unwrap();
    HelloReply::to_native(access::<HelloReply>(&frame).unwrap()).unwrap()
}

fn good_hello() -> Hello {
    Hello {
        node: Some(NodeId(3)),
        shard: Some(ShardId(1)),
        ..Hello::client(ClusterId([1; 16]), ClientId(99))
    }
}

fn refusal(hello: &Hello, local: &LocalIdentity) -> Refusal {
    match answer(hello, local) {
        HelloReply::Refused(refusal) => refusal,
        accepted => panic!("expected a refusal, got {accepted:?}"),
    }
}

#[test]
fn a_matching_hello_is_accepted() {
    assert_eq!(
        answer(&good_hello(), &local()),
        HelloReply::Accepted(HelloAccepted {
            node: NodeId(3),
            shard: ShardId(1),
            protocol_version: PROTOCOL_VERSION,
            epoch: Epoch(8),
        })
    );
    // No node or shard named: any will do.
    let anywhere = Hello::client(ClusterId([1; 16]), ClientId(99));
    assert!(matches!(
        answer(&anywhere, &local()),
        HelloReply::Accepted(_)
    ));
    let replica = Hello {
        channel: ChannelKind::Replication,
        sender: Peer::Node(NodeId(4)),
        ..good_hello()
    };
    assert!(matches!(
        answer(&replica, &local()),
        HelloReply::Accepted(_)
    ));
}

#[test]
fn another_cluster_is_refused() {
    let hello = Hello {
        cluster_id: ClusterId([2; 16]),
        ..good_hello()
    };
    let refusal = refusal(&hello, &local());
    assert_eq!(
        refusal,
        Refusal::WrongCluster {
            expected: ClusterId([1; 16]),
            actual: ClusterId([2; 16]),
        }
    );
    assert_eq!(
        refusal.to_string(),
        "wrong cluster: this node belongs to cluster 01010101010101010101010101010101, \
         the peer to 02020202020202020202020202020202"
    );
}

#[test]
fn another_protocol_version_is_refused() {
    for version in [
        0,
        PROTOCOL_VERSION_MIN.wrapping_sub(1),
        PROTOCOL_VERSION + 1,
    ] {
        if (PROTOCOL_VERSION_MIN..=PROTOCOL_VERSION).contains(&version) {
            continue;
        }
        let hello = Hello {
            protocol_version: version,
            ..good_hello()
        };
        let refusal = refusal(&hello, &local());
        assert_eq!(
            refusal,
            Refusal::UnsupportedProtocol {
                min: PROTOCOL_VERSION_MIN,
                max: PROTOCOL_VERSION,
                actual: version,
            }
        );
        assert!(refusal.to_string().contains("unsupported protocol version"));
    }
}

#[test]
fn another_node_or_shard_is_refused() {
    let hello = Hello {
        node: Some(NodeId(4)),
        ..good_hello()
    };
    assert_eq!(
        refusal(&hello, &local()),
        Refusal::WrongNode {
            expected: NodeId(4),
            actual: NodeId(3)
        }
    );
    let hello = Hello {
        shard: Some(ShardId(0)),
        ..good_hello()
    };
    let refusal = refusal(&hello, &local());
    assert_eq!(
        refusal,
        Refusal::WrongShard {
            expected: ShardId(0),
            actual: ShardId(1)
        }
    );
    assert_eq!(
        refusal.to_string(),
        "wrong shard: the peer asked for shard 0, this port serves shard 1"
    );
}

#[test]
fn channels_not_served_are_refused() {
    // Replication from a client.
    let hello = Hello {
        channel: ChannelKind::Replication,
        ..good_hello()
    };
    assert!(matches!(
        refusal(&hello, &local()),
        Refusal::ChannelRefused {
            channel: ChannelKind::Replication,
            ..
        }
    ));
    // Clients on a replication-only port.
    let replication_only = LocalIdentity {
        serves_client: false,
        ..local()
    };
    assert!(matches!(
        refusal(&good_hello(), &replication_only),
        Refusal::ChannelRefused {
            channel: ChannelKind::Client,
            ..
        }
    ));
    // Control traffic is datagrams: no connection serves it, not even to a node.
    let hello = Hello {
        channel: ChannelKind::Control,
        sender: Peer::Node(NodeId(2)),
        ..good_hello()
    };
    assert!(matches!(
        refusal(&hello, &local()),
        Refusal::ChannelRefused {
            channel: ChannelKind::Control,
            ..
        }
    ));
}

#[test]
fn a_hello_that_opens_no_channel_cannot_be_sent() {
    let hello = Hello {
        channel: ChannelKind::Handshake,
        ..good_hello()
    };
    assert!(encode(&mut Vec::new(), FrameMeta::default(), &hello).is_err());
}
