//! A small simulated gossip network for the membership tests: one [`Membership`] per node, a
//! virtual clock advanced by the driver (no sleeps), and a network that loses and delays
//! datagrams from a seeded PRNG, so that a failing run replays from the seed it printed.

// `allow`, not `expect`: each test binary uses a different part of this module, so in some of
// them nothing is dead and an `expect` would itself fail the build.
#![allow(
    dead_code,
    reason = "each test file uses a different part of this support module"
)]

use coregrid_cluster::membership::{Membership, MembershipConfig, MembershipOutput};
use coregrid_cluster::types::{ClusterId, NodeId, NodeState};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

/// The cluster every simulated node belongs to.
pub const CLUSTER: ClusterId = ClusterId(*b"membership-tests");

/// The gossip address of node `index` (node ids are 1-based).
pub fn address_of(node: u64) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, node as u8], 7946))
}

/// The data address node `node` announces in its life `generation`: IPv4 for odd nodes, IPv6
/// for even ones (both encodings travel), on a port that differs with every life (so a test
/// can tell a new life's address from the former one's).
pub fn data_address_of(node: u64, generation: u64) -> Option<SocketAddr> {
    let port = 7000 + generation as u16;
    Some(if node % 2 == 1 {
        SocketAddr::from(([10, 0, 1, node as u8], port))
    } else {
        SocketAddr::from(([0xfd00, 0, 0, 0, 0, 0, 1, node as u16], port))
    })
}

/// Something a node reported, with the virtual time it reported it at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observation {
    /// The node that reported it.
    pub observer: NodeId,
    /// What it reported (never a `Send`).
    pub output: MembershipOutput,
}

/// One simulated node: its membership while it runs, `None` while it is crashed.
pub struct SimNode {
    pub membership: Option<Membership>,
    pub generation: u64,
}

/// The simulated cluster and network.
pub struct SimNetwork {
    pub seed: u64,
    /// The cluster every node of this network belongs to.
    pub cluster_id: ClusterId,
    pub now: Duration,
    pub nodes: BTreeMap<u64, SimNode>,
    pub config: MembershipConfig,
    /// The data address each node is started with, by node and generation
    /// ([`data_address_of`] unless a test says otherwise).
    pub data_addr_of: fn(u64, u64) -> Option<SocketAddr>,
    /// Share of datagrams lost, in percent.
    pub loss_percent: u32,
    /// Delivery delay, uniform in this range of milliseconds.
    pub delay_ms: (u64, u64),
    /// While set, datagrams between nodes of different groups are lost (nodes in no group
    /// talk to everyone).
    pub partition: Option<Vec<Vec<u64>>>,
    /// Every non-send output of every node, in order.
    pub observations: Vec<(Duration, Observation)>,
    /// Every datagram sent, in order: (time, from, to, bytes).
    pub sent: Vec<(Duration, SocketAddr, SocketAddr, Vec<u8>)>,
    in_flight: BTreeMap<(Duration, u64), (SocketAddr, SocketAddr, Vec<u8>)>,
    next_sequence: u64,
    rng: StdRng,
}

impl SimNetwork {
    /// A network with nothing running yet; prints its seed so a failure can be replayed.
    pub fn new(seed: u64, loss_percent: u32, delay_ms: (u64, u64)) -> SimNetwork {
        println!("membership simulation seed {seed} (loss {loss_percent}%, delay {delay_ms:?} ms)");
        SimNetwork {
            seed,
            cluster_id: CLUSTER,
            now: Duration::ZERO,
            nodes: BTreeMap::new(),
            config: MembershipConfig::lan(5),
            data_addr_of: data_address_of,
            loss_percent,
            delay_ms,
            partition: None,
            observations: Vec::new(),
            sent: Vec::new(),
            in_flight: BTreeMap::new(),
            next_sequence: 0,
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// Starts node `node` (1-based) with `generation` and joins it through `peers`.
    pub fn start(&mut self, node: u64, generation: u64, peers: &[SocketAddr]) {
        let mut membership = Membership::new(
            self.cluster_id,
            NodeId(node),
            address_of(node),
            (self.data_addr_of)(node, generation),
            generation,
            self.config.clone(),
            self.seed ^ (node << 32) ^ generation,
        )
        .expect("the test configuration is valid");
        membership
            .join(self.now, peers)
            .expect("a fresh membership joins");
        self.nodes.insert(
            node,
            SimNode {
                membership: Some(membership),
                generation,
            },
        );
        self.drain(node);
    }

    /// Starts nodes 1..=count, each `stagger` after the previous, all with the full peer list.
    pub fn start_cluster(&mut self, count: u64, stagger: Duration) {
        let peers: Vec<SocketAddr> = (1..=count).map(address_of).collect();
        for node in 1..=count {
            self.start(node, 1, &peers);
            let next = self.now + stagger;
            self.run_until(next);
        }
    }

    /// Kills node `node`: it stops answering, keeps nothing.
    pub fn crash(&mut self, node: u64) {
        if let Some(sim_node) = self.nodes.get_mut(&node) {
            sim_node.membership = None;
        }
    }

    /// The running membership of node `node`.
    pub fn membership(&mut self, node: u64) -> &mut Membership {
        self.nodes
            .get_mut(&node)
            .and_then(|sim_node| sim_node.membership.as_mut())
            .expect("node is running")
    }

    /// Sets node `node`'s own state and delivers what it says.
    pub fn set_state(&mut self, node: u64, state: NodeState) {
        let now = self.now;
        self.membership(node)
            .set_local_state(now, state)
            .expect("a valid transition");
        self.drain(node);
    }

    /// Every running node sets its own state.
    pub fn set_state_everywhere(&mut self, state: NodeState) {
        let running: Vec<u64> = self.running();
        for node in running {
            self.set_state(node, state);
        }
    }

    /// The ids of the running nodes.
    pub fn running(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|(_, sim_node)| sim_node.membership.is_some())
            .map(|(&node, _)| node)
            .collect()
    }

    /// What node `observer` thinks of node `node`, if it knows it.
    pub fn state_seen(&self, observer: u64, node: u64) -> Option<NodeState> {
        let membership = self.nodes.get(&observer)?.membership.as_ref()?;
        membership
            .members()
            .get(&NodeId(node))
            .map(|member| member.state)
    }

    /// The data address node `observer` knows for node `node`: `None` when it does not know
    /// the node, `Some(None)` when it knows it without a data address.
    pub fn data_addr_seen(&self, observer: u64, node: u64) -> Option<Option<SocketAddr>> {
        let membership = self.nodes.get(&observer)?.membership.as_ref()?;
        membership
            .members()
            .get(&NodeId(node))
            .map(|member| member.data_addr)
    }

    /// Whether every running node sees every node of `nodes` in `state`.
    pub fn all_running_see(&self, nodes: &[u64], state: NodeState) -> bool {
        self.running().into_iter().all(|observer| {
            nodes
                .iter()
                .all(|&node| self.state_seen(observer, node) == Some(state))
        })
    }

    /// Hands a datagram to node `to` now, as if it arrived from `from`.
    pub fn inject(&mut self, to: u64, from: SocketAddr, bytes: &[u8]) {
        let now = self.now;
        self.membership(to).handle_datagram(now, from, bytes);
        self.drain(to);
    }

    /// Runs the network until virtual time `end`.
    pub fn run_until(&mut self, end: Duration) {
        while let Some(next) = self.next_event().filter(|&next| next <= end) {
            self.now = self.now.max(next);
            self.step();
        }
        self.now = self.now.max(end);
    }

    /// Runs until `condition` holds (checked after every event) or `limit` passes; returns the
    /// time it first held.
    pub fn run_until_condition(
        &mut self,
        limit: Duration,
        condition: impl Fn(&SimNetwork) -> bool,
    ) -> Option<Duration> {
        loop {
            if condition(self) {
                return Some(self.now);
            }
            match self.next_event().filter(|&next| next <= limit) {
                Some(next) => {
                    self.now = self.now.max(next);
                    self.step();
                }
                None => {
                    self.now = self.now.max(limit);
                    return condition(self).then_some(self.now);
                }
            }
        }
    }

    /// The transitions node `observer` reported about node `node`, in order.
    pub fn observed(&self, observer: u64, node: u64) -> Vec<(Duration, MembershipOutput)> {
        self.observed_since(0, observer, node)
    }

    /// Like [`SimNetwork::observed`], from the `since`-th observation on (take
    /// `observations.len()` before an action to see only what follows it).
    pub fn observed_since(
        &self,
        since: usize,
        observer: u64,
        node: u64,
    ) -> Vec<(Duration, MembershipOutput)> {
        self.observations[since..]
            .iter()
            .filter(|(_, observation)| observation.observer == NodeId(observer))
            .filter(|(_, observation)| match &observation.output {
                MembershipOutput::StateChanged { node: about, .. }
                | MembershipOutput::SuspicionChanged { node: about, .. }
                | MembershipOutput::Forgotten { node: about, .. } => *about == NodeId(node),
                _ => false,
            })
            .map(|(at, observation)| (*at, observation.output.clone()))
            .collect()
    }

    fn next_event(&self) -> Option<Duration> {
        let delivery = self.in_flight.keys().next().map(|&(at, _)| at);
        let deadline = self
            .nodes
            .values()
            .filter_map(|sim_node| sim_node.membership.as_ref()?.next_deadline())
            .min();
        match (delivery, deadline) {
            (Some(delivery), Some(deadline)) => Some(delivery.min(deadline)),
            (delivery, deadline) => delivery.or(deadline),
        }
    }

    /// Delivers every datagram due now, then runs every node's due deadlines.
    fn step(&mut self) {
        let now = self.now;
        while let Some(entry) = self.in_flight.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let (from, to, bytes) = entry.remove();
            // Datagrams to addresses no simulated node has (a mangled packet's) are lost.
            let Some(node) = (1..=u64::from(u8::MAX)).find(|&node| address_of(node) == to) else {
                continue;
            };
            if self.partitioned(from, node) {
                continue;
            }
            if let Some(membership) = self
                .nodes
                .get_mut(&node)
                .and_then(|sim_node| sim_node.membership.as_mut())
            {
                membership.handle_datagram(now, from, &bytes);
                self.drain(node);
            }
        }
        let due: Vec<u64> = self
            .nodes
            .iter()
            .filter(|(_, sim_node)| {
                sim_node
                    .membership
                    .as_ref()
                    .and_then(Membership::next_deadline)
                    .is_some_and(|deadline| deadline <= now)
            })
            .map(|(&node, _)| node)
            .collect();
        for node in due {
            self.membership(node).handle_deadline(now);
            self.drain(node);
        }
    }

    /// Whether the partition keeps a datagram from `from` away from node `to`.
    fn partitioned(&self, from: SocketAddr, to: u64) -> bool {
        let Some(groups) = &self.partition else {
            return false;
        };
        let Some(from) = (1..=u64::from(u8::MAX)).find(|&node| address_of(node) == from) else {
            return false;
        };
        let group_of = |node: u64| groups.iter().position(|group| group.contains(&node));
        matches!((group_of(from), group_of(to)), (Some(a), Some(b)) if a != b)
    }

    /// Takes node `node`'s outputs: datagrams go on the wire, the rest is recorded.
    fn drain(&mut self, node: u64) {
        let from = address_of(node);
        while let Some(output) = self.membership(node).poll_output() {
            match output {
                MembershipOutput::Send { to, bytes } => {
                    self.sent.push((self.now, from, to, bytes.clone()));
                    if self.rng.gen_range(0..100) < self.loss_percent {
                        continue;
                    }
                    let delay = Duration::from_millis(
                        self.rng.gen_range(self.delay_ms.0..=self.delay_ms.1),
                    );
                    let sequence = self.next_sequence;
                    self.next_sequence += 1;
                    self.in_flight
                        .insert((self.now + delay, sequence), (from, to, bytes));
                }
                output => self.observations.push((
                    self.now,
                    Observation {
                        observer: NodeId(node),
                        output,
                    },
                )),
            }
        }
    }
}

/// Starts nodes 1..=count, lets them find each other, has each announce `JoinedSyncing` then
/// `Joined`, and runs until every node sees every node `Joined` (panics, naming the seed, if
/// that takes more than a minute of virtual time).
pub fn joined_cluster(seed: u64, count: u64, loss_percent: u32) -> SimNetwork {
    let mut network = SimNetwork::new(seed, loss_percent, (1, 30));
    network.start_cluster(count, Duration::from_millis(300));
    let nodes: Vec<u64> = (1..=count).collect();
    let limit = network.now + Duration::from_secs(60);
    network
        .run_until_condition(limit, |network| {
            network.all_running_see(&nodes, NodeState::Joining)
        })
        .unwrap_or_else(|| panic!("seed {seed}: the nodes did not find each other"));
    network.set_state_everywhere(NodeState::JoinedSyncing);
    let until = network.now + Duration::from_secs(1);
    network.run_until(until);
    network.set_state_everywhere(NodeState::Joined);
    let limit = network.now + Duration::from_secs(60);
    network
        .run_until_condition(limit, |network| {
            network.all_running_see(&nodes, NodeState::Joined)
        })
        .unwrap_or_else(|| panic!("seed {seed}: not every node sees every node joined"));
    network
}
