//! A cluster of real `coregrid node` processes on loopback for the `cluster_*` tests, and the
//! two ways these tests cut it in pieces:
//! - **the test-only fault layer** (works without root): every node reads a fault file of its
//!   own (`--fault-file`, docs/cluster.md); [`TestCluster::split`] rewrites every file
//!   atomically (temporary file + rename) with the control addresses of the nodes outside that
//!   node's group, and each node drops control datagrams to and from them;
//! - **nftables in a network namespace** (root, `ip` and `nft` installed): [`NetNamespace`]
//!   makes a namespace with its own loopback for one test; the nodes and every CLI call run in
//!   it through `ip netns exec`, and the split is an nft rule on that loopback dropping UDP
//!   between the groups' control ports. The namespace is removed on drop, failure included.
//!
//! Nodes run with one shard, 8 partitions, fixed control ports found free for TCP and UDP, an
//! election timeout of [`ELECTION_TIMEOUT_MS`] and heartbeats every
//! [`HEARTBEAT_INTERVAL_MS`]. Every check goes through the CLI a person would use:
//! `coregrid status --json` and `coregrid put --json`. Waits poll a condition up to
//! [`CONDITION_WAIT_MAX`] (a bound for a hang, never a timing assertion) and, when it passes,
//! panic with what was waited for and what was last seen.
//!
//! Each test file includes it with `#[path = "common/cluster.rs"] mod cluster;`, next to
//! `#[path = "common/node_process.rs"] mod node_process;`.

use crate::node_process::{self, NodeProcess};
use serde_json::Value as Json;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Longest a condition may take (an election, a heal seen by gossip); only a bound for a hang.
pub const CONDITION_WAIT_MAX: Duration = Duration::from_secs(60);
/// The nodes' election timeout: short, so a test runs in seconds.
pub const ELECTION_TIMEOUT_MS: u64 = 400;
/// The controller's heartbeat interval.
pub const HEARTBEAT_INTERVAL_MS: u64 = 50;
/// Partitions (`NodeProcess` starts every node with 8).
pub const PARTITIONS: u32 = 8;
/// The collection the tests write to (created on every node: collections are node-local).
pub const COLLECTION: &str = "cluster";
/// How long one CLI call may wait for an answer.
const CLI_TIMEOUT_MS: &str = "2000";
/// Pause between two polls of a condition.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Polls `check` until it returns `Ok`, at most [`CONDITION_WAIT_MAX`]; `Err` says what it saw,
/// printed if the deadline passes.
pub fn wait_until<T>(what: &str, mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + CONDITION_WAIT_MAX;
    loop {
        let seen = match check() {
            Ok(value) => return value,
            Err(seen) => seen,
        };
        if Instant::now() >= deadline {
            panic!("waited {CONDITION_WAIT_MAX:?} for {what}; last seen: {seen}");
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// Replaces `path` with `text` atomically: a reader sees the old file or the new one, whole.
pub fn write_atomically(path: &Path, text: &str) {
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, text).expect("write the temporary fault file");
    std::fs::rename(&temporary, path).expect("rename the fault file into place");
}

/// One node's `coregrid status --json`, the fields the tests look at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    /// The node that answered.
    pub node: u64,
    /// Its election term.
    pub term: u64,
    /// `controller`, `follower` or `candidate`.
    pub role: String,
    /// The controller it follows.
    pub controller: Option<u64>,
    /// The epoch of the map it holds.
    pub epoch: u64,
    /// Whether it holds the write lease (`None` if the status did not say).
    pub lease: Option<bool>,
    /// Each partition's leader in that map.
    pub leaders: Vec<Option<u64>>,
}

impl Seen {
    fn from_json(json: &Json) -> Result<Seen, String> {
        let available = json["cluster_status"]["available"].as_bool() == Some(true);
        if !available {
            return Err(format!("no cluster status: {json}"));
        }
        let number = |field: &str| {
            json[field]
                .as_u64()
                .ok_or_else(|| format!("no {field} in {json}"))
        };
        Ok(Seen {
            node: json["cluster_status"]["node"]
                .as_u64()
                .ok_or_else(|| format!("no node in {json}"))?,
            term: number("term")?,
            role: json["role"].as_str().unwrap_or_default().to_string(),
            controller: json["controller"].as_u64(),
            epoch: number("epoch")?,
            lease: json["lease"].as_bool(),
            leaders: json["partitions"]
                .as_array()
                .map(|partitions| {
                    partitions
                        .iter()
                        .map(|partition| partition["leader"].as_u64())
                        .collect()
                })
                .unwrap_or_default(),
        })
    }

    /// Whether it says it is the controller.
    pub fn is_controller(&self) -> bool {
        self.role == "controller"
    }
}

/// What a `coregrid put` ended with.
#[derive(Debug)]
pub struct PutOutcome {
    /// The process's exit code (0: written).
    pub exit_code: i32,
    /// Its JSON line.
    pub json: Json,
}

/// How the cluster's nodes are cut off from each other.
pub enum Network {
    /// The test-only fault layer: a directory holding one fault file per node.
    FaultFiles(tempfile::TempDir),
    /// nftables rules in a network namespace of the test's own.
    Namespace(NetNamespace),
}

/// Real node processes with fixed control ports.
pub struct TestCluster {
    /// Each node's process, `None` while it is killed. Dropped first: kills what still runs.
    nodes: Vec<Option<NodeProcess>>,
    /// Each node's id (stable across restarts).
    pub ids: Vec<u64>,
    dirs: Vec<tempfile::TempDir>,
    control_ports: Vec<u16>,
    peers: String,
    election: String,
    /// More flags for every node.
    extra: Vec<String>,
    /// Dropped last: the namespace outlives the nodes in it.
    network: Network,
}

impl TestCluster {
    /// Starts `count` nodes with `election` (vote, bully or ring), cut off by fault files,
    /// and waits until every one is ready.
    pub fn start(count: usize, election: &str) -> TestCluster {
        let faults = tempfile::tempdir().expect("a directory for the fault files");
        TestCluster::start_on(count, election, Network::FaultFiles(faults))
    }

    /// [`TestCluster::start`] with `extra` flags for every node.
    pub fn start_with(count: usize, election: &str, extra: &[&str]) -> TestCluster {
        let faults = tempfile::tempdir().expect("a directory for the fault files");
        TestCluster::start_on_with(count, election, Network::FaultFiles(faults), extra)
    }

    /// [`TestCluster::start`] on `network`.
    pub fn start_on(count: usize, election: &str, network: Network) -> TestCluster {
        TestCluster::start_on_with(count, election, network, &[])
    }

    fn start_on_with(
        count: usize,
        election: &str,
        network: Network,
        extra: &[&str],
    ) -> TestCluster {
        let base = node_process::reserved_base_port(count);
        let control_ports: Vec<u16> = (0..count)
            .map(|index| base + u16::try_from(index).expect("a few nodes"))
            .collect();
        let peers = control_ports
            .iter()
            .map(|port| format!("127.0.0.1:{port}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = TestCluster {
            nodes: Vec::new(),
            ids: Vec::new(),
            dirs: (0..count)
                .map(|_| tempfile::tempdir().expect("a data directory"))
                .collect(),
            control_ports,
            peers,
            election: election.to_string(),
            extra: extra.iter().map(ToString::to_string).collect(),
            network,
        };
        if let Network::FaultFiles(_) = &cluster.network {
            for index in 0..count {
                write_atomically(&cluster.fault_file(index), "");
            }
        }
        cluster.nodes = (0..count).map(|index| Some(cluster.spawn(index))).collect();
        for node in cluster.nodes.iter_mut().flatten() {
            node.wait_ready();
        }
        cluster.ids = cluster
            .nodes
            .iter()
            .flatten()
            .map(|node| node.node_id)
            .collect();
        let distinct: BTreeSet<u64> = cluster.ids.iter().copied().collect();
        assert_eq!(
            distinct.len(),
            count,
            "distinct node ids: {:?}",
            cluster.ids
        );
        cluster
    }

    fn fault_file(&self, index: usize) -> PathBuf {
        match &self.network {
            Network::FaultFiles(dir) => dir.path().join(format!("node-{index}.faults")),
            Network::Namespace(_) => unreachable!("no fault files in a namespace"),
        }
    }

    fn wrapper(&self) -> Vec<String> {
        match &self.network {
            Network::FaultFiles(_) => Vec::new(),
            Network::Namespace(namespace) => namespace.wrapper(),
        }
    }

    fn spawn(&self, index: usize) -> NodeProcess {
        let control_port = self.control_ports[index].to_string();
        let election_timeout = ELECTION_TIMEOUT_MS.to_string();
        let heartbeat = HEARTBEAT_INTERVAL_MS.to_string();
        let mut extra = vec![
            "--control-port",
            &control_port,
            "--peers",
            &self.peers,
            "--election",
            &self.election,
            "--election-timeout-ms",
            &election_timeout,
            "--heartbeat-interval-ms",
            &heartbeat,
        ];
        let fault_file;
        if let Network::FaultFiles(_) = &self.network {
            fault_file = self.fault_file(index).display().to_string();
            extra.extend(["--fault-file", &fault_file]);
        }
        extra.extend(self.extra.iter().map(String::as_str));
        NodeProcess::spawn_wrapped(&self.wrapper(), self.dirs[index].path(), 1, &extra)
    }

    /// How many nodes the cluster has (running or not).
    pub fn len(&self) -> usize {
        self.control_ports.len()
    }

    /// The index of the node with id `node`.
    pub fn index_of(&self, node: u64) -> usize {
        self.ids
            .iter()
            .position(|&id| id == node)
            .unwrap_or_else(|| panic!("node {node} is not one of {:?}", self.ids))
    }

    /// Kills node `index` with SIGKILL.
    pub fn kill(&mut self, index: usize) {
        let node = self.nodes[index].take().expect("the node runs");
        let _ = node.stop_with(libc::SIGKILL);
    }

    /// Stops node `index` with SIGSTOP: it holds its sockets and answers nothing.
    pub fn pause(&self, index: usize) {
        self.nodes[index]
            .as_ref()
            .expect("the node runs")
            .signal(libc::SIGSTOP);
    }

    /// Lets node `index` go on after [`TestCluster::pause`].
    pub fn resume(&self, index: usize) {
        self.nodes[index]
            .as_ref()
            .expect("the node runs")
            .signal(libc::SIGCONT);
    }

    /// Node `index`'s data directory.
    pub fn data_dir(&self, index: usize) -> &Path {
        self.dirs[index].path()
    }

    /// Restarts node `index` on its directory and control port; waits until it is ready.
    pub fn restart(&mut self, index: usize) {
        assert!(self.nodes[index].is_none(), "node {index} still runs");
        let mut node = self.spawn(index);
        node.wait_ready();
        assert_eq!(
            node.node_id, self.ids[index],
            "the same node id after a restart"
        );
        self.nodes[index] = Some(node);
    }

    /// Runs the CLI (in the namespace when there is one) and returns its exit code and JSON.
    fn cli(&self, arguments: &[&str]) -> (i32, Json) {
        let wrapper = self.wrapper();
        let mut command = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut command = Command::new(program);
                command.args(rest).arg(env!("CARGO_BIN_EXE_coregrid"));
                command
            }
            None => Command::new(env!("CARGO_BIN_EXE_coregrid")),
        };
        let output = command
            .args(arguments)
            .args(["--json", "--timeout-ms", CLI_TIMEOUT_MS])
            .output()
            .expect("run the coregrid CLI");
        let json = serde_json::from_slice(&output.stdout)
            .unwrap_or_else(|_| Json::String(String::from_utf8_lossy(&output.stdout).into_owned()));
        (output.status.code().unwrap_or(-1), json)
    }

    /// Node `index`'s data address (its shard 0).
    pub fn data_address(&self, index: usize) -> std::net::SocketAddr {
        let node = self.nodes[index]
            .as_ref()
            .unwrap_or_else(|| panic!("node {index} is not running"));
        node.addresses[0]
    }

    /// Node `index`'s control (UDP) address, on loopback: the fault-file network only.
    pub fn control_address(&self, index: usize) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.control_ports[index]))
    }

    fn address(&self, index: usize) -> String {
        self.data_address(index).to_string()
    }

    /// Node `index`'s `coregrid status --json`.
    pub fn status(&self, index: usize) -> Result<Seen, String> {
        let (_, json) = self.cli(&["status", "--cluster", &self.address(index)]);
        Seen::from_json(&json).map_err(|error| format!("node {index}: {error}"))
    }

    /// The statuses of `indexes`, in that order.
    pub fn statuses(&self, indexes: &[usize]) -> Result<Vec<Seen>, String> {
        indexes.iter().map(|&index| self.status(index)).collect()
    }

    /// The statuses of `indexes` once they agree: the same term, controller (one of them, and
    /// the only one that says it is the controller), epoch and map, every partition led.
    pub fn agreement(&self, indexes: &[usize]) -> Result<Vec<Seen>, String> {
        self.agreement_on_maps(indexes, true)
    }

    /// [`TestCluster::agreement`], with every partition led only if `every_partition_led`: a
    /// group of nodes that holds no majority of some partition's replica set cannot fail that
    /// partition over, and rightly leaves it without a leader.
    pub fn agreement_on_maps(
        &self,
        indexes: &[usize],
        every_partition_led: bool,
    ) -> Result<Vec<Seen>, String> {
        let seen = self.statuses(indexes)?;
        let first = &seen[0];
        let controller = first
            .controller
            .ok_or_else(|| format!("no controller: {seen:?}"))?;
        let group: Vec<u64> = indexes.iter().map(|&index| self.ids[index]).collect();
        let agreed = group.contains(&controller)
            && seen.iter().all(|status| {
                status.controller == Some(controller)
                    && status.term == first.term
                    && status.epoch == first.epoch
                    && status.leaders == first.leaders
                    && status.is_controller() == (status.node == controller)
            })
            && first.leaders.len() == PARTITIONS as usize
            && (!every_partition_led || first.leaders.iter().all(Option::is_some));
        if agreed {
            Ok(seen)
        } else {
            Err(format!("not agreed among nodes {group:?}: {seen:?}"))
        }
    }

    /// Creates [`COLLECTION`] through the running nodes (the client sends it to every
    /// partition's leader), again while the cluster is still settling.
    pub fn create_collection(&self) {
        let seeds: Vec<String> = (0..self.len())
            .filter(|&index| self.nodes[index].is_some())
            .map(|index| self.address(index))
            .collect();
        let seeds = seeds.join(",");
        wait_until("the collection created", || {
            let (code, json) = self.cli(&["create-collection", COLLECTION, "--cluster", &seeds]);
            let exists = json["error"]
                .as_str()
                .is_some_and(|error| error.contains("exists"));
            if code == 0 || exists {
                Ok(())
            } else {
                Err(format!("create the collection: {json}"))
            }
        });
    }

    /// `coregrid put key value`, seeded with node `index` only.
    pub fn put(&self, index: usize, key: &str, value: &str) -> PutOutcome {
        let address = self.address(index);
        let (exit_code, json) = self.cli(&[
            "put",
            key,
            value,
            "--collection",
            COLLECTION,
            "--cluster",
            &address,
            // These tests check the control plane's fence (who may write at all), not how many
            // replicas hold a write: a split can leave a partition led on the majority side
            // with both followers on the other, where `Quorum` is rightly refused
            // (`cluster_write_acks.rs` tests that).
            "--consistency",
            "one",
        ]);
        PutOutcome { exit_code, json }
    }

    /// Cuts the cluster into `groups` (node indexes): nodes of different groups drop each
    /// other's control datagrams. Nodes in no group are cut off from everyone.
    pub fn split(&self, groups: &[&[usize]]) {
        let group_of = |index: usize| groups.iter().position(|group| group.contains(&index));
        match &self.network {
            Network::FaultFiles(_) => {
                for index in 0..self.len() {
                    let cut: String = (0..self.len())
                        .filter(|&other| {
                            other != index
                                && (group_of(index).is_none() || group_of(other) != group_of(index))
                        })
                        .map(|other| format!("127.0.0.1:{}\n", self.control_ports[other]))
                        .collect();
                    write_atomically(&self.fault_file(index), &cut);
                }
            }
            Network::Namespace(namespace) => {
                let mut pieces: Vec<Vec<u16>> = groups
                    .iter()
                    .map(|group| {
                        group
                            .iter()
                            .map(|&index| self.control_ports[index])
                            .collect()
                    })
                    .collect();
                pieces.extend(
                    (0..self.len())
                        .filter(|&index| group_of(index).is_none())
                        .map(|index| vec![self.control_ports[index]]),
                );
                namespace.split(&pieces);
            }
        }
    }

    /// Heals every cut.
    pub fn heal(&self) {
        match &self.network {
            Network::FaultFiles(_) => {
                for index in 0..self.len() {
                    write_atomically(&self.fault_file(index), "");
                }
            }
            Network::Namespace(namespace) => namespace.heal(),
        }
    }
}

/// A key of `partition` (the client hashes a key with crc32c).
pub fn key_of_partition(partition: usize, tag: &str) -> String {
    (0..100_000)
        .map(|index| format!("{tag}-{index}"))
        .find(|key| crc32c::crc32c(key.as_bytes()) % PARTITIONS == partition as u32)
        .expect("a key of every partition")
}

/// A network namespace of one test's own, removed on drop.
pub struct NetNamespace {
    name: String,
}

const NFT_TABLE: &str = "coregrid_test";

impl NetNamespace {
    /// A new namespace with loopback up and an nft table with an input chain, or why not
    /// (not root, `ip` or `nft` missing, namespaces not allowed).
    pub fn create() -> Result<NetNamespace, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not running as root".into());
        }
        for (tool, flag) in [("ip", "-V"), ("nft", "--version")] {
            match Command::new(tool).arg(flag).output() {
                Ok(output) if output.status.success() => {}
                _ => {
                    return Err(format!(
                        "`{tool}` is not installed (apt-get install iproute2 nftables)"
                    ))
                }
            }
        }
        let name = format!("coregrid-test-{}", std::process::id());
        // A namespace left by an earlier run with the same pid.
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        run("ip", &["netns", "add", &name])?;
        let namespace = NetNamespace { name };
        run("ip", &["-n", &namespace.name, "link", "set", "lo", "up"])?;
        namespace.nft(&["add", "table", "inet", NFT_TABLE])?;
        namespace.nft(&[
            "add",
            "chain",
            "inet",
            NFT_TABLE,
            "input",
            "{ type filter hook input priority 0 ; policy accept ; }",
        ])?;
        Ok(namespace)
    }

    /// The command prefix that runs a program in the namespace.
    pub fn wrapper(&self) -> Vec<String> {
        ["ip", "netns", "exec", &self.name]
            .iter()
            .map(|part| part.to_string())
            .collect()
    }

    fn nft(&self, arguments: &[&str]) -> Result<(), String> {
        let mut full = vec!["netns", "exec", &self.name, "nft"];
        full.extend(arguments);
        run("ip", &full)
    }

    /// Drops UDP between the control ports of different `groups`.
    pub fn split(&self, groups: &[Vec<u16>]) {
        self.heal();
        let set = |ports: &[u16]| {
            format!(
                "{{ {} }}",
                ports
                    .iter()
                    .map(u16::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        for (from_index, from) in groups.iter().enumerate() {
            for (to_index, to) in groups.iter().enumerate() {
                if from_index == to_index {
                    continue;
                }
                let (from, to) = (set(from), set(to));
                self.nft(&[
                    "add", "rule", "inet", NFT_TABLE, "input", "udp", "sport", &from, "udp",
                    "dport", &to, "drop",
                ])
                .expect("add an nft rule");
            }
        }
    }

    /// Removes every rule.
    pub fn heal(&self) {
        self.nft(&["flush", "chain", "inet", NFT_TABLE, "input"])
            .expect("flush the nft chain");
    }
}

impl Drop for NetNamespace {
    fn drop(&mut self) {
        if let Err(error) = run("ip", &["netns", "del", &self.name]) {
            eprintln!("could not remove network namespace {}: {error}", self.name);
        }
    }
}

fn run(program: &str, arguments: &[&str]) -> Result<(), String> {
    let output = Command::new(program)
        .args(arguments)
        .output()
        .map_err(|error| format!("{program}: {error}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {}: {}",
            arguments.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}
