#!/usr/bin/env python3
"""Failover figures of docs/perf.md, coregrid beside a 3-node etcd in the same run.

For each of RUNS rounds (default 5), on loopback, with the same timing on both sides
(election timeout 1,000 ms, heartbeat 100 ms: both systems' defaults):

- coregrid: three `coregrid node` processes (1 shard, 8 partitions each, replication factor 3).
  The controller node, which also leads partitions, is killed with SIGKILL (not restarted);
  measured: the time from the kill until another node reports a new controller, and until a
  put at `Quorum` (the default) to a partition the killed node led succeeds through the two
  survivors (its leadership fails over to the most recent of its other replicas,
  docs/cluster.md), reading back the value written before the kill.
- coregrid again, killing a partition leader that is not the controller: no election; the
  controller fences its partitions once it has not heard it for two election timeouts.
- etcd: three members; the leader is killed with SIGKILL (not restarted); measured: the time
  from the kill until `etcdctl put` through the two survivors succeeds.

Prints one JSON object (every round and the medians) on stdout; progress on stderr.

    cargo build --release && RUNS=5 bench/run-failover-figures.py > failover.json

Needs etcd and etcdctl (`apt-get install etcd-server etcd-client`). Data lives under
bench-data/failover (gitignored), removed at the end.
"""

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "coregrid")
DATA = os.path.join(ROOT, "bench-data", "failover")
RUNS = int(os.environ.get("RUNS", "5"))
ELECTION_TIMEOUT_MS = 1000
HEARTBEAT_MS = 100
NODES = 3
DEADLINE_SECS = 60
COLLECTION = "failover"


def crc32c(data):
    """CRC-32C (Castagnoli), as the engine routes a key: partition = crc32c(key) % partitions."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def log(message):
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def wait_for(what, check, deadline_secs=DEADLINE_SECS, interval=0.01):
    """Polls `check` until it returns something truthy; fails after the deadline."""
    deadline = time.monotonic() + deadline_secs
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(interval)
    raise SystemExit(f"gave up waiting for {what} after {deadline_secs} s")


class Processes:
    """A cluster's member processes, by index."""

    def kill(self, index):
        self.processes[index].send_signal(signal.SIGKILL)
        self.processes[index].wait()

    def stop_all(self):
        for index, process in enumerate(self.processes):
            if process and process.poll() is None:
                self.kill(index)


# ---------------------------------------------------------------- coregrid


class Coregrid(Processes):
    def __init__(self, round_index):
        base = 17000 + 100 * (round_index % 20)
        self.ports = [base + 10 * i for i in range(NODES)]
        self.control_ports = [base + 50 + i for i in range(NODES)]
        self.peers = ",".join(f"127.0.0.1:{port}" for port in self.control_ports)
        self.dirs = [os.path.join(DATA, f"coregrid-{round_index}-{i}") for i in range(NODES)]
        self.processes = [None] * NODES

    def address(self, index):
        return f"127.0.0.1:{self.ports[index]}"

    def start(self, index):
        command = [
            BIN, "node", "--data-dir", self.dirs[index], "--base-port", str(self.ports[index]),
            "--control-port", str(self.control_ports[index]), "--peers", self.peers,
            "--shards", "1", "--partitions", "8", "--pin-shards", "false",
            "--election-timeout-ms", str(ELECTION_TIMEOUT_MS),
            "--heartbeat-interval-ms", str(HEARTBEAT_MS),
        ]
        self.processes[index] = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def cli(self, *arguments, addresses=None):
        cluster = ",".join(addresses or [self.address(i) for i in range(NODES)])
        run = subprocess.run(
            [BIN, *arguments, "--cluster", cluster, "--json", "--timeout-ms", "300"],
            capture_output=True, text=True)
        try:
            return run.returncode, json.loads(run.stdout or "null")
        except json.JSONDecodeError:
            return run.returncode, None

    def status(self, index):
        code, answer = self.cli("status", addresses=[self.address(index)])
        return answer if code == 0 else None

    def agreed_controller(self):
        """The controller every node names, once all have the same map with every partition led."""
        statuses = [self.status(i) for i in range(NODES)]
        if not all(statuses):
            return None
        controllers = {s.get("controller") for s in statuses}
        leaders = statuses[0].get("partitions") or []
        if len(controllers) != 1 or None in controllers or not leaders \
                or not all(p.get("leader") for p in leaders):
            return None
        return statuses[0]



def coregrid_round(round_index, kill_controller=True):
    """Kills the controller node (a partition leader too), or with `kill_controller=False` a
    partition leader that is not the controller (no election then: the controller notices its
    silence)."""
    # Its own ports and directories (rounds are fewer than 10).
    cluster = Coregrid(round_index if kill_controller else round_index + 10)
    try:
        for index in range(NODES):
            cluster.start(index)
        status = wait_for("a coregrid controller and a full map", cluster.agreed_controller)
        for index in range(NODES):
            code, answer = cluster.cli("create-collection", COLLECTION,
                                       addresses=[cluster.address(index)])
            if code != 0:
                raise SystemExit(f"create-collection on node {index}: {answer}")
        controller = status["controller"]
        members = [m["node"] for m in status["members"]]
        by_node = {}
        for index in range(NODES):
            by_node[cluster.status(index)["cluster_status"]["node"]] = index
        victim = controller if kill_controller else next(
            p["leader"] for p in status["partitions"] if p.get("leader") != controller)
        killed = by_node[victim]
        # A key whose partition the killed node leads.
        partitions = len(status["partitions"])
        led = {p["partition"] for p in status["partitions"] if p.get("leader") == victim}
        key = next((f"k{n}" for n in range(10000)
                    if crc32c(f"k{n}".encode()) % partitions in led), None)
        if key is None:
            raise SystemExit(f"no key found on the partitions {led} of node {victim}")
        kept = next(f"kept{n}" for n in range(10000)
                    if crc32c(f"kept{n}".encode()) % partitions in led)
        for name in (key, kept):
            code, answer = cluster.cli("put", name, "before", "--collection", COLLECTION)
            if code != 0:
                raise SystemExit(f"put before the kill: {answer}")
        term_before = status["term"]
        survivor = (killed + 1) % NODES

        survivors = [cluster.address(i) for i in range(NODES) if i != killed]
        begun = time.monotonic()
        cluster.kill(killed)

        def new_controller():
            if not kill_controller:
                return begun
            answer = cluster.status(survivor)
            if answer and (answer.get("term") or 0) > term_before and answer.get("controller"):
                return time.monotonic()
            return None

        def writable():
            code, _ = cluster.cli("put", key, "after", "--collection", COLLECTION,
                                  addresses=survivors)
            return time.monotonic() if code == 0 else None

        # Poll both conditions alternately so neither is measured late.
        controller_at = writable_at = None
        deadline = begun + DEADLINE_SECS
        while (controller_at is None or writable_at is None) and time.monotonic() < deadline:
            if controller_at is None:
                controller_at = new_controller()
            if writable_at is None:
                writable_at = writable()
            time.sleep(0.005)
        if controller_at is None or writable_at is None:
            raise SystemExit("coregrid did not recover within the deadline")
        # A write acknowledged before the kill survived it.
        code, answer = cluster.cli("get", kept, "--collection", COLLECTION, addresses=survivors)
        if code != 0 or (answer or {}).get("value") != "before":
            raise SystemExit(f"a key written before the kill, after the failover: {code} {answer}")
        return {
            "members": len(members),
            "new_controller_secs": controller_at - begun,
            "writable_secs": writable_at - begun,
        }
    finally:
        cluster.stop_all()


# ---------------------------------------------------------------- etcd


class Etcd(Processes):
    def __init__(self, round_index):
        base = 22000 + 100 * (round_index % 20)
        self.client_ports = [base + 2 * i for i in range(NODES)]
        self.peer_ports = [base + 2 * i + 1 for i in range(NODES)]
        self.dirs = [os.path.join(DATA, f"etcd-{round_index}-{i}") for i in range(NODES)]
        self.names = [f"e{i}" for i in range(NODES)]
        self.initial = ",".join(
            f"{name}=http://127.0.0.1:{port}" for name, port in zip(self.names, self.peer_ports))
        self.processes = [None] * NODES
        self.token = f"coregrid-bench-{os.getpid()}-{round_index}"

    def endpoint(self, index):
        return f"http://127.0.0.1:{self.client_ports[index]}"

    def start(self, index):
        command = [
            "etcd", "--name", self.names[index], "--data-dir", self.dirs[index],
            "--listen-client-urls", self.endpoint(index),
            "--advertise-client-urls", self.endpoint(index),
            "--listen-peer-urls", f"http://127.0.0.1:{self.peer_ports[index]}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{self.peer_ports[index]}",
            "--initial-cluster", self.initial, "--initial-cluster-state", "new",
            "--initial-cluster-token", self.token,
            "--election-timeout", str(ELECTION_TIMEOUT_MS),
            "--heartbeat-interval", str(HEARTBEAT_MS),
        ]
        self.processes[index] = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def ctl(self, endpoints, *arguments):
        run = subprocess.run(
            ["etcdctl", "--endpoints", ",".join(endpoints), "--command-timeout=300ms",
             "--dial-timeout=300ms", *arguments],
            capture_output=True, text=True, env={**os.environ, "ETCDCTL_API": "3"})
        return run.returncode, run.stdout

    def leader(self):
        code, out = self.ctl([self.endpoint(i) for i in range(NODES)], "endpoint", "status",
                             "--write-out=json")
        if code != 0:
            return None
        try:
            statuses = json.loads(out)
        except json.JSONDecodeError:
            return None
        if len(statuses) != NODES:
            return None
        for index, status in enumerate(statuses):
            header = status["Status"]["header"]
            if status["Status"].get("leader") and status["Status"]["leader"] == header["member_id"]:
                return (index, header.get("raft_term"))
        return None



def etcd_round(round_index):
    cluster = Etcd(round_index)
    try:
        for index in range(NODES):
            cluster.start(index)
        leader, _ = wait_for("an etcd leader", cluster.leader)
        all_endpoints = [cluster.endpoint(i) for i in range(NODES)]
        wait_for("an etcd put", lambda: cluster.ctl(all_endpoints, "put", "k", "v")[0] == 0)
        survivors = [cluster.endpoint(i) for i in range(NODES) if i != leader]
        begun = time.monotonic()
        cluster.kill(leader)
        writable_at = wait_for(
            "an etcd put after the leader's death",
            lambda: time.monotonic() if cluster.ctl(survivors, "put", "k", "after")[0] == 0 else None,
            interval=0.005)
        return {"writable_secs": writable_at - begun}
    finally:
        cluster.stop_all()


def main():
    for tool in ("etcd", "etcdctl"):
        if shutil.which(tool) is None:
            print(json.dumps({"error": f"{tool} not installed (apt-get install etcd-server etcd-client)"}))
            return 2
    if not os.path.exists(BIN):
        print(json.dumps({"error": f"{BIN} missing: cargo build --release"}))
        return 2
    shutil.rmtree(DATA, ignore_errors=True)
    os.makedirs(DATA)
    rounds = []
    try:
        for round_index in range(RUNS):
            log(f"round {round_index + 1}/{RUNS}: coregrid")
            coregrid = coregrid_round(round_index)
            log(f"round {round_index + 1}/{RUNS}: coregrid, a leader that is not the controller")
            follower = coregrid_round(round_index, kill_controller=False)
            log(f"round {round_index + 1}/{RUNS}: etcd")
            etcd = etcd_round(round_index)
            rounds.append({"coregrid": coregrid, "coregrid_non_controller": follower,
                           "etcd": etcd})
            log(f"  coregrid new controller {coregrid['new_controller_secs']:.2f} s, "
                f"writable {coregrid['writable_secs']:.2f} s; non-controller leader killed: "
                f"writable {follower['writable_secs']:.2f} s; etcd writable "
                f"{etcd['writable_secs']:.2f} s")
    finally:
        shutil.rmtree(DATA, ignore_errors=True)
    median = lambda side, key: statistics.median(r[side][key] for r in rounds)
    print(json.dumps({
        "runs": RUNS,
        "election_timeout_ms": ELECTION_TIMEOUT_MS,
        "heartbeat_ms": HEARTBEAT_MS,
        "median": {
            "coregrid_new_controller_secs": median("coregrid", "new_controller_secs"),
            "coregrid_writable_secs": median("coregrid", "writable_secs"),
            "coregrid_non_controller_writable_secs":
                median("coregrid_non_controller", "writable_secs"),
            "etcd_writable_secs": median("etcd", "writable_secs"),
        },
        "each_run": rounds,
    }, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
