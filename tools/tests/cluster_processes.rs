//! Proves, with real `coregrid node` processes on loopback, that a cluster agrees on one
//! controller and one leadership map, and fences writes by it (design.md section 5, promise 1):
//! - three nodes started together with the same `--peers` elect one controller; every node
//!   holds the same epoch and the same map, and every partition has a leader;
//! - a client seeded with every node writes and reads keys of every partition (following
//!   `NotLeader` redirects), and a node that does not lead a key's partition answers
//!   `NotLeader` naming the leader, changing nothing;
//! - the controller, which also leads partitions, killed with SIGKILL: the others elect a new
//!   controller in a higher term, fence the dead node's partitions (a map without their
//!   leader), and hand each to the most recent of its other replicas (design.md section 6a);
//!   every value written before the kill (at `Quorum`, the client's default) is read back from
//!   the new leaders, and they take writes (the time from the kill to every partition led by a
//!   survivor is printed, not asserted); restarted on its directory, the killed node rejoins
//!   without a new election and, once in sync, gets its partitions back by a controlled
//!   handoff (the map's leaders are those from before the kill), with every value;
//! - a partition leader that is not the controller stopped with SIGTERM (a graceful stop: it
//!   announces `Leaving`): its partitions fail over the same way, with every value written
//!   before the stop; restarted, it rejoins, gets them back by handoffs, and every value is
//!   still there.

#[path = "common/cluster_client.rs"]
mod cluster_client;
#[path = "common/node_process.rs"]
#[expect(dead_code, reason = "a cluster's nodes are spawned, then waited for")]
mod node_process;
#[path = "common/wire_client.rs"]
#[expect(dead_code, reason = "this file uses only the routed put")]
mod wire_client;

use cluster_client::{client, wait_until, Peers};
use coregrid_net::message::{ClusterStatusResponse, ControlRole, ErrorResponse, MemberState};
use coregrid_net::NodeId;
use node_process::NodeProcess;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Instant;
use wire_client::{default_cluster, Answer};

const NODES: usize = 3;
const SHARDS: usize = 2;
const COLLECTION: &str = "cluster";
const KEYS: u32 = 64;

/// The statuses of `nodes` once they agree ([`cluster_client::agreed`]) on a map of an epoch at least
/// `min_epoch` and a controller among `alive`.
fn agreed(
    nodes: &[&NodeProcess],
    alive: &BTreeSet<NodeId>,
    min_epoch: u64,
) -> Option<Vec<ClusterStatusResponse>> {
    cluster_client::agreed(nodes, min_epoch).filter(|statuses| {
        statuses[0]
            .controller
            .is_some_and(|controller| alive.contains(&controller))
    })
}

/// Reads every key back through a client seeded with every node of `nodes`; each must hold
/// its value of `round`.
fn read_every_key(nodes: &[NodeProcess], round: u32, after: &str) {
    let seeds: Vec<SocketAddr> = nodes.iter().map(|node| node.addresses[0]).collect();
    let mut reader = client(&seeds);
    for index in 0..KEYS {
        let found = wait_until(&format!("{} readable after {after}", key(index)), || {
            reader.get(COLLECTION, key(index).as_bytes()).ok()
        });
        assert_eq!(
            found.map(|found| found.value),
            Some(format!("value-{index}-{round}").into_bytes()),
            "{} written in round {round}, before {after}",
            key(index)
        );
    }
}

/// Whether every partition of `status`'s map is led by one of `nodes`.
fn led_by(status: &ClusterStatusResponse, nodes: &BTreeSet<NodeId>) -> bool {
    status.partitions.iter().all(|partition| {
        partition
            .leader
            .is_some_and(|leader| nodes.contains(&leader))
    })
}

fn key(index: u32) -> String {
    format!("key-{index:03}")
}

fn write_every_key(seeds: &[SocketAddr], round: u32) {
    let mut client = client(seeds);
    for index in 0..KEYS {
        let value = format!("value-{index}-{round}");
        wait_until(&format!("a put of {} in round {round}", key(index)), || {
            let put = client.put(COLLECTION, key(index).as_bytes(), value.as_bytes());
            if let Err(error) = &put {
                eprintln!("put {}: {error}", key(index));
            }
            put.ok()
        });
    }
    for index in 0..KEYS {
        let found = client.get(COLLECTION, key(index).as_bytes()).unwrap();
        assert_eq!(
            found.map(|found| found.value),
            Some(format!("value-{index}-{round}").into_bytes()),
            "{} after round {round}",
            key(index)
        );
    }
}

#[test]
fn three_nodes_elect_one_controller_fence_writes_and_fail_over_a_killed_and_a_stopped_leader() {
    let peers = Peers::new(NODES);
    // Node `index` on its directory and control port (also its restart).
    let spawn = |index: usize| peers.spawn(index, SHARDS, &[]);
    let mut nodes: Vec<NodeProcess> = (0..NODES).map(spawn).collect();
    for node in &mut nodes {
        node.wait_ready();
    }
    let ids: BTreeSet<NodeId> = nodes.iter().map(|node| NodeId(node.node_id)).collect();
    assert_eq!(ids.len(), NODES, "distinct node ids");
    let everyone: Vec<&NodeProcess> = nodes.iter().collect();
    let statuses = wait_until("one controller and one map on every node", || {
        agreed(&everyone, &ids, 1)
    });
    let first = statuses[0].clone();
    let controller = first.controller.unwrap();
    assert_eq!(
        statuses
            .iter()
            .filter(|status| status.role == ControlRole::Controller)
            .count(),
        1,
        "exactly one node says it is the controller: {statuses:?}"
    );
    for status in &statuses {
        assert_eq!(status.members.len(), NODES, "{status:?}");
        assert!(status.term == first.term);
    }

    // Once, through any node: the client sends it to every partition's leader.
    let seeds: Vec<SocketAddr> = nodes.iter().map(|node| node.addresses[0]).collect();
    cluster_client::create_collection(&seeds, COLLECTION);
    write_every_key(&seeds, 1);

    // A node that does not lead a partition refuses its writes, naming the leader.
    let (fencing, partition) = nodes
        .iter()
        .find_map(|node| {
            let partition = first
                .partitions
                .iter()
                .position(|partition| partition.leader != Some(NodeId(node.node_id)))?;
            Some((node, partition as u32))
        })
        .expect("three nodes never all lead every partition");
    let mut wire = wire_client::NodeClient::connect(fencing.addresses[0], default_cluster());
    let fenced = (0..10_000)
        .map(|index| format!("fenced-{index}"))
        .find(|key| crc32c::crc32c(key.as_bytes()) % wire.partition_count == partition)
        .expect("a key of that partition");
    let partition = crc32c::crc32c(fenced.as_bytes()) % wire.partition_count;
    let refused = wire
        .for_key(fenced.as_bytes())
        .put(COLLECTION, fenced.as_bytes(), b"no");
    assert_eq!(
        refused,
        Answer::Error(ErrorResponse::NotLeader {
            leader: first.partitions[partition as usize].leader,
            epoch: first.epoch,
        })
    );

    // Kill the controller: the survivors elect another, and its partitions fail over.
    let killed_at = Instant::now();
    let index = nodes
        .iter()
        .position(|node| NodeId(node.node_id) == controller)
        .expect("the controller is one of the nodes");
    assert!(
        first
            .partitions
            .iter()
            .any(|partition| partition.leader == Some(controller)),
        "the controller leads partitions too"
    );
    let dead = nodes.remove(index);
    assert_eq!(
        dead.control_address.expect("a control address").port(),
        peers.control_port(index),
        "the restart below reuses the control port it was started on"
    );
    let _ = dead.stop_with(libc::SIGKILL);
    let survivors: BTreeSet<NodeId> = nodes.iter().map(|node| NodeId(node.node_id)).collect();
    let remaining: Vec<&NodeProcess> = nodes.iter().collect();
    let after = wait_until(
        "a new controller among the survivors, and every partition led by a survivor",
        || {
            agreed(&remaining, &survivors, first.epoch.get() + 1)
                .filter(|statuses| led_by(&statuses[0], &survivors))
        },
    );
    let failed_over = killed_at.elapsed();
    assert!(after[0].term > first.term, "a new term: {after:?}");
    read_every_key(&nodes, 1, "the kill");
    let seeds: Vec<SocketAddr> = nodes.iter().map(|node| node.addresses[0]).collect();
    write_every_key(&seeds, 2);
    println!(
        "controller and partition leader killed -> every partition led by a survivor: \
         {failed_over:?}; writable with every acknowledged value: {:?}",
        killed_at.elapsed()
    );

    // Restart it on its directory: it rejoins without a new election and follows.
    let mut restarted = spawn(index);
    restarted.wait_ready();
    assert_eq!(restarted.node_id, controller.get(), "the same node id");
    nodes.insert(index, restarted);
    let everyone: Vec<&NodeProcess> = nodes.iter().collect();
    let rejoined = wait_until("the restarted node in the same map and term", || {
        agreed(&everyone, &ids, after[0].epoch.get())
            .filter(|statuses| statuses.iter().all(|status| status.term == after[0].term))
    });
    assert_eq!(
        rejoined[0].controller, after[0].controller,
        "no new election"
    );
    // Back and in sync, it gets its partitions back by a controlled handoff: each survivor
    // stops taking the partition's writes, waits until it holds the whole log, and the next map
    // names it again.
    let handed_back = wait_until("the restarted node leading its partitions again", || {
        agreed(&everyone, &ids, rejoined[0].epoch.get()).filter(|statuses| {
            statuses[0]
                .partitions
                .iter()
                .zip(&first.partitions)
                .all(|(now, before)| now.leader == before.leader)
        })
    });
    println!(
        "restarted node {controller} leads its partitions again in epoch {}: {:?} after the kill",
        handed_back[0].epoch,
        killed_at.elapsed()
    );
    read_every_key(&nodes, 2, "the handoff");

    // Stop a partition leader that is not the controller with SIGTERM: it leaves gracefully.
    let map = handed_back[0].clone();
    let controller = map.controller.expect("a controller");
    let index = nodes
        .iter()
        .position(|node| {
            let id = NodeId(node.node_id);
            id != controller
                && map
                    .partitions
                    .iter()
                    .any(|partition| partition.leader == Some(id))
        })
        .expect("with three nodes a node other than the controller leads a partition");
    let leaving = nodes.remove(index);
    let leaving_id = NodeId(leaving.node_id);
    let status = leaving.stop_with(libc::SIGTERM);
    assert!(status.success(), "a clean exit after SIGTERM: {status:?}");
    let survivors: BTreeSet<NodeId> = nodes.iter().map(|node| NodeId(node.node_id)).collect();
    let remaining: Vec<&NodeProcess> = nodes.iter().collect();
    let away = wait_until(
        "the survivors agree that the stopped node left, and lead its partitions",
        || {
            agreed(&remaining, &survivors, map.epoch.get()).filter(|statuses| {
                led_by(&statuses[0], &survivors)
                    && statuses[0].members.iter().any(|member| {
                        member.node == leaving_id
                            && matches!(member.state, MemberState::Leaving | MemberState::Dead)
                    })
            })
        },
    );
    read_every_key(&nodes, 2, "the graceful stop");
    let seeds: Vec<SocketAddr> = nodes.iter().map(|node| node.addresses[0]).collect();
    write_every_key(&seeds, 3);

    // Restarted, it rejoins, gets its partitions back by handoffs, and every value is there.
    let mut restarted = spawn(index);
    restarted.wait_ready();
    nodes.insert(index, restarted);
    let everyone: Vec<&NodeProcess> = nodes.iter().collect();
    let back = wait_until("the gracefully stopped node back and Joined", || {
        agreed(&everyone, &ids, away[0].epoch.get()).filter(|statuses| {
            statuses[0]
                .members
                .iter()
                .any(|member| member.node == leaving_id && member.state == MemberState::Joined)
        })
    });
    assert!(back[0].epoch >= away[0].epoch);
    wait_until("the restarted node leading its partitions again", || {
        agreed(&everyone, &ids, back[0].epoch.get()).filter(|statuses| {
            statuses[0]
                .partitions
                .iter()
                .zip(&map.partitions)
                .all(|(now, before)| now.leader == before.leader)
        })
    });
    read_every_key(&nodes, 3, "the restart after the graceful stop");
    let seeds: Vec<SocketAddr> = nodes.iter().map(|node| node.addresses[0]).collect();
    write_every_key(&seeds, 4);
}
