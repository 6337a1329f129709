//! Client commands: `coregrid put|get|del|cas|status|create-collection|drop-collection`, each a
//! short-lived [`BlockingClient`] against `--cluster host:port,...` (any shard port of any node
//! serves as a seed; the client learns the rest from the topology).
//!
//! **Output.** Text for people by default; `--json` prints one JSON object on stdout for every
//! command, errors included (`{"ok": false, "error": ..., "exit_code": ...}`). Errors also go to
//! stderr as one line.
//!
//! **Exit codes** ([`exit`]): 0 done; 1 the answer is "no" (`get` of an absent key, a
//! compare-and-set whose revision did not hold); 2 bad usage or an invalid request (nothing
//! sent); 3 the cluster could not be reached or did not answer (nothing applied); 4 the server
//! refused (another cluster, a missing collection, a request over a limit; nothing applied);
//! 5 a write's outcome is unknown (it may have been applied; rerunning it is a new write).
//!
//! **Collections.** Keys live in collections; the commands use `--collection` (default
//! `default`). A collection must exist before it is written to: create it once with
//! `coregrid create-collection <name>`. A write to a missing collection fails with exit 4 and
//! says so; nothing is created implicitly, so a typo in a name never makes a new collection.

use clap::{Args, Subcommand};
use coregrid_net::client::{BlockingClient, ClientConfig, ClientError, Value};
use coregrid_net::message::{
    ClusterStatusResponse, DeleteResponse, PartitionStatus, WriteConsistency,
};
use coregrid_net::{ClusterId, Lsn, NodeId};
use serde_json::{json, Value as Json};
use std::io::Write;
use std::time::Duration;

/// Port of shard 0 of a node by default: the node's own default (`coregrid node
/// --base-port`), so the commands reach a node started without flags.
pub use crate::node::constants::BASE_PORT_DEFAULT;

/// Exit codes of the client commands. See the module docs.
pub mod exit {
    /// Done.
    pub const OK: i32 = 0;
    /// `get` found no value; a compare-and-set's revision did not hold.
    pub const NO: i32 = 1;
    /// Bad usage or an invalid request; nothing was sent (clap uses 2 for usage errors too).
    pub const USAGE: i32 = 2;
    /// The cluster could not be reached or did not answer in time; nothing was applied.
    pub const UNREACHABLE: i32 = 3;
    /// The server refused the request or the connection; nothing was applied.
    pub const REFUSED: i32 = 4;
    /// A write may or may not have been applied.
    pub const UNKNOWN: i32 = 5;
}

/// Options every client command takes.
#[derive(Args, Debug, Clone)]
pub struct ConnectArgs {
    /// Seed addresses, `host:port,...` (any shard port of any node).
    #[arg(long, default_value_t = format!("127.0.0.1:{BASE_PORT_DEFAULT}"))]
    pub cluster: String,
    /// The cluster's name (a node of another cluster refuses the connection).
    #[arg(long, default_value = "coregrid")]
    pub cluster_name: String,
    /// Milliseconds one attempt may wait for its answer (retries come on top).
    #[arg(long, default_value_t = 5000)]
    pub timeout_ms: u64,
    /// How many replicas of the key's partition must hold a write before it is answered:
    /// the leader (one), a majority (quorum) or every replica (all).
    #[arg(long, value_enum, default_value_t = Consistency::Quorum)]
    pub consistency: Consistency,
    /// Print one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

/// A write consistency level, as the command line names it.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Consistency {
    /// The leader's WAL holds it durably.
    One,
    /// A majority of the partition's replicas hold it durably.
    Quorum,
    /// Every replica of the partition holds it durably.
    All,
}

impl Consistency {
    /// The wire's level.
    pub fn level(self) -> WriteConsistency {
        match self {
            Consistency::One => WriteConsistency::One,
            Consistency::Quorum => WriteConsistency::Quorum,
            Consistency::All => WriteConsistency::All,
        }
    }
}

/// Options of the commands that address keys.
#[derive(Args, Debug, Clone)]
pub struct KeyArgs {
    /// The collection.
    #[arg(long, default_value = "default")]
    pub collection: String,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// The client commands, flattened into `coregrid`'s subcommands.
#[derive(Subcommand, Debug)]
pub enum ClientCommand {
    /// Set a key's value. Prints the write's revision.
    Put {
        /// The key (UTF-8).
        key: String,
        /// The value (UTF-8).
        value: String,
        #[command(flatten)]
        args: KeyArgs,
    },
    /// Print a key's value. Exit 1 if the key is absent.
    Get {
        /// The key (UTF-8).
        key: String,
        #[command(flatten)]
        args: KeyArgs,
    },
    /// Remove a key (an absent key is not an error: prints "absent").
    Del {
        /// The key (UTF-8).
        key: String,
        #[command(flatten)]
        args: KeyArgs,
    },
    /// Compare-and-set: write (or with --delete remove) a key only if its revision is
    /// <EXPECTED_REVISION> (0: the key must be absent). Exit 1 on a mismatch.
    Cas {
        /// The key (UTF-8).
        key: String,
        /// The revision the key must have (0: absent).
        expected_revision: u64,
        /// The new value (UTF-8); required unless --delete.
        value: Option<String>,
        /// Remove the key instead of writing a value.
        #[arg(long, conflicts_with = "value")]
        delete: bool,
        #[command(flatten)]
        args: KeyArgs,
    },
    /// Show the topology (node, epoch, partitions, each shard's port) and whether each shard
    /// answers, then the control plane as the node sees it: term, role, controller, the
    /// epoch of the leadership map its shards hold, the members (state, suspected, voter,
    /// gossip and data addresses) and each partition's leader and replicas. Exit 3 if any shard does not
    /// answer; a node that cannot tell its cluster status (an older build) still shows its
    /// shards, with the cluster part marked unavailable. With --json, `epoch` is the cluster
    /// status's (asked last, so the freshest) when there is one.
    Status {
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Create a collection (named key space).
    CreateCollection {
        /// Its name.
        name: String,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Drop a collection and every key in it.
    DropCollection {
        /// Its name.
        name: String,
        #[command(flatten)]
        connect: ConnectArgs,
    },
}

/// What a command ends with: its exit code and the JSON it prints.
struct Finished {
    code: i32,
    json: Json,
    /// Text for stdout (without --json).
    text: Option<Vec<u8>>,
}

impl Finished {
    fn ok(json: Json, text: impl Into<Vec<u8>>) -> Finished {
        Finished {
            code: exit::OK,
            json,
            text: Some(text.into()),
        }
    }
}

/// A failure: exit code and message.
struct Failed {
    code: i32,
    message: String,
    json: Json,
}

impl Failed {
    fn usage(message: String) -> Failed {
        Failed {
            code: exit::USAGE,
            json: json!({ "ok": false, "error": message, "exit_code": exit::USAGE }),
            message,
        }
    }
}

impl From<ClientError> for Failed {
    fn from(error: ClientError) -> Failed {
        let code = exit_code(&error);
        let mut message = error.to_string();
        if let ClientError::CollectionNotFound { name } = &error {
            message.push_str(&format!(
                " (create it with `coregrid create-collection {name}`)"
            ));
        }
        Failed {
            code,
            json: json!({
                "ok": false,
                "error": message,
                "exit_code": code,
                "may_have_applied": error.may_have_applied(),
            }),
            message,
        }
    }
}

/// The exit code for a client error.
pub fn exit_code(error: &ClientError) -> i32 {
    match error {
        ClientError::Config(_) | ClientError::Invalid(_) => exit::USAGE,
        ClientError::Connect { .. }
        | ClientError::ConnectionLost { .. }
        | ClientError::Timeout { .. }
        | ClientError::Unavailable { .. }
        | ClientError::NotEnoughReplicas { .. }
        | ClientError::TooManyRedirects { .. } => exit::UNREACHABLE,
        ClientError::CasMismatch { .. } => exit::NO,
        ClientError::OutcomeUnknown { .. } => exit::UNKNOWN,
        _ => exit::REFUSED,
    }
}

fn connect(args: &ConnectArgs) -> Result<BlockingClient, Failed> {
    let seeds = ClientConfig::parse_seeds(&args.cluster)
        .map_err(|error| Failed::usage(format!("--cluster: {error}")))?;
    let cluster_id = ClusterId::from_name(&args.cluster_name)
        .map_err(|reason| Failed::usage(format!("--cluster-name: {reason}")))?;
    if args.timeout_ms == 0 {
        return Err(Failed::usage("--timeout-ms must be at least 1".into()));
    }
    let mut config = ClientConfig::new(seeds, cluster_id);
    config.request_timeout = Duration::from_millis(args.timeout_ms);
    config.connect_timeout = config.connect_timeout.min(config.request_timeout);
    config.write_consistency = args.consistency.level();
    BlockingClient::new(config).map_err(|error| Failed::usage(error.to_string()))
}

/// Shows bytes as text when they are UTF-8, else as hex.
fn bytes_json(name: &str, bytes: &[u8]) -> (String, Json) {
    match std::str::from_utf8(bytes) {
        Ok(text) => (name.to_string(), Json::from(text)),
        Err(_) => (
            format!("{name}_hex"),
            Json::from(
                bytes
                    .iter()
                    .map(|byte| format!("{byte:02x}"))
                    .collect::<String>(),
            ),
        ),
    }
}

/// Runs a client command; returns the process's exit code.
pub fn run(command: ClientCommand) -> i32 {
    let (name, json_output) = match &command {
        ClientCommand::Put { args, .. } => ("put", args.connect.json),
        ClientCommand::Get { args, .. } => ("get", args.connect.json),
        ClientCommand::Del { args, .. } => ("del", args.connect.json),
        ClientCommand::Cas { args, .. } => ("cas", args.connect.json),
        ClientCommand::Status { connect } => ("status", connect.json),
        ClientCommand::CreateCollection { connect, .. } => ("create-collection", connect.json),
        ClientCommand::DropCollection { connect, .. } => ("drop-collection", connect.json),
    };
    let result = execute(command);
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let printed = match &result {
        Ok(finished) => {
            if json_output {
                writeln!(out, "{}", finished.json)
            } else if let Some(text) = &finished.text {
                out.write_all(text)
            } else {
                Ok(())
            }
        }
        Err(failed) => {
            eprintln!("coregrid {name}: {}", failed.message);
            if json_output {
                writeln!(out, "{}", failed.json)
            } else {
                Ok(())
            }
        }
    };
    let flushed = printed.and_then(|()| out.flush());
    match (result, flushed) {
        // stdout closed (a pipe to `head`): the command's own outcome still decides.
        (Ok(finished), _) => finished.code,
        (Err(failed), _) => failed.code,
    }
}

fn execute(command: ClientCommand) -> Result<Finished, Failed> {
    match command {
        ClientCommand::Put { key, value, args } => {
            let mut client = connect(&args.connect)?;
            let written = client.put(&args.collection, key.as_bytes(), value.as_bytes())?;
            Ok(Finished::ok(
                json!({ "ok": true, "revision": written.revision.get(), "hlc": written.hlc }),
                format!("revision {}\n", written.revision),
            ))
        }
        ClientCommand::Get { key, args } => {
            let mut client = connect(&args.connect)?;
            match client.get(&args.collection, key.as_bytes())? {
                Some(Value {
                    value,
                    revision,
                    hlc,
                }) => {
                    let mut json = json!({
                        "ok": true, "found": true, "revision": revision.get(), "hlc": hlc,
                    });
                    let (field, shown) = bytes_json("value", &value);
                    json[field] = shown;
                    let mut text = value;
                    text.push(b'\n');
                    Ok(Finished::ok(json, text))
                }
                None => Ok(Finished {
                    code: exit::NO,
                    json: json!({ "ok": true, "found": false }),
                    text: None,
                }),
            }
        }
        ClientCommand::Del { key, args } => {
            let mut client = connect(&args.connect)?;
            Ok(match client.delete(&args.collection, key.as_bytes())? {
                DeleteResponse::Deleted {
                    previous_revision,
                    revision,
                    hlc,
                } => Finished::ok(
                    json!({
                        "ok": true, "deleted": true, "revision": revision.get(),
                        "previous_revision": previous_revision.get(), "hlc": hlc,
                    }),
                    format!("deleted revision {previous_revision} at revision {revision}\n"),
                ),
                DeleteResponse::Absent => {
                    Finished::ok(json!({ "ok": true, "deleted": false }), "absent\n")
                }
            })
        }
        ClientCommand::Cas {
            key,
            expected_revision,
            value,
            delete,
            args,
        } => {
            if value.is_none() && !delete {
                return Err(Failed::usage(
                    "a value is required (or --delete to remove the key)".into(),
                ));
            }
            let mut client = connect(&args.connect)?;
            let value = value.as_ref().map(String::as_bytes);
            match client.compare_and_set(
                &args.collection,
                key.as_bytes(),
                Lsn(expected_revision),
                value,
            ) {
                Ok(written) => Ok(Finished::ok(
                    json!({ "ok": true, "revision": written.revision.get(), "hlc": written.hlc }),
                    format!("revision {}\n", written.revision),
                )),
                Err(ClientError::CasMismatch { current_revision }) => {
                    let message = format!(
                        "compare-and-set mismatch: expected revision {expected_revision}, the key's is {current_revision}"
                    );
                    Err(Failed {
                        code: exit::NO,
                        json: json!({
                            "ok": false, "mismatch": true,
                            "current_revision": current_revision.get(),
                            "error": message, "exit_code": exit::NO,
                        }),
                        message,
                    })
                }
                Err(error) => Err(error.into()),
            }
        }
        ClientCommand::CreateCollection {
            name,
            connect: args,
        } => {
            let mut client = connect(&args)?;
            client.create_collection(&name)?;
            Ok(Finished::ok(
                json!({ "ok": true, "created": name }),
                format!("created collection {name}\n"),
            ))
        }
        ClientCommand::DropCollection {
            name,
            connect: args,
        } => {
            let mut client = connect(&args)?;
            client.drop_collection(&name)?;
            Ok(Finished::ok(
                json!({ "ok": true, "dropped": name }),
                format!("dropped collection {name}\n"),
            ))
        }
        ClientCommand::Status { connect: args } => status(&args),
    }
}

fn status(args: &ConnectArgs) -> Result<Finished, Failed> {
    let mut client = connect(args)?;
    let topology = client.refresh_topology()?;
    let mut shards = Vec::new();
    let mut text = format!(
        "node {}  epoch {}  partitions {}  (asked {})\n{:<6} {:<22} {:>10}  {:<9} {}\n",
        topology.response.node,
        topology.response.epoch,
        topology.response.partition_count,
        topology.address,
        "shard",
        "address",
        "partitions",
        "reachable",
        "round trip"
    );
    let mut unreachable = 0;
    for (shard, address, partitions) in topology.shards() {
        let probe = client.probe(address, Some(shard));
        let (reachable, detail, round_trip_us) = match &probe {
            Ok((accepted, _, took)) if accepted.shard == shard => (
                true,
                format!("{:.1} ms", took.as_secs_f64() * 1000.0),
                Some(took.as_micros()),
            ),
            Ok((accepted, _, _)) => (false, format!("answered as shard {}", accepted.shard), None),
            Err(error) => (false, error.to_string(), None),
        };
        if !reachable {
            unreachable += 1;
        }
        text.push_str(&format!(
            "{:<6} {:<22} {:>10}  {:<9} {}\n",
            shard.get(),
            address.to_string(),
            partitions,
            if reachable { "yes" } else { "NO" },
            detail
        ));
        shards.push(json!({
            "shard": shard.get(),
            "address": address.to_string(),
            "partitions": partitions,
            "reachable": reachable,
            "round_trip_us": round_trip_us,
            "error": if reachable { Json::Null } else { Json::from(detail) },
        }));
    }
    let mut json = json!({
        "ok": unreachable == 0,
        "node": topology.response.node.get(),
        "epoch": topology.response.epoch.get(),
        "partition_count": topology.response.partition_count,
        "asked": topology.address.to_string(),
        "shards": shards,
    });
    // The same seed that answered the topology, unless it stopped answering meanwhile.
    let cluster = client.cluster_status();
    text.push('\n');
    text.push_str(&cluster_status_text(&cluster));
    add_cluster_status_json(&mut json, &cluster);
    Ok(Finished {
        code: if unreachable == 0 {
            exit::OK
        } else {
            exit::UNREACHABLE
        },
        json,
        text: Some(text.into_bytes()),
    })
}

/// Up to this many partitions, `status` prints one line per partition; above it, runs of
/// consecutive partitions with the same leader and replicas share a line.
pub const STATUS_PARTITION_LINES_MAX: usize = 64;

fn yes_no(flag: bool) -> &'static str {
    if flag {
        "yes"
    } else {
        "no"
    }
}

fn node_text(node: Option<NodeId>) -> String {
    node.map_or_else(|| "none".to_string(), |node| node.to_string())
}

fn replicas_text(partition: &PartitionStatus) -> String {
    if partition.replicas.is_empty() {
        return "none".into();
    }
    partition
        .replicas
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// The cluster part of `status` for people: the answering node's control-plane view, or why
/// there is none.
fn cluster_status_text(cluster: &Result<ClusterStatusResponse, ClientError>) -> String {
    let status = match cluster {
        Ok(status) => status,
        Err(error) => return format!("cluster status unavailable: {error}\n"),
    };
    let mut text = format!(
        "cluster, as node {} sees it\nterm {}  role {}  controller {}  epoch {}  lease {}\n",
        status.node,
        status.term,
        status.role,
        node_text(status.controller),
        if status.epoch.get() == 0 {
            "none (no leadership map yet)".to_string()
        } else {
            status.epoch.to_string()
        },
        if status.lease {
            "held"
        } else {
            "not held (the partitions this node leads refuse writes)"
        },
    );
    text.push_str(&format!(
        "\nmembers {}\n{:<20} {:<15} {:<9} {:<5} {:<24} {}\n",
        status.members.len(),
        "node",
        "state",
        "suspected",
        "voter",
        "gossip address",
        "data address"
    ));
    for member in &status.members {
        text.push_str(&format!(
            "{:<20} {:<15} {:<9} {:<5} {:<24} {}\n",
            member.node.to_string(),
            member.state.to_string(),
            yes_no(member.suspected),
            yes_no(member.voter),
            known(&member.gossip_address),
            known(&member.data_address),
        ));
    }
    text.push_str(&format!("\npartitions {}", status.partitions.len()));
    if status.partitions.is_empty() {
        text.push_str(" (no leadership map yet)\n");
        return text;
    }
    // Leadership balance first: what an operator checks after a restart (section 4's
    // preferred-leader rebalancing should spread it again).
    let mut leaders = std::collections::BTreeMap::<Option<NodeId>, usize>::new();
    for partition in &status.partitions {
        *leaders.entry(partition.leader).or_default() += 1;
    }
    let balance = leaders
        .iter()
        .map(|(leader, count)| format!("{} {count}", node_text(*leader)))
        .collect::<Vec<_>>()
        .join(", ");
    text.push_str(&format!(
        "  (led by node: {balance})\n{:<13} {:<20} {}\n",
        "partition", "leader", "replicas"
    ));
    let compact = status.partitions.len() > STATUS_PARTITION_LINES_MAX;
    let mut index = 0;
    while index < status.partitions.len() {
        let partition = &status.partitions[index];
        let mut end = index + 1;
        if compact {
            while end < status.partitions.len() && status.partitions[end] == *partition {
                end += 1;
            }
        }
        let range = if end - index == 1 {
            index.to_string()
        } else {
            format!("{index}-{}", end - 1)
        };
        text.push_str(&format!(
            "{:<13} {:<20} {}\n",
            range,
            node_text(partition.leader),
            replicas_text(partition)
        ));
        index = end;
    }
    text
}

/// An address as `status` shows it: `unknown` when empty.
fn known(address: &str) -> &str {
    if address.is_empty() {
        "unknown"
    } else {
        address
    }
}

/// The cluster part of `status --json`: `term`, `role`, `controller`, `epoch`, `members` and
/// `partitions` at the top level (null when unavailable; `epoch` then stays the topology's),
/// and `cluster_status: {available, node, error}`.
fn add_cluster_status_json(json: &mut Json, cluster: &Result<ClusterStatusResponse, ClientError>) {
    match cluster {
        Ok(status) => {
            json["cluster_status"] =
                json!({ "available": true, "node": status.node.get(), "error": Json::Null });
            json["term"] = json!(status.term.get());
            json["role"] = json!(status.role.to_string());
            json["controller"] = json!(status.controller.map(NodeId::get));
            json["epoch"] = json!(status.epoch.get());
            json["lease"] = json!(status.lease);
            json["members"] = status
                .members
                .iter()
                .map(|member| {
                    json!({
                        "node": member.node.get(),
                        "state": member.state.to_string(),
                        "suspected": member.suspected,
                        "voter": member.voter,
                        "gossip_address": member.gossip_address,
                        "data_address": member.data_address,
                    })
                })
                .collect();
            json["partitions"] = status
                .partitions
                .iter()
                .enumerate()
                .map(|(index, partition)| {
                    json!({
                        "partition": index,
                        "leader": partition.leader.map(NodeId::get),
                        "replicas": partition.replicas.iter().map(|node| node.get()).collect::<Vec<_>>(),
                    })
                })
                .collect();
        }
        Err(error) => {
            json["cluster_status"] =
                json!({ "available": false, "node": Json::Null, "error": error.to_string() });
            for field in [
                "term",
                "role",
                "controller",
                "lease",
                "members",
                "partitions",
            ] {
                json[field] = Json::Null;
            }
        }
    }
}

/// Clients of a network bench by default.
pub const BENCH_CLIENTS_DEFAULT: usize = 16;

/// `coregrid bench --cluster ...`: the embedded bench's workload and report, over the network.
pub fn bench_network(args: &crate::BenchArgs) -> anyhow::Result<()> {
    use anyhow::Context;
    use coregrid_bench::network::{run_network, NetworkOptions, NetworkReport};
    let cluster = args.cluster.as_deref().unwrap_or_default();
    let seeds = ClientConfig::parse_seeds(cluster).context("--cluster")?;
    let cluster_id = ClusterId::from_name(&args.cluster_name)
        .map_err(|reason| anyhow::anyhow!("--cluster-name: {reason}"))?;
    if args.memory_keys.is_some() || args.recovery || args.dir.is_some() {
        anyhow::bail!("--memory-keys, --recovery and --dir need an embedded engine, not --cluster");
    }
    let workload = args.workload();
    let options = NetworkOptions {
        seeds,
        cluster_id,
        clients: args.clients.unwrap_or(BENCH_CLIENTS_DEFAULT),
        threads: args.threads,
        request_timeout: Duration::from_secs(30),
        write_consistency: args.consistency.level(),
    };
    if !args.quiet {
        let what = workload.length_text();
        eprintln!(
            "bench: {what} over the network to {cluster}, {} client(s) on {} thread(s), {}-byte values, read ratio {}, {} keys",
            options.clients, options.threads, workload.value_bytes, workload.read_ratio, workload.key_space
        );
    }
    let quiet = args.quiet;
    let (report, network) = run_network(&workload, &options, |progress| {
        if !quiet {
            eprintln!(
                "  {:>5.1} s  {:>12} ops  {:>10.0} ops/s",
                progress.elapsed_secs, progress.ops, progress.interval_ops_per_sec
            );
        }
    })?;

    #[derive(serde::Serialize)]
    struct NetworkBenchOutput {
        #[serde(flatten)]
        bench: crate::BenchOutput,
        network: NetworkReport,
    }
    let output = NetworkBenchOutput {
        bench: crate::BenchOutput {
            config: report.workload.clone(),
            data_dir: None,
            run: Some(report),
            recovery: None,
            memory: None,
        },
        network,
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if args.json {
        serde_json::to_writer(&mut out, &output)?;
        writeln!(out)?;
    } else {
        crate::print_table(&mut out, &output.bench)?;
        let network = &output.network;
        writeln!(out, "network")?;
        writeln!(out, "  {:<28} {}", "cluster", network.cluster.join(","))?;
        writeln!(
            out,
            "  {:<28} {} on {} thread(s)",
            "clients", network.clients, network.threads
        )?;
        writeln!(
            out,
            "  {:<28} node {}, {} shard(s), {} partitions",
            "topology", network.node, network.node_shards, network.partitions
        )?;
        writeln!(
            out,
            "  {:<28} not visible over the network (zeros above)",
            "group commit"
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use coregrid_net::message::{ControlRole, ErrorResponse, MemberState, MemberStatus};
    use coregrid_net::{Epoch, Term};

    fn status(partitions: usize) -> ClusterStatusResponse {
        let member = |node: u64, state, suspected, gossip_address: &str| MemberStatus {
            node: NodeId(node),
            state,
            suspected,
            voter: node != 4,
            gossip_address: gossip_address.into(),
            data_address: if gossip_address.is_empty() {
                String::new()
            } else {
                gossip_address.replace(":7946", ":7400")
            },
        };
        ClusterStatusResponse {
            node: NodeId(2),
            term: Term(7),
            role: ControlRole::Follower,
            controller: Some(NodeId(1)),
            epoch: Epoch(12),
            lease: true,
            members: vec![
                member(1, MemberState::Joined, false, "10.0.0.1:7946"),
                member(2, MemberState::JoinedSyncing, false, "10.0.0.2:7946"),
                member(3, MemberState::Dead, true, "[::1]:7946"),
                member(4, MemberState::Joining, false, ""),
            ],
            // Three nodes, leaders p % 3 + 1 over the first half, the second half all led by
            // node 1 (a restart piled leadership on it), the last one leaderless.
            partitions: (0..partitions)
                .map(|partition| {
                    let leader = if partition + 1 == partitions {
                        None
                    } else if partition < partitions / 2 {
                        Some(NodeId(partition as u64 % 3 + 1))
                    } else {
                        Some(NodeId(1))
                    };
                    PartitionStatus {
                        leader,
                        replicas: vec![NodeId(1), NodeId(2), NodeId(3)],
                    }
                })
                .collect(),
        }
    }

    #[test]
    fn the_cluster_part_shows_the_view_members_and_each_partition() {
        let text = cluster_status_text(&Ok(status(6)));
        assert!(text.starts_with("cluster, as node 2 sees it\n"), "{text}");
        assert!(
            text.contains("term 7  role follower  controller 1  epoch 12  lease held\n"),
            "{text}"
        );
        assert!(text.contains("members 4\n"), "{text}");
        let member_lines: Vec<&str> = text
            .lines()
            .filter(|line| line.contains("7946") || line.contains("unknown"))
            .collect();
        assert_eq!(member_lines.len(), 4, "{text}");
        assert!(member_lines[1].contains("joined-syncing"), "{text}");
        assert!(
            member_lines[2].contains("dead") && member_lines[2].contains("yes"),
            "{text}"
        );
        assert!(
            member_lines[3].contains("joining") && member_lines[3].ends_with("unknown"),
            "{text}"
        );
        assert!(
            text.contains("partitions 6  (led by node: none 1, 1 3, 2 1, 3 1)\n"),
            "{text}"
        );
        // Few partitions: one line each, leaderless shown as such.
        let partition_lines: Vec<&str> = text
            .lines()
            .filter(|line| line.ends_with("1,2,3"))
            .collect();
        assert_eq!(partition_lines.len(), 6, "{text}");
        assert!(
            partition_lines[5].starts_with("5 ") && partition_lines[5].contains("none"),
            "{text}"
        );
    }

    #[test]
    fn many_partitions_share_lines_by_run() {
        let text = cluster_status_text(&Ok(status(1000)));
        let partition_lines: Vec<&str> = text
            .lines()
            .filter(|line| line.ends_with("1,2,3"))
            .collect();
        // 500 alternating leaders, one run of 499 led by node 1, one leaderless.
        assert_eq!(partition_lines.len(), 502, "{text}");
        assert!(
            partition_lines[500].starts_with("500-998 "),
            "{}",
            partition_lines[500]
        );
        assert!(
            partition_lines[501].starts_with("999 "),
            "{}",
            partition_lines[501]
        );
        assert!(
            text.contains("(led by node: none 1, 1 666, 2 167, 3 166)"),
            "{text}"
        );
    }

    #[test]
    fn before_the_first_map_there_are_no_partitions() {
        let mut empty = status(0);
        empty.epoch = Epoch(0);
        empty.role = ControlRole::Candidate;
        empty.controller = None;
        let text = cluster_status_text(&Ok(empty.clone()));
        assert!(
            text.contains("role candidate  controller none  epoch none"),
            "{text}"
        );
        assert!(
            text.ends_with("partitions 0 (no leadership map yet)\n"),
            "{text}"
        );
        let mut json = json!({ "epoch": 3 });
        add_cluster_status_json(&mut json, &Ok(empty));
        assert_eq!(json["epoch"], 0);
        assert_eq!(json["controller"], Json::Null);
        assert_eq!(json["partitions"], json!([]));
    }

    #[test]
    fn json_has_the_same_fields() {
        let mut json = json!({ "ok": true, "epoch": 11, "node": 2 });
        add_cluster_status_json(&mut json, &Ok(status(3)));
        assert_eq!(json["cluster_status"]["available"], true);
        assert_eq!(json["cluster_status"]["node"], 2);
        assert_eq!(json["term"], 7);
        assert_eq!(json["role"], "follower");
        assert_eq!(json["controller"], 1);
        assert_eq!(json["lease"], true);
        assert_eq!(json["epoch"], 12, "the cluster status's epoch, asked last");
        assert_eq!(json["members"].as_array().unwrap().len(), 4);
        assert_eq!(
            json["members"][1],
            json!({
                "node": 2, "state": "joined-syncing", "suspected": false, "voter": true,
                "gossip_address": "10.0.0.2:7946", "data_address": "10.0.0.2:7400",
            })
        );
        assert_eq!(
            json["partitions"],
            json!([
                { "partition": 0, "leader": 1, "replicas": [1, 2, 3] },
                { "partition": 1, "leader": 1, "replicas": [1, 2, 3] },
                { "partition": 2, "leader": null, "replicas": [1, 2, 3] },
            ])
        );
    }

    #[test]
    fn a_node_without_cluster_status_still_gets_a_status() {
        let refused = Err(ClientError::Rejected(ErrorResponse::invalid_request(
            "ClusterStatus (0x0109) is not a request a client may send on an open connection",
        )));
        let text = cluster_status_text(&refused);
        assert!(
            text.starts_with("cluster status unavailable: request refused by the server"),
            "{text}"
        );
        let mut json = json!({ "ok": true, "epoch": 11 });
        add_cluster_status_json(&mut json, &refused);
        assert_eq!(json["ok"], true, "the shards decide ok and the exit code");
        assert_eq!(json["epoch"], 11, "the topology's epoch stays");
        assert_eq!(json["cluster_status"]["available"], false);
        assert!(json["cluster_status"]["error"]
            .as_str()
            .unwrap()
            .contains("0x0109"));
        for field in [
            "term",
            "role",
            "controller",
            "lease",
            "members",
            "partitions",
        ] {
            assert_eq!(json[field], Json::Null, "{field}");
        }
    }
}
