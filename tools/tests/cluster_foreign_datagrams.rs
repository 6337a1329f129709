//! A control datagram of another cluster is refused (issue 4: the cluster id is checked on
//! every peer message), proved on real `coregrid node` processes with a datagram that would
//! change the receiver if it were accepted:
//! - three nodes run; a follower is killed, and the test binds its control address, so what
//!   it sends passes the receiver's "from the claimed node's address" check;
//! - it sends the other follower a `Refuse` naming a term 100 above the current one, carrying
//!   the cluster id a cluster on the default name had before session 9 (the name itself: what
//!   another cluster created apart would carry), then the same with a term 50 above, carrying
//!   the cluster's own id (read from the node's `node.toml`);
//! - the receiver adopts the second term (so such a datagram does take effect, and the first
//!   was handled before it), and never the first: its term ends between +50 and +100.

#[path = "common/cluster.rs"]
#[expect(dead_code, reason = "no namespace, no split, no CLI writes here")]
mod cluster;
#[path = "common/node_process.rs"]
#[expect(dead_code, reason = "a cluster's nodes are spawned, then waited for")]
mod node_process;

use cluster::{wait_until, TestCluster};
use coregrid_cluster::election::ControlMessage;
use coregrid_cluster::types::{ClusterId, NodeId, Term};
use coregrid_cluster::wire::{self, ControlDatagram};
use std::net::UdpSocket;
use std::time::{Duration, Instant};

/// The cluster id in a node's `node.toml`.
fn cluster_id_of(data_dir: &std::path::Path) -> ClusterId {
    let text = std::fs::read_to_string(data_dir.join("node.toml")).expect("node.toml");
    let table: toml::Table = text.parse().expect("valid TOML");
    let hex = table["cluster_id"].as_str().expect("a cluster_id");
    let mut id = [0u8; 16];
    for (index, byte) in id.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * index..2 * index + 2], 16).expect("hex");
    }
    ClusterId(id)
}

#[test]
fn a_control_datagram_of_another_cluster_is_refused() {
    let mut cluster = TestCluster::start(3, "vote");
    let seen = wait_until("agreement", || cluster.agreement(&[0, 1, 2]));
    let controller = seen[0].controller.expect("a controller");
    let followers: Vec<usize> = (0..3)
        .filter(|&index| cluster.ids[index] != controller)
        .collect();
    let (target, impersonated) = (followers[0], followers[1]);
    let own = cluster_id_of(cluster.data_dir(target));
    let foreign = ClusterId::from_name("coregrid").unwrap();
    assert_ne!(own, foreign, "the cluster id is created, not the name");
    let from = cluster.control_address(impersonated);
    let to = cluster.control_address(target);
    cluster.kill(impersonated);
    // The killed node's port is free once the kernel has closed its socket.
    let deadline = Instant::now() + Duration::from_secs(30);
    let socket = loop {
        match UdpSocket::bind(from) {
            Ok(socket) => break socket,
            Err(error) => {
                assert!(Instant::now() < deadline, "bind {from}: {error}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    };
    let term = cluster.status(target).expect("the target's status").term;
    let send = |cluster_id: ClusterId, term: u64| {
        let datagram = ControlDatagram {
            cluster: cluster_id,
            from: NodeId(cluster.ids[impersonated]),
            message: ControlMessage::Refuse { term: Term(term) },
        };
        let mut bytes = Vec::new();
        wire::encode(&mut bytes, &datagram).expect("encoded");
        socket.send_to(&bytes, to).expect("sent");
    };
    send(foreign, term + 100);
    send(own, term + 50);
    let adopted = wait_until(
        "the target adopts the term of its own cluster's datagram",
        || {
            let seen = cluster.status(target)?;
            if seen.term >= term + 50 {
                Ok(seen.term)
            } else {
                Err(format!("term {} (was {term})", seen.term))
            }
        },
    );
    assert!(
        adopted < term + 100,
        "term {adopted}: the datagram of another cluster was taken (was {term})"
    );
}
