//! A restarted node gets its partitions back by controlled handoffs while clients keep writing
//! (issue 4: "a restart does not leave leadership piled on the survivors"), and no write
//! acknowledged at `Quorum` is lost on the way (design.md section 5, promise 2). With real
//! `coregrid node` processes on loopback:
//! - writer threads put unique keys at `Quorum`, back to back, for the whole test, and remember
//!   every put that was acknowledged;
//! - a partition leader that is not the controller is killed with SIGKILL: its partitions fail
//!   over to the survivors while the writers go on;
//! - restarted on its directory, it catches up under that load, and every partition it led
//!   comes back to it by a handoff (each leader stops taking the partition's writes only until
//!   the node holds the whole log): the map's leaders are those from before the kill;
//! - the writers are acknowledged after the handoffs too, and every acknowledged key holds its
//!   value on the leaders.
//!
//! The times from the restart to every partition back are printed, not asserted.

#[path = "common/cluster_client.rs"]
mod cluster_client;
#[path = "common/node_process.rs"]
#[expect(dead_code, reason = "a cluster's nodes are spawned, then waited for")]
mod node_process;

use cluster_client::{agreed, client, wait_until, Peers, CONDITION_WAIT_MAX};
use coregrid_net::message::MemberState;
use coregrid_net::NodeId;
use node_process::NodeProcess;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const NODES: usize = 3;
const SHARDS: usize = 2;
const WRITERS: usize = 32;
const COLLECTION: &str = "load";

/// A put that was acknowledged, and when.
struct Acked {
    key: String,
    value: String,
    at: Instant,
}

/// Writers putting unique keys at `Quorum` until told to stop; what each had acknowledged.
struct Load {
    stop: Arc<AtomicBool>,
    /// Per writer, its acknowledged puts so far.
    acknowledged: Arc<Vec<AtomicU64>>,
    writers: Vec<std::thread::JoinHandle<Vec<Acked>>>,
    failures: Arc<Mutex<Vec<String>>>,
}

impl Load {
    fn start(seeds: &[SocketAddr]) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let acknowledged = Arc::new((0..WRITERS).map(|_| AtomicU64::new(0)).collect::<Vec<_>>());
        let failures = Arc::new(Mutex::new(Vec::new()));
        let writers = (0..WRITERS)
            .map(|writer| {
                let (stop, acknowledged, failures) =
                    (stop.clone(), acknowledged.clone(), failures.clone());
                let seeds = seeds.to_vec();
                std::thread::spawn(move || {
                    let mut client = client(&seeds);
                    let mut acked = Vec::new();
                    let mut sequence = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let key = format!("w{writer}-{sequence:08}");
                        let value = format!("value-{writer}-{sequence}");
                        sequence += 1;
                        match client.put(COLLECTION, key.as_bytes(), value.as_bytes()) {
                            Ok(_) => {
                                acked.push(Acked {
                                    key,
                                    value,
                                    at: Instant::now(),
                                });
                                acknowledged[writer].fetch_add(1, Ordering::Relaxed);
                            }
                            // Not acknowledged: it may or may not be there; only the
                            // acknowledged keys are checked. Keep a few for the report.
                            Err(error) => {
                                let mut failures = failures.lock().unwrap();
                                if failures.len() < 20 {
                                    failures.push(format!("{key}: {error}"));
                                }
                                std::thread::sleep(Duration::from_millis(10));
                            }
                        }
                    }
                    acked
                })
            })
            .collect();
        Load {
            stop,
            acknowledged,
            writers,
            failures,
        }
    }

    fn acknowledged(&self) -> u64 {
        self.counts().iter().sum()
    }

    fn counts(&self) -> Vec<u64> {
        self.acknowledged
            .iter()
            .map(|count| count.load(Ordering::Relaxed))
            .collect()
    }

    /// Waits until every writer had another put acknowledged, and `more` were in all.
    fn wait_for_progress(&self, more: u64, during: &str) {
        let from = self.counts();
        let deadline = Instant::now() + CONDITION_WAIT_MAX;
        loop {
            let now = self.counts();
            let each = now.iter().zip(&from).all(|(now, from)| now > from);
            if each && now.iter().sum::<u64>() >= from.iter().sum::<u64>() + more {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "every writer acknowledged again, {more} puts in all, {during}, within \
                 {CONDITION_WAIT_MAX:?}; first failures: {:?}",
                self.failures.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the writers; each one's acknowledged puts, in order.
    fn stop(self) -> Vec<Vec<Acked>> {
        self.stop.store(true, Ordering::Relaxed);
        self.writers
            .into_iter()
            .map(|writer| writer.join().expect("a writer thread"))
            .collect()
    }
}

#[test]
fn a_restarted_leader_gets_its_partitions_back_by_handoff_while_clients_write() {
    let peers = Peers::new(NODES);
    // Node `index` on its directory and control port (also its restart).
    let spawn = |index: usize| peers.spawn(index, SHARDS, &[]);
    let mut nodes: Vec<NodeProcess> = (0..NODES).map(spawn).collect();
    for node in &mut nodes {
        node.wait_ready();
    }
    let everyone: Vec<&NodeProcess> = nodes.iter().collect();
    let first = wait_until("one controller and one map on every node", || {
        agreed(&everyone, 1)
    })
    .remove(0);
    // Once, through any node: the client sends it to every partition's leader.
    let seeds: Vec<SocketAddr> = nodes.iter().map(|node| node.addresses[0]).collect();
    cluster_client::create_collection(&seeds, COLLECTION);
    let load = Load::start(&seeds);
    load.wait_for_progress(200, "before the kill");

    // Kill a partition leader that is not the controller, under load.
    let controller = first.controller.expect("a controller");
    let index = nodes
        .iter()
        .position(|node| {
            let id = NodeId(node.node_id);
            id != controller
                && first
                    .partitions
                    .iter()
                    .any(|partition| partition.leader == Some(id))
        })
        .expect("with three nodes a node other than the controller leads a partition");
    let killed = nodes.remove(index);
    let killed_id = NodeId(killed.node_id);
    let _ = killed.stop_with(libc::SIGKILL);
    let survivors: BTreeSet<NodeId> = nodes.iter().map(|node| NodeId(node.node_id)).collect();
    let remaining: Vec<&NodeProcess> = nodes.iter().collect();
    let away = wait_until("every partition led by a survivor", || {
        agreed(&remaining, first.epoch.get() + 1).filter(|statuses| {
            statuses[0].partitions.iter().all(|partition| {
                partition
                    .leader
                    .is_some_and(|leader| survivors.contains(&leader))
            })
        })
    });
    load.wait_for_progress(200, "after the failover");

    // Restart it under load: it catches up, and its partitions come back by handoffs.
    let restarted_at = Instant::now();
    let mut restarted = spawn(index);
    restarted.wait_ready();
    assert_eq!(restarted.node_id, killed_id.get(), "the same node id");
    nodes.insert(index, restarted);
    let everyone: Vec<&NodeProcess> = nodes.iter().collect();
    wait_until("the restarted node Joined", || {
        agreed(&everyone, away[0].epoch.get()).filter(|statuses| {
            statuses[0]
                .members
                .iter()
                .any(|member| member.node == killed_id && member.state == MemberState::Joined)
        })
    });
    let joined_at = Instant::now();
    let joined = restarted_at.elapsed();
    let acknowledged_before = load.acknowledged();
    let back = wait_until(
        "the restarted node leading its partitions again, under load",
        || {
            agreed(&everyone, away[0].epoch.get()).filter(|statuses| {
                statuses[0]
                    .partitions
                    .iter()
                    .zip(&first.partitions)
                    .all(|(now, before)| now.leader == before.leader)
            })
        },
    );
    let back_at = Instant::now();
    let handed_back = restarted_at.elapsed();
    let during = load.acknowledged() - acknowledged_before;
    println!(
        "restart -> Joined {joined:?}; -> every partition back by handoff {handed_back:?} \
         (epoch {}), {during} puts acknowledged meanwhile",
        back[0].epoch
    );
    load.wait_for_progress(200, "after the handoffs");
    let writers = load.stop();
    // The longest a writer went without an acknowledgement while the partitions moved back: how
    // long its partition refused writes, plus the redirect to the new leader.
    let window = (joined_at, back_at);
    let longest_gap = writers
        .iter()
        .flat_map(|acked| {
            acked
                .windows(2)
                .filter(|pair| pair[1].at >= window.0 && pair[0].at <= window.1)
                .map(|pair| (pair[1].at - pair[0].at, pair[0].at))
        })
        .max()
        .map_or(Duration::ZERO, |(gap, _)| gap);
    println!(
        "longest wait of one writer for an acknowledgement around the handoffs: {longest_gap:?}"
    );
    let acked: Vec<Acked> = writers.into_iter().flatten().collect();
    assert!(!acked.is_empty());

    // Every acknowledged put holds its value.
    let seeds: Vec<SocketAddr> = nodes.iter().map(|node| node.addresses[0]).collect();
    let mut reader = client(&seeds);
    for Acked { key, value, .. } in &acked {
        let found = wait_until(&format!("{key} readable"), || {
            reader.get(COLLECTION, key.as_bytes()).ok()
        });
        assert_eq!(
            found.map(|found| found.value),
            Some(value.clone().into_bytes()),
            "{key} was acknowledged at Quorum"
        );
    }
    println!("{} acknowledged puts, every one read back", acked.len());
}
