//! What the tests of real node processes driven through the native client share: peers
//! started on reserved control ports, a client, a node's cluster status, waiting for a
//! condition, agreement of several nodes, and the collection created once while the cluster
//! settles.

use super::node_process::{self, NodeProcess};
use coregrid_net::client::{BlockingClient, ClientConfig, ClientError};
use coregrid_net::message::ClusterStatusResponse;
use coregrid_net::ClusterId;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Longest a condition may take (failure detection and catch-up under load take seconds);
/// only a bound for a hang.
pub const CONDITION_WAIT_MAX: Duration = Duration::from_secs(90);

/// `count` peers of one cluster on reserved control ports, each node on a data directory of its
/// own that outlives its process: a restart reuses both. Election timeout 300 ms, heartbeats
/// every 50 ms.
pub struct Peers {
    control_base: u16,
    list: String,
    dirs: Vec<tempfile::TempDir>,
}

impl Peers {
    /// Reserves the control ports and makes the data directories; starts nothing.
    pub fn new(count: usize) -> Peers {
        let control_base = node_process::reserved_base_port(count);
        let list = (0..count)
            .map(|index| format!("127.0.0.1:{}", control_base + index as u16))
            .collect::<Vec<_>>()
            .join(",");
        let dirs = (0..count)
            .map(|_| tempfile::tempdir().expect("a data directory"))
            .collect();
        Peers {
            control_base,
            list,
            dirs,
        }
    }

    /// Node `index`'s control port.
    pub fn control_port(&self, index: usize) -> u16 {
        self.control_base + index as u16
    }

    /// Starts node `index` with `shards` shards and `extra` flags: its first start and every
    /// restart.
    pub fn spawn(&self, index: usize, shards: usize, extra: &[&str]) -> NodeProcess {
        let control_port = self.control_port(index).to_string();
        let mut arguments = vec![
            "--control-port",
            &control_port,
            "--peers",
            &self.list,
            "--election-timeout-ms",
            "300",
            "--heartbeat-interval-ms",
            "50",
        ];
        arguments.extend_from_slice(extra);
        NodeProcess::spawn(self.dirs[index].path(), shards, &arguments)
    }
}

/// A client of the default cluster seeded with `seeds`.
pub fn client(seeds: &[SocketAddr]) -> BlockingClient {
    BlockingClient::new(ClientConfig::new(
        seeds.to_vec(),
        ClusterId::from_name("coregrid").unwrap(),
    ))
    .expect("a client")
}

/// `node`'s cluster status, if it answers.
pub fn status(node: &NodeProcess) -> Option<ClusterStatusResponse> {
    client(&node.addresses[..1]).cluster_status().ok()
}

/// Waits until `check` holds, polling; panics with `what` at the deadline.
pub fn wait_until<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + CONDITION_WAIT_MAX;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "{what} within {CONDITION_WAIT_MAX:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The statuses of `nodes` once they all name one controller and hold the same map, of an
/// epoch at least `min_epoch`, in which every partition has a leader.
pub fn agreed(nodes: &[&NodeProcess], min_epoch: u64) -> Option<Vec<ClusterStatusResponse>> {
    let statuses: Vec<ClusterStatusResponse> = nodes
        .iter()
        .map(|node| status(node))
        .collect::<Option<_>>()?;
    let first = &statuses[0];
    first.controller?;
    let same = statuses.iter().all(|status| {
        status.controller == first.controller
            && status.epoch == first.epoch
            && status.partitions == first.partitions
    });
    let led = !first.partitions.is_empty()
        && first
            .partitions
            .iter()
            .all(|partition| partition.leader.is_some());
    (same && led && first.epoch.get() >= min_epoch).then_some(statuses)
}

/// Creates `collection` once, through any of `seeds` (the client sends it to every
/// partition's leader); tried again while the cluster is still settling (a change then ends
/// `Unavailable`).
pub fn create_collection(seeds: &[SocketAddr], collection: &str) {
    wait_until("the collection created", || {
        match client(seeds).create_collection(collection) {
            Ok(_) | Err(ClientError::CollectionExists { .. }) => Some(()),
            Err(error) => {
                eprintln!("create the collection: {error}");
                None
            }
        }
    });
}
