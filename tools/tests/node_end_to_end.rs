//! Proves that a `coregrid node` process serves the wire protocol end to end and keeps what it
//! acknowledged: writes through every shard (routed by the topology answer), a wrong-shard
//! request redirected with the owner's port, SIGTERM exits 0 after its drain, a restart on the
//! same directory keeps the node id and serves every acknowledged value; then writes
//! acknowledged right before a SIGKILL are all there after another restart. And a node that
//! cannot start says why and exits cleanly: a port it must listen on held by another socket
//! ends the run with exit code 1 and "cannot listen on <address>", after the shards already
//! started are stopped (this once panicked with "failed to join thread: Resource deadlock
//! avoided" as the last engine handle was dropped on a shard).

#[path = "common/node_process.rs"]
#[expect(dead_code, reason = "this file restarts no node on fixed ports")]
mod node_process;
#[path = "common/wire_client.rs"]
#[expect(dead_code, reason = "this file sends no raw bytes")]
mod wire_client;

use coregrid_net::message::{ErrorResponse, GetResponse};
use coregrid_net::Lsn;
use node_process::NodeProcess;
use std::process::{Command, Stdio};
use wire_client::{default_cluster, Answer, NodeClient, Received};

const COLLECTION: &str = "e2e";

fn key(index: u32) -> Vec<u8> {
    format!("key-{index:05}").into_bytes()
}

fn value(index: u32, round: u32) -> Vec<u8> {
    format!("value-{index}-{round}")
        .repeat(1 + index as usize % 7)
        .into_bytes()
}

/// Writes keys `range` with `round`'s values, pipelined on each shard's connection; returns
/// every acknowledged (key, value).
fn write_all(
    client: &mut NodeClient,
    range: std::ops::Range<u32>,
    round: u32,
) -> Vec<(Vec<u8>, Vec<u8>)> {
    type Sent = (coregrid_net::RequestId, Vec<u8>, Vec<u8>);
    let mut pending: Vec<Vec<Sent>> = (0..client.shards.len()).map(|_| Vec::new()).collect();
    for index in range {
        let (key, value) = (key(index), value(index, round));
        let partition = crc32c::crc32c(&key) % client.partition_count;
        let shard = partition as usize % client.shards.len();
        let connection = &mut client.shards[shard];
        let request = connection.put_request(COLLECTION, &key, &value);
        let id = connection.send(&request);
        pending[shard].push((id, key, value));
    }
    let mut acknowledged = Vec::new();
    for (shard, sent) in pending.into_iter().enumerate() {
        let mut by_id: std::collections::HashMap<_, _> = sent
            .into_iter()
            .map(|(id, key, value)| (id, (key, value)))
            .collect();
        while !by_id.is_empty() {
            match client.shards[shard].receive() {
                Received::Frame(id, Answer::Write(write)) => {
                    assert!(write.revision > Lsn(0));
                    acknowledged.push(by_id.remove(&id).expect("an answer to a request sent"));
                }
                other => panic!("put on shard {shard}: {other:?}"),
            }
        }
    }
    acknowledged
}

fn check_all(client: &mut NodeClient, expected: &[(Vec<u8>, Vec<u8>)]) {
    for (key, value) in expected {
        match client.for_key(key).get(COLLECTION, key) {
            Answer::Get(GetResponse::Found { value: found, .. }) => {
                assert_eq!(&found, value, "key {:?}", String::from_utf8_lossy(key))
            }
            other => panic!("key {:?}: {other:?}", String::from_utf8_lossy(key)),
        }
    }
}

#[test]
fn acknowledged_writes_survive_sigterm_and_sigkill_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProcess::start(dir.path(), 2, &[]);
    let first_id = node.node_id;
    let mut client = NodeClient::connect(node.addresses[0], default_cluster());
    client.shards[0].create_collection(COLLECTION);
    let mut expected = write_all(&mut client, 0..400, 1);
    assert_eq!(expected.len(), 400);
    check_all(&mut client, &expected);

    // A key sent to the shard that does not own it is redirected, not served.
    let foreign = (0..)
        .map(key)
        .find(|key| (crc32c::crc32c(key) % client.partition_count) % 2 == 1)
        .unwrap();
    match client.shards[0].get(COLLECTION, &foreign) {
        Answer::Error(ErrorResponse::WrongShard { shard, port, .. }) => {
            assert_eq!(shard.map(|shard| shard.get()), Some(1));
            assert_eq!(port, Some(node.addresses[1].port()));
        }
        other => panic!("expected a redirect, got {other:?}"),
    }
    // An unknown collection is named in the error.
    let local = (0..)
        .map(key)
        .find(|key| (crc32c::crc32c(key) % client.partition_count).is_multiple_of(2))
        .unwrap();
    assert!(matches!(
        client.shards[0].get("missing", &local),
        Answer::Error(ErrorResponse::CollectionNotFound { .. })
    ));

    let status = node.stop_with(libc::SIGTERM);
    assert_eq!(
        status.code(),
        Some(0),
        "SIGTERM: a clean drain exits 0 ({status})"
    );

    let node = NodeProcess::start(dir.path(), 2, &[]);
    assert_eq!(
        node.node_id, first_id,
        "the node id is kept in the data directory"
    );
    let mut client = NodeClient::connect(node.addresses[0], default_cluster());
    check_all(&mut client, &expected);
    // Overwrite half, then SIGKILL right after the acknowledgements.
    let overwritten = write_all(&mut client, 0..200, 2);
    let status = node.stop_with(libc::SIGKILL);
    assert_eq!(status.code(), None, "killed by a signal");
    for (key, value) in overwritten {
        let slot = expected.iter_mut().find(|(old, _)| *old == key).unwrap();
        slot.1 = value;
    }

    let node = NodeProcess::start(dir.path(), 2, &[]);
    let mut client = NodeClient::connect(node.addresses[0], default_cluster());
    check_all(&mut client, &expected);
    let status = node.stop_with(libc::SIGTERM);
    assert_eq!(status.code(), Some(0));
}

#[test]
fn a_taken_port_fails_the_start_with_a_clear_error_and_no_panic() {
    let data_dir = tempfile::tempdir().expect("temporary directory");
    let run = |base: u16| {
        Command::new(env!("CARGO_BIN_EXE_coregrid"))
            .arg("node")
            .arg("--data-dir")
            .arg(data_dir.path())
            .args(["--base-port", &base.to_string(), "--shards", "2"])
            .args(["--control-port", "0"])
            .args(["--partitions", "8", "--pin-shards", "false"])
            .env("RUST_BACKTRACE", "0")
            .stdin(Stdio::null())
            .output()
            .expect("run coregrid node")
    };
    // Shard 1's port is one this test holds (chosen by the kernel, so nobody else has it);
    // shard 0 gets the port below it, which someone else may hold: then try another pair.
    let mut failures_on_shard_1 = 0;
    for _pair in 0..20 {
        let taken = std::net::TcpListener::bind(("127.0.0.1", 0)).expect("hold a port");
        let port = taken.local_addr().expect("its address").port();
        let Some(base) = port.checked_sub(1) else {
            continue;
        };
        let output = run(base);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(!String::from_utf8_lossy(&output.stdout).contains("ready"));
        if stderr.contains(&format!("cannot listen on 127.0.0.1:{base}:")) {
            continue;
        }
        assert!(
            stderr.contains(&format!("cannot listen on 127.0.0.1:{port}")),
            "{stderr}"
        );
        // Twice: the first run left nothing (a lock, a half-written file) that stops the next.
        failures_on_shard_1 += 1;
        if failures_on_shard_1 == 2 {
            return;
        }
    }
    panic!("no two free port pairs in 20 tries");
}
