//! The deterministic simulator of the control plane (style.md rule 1, design.md section 8).
//!
//! It runs the real election state machines ([`Controller`]) of every node over a virtual
//! clock (an event queue) and a simulated network that loses, delays, duplicates and reorders
//! messages and can be split into arbitrary groups and healed. Nodes crash and restart keeping
//! only what they persisted: the simulator acts on each node's outputs in order and may crash
//! a node between two outputs, so a message or publish that follows a persist is never acted
//! on before the persist is durable. Everything random comes from one seeded PRNG, so a run
//! is reproduced exactly by its seed.
//!
//! After every step the [`Checker`] checks the invariants: at most one controller per term,
//! terms and published epochs that never go down (restarts included), one map per epoch,
//! published maps stored by a majority, at most one leader per partition; and, once faults
//! stop, a controller acknowledged by every live node within twice the longest election
//! timer.

mod checker;

pub use checker::{Checker, Violation};

use crate::election::{Config, ControlMessage, Controller, Output, Role, Status, Strategy};
use crate::map::{FencedPosition, LeadershipMap};
use crate::types::{Epoch, NodeId, NodeState, PartitionId, Term, Time};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

/// Most steps (events) one run may take: a run that reaches it is reported as a livelock.
pub const STEPS_MAX: u64 = 2_000_000;

/// What goes wrong in a randomized run.
#[derive(Clone, Debug)]
pub struct Faults {
    /// Probability that a message is lost.
    pub loss_probability: f64,
    /// Probability that a message is delivered twice.
    pub duplicate_probability: f64,
    /// Shortest message delay.
    pub delay_min: Duration,
    /// Longest message delay (random delays reorder messages).
    pub delay_max: Duration,
    /// Whether nodes crash and restart.
    pub crashes: bool,
    /// Whether the network splits into groups (and heals).
    pub partitions: bool,
    /// Probability that a node crashes between two of its outputs (losing the later ones).
    pub crash_between_outputs_probability: f64,
    /// Mean time between two random fault events.
    pub fault_interval_mean: Duration,
    /// How long faults are injected (from time zero); then the network heals, every node
    /// restarts and the fault-free tail begins.
    pub fault_duration: Duration,
}

impl Faults {
    /// No faults at all: a reliable network with short delays (scripted scenarios inject
    /// their own faults through [`Simulation::crash`], [`Simulation::partition`] and so on).
    pub fn none() -> Faults {
        Faults {
            loss_probability: 0.0,
            duplicate_probability: 0.0,
            delay_min: Duration::from_millis(1),
            delay_max: Duration::from_millis(10),
            crashes: false,
            partitions: false,
            crash_between_outputs_probability: 0.0,
            fault_interval_mean: Duration::from_secs(1),
            fault_duration: Duration::ZERO,
        }
    }

    /// Everything at once: loss, duplicates, reordering, crashes (also between outputs),
    /// restarts and partitions.
    pub fn all() -> Faults {
        Faults {
            loss_probability: 0.05,
            duplicate_probability: 0.02,
            delay_min: Duration::from_millis(1),
            delay_max: Duration::from_millis(40),
            crashes: true,
            partitions: true,
            crash_between_outputs_probability: 0.002,
            fault_interval_mean: Duration::from_millis(300),
            fault_duration: Duration::from_secs(6),
        }
    }
}

/// One simulated cluster.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// The run's seed: the whole run follows from it.
    pub seed: u64,
    /// Nodes, with ids `1..=nodes`; the first five are voters.
    pub nodes: usize,
    /// The election strategy of every node.
    pub strategy: Strategy,
    /// What goes wrong.
    pub faults: Faults,
    /// The base election timeout of every node.
    pub election_timeout: Duration,
    /// The heartbeat interval of every node.
    pub heartbeat_interval: Duration,
    /// The backoff cap of every node.
    pub election_backoff_cap: Duration,
    /// How long after a crash the other nodes' membership views mark it dead (and after a
    /// restart, joined again): the failure detector's delay.
    pub detection_delay: Duration,
    /// Partitions in the maps.
    pub partitions: u32,
    /// Replicas per partition.
    pub replication_factor: usize,
    /// The map function every node uses (the real scoring unless a test substitutes one).
    pub map_function: crate::election::MapFunction,
    /// Print every step (event, and the touched node's status) to stdout: for replaying a
    /// failed seed.
    pub trace: bool,
}

impl SimConfig {
    /// A cluster of `nodes` with the simulator's timings (short, so runs are cheap in steps:
    /// a 300 ms election timeout, 50 ms heartbeats, a 600 ms backoff cap) and no faults.
    pub fn new(seed: u64, nodes: usize, strategy: Strategy) -> SimConfig {
        SimConfig {
            seed,
            nodes,
            strategy,
            faults: Faults::none(),
            election_timeout: Duration::from_millis(300),
            heartbeat_interval: Duration::from_millis(50),
            election_backoff_cap: Duration::from_millis(600),
            detection_delay: Duration::from_millis(150),
            partitions: 8,
            replication_factor: 3,
            map_function: crate::map::compute_leadership_map,
            trace: false,
        }
    }

    /// The election configuration every node runs.
    pub fn election_config(&self) -> Config {
        let ids = (1..=self.nodes as u64).map(NodeId);
        let mut config = Config::new(
            Config::default_voters(ids),
            self.strategy,
            self.partitions,
            self.replication_factor,
        );
        config.election_timeout = self.election_timeout;
        config.heartbeat_interval = self.heartbeat_interval;
        config.election_backoff_cap = self.election_backoff_cap;
        config.map_function = self.map_function;
        config
    }

    /// The liveness bound of the fault-free tail: twice the longest election timer.
    pub fn stable_bound(&self) -> Duration {
        self.election_config().election_timeout_max() * 2
    }
}

/// A failed run: what broke, and how to replay it.
#[derive(Clone, Debug)]
pub struct Failure {
    /// The run's seed.
    pub seed: u64,
    /// The strategy.
    pub strategy: Strategy,
    /// The node count.
    pub nodes: usize,
    /// When it broke (virtual time).
    pub at: Time,
    /// What broke.
    pub violation: Violation,
}

impl fmt::Display for Failure {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            formatter,
            "seed={} strategy={} nodes={} at_ms={}: {} (replay: COREGRID_SIM_SEED={} COREGRID_SIM_STRATEGY={} COREGRID_SIM_NODES={} cargo test -p coregrid-cluster --test election_replay -- --nocapture)",
            self.seed,
            self.strategy,
            self.nodes,
            self.at.as_millis(),
            self.violation,
            self.seed,
            self.strategy,
            self.nodes
        )
    }
}

/// What a successful randomized run saw.
#[derive(Clone, Debug)]
pub struct RunSummary {
    /// Steps taken.
    pub steps: u64,
    /// Messages sent.
    pub messages: u64,
    /// Terms that had a controller.
    pub terms_with_controller: usize,
    /// Epochs published.
    pub epochs_published: usize,
    /// Virtual time from the tail's start to a controller acknowledged by all live nodes.
    pub tail_to_stable: Duration,
}

#[derive(Debug)]
enum Event {
    Deliver {
        from: NodeId,
        to: NodeId,
        message: ControlMessage,
    },
    Timer {
        node: usize,
        generation: u64,
    },
    MembersUpdate,
    RandomFault,
    TailStart,
}

struct SimNode {
    id: NodeId,
    machine: Option<Controller>,
    disk: Option<crate::election::Persisted>,
    timer: Option<Time>,
    timer_generation: u64,
    incarnation: u64,
    group: u32,
    published: Vec<Epoch>,
}

/// A simulated cluster: nodes, network, clock and checker. Drive it with the scripted calls
/// ([`crash`](Self::crash), [`partition`](Self::partition), [`run_until`](Self::run_until),
/// ...) or run a whole randomized run with [`run_random`].
pub struct Simulation {
    config: SimConfig,
    election_config: Config,
    rng: StdRng,
    now: Time,
    sequence: u64,
    events: BTreeMap<(Time, u64), Event>,
    nodes: Vec<SimNode>,
    checker: Checker,
    loss_probability: f64,
    duplicate_probability: f64,
    delay_min: Duration,
    delay_max: Duration,
    crash_between_outputs_probability: f64,
    steps: u64,
    messages_sent: u64,
    election_messages_sent: u64,
    tail_start: Option<Time>,
    stable_since: Option<Time>,
}

impl fmt::Debug for Simulation {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("Simulation")
            .field("seed", &self.config.seed)
            .field("now", &self.now)
            .field("steps", &self.steps)
            .finish_non_exhaustive()
    }
}

impl Simulation {
    /// A cluster of fresh nodes (no persisted state: the bootstrap case) at time zero.
    pub fn new(config: SimConfig) -> Simulation {
        let election_config = config.election_config();
        let rng = StdRng::seed_from_u64(config.seed);
        let nodes = (1..=config.nodes as u64)
            .map(|id| SimNode {
                id: NodeId(id),
                machine: None,
                disk: None,
                timer: None,
                timer_generation: 0,
                incarnation: 0,
                group: 0,
                published: Vec::new(),
            })
            .collect();
        let faults = config.faults.clone();
        let mut simulation = Simulation {
            checker: Checker::new(&election_config.voters),
            election_config,
            rng,
            now: Time::ZERO,
            sequence: 0,
            events: BTreeMap::new(),
            nodes,
            loss_probability: 0.0,
            duplicate_probability: 0.0,
            delay_min: faults.delay_min,
            delay_max: faults.delay_max.max(faults.delay_min),
            crash_between_outputs_probability: 0.0,
            steps: 0,
            messages_sent: 0,
            election_messages_sent: 0,
            tail_start: None,
            stable_since: None,
            config,
        };
        for index in 0..simulation.nodes.len() {
            simulation.start_node(index);
        }
        // Every node was down while the ones before it started: give all the full view.
        let view = simulation.members_view();
        let now = simulation.now;
        for index in 0..simulation.nodes.len() {
            if let Some(machine) = simulation.nodes[index].machine.as_mut() {
                machine.handle_members(now, &view);
            }
            // A fresh node has nothing to fail on.
            let _ = simulation.after_input(index);
        }
        simulation
    }

    /// The configuration.
    pub fn config(&self) -> &SimConfig {
        &self.config
    }

    /// The current virtual time.
    pub fn now(&self) -> Time {
        self.now
    }

    /// Every node's id.
    pub fn node_ids(&self) -> Vec<NodeId> {
        self.nodes.iter().map(|node| node.id).collect()
    }

    /// A live node's election status (None while it is down).
    pub fn status(&self, node: NodeId) -> Option<Status> {
        self.node(node)?.machine.as_ref().map(Controller::status)
    }

    /// Every epoch `node` published, in order, over all its lives.
    pub fn published(&self, node: NodeId) -> &[Epoch] {
        self.node(node)
            .map_or(&[], |node| node.published.as_slice())
    }

    /// The checker (to inspect controllers by term and maps by epoch).
    pub fn checker(&self) -> &Checker {
        &self.checker
    }

    /// Messages sent so far (all kinds).
    pub fn messages_sent(&self) -> u64 {
        self.messages_sent
    }

    /// Election messages sent so far (see [`ControlMessage::is_election`]).
    pub fn election_messages_sent(&self) -> u64 {
        self.election_messages_sent
    }

    /// The controller every live node acknowledges, if there is one: a live node in role
    /// controller that has published a map of its own term, and whose term and published
    /// epoch every live node shares, naming it.
    pub fn stable_controller(&self) -> Option<(NodeId, Term)> {
        let mut live = self.nodes.iter().filter_map(|node| node.machine.as_ref());
        let controller = self
            .nodes
            .iter()
            .filter_map(|node| node.machine.as_ref())
            .find(|machine| machine.status().role == Role::Controller)?;
        let status = controller.status();
        let own_map = controller
            .persisted()
            .published_map
            .as_ref()
            .is_some_and(|map| map.term == status.term);
        if !own_map {
            return None;
        }
        let all = live.all(|machine| {
            let other = machine.status();
            other.term == status.term
                && other.controller == Some(controller.id())
                && other.published_epoch == status.published_epoch
        });
        (all && status.published_epoch > Epoch(0)).then_some((controller.id(), status.term))
    }

    /// Crashes `node` now: its state machine and unsent outputs are gone; its disk stays.
    pub fn crash(&mut self, node: NodeId) {
        if let Some(index) = self.index(node) {
            self.crash_index(index);
        }
    }

    /// Restarts a crashed `node` from what it persisted.
    pub fn restart(&mut self, node: NodeId) {
        if let Some(index) = self.index(node) {
            if self.nodes[index].machine.is_none() {
                self.start_node(index);
                self.schedule(self.config.detection_delay, Event::MembersUpdate);
            }
        }
    }

    /// Splits the network: nodes in different groups cannot reach each other; nodes named in
    /// no group form one more group together.
    pub fn partition(&mut self, groups: &[&[NodeId]]) {
        for node in &mut self.nodes {
            node.group = u32::try_from(groups.len()).unwrap_or(u32::MAX);
        }
        for (group, members) in groups.iter().enumerate() {
            for member in members.iter() {
                if let Some(index) = self.index(*member) {
                    self.nodes[index].group = u32::try_from(group).unwrap_or(u32::MAX);
                }
            }
        }
    }

    /// Makes `node` stand now (see [`Controller::stand`]).
    pub fn stand(&mut self, node: NodeId) -> Result<(), Failure> {
        let Some(index) = self.index(node) else {
            return Ok(());
        };
        let now = self.now;
        if let Some(machine) = self.nodes[index].machine.as_mut() {
            machine.stand(now);
            self.after_input(index)?;
        }
        Ok(())
    }

    /// Heals every partition.
    pub fn heal(&mut self) {
        for node in &mut self.nodes {
            node.group = 0;
        }
    }

    /// Turns step printing on or off (see [`SimConfig::trace`]).
    pub fn set_trace(&mut self, trace: bool) {
        self.config.trace = trace;
    }

    /// Sets the probability that a message is lost.
    pub fn set_loss(&mut self, probability: f64) {
        self.loss_probability = probability;
    }

    /// Runs every event up to and including `until` (the clock then reads `until`).
    pub fn run_until(&mut self, until: Time) -> Result<(), Failure> {
        while self
            .events
            .first_key_value()
            .is_some_and(|((at, _), _)| *at <= until)
        {
            self.step()?;
        }
        self.now = self.now.max(until);
        Ok(())
    }

    /// Runs until a controller is acknowledged by every live node (see
    /// [`stable_controller`](Self::stable_controller)) or `limit` passes; returns the
    /// controller and the time it became stable.
    pub fn run_until_stable(
        &mut self,
        limit: Time,
    ) -> Result<Option<(NodeId, Term, Time)>, Failure> {
        loop {
            if let Some((node, term)) = self.stable_controller() {
                return Ok(Some((node, term, self.now)));
            }
            match self.events.first_key_value() {
                Some(((at, _), _)) if *at <= limit => {
                    self.step()?;
                }
                _ => {
                    self.now = self.now.max(limit);
                    return Ok(None);
                }
            }
        }
    }

    /// Processes the next event. False when there is none.
    pub fn step(&mut self) -> Result<bool, Failure> {
        let Some(((at, _), event)) = self.events.pop_first() else {
            return Ok(false);
        };
        debug_assert!(at >= self.now);
        self.now = at;
        if self.config.trace {
            println!("{:>8} ms {:?}", at.as_millis(), event);
        }
        self.steps += 1;
        if self.steps > STEPS_MAX {
            return Err(self.failure(Violation::StepLimit { steps: self.steps }));
        }
        match event {
            Event::Deliver { from, to, message } => {
                let Some(index) = self.index(to) else {
                    return Ok(true);
                };
                let reachable = self
                    .index(from)
                    .is_some_and(|from| self.nodes[from].group == self.nodes[index].group);
                if reachable {
                    if let Some(machine) = self.nodes[index].machine.as_mut() {
                        machine.handle_message(at, from, message);
                        self.after_input(index)?;
                    }
                }
            }
            Event::Timer { node, generation } => {
                if self.nodes[node].timer_generation == generation {
                    self.nodes[node].timer = None;
                    if let Some(machine) = self.nodes[node].machine.as_mut() {
                        machine.tick(at);
                        self.after_input(node)?;
                    }
                }
            }
            Event::MembersUpdate => {
                let view = self.members_view();
                for index in 0..self.nodes.len() {
                    if let Some(machine) = self.nodes[index].machine.as_mut() {
                        machine.handle_members(at, &view);
                        self.after_input(index)?;
                    }
                }
            }
            Event::RandomFault => self.random_fault(),
            Event::TailStart => self.start_tail(),
        }
        self.check_tail()?;
        Ok(true)
    }

    // ---- Internals ----

    fn node(&self, node: NodeId) -> Option<&SimNode> {
        self.index(node).map(|index| &self.nodes[index])
    }

    fn index(&self, node: NodeId) -> Option<usize> {
        let index = usize::try_from(node.0).ok()?.checked_sub(1)?;
        (index < self.nodes.len()).then_some(index)
    }

    fn failure(&self, violation: Violation) -> Failure {
        Failure {
            seed: self.config.seed,
            strategy: self.config.strategy,
            nodes: self.config.nodes,
            at: self.now,
            violation,
        }
    }

    fn schedule(&mut self, after: Duration, event: Event) {
        self.sequence += 1;
        self.events.insert((self.now + after, self.sequence), event);
    }

    fn members_view(&self) -> BTreeMap<NodeId, NodeState> {
        self.nodes
            .iter()
            .map(|node| {
                let state = if node.machine.is_some() {
                    NodeState::Joined
                } else {
                    NodeState::Dead
                };
                (node.id, state)
            })
            .collect()
    }

    fn start_node(&mut self, index: usize) {
        if self.config.trace {
            println!("            {}: START", self.nodes[index].id);
        }
        let node = &mut self.nodes[index];
        node.incarnation += 1;
        let seed = self
            .config
            .seed
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .wrapping_add(node.id.0 << 32)
            .wrapping_add(node.incarnation);
        let machine = Controller::new(
            self.election_config.clone(),
            node.id,
            node.disk.clone(),
            self.now,
            seed,
        )
        .expect("the simulator's election config is valid");
        node.machine = Some(machine);
        let view = self.members_view();
        if let Some(machine) = self.nodes[index].machine.as_mut() {
            machine.handle_members(self.now, &view);
        }
        // A fresh start has no outputs but a timer; drain anyway (never fails for a new node).
        let _ = self.after_input(index);
    }

    fn crash_index(&mut self, index: usize) {
        let node = &mut self.nodes[index];
        if node.machine.take().is_some() {
            node.timer = None;
            node.timer_generation += 1;
            tracing::debug!(node = %node.id, at_ms = self.now.as_millis() as u64, "sim: crash");
            if self.config.trace {
                println!("            {}: CRASH", node.id);
            }
            self.schedule(self.config.detection_delay, Event::MembersUpdate);
        }
    }

    /// Acts on a node's outputs in order, maybe crashing it between two of them; then
    /// re-arms its timer and checks its status.
    fn after_input(&mut self, index: usize) -> Result<(), Failure> {
        let id = self.nodes[index].id;
        loop {
            let Some(machine) = self.nodes[index].machine.as_mut() else {
                return Ok(());
            };
            let Some(output) = machine.poll_output() else {
                break;
            };
            match output {
                Output::Persist(persisted) => {
                    self.checker
                        .observe_persist(id, &persisted)
                        .map_err(|violation| self.failure(violation))?;
                    self.nodes[index].disk = Some(persisted);
                }
                Output::Send { to, message } => {
                    if self.config.trace {
                        println!("            {id} -> {to}: {message:?}");
                    }
                    self.send(id, to, message)
                }
                Output::Publish(map) => self.publish(index, &map)?,
            }
            if self.crash_between_outputs_probability > 0.0
                && self.rng.gen_bool(self.crash_between_outputs_probability)
            {
                self.crash_index(index);
                return Ok(());
            }
        }
        let Some(machine) = self.nodes[index].machine.as_ref() else {
            return Ok(());
        };
        let status = machine.status();
        let deadline = machine.next_deadline();
        if self.config.trace {
            println!(
                "            {id}: {status:?} next={:?}",
                deadline.map(|d| d.as_millis())
            );
        }
        self.checker
            .observe_status(id, &status)
            .map_err(|violation| self.failure(violation))?;
        let node = &mut self.nodes[index];
        if deadline != node.timer {
            node.timer = deadline;
            node.timer_generation += 1;
            if let Some(deadline) = deadline {
                let generation = node.timer_generation;
                let after = deadline.saturating_sub(self.now);
                self.schedule(
                    after,
                    Event::Timer {
                        node: index,
                        generation,
                    },
                );
            }
        }
        Ok(())
    }

    fn publish(&mut self, index: usize, map: &LeadershipMap) -> Result<(), Failure> {
        let id = self.nodes[index].id;
        self.checker
            .observe_publish(id, map)
            .map_err(|violation| self.failure(violation))?;
        self.nodes[index].published.push(map.epoch);
        // As a node's data shards do: report the replicas of partitions this map leaves without
        // a leader, so that failover (fence, reports, choice) runs under every fault here too.
        // The simulator has no logs: every replica reports an empty one.
        let positions: Vec<FencedPosition> = map
            .partitions
            .iter()
            .enumerate()
            .filter(|(_, assignment)| {
                assignment.leader.is_none() && assignment.replicas.contains(&id)
            })
            .filter_map(|(partition, _)| {
                Some(FencedPosition {
                    partition: PartitionId(u32::try_from(partition).ok()?),
                    map_epoch: map.epoch,
                    last_epoch: Epoch(0),
                    last_lsn: 0,
                    usable: true,
                })
            })
            .collect();
        let now = self.now;
        if let Some(machine) = self.nodes[index].machine.as_mut() {
            machine.handle_local_positions(now, positions);
        }
        Ok(())
    }

    fn send(&mut self, from: NodeId, to: NodeId, message: ControlMessage) {
        self.messages_sent += 1;
        if message.is_election() {
            self.election_messages_sent += 1;
        }
        let (Some(from_index), Some(to_index)) = (self.index(from), self.index(to)) else {
            return;
        };
        if self.nodes[from_index].group != self.nodes[to_index].group {
            return;
        }
        if self.loss_probability > 0.0 && self.rng.gen_bool(self.loss_probability) {
            return;
        }
        let copies =
            if self.duplicate_probability > 0.0 && self.rng.gen_bool(self.duplicate_probability) {
                2
            } else {
                1
            };
        for _ in 0..copies {
            let delay = self.rng.gen_range(self.delay_min..=self.delay_max);
            self.schedule(
                delay,
                Event::Deliver {
                    from,
                    to,
                    message: message.clone(),
                },
            );
        }
    }

    fn random_fault(&mut self) {
        let faults = self.config.faults.clone();
        if self.tail_start.is_some() {
            return;
        }
        let choice = self.rng.gen_range(0..10u32);
        let mut node = self.rng.gen_range(0..self.nodes.len());
        // Half the crashes aim at a controller: that is what makes elections happen.
        if self.rng.gen_bool(0.5) {
            if let Some(controller) = (0..self.nodes.len()).find(|index| {
                self.nodes[*index]
                    .machine
                    .as_ref()
                    .is_some_and(|machine| machine.status().role == Role::Controller)
            }) {
                node = controller;
            }
        }
        match choice {
            0..=2 if faults.crashes => {
                if self.nodes[node].machine.is_some() {
                    self.crash_index(node);
                } else {
                    self.start_node(node);
                    self.schedule(self.config.detection_delay, Event::MembersUpdate);
                }
            }
            3..=4 if faults.crashes => {
                // Restart someone who is down, if anyone is.
                if let Some(down) =
                    (0..self.nodes.len()).find(|index| self.nodes[*index].machine.is_none())
                {
                    self.start_node(down);
                    self.schedule(self.config.detection_delay, Event::MembersUpdate);
                }
            }
            5..=6 if faults.partitions => {
                let groups = self.rng.gen_range(2..=3u32);
                for index in 0..self.nodes.len() {
                    self.nodes[index].group = self.rng.gen_range(0..groups);
                }
                if self.config.trace {
                    let groups: Vec<u32> = self.nodes.iter().map(|node| node.group).collect();
                    println!("            PARTITION {groups:?}");
                }
            }
            7 if faults.partitions => self.heal(),
            8 => {
                self.loss_probability = if self.rng.gen_bool(0.5) {
                    faults.loss_probability
                } else {
                    faults.loss_probability * 4.0
                }
                .min(0.5);
            }
            _ => {}
        }
        let mean_us = u64::try_from(faults.fault_interval_mean.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        let after = Duration::from_micros(self.rng.gen_range(0..mean_us * 2));
        self.schedule(after, Event::RandomFault);
    }

    fn start_tail(&mut self) {
        self.heal();
        self.loss_probability = 0.0;
        self.duplicate_probability = 0.0;
        self.crash_between_outputs_probability = 0.0;
        for index in 0..self.nodes.len() {
            if self.nodes[index].machine.is_none() {
                self.start_node(index);
            }
        }
        self.schedule(self.config.detection_delay, Event::MembersUpdate);
        self.tail_start = Some(self.now);
        self.stable_since = None;
    }

    fn check_tail(&mut self) -> Result<(), Failure> {
        let Some(tail_start) = self.tail_start else {
            return Ok(());
        };
        if self.stable_since.is_none() && self.stable_controller().is_some() {
            self.stable_since = Some(self.now);
        }
        let deadline = tail_start + self.config.stable_bound();
        if self.stable_since.is_none() && self.now > deadline {
            return Err(self.failure(Violation::NoStableController {
                tail_start,
                deadline,
            }));
        }
        Ok(())
    }

    fn begin_random_faults(&mut self) {
        let faults = self.config.faults.clone();
        self.loss_probability = faults.loss_probability;
        self.duplicate_probability = faults.duplicate_probability;
        self.crash_between_outputs_probability = faults.crash_between_outputs_probability;
        if faults.crashes || faults.partitions || faults.loss_probability > 0.0 {
            self.schedule(faults.fault_interval_mean, Event::RandomFault);
        }
        self.schedule(faults.fault_duration, Event::TailStart);
    }
}

/// A whole randomized run: faults for `config.faults.fault_duration`, then the fault-free
/// tail until a controller is acknowledged by every live node (which must happen within
/// [`SimConfig::stable_bound`]) and one more election timeout after it, checking every
/// invariant after every step.
pub fn run_random(config: SimConfig) -> Result<RunSummary, Failure> {
    let mut simulation = Simulation::new(config);
    simulation.begin_random_faults();
    let bound = simulation.config.stable_bound();
    let extra = simulation.config.election_timeout;
    loop {
        if let (Some(tail_start), Some(stable)) = (simulation.tail_start, simulation.stable_since) {
            if simulation.now >= stable + extra {
                return Ok(RunSummary {
                    steps: simulation.steps,
                    messages: simulation.messages_sent,
                    terms_with_controller: simulation.checker.controllers_by_term().len(),
                    epochs_published: simulation.checker.maps_by_epoch().len(),
                    tail_to_stable: stable - tail_start,
                });
            }
        }
        if !simulation.step()? {
            // Nothing left to happen: only possible with no node that may stand.
            let tail_start = simulation.tail_start.unwrap_or(simulation.now);
            return Err(simulation.failure(Violation::NoStableController {
                tail_start,
                deadline: tail_start + bound,
            }));
        }
    }
}
