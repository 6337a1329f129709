//! Proves, end to end against a real `coregrid node` process, that the client commands and the
//! native client (blocking and glommio) work over the network and that what they wrote
//! survives a restart: the CLI's output and exit codes (0 done, 1 not found or cas mismatch,
//! 2 bad input, 3 unreachable, 4 refused), that every `--json` output parses, that a blocking
//! client keeps working across the restart on its cached (now dead) connections by retrying
//! and asking for the topology again, and that every key written before the SIGTERM reads
//! back after the node starts again on the same data directory and the same ports (which the
//! connections of its previous run still hold in TIME_WAIT: the listener must use
//! SO_REUSEADDR; this test failed with "Address already in use" before it did).

use coregrid_net::client::{rt, AsyncClient, BlockingClient, ClientConfig, ClientError};
use coregrid_net::ClusterId;
use serde_json::Value as Json;
use std::net::SocketAddr;
use std::process::{Command, Output};

#[path = "common/node_process.rs"]
mod node_process;

use node_process::NodeProcess;

/// Shards of the node under test.
const SHARDS: u16 = 2;

/// SIGTERM, then a clean exit.
fn stop(node: NodeProcess) {
    let status = node.stop_with(libc::SIGTERM);
    assert!(status.success(), "the node exited with {status}");
}

struct Cli {
    cluster: String,
}

impl Cli {
    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_coregrid"))
            .args(args)
            .args(["--cluster", &self.cluster, "--timeout-ms", "10000"])
            .output()
            .expect("run coregrid")
    }

    /// Runs and checks the exit code; returns stdout.
    fn expect(&self, code: i32, args: &[&str]) -> String {
        let output = self.run(args);
        let stdout = String::from_utf8(output.stdout).expect("UTF-8 stdout");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            output.status.code(),
            Some(code),
            "coregrid {args:?}: stdout {stdout:?}, stderr {stderr:?}"
        );
        if code >= 2 {
            assert!(!stderr.trim().is_empty(), "an error says why on stderr");
        }
        stdout
    }

    fn json(&self, code: i32, args: &[&str]) -> Json {
        let mut with_json = args.to_vec();
        with_json.push("--json");
        let stdout = self.expect(code, &with_json);
        serde_json::from_str(stdout.trim())
            .unwrap_or_else(|error| panic!("coregrid {args:?} --json printed {stdout:?}: {error}"))
    }
}

fn config(seeds: &[SocketAddr]) -> ClientConfig {
    ClientConfig::new(seeds.to_vec(), ClusterId::from_name("coregrid").unwrap())
}

#[test]
fn cli_and_clients_against_a_node_across_a_restart() {
    let data_dir = tempfile::tempdir().expect("temporary directory");
    // The restart below reuses the addresses, which the clients keep as seeds.
    let base_port = node_process::reserved_base_port(usize::from(SHARDS)).to_string();
    let node = NodeProcess::start(
        data_dir.path(),
        usize::from(SHARDS),
        &["--base-port", &base_port],
    );
    let seed: SocketAddr = node.addresses[0];
    let cli = Cli {
        cluster: seed.to_string(),
    };

    // The CLI: every command, its output and exit code.
    cli.expect(0, &["create-collection", "default"]);
    assert_eq!(cli.json(4, &["create-collection", "default"])["ok"], false);
    let put = cli.expect(0, &["put", "alpha", "one"]);
    assert!(put.starts_with("revision "), "{put:?}");
    assert_eq!(cli.expect(0, &["get", "alpha"]), "one\n");
    assert_eq!(cli.expect(1, &["get", "missing"]), "");
    let got = cli.json(0, &["get", "alpha"]);
    assert_eq!(
        (got["found"].clone(), got["value"].clone()),
        (true.into(), "one".into())
    );
    let revision = got["revision"].as_u64().expect("a revision");
    assert_eq!(cli.json(1, &["get", "missing"])["found"], false);
    let cas = cli.json(0, &["cas", "alpha", &revision.to_string(), "two"]);
    let revision_two = cas["revision"].as_u64().expect("a revision");
    assert!(revision_two > revision);
    let mismatch = cli.json(1, &["cas", "alpha", &revision.to_string(), "three"]);
    assert_eq!(mismatch["mismatch"], true);
    assert_eq!(mismatch["current_revision"].as_u64(), Some(revision_two));
    cli.expect(1, &["cas", "alpha", "0", "three"]);
    assert_eq!(cli.expect(0, &["get", "alpha"]), "two\n");
    cli.expect(0, &["put", "gone", "soon"]);
    assert_eq!(cli.json(0, &["del", "gone"])["deleted"], true);
    assert_eq!(cli.expect(0, &["del", "gone"]), "absent\n");
    cli.expect(1, &["get", "gone"]);
    let created = cli.json(0, &["cas", "fresh", "0", "new"]);
    let fresh_revision = created["revision"]
        .as_u64()
        .expect("a revision")
        .to_string();
    cli.expect(0, &["cas", "fresh", &fresh_revision, "--delete"]);
    cli.expect(1, &["get", "fresh"]);
    // Errors: bad input (2), another cluster or a missing collection (4), nobody there (3).
    cli.expect(2, &["put", "", "empty key"]);
    cli.expect(2, &["cas", "alpha", "1"]);
    cli.expect(2, &["get", "alpha", "--cluster-name", "not a name"]);
    assert_eq!(
        cli.json(4, &["put", "k", "v", "--collection", "nosuch"])["may_have_applied"],
        false
    );
    cli.expect(4, &["get", "alpha", "--cluster-name", "othercluster"]);
    let nobody = Cli {
        cluster: "127.0.0.1:1".into(),
    };
    assert_eq!(nobody.json(3, &["get", "alpha"])["ok"], false);
    let status = cli.json(0, &["status"]);
    let shards = status["shards"].as_array().expect("shards");
    assert_eq!(shards.len(), usize::from(SHARDS));
    assert!(
        shards.iter().all(|shard| shard["reachable"] == true),
        "{status}"
    );
    assert_eq!(status["partition_count"], 8);
    assert!(cli.expect(0, &["status"]).contains("yes"));

    // The blocking client: many keys over cached connections to both shards.
    let mut blocking = BlockingClient::new(config(&[seed])).unwrap();
    for index in 0..200 {
        let key = format!("blocking-{index}");
        blocking
            .put(
                "default",
                key.as_bytes(),
                format!("value-{index}").as_bytes(),
            )
            .unwrap();
    }
    assert_eq!(
        blocking
            .get("default", b"alpha")
            .unwrap()
            .map(|found| found.value),
        Some(b"two".to_vec())
    );
    let ports: std::collections::BTreeSet<u16> = blocking
        .router()
        .topology()
        .expect("a topology")
        .shards()
        .map(|(_, address, _)| address.port())
        .collect();
    assert_eq!(ports.len(), usize::from(SHARDS));

    // The glommio client: many requests in flight on shared connections.
    let written = rt::block_on(512 * 1024, async move {
        let client = AsyncClient::new(config(&[seed]))?;
        let tasks: Vec<_> = (0..64)
            .map(|task| {
                let client = client.clone();
                rt::spawn(async move {
                    for round in 0..4 {
                        let key = format!("glommio-{task}-{round}");
                        client
                            .put("default", key.as_bytes(), key.as_bytes())
                            .await?;
                    }
                    Ok::<(), ClientError>(())
                })
            })
            .collect();
        for task in tasks {
            task.await?;
        }
        let found = client.get("default", b"glommio-63-3").await?;
        Ok::<_, ClientError>(found.map(|found| found.value))
    })
    .expect("a glommio executor")
    .expect("the glommio client's writes");
    assert_eq!(written, Some(b"glommio-63-3".to_vec()));

    // Restart on the same directory.
    stop(node);
    let node = NodeProcess::start(
        data_dir.path(),
        usize::from(SHARDS),
        &["--base-port", &base_port],
    );

    // The blocking client's cached connections are dead: it retries on new ones.
    for index in 0..200 {
        let key = format!("blocking-{index}");
        let found = blocking.get("default", key.as_bytes()).unwrap();
        assert_eq!(
            found.map(|found| found.value),
            Some(format!("value-{index}").into_bytes()),
            "{key} after the restart"
        );
    }
    blocking.put("default", b"after", b"restart").unwrap();
    assert_eq!(cli.expect(0, &["get", "alpha"]), "two\n");
    assert_eq!(cli.expect(0, &["get", "after"]), "restart\n");
    cli.expect(1, &["get", "gone"]);
    let all_there = rt::block_on(512 * 1024, async move {
        let client = AsyncClient::new(config(&[seed]))?;
        let mut missing = Vec::new();
        for task in 0..64 {
            for round in 0..4 {
                let key = format!("glommio-{task}-{round}");
                let found = client.get("default", key.as_bytes()).await?;
                if found.map(|found| found.value) != Some(key.clone().into_bytes()) {
                    missing.push(key);
                }
            }
        }
        Ok::<_, ClientError>(missing)
    })
    .expect("a glommio executor")
    .expect("the glommio client's reads");
    assert!(
        all_there.is_empty(),
        "lost after the restart: {all_there:?}"
    );
    stop(node);
}
