//! A `coregrid node` process for integration tests: started on a data directory with free
//! ports (`--base-port 0`), its listening addresses read from its stdout, SIGKILLed and reaped
//! if the test drops it. Shared by the `node_*` tests; each test file includes it with
//! `#[path = "common/node_process.rs"] mod node_process;`.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a node may take to open its engine and bind (normally well under a second); only a
/// bound for a hung start.
pub const START_WAIT_MAX: Duration = Duration::from_secs(60);

/// How long a node may take to exit after SIGTERM (its drain timeout is shorter).
pub const EXIT_WAIT_MAX: Duration = Duration::from_secs(30);

/// Ports this low are never handed out by the kernel as a socket's local port, so a base port
/// found free here stays free across a node's restart (unless another process takes it on
/// purpose). Shards listen on `base .. base + shards`.
const RESERVED_PORTS: std::ops::Range<u16> = 20_000..32_000;

/// A base port below the kernel's ephemeral range whose `shards` ports are free now, for TCP
/// (shard ports) and for UDP (control ports) alike, for a test that restarts a node on the same
/// addresses. A port from `--base-port 0` is an ephemeral one: between a stop and a restart, a
/// client's outgoing connection may take it (or the next one).
pub fn reserved_base_port(shards: usize) -> u16 {
    let span = u16::try_from(shards).expect("a few shards");
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    let end = RESERVED_PORTS.end.min(ephemeral_low).saturating_sub(span);
    // Start at a spot that depends on the process, so tests running at once rarely collide.
    let tries = end.saturating_sub(RESERVED_PORTS.start);
    let offset = u16::try_from(std::process::id() % u32::from(tries.max(1))).unwrap_or(0);
    (0..tries)
        .map(|step| RESERVED_PORTS.start + (offset + step) % tries)
        .find(|&base| {
            (base..base + span).all(|port| {
                std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
                    && std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok()
            })
        })
        .expect("a run of free ports below the ephemeral range")
}

/// A running node.
pub struct NodeProcess {
    child: Option<Child>,
    /// Each shard's address, by shard.
    pub addresses: Vec<SocketAddr>,
    /// The node id it printed.
    pub node_id: u64,
    /// Its control (gossip and election) address.
    pub control_address: Option<SocketAddr>,
    shards: usize,
    lines: Option<mpsc::Receiver<String>>,
}

impl NodeProcess {
    /// Starts `coregrid node` over `data_dir` with `shards` shards, free ports (unless `extra`
    /// names a `--base-port`), and `extra` flags; waits until it prints `ready`.
    pub fn start(data_dir: &Path, shards: usize, extra: &[&str]) -> NodeProcess {
        let mut node = NodeProcess::spawn(data_dir, shards, extra);
        node.wait_ready();
        node
    }

    /// Starts `coregrid node` like [`NodeProcess::start`] but returns at once: for a cluster,
    /// whose nodes become ready only once enough of them run. Call
    /// [`NodeProcess::wait_ready`] next.
    pub fn spawn(data_dir: &Path, shards: usize, extra: &[&str]) -> NodeProcess {
        NodeProcess::spawn_wrapped(&[], data_dir, shards, extra)
    }

    /// [`NodeProcess::spawn`] through a `wrapper` command that execs the node in place (as
    /// `ip netns exec <namespace>` does), so the child's pid is the node's.
    pub fn spawn_wrapped(
        wrapper: &[String],
        data_dir: &Path,
        shards: usize,
        extra: &[&str],
    ) -> NodeProcess {
        let free_ports: &[&str] = if extra.contains(&"--base-port") {
            &[]
        } else {
            &["--base-port", "0"]
        };
        let free_control_port: &[&str] = if extra.contains(&"--control-port") {
            &[]
        } else {
            &["--control-port", "0"]
        };
        let mut command = match wrapper.split_first() {
            Some((program, arguments)) => {
                let mut command = Command::new(program);
                command.args(arguments).arg(env!("CARGO_BIN_EXE_coregrid"));
                command
            }
            None => Command::new(env!("CARGO_BIN_EXE_coregrid")),
        };
        let mut child = command
            .arg("node")
            .arg("--data-dir")
            .arg(data_dir)
            .args(free_ports)
            .args(free_control_port)
            .args(["--shards", &shards.to_string()])
            .args(["--partitions", "8", "--pin-shards", "false"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start coregrid node");
        let stdout = child.stdout.take().expect("piped stdout");
        let (lines, receiver) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if lines.send(line).is_err() {
                    break;
                }
            }
        });
        NodeProcess {
            child: Some(child),
            addresses: Vec::new(),
            node_id: 0,
            control_address: None,
            shards,
            lines: Some(receiver),
        }
    }

    /// Waits until the node prints `ready` (it is `Joined` and holds a map), collecting its
    /// addresses on the way.
    pub fn wait_ready(&mut self) {
        let receiver = self.lines.take().expect("not waited for yet");
        let deadline = Instant::now() + START_WAIT_MAX;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let line = receiver.recv_timeout(remaining).unwrap_or_else(|_| {
                panic!("the node did not print ready within {START_WAIT_MAX:?}")
            });
            if let Some(rest) = line.strip_prefix("listening ") {
                let address = rest
                    .split_whitespace()
                    .find_map(|field| field.strip_prefix("addr="))
                    .expect("listening line names an address");
                self.addresses
                    .push(address.parse().expect("a socket address"));
            } else if let Some(address) = line.strip_prefix("control addr=") {
                self.control_address = Some(address.trim().parse().expect("a socket address"));
            } else if let Some(id) = line.strip_prefix("ready node=") {
                self.node_id = id.trim().parse().expect("a node id");
                break;
            }
        }
        assert_eq!(
            self.addresses.len(),
            self.shards,
            "one listening line per shard"
        );
    }

    /// Sends `signal` (SIGSTOP, SIGCONT) and returns at once.
    pub fn signal(&self, signal: libc::c_int) {
        let child = self.child.as_ref().expect("running");
        let pid = libc::pid_t::try_from(child.id()).expect("a pid");
        // SAFETY: kill on the pid of a child we have not reaped yet.
        assert_eq!(
            unsafe { libc::kill(pid, signal) },
            0,
            "send signal {signal}"
        );
    }

    /// Sends `signal` (SIGTERM, SIGKILL) and waits for the exit.
    pub fn stop_with(mut self, signal: libc::c_int) -> ExitStatus {
        self.signal(signal);
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + EXIT_WAIT_MAX;
        loop {
            if let Some(status) = child.try_wait().expect("wait for the node") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the node did not exit within {EXIT_WAIT_MAX:?} of signal {signal}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
