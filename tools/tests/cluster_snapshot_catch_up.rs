//! Proves, with three real `coregrid node` processes on loopback (replication factor 3), that a
//! follower the leader's log no longer reaches catches up by snapshot over the replication
//! channel (docs/replication.md, "Catch-up by snapshot"):
//! - a follower is killed with SIGKILL; its partition's leader takes so many writes that its
//!   snapshots prune the log past the follower's last record (small segments, snapshots every
//!   12 MiB, at most one segment held for followers behind);
//! - restarted on its directory, the follower is told `SnapshotNeeded`, fetches the leader's
//!   snapshot in chunks, installs it (its partition directory then holds a `.snap.installed`
//!   file), pulls the log after it, and answers every key with its latest value (`Any` reads).
//!
//! Without snapshots on the wire the follower stops at `SnapshotNeeded` and never serves the
//! keys written while it was down: the reads below time out.

#[path = "common/cluster.rs"]
#[expect(dead_code, reason = "no namespace, no split, no CLI writes here")]
mod cluster;
#[path = "common/node_process.rs"]
#[expect(dead_code, reason = "a cluster's nodes are spawned, then waited for")]
mod node_process;
#[path = "common/wire_client.rs"]
#[expect(dead_code, reason = "this file uses the routed connections only")]
mod wire_client;

use cluster::{key_of_partition, wait_until, TestCluster};
use coregrid_net::client::{BlockingClient, ClientConfig};
use coregrid_net::message::{ErrorResponse, GetRequest, GetResponse, ReadConsistency};
use coregrid_net::ClusterId;
use std::net::SocketAddr;
use std::path::Path;
use wire_client::{default_cluster, Answer, NodeClient};

const NODES: usize = 3;
const COLLECTION: &str = "snapshots";
/// The smallest segment size a multiple of 4 MiB, also the snapshot interval and the hold.
const SEGMENT_BYTES: &str = "12582912";
/// Keys of the partition, each overwritten many times: its snapshot stays small while its log
/// grows.
const KEYS: usize = 16;
/// 256 KiB values, 60 MiB in all: five snapshots of the partition, its log pruned far past
/// the follower's last record.
const WRITES: usize = 240;
const VALUE_BYTES: usize = 256 * 1024;

fn value(key: usize, round: usize) -> Vec<u8> {
    let mut value = format!("key {key} round {round} ").into_bytes();
    value.resize(VALUE_BYTES, b'.');
    value
}

fn files_named(dir: &Path, suffix: &str, found: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir)
        .expect("a readable directory")
        .flatten()
    {
        let path = entry.path();
        if path.is_dir() {
            files_named(&path, suffix, found);
        } else if path.to_string_lossy().ends_with(suffix) {
            found.push(path.display().to_string());
        }
    }
}

#[test]
fn a_follower_the_log_no_longer_reaches_catches_up_by_snapshot() {
    let mut cluster = TestCluster::start_with(
        NODES,
        "vote",
        &[
            "--segment-bytes",
            SEGMENT_BYTES,
            "--snapshot-wal-bytes",
            SEGMENT_BYTES,
            "--replica-hold-bytes",
            SEGMENT_BYTES,
        ],
    );
    let everyone: Vec<SocketAddr> = (0..NODES)
        .map(|index| cluster.data_address(index))
        .collect();
    let config = |seeds: &[SocketAddr]| {
        ClientConfig::new(seeds.to_vec(), ClusterId::from_name("coregrid").unwrap())
    };
    wait_until("the collection created", || {
        match BlockingClient::new(config(&everyone))
            .expect("a client")
            .create_collection(COLLECTION)
        {
            Ok(_) | Err(coregrid_net::client::ClientError::CollectionExists { .. }) => Ok(()),
            Err(error) => Err(error.to_string()),
        }
    });
    let seen = wait_until("agreement", || cluster.agreement(&[0, 1, 2]));
    let controller = cluster.index_of(seen[0].controller.expect("a controller"));
    let victim = (0..NODES)
        .find(|&index| index != controller)
        .expect("a node");
    let victim_id = cluster.ids[victim];
    let partition = seen[0]
        .leaders
        .iter()
        .position(|leader| *leader != Some(victim_id))
        .expect("a partition another node leads");
    let keys: Vec<String> = (0..KEYS)
        .map(|index| key_of_partition(partition, &format!("snap-{index}")))
        .collect();

    // A first round the victim takes part in.
    let mut client = BlockingClient::new(config(&everyone)).expect("a client");
    for (index, key) in keys.iter().enumerate() {
        wait_until(&format!("a put of {key}"), || {
            client
                .put(COLLECTION, key.as_bytes(), &value(index, 0))
                .map_err(|error| error.to_string())
        });
    }

    // Down while its leader writes 60 MiB to the partition.
    cluster.kill(victim);
    let survivors: Vec<SocketAddr> = (0..NODES)
        .filter(|&index| index != victim)
        .map(|index| cluster.data_address(index))
        .collect();
    let mut client = BlockingClient::new(config(&survivors)).expect("a client");
    let mut latest = [0; KEYS];
    for write in 0..WRITES {
        let index = write % KEYS;
        let round = write / KEYS + 1;
        let key = &keys[index];
        wait_until(&format!("a put of {key} (round {round})"), || {
            client
                .put(COLLECTION, key.as_bytes(), &value(index, round))
                .map_err(|error| error.to_string())
        });
        latest[index] = round;
    }
    println!(
        "{WRITES} writes of {VALUE_BYTES} bytes to partition {partition} while node {victim_id} \
         was down"
    );

    // Back: it must fetch the snapshot, install it, and catch up.
    cluster.restart(victim);
    let mut connections = NodeClient::connect(cluster.data_address(victim), default_cluster());
    for (index, key) in keys.iter().enumerate() {
        let wanted = value(index, latest[index]);
        wait_until(
            &format!("{key} with its latest value on node {victim_id}"),
            || {
                let answer = connections.for_key(key.as_bytes()).call(&GetRequest {
                    consistency: ReadConsistency::Any,
                    collection: COLLECTION.into(),
                    key: key.clone().into_bytes(),
                });
                match answer {
                    Answer::Get(GetResponse::Found { value, .. }) if value == wanted => Ok(()),
                    Answer::Error(
                        error @ (ErrorResponse::NotLeader { .. }
                        | ErrorResponse::Unavailable { .. }),
                    ) => Err(format!("{error:?}")),
                    Answer::Get(GetResponse::Found { value, .. }) => panic!(
                        "node {victim_id} answered {key} with {:?}, not its latest value: an Any \
                         read is answered only once the replica has caught up",
                        String::from_utf8_lossy(&value[..32])
                    ),
                    other => Err(format!("{other:?}")),
                }
            },
        );
    }
    let mut installed = Vec::new();
    files_named(cluster.data_dir(victim), ".snap.installed", &mut installed);
    println!("node {victim_id} caught up; installed snapshots: {installed:?}");
    assert!(
        !installed.is_empty(),
        "node {victim_id} caught up without installing its leader's snapshot: the log was not \
         pruned past it, so this test did not test catch-up by snapshot"
    );
}
