//! `coregrid-torture`: a fault-injection writer and its checker, for kill -9 tests.
//!
//! `write` opens the engine and runs `--writers` concurrent writers until it is killed. Each
//! writer owns its keys: it is the only one that ever writes them, and it writes them one
//! operation at a time, so at most one write per key is in flight. Around every operation it
//! prints one line to stdout and flushes it, in a single `write(2)` (atomic on a pipe):
//!
//! ```text
//! SEND <op> <key> <version>              before the operation is issued
//! ACK  <op> <key> <version> <revision>   once the engine acknowledged it (durable)
//! ```
//!
//! `op` is `put`, `cas` (compare-and-set to a value), `del` (delete) or `casdel`
//! (compare-and-set to nothing). `version` counts the operations on that key (1 for the first);
//! the value written by operation `version` is derived from the key and the version
//! ([`value_for`]), so it can be checked without storing it. `revision` is what the engine
//! returned: the new revision of a put, or the revision the key had for a delete. The key names
//! the run's seed, the value size and the writer, so keys of different runs never collide.
//!
//! `verify` replays such a file of lines (the SEND lines may be omitted) and reopens the engine.
//! For each key, the state found must be the one left by its last acknowledged operation (value
//! and revision), or the one left by the operation in flight after it (a SEND without an ACK):
//! the writer was killed before it heard back. Anything else is a lost acknowledged write, and
//! `verify` exits non-zero naming the key.

use anyhow::{bail, ensure, Context};
use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use coregrid_engine::constants::SEGMENT_BYTES_MIN;
use coregrid_engine::{Engine, EngineConfig, EngineError, Versioned};
use std::collections::{BTreeMap, VecDeque};
use std::io::Write;
use std::path::PathBuf;

/// Collection every writer uses.
const COLLECTION: &str = "torture";

/// Partitions of a torture data directory (fixed when it is created).
const PARTITIONS: u32 = 8;

/// Smallest value size: the value starts with its version, which must fit.
const VALUE_BYTES_MIN: usize = 24;

/// Most keys a writer keeps overwriting; older ones are retired (never written again).
const LIVE_KEYS_MAX: usize = 32;

/// Most reads `verify` has in flight at once.
const VERIFY_READS_IN_FLIGHT_MAX: usize = 512;

/// Violations printed in full before the rest are only counted.
const VIOLATIONS_PRINTED_MAX: usize = 50;

/// Exit code of `write` when the engine broke an invariant while running (as opposed to an
/// error such as a full disk).
const EXIT_ENGINE_BUG: i32 = 3;

/// The smallest segment size the engine accepts: `SEGMENT_BYTES_MIN` rounded up to 4096.
const SEGMENT_BYTES_SMALLEST: u64 = SEGMENT_BYTES_MIN.div_ceil(4096) * 4096;

#[derive(Parser)]
#[command(about = "Fault-injection writer and checker for coregrid's storage engine")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write until killed, printing a line before and after every write.
    Write(WriteArgs),
    /// Check that every acknowledged write of an acks file is in the data directory.
    Verify(VerifyArgs),
}

#[derive(Args)]
struct StoreArgs {
    /// Data directory.
    #[arg(long)]
    dir: PathBuf,
    /// Shards (1 or 2).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=2))]
    shards: u16,
    /// WAL segment size in bytes (a multiple of 4096, at least the engine's minimum).
    #[arg(long, default_value_t = SEGMENT_BYTES_SMALLEST)]
    segment_bytes: u64,
    /// WAL bytes per partition that trigger a snapshot (0: never).
    #[arg(long, default_value_t = 1024 * 1024)]
    snapshot_wal_bytes: u64,
}

impl StoreArgs {
    fn open(&self) -> anyhow::Result<Engine> {
        let mut config = EngineConfig::new(&self.dir);
        config.shards = usize::from(self.shards);
        config.partitions = PARTITIONS;
        config.segment_bytes = self.segment_bytes;
        config.snapshot_wal_bytes = self.snapshot_wal_bytes;
        config.pin_shards = false;
        Engine::open(config).with_context(|| format!("opening the engine on {:?}", self.dir))
    }
}

#[derive(Args)]
struct WriteArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Concurrent writers.
    #[arg(long, default_value_t = 16)]
    writers: u32,
    /// Bytes per value.
    #[arg(long, default_value_t = 1024)]
    value_bytes: usize,
    /// Seed of the workload; also the run's generation, part of every key.
    #[arg(long)]
    seed: u64,
}

#[derive(Args)]
struct VerifyArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// The lines printed by one or more `write` runs on this directory.
    #[arg(long)]
    acks: PathBuf,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Write(args) => write(&args),
        Command::Verify(args) => {
            let text = std::fs::read_to_string(&args.acks)
                .with_context(|| format!("reading {:?}", args.acks))?;
            let history = History::parse(&text)?;
            let engine = args.store.open()?;
            let report = futures::executor::block_on(verify(&engine, &history))?;
            engine.shutdown();
            report.print();
            if !report.violations.is_empty() {
                bail!(
                    "LOST ACKNOWLEDGED WRITES: {} of {} keys do not hold their acknowledged state",
                    report.violations.len(),
                    report.keys_checked
                );
            }
            Ok(())
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The workload: keys, values, operations.

/// A key of run `seed`, written by `writer`, whose values are `value_bytes` long.
fn key_name(seed: u64, value_bytes: usize, writer: u32, index: u64) -> String {
    format!("g{seed:016x}-b{value_bytes}-w{writer}-k{index}")
}

/// The value size a key's name states.
fn value_bytes_of(key: &str) -> anyhow::Result<usize> {
    let field = key
        .split('-')
        .find_map(|field| field.strip_prefix('b'))
        .with_context(|| format!("key {key:?} does not name its value size"))?;
    field
        .parse()
        .with_context(|| format!("key {key:?}: bad value size"))
}

/// The value operation `version` writes to `key`: `"<version>:<key>;"` repeated to the size
/// the key names. Starting with the version keeps values of different versions apart.
fn value_for(key: &str, version: u64) -> anyhow::Result<Bytes> {
    let value_bytes = value_bytes_of(key)?;
    let unit = format!("{version}:{key};");
    let value: Vec<u8> = unit.bytes().cycle().take(value_bytes).collect();
    Ok(Bytes::from(value))
}

/// The version a value found in the store claims, for messages.
fn describe_value(value: &[u8]) -> String {
    let version = value
        .split(|byte| *byte == b':')
        .next()
        .and_then(|prefix| std::str::from_utf8(prefix).ok())
        .filter(|prefix| !prefix.is_empty() && prefix.bytes().all(|byte| byte.is_ascii_digit()));
    match version {
        Some(version) => format!("a value of version {version} ({} bytes)", value.len()),
        None => format!("an unrecognised value ({} bytes)", value.len()),
    }
}

/// An operation on one key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Put,
    /// Compare-and-set to a value (expected revision 0 creates a new key).
    Cas,
    Delete,
    /// Compare-and-set to nothing.
    CasDelete,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Put => "put",
            Op::Cas => "cas",
            Op::Delete => "del",
            Op::CasDelete => "casdel",
        }
    }

    fn parse(text: &str) -> Option<Op> {
        [Op::Put, Op::Cas, Op::Delete, Op::CasDelete]
            .into_iter()
            .find(|op| op.name() == text)
    }

    /// Whether the key holds a value after this operation.
    fn leaves_value(self) -> bool {
        matches!(self, Op::Put | Op::Cas)
    }
}

/// SplitMix64: small, seedable, and enough to vary a workload (the binary has no `rand`).
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut mixed = self.0;
        mixed = (mixed ^ (mixed >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        mixed = (mixed ^ (mixed >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        mixed ^ (mixed >> 31)
    }

    fn below(&mut self, bound: u64) -> u64 {
        assert!(bound > 0);
        self.next() % bound
    }
}

// ---------------------------------------------------------------------------------------------
// write

fn write(args: &WriteArgs) -> anyhow::Result<()> {
    ensure!(args.writers >= 1, "--writers must be at least 1");
    ensure!(
        args.value_bytes >= VALUE_BYTES_MIN,
        "--value-bytes must be at least {VALUE_BYTES_MIN}"
    );
    let engine = args.store.open()?;
    futures::executor::block_on(async {
        match engine.create_collection(COLLECTION).await {
            Ok(()) | Err(EngineError::CollectionExists(_)) => {}
            Err(error) => return Err(error).context("creating the collection"),
        }
        let writers = (0..args.writers).map(|writer| run_writer(&engine, args, writer));
        // The first writer to fail stops them all.
        futures::future::try_join_all(writers).await.map(|_| ())
    })
}

/// A key a writer may write again.
struct LiveKey {
    key: String,
    version: u64,
    revision: u64,
}

/// Writes `line` to stdout in one call and flushes it, so a parent reading the pipe sees whole
/// lines, each only after the operation it reports.
fn emit(line: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(line.as_bytes())
        .context("writing to stdout")?;
    stdout.flush().context("flushing stdout")
}

/// The engine broke a promise while this process ran: say so and stop with a distinct code.
fn engine_bug(message: String) -> ! {
    eprintln!("ENGINE BUG: {message}");
    std::process::exit(EXIT_ENGINE_BUG);
}

/// One writer: new keys, overwrites, compare-and-sets and deletes on keys only it writes, one
/// at a time, forever.
async fn run_writer(engine: &Engine, args: &WriteArgs, writer: u32) -> anyhow::Result<()> {
    let mut rng = SplitMix64(args.seed ^ (u64::from(writer) << 32) ^ 0x7a3c_11d5);
    let mut live: VecDeque<LiveKey> = VecDeque::new();
    let mut next_index = 0u64;
    loop {
        let roll = rng.below(100);
        let (slot, op) = if live.is_empty() || roll < 45 {
            let key = key_name(args.seed, args.value_bytes, writer, next_index);
            next_index += 1;
            live.push_back(LiveKey {
                key,
                version: 0,
                revision: 0,
            });
            let op = if rng.below(8) == 0 { Op::Cas } else { Op::Put };
            (live.len() - 1, op)
        } else {
            let slot = rng.below(live.len() as u64) as usize;
            let op = match roll {
                45..=74 => Op::Put,
                75..=89 => Op::Cas,
                90..=95 => Op::Delete,
                _ => Op::CasDelete,
            };
            (slot, op)
        };
        let entry = &mut live[slot];
        let version = entry.version + 1;
        emit(&format!("SEND {} {} {version}\n", op.name(), entry.key))?;
        let key = Bytes::from(entry.key.clone());
        let revision = match op {
            Op::Put => {
                engine
                    .put(COLLECTION, key, value_for(&entry.key, version)?)
                    .await?
            }
            Op::Cas => {
                let value = value_for(&entry.key, version)?;
                match engine.compare_and_set(COLLECTION, key, entry.revision, Some(value)).await? {
                    Ok(revision) => revision,
                    Err(mismatch) => engine_bug(format!(
                        "cas on {} expected revision {} (its only writer's last write) but found {}",
                        entry.key, entry.revision, mismatch.current_revision
                    )),
                }
            }
            Op::Delete => match engine.delete(COLLECTION, key).await? {
                Some(revision) if revision == entry.revision => revision,
                found => engine_bug(format!(
                    "delete of {} found revision {found:?}, its only writer last wrote revision {}",
                    entry.key, entry.revision
                )),
            },
            Op::CasDelete => {
                match engine
                    .compare_and_set(COLLECTION, key, entry.revision, None)
                    .await?
                {
                    Ok(_) => entry.revision,
                    Err(mismatch) => engine_bug(format!(
                        "casdel on {} expected revision {} but found {}",
                        entry.key, entry.revision, mismatch.current_revision
                    )),
                }
            }
        };
        emit(&format!(
            "ACK {} {} {version} {revision}\n",
            op.name(),
            entry.key
        ))?;
        entry.version = version;
        entry.revision = revision;
        if !op.leaves_value() {
            // A deleted key is retired: its history ends absent.
            live.remove(slot);
        } else if live.len() > LIVE_KEYS_MAX {
            live.pop_front();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// verify

/// One operation on a key as a line states it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Step {
    op: Op,
    version: u64,
}

/// What the lines say about one key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct KeyHistory {
    /// The last acknowledged operation and the revision it returned.
    acked: Option<(Step, u64)>,
    /// An operation sent after it and never acknowledged: the writer died first.
    in_flight: Option<Step>,
}

/// Every key's history, from the lines of one or more runs.
#[derive(Debug, Default)]
struct History {
    keys: BTreeMap<String, KeyHistory>,
    acks: u64,
}

impl History {
    /// Parses the lines `write` prints. A last line without its newline is ignored: the writer
    /// was killed while printing it, so its operation is in flight at worst.
    fn parse(text: &str) -> anyhow::Result<History> {
        let mut history = History::default();
        let complete = match text.rfind('\n') {
            Some(end) => &text[..end],
            None => "",
        };
        for (number, line) in complete.lines().enumerate() {
            history
                .apply_line(line)
                .with_context(|| format!("acks line {}: {line:?}", number + 1))?;
        }
        Ok(history)
    }

    fn apply_line(&mut self, line: &str) -> anyhow::Result<()> {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (kind, rest) = match fields.split_first() {
            None => return Ok(()),
            Some((kind, rest)) => (*kind, rest),
        };
        let parse_step = |op: &str, version: &str| -> anyhow::Result<Step> {
            let op = Op::parse(op).with_context(|| format!("unknown operation {op:?}"))?;
            let version: u64 = version.parse().context("bad version")?;
            ensure!(version >= 1, "versions start at 1");
            Ok(Step { op, version })
        };
        match (kind, rest) {
            ("SEND", [op, key, version]) => {
                let step = parse_step(op, version)?;
                let entry = self.keys.entry((*key).to_string()).or_default();
                let acked_version = entry.acked.map_or(0, |(step, _)| step.version);
                ensure!(
                    step.version == acked_version + 1 && entry.in_flight.is_none(),
                    "a send out of order: last acknowledged version {acked_version}, in flight {:?}",
                    entry.in_flight
                );
                ensure!(
                    entry.acked.is_none_or(|(step, _)| step.op.leaves_value()),
                    "a write after the key was deleted"
                );
                entry.in_flight = Some(step);
            }
            ("ACK", [op, key, version, revision]) => {
                let step = parse_step(op, version)?;
                let revision: u64 = revision.parse().context("bad revision")?;
                let entry = self.keys.entry((*key).to_string()).or_default();
                let acked_version = entry.acked.map_or(0, |(step, _)| step.version);
                // A file without SEND lines is accepted; with them, the ACK must match.
                ensure!(
                    entry.in_flight.is_none_or(|sent| sent == step),
                    "ack of {step:?} but {:?} was sent",
                    entry.in_flight
                );
                ensure!(
                    step.version > acked_version,
                    "ack of version {} after version {acked_version}",
                    step.version
                );
                entry.acked = Some((step, revision));
                entry.in_flight = None;
                self.acks += 1;
            }
            _ => bail!("not a SEND or ACK line"),
        }
        Ok(())
    }
}

/// How a key's state was explained.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Found {
    /// The state of its last acknowledged operation.
    Acknowledged,
    /// The state of the operation in flight when the writer died (it made it).
    InFlightApplied,
}

/// Checks one key's found state against its history: the acknowledged state, or the state of
/// the operation in flight after it. Returns why neither fits.
fn check_key(key: &str, history: &KeyHistory, found: Option<&Versioned>) -> Result<Found, String> {
    let state_of = |step: Step| -> Result<Option<Bytes>, String> {
        if step.op.leaves_value() {
            value_for(key, step.version)
                .map(Some)
                .map_err(|error| error.to_string())
        } else {
            Ok(None)
        }
    };
    let found_value = found.map(|found| &found.value);
    match history.acked {
        Some((step, revision)) => {
            let expected = state_of(step)?;
            if expected.as_ref() == found_value {
                // A put's revision is its LSN; recovery must give back the same one (it is what
                // compare-and-set compares).
                if let (Some(found), true) = (found, step.op.leaves_value()) {
                    if found.revision != revision {
                        return Err(format!(
                            "holds the value of acknowledged `{}` version {} but at revision {} \
                             instead of the acknowledged {revision}",
                            step.op.name(),
                            step.version,
                            found.revision
                        ));
                    }
                }
                return Ok(Found::Acknowledged);
            }
        }
        None if found.is_none() => return Ok(Found::Acknowledged),
        None => {}
    }
    if let Some(step) = history.in_flight {
        if state_of(step)?.as_ref() == found_value {
            return Ok(Found::InFlightApplied);
        }
    }
    let expected = match history.acked {
        Some((step, revision)) => format!(
            "last acknowledged `{}` version {} (revision {revision})",
            step.op.name(),
            step.version
        ),
        None => "never acknowledged, so absent".to_string(),
    };
    let in_flight = match history.in_flight {
        Some(step) => format!(
            ", or in-flight `{}` version {}",
            step.op.name(),
            step.version
        ),
        None => String::new(),
    };
    let found = match found {
        Some(found) => format!(
            "{} at revision {}",
            describe_value(&found.value),
            found.revision
        ),
        None => "nothing (absent)".to_string(),
    };
    Err(format!(
        "key {key}: expected {expected}{in_flight}; found {found}"
    ))
}

/// The outcome of a verification.
#[derive(Debug, Default)]
struct Report {
    keys_checked: u64,
    acks: u64,
    acknowledged: u64,
    in_flight_applied: u64,
    in_flight_pending: u64,
    violations: Vec<String>,
    snapshots_lsn_nonzero: u64,
    segments: u64,
}

impl Report {
    fn print(&self) {
        for violation in self.violations.iter().take(VIOLATIONS_PRINTED_MAX) {
            eprintln!("VIOLATION {violation}");
        }
        if self.violations.len() > VIOLATIONS_PRINTED_MAX {
            eprintln!(
                "... and {} more",
                self.violations.len() - VIOLATIONS_PRINTED_MAX
            );
        }
        println!(
            "verified {} keys from {} acknowledged writes: {} at their acknowledged state, {} with \
             the in-flight write applied ({} had one in flight), {} violations; {} partitions \
             recovered from a snapshot, {} WAL segments",
            self.keys_checked,
            self.acks,
            self.acknowledged,
            self.in_flight_applied,
            self.in_flight_pending,
            self.violations.len(),
            self.snapshots_lsn_nonzero,
            self.segments
        );
    }
}

/// Reads every key of `history` from `engine` and checks it.
async fn verify(engine: &Engine, history: &History) -> anyhow::Result<Report> {
    let mut report = Report {
        acks: history.acks,
        ..Report::default()
    };
    let keys: Vec<(&String, &KeyHistory)> = history.keys.iter().collect();
    for chunk in keys.chunks(VERIFY_READS_IN_FLIGHT_MAX) {
        let reads = chunk
            .iter()
            .map(|(key, _)| engine.get(COLLECTION, Bytes::from((*key).clone())));
        let found = futures::future::join_all(reads).await;
        for ((key, key_history), found) in chunk.iter().zip(found) {
            let found = match found {
                Ok(found) => found,
                // Verifying a directory where the collection was never created: every key absent.
                Err(EngineError::NoSuchCollection(_)) => None,
                Err(error) => return Err(error).with_context(|| format!("reading {key}")),
            };
            report.keys_checked += 1;
            report.in_flight_pending += u64::from(key_history.in_flight.is_some());
            match check_key(key, key_history, found.as_ref()) {
                Ok(Found::Acknowledged) => report.acknowledged += 1,
                Ok(Found::InFlightApplied) => report.in_flight_applied += 1,
                Err(violation) => report.violations.push(violation),
            }
        }
    }
    for stats in engine.stats().await? {
        report.snapshots_lsn_nonzero += u64::from(stats.snapshot_lsn > 0);
        report.segments += stats.segments;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn history(lines: &str) -> History {
        History::parse(lines).expect("well-formed")
    }

    fn store(dir: &Path) -> StoreArgs {
        StoreArgs {
            dir: dir.to_path_buf(),
            shards: 1,
            segment_bytes: SEGMENT_BYTES_SMALLEST,
            snapshot_wal_bytes: 0,
        }
    }

    #[test]
    fn values_differ_by_version_and_have_the_named_size() {
        let key = key_name(7, 64, 3, 9);
        let first = value_for(&key, 1).expect("sized key");
        let second = value_for(&key, 2).expect("sized key");
        assert_eq!(first.len(), 64);
        assert_ne!(first, second);
        assert_eq!(describe_value(&second), "a value of version 2 (64 bytes)");
    }

    #[test]
    fn a_fake_ack_for_a_key_never_written_fails_verification() {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = store(dir.path()).open().expect("engine opens");
        let real = key_name(1, 32, 0, 0);
        let fake = key_name(1, 32, 0, 1);
        let revision = futures::executor::block_on(async {
            engine.create_collection(COLLECTION).await?;
            engine
                .put(COLLECTION, real.clone(), value_for(&real, 1)?)
                .await
                .map_err(anyhow::Error::from)
        })
        .expect("real write");
        let lines = format!(
            "SEND put {real} 1\nACK put {real} 1 {revision}\nSEND put {fake} 1\nACK put {fake} 1 {}\n",
            revision + 1
        );
        let report = futures::executor::block_on(verify(&engine, &history(&lines))).expect("reads");
        assert_eq!(report.keys_checked, 2);
        assert_eq!(report.acknowledged, 1, "the real write is found");
        assert_eq!(report.violations.len(), 1, "{:?}", report.violations);
        assert!(
            report.violations[0].contains(&fake),
            "{}",
            report.violations[0]
        );
        assert!(
            report.violations[0].contains("found nothing"),
            "{}",
            report.violations[0]
        );
    }

    #[test]
    fn an_older_value_or_a_wrong_revision_is_a_violation() {
        let key = key_name(2, 40, 1, 5);
        let at = |version, revision| Versioned {
            value: value_for(&key, version).expect("sized key"),
            revision,
            hlc: 0,
        };
        let lines =
            format!("SEND put {key} 1\nACK put {key} 1 10\nSEND put {key} 2\nACK put {key} 2 20\n");
        let acked = history(&lines).keys.remove(&key).expect("key");
        assert_eq!(
            check_key(&key, &acked, Some(&at(2, 20))),
            Ok(Found::Acknowledged)
        );
        assert!(
            check_key(&key, &acked, Some(&at(1, 10))).is_err(),
            "an older version"
        );
        assert!(
            check_key(&key, &acked, Some(&at(2, 21))).is_err(),
            "a changed revision"
        );
        assert!(check_key(&key, &acked, None).is_err(), "absent");
    }

    #[test]
    fn the_write_in_flight_may_or_may_not_have_landed() {
        let key = key_name(3, 40, 0, 0);
        let lines =
            format!("SEND put {key} 1\nACK put {key} 1 10\nSEND del {key} 2\nACK put {key} 7");
        let parsed = history(&lines);
        assert_eq!(parsed.acks, 1, "the torn last line is ignored");
        let state = parsed.keys.get(&key).expect("key");
        let acked = Versioned {
            value: value_for(&key, 1).expect("sized key"),
            revision: 10,
            hlc: 0,
        };
        assert_eq!(
            check_key(&key, state, Some(&acked)),
            Ok(Found::Acknowledged)
        );
        assert_eq!(check_key(&key, state, None), Ok(Found::InFlightApplied));
    }

    #[test]
    fn histories_out_of_order_are_rejected() {
        let key = key_name(4, 40, 0, 0);
        assert!(
            History::parse(&format!("SEND put {key} 2\n")).is_err(),
            "skips version 1"
        );
        assert!(History::parse(&format!("SEND put {key} 1\nACK cas {key} 1 5\n")).is_err());
        assert!(History::parse(&format!("ACK del {key} 1 5\nSEND put {key} 2\n")).is_err());
        assert!(History::parse("HELLO\n").is_err());
    }
}
