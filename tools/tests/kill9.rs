//! Proves that `kill -9` never loses an acknowledged write (design.md section 5, promise 2 on a
//! single node: a write acknowledged at `One` survives a restart).
//!
//! Twenty rounds on one data directory: start `coregrid-torture write`, let it acknowledge a
//! round-specific number of writes, SIGKILL it, then run `coregrid-torture verify` over every
//! acknowledgement of every round so far, with a shard count drawn apart from the writer's (a
//! verifier on another count replays the shard journals the killed writer's shards left).
//! Rounds vary the load so that kills land in different places: many writers on small values
//! (mid group commit), 64 KiB values over the smallest segment size (segment rolls), tiny
//! snapshot thresholds (snapshots and WAL pruning), several hundred writers on one shard (the
//! pipelined group commit under high concurrency: a flush submitted before the previous one's
//! writers wake, batches closing when filling them takes longer than a flush), and a few
//! writers (single writes in flight). Finally the verifier must reject a forged
//! acknowledgement, so a verifier that accepts anything cannot pass this test.
//!
//! The seed is printed; `COREGRID_SEED=<seed>` replays the same rounds (the kill points are
//! counted in acknowledgements, so a replay is close but not identical in time).

use coregrid_engine::constants::SEGMENT_BYTES_MIN;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const ROUNDS: u32 = 20;

/// How long a writer may take to reach its round's acknowledgement count. Only a bound for a
/// hung writer: rounds normally take a second or two.
const ACKS_WAIT_MAX: Duration = Duration::from_secs(60);

/// How long one verification may take (it normally takes well under a second); past it, the
/// verifier is taken to hang, which fails the test.
const VERIFY_WAIT_MAX: Duration = Duration::from_secs(60);

/// The smallest segment size the engine accepts, so that rounds reach segment rolls.
const SEGMENT_BYTES: u64 = SEGMENT_BYTES_MIN.div_ceil(4096) * 4096;

const TORTURE: &str = env!("CARGO_BIN_EXE_coregrid-torture");

/// A child process that is SIGKILLed and reaped when dropped, so a failing test leaves no writer
/// behind.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// What the writer's stdout has shown so far.
#[derive(Default)]
struct Progress {
    acks: u64,
    /// Its stdout closed: it exited (or was killed).
    closed: bool,
}

type Shared = Arc<(Mutex<Progress>, Condvar)>;

/// Copies the writer's complete lines to the acks file, counting ACKs.
fn read_acks(stdout: ChildStdout, mut acks_file: File, shared: Shared) -> std::io::Result<()> {
    let mut reader = BufReader::new(stdout);
    let mut line = String::new();
    let result = loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) => break Ok(()),
            // A line cut by the kill has no newline: its write is in flight at worst.
            Ok(_) if !line.ends_with('\n') => break Ok(()),
            Ok(_) => {
                if let Err(error) = acks_file.write_all(line.as_bytes()) {
                    break Err(error);
                }
                if line.starts_with("ACK ") {
                    let (progress, changed) = &*shared;
                    progress.lock().expect("progress lock").acks += 1;
                    changed.notify_all();
                }
            }
            Err(error) => break Err(error),
        }
    };
    let (progress, changed) = &*shared;
    progress.lock().expect("progress lock").closed = true;
    changed.notify_all();
    result
}

/// Waits until `target` ACKs arrived, the writer closed its stdout, or `deadline` passed.
/// Returns the ACKs seen.
fn wait_for_acks(shared: &Shared, target: u64, deadline: Instant) -> (u64, bool) {
    let (progress, changed) = &**shared;
    let mut state = progress.lock().expect("progress lock");
    loop {
        if state.acks >= target || state.closed {
            return (state.acks, state.closed);
        }
        let now = Instant::now();
        if now >= deadline {
            return (state.acks, state.closed);
        }
        state = changed
            .wait_timeout(state, deadline - now)
            .expect("progress lock")
            .0;
    }
}

/// One round's load.
#[derive(Debug)]
struct Load {
    name: &'static str,
    shards: u16,
    writers: u32,
    value_bytes: usize,
    snapshot_wal_bytes: u64,
    acks_target: u64,
}

fn load_for(round: u32, rng: &mut StdRng) -> Load {
    let shards = rng.gen_range(1..=2);
    let mut load = match round % 5 {
        0 => Load {
            name: "group-commit",
            shards,
            writers: rng.gen_range(64..=192),
            value_bytes: rng.gen_range(24..=1024),
            snapshot_wal_bytes: 4 * 1024 * 1024,
            acks_target: rng.gen_range(500..=20_000),
        },
        1 => Load {
            name: "segment-roll",
            shards,
            writers: rng.gen_range(8..=32),
            value_bytes: 64 * 1024,
            snapshot_wal_bytes: 1024 * 1024,
            acks_target: rng.gen_range(200..=1_500),
        },
        2 => Load {
            name: "snapshot",
            shards,
            writers: rng.gen_range(16..=48),
            value_bytes: rng.gen_range(1024..=8192),
            snapshot_wal_bytes: 64 * 1024,
            acks_target: rng.gen_range(500..=6_000),
        },
        3 => Load {
            // Many writers per partition (8 partitions, one shard): the pipelined group commit
            // at high concurrency, where commit batches may close before a flush takes them.
            name: "pipelined",
            shards: 1,
            writers: rng.gen_range(384..=640),
            value_bytes: rng.gen_range(24..=128),
            snapshot_wal_bytes: 4 * 1024 * 1024,
            acks_target: rng.gen_range(2_000..=30_000),
        },
        _ => Load {
            name: "few-writers",
            shards,
            writers: rng.gen_range(1..=4),
            value_bytes: rng.gen_range(24..=512),
            snapshot_wal_bytes: 256 * 1024,
            acks_target: rng.gen_range(10..=3_000),
        },
    };
    // Now and then, kill right after start: during recovery or the first group commit.
    if rng.gen_ratio(1, 8) {
        load.acks_target = rng.gen_range(1..=10);
    }
    load
}

fn store_args(command: &mut Command, dir: &Path, shards: u16, snapshot_wal_bytes: u64) {
    command
        .arg("--dir")
        .arg(dir)
        .arg("--shards")
        .arg(shards.to_string())
        .arg("--segment-bytes")
        .arg(SEGMENT_BYTES.to_string())
        .arg("--snapshot-wal-bytes")
        .arg(snapshot_wal_bytes.to_string());
}

/// What a verification run printed and how it ended.
struct Verified {
    /// `None`: it hung and was killed at the deadline.
    status: Option<ExitStatus>,
    stdout: String,
    stderr: String,
}

impl Verified {
    fn passed(&self) -> bool {
        self.status.is_some_and(|status| status.success())
    }

    fn describe(&self) -> String {
        let status = match self.status {
            Some(status) => status.to_string(),
            None => format!("still running after {VERIFY_WAIT_MAX:?}: killed"),
        };
        format!(
            "status {status}\n--- verify stdout\n{}\n--- verify stderr\n{}",
            self.stdout, self.stderr
        )
    }
}

/// Runs `coregrid-torture verify`, its output going to files so that what it printed is
/// known even if it hangs, which is waited out with a deadline.
fn run_verify(work: &Path, name: &str, dir: &Path, acks: &Path, shards: u16) -> Verified {
    let stdout_path = work.join(format!("{name}.stdout"));
    let stderr_path = work.join(format!("{name}.stderr"));
    let mut command = Command::new(TORTURE);
    command.arg("verify").arg("--acks").arg(acks);
    store_args(&mut command, dir, shards, 0);
    command
        .stdin(Stdio::null())
        .stdout(File::create(&stdout_path).expect("verify stdout file"))
        .stderr(File::create(&stderr_path).expect("verify stderr file"));
    let mut child = KillOnDrop(command.spawn().expect("spawn coregrid-torture verify"));
    let pid = libc::pid_t::try_from(child.0.id()).expect("pid fits");
    let (done, finished) = mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let status = child.0.wait();
        let _gone = done.send(());
        (child, status)
    });
    let status = match finished.recv_timeout(VERIFY_WAIT_MAX) {
        Ok(()) => {
            let (_child, status) = waiter.join().expect("waiter thread");
            Some(status.expect("wait for verify"))
        }
        Err(_) => {
            // SAFETY: kill(2) on our own child; the waiter thread reaps it.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            let _reaped = waiter.join().expect("waiter thread");
            None
        }
    };
    Verified {
        status,
        stdout: std::fs::read_to_string(&stdout_path).unwrap_or_default(),
        stderr: std::fs::read_to_string(&stderr_path).unwrap_or_default(),
    }
}

/// Keeps the data directory for a post-mortem and fails with `message`.
fn fail(work: tempfile::TempDir, seed: u64, message: String) -> ! {
    let kept: PathBuf = work.keep();
    panic!("{message}\nseed {seed} (replay: COREGRID_SEED={seed}); data and acks kept in {kept:?}");
}

#[test]
fn kill9_never_loses_an_acknowledged_write() {
    let seed = match std::env::var("COREGRID_SEED") {
        Ok(text) => text.parse().expect("COREGRID_SEED must be a u64"),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_nanos() as u64,
    };
    println!("kill9: seed {seed} (replay with COREGRID_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);
    let work = tempfile::tempdir().expect("tempdir");
    let dir = work.path().join("data");
    let acks_path = work.path().join("acks");
    let started = Instant::now();
    let mut acks_total = 0;

    for round in 0..ROUNDS {
        let load = load_for(round, &mut rng);
        // Distinct per round, so that no two runs write the same key.
        let round_seed = (rng.gen::<u64>() & !0xff) | u64::from(round);
        // The verifier's own shard count: when it differs from the writer's, it replays shard
        // journals that the killed writer's shards left, from directories no shard of its own
        // writes (docs/storage.md, "The shard journal": recovery reads every journal directory).
        let verify_shards: u16 = rng.gen_range(1..=2);
        let stderr_path = work.path().join(format!("writer-{round}.stderr"));
        let mut command = Command::new(TORTURE);
        command
            .arg("write")
            .arg("--writers")
            .arg(load.writers.to_string())
            .arg("--value-bytes")
            .arg(load.value_bytes.to_string())
            .arg("--seed")
            .arg(round_seed.to_string());
        store_args(&mut command, &dir, load.shards, load.snapshot_wal_bytes);
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(File::create(&stderr_path).expect("stderr file"));
        let mut writer = KillOnDrop(command.spawn().expect("spawn coregrid-torture write"));
        let stdout = writer.0.stdout.take().expect("piped stdout");
        let acks_file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&acks_path)
            .expect("acks file");
        let shared: Shared = Arc::default();
        let reader: JoinHandle<std::io::Result<()>> = {
            let shared = shared.clone();
            std::thread::spawn(move || read_acks(stdout, acks_file, shared))
        };

        let writing = Instant::now();
        let (acks_seen, closed) = wait_for_acks(&shared, load.acks_target, writing + ACKS_WAIT_MAX);
        if closed || acks_seen < load.acks_target {
            drop(writer);
            let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
            fail(
                work,
                seed,
                format!(
                    "round {round} ({load:?}): the writer {} after {acks_seen} acks\n--- writer stderr\n{stderr}",
                    if closed { "exited by itself" } else { "stalled" }
                ),
            );
        }
        let pid = libc::pid_t::try_from(writer.0.id()).expect("pid fits");
        // SAFETY: kill(2) on our own child, which has not been reaped yet.
        assert_eq!(
            unsafe { libc::kill(pid, libc::SIGKILL) },
            0,
            "kill the writer"
        );
        let status = writer.0.wait().expect("reap the writer");
        let written_ms = writing.elapsed().as_millis();
        reader.join().expect("reader thread").expect("copy acks");
        let acks_round = shared.0.lock().expect("progress lock").acks;
        acks_total += acks_round;
        if status.signal() != Some(libc::SIGKILL) {
            let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
            fail(
                work,
                seed,
                format!("round {round}: the writer ended with {status} before the kill\n{stderr}"),
            );
        }

        let verified = run_verify(
            work.path(),
            &format!("verify-{round}"),
            &dir,
            &acks_path,
            verify_shards,
        );
        let summary = verified.stdout.trim().to_string();
        println!(
            "round {round:2} {:<12} shards {} (verified on {verify_shards}) writers {:3} value {:5} B target {:5}: killed after {acks_round:5} acks ({written_ms} ms); {summary}",
            load.name, load.shards, load.writers, load.value_bytes, load.acks_target
        );
        let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
        if !stderr.trim().is_empty() {
            println!("round {round:2} writer stderr:\n{stderr}");
        }
        if !verified.passed() {
            // Diagnosis only: a second look tells a lasting loss from a transient one (such as
            // I/O of the killed process still landing after it was reaped).
            let again = run_verify(
                work.path(),
                &format!("verify-{round}-again"),
                &dir,
                &acks_path,
                verify_shards,
            );
            fail(
                work,
                seed,
                format!(
                    "round {round} ({load:?}, writer seed {round_seed}): verification failed\n{}\n\
                     === a second verification right after it:\n{}",
                    verified.describe(),
                    again.describe()
                ),
            );
        }
    }

    // The verifier must be able to fail: forge an acknowledgement of a key never written.
    let forged_path = work.path().join("acks-forged");
    let mut forged = std::fs::read(&acks_path).expect("acks");
    let forged_key = "gffffffffffffffff-b64-w0-k0";
    forged.extend_from_slice(
        format!("SEND put {forged_key} 1\nACK put {forged_key} 1 1\n").as_bytes(),
    );
    std::fs::write(&forged_path, forged).expect("forged acks");
    let verified = run_verify(work.path(), "verify-forged", &dir, &forged_path, 2);
    if verified.passed() || verified.status.is_none() || !verified.stderr.contains(forged_key) {
        fail(
            work,
            seed,
            format!(
                "the verifier did not reject a forged acknowledgement\n{}",
                verified.describe()
            ),
        );
    }
    println!(
        "kill9: {ROUNDS} rounds, {acks_total} acknowledged writes, none lost, in {:.1} s (seed {seed})",
        started.elapsed().as_secs_f64()
    );
}
