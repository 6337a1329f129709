//! Proves that a node which cannot start says why and exits cleanly: a port it must listen on
//! held by another socket ends the run with exit code 1 and "cannot listen on <address>", after
//! the shards already started are stopped (this once panicked with "failed to join thread:
//! Resource deadlock avoided" as the last engine handle was dropped on a shard), and leaves the
//! data directory openable.

#[path = "common/node_process.rs"]
mod node_process;

use std::process::{Command, Stdio};

#[test]
fn a_taken_port_fails_the_start_with_a_clear_error_and_no_panic() {
    let data_dir = tempfile::tempdir().expect("temporary directory");
    let base = node_process::reserved_base_port(2);
    let _taken = std::net::TcpListener::bind(("127.0.0.1", base + 1)).expect("hold shard 1's port");
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_coregrid"))
            .arg("node")
            .arg("--data-dir")
            .arg(data_dir.path())
            .args(["--base-port", &base.to_string(), "--shards", "2"])
            .args(["--partitions", "8", "--pin-shards", "false"])
            .env("RUST_BACKTRACE", "0")
            .stdin(Stdio::null())
            .output()
            .expect("run coregrid node")
    };
    // Twice: the first run left nothing (a lock, a half-written file) that stops the second.
    for attempt in 0..2 {
        let output = run();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "attempt {attempt}: {stderr}");
        assert!(
            stderr.contains(&format!("cannot listen on 127.0.0.1:{}", base + 1)),
            "attempt {attempt}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "attempt {attempt}: {stderr}");
        assert!(
            !String::from_utf8_lossy(&output.stdout).contains("ready"),
            "attempt {attempt}"
        );
    }
}
