//! `coregrid`: the command line. Today it has one command, `coregrid bench`, which runs the
//! load generator (crate `coregrid-bench`) against an embedded engine; node and client commands
//! join it as further subcommands.

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use coregrid_bench::{DataDir, MemoryReport, Progress, RecoveryReport, RunReport, Workload};
use serde::Serialize;
use std::io::Write;
use std::path::PathBuf;

mod cli;
mod node;

/// coregrid: a partitioned key-value storage engine.
#[derive(Parser, Debug)]
#[command(name = "coregrid", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a node: every data shard serves clients on its own port (loopback by default).
    ///
    /// With no flags: one node on 127.0.0.1, shard i on port 7400 + i, data in
    /// ./coregrid-data. Stop it with SIGTERM or Ctrl-C (drains, syncs, exits 0).
    Node(node::config::NodeArgs),
    /// Client commands: put, get, del, cas, status, create-collection, drop-collection.
    #[command(flatten)]
    Client(cli::ClientCommand),
    /// Benchmark an embedded engine: durable writes and reads driven from inside its shards.
    ///
    /// With no flags: 10 s of durable 100-byte puts, 256 in flight per shard, one shard per
    /// core, in a fresh directory under the current one (removed afterwards).
    Bench(BenchArgs),
}

#[derive(Args, Debug)]
struct BenchArgs {
    /// Operations in flight per shard.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// Bytes of each written value [default: 100, or 8 with --memory-keys].
    #[arg(long)]
    value_bytes: Option<usize>,
    /// Fraction of operations that are reads (0.0 = all writes, 1.0 = all reads).
    #[arg(long, default_value_t = 0.0)]
    read_ratio: f64,
    /// Distinct keys (16 bytes each).
    #[arg(long, default_value_t = 100_000)]
    key_space: u64,
    /// Seconds to run (ignored with --ops).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds to run the workload first, unmeasured (embedded runs only): for steady-state
    /// figures, such as sustained writes once pruned WAL segments are being reused.
    #[arg(long, default_value_t = 0.0)]
    warmup: f64,
    /// Run exactly this many operations instead of a fixed time.
    #[arg(long)]
    ops: Option<u64>,
    /// Data shards [default: one per available core].
    #[arg(long)]
    shards: Option<usize>,
    /// Partitions (fixed when the data directory is created).
    #[arg(long, default_value_t = coregrid_engine::constants::PARTITIONS_DEFAULT)]
    partitions: u32,
    /// Collection to write to.
    #[arg(long, default_value = "bench")]
    collection: String,
    /// Write every key once before the timed run [default: on when --read-ratio > 0].
    #[arg(long)]
    fill: Option<bool>,
    /// WAL bytes between automatic snapshots (0: never) [default: the engine's; 0 with
    /// --recovery, so that recovery replays the whole WAL].
    #[arg(long)]
    snapshot_wal_bytes: Option<u64>,
    /// WAL segment file size in bytes [default: the engine's].
    #[arg(long)]
    segment_bytes: Option<u64>,
    /// Let a shard's partitions share device flushes [default: the engine's, true].
    #[arg(long)]
    shared_sync: Option<bool>,
    /// Write small rounds of a shard's partitions through one shard journal [default: the
    /// engine's, true].
    #[arg(long)]
    journal: Option<bool>,
    /// Seed of the key and operation choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Data directory [default: a fresh directory under the current one, removed afterwards].
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Keep the data directory made for this run.
    #[arg(long)]
    keep: bool,
    /// After the run, close the engine, reopen it and time recovery.
    #[arg(long)]
    recovery: bool,
    /// Memory mode: insert this many keys (in durable batches) and report resident bytes per key
    /// instead of running the timed workload.
    #[arg(long)]
    memory_keys: Option<u64>,
    /// Print one JSON object on stdout instead of a table.
    #[arg(long)]
    json: bool,
    /// No progress lines on stderr.
    #[arg(long, short)]
    quiet: bool,
    /// Drive running nodes over the network instead of an embedded engine: seed addresses,
    /// `host:port,...`. Engine options (--shards, --partitions, --dir, ...) then do not apply.
    #[arg(long)]
    cluster: Option<String>,
    /// With --cluster: the cluster's name.
    #[arg(long, default_value = "coregrid")]
    cluster_name: String,
    /// With --cluster: independent clients, one request in flight each [default: 16].
    #[arg(long)]
    clients: Option<usize>,
    /// With --cluster: client threads (glommio executors, not pinned).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// With --cluster: how many replicas must hold each write before it is answered.
    #[arg(long, value_enum, default_value_t = cli::Consistency::Quorum)]
    consistency: cli::Consistency,
}

impl BenchArgs {
    fn workload(&self) -> Workload {
        let memory = self.memory_keys.is_some();
        Workload {
            concurrency: self.concurrency,
            value_bytes: self.value_bytes.unwrap_or(if memory { 8 } else { 100 }),
            read_ratio: self.read_ratio,
            key_space: self.key_space,
            duration_secs: self.duration,
            warmup_secs: self.warmup,
            ops: self.ops,
            shards: self.shards.unwrap_or(0),
            partitions: self.partitions,
            collection: self.collection.clone(),
            fill: self.fill,
            snapshot_wal_bytes: self.snapshot_wal_bytes.or(self.recovery.then_some(0)),
            segment_bytes: self.segment_bytes,
            shared_sync: self.shared_sync,
            journal: self.journal,
            seed: self.seed,
        }
    }
}

/// Everything `--json` prints.
#[derive(Serialize)]
struct BenchOutput {
    /// The configuration used, flags resolved.
    config: Workload,
    /// Data directory (absent once removed).
    data_dir: Option<PathBuf>,
    #[serde(flatten)]
    run: Option<RunReport>,
    recovery: Option<RecoveryReport>,
    memory: Option<MemoryReport>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // A node logs its lifecycle (info); the other commands only what went wrong.
    let default_filter = match cli.command {
        Command::Node(_) => "info",
        _ => "warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter)),
        )
        .with_writer(std::io::stderr)
        // Colours only on a terminal: logs captured to a file stay plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match cli.command {
        Command::Node(args) => node::run(args),
        Command::Client(command) => std::process::exit(cli::run(command)),
        Command::Bench(args) => bench(args),
    }
}

fn bench(args: BenchArgs) -> anyhow::Result<()> {
    if args.cluster.is_some() {
        return cli::bench_network(&args);
    }
    let mut workload = args.workload();
    workload.validate()?;
    let cwd = std::env::current_dir().context("current directory")?;
    let data_dir =
        DataDir::new(args.dir.as_deref(), Some(&cwd)).context("create the data directory")?;
    let engine_config = workload.engine_config(data_dir.path());
    workload.shards = engine_config.shard_count();
    let mut output = BenchOutput {
        config: workload.clone(),
        data_dir: None,
        run: None,
        recovery: None,
        memory: None,
    };

    if let Some(keys) = args.memory_keys {
        if !args.quiet {
            eprintln!(
                "memory: inserting {keys} keys ({}-byte keys, {}-byte values) on {} shard(s) in {}",
                coregrid_bench::KEY_BYTES,
                workload.value_bytes,
                workload.shards,
                data_dir.path().display()
            );
        }
        let report =
            coregrid_bench::measure_memory(&workload, data_dir.path(), keys, args.recovery)?;
        output.memory = Some(report);
    } else {
        if !args.quiet {
            let what = workload.length_text();
            eprintln!(
                "bench: {what}, {} shard(s) x {} in flight, {} partitions, {}-byte values, read ratio {}, {} keys, in {}",
                workload.shards,
                workload.concurrency,
                workload.partitions,
                workload.value_bytes,
                workload.read_ratio,
                workload.key_space,
                data_dir.path().display()
            );
        }
        let quiet = args.quiet;
        let report = coregrid_bench::run(&workload, data_dir.path(), |progress: Progress| {
            if !quiet {
                eprintln!(
                    "  {:>5.1} s  {:>12} ops  {:>10.0} ops/s",
                    progress.elapsed_secs, progress.ops, progress.interval_ops_per_sec
                );
            }
        })?;
        output.run = Some(report);
        if args.recovery {
            if !args.quiet {
                eprintln!("recovery: reopening {}", data_dir.path().display());
            }
            let (recovery, engine) = coregrid_bench::measure_recovery(&workload, data_dir.path())?;
            engine.shutdown();
            output.recovery = Some(recovery);
        }
    }

    if args.keep || args.dir.is_some() {
        output.data_dir = Some(data_dir.keep());
    } else {
        drop(data_dir);
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if args.json {
        serde_json::to_writer(&mut out, &output)?;
        writeln!(out)?;
    } else {
        print_table(&mut out, &output)?;
    }
    if output.run.is_none() && output.memory.is_none() {
        bail!("nothing was measured");
    }
    Ok(())
}

fn print_table(out: &mut impl Write, output: &BenchOutput) -> std::io::Result<()> {
    let config = &output.config;
    let row =
        |out: &mut dyn Write, name: &str, value: String| writeln!(out, "  {name:<28} {value}");
    if let Some(run) = &output.run {
        writeln!(out, "coregrid bench")?;
        row(
            out,
            "shards x in flight",
            format!("{} x {}", run.shards, config.concurrency),
        )?;
        row(out, "partitions", config.partitions.to_string())?;
        row(out, "value bytes", config.value_bytes.to_string())?;
        row(out, "read ratio", config.read_ratio.to_string())?;
        row(out, "key space", config.key_space.to_string())?;
        writeln!(out, "throughput")?;
        row(
            out,
            "ops",
            format!("{} ({} writes, {} reads)", run.ops, run.writes, run.reads),
        )?;
        row(out, "elapsed", format!("{:.2} s", run.elapsed_secs))?;
        row(out, "ops/s", format!("{:.0}", run.ops_per_sec))?;
        row(
            out,
            "values written",
            format!("{:.1} MiB/s", run.mib_per_sec),
        )?;
        row(
            out,
            "WAL records written",
            format!("{:.1} MiB/s", run.wal_mib_per_sec),
        )?;
        writeln!(
            out,
            "latency (µs)      p50        p99       p99.9        max"
        )?;
        for (name, latency) in [
            ("all", &run.latency_us),
            ("writes", &run.write_latency_us),
            ("reads", &run.read_latency_us),
        ] {
            writeln!(
                out,
                "  {name:<8} {:>10.1} {:>10.1} {:>11.1} {:>10.1}",
                latency.p50, latency.p99, latency.p999, latency.max
            )?;
        }
        let group = &run.group_commit;
        writeln!(out, "group commit")?;
        row(
            out,
            "flushes (write + fdatasync)",
            format!("{} ({:.0}/s)", group.flushes, group.flushes_per_sec),
        )?;
        row(
            out,
            "writes per flush",
            format!("{:.1}", group.records_per_flush),
        )?;
        row(
            out,
            "WAL bytes per flush",
            format!("{:.0}", group.wal_bytes_per_flush),
        )?;
        row(out, "snapshots", group.snapshots.to_string())?;
    }
    if let Some(recovery) = &output.recovery {
        writeln!(out, "recovery (reopen)")?;
        row(out, "open", format!("{:.3} s", recovery.open_secs))?;
        row(
            out,
            "WAL files read",
            format!(
                "{} files, {:.1} MiB",
                recovery.wal_segments,
                recovery.wal_file_bytes as f64 / 1048576.0
            ),
        )?;
        row(
            out,
            "WAL read speed",
            format!("{:.0} MiB/s", recovery.wal_file_mib_per_sec),
        )?;
        row(out, "keys recovered", recovery.keys.to_string())?;
    }
    if let Some(memory) = &output.memory {
        writeln!(out, "memory")?;
        row(
            out,
            "keys",
            format!(
                "{} ({} B keys, {} B values)",
                memory.keys, memory.key_bytes, memory.value_bytes
            ),
        )?;
        row(out, "insert time", format!("{:.1} s", memory.insert_secs))?;
        row(
            out,
            "RSS delta per key",
            format!("{:.1} B", memory.rss_bytes_per_key),
        )?;
        row(
            out,
            "minus key and value bytes",
            format!("{:.1} B", memory.overhead_bytes_per_key),
        )?;
        if let Some(after) = memory.rss_bytes_per_key_after_recovery {
            row(out, "RSS per key after reopen", format!("{after:.1} B"))?;
        }
    }
    if let Some(dir) = &output.data_dir {
        row(out, "data directory (kept)", dir.display().to_string())?;
    }
    Ok(())
}
