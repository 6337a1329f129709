#!/usr/bin/env python3
"""Replication figures of docs/perf.md: what waiting for followers costs a write.

For each of RUNS rounds (default 3), on loopback: three `coregrid node` processes (1 shard,
8 partitions each, replication factor 3: every node holds every partition, each leads about a
third), the collection created on each, then `coregrid bench --cluster <all three>` with 100-byte
puts from CLIENTS clients (default 64) for SECS seconds (default 4) at each write consistency:
`one` (the leader's disk), `quorum` (two of three disks), `all` (three). Same cluster, same
round, so the ratios to `one` are the figures; the absolute numbers are of a 2-core machine
running three nodes and the client.

Prints one JSON object (every round and the medians) on stdout; progress on stderr.

    cargo build --release && RUNS=3 bench/run-replication-figures.py > replication.json

Data lives under bench-data/failover (gitignored), removed at the end.
"""

import importlib.util
import json
import os
import shutil
import statistics
import subprocess

HERE = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.util.spec_from_file_location(
    "failover", os.path.join(HERE, "run-failover-figures.py"))
failover = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(failover)

RUNS = int(os.environ.get("RUNS", "3"))
SECS = int(os.environ.get("SECS", "4"))
CLIENTS = int(os.environ.get("CLIENTS", "64"))
LEVELS = ["one", "quorum", "all"]


def bench(cluster, level):
    addresses = ",".join(cluster.address(i) for i in range(failover.NODES))
    run = subprocess.run(
        [failover.BIN, "bench", "--cluster", addresses, "--clients", str(CLIENTS),
         "--value-bytes", "100", "--key-space", "100000", "--duration", str(SECS),
         "--collection", failover.COLLECTION, "--consistency", level, "--json", "-q"],
        capture_output=True, text=True)
    if run.returncode != 0:
        raise SystemExit(f"bench at {level}: {run.stderr.strip()}")
    report = json.loads(run.stdout)
    return {
        "ops_per_sec": report["ops_per_sec"],
        "p50_us": report["latency_us"]["p50"],
        "p99_us": report["latency_us"]["p99"],
        "errors": report.get("errors"),
    }


def replication_round(round_index):
    cluster = failover.Coregrid(round_index)
    try:
        for index in range(failover.NODES):
            cluster.start(index)
        failover.wait_for("a controller and a full map", cluster.agreed_controller)
        for index in range(failover.NODES):
            code, answer = cluster.cli("create-collection", failover.COLLECTION,
                                       addresses=[cluster.address(index)])
            if code != 0:
                raise SystemExit(f"create-collection on node {index}: {answer}")
        result = {}
        for level in LEVELS:
            result[level] = bench(cluster, level)
            failover.log(f"round {round_index}: {level}: {result[level]}")
        return result
    finally:
        cluster.stop_all()


def main():
    shutil.rmtree(failover.DATA, ignore_errors=True)
    os.makedirs(failover.DATA, exist_ok=True)
    try:
        rounds = [replication_round(index) for index in range(RUNS)]
    finally:
        shutil.rmtree(failover.DATA, ignore_errors=True)
    median = {}
    for level in LEVELS:
        median[level] = {
            field: statistics.median(r[level][field] for r in rounds)
            for field in ("ops_per_sec", "p50_us", "p99_us")
        }
        median[level]["ops_ratio_to_one"] = statistics.median(
            r[level]["ops_per_sec"] / r["one"]["ops_per_sec"] for r in rounds)
    print(json.dumps({
        "clients": CLIENTS, "secs": SECS, "runs": RUNS, "value_bytes": 100,
        "median": median, "each_run": rounds,
    }, indent=2))


if __name__ == "__main__":
    main()
