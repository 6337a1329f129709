//! `coregrid node`: one node of a cluster (today, a single node), serving clients over TCP.
//!
//! # Model
//! - **Threads.** The engine runs one data shard per core. Each shard also runs its server
//!   ([`server`]): a listener on its own port (`base_port + shard`), its connections, and the
//!   tasks that execute their requests on the shard's partitions. The main thread only starts
//!   things, waits for SIGTERM or SIGINT, and stops things; it is never on a request's path.
//! - **Start.** Configuration ([`config`]) is checked first (a bad one exits with code 2 before
//!   anything is opened); then the engine opens (recovering every partition), the node's
//!   identity is read or created in the data directory ([`identity`]), every shard binds its
//!   port, and once all are bound each shard is given the node's topology and starts
//!   accepting. One line per shard, `listening shard=<i> addr=<ip:port>`, then
//!   `ready node=<id>`, go to stdout; logs go to stderr (`RUST_LOG`, default `info`).
//! - **Stop.** On SIGTERM or SIGINT every shard stops accepting, stops reading new requests,
//!   lets the requests it admitted finish and their answers go out (up to the drain timeout),
//!   and drops its engine handle; then the main thread shuts the engine down, which flushes
//!   and syncs every partition. Exit code 0 after a full drain, 1 if requests were cut off.
//! - **Durability.** A write is answered only once the engine's `fdatasync` covers it
//!   (`docs/server.md`), so a write that was answered survives any later crash.

pub mod config;
pub mod constants;
pub mod control;
pub mod control_state;
pub mod fault;
pub mod handler;
pub mod identity;
pub mod replica;
pub mod server;

use anyhow::{bail, Context};
use config::{NodeArgs, NodeConfig};
use control::{ClusterFeed, ControlEvent, ControlSettings};
use coregrid_engine::Engine;
use coregrid_net::message::{LocalIdentity, ShardTopology, TopologyResponse};
use coregrid_net::{Epoch, PartitionId, ShardId};
use server::{ClusterWatch, Control, DrainReport, ShardSettings};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How much longer than the shards' own drain timeout the main thread waits for their reports.
const DRAIN_REPORT_GRACE: Duration = Duration::from_secs(2);

/// How often the main thread looks for a signal while it waits on the control shard.
const SIGNAL_POLL: Duration = Duration::from_millis(50);

/// Exit code of a configuration the node cannot start with.
pub const EXIT_CONFIG: i32 = 2;

/// Runs `coregrid node` until SIGTERM or SIGINT.
pub fn run(args: NodeArgs) -> anyhow::Result<()> {
    let config = match NodeConfig::load(&args) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("coregrid node: {error}");
            std::process::exit(EXIT_CONFIG);
        }
    };
    let cluster_id = match config::cluster_id(&config.cluster) {
        Ok(id) => id,
        Err(reason) => {
            eprintln!("coregrid node: invalid configuration: cluster: {reason}");
            std::process::exit(EXIT_CONFIG);
        }
    };
    // Before anything starts, so a signal during recovery still stops the node cleanly.
    let mut signals =
        Signals::new([SIGTERM, SIGINT]).context("install the SIGTERM and SIGINT handlers")?;
    tracing::info!(?config, "starting");
    let engine = Engine::open(config.engine_config())
        .with_context(|| format!("open the engine over {}", config.data_dir.display()))?;
    // The initial members a new cluster's id is derived from: the peers and this node's own
    // control address, when it names one (a node may leave itself out of `--peers`).
    let own_control = SocketAddr::new(config.listen_address, config.control_port());
    let mut initial_members = config.peers.clone();
    if !own_control.ip().is_unspecified() && own_control.port() != 0 {
        initial_members.push(own_control);
    }
    let identity =
        match identity::load_or_create(&config.data_dir, &config.cluster, &initial_members) {
            Ok(identity) => identity,
            Err(error @ identity::IdentityError::WrongCluster { .. }) => {
                eprintln!("coregrid node: {error}");
                engine.shutdown();
                std::process::exit(EXIT_CONFIG);
            }
            Err(error) => {
                engine.shutdown();
                return Err(error).context("read the node identity");
            }
        };
    // Read before anything starts: a damaged file stops the node here, with nothing changed.
    let control_state = match control_state::load(&config.data_dir) {
        Ok(state) => state,
        Err(error) => {
            engine.shutdown();
            return Err(error).context("read the control state");
        }
    };
    let settings = ShardSettings {
        identity: LocalIdentity {
            cluster_id,
            node: identity.node(),
            shard: ShardId(0),
            epoch: Epoch(0),
            serves_client: true,
            serves_replication: true,
        },
        listen: SocketAddr::new(config.listen_address, config.base_port),
        base_port: config.base_port,
        connections_max: config.connections_per_shard,
        requests_in_flight_max: config.requests_in_flight_per_connection,
        handshake_timeout: config.handshake_timeout(),
        idle_timeout: config.idle_timeout(),
        write_timeout: config.write_timeout(),
        drain_timeout: config.drain_timeout(),
        replicas: config.replica_settings(),
    };

    let shard_count = engine.shard_count();
    let mut controls = Vec::with_capacity(shard_count);
    let mut addresses = Vec::with_capacity(shard_count);
    for shard in 0..shard_count {
        let (control, receiver) = flume::bounded(1);
        let (engine_for_shard, settings) = (engine.clone(), settings.clone());
        let bound = futures::executor::block_on(engine.run_on_shard(shard, move |local| {
            let bound = server::start_shard(local, engine_for_shard, settings, receiver);
            async move { bound }
        }));
        controls.push(control);
        match bound {
            Ok(Ok(address)) => addresses.push(address),
            Ok(Err(reason)) => {
                // Dropping the controls stops the shards already bound.
                drop(controls);
                engine.shutdown();
                bail!("{reason}");
            }
            Err(error) => {
                drop(controls);
                engine.shutdown();
                return Err(error).context(format!("start shard {shard}'s server"));
            }
        }
    }
    let topology = Arc::new(topology(&engine, &identity, &addresses));
    let node = coregrid_net::NodeId(identity.node_id);
    let (feed, changed, positions) = ClusterFeed::new(node, shard_count);
    for (control, changed) in controls.iter().zip(changed) {
        // A shard that is gone reports at the drain below.
        let watch = ClusterWatch {
            feed: feed.clone(),
            changed,
        };
        let _sent = control.send(Control::Start(topology.clone(), watch));
    }
    let control_shard = control::start(
        ControlSettings {
            cluster_id: identity.cluster_id(),
            node,
            bind: SocketAddr::new(config.listen_address, config.control_port()),
            // Shard 0 always exists; its bound address, not the configured one (port 0 binds
            // any free port).
            data_address: addresses.first().copied(),
            peers: config.peers.clone(),
            voters: config.voters.clone(),
            strategy: config.election.strategy(),
            election_timeout: config.election_timeout(),
            heartbeat_interval: config.heartbeat_interval(),
            partitions: engine.partition_count(),
            replication_factor: config.replication_factor,
            data_dir: config.data_dir.clone(),
            fault_file: config.fault_file.clone(),
        },
        control_state,
        feed,
        positions,
    )
    .context("start the control shard")?;
    {
        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        for (shard, address) in addresses.iter().enumerate() {
            writeln!(out, "listening shard={shard} addr={address}")?;
        }
        out.flush()?;
    }
    // Ready once this node is `Joined` and holds a map; a signal meanwhile stops it.
    let mut stop_signal = None;
    loop {
        match control_shard.events.recv_timeout(SIGNAL_POLL) {
            Ok(ControlEvent::Bound(address)) => {
                let mut out = std::io::stdout().lock();
                writeln!(out, "control addr={address}")?;
                out.flush()?;
            }
            Ok(ControlEvent::Joined(epoch)) => {
                tracing::info!(%epoch, "joined");
                break;
            }
            Ok(ControlEvent::Failed(reason)) => {
                drop(controls);
                control_shard.stop();
                engine.shutdown();
                bail!("the control shard failed: {reason}");
            }
            Err(flume::RecvTimeoutError::Timeout) => {}
            Err(flume::RecvTimeoutError::Disconnected) => {
                drop(controls);
                engine.shutdown();
                bail!("the control shard ended before the node joined");
            }
        }
        if let Some(signal) = signals.pending().next() {
            stop_signal = Some(signal);
            break;
        }
    }
    if stop_signal.is_none() {
        let mut out = std::io::stdout().lock();
        writeln!(out, "ready node={}", identity.node_id)?;
        out.flush()?;
    }
    tracing::info!(
        node = identity.node_id,
        cluster = %config.cluster,
        shards = shard_count,
        partitions = engine.partition_count(),
        "ready"
    );

    // Serving; the control shard's later failures stop the node too.
    let signal = match stop_signal {
        Some(signal) => Some(signal),
        None => loop {
            if let Some(signal) = signals.pending().next() {
                break Some(signal);
            }
            match control_shard.events.recv_timeout(SIGNAL_POLL) {
                Ok(ControlEvent::Failed(reason)) => {
                    tracing::error!(%reason, "the control shard failed: stopping");
                    break None;
                }
                Ok(_) | Err(flume::RecvTimeoutError::Timeout) => {}
                Err(flume::RecvTimeoutError::Disconnected) => break None,
            }
        },
    };
    tracing::info!(?signal, "stopping: draining requests in flight");
    let (reply, reports) = flume::bounded::<DrainReport>(shard_count);
    for control in &controls {
        let _sent = control.send(Control::Stop(reply.clone()));
    }
    drop(reply);
    let deadline = Instant::now() + config.drain_timeout() + DRAIN_REPORT_GRACE;
    let mut clean = true;
    let mut reported = 0;
    while reported < shard_count {
        match reports.recv_deadline(deadline) {
            Ok(report) => {
                reported += 1;
                if report.requests_unanswered > 0 || report.connections_open > 0 {
                    clean = false;
                    tracing::error!(?report, "drain timed out: requests cut off");
                }
            }
            Err(_) => {
                clean = false;
                tracing::error!(
                    reported,
                    shards = shard_count,
                    "not every shard reported its drain"
                );
                break;
            }
        }
    }
    drop(controls);
    // Leave the cluster (others see this node leave, not die), then stop the engine.
    control_shard.stop();
    // The shards have dropped their handles: this is the last, and its drop flushes, syncs
    // and stops every shard.
    engine.shutdown();
    tracing::info!("stopped");
    if !clean {
        bail!("stopped, but requests in flight were cut off (see the log)");
    }
    Ok(())
}

/// The node's topology: for each shard its port and the partitions the engine placed on it.
fn topology(
    engine: &Engine,
    identity: &identity::NodeIdentity,
    addresses: &[SocketAddr],
) -> TopologyResponse {
    let partition_count = engine.partition_count();
    let shards = addresses
        .iter()
        .enumerate()
        .map(|(shard, address)| ShardTopology {
            shard: ShardId(u16::try_from(shard).unwrap_or(u16::MAX)),
            port: address.port(),
            partitions: (0..partition_count)
                .filter(|&partition| engine.shard_of(partition) == shard)
                .map(PartitionId)
                .collect(),
        })
        .collect();
    TopologyResponse {
        node: identity.node(),
        epoch: Epoch(0),
        partition_count,
        shards,
    }
}
