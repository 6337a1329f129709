#!/usr/bin/env bash
# Runs the network figures of issue #3 (docs/perf.md): a `coregrid node` driven over loopback by
# `coregrid bench --cluster` against `redis-server` driven by `redis-benchmark`, in the same run,
# on the same disk, with the same value size (100 bytes), key space (100,000 keys of 16 bytes)
# and client counts; one request in flight per client (closed loop, no pipelining) on both.
# Prints one JSON object on stdout with every run, the medians and the ratios the goals name;
# progress goes to stderr.
#
#   bench/run-network-figures.sh                 RUNS=3 SECS=5 CLIENTS="1 16 64 256"
#   RUNS=5 SECS=10 bench/run-network-figures.sh > network-figures.json
#   RUNS=1 SECS=2 CLIENTS="1 64" bench/run-network-figures.sh      (a smoke run)
#
# Cores: placement is left to the scheduler. With SPLIT_CORES=1 and more cores than node shards,
# the servers (the node, redis-server) run on the first NODE_SHARDS cores and the load generators
# (coregrid bench, redis-benchmark) on the others, both under `taskset`, the same split for both
# systems. It keeps a load generator off the node's shard core (coregrid gains), but redis loses
# by it at low client counts (docs/perf.md, session 18), so it is not the default.
#
# Knobs (environment): RUNS, SECS (per measurement), CLIENTS, NODE_SHARDS (default 1),
# NODE_PARTITIONS (default: the node's, 64), BENCH_THREADS (client threads of both load
# generators, default 1), LIMITS (path of limits.sh, default ../shared/tools/limits.sh from the
# repository root; "none" skips it), DATA (default bench-data/network-figures), KEEP_DATA=1.
#
# Per run and per client count C:
#   coregrid  a fresh node (--base-port 0, fresh --data-dir), `coregrid status` until it answers,
#             create-collection bench, puts for SECS, then gets (fill + --read-ratio 1.0), SIGTERM.
#   redis     redis-server --appendonly yes --appendfsync always --save '' (fresh --dir), then
#             redis-benchmark -t set, a --pipe fill of the 100,000 keys, -t get; then a fresh
#             redis-server with --appendfsync everysec for -t set. redis-benchmark has no duration
#             flag: each measurement is preceded by calibration runs (which also warm up) that
#             pick -n so that the measured run lasts about SECS.
# Per run: the round trip (tcp_pingpong, a loopback TCP ping-pong of 100-byte messages, and
# redis-benchmark -t ping_inline -c 1 on an idle redis-server) and the machine's limits
# (limits.sh: fdatasync commits/s, loopback TCP), both in the same run as the rest.
#
# Needs redis-server, redis-tools and fio (installed with apt-get when missing and root).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
runs=${RUNS:-3}; secs=${SECS:-5}; clients_list=${CLIENTS:-"1 16 64 256"}
node_shards=${NODE_SHARDS:-1}; node_partitions=${NODE_PARTITIONS:-}
bench_threads=${BENCH_THREADS:-1}
limits=${LIMITS:-$repo/../shared/tools/limits.sh}
data=${DATA:-$repo/bench-data/network-figures}
value_bytes=100; key_space=100000

log() { echo "[$(date +%T)] $*" >&2; }
die() { log "error: $*"; exit 1; }

# --- Processes: everything started in the background is tracked and stopped on exit. --------
live=()
untrack() { local keep=() p; for p in "${live[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done; live=("${keep[@]}"); }
# Runs a command as a tracked child and waits for it (so a signal can stop it from the trap).
# `<&0`: a background command's stdin would otherwise be /dev/null, not the caller's.
tracked() { "$@" <&0 & local p=$! rc=0; live+=("$p"); wait "$p" || rc=$?; untrack "$p"; return "$rc"; }
# Sends SIGTERM to $1 and waits up to $2 seconds for it to exit, then SIGKILL. Returns its status.
stop_pid() {
  local p=$1 deadline=$((SECONDS + ${2:-15})) rc=0
  kill -TERM "$p" 2>/dev/null || true
  while kill -0 "$p" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.05; done
  if kill -0 "$p" 2>/dev/null; then log "pid $p did not stop after SIGTERM: SIGKILL"; kill -KILL "$p" 2>/dev/null || true; fi
  wait "$p" 2>/dev/null || rc=$?
  untrack "$p"
  return "$rc"
}
cleanup() {
  local rc=$? p
  trap - EXIT INT TERM
  for p in "${live[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${live[@]}"; do stop_pid "$p" 15 >/dev/null 2>&1 || true; done
  if [ "${KEEP_DATA:-0}" != 1 ]; then rm -rf "$data"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- Tools. ----------------------------------------------------------------------------------
need=()
command -v redis-server >/dev/null || need+=(redis-server)
{ command -v redis-benchmark >/dev/null && command -v redis-cli >/dev/null; } || need+=(redis-tools)
command -v fio >/dev/null || need+=(fio)
command -v python3 >/dev/null || die "python3 is needed"
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "installing ${need[*]} with apt-get"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >&2 ||
      { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >&2; }
  else
    echo "{\"error\":\"missing ${need[*]} (apt-get install ${need[*]})\"}"; exit 2
  fi
fi
for c in $clients_list; do [[ $c =~ ^[1-9][0-9]*$ ]] || die "CLIENTS: $c is not a client count"; done

log "building (cargo build --release -p coregrid -p coregrid-bench)"
cargo build --release -q -p coregrid -p coregrid-bench --bin coregrid --bin tcp_pingpong >&2
target=${CARGO_TARGET_DIR:-$repo/target}
case $target in /*) ;; *) target=$repo/$target ;; esac
bin=$target/release/coregrid; pingpong=$target/release/tcp_pingpong
[ -x "$bin" ] && [ -x "$pingpong" ] || die "release binaries not found under $target/release"

rm -rf "$data"; mkdir -p "$data/results"
out=$data/results

# The cores of the servers and of the load generators (see the header); empty: no split.
server_cpus=; client_cpus=
cores=$(nproc)
if [ "${SPLIT_CORES:-0}" = 1 ] && [ "$node_shards" -lt "$cores" ] && command -v taskset >/dev/null; then
  server_cpus=0-$((node_shards - 1)); client_cpus=$node_shards-$((cores - 1))
fi
# Only in a background job (`&`, `tracked`): it execs, so the job's PID is the command's own
# and a signal sent to it reaches the command (taskset execs the command too).
on_cpus() { # cpus, command...: runs the command on those cores (no cpus: as it is)
  local cpus=$1; shift
  if [ -n "$cpus" ]; then exec taskset -c "$cpus" "$@"; else exec "$@"; fi
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# --- coregrid node. --------------------------------------------------------------------------
node_pid=; node_addr=
start_node() { # data dir
  local dir=$1 deadline
  mkdir -p "$dir"
  local args=(node --listen-address 127.0.0.1 --base-port 0 --shards "$node_shards" --data-dir "$dir/data")
  [ -n "$node_partitions" ] && args+=(--partitions "$node_partitions")
  on_cpus "$server_cpus" "$bin" "${args[@]}" >"$dir/node.out" 2>"$dir/node.err" &
  node_pid=$!; live+=("$node_pid")
  # base_port 0: the node picks free ports and prints them; then wait until it answers.
  deadline=$((SECONDS + 60)); node_addr=
  while [ -z "$node_addr" ]; do
    kill -0 "$node_pid" 2>/dev/null || { tail -5 "$dir/node.err" >&2; die "the node exited at start"; }
    [ "$SECONDS" -lt "$deadline" ] || die "the node printed no port within 60 s"
    node_addr=$(sed -n 's/^listening shard=0 addr=//p' "$dir/node.out" 2>/dev/null || true)
    [ -n "$node_addr" ] || sleep 0.05
  done
  until "$bin" status --cluster "$node_addr" --timeout-ms 500 >/dev/null 2>&1; do
    kill -0 "$node_pid" 2>/dev/null || { tail -5 "$dir/node.err" >&2; die "the node exited at start"; }
    [ "$SECONDS" -lt "$deadline" ] || die "the node at $node_addr did not answer status within 60 s"
    sleep 0.05
  done
  "$bin" create-collection bench --cluster "$node_addr" >/dev/null
}
stop_node() { # prints the seconds SIGTERM took
  local t0 rc=0; t0=$(date +%s.%N)
  stop_pid "$node_pid" 30 || rc=$?
  [ "$rc" = 0 ] || log "warning: the node exited with status $rc after SIGTERM"
  python3 -c "import sys,time; print(round(time.time()-float(sys.argv[1]),3))" "$t0"
}
coregrid_bench() { # clients, output file, extra args...
  local c=$1 file=$2; shift 2
  local threads=$((bench_threads < c ? bench_threads : c))
  tracked on_cpus "$client_cpus" "$bin" bench -q --json --cluster "$node_addr" --clients "$c" --threads "$threads" \
    --value-bytes "$value_bytes" --key-space "$key_space" --duration "$secs" "$@" >"$file"
}

# --- redis. ----------------------------------------------------------------------------------
redis_pid=; redis_port=
start_redis() { # dir, appendfsync policy
  local dir=$1 policy=$2 deadline
  mkdir -p "$dir"
  redis_port=$(free_port)
  on_cpus "$server_cpus" redis-server --bind 127.0.0.1 --port "$redis_port" --appendonly yes --appendfsync "$policy" \
    --dir "$dir" --save '' --daemonize no --logfile "$dir/redis.log" >/dev/null 2>&1 &
  redis_pid=$!; live+=("$redis_pid")
  deadline=$((SECONDS + 30))
  until [ "$(redis-cli -p "$redis_port" ping 2>/dev/null)" = PONG ]; do
    kill -0 "$redis_pid" 2>/dev/null || { tail -5 "$dir/redis.log" >&2; die "redis-server exited at start"; }
    [ "$SECONDS" -lt "$deadline" ] || die "redis-server did not answer PING within 30 s"
    sleep 0.05
  done
}
stop_redis() { stop_pid "$redis_pid" 30 || true; }
rb_args() { # test, clients
  local a=(-h 127.0.0.1 -p "$redis_port" -t "$1" -d "$value_bytes" -c "$2" -r "$key_space" -P 1 --csv)
  [ "$bench_threads" -gt 1 ] && a+=(--threads "$((bench_threads < $2 ? bench_threads : $2))")
  echo "${a[@]}"
}
rb_rps() { python3 -c 'import csv,sys; print(float(next(csv.DictReader(sys.stdin))["rps"]))'; }
# redis-benchmark has no duration flag: calibration runs (doubling as warm-up) until one lasts at
# least min(1, SECS/4) s, then -n = rps x SECS. Writes {"requests","elapsed_secs","csv"} to file.
redis_bench() { # test, clients, output file
  local test=$1 c=$2 file=$3 n rps csv args t0 t1
  # shellcheck disable=SC2207
  args=($(rb_args "$test" "$c"))
  n=$((c * 4 > 1000 ? c * 4 : 1000))
  local target; target=$(python3 -c "print(min(1.0, $secs / 4))")
  for _ in 1 2 3 4 5 6 7 8; do
    tracked on_cpus "$client_cpus" redis-benchmark "${args[@]}" -n "$n" >"$file.csv"
    rps=$(rb_rps <"$file.csv")
    if python3 -c "import sys; sys.exit(0 if $rps > 0 and $n / $rps >= $target else 1)"; then break; fi
    n=$(python3 -c "import math; print(max($n * 2, math.ceil($rps * $target * 1.5)))")
  done
  n=$(python3 -c "import math; print(max($c, math.ceil($rps * $secs)))")
  t0=$(date +%s.%N)
  tracked on_cpus "$client_cpus" redis-benchmark "${args[@]}" -n "$n" >"$file.csv"
  t1=$(date +%s.%N)
  csv=$(cat "$file.csv"); rm -f "$file.csv"
  python3 - "$n" "$t0" "$t1" "$csv" "${args[*]} -n $n" >"$file" <<'PY'
import json, sys
n, t0, t1, csv_text, args = sys.argv[1:]
print(json.dumps({"requests": int(n), "elapsed_secs": round(float(t1) - float(t0), 3),
                  "csv": csv_text, "command": "redis-benchmark " + args}))
PY
}
# The 100,000 keys redis-benchmark -r 100000 names (key:%012d, 16 bytes), 100-byte values.
python3 - "$key_space" "$value_bytes" >"$out/redis-fill.resp" <<'PY'
import sys
keys, size = int(sys.argv[1]), int(sys.argv[2])
value = b"x" * size
w = sys.stdout.buffer
for i in range(keys):
    key = b"key:%012d" % i
    w.write(b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(key), key, len(value), value))
PY
redis_fill() {
  tracked redis-cli -h 127.0.0.1 -p "$redis_port" --pipe <"$out/redis-fill.resp" >"$out/redis-fill.out"
  grep -q "errors: 0, replies: $key_space" "$out/redis-fill.out" || die "redis fill: $(cat "$out/redis-fill.out")"
}

# --- Runs. -----------------------------------------------------------------------------------
log "RUNS=$runs SECS=$secs CLIENTS=\"$clients_list\" NODE_SHARDS=$node_shards BENCH_THREADS=$bench_threads data=$data servers on cores ${server_cpus:-any} load generators on ${client_cpus:-any}"
for run in $(seq 1 "$runs"); do
  r=$out/run$run; mkdir -p "$r"
  if [ "$limits" != none ] && [ -x "$limits" ]; then
    log "run $run/$runs: machine limits ($limits, ${secs}s per fio job)"
    mkdir -p "$data/limits"
    tracked "$limits" "$data/limits" "$secs" >"$r/limits.json" 2>/dev/null ||
      echo '{"error":"limits.sh failed"}' >"$r/limits.json"
    rm -rf "$data/limits"
  else
    echo "{\"error\":\"limits.sh not run ($limits)\"}" >"$r/limits.json"
  fi

  log "run $run/$runs: round trip: loopback TCP ping-pong, redis PING"
  tracked "$pingpong" --secs "$secs" --bytes "$value_bytes" >"$r/tcp_pingpong.json"
  start_redis "$data/redis-ping" always
  redis_bench ping_inline 1 "$r/redis_ping.json"
  stop_redis; rm -rf "$data/redis-ping"

  for c in $clients_list; do
    rc=$r/c$c; mkdir -p "$rc"
    log "run $run/$runs, $c clients: coregrid puts"
    start_node "$data/node"
    coregrid_bench "$c" "$rc/coregrid_put.json"
    log "run $run/$runs, $c clients: coregrid gets (fill + reads)"
    coregrid_bench "$c" "$rc/coregrid_get.json" --fill true --read-ratio 1.0
    stop_node >"$rc/coregrid_stop_secs"
    rm -rf "$data/node"

    log "run $run/$runs, $c clients: redis appendfsync always: set, fill, get"
    start_redis "$data/redis" always
    redis_bench set "$c" "$rc/redis_always_set.json"
    redis_fill
    redis_bench get "$c" "$rc/redis_get.json"
    stop_redis; rm -rf "$data/redis"

    log "run $run/$runs, $c clients: redis appendfsync everysec: set"
    start_redis "$data/redis" everysec
    redis_bench set "$c" "$rc/redis_everysec_set.json"
    stop_redis; rm -rf "$data/redis"
  done
done

# --- Report. ---------------------------------------------------------------------------------
python3 - "$out" "$runs" "$secs" "$clients_list" "$node_shards" "$bench_threads" "$data" \
  "$(redis-server --version)" "$(git rev-parse HEAD 2>/dev/null || echo unknown)" "$limits" \
  "$server_cpus" "$client_cpus" <<'PY'
import csv, io, json, os, statistics, sys
(out, runs, secs, clients, node_shards, bench_threads, data, redis_version, commit, limits_path,
 server_cpus, client_cpus) = sys.argv[1:]
runs, secs, clients = int(runs), float(secs), [int(c) for c in clients.split()]

def load(path):
    with open(path) as f:
        return json.load(f)

def coregrid(path):
    d = load(path)
    lat = d["read_latency_us"] if d["reads"] and not d["writes"] else d["write_latency_us"]
    return {"ops_per_sec": d["ops_per_sec"], "ops": d["ops"], "elapsed_secs": d["elapsed_secs"],
            "p50_us": lat["p50"], "p99_us": lat["p99"], "p999_us": lat["p999"],
            "max_us": lat["max"], "fill_secs": d["fill_secs"],
            "node_shards": d["network"]["node_shards"], "partitions": d["network"]["partitions"],
            "threads": d["network"]["threads"]}

def redis(path):
    d = load(path)
    row = next(csv.DictReader(io.StringIO(d["csv"])))
    us = lambda k: float(row[k]) * 1000
    return {"ops_per_sec": float(row["rps"]), "requests": d["requests"],
            "elapsed_secs": d["elapsed_secs"], "p50_us": us("p50_latency_ms"),
            "p95_us": us("p95_latency_ms"), "p99_us": us("p99_latency_ms"),
            "max_us": us("max_latency_ms"), "command": d["command"]}

def ratio(a, b):
    return a / b if a is not None and b else None

def ratios(m):
    return {
        "put_ops_vs_redis_always_set": ratio(m["coregrid_put"]["ops_per_sec"], m["redis_always_set"]["ops_per_sec"]),
        "put_p99_vs_redis_always_set_p99": ratio(m["coregrid_put"]["p99_us"], m["redis_always_set"]["p99_us"]),
        "put_ops_vs_redis_everysec_set": ratio(m["coregrid_put"]["ops_per_sec"], m["redis_everysec_set"]["ops_per_sec"]),
        "put_p99_vs_redis_everysec_set_p99": ratio(m["coregrid_put"]["p99_us"], m["redis_everysec_set"]["p99_us"]),
        "get_ops_vs_redis_get": ratio(m["coregrid_get"]["ops_per_sec"], m["redis_get"]["ops_per_sec"]),
        "get_p99_vs_redis_get_p99": ratio(m["coregrid_get"]["p99_us"], m["redis_get"]["p99_us"]),
    }

def round_trip(tcp, ping, by_c):
    one = by_c.get("1")
    rt = {"tcp_pingpong_p50_us": tcp["p50_us"], "tcp_pingpong_p99_us": tcp["p99_us"],
          "tcp_pingpong_round_trips_per_sec": tcp["round_trips_per_sec"],
          "redis_ping_inline_c1_p50_us": ping["p50_us"], "redis_ping_inline_c1_ops_per_sec": ping["ops_per_sec"],
          "coregrid_get_c1_p50_us": one["coregrid_get"]["p50_us"] if one else None,
          "coregrid_put_c1_p50_us": one["coregrid_put"]["p50_us"] if one else None,
          "redis_get_c1_p50_us": one["redis_get"]["p50_us"] if one else None,
          "redis_always_set_c1_p50_us": one["redis_always_set"]["p50_us"] if one else None}
    rt["coregrid_get_p50_vs_tcp_pingpong_p50"] = ratio(rt["coregrid_get_c1_p50_us"], rt["tcp_pingpong_p50_us"])
    rt["coregrid_put_p50_vs_tcp_pingpong_p50"] = ratio(rt["coregrid_put_c1_p50_us"], rt["tcp_pingpong_p50_us"])
    rt["coregrid_get_p50_vs_redis_ping_p50"] = ratio(rt["coregrid_get_c1_p50_us"], rt["redis_ping_inline_c1_p50_us"])
    rt["redis_ping_p50_vs_tcp_pingpong_p50"] = ratio(rt["redis_ping_inline_c1_p50_us"], rt["tcp_pingpong_p50_us"])
    return rt

parts = ("coregrid_put", "coregrid_get", "redis_always_set", "redis_get", "redis_everysec_set")
each = []
for run in range(1, runs + 1):
    r = os.path.join(out, f"run{run}")
    tcp = load(os.path.join(r, "tcp_pingpong.json"))
    tcp_flat = {"round_trips_per_sec": tcp["round_trips_per_sec"], "p50_us": tcp["latency_us"]["p50"],
                "p99_us": tcp["latency_us"]["p99"], "p999_us": tcp["latency_us"]["p999"],
                "round_trips": tcp["round_trips"], "message_bytes": tcp["message_bytes"]}
    ping = redis(os.path.join(r, "redis_ping.json"))
    by_c = {}
    for c in clients:
        rc = os.path.join(r, f"c{c}")
        m = {"coregrid_put": coregrid(os.path.join(rc, "coregrid_put.json")),
             "coregrid_get": coregrid(os.path.join(rc, "coregrid_get.json")),
             "redis_always_set": redis(os.path.join(rc, "redis_always_set.json")),
             "redis_get": redis(os.path.join(rc, "redis_get.json")),
             "redis_everysec_set": redis(os.path.join(rc, "redis_everysec_set.json"))}
        with open(os.path.join(rc, "coregrid_stop_secs")) as f:
            m["coregrid_node_sigterm_secs"] = float(f.read().strip())
        m["ratios"] = ratios(m)
        by_c[str(c)] = m
    each.append({"run": run, "limits": load(os.path.join(r, "limits.json")),
                 "tcp_pingpong": tcp_flat, "redis_ping_inline_c1": ping,
                 "round_trip": round_trip(tcp_flat, ping, by_c), "by_clients": by_c})

def med(values):
    values = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return statistics.median(values) if values else None

median = {"by_clients": {}}
for c in map(str, clients):
    m = {p: {k: med(e["by_clients"][c][p][k] for e in each)
             for k in ("ops_per_sec", "p50_us", "p99_us")} for p in parts}
    m["ratios"] = ratios(m)  # ratios of the medians
    median["by_clients"][c] = m
median["round_trip"] = {k: med(e["round_trip"][k] for e in each) for k in each[0]["round_trip"]}
rt = median["round_trip"]  # its ratios: of the medians
rt["coregrid_get_p50_vs_tcp_pingpong_p50"] = ratio(rt["coregrid_get_c1_p50_us"], rt["tcp_pingpong_p50_us"])
rt["coregrid_put_p50_vs_tcp_pingpong_p50"] = ratio(rt["coregrid_put_c1_p50_us"], rt["tcp_pingpong_p50_us"])
rt["coregrid_get_p50_vs_redis_ping_p50"] = ratio(rt["coregrid_get_c1_p50_us"], rt["redis_ping_inline_c1_p50_us"])
rt["redis_ping_p50_vs_tcp_pingpong_p50"] = ratio(rt["redis_ping_inline_c1_p50_us"], rt["tcp_pingpong_p50_us"])
limit_keys = [k for k, v in each[0]["limits"].items() if isinstance(v, (int, float))]
median["limits"] = {k: med(e["limits"].get(k) for e in each) for k in limit_keys}

at64 = median["by_clients"].get("64", {}).get("ratios")
goals = {
    "note": "ratios of the medians at 64 clients; null when 64 is not in CLIENTS",
    "put_ops_vs_redis_always_set_at_64": {"value": at64 and at64["put_ops_vs_redis_always_set"], "goal": ">= 2"},
    "put_p99_vs_redis_always_set_p99_at_64": {"value": at64 and at64["put_p99_vs_redis_always_set_p99"], "goal": "< 1"},
    "get_ops_vs_redis_get_at_64": {"value": at64 and at64["get_ops_vs_redis_get"], "goal": ">= 0.8"},
}
for g, test in zip(list(goals)[1:], (lambda v: v >= 2, lambda v: v < 1, lambda v: v >= 0.8)):
    v = goals[g]["value"]
    goals[g]["met"] = None if v is None else test(v)

node = each[0]["by_clients"][str(clients[0])]["coregrid_put"]
print(json.dumps({
    "runs": runs, "secs_per_measurement": secs, "clients": clients,
    "value_bytes": 100, "key_space": 100000, "key_bytes": 16, "commit": commit,
    "setup": {
        "cores": os.cpu_count(), "data_dir": data,
        "cpus": {"servers": server_cpus or "any", "load_generators": client_cpus or "any",
                 "how": "taskset -c; the node's and redis-server's cores, then coregrid bench's and redis-benchmark's"},
        "coregrid": {"node_shards": node["node_shards"], "node_shards_asked": int(node_shards),
                     "partitions": node["partitions"], "listen": "127.0.0.1, base_port 0",
                     "bench": "coregrid bench --cluster ADDR --clients C --threads T --value-bytes 100 --key-space 100000 --duration SECS --json (gets: --fill true --read-ratio 1.0)",
                     "bench_threads_max": int(bench_threads)},
        "redis": {"version": redis_version,
                  "server": "redis-server --bind 127.0.0.1 --port PORT --appendonly yes --appendfsync always|everysec --dir DIR --save ''",
                  "benchmark": "redis-benchmark -h 127.0.0.1 -p PORT -t set|get -d 100 -c C -r 100000 -P 1 --csv -n N (N calibrated to last about SECS)",
                  "get_fill": "redis-cli --pipe SET of key:000000000000..key:000000099999, 100-byte values"},
        "limits_script": limits_path,
    },
    "goals": goals, "median": median, "each_run": each,
}, indent=1))
PY
log "done"
