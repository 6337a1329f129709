//! Proves, with three real `coregrid node` processes on loopback (replication factor 3), that a
//! write is acknowledged at `Quorum` or `All` only once that many replicas hold it durably
//! (design.md section 5, promise 2), and is refused up front when too few followers are in
//! sync:
//! - with both followers of a partition stopped (SIGSTOP: they hold their sockets and answer
//!   nothing), a `Quorum` write to it is never acknowledged: it ends `Unknown` (or is refused),
//!   (this fails at once when the leader answers once it alone holds the write), and neither
//!   is a collection change sent to that leader at the same moment;
//! - with one node killed for longer than `--replica-lag-ms`, an `All` write is refused with
//!   `NotEnoughReplicas` and changes nothing, while `Quorum` writes go on; once the node is back
//!   and caught up, `All` writes succeed again;
//! - every write acknowledged at `All` is on every node's disk: after 120 of them, all three
//!   nodes are killed with SIGKILL right after the last answer, and each node's data directory,
//!   opened by the engine itself, holds every key with its value (this fails, in 3 of 3 runs
//!   tried, when the leader answers without waiting: a follower lacks the last write).

#[path = "common/cluster.rs"]
#[expect(dead_code, reason = "no namespace, no split, no CLI writes here")]
mod cluster;
#[path = "common/node_process.rs"]
#[expect(dead_code, reason = "a cluster's nodes are spawned, then waited for")]
mod node_process;
#[path = "common/wire_client.rs"]
#[expect(dead_code, reason = "only a collection change is sent raw here")]
mod wire_client;

use cluster::{key_of_partition, wait_until, TestCluster};
use coregrid_engine::{Engine, EngineConfig};
use coregrid_net::client::{BlockingClient, ClientConfig, ClientError, RetryPolicy};
use coregrid_net::message::WriteConsistency;
use coregrid_net::ClusterId;
use std::net::SocketAddr;
use std::time::Duration;

const NODES: usize = 3;
const COLLECTION: &str = "acks";
/// Short, so that a killed follower drops out of sync quickly.
const REPLICA_LAG_MS: &str = "1500";
/// Short, so that a write nobody acknowledges ends quickly.
const ACK_TIMEOUT_MS: &str = "1500";
/// Writes of the last phase, each acknowledged at `All`.
const ALL_WRITES: usize = 120;

fn client(seeds: &[SocketAddr], consistency: WriteConsistency, retries_max: u32) -> BlockingClient {
    let mut config = ClientConfig::new(seeds.to_vec(), ClusterId::from_name("coregrid").unwrap());
    config.write_consistency = consistency;
    config.request_timeout = Duration::from_secs(10);
    config.retry = RetryPolicy {
        retries_max,
        ..RetryPolicy::default()
    };
    BlockingClient::new(config).expect("a client")
}

fn seeds(cluster: &TestCluster, nodes: &[usize]) -> Vec<SocketAddr> {
    nodes
        .iter()
        .map(|&index| cluster.data_address(index))
        .collect()
}

/// The value stored under `key` on the node, read with the cluster's own client.
fn read(seeds: &[SocketAddr], key: &str) -> Result<Option<Vec<u8>>, ClientError> {
    client(seeds, WriteConsistency::One, 8)
        .get(COLLECTION, key.as_bytes())
        .map(|found| found.map(|value| value.value.to_vec()))
}

#[test]
fn writes_wait_for_their_replicas_and_too_few_in_sync_are_refused_up_front() {
    let mut cluster = TestCluster::start_with(
        NODES,
        "vote",
        &[
            "--replica-lag-ms",
            REPLICA_LAG_MS,
            "--replica-ack-timeout-ms",
            ACK_TIMEOUT_MS,
        ],
    );
    let everyone = seeds(&cluster, &[0, 1, 2]);
    wait_until("the collection created", || {
        match client(&everyone, WriteConsistency::One, 4).create_collection(COLLECTION) {
            Ok(_) | Err(ClientError::CollectionExists { .. }) => Ok(()),
            Err(error) => Err(error.to_string()),
        }
    });
    // Every replica in sync: an `All` write to each partition goes through.
    let partitions = wait_until("agreement", || cluster.agreement(&[0, 1, 2])).remove(0);
    for partition in 0..partitions.leaders.len() {
        let key = key_of_partition(partition, "warm");
        wait_until(&format!("an All write to partition {partition}"), || {
            client(&everyone, WriteConsistency::All, 0)
                .put(COLLECTION, key.as_bytes(), b"warm")
                .map_err(|error| error.to_string())
        });
    }

    // 1. Both followers of a partition stopped: a `Quorum` write to it is never acknowledged.
    let seen = wait_until("agreement", || cluster.agreement(&[0, 1, 2]));
    let leader_id = seen[0].leaders[0].expect("partition 0 is led");
    let leader = cluster.index_of(leader_id);
    let followers: Vec<usize> = (0..NODES).filter(|&index| index != leader).collect();
    let key = key_of_partition(0, "unacknowledged");
    // A collection change too, sent to the leader alone (the client would send it to every
    // leader, the stopped ones included), at the same moment as the put: before the leader
    // loses its write lease, which would refuse both whatever they waited for.
    let mut raw = wire_client::WireClient::connect(
        cluster.data_address(leader),
        wire_client::default_cluster(),
    );
    for &follower in &followers {
        cluster.pause(follower);
    }
    let change =
        std::thread::spawn(move || raw.create_collection_at("unacked", WriteConsistency::Quorum));
    let answer = client(&seeds(&cluster, &[leader]), WriteConsistency::Quorum, 0).put(
        COLLECTION,
        key.as_bytes(),
        b"held by the leader alone",
    );
    let change = change.join().expect("the collection change's thread");
    for &follower in &followers {
        cluster.resume(follower);
    }
    println!("a Quorum write with both followers stopped: {answer:?}");
    println!("a Quorum collection change with both followers stopped: {change:?}");
    assert!(
        matches!(change, wire_client::Answer::Error(_)),
        "a Quorum collection change was acknowledged while both followers of the leader's \
         partitions were stopped: {change:?}"
    );
    // Any error will do (`Unknown` after the ack timeout, or a refusal if the leader lost
    // its lease meanwhile); an acknowledgement breaks the promise.
    if let Ok(revision) = answer {
        panic!(
            "a Quorum write was acknowledged (revision {revision:?}) while both followers of \
             its partition were stopped: no majority held it"
        );
    }

    // 2. One node killed for longer than the lag: `All` is refused up front and changes
    //    nothing; `Quorum` goes on.
    let seen = wait_until("agreement after the resume", || {
        cluster.agreement(&[0, 1, 2])
    });
    let controller = cluster.index_of(seen[0].controller.expect("a controller"));
    let victim = (0..NODES)
        .find(|&index| index != controller)
        .expect("a node");
    let survivors: Vec<usize> = (0..NODES).filter(|&index| index != victim).collect();
    cluster.kill(victim);
    let alive = seeds(&cluster, &survivors);
    let mut attempt = 0;
    let (refused_key, refusal) = wait_until("an All write refused up front", || {
        attempt += 1;
        let key = key_of_partition(attempt % 8, &format!("all-{attempt}"));
        match client(&alive, WriteConsistency::All, 0).put(COLLECTION, key.as_bytes(), b"x") {
            Err(error @ ClientError::NotEnoughReplicas { .. }) => Ok((key, error)),
            other => Err(format!("{other:?}")),
        }
    });
    println!("with node {} down: {refusal}", cluster.ids[victim]);
    assert!(
        matches!(
            refusal,
            ClientError::NotEnoughReplicas {
                needed: 3,
                available: 2
            }
        ),
        "{refusal:?}"
    );
    assert_eq!(
        read(&alive, &refused_key).expect("a read"),
        None,
        "a write refused with NotEnoughReplicas changed nothing"
    );
    // (To a partition a survivor leads: leadership does not fail over yet.)
    let survivor_led = seen[0]
        .leaders
        .iter()
        .position(|leader| *leader != Some(cluster.ids[victim]))
        .expect("a partition led by a survivor");
    let key = key_of_partition(survivor_led, "quorum-with-one-down");
    wait_until("a Quorum write with one node down", || {
        client(&alive, WriteConsistency::Quorum, 4)
            .put(COLLECTION, key.as_bytes(), b"q")
            .map_err(|error| error.to_string())
    });

    // Back, it catches up and `All` works again.
    cluster.restart(victim);
    let everyone = seeds(&cluster, &[0, 1, 2]);
    for partition in 0..8 {
        let key = key_of_partition(partition, "back");
        wait_until(
            &format!("an All write to partition {partition} again"),
            || {
                client(&everyone, WriteConsistency::All, 0)
                    .put(COLLECTION, key.as_bytes(), b"back")
                    .map_err(|error| error.to_string())
            },
        );
    }

    println!("every partition takes All writes again after the restart");
    let started = std::time::Instant::now();

    // 3. Every write acknowledged at `All` is on every node's disk, even when every node is
    //    killed right after the last answer.
    let mut writer = client(&everyone, WriteConsistency::All, 8);
    let written: Vec<(String, String)> = (0..ALL_WRITES)
        .map(|index| (format!("durable-{index:03}"), format!("value-{index}")))
        .collect();
    for (key, value) in &written {
        writer
            .put(COLLECTION, key.as_bytes(), value.as_bytes())
            .unwrap_or_else(|error| panic!("an All write of {key}: {error}"));
    }
    println!("{ALL_WRITES} All writes in {:?}", started.elapsed());
    for index in 0..NODES {
        cluster.kill(index);
    }
    for index in 0..NODES {
        let engine = Engine::open(EngineConfig {
            data_dir: cluster.data_dir(index).to_path_buf(),
            shards: 1,
            partitions: 8,
            pin_shards: false,
            ..EngineConfig::default()
        })
        .expect("the node's engine opens");
        for (key, value) in &written {
            let found = futures::executor::block_on(engine.get(COLLECTION, key.clone()))
                .unwrap_or_else(|error| {
                    panic!("node {}: reading {key}: {error}", cluster.ids[index])
                });
            assert_eq!(
                found.map(|found| found.value.to_vec()),
                Some(value.as_bytes().to_vec()),
                "node {} lacks {key}, acknowledged at All before it was killed",
                cluster.ids[index]
            );
        }
        engine.shutdown();
        println!(
            "node {}: every one of {ALL_WRITES} All writes on disk",
            cluster.ids[index]
        );
    }
}
