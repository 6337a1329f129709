//! The network load generator: the same [`Workload`] as the embedded benchmark, driven over TCP
//! against running nodes through the native client ([`coregrid_net::client::AsyncClient`]),
//! reported in the same [`RunReport`] shape.
//!
//! Model: `threads` client threads, each running one glommio executor (not pinned: the node
//! runs on the same cores). `clients` independent clients are spread over the threads; each is
//! its own [`AsyncClient`] (own client id, own connection to every shard) and keeps one request
//! in flight at a time (a closed loop: the next request leaves when the previous answer is in),
//! so `clients` is the number of requests in flight in the whole run. Latency is measured per
//! request from the call to the answer, retries included, into one hdrhistogram per thread;
//! progress crosses threads as one relaxed counter per thread, sampled once a second by the
//! caller's thread.
//!
//! A write counts when its answer arrives, i.e. after the node's `fdatasync` covered it (the
//! node answers nothing earlier). What the network bench cannot see: the node's group-commit
//! counters (`group_commit` is reported as zeros) and its data directory.

use crate::{
    key_for, merge_outcomes, new_histogram, BenchError, GroupCommit, JobOutcome, LatencyUs,
    Progress, Result, RunReport, Workload, FILL_BATCHES_IN_FLIGHT, LATENCY_US_MAX,
};
use coregrid_net::client::{rt, AsyncClient, ClientConfig, ClientError};
use coregrid_net::message::WriteConsistency;
use coregrid_net::ClusterId;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

/// Most client threads.
pub const THREADS_MAX: usize = 64;

/// Most clients (each holds a connection per shard).
pub const CLIENTS_MAX: usize = 4096;

/// Memory each client thread's executor registers with io_uring, in bytes (sockets need little).
pub const CLIENT_IO_MEMORY_BYTES: usize = 512 * 1024;

/// How often each client executor wakes even when idle (design.md section 10: an executor can
/// park with runnable work until another event arrives).
pub const TICK_INTERVAL: Duration = Duration::from_millis(50);

/// Where and how the network bench connects.
#[derive(Clone, Debug)]
pub struct NetworkOptions {
    /// Seed addresses of the cluster.
    pub seeds: Vec<SocketAddr>,
    /// The cluster's id (from its name).
    pub cluster_id: ClusterId,
    /// Independent clients, one request in flight each.
    pub clients: usize,
    /// Client threads (glommio executors).
    pub threads: usize,
    /// How long one attempt may wait for its answer.
    pub request_timeout: Duration,
    /// How many replicas must hold each write before it is answered.
    pub write_consistency: WriteConsistency,
}

/// What the network bench adds to the report.
#[derive(Clone, Debug, Serialize)]
pub struct NetworkReport {
    /// The seeds asked.
    pub cluster: Vec<String>,
    /// Clients (requests in flight).
    pub clients: usize,
    /// Client threads.
    pub threads: usize,
    /// The write consistency level: `one`, `quorum` or `all`.
    pub write_consistency: &'static str,
    /// The node that answered the topology request.
    pub node: u64,
    /// Shards of that node.
    pub node_shards: usize,
    /// Partitions of the cluster.
    pub partitions: u32,
}

impl NetworkOptions {
    fn validate(&self) -> Result<()> {
        if self.seeds.is_empty() {
            return Err(BenchError::Config("no cluster address".into()));
        }
        if self.clients == 0 || self.clients > CLIENTS_MAX {
            return Err(BenchError::Config(format!(
                "clients must be 1..={CLIENTS_MAX}, got {}",
                self.clients
            )));
        }
        if self.threads == 0 || self.threads > THREADS_MAX || self.threads > self.clients {
            return Err(BenchError::Config(format!(
                "threads must be 1..={THREADS_MAX} and at most the clients, got {}",
                self.threads
            )));
        }
        Ok(())
    }

    fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new(self.seeds.clone(), self.cluster_id);
        config.request_timeout = self.request_timeout;
        config.write_consistency = self.write_consistency;
        config
    }
}

fn client_error(error: ClientError) -> BenchError {
    BenchError::Operations {
        failed: 1,
        first: error.to_string(),
    }
}

/// Runs `workload` against the cluster: creates its collection if missing, fills the key space
/// if asked (untimed, pipelined), then the timed closed-loop run. Calls `progress` about once a
/// second from the calling thread.
pub fn run_network(
    workload: &Workload,
    options: &NetworkOptions,
    mut progress: impl FnMut(Progress),
) -> Result<(RunReport, NetworkReport)> {
    workload.validate()?;
    options.validate()?;
    if workload.warmup_secs > 0.0 {
        return Err(BenchError::Config(
            "a warm-up applies to embedded runs, not over the network".into(),
        ));
    }
    // Topology and collection, from a short-lived executor on this thread.
    let config = options.client_config();
    let collection = workload.collection.clone();
    let topology = rt::block_on(CLIENT_IO_MEMORY_BYTES, async move {
        let client = AsyncClient::new(config)?;
        let topology = client.refresh_topology().await?;
        match client.create_collection(&collection).await {
            Ok(_) | Err(ClientError::CollectionExists { .. }) => {}
            Err(error) => return Err(error),
        }
        Ok(topology)
    })
    .map_err(client_error)?
    .map_err(client_error)?;
    let network = NetworkReport {
        cluster: options.seeds.iter().map(ToString::to_string).collect(),
        clients: options.clients,
        threads: options.threads,
        write_consistency: match options.write_consistency {
            WriteConsistency::One => "one",
            WriteConsistency::Quorum => "quorum",
            WriteConsistency::All => "all",
        },
        node: topology.response.node.get(),
        node_shards: topology.response.shards.len(),
        partitions: topology.response.partition_count,
    };

    let fill_secs = if workload.fill.unwrap_or(workload.read_ratio > 0.0) {
        let begun = Instant::now();
        fill(workload, options)?;
        begun.elapsed().as_secs_f64()
    } else {
        0.0
    };

    let counters: Vec<Arc<AtomicU64>> = (0..options.threads)
        .map(|_| Arc::new(AtomicU64::new(0)))
        .collect();
    let start = Arc::new(Barrier::new(options.threads + 1));
    let mut handles = Vec::new();
    for (thread, done) in counters.iter().enumerate() {
        let clients = options.clients / options.threads
            + usize::from(thread < options.clients % options.threads);
        let thread_ops = workload.ops.map(|ops| {
            ops / options.threads as u64 + u64::from((thread as u64) < ops % options.threads as u64)
        });
        let (workload, config, done, start) = (
            workload.clone(),
            options.client_config(),
            done.clone(),
            start.clone(),
        );
        handles.push(
            std::thread::Builder::new()
                .name(format!("coregrid-bench-client-{thread}"))
                .spawn(move || {
                    let outcome = rt::block_on(
                        CLIENT_IO_MEMORY_BYTES,
                        client_thread(thread, clients, thread_ops, workload, config, done, &start),
                    );
                    // An executor that could not start never reached the start line.
                    if outcome.is_err() {
                        start.wait();
                    }
                    outcome.and_then(|outcome| outcome)
                })?,
        );
    }
    start.wait();
    let started = Instant::now();
    let mut last = (0u64, Instant::now());
    while handles.iter().any(|handle| !handle.is_finished()) {
        std::thread::sleep(Duration::from_millis(50));
        if last.1.elapsed() >= Duration::from_secs(1) {
            let ops: u64 = counters
                .iter()
                .map(|counter| counter.load(Ordering::Relaxed))
                .sum();
            let now = Instant::now();
            progress(Progress {
                elapsed_secs: started.elapsed().as_secs_f64(),
                ops,
                interval_ops_per_sec: (ops - last.0) as f64
                    / now.duration_since(last.1).as_secs_f64().max(1e-9),
            });
            last = (ops, now);
        }
    }
    let mut outcomes = Vec::with_capacity(handles.len());
    for handle in handles {
        outcomes.push(
            handle
                .join()
                .map_err(|_| BenchError::Config("a client thread panicked".into()))?
                .map_err(client_error)?,
        );
    }
    let merged = merge_outcomes(outcomes)?;
    let (elapsed_secs, writes, reads) = (merged.elapsed_secs, merged.writes(), merged.reads());
    let ops = writes + reads;
    let bytes_written = writes * workload.value_bytes as u64;
    let wal_bytes_written = writes * workload.record_bytes_per_put() as u64;
    let mib = |bytes: u64| bytes as f64 / elapsed_secs / (1024.0 * 1024.0);
    let mut reported = workload.clone();
    reported.concurrency = options.clients;
    reported.shards = network.node_shards;
    reported.partitions = network.partitions;
    let report = RunReport {
        workload: reported,
        shards: network.node_shards,
        ops,
        writes,
        reads,
        elapsed_secs,
        ops_per_sec: ops as f64 / elapsed_secs,
        bytes_written,
        mib_per_sec: mib(bytes_written),
        wal_bytes_written,
        wal_mib_per_sec: mib(wal_bytes_written),
        latency_us: LatencyUs::from_histogram(&merged.latency_all),
        write_latency_us: LatencyUs::from_histogram(&merged.latency_writes),
        read_latency_us: LatencyUs::from_histogram(&merged.latency_reads),
        group_commit: GroupCommit::default(),
        fill_secs,
    };
    Ok((report, network))
}

/// Writes every key once, untimed: one client, [`FILL_BATCHES_IN_FLIGHT`] x 8 puts in flight
/// on its pipelined connections.
fn fill(workload: &Workload, options: &NetworkOptions) -> Result<()> {
    let (config, collection, key_space, value_bytes) = (
        options.client_config(),
        workload.collection.clone(),
        workload.key_space,
        workload.value_bytes,
    );
    rt::block_on(CLIENT_IO_MEMORY_BYTES, async move {
        let client = AsyncClient::new(config)?;
        let next = Rc::new(Cell::new(0u64));
        let value: Rc<[u8]> = vec![b'f'; value_bytes].into();
        let collection: Rc<str> = collection.into();
        let tasks: Vec<_> = (0..FILL_BATCHES_IN_FLIGHT * 8)
            .map(|_| {
                let (client, next, value, collection) = (
                    client.clone(),
                    next.clone(),
                    value.clone(),
                    collection.clone(),
                );
                rt::spawn(async move {
                    loop {
                        let n = next.get();
                        if n >= key_space {
                            return Ok::<(), ClientError>(());
                        }
                        next.set(n + 1);
                        client.put(&collection, &key_for(n), &value).await?;
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await?;
        }
        Ok(())
    })
    .map_err(client_error)?
    .map_err(client_error)
}

async fn client_thread(
    thread: usize,
    clients: usize,
    thread_ops: Option<u64>,
    workload: Workload,
    config: ClientConfig,
    done: Arc<AtomicU64>,
    start: &Barrier,
) -> std::result::Result<JobOutcome, ClientError> {
    let finished = Rc::new(AtomicBool::new(false));
    let ticker = {
        let finished = finished.clone();
        rt::spawn(async move {
            while !finished.load(Ordering::Relaxed) {
                rt::sleep(TICK_INTERVAL).await;
            }
        })
    };
    // Every client learns the topology before the clock starts.
    let mut handles = Vec::with_capacity(clients);
    let mut setup = Ok(());
    for _ in 0..clients {
        let client = match AsyncClient::new(config.clone()) {
            Ok(client) => client,
            Err(error) => {
                setup = Err(error);
                break;
            }
        };
        if let Err(error) = client.refresh_topology().await {
            setup = Err(error);
            break;
        }
        handles.push(client);
    }
    // Blocks this executor's thread until every thread is ready (nothing else runs here yet);
    // reached exactly once on every path, so no thread waits for one that gave up.
    start.wait();
    if let Err(error) = setup {
        finished.store(true, Ordering::Relaxed);
        ticker.await;
        return Err(error);
    }
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(workload.duration_secs);
    let remaining = Rc::new(Cell::new(thread_ops.unwrap_or(0)));
    let latency_writes = Rc::new(std::cell::RefCell::new(new_histogram()));
    let latency_reads = Rc::new(std::cell::RefCell::new(new_histogram()));
    let failed = Rc::new(Cell::new(0u64));
    let first_error: Rc<std::cell::RefCell<Option<String>>> = Rc::default();
    let value: Rc<[u8]> = vec![b'v'; workload.value_bytes].into();
    let collection: Rc<str> = workload.collection.as_str().into();
    let tasks: Vec<_> = handles
        .into_iter()
        .enumerate()
        .map(|(index, client)| {
            let (remaining, latency_writes, latency_reads, failed, first_error) = (
                remaining.clone(),
                latency_writes.clone(),
                latency_reads.clone(),
                failed.clone(),
                first_error.clone(),
            );
            let (value, collection, done) = (value.clone(), collection.clone(), done.clone());
            let counted = thread_ops.is_some();
            let (read_ratio, key_space) = (workload.read_ratio, workload.key_space);
            let seed = workload.seed ^ ((thread as u64) << 32) ^ index as u64;
            rt::spawn(async move {
                let mut rng = StdRng::seed_from_u64(seed);
                loop {
                    if counted {
                        if remaining.get() == 0 {
                            return;
                        }
                        remaining.set(remaining.get() - 1);
                    } else if Instant::now() >= deadline {
                        return;
                    }
                    if failed.get() > 0 {
                        return;
                    }
                    let key = key_for(rng.gen_range(0..key_space));
                    let is_read = read_ratio > 0.0 && rng.gen_bool(read_ratio);
                    let begun = Instant::now();
                    let outcome = if is_read {
                        client.get(&collection, &key).await.map(|_| ())
                    } else {
                        client.put(&collection, &key, &value).await.map(|_| ())
                    };
                    let took_ns =
                        (begun.elapsed().as_nanos() as u64).clamp(1, LATENCY_US_MAX * 1000);
                    match outcome {
                        Ok(()) => {
                            let histogram = if is_read {
                                &latency_reads
                            } else {
                                &latency_writes
                            };
                            histogram
                                .borrow_mut()
                                .record(took_ns)
                                .expect("clamped into bounds");
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(error) => {
                            failed.set(failed.get() + 1);
                            first_error
                                .borrow_mut()
                                .get_or_insert_with(|| error.to_string());
                            return;
                        }
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await;
    }
    let finished_at = Instant::now();
    finished.store(true, Ordering::Relaxed);
    ticker.await;
    let latency_writes = latency_writes.borrow().clone();
    let latency_reads = latency_reads.borrow().clone();
    let first_error = first_error.borrow_mut().take();
    Ok(JobOutcome {
        latency_writes,
        latency_reads,
        started,
        finished: finished_at,
        failed: failed.get(),
        first_error,
    })
}
