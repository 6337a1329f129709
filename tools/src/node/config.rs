//! The node's configuration: a TOML file (`--config`) whose every key a flag of the same name
//! overrides, then defaults. Everything is checked before anything is opened, and a bad value
//! is reported with the key that holds it ([`ConfigError`]; the command exits with code 2).

use super::constants::{
    BASE_PORT_DEFAULT, CONNECTIONS_PER_SHARD_DEFAULT, CONTROL_PORT_DEFAULT,
    DRAIN_TIMEOUT_MS_DEFAULT, ELECTION_TIMEOUT_MS_DEFAULT, HANDSHAKE_TIMEOUT_MS_DEFAULT,
    HEARTBEAT_INTERVAL_MS_DEFAULT, IDLE_TIMEOUT_MS_DEFAULT, REPLICATION_FACTOR_DEFAULT,
    REPLICA_ACK_TIMEOUT_MS_DEFAULT, REPLICA_HOLD_BYTES_DEFAULT, REPLICA_LAG_MS_DEFAULT,
    REQUESTS_IN_FLIGHT_PER_CONNECTION_DEFAULT, REQUESTS_IN_FLIGHT_PER_CONNECTION_MAX,
    WRITE_TIMEOUT_MS_DEFAULT,
};
use clap::Args;
use coregrid_cluster::election::Strategy;
use coregrid_engine::constants::{
    IDLE_SPIN_DEFAULT, PARTITIONS_DEFAULT, SEGMENT_BYTES_DEFAULT, SNAPSHOT_WAL_BYTES_DEFAULT,
    WAL_RECYCLE_BYTES_DEFAULT,
};
use coregrid_engine::EngineConfig;
use coregrid_net::ClusterId;
use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A configuration that cannot be used; nothing was opened or changed.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read the configuration file {path:?}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this configuration (unknown key, wrong type).
    #[error("configuration file {path:?}: {reason}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the TOML parser said, with the line.
        reason: String,
    },
    /// A value is out of its range.
    #[error("invalid configuration: {key}: {reason}")]
    Invalid {
        /// The key (also the flag's name, with dashes).
        key: &'static str,
        /// What is wrong and what is allowed.
        reason: String,
    },
}

/// `coregrid node` flags. Each overrides the configuration file's key of the same name
/// (underscores for dashes); unset flags leave the file's value or the default.
#[derive(Args, Debug, Default, Clone)]
pub struct NodeArgs {
    /// TOML configuration file (keys as the flags, with underscores).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Cluster name: 1..=16 bytes of [A-Za-z0-9._-]; a peer of another cluster is refused
    /// [default: coregrid].
    #[arg(long)]
    pub cluster: Option<String>,
    /// Address to listen on [default: 127.0.0.1, loopback only].
    #[arg(long)]
    pub listen_address: Option<IpAddr>,
    /// Port of shard 0; shard i listens on base_port + i (0: any free ports, printed at
    /// start) [default: 7400].
    #[arg(long)]
    pub base_port: Option<u16>,
    /// Data directory [default: ./coregrid-data].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Data shards (0: one per core) [default: 0].
    #[arg(long)]
    pub shards: Option<usize>,
    /// Partitions; fixed when the data directory is created [default: 64].
    #[arg(long)]
    pub partitions: Option<u32>,
    /// WAL segment file size in bytes [default: 64 MiB].
    #[arg(long)]
    pub segment_bytes: Option<u64>,
    /// WAL bytes between automatic snapshots (0: never) [default: 256 MiB].
    #[arg(long)]
    pub snapshot_wal_bytes: Option<u64>,
    /// Bytes of pruned WAL segment files each shard keeps for reuse (0: none) [default: 4 GiB].
    #[arg(long)]
    pub wal_recycle_bytes: Option<u64>,
    /// Let a shard's partitions share one device flush per round of WAL flushes; false: each
    /// partition syncs its own log [default: true].
    #[arg(long)]
    pub shared_sync: Option<bool>,
    /// Write small rounds of records of a shard's partitions through one shard journal, and
    /// each partition's own log later, in larger flushes [default: true].
    #[arg(long)]
    pub journal: Option<bool>,
    /// Pin shard i to CPU i when there are enough CPUs [default: true].
    #[arg(long)]
    pub pin_shards: Option<bool>,
    /// Microseconds a data shard with nothing to do polls before it sleeps (0: sleep at once;
    /// polling costs idle CPU, and saves the wake-up between two WAL flushes) [default: 100].
    #[arg(long)]
    pub idle_spin_us: Option<u64>,
    /// Connections each shard serves at once; more are refused [default: 1024].
    #[arg(long)]
    pub connections_per_shard: Option<usize>,
    /// Requests in flight per connection before it stops reading [default: 256].
    #[arg(long)]
    pub requests_in_flight_per_connection: Option<usize>,
    /// Milliseconds a new connection has to complete its handshake [default: 5000].
    #[arg(long)]
    pub handshake_timeout_ms: Option<u64>,
    /// Milliseconds without a byte received or a request in flight before a connection is
    /// closed [default: 300000].
    #[arg(long)]
    pub idle_timeout_ms: Option<u64>,
    /// Milliseconds a write to a peer may make no progress before the connection is closed
    /// [default: 30000].
    #[arg(long)]
    pub write_timeout_ms: Option<u64>,
    /// Milliseconds a shutdown waits for requests in flight [default: 10000].
    #[arg(long)]
    pub drain_timeout_ms: Option<u64>,
    /// UDP port of the control shard (gossip and elections) [default: 7300, or 0 (any free
    /// port, printed at start) when base_port is 0].
    #[arg(long)]
    pub control_port: Option<u16>,
    /// Other nodes' control addresses, comma-separated (this node's own may be listed). Every
    /// node of a new cluster must start with the same list: the cluster's id is derived from
    /// it, and without `--voters` its first five members by id become the voters [default:
    /// none, a cluster of one].
    #[arg(long, value_delimiter = ',')]
    pub peers: Option<Vec<SocketAddr>>,
    /// The control addresses of the nodes that elect the controller, comma-separated: some of
    /// `--peers` (this node's own included). Every node of a new cluster must start with the
    /// same list. A first start waits only for these to be heard, not for every peer
    /// [default: none given: every peer is waited for, and the first five members by id vote].
    #[arg(long, value_delimiter = ',')]
    pub voters: Option<Vec<SocketAddr>>,
    /// How a controller is elected: vote (majority vote with pre-vote), bully or ring
    /// [default: vote].
    #[arg(long, value_parser = parse_strategy)]
    pub election: Option<ElectionStrategy>,
    /// Election timeout in milliseconds: a controller silent this long is replaced
    /// [default: 1000].
    #[arg(long)]
    pub election_timeout_ms: Option<u64>,
    /// Controller heartbeat interval in milliseconds [default: 100].
    #[arg(long)]
    pub heartbeat_interval_ms: Option<u64>,
    /// Replicas per partition, leader included [default: 3].
    #[arg(long)]
    pub replication_factor: Option<usize>,
    /// Milliseconds a follower may go without catching up to its leader and still count as
    /// in sync; `Quorum` and `All` writes are refused up front when too few are [default:
    /// 10000].
    #[arg(long)]
    pub replica_lag_ms: Option<u64>,
    /// Milliseconds a `Quorum` or `All` write waits for its followers' acks before it is
    /// answered "outcome unknown" [default: 5000].
    #[arg(long)]
    pub replica_ack_timeout_ms: Option<u64>,
    /// WAL bytes a leader keeps per partition, past its snapshot, for followers that have not
    /// pulled them; a follower further behind catches up from a snapshot [default: 256 MiB].
    #[arg(long)]
    pub replica_hold_bytes: Option<u64>,
    /// TEST ONLY: a file listing control addresses (one per line) whose control datagrams
    /// this node drops, both ways; re-read when it changes (docs/cluster.md, "Cutting nodes
    /// off without root"). Never set it in production.
    #[arg(long, hide = true)]
    pub fault_file: Option<PathBuf>,
}

/// An election strategy, as configuration names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ElectionStrategy {
    /// Majority vote with pre-vote.
    Vote,
    /// Bully.
    Bully,
    /// Ring.
    Ring,
}

impl ElectionStrategy {
    /// The cluster crate's strategy.
    pub fn strategy(self) -> Strategy {
        match self {
            ElectionStrategy::Vote => Strategy::Vote,
            ElectionStrategy::Bully => Strategy::Bully,
            ElectionStrategy::Ring => Strategy::Ring,
        }
    }
}

fn parse_strategy(text: &str) -> Result<ElectionStrategy, String> {
    match text {
        "vote" => Ok(ElectionStrategy::Vote),
        "bully" => Ok(ElectionStrategy::Bully),
        "ring" => Ok(ElectionStrategy::Ring),
        other => Err(format!("{other:?}: expected vote, bully or ring")),
    }
}

/// The node's configuration, resolved: file, then flags, then defaults.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// Cluster name (see [`cluster_id`]).
    pub cluster: String,
    /// Address every shard listens on.
    pub listen_address: IpAddr,
    /// Port of shard 0 (0: any free ports).
    pub base_port: u16,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Data shards (0: one per core).
    pub shards: usize,
    /// Partitions.
    pub partitions: u32,
    /// WAL segment size in bytes.
    pub segment_bytes: u64,
    /// WAL bytes between snapshots.
    pub snapshot_wal_bytes: u64,
    /// Pruned WAL segment bytes each shard keeps for reuse.
    pub wal_recycle_bytes: u64,
    /// A shard's partitions share device flushes.
    pub shared_sync: bool,
    /// A shard's partitions write small rounds through one shard journal.
    pub journal: bool,
    /// Pin shards to CPUs.
    pub pin_shards: bool,
    /// Microseconds an idle data shard polls before it sleeps.
    pub idle_spin_us: u64,
    /// Connection cap per shard.
    pub connections_per_shard: usize,
    /// Requests in flight per connection.
    pub requests_in_flight_per_connection: usize,
    /// Handshake timeout in milliseconds.
    pub handshake_timeout_ms: u64,
    /// Idle timeout in milliseconds.
    pub idle_timeout_ms: u64,
    /// Write progress timeout in milliseconds.
    pub write_timeout_ms: u64,
    /// Shutdown drain timeout in milliseconds.
    pub drain_timeout_ms: u64,
    /// Control (UDP) port; `None`: the default (see [`NodeConfig::control_port`]).
    pub control_port: Option<u16>,
    /// Other nodes' control addresses.
    pub peers: Vec<SocketAddr>,
    /// The voters' control addresses (empty: the first five members by id).
    pub voters: Vec<SocketAddr>,
    /// Election strategy.
    pub election: ElectionStrategy,
    /// Election timeout in milliseconds.
    pub election_timeout_ms: u64,
    /// Controller heartbeat interval in milliseconds.
    pub heartbeat_interval_ms: u64,
    /// Replicas per partition.
    pub replication_factor: usize,
    /// How long a follower may lag and still be in sync, in milliseconds.
    pub replica_lag_ms: u64,
    /// How long a `Quorum` or `All` write waits for acks, in milliseconds.
    pub replica_ack_timeout_ms: u64,
    /// WAL bytes a leader keeps per partition for followers behind.
    pub replica_hold_bytes: u64,
    /// Test only: the fault file ([`super::fault`]).
    pub fault_file: Option<PathBuf>,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            cluster: "coregrid".into(),
            listen_address: IpAddr::from([127, 0, 0, 1]),
            base_port: BASE_PORT_DEFAULT,
            data_dir: PathBuf::from("coregrid-data"),
            shards: 0,
            partitions: PARTITIONS_DEFAULT,
            segment_bytes: SEGMENT_BYTES_DEFAULT,
            snapshot_wal_bytes: SNAPSHOT_WAL_BYTES_DEFAULT,
            wal_recycle_bytes: WAL_RECYCLE_BYTES_DEFAULT,
            shared_sync: true,
            journal: true,
            pin_shards: true,
            idle_spin_us: IDLE_SPIN_DEFAULT.as_micros() as u64,
            connections_per_shard: CONNECTIONS_PER_SHARD_DEFAULT,
            requests_in_flight_per_connection: REQUESTS_IN_FLIGHT_PER_CONNECTION_DEFAULT,
            handshake_timeout_ms: HANDSHAKE_TIMEOUT_MS_DEFAULT,
            idle_timeout_ms: IDLE_TIMEOUT_MS_DEFAULT,
            write_timeout_ms: WRITE_TIMEOUT_MS_DEFAULT,
            drain_timeout_ms: DRAIN_TIMEOUT_MS_DEFAULT,
            control_port: None,
            peers: Vec::new(),
            voters: Vec::new(),
            election: ElectionStrategy::Vote,
            election_timeout_ms: ELECTION_TIMEOUT_MS_DEFAULT,
            heartbeat_interval_ms: HEARTBEAT_INTERVAL_MS_DEFAULT,
            replication_factor: REPLICATION_FACTOR_DEFAULT,
            replica_lag_ms: REPLICA_LAG_MS_DEFAULT,
            replica_ack_timeout_ms: REPLICA_ACK_TIMEOUT_MS_DEFAULT,
            replica_hold_bytes: REPLICA_HOLD_BYTES_DEFAULT,
            fault_file: None,
        }
    }
}

impl NodeConfig {
    /// Reads the file named by `--config` (if any), applies the flags, checks every value.
    pub fn load(args: &NodeArgs) -> Result<NodeConfig, ConfigError> {
        let base = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                NodeConfig::from_toml(&text, path)?
            }
            None => NodeConfig::default(),
        };
        let config = base.with_flags(args);
        config.validate()?;
        Ok(config)
    }

    /// Parses a configuration file's text (missing keys take their defaults).
    pub fn from_toml(text: &str, path: &Path) -> Result<NodeConfig, ConfigError> {
        toml::from_str(text).map_err(|error| ConfigError::Parse {
            path: path.to_path_buf(),
            reason: error.to_string(),
        })
    }

    /// This configuration with every flag that is set in its place.
    pub fn with_flags(mut self, args: &NodeArgs) -> NodeConfig {
        fn set<T: Clone>(field: &mut T, flag: &Option<T>) {
            if let Some(value) = flag {
                *field = value.clone();
            }
        }
        set(&mut self.cluster, &args.cluster);
        set(&mut self.listen_address, &args.listen_address);
        set(&mut self.base_port, &args.base_port);
        set(&mut self.data_dir, &args.data_dir);
        set(&mut self.shards, &args.shards);
        set(&mut self.partitions, &args.partitions);
        set(&mut self.segment_bytes, &args.segment_bytes);
        set(&mut self.snapshot_wal_bytes, &args.snapshot_wal_bytes);
        set(&mut self.wal_recycle_bytes, &args.wal_recycle_bytes);
        set(&mut self.shared_sync, &args.shared_sync);
        set(&mut self.journal, &args.journal);
        set(&mut self.pin_shards, &args.pin_shards);
        set(&mut self.idle_spin_us, &args.idle_spin_us);
        set(&mut self.connections_per_shard, &args.connections_per_shard);
        set(
            &mut self.requests_in_flight_per_connection,
            &args.requests_in_flight_per_connection,
        );
        set(&mut self.handshake_timeout_ms, &args.handshake_timeout_ms);
        set(&mut self.idle_timeout_ms, &args.idle_timeout_ms);
        set(&mut self.write_timeout_ms, &args.write_timeout_ms);
        set(&mut self.drain_timeout_ms, &args.drain_timeout_ms);
        if let Some(port) = args.control_port {
            self.control_port = Some(port);
        }
        set(&mut self.peers, &args.peers);
        set(&mut self.voters, &args.voters);
        set(&mut self.election, &args.election);
        set(&mut self.election_timeout_ms, &args.election_timeout_ms);
        set(&mut self.heartbeat_interval_ms, &args.heartbeat_interval_ms);
        set(&mut self.replication_factor, &args.replication_factor);
        set(&mut self.replica_lag_ms, &args.replica_lag_ms);
        set(
            &mut self.replica_ack_timeout_ms,
            &args.replica_ack_timeout_ms,
        );
        set(&mut self.replica_hold_bytes, &args.replica_hold_bytes);
        if let Some(path) = &args.fault_file {
            self.fault_file = Some(path.clone());
        }
        self
    }

    /// The control shard's UDP port: the configured one, else 7300, or 0 (any free port) when
    /// `base_port` is 0.
    pub fn control_port(&self) -> u16 {
        self.control_port.unwrap_or(if self.base_port == 0 {
            0
        } else {
            CONTROL_PORT_DEFAULT
        })
    }

    /// The election timeout.
    pub fn election_timeout(&self) -> Duration {
        Duration::from_millis(self.election_timeout_ms)
    }

    /// The controller heartbeat interval.
    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms)
    }

    /// Checks every value the node itself uses; the engine's own values (partitions, segment
    /// size, shards) are checked again by `Engine::open`, which reports them the same way.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, reason: String| Err(ConfigError::Invalid { key, reason });
        cluster_id(&self.cluster).map_err(|reason| ConfigError::Invalid {
            key: "cluster",
            reason,
        })?;
        if self.data_dir.as_os_str().is_empty() {
            return invalid("data_dir", "must not be empty".into());
        }
        if self
            .fault_file
            .as_ref()
            .is_some_and(|path| path.as_os_str().is_empty())
        {
            return invalid("fault_file", "must not be empty".into());
        }
        let shards = self.engine_config().shard_count();
        if self.base_port != 0 && usize::from(self.base_port) + shards > usize::from(u16::MAX) + 1 {
            return invalid(
                "base_port",
                format!("{} + {shards} shards runs past port 65535", self.base_port),
            );
        }
        if shards > coregrid_net::constants::SHARDS_PER_NODE_MAX {
            return invalid(
                "shards",
                format!(
                    "at most {} per node, got {shards}",
                    coregrid_net::constants::SHARDS_PER_NODE_MAX
                ),
            );
        }
        if self.partitions == 0 || self.partitions > coregrid_net::constants::PARTITIONS_MAX {
            return invalid(
                "partitions",
                format!(
                    "must be 1..={}, got {}",
                    coregrid_net::constants::PARTITIONS_MAX,
                    self.partitions
                ),
            );
        }
        if self.connections_per_shard == 0 {
            return invalid("connections_per_shard", "must be at least 1".into());
        }
        if !(1..=REQUESTS_IN_FLIGHT_PER_CONNECTION_MAX)
            .contains(&self.requests_in_flight_per_connection)
        {
            return invalid(
                "requests_in_flight_per_connection",
                format!(
                    "must be 1..={REQUESTS_IN_FLIGHT_PER_CONNECTION_MAX}, got {}",
                    self.requests_in_flight_per_connection
                ),
            );
        }
        if self.peers.len() > coregrid_cluster::constants::MEMBERS_MAX {
            return invalid(
                "peers",
                format!(
                    "at most {} peers, got {}",
                    coregrid_cluster::constants::MEMBERS_MAX,
                    self.peers.len()
                ),
            );
        }
        let own_control = SocketAddr::new(self.listen_address, self.control_port());
        if let Some(stranger) = self
            .voters
            .iter()
            .find(|voter| **voter != own_control && !self.peers.contains(voter))
        {
            return invalid(
                "voters",
                format!(
                    "{stranger} is neither one of the peers nor this node's control address \
                     {own_control}: voters are chosen among the peers"
                ),
            );
        }
        if !self.voters.is_empty() && self.peers.is_empty() {
            return invalid(
                "voters",
                "voters need peers: a node without peers is a cluster of one, its own voter"
                    .to_string(),
            );
        }
        if !(1..=coregrid_cluster::constants::REPLICATION_FACTOR_MAX)
            .contains(&self.replication_factor)
        {
            return invalid(
                "replication_factor",
                format!(
                    "must be 1..={}, got {}",
                    coregrid_cluster::constants::REPLICATION_FACTOR_MAX,
                    self.replication_factor
                ),
            );
        }
        if !self.peers.is_empty() {
            // Leadership maps travel whole in one control datagram.
            let replicas = self.replication_factor.min(self.peers.len() + 1);
            let fitting = coregrid_cluster::wire::partitions_max_per_datagram(replicas);
            if self.partitions > fitting {
                return invalid(
                    "partitions",
                    format!(
                        "a cluster's leadership map travels in one control datagram, which holds \
                         at most {fitting} partitions with {replicas} replicas each, got {}; \
                         use fewer partitions (or a lower replication factor)",
                        self.partitions
                    ),
                );
            }
        }
        if self.heartbeat_interval_ms == 0
            || self.heartbeat_interval_ms.saturating_mul(2) > self.election_timeout_ms
        {
            return invalid(
                "heartbeat_interval_ms",
                format!(
                    "must be at least 1 and at most half the election timeout ({} ms), got {}",
                    self.election_timeout_ms, self.heartbeat_interval_ms
                ),
            );
        }
        for (key, value) in [
            ("election_timeout_ms", self.election_timeout_ms),
            ("handshake_timeout_ms", self.handshake_timeout_ms),
            ("idle_timeout_ms", self.idle_timeout_ms),
            ("write_timeout_ms", self.write_timeout_ms),
            ("drain_timeout_ms", self.drain_timeout_ms),
            ("replica_lag_ms", self.replica_lag_ms),
            ("replica_ack_timeout_ms", self.replica_ack_timeout_ms),
        ] {
            if value == 0 {
                return invalid(key, "must be at least 1 ms".into());
            }
        }
        Ok(())
    }

    /// The engine's configuration.
    pub fn engine_config(&self) -> EngineConfig {
        EngineConfig {
            data_dir: self.data_dir.clone(),
            shards: self.shards,
            partitions: self.partitions,
            segment_bytes: self.segment_bytes,
            snapshot_wal_bytes: self.snapshot_wal_bytes,
            wal_recycle_bytes: self.wal_recycle_bytes,
            shared_sync: self.shared_sync,
            journal: self.journal,
            pin_shards: self.pin_shards,
            idle_spin: Duration::from_micros(self.idle_spin_us),
            ..EngineConfig::default()
        }
    }

    /// The handshake timeout.
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }
    /// The idle timeout.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }
    /// The write progress timeout.
    pub fn write_timeout(&self) -> Duration {
        Duration::from_millis(self.write_timeout_ms)
    }
    /// The drain timeout.
    pub fn drain_timeout(&self) -> Duration {
        Duration::from_millis(self.drain_timeout_ms)
    }
    /// How followers are held to a leader's writes.
    pub fn replica_settings(&self) -> ReplicaSettings {
        ReplicaSettings {
            lag: Duration::from_millis(self.replica_lag_ms),
            ack_timeout: Duration::from_millis(self.replica_ack_timeout_ms),
            hold_bytes: self.replica_hold_bytes,
        }
    }
}

/// How a leader holds its followers to its writes (the `replica_*` settings).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplicaSettings {
    /// A follower that has not caught up for this long is out of sync.
    pub lag: Duration,
    /// A `Quorum` or `All` write waits this long for acks, then is answered `Unknown`.
    pub ack_timeout: Duration,
    /// WAL bytes a partition keeps past its snapshot for followers behind.
    pub hold_bytes: u64,
}

/// The cluster id of a cluster name: its bytes, zero-padded to 16 ([`ClusterId::from_name`],
/// the same mapping every client uses). A name is 1..=16 bytes of `[A-Za-z0-9._-]`, so
/// different names always give different ids.
pub fn cluster_id(name: &str) -> Result<ClusterId, String> {
    ClusterId::from_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<NodeConfig, ConfigError> {
        let config = NodeConfig::from_toml(text, Path::new("node.toml"))?;
        config.validate()?;
        Ok(config)
    }

    #[test]
    fn defaults_are_a_loopback_node_under_the_working_directory() {
        let config = NodeConfig::load(&NodeArgs::default()).unwrap();
        assert_eq!(config, NodeConfig::default());
        assert!(config.listen_address.is_loopback());
        assert!(config.data_dir.is_relative());
        assert_eq!(config.base_port, 7400);
        assert_eq!(parse("").unwrap(), NodeConfig::default());
    }

    #[test]
    fn file_values_apply_and_flags_override_them() {
        let config =
            parse("cluster = \"prod-1\"\nbase_port = 9000\nshards = 2\nidle_timeout_ms = 1000\nidle_spin_us = 0\n")
                .unwrap();
        assert_eq!(config.cluster, "prod-1");
        assert_eq!(config.base_port, 9000);
        assert_eq!(config.shards, 2);
        assert_eq!(config.idle_timeout(), Duration::from_secs(1));
        assert_eq!(config.engine_config().idle_spin, Duration::ZERO);
        assert_eq!(
            config.partitions, PARTITIONS_DEFAULT,
            "unset keys keep defaults"
        );
        let flags = NodeArgs {
            base_port: Some(9100),
            listen_address: Some("0.0.0.0".parse().unwrap()),
            idle_spin_us: Some(40),
            ..NodeArgs::default()
        };
        let config = config.with_flags(&flags);
        assert_eq!(config.base_port, 9100);
        assert_eq!(config.engine_config().idle_spin, Duration::from_micros(40));
        assert_eq!(config.listen_address.to_string(), "0.0.0.0");
        assert_eq!(
            config.cluster, "prod-1",
            "unset flags keep the file's value"
        );
    }

    #[test]
    fn bad_files_and_values_say_which_key() {
        let unknown = parse("base_prot = 1\n").unwrap_err().to_string();
        assert!(unknown.contains("base_prot"), "{unknown}");
        let wrong_type = parse("shards = \"two\"\n").unwrap_err().to_string();
        assert!(wrong_type.contains("shards"), "{wrong_type}");
        for (text, key) in [
            ("cluster = \"\"", "cluster"),
            ("cluster = \"seventeen-bytes-x\"", "cluster"),
            ("cluster = \"a b\"", "cluster"),
            ("base_port = 65535\nshards = 2", "base_port"),
            ("partitions = 0", "partitions"),
            ("connections_per_shard = 0", "connections_per_shard"),
            (
                "requests_in_flight_per_connection = 0",
                "requests_in_flight_per_connection",
            ),
            (
                "requests_in_flight_per_connection = 1000000",
                "requests_in_flight_per_connection",
            ),
            ("idle_timeout_ms = 0", "idle_timeout_ms"),
            ("data_dir = \"\"", "data_dir"),
            // A map of 4,096 partitions with 3 replicas does not fit one control datagram.
            (
                "partitions = 4096\npeers = [\"127.0.0.1:7300\", \"127.0.0.1:7301\"]",
                "partitions",
            ),
            // Voters are chosen among the peers (and this node), and need peers.
            (
                "peers = [\"127.0.0.1:7301\"]\nvoters = [\"127.0.0.1:7309\"]",
                "voters",
            ),
            ("voters = [\"127.0.0.1:7300\"]", "voters"),
        ] {
            match parse(text) {
                Err(ConfigError::Invalid { key: found, .. }) => assert_eq!(found, key, "{text}"),
                other => panic!("{text}: expected an invalid {key}, got {other:?}"),
            }
        }
        let missing = NodeConfig::load(&NodeArgs {
            config: Some(PathBuf::from("/nonexistent/coregrid.toml")),
            ..NodeArgs::default()
        })
        .unwrap_err();
        assert!(matches!(missing, ConfigError::Read { .. }));
    }

    #[test]
    fn voters_among_the_peers_and_this_node_are_taken() {
        let config = parse(
            "peers = [\"127.0.0.1:7301\"]\nvoters = [\"127.0.0.1:7300\", \"127.0.0.1:7301\"]",
        )
        .unwrap();
        assert_eq!(config.voters.len(), 2);
    }

    #[test]
    fn a_cluster_takes_as_many_partitions_as_its_map_datagram_holds() {
        let peers = "peers = [\"127.0.0.1:7300\", \"127.0.0.1:7301\"]";
        let fitting = coregrid_cluster::wire::partitions_max_per_datagram(3);
        assert!(parse(&format!("partitions = {fitting}\n{peers}")).is_ok());
        assert!(parse(&format!("partitions = {}\n{peers}", fitting + 1)).is_err());
        // A single node sends no map: it takes any partition count.
        assert!(parse("partitions = 65536").is_ok());
    }

    #[test]
    fn cluster_names_map_to_distinct_ids() {
        let a = cluster_id("coregrid").unwrap();
        let b = cluster_id("coregrid2").unwrap();
        assert_ne!(a, b);
        assert_eq!(&a.0[..8], b"coregrid");
        assert!(a.0[8..].iter().all(|&byte| byte == 0));
        assert!(cluster_id("x".repeat(16).as_str()).is_ok());
    }
}
