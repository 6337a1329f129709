#!/usr/bin/env bash
# Runs the figures of docs/perf.md: each coregrid measurement is followed at once by the fio
# reference on the same disk, derived from what coregrid just did (same write size, one
# fdatasync per group), so both see the same neighbours. Prints one JSON object on stdout with
# every run and the medians; progress goes to stderr.
#
#   bench/run-figures.sh            RUNS=3 SECS=5 MEMORY_KEYS=10000000 by default
#   RUNS=5 SECS=10 bench/run-figures.sh > figures.json
#
# Data lives under bench-data/figures (gitignored), on the same disk as the checkout.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${RUNS:-3}; secs=${SECS:-5}; memory_keys=${MEMORY_KEYS:-10000000}
data=${DATA:-$PWD/bench-data/figures}
command -v fio >/dev/null || { echo '{"error":"fio not installed"}'; exit 2; }
cargo build --release -q -p coregrid >&2
bin=$PWD/target/release/coregrid
rm -rf "$data"; mkdir -p "$data"
trap 'rm -rf "$data"' EXIT
# fio writes into a file written once beforehand, so it never pays for allocating blocks.
fio --name=prep --filename="$data/fio.dat" --size=1g --rw=write --bs=1m --direct=1 --ioengine=psync \
    --output-format=json >/dev/null
fio_json() { fio --name="$1" --filename="$data/fio.dat" --size=1g --direct=1 --time_based \
    --runtime="$secs" --output-format=json "${@:2}" 2>/dev/null; }
round4k() { python3 -c "import math,sys; print(max(4096, math.ceil(float(sys.argv[1])/4096)*4096))" "$1"; }
field() { python3 -c "import json,sys; d=json.load(sys.stdin)
for k in sys.argv[1].split('.'): d=d[k]
print(d)" "$1"; }

# WAL bytes of a group holding all 256 in-flight puts.
all_in_one_group_bytes() { python3 -c "import json,sys; g=json.load(sys.stdin)['group_commit']
print(g['wal_bytes_per_flush'] / g['records_per_flush'] * 256)"; }

results="[]"
for run in $(seq 1 "$runs"); do
  echo "run $run/$runs: small durable writes" >&2
  small=$("$bin" bench -q --json --shards 1 --partitions 1 --concurrency 256 --value-bytes 100 \
          --duration "$secs" --dir "$data/small")
  rm -rf "$data/small"
  small_bs=$(round4k "$(echo "$small" | field group_commit.wal_bytes_per_flush)")
  fio_small=$(fio_json small --rw=write --bs="$small_bs" --ioengine=psync --fdatasync=1)
  # Two flushes of a partition may be in flight (docs/storage.md, "Two flushes in flight"): the
  # like-for-like limit is the disk taking two such writes at once, as the engine issues them
  # (O_DIRECT | O_DSYNC through io_uring, two in flight, one file).
  fio_small_qd2=$(fio_json small_qd2 --rw=write --bs="$small_bs" --ioengine=io_uring --iodepth=2 \
                  --sync=dsync)
  # Also the ceiling if all 256 in-flight puts formed one group (the pipelined group commit
  # splits them into two cohorts, which halves the group and so the ceiling as defined).
  small_all_bs=$(round4k "$(echo "$small" | all_in_one_group_bytes)")
  fio_small_all=$(fio_json small_all --rw=write --bs="$small_all_bs" --ioengine=psync --fdatasync=1)

  echo "run $run/$runs: large durable writes + recovery" >&2
  large=$("$bin" bench -q --json --shards 1 --partitions 1 --concurrency 256 --value-bytes 65536 \
          --key-space 10000 --duration "$secs" --recovery --dir "$data/large")
  rm -rf "$data/large"
  large_bs=$(round4k "$(echo "$large" | field group_commit.wal_bytes_per_flush)")
  fio_large=$(fio_json large --rw=write --bs="$large_bs" --ioengine=psync --fdatasync=1)
  large_all_bs=$(round4k "$(echo "$large" | all_in_one_group_bytes)")
  fio_large_all=$(fio_json large_all --rw=write --bs="$large_all_bs" --ioengine=psync --fdatasync=1)
  # The same writes into a freshly fallocated file, as coregrid's segments are: every write
  # then converts unwritten extents, which its fdatasync must commit (the pre-written file
  # above never pays that). 4 GiB written once, not time-based: a second pass would find the
  # extents written.
  rm -f "$data/fresh.dat"
  fio_large_fresh=$(fio --name=large_fresh --filename="$data/fresh.dat" --size=4g --fallocate=native \
    --direct=1 --rw=write --bs="$large_bs" --ioengine=psync --fdatasync=1 --output-format=json 2>/dev/null)
  rm -f "$data/fresh.dat"
  # Sustained: new segments reuse pruned files (written extents), as a long-running node's
  # do; fio at the same write size. Measured after a warm-up of twice the base time: until
  # the first snapshots prune the log there is no pruned file to reuse, and every segment is
  # fresh (the fresh figure above measures that).
  echo "run $run/$runs: sustained large durable writes ($((secs * 2)) s warm-up, $((secs * 4)) s)" >&2
  sustained=$("$bin" bench -q --json --shards 1 --partitions 1 --concurrency 256 --value-bytes 65536 \
          --key-space 10000 --warmup "$((secs * 2))" --duration "$((secs * 4))" --dir "$data/sustained")
  rm -rf "$data/sustained"
  sustained_bs=$(round4k "$(echo "$sustained" | field group_commit.wal_bytes_per_flush)")
  fio_sustained=$(fio_json sustained --rw=write --bs="$sustained_bs" --ioengine=psync --fdatasync=1)
  fio_read_qd32=$(fio_json read32 --rw=read --bs=1m --ioengine=io_uring --iodepth=32)
  fio_read_qd1=$(fio_json read1 --rw=read --bs=1m --ioengine=psync)

  results=$(python3 - "$results" "$small" "$fio_small" "$small_bs" "$large" "$fio_large" "$large_bs" \
            "$fio_read_qd32" "$fio_read_qd1" "$fio_small_all" "$small_all_bs" "$fio_large_all" \
            "$large_all_bs" "$fio_large_fresh" "$sustained" "$fio_sustained" "$sustained_bs" \
            "$fio_small_qd2" <<'PY'
import json, sys
(results, small, fio_small, small_bs, large, fio_large, large_bs, read32, read1,
 fio_small_all, small_all_bs, fio_large_all, large_all_bs, fio_large_fresh,
 sustained, fio_sustained, sustained_bs, fio_small_qd2) = sys.argv[1:]
sustained, fsu = json.loads(sustained), json.loads(fio_sustained)["jobs"][0]
sustained_fio_mib = fsu["write"]["bw_bytes"] / 2**20
results = json.loads(results)
small, large = json.loads(small), json.loads(large)
job = lambda s: json.loads(s)["jobs"][0]
fs, fl = job(fio_small), job(fio_large)
fsa, fla = job(fio_small_all), job(fio_large_all)
small_ceiling_all = fsa["write"]["iops"] * 256
large_ceiling_all_mib = fla["write"]["bw_bytes"] / 2**20
sync_p99_us = lambda j: j.get("sync", {}).get("lat_ns", {}).get("percentile", {}).get("99.000000", 0) / 1000
small_ceiling = fs["write"]["iops"] * small["group_commit"]["records_per_flush"]
fs2 = job(fio_small_qd2)
small_ceiling_qd2 = fs2["write"]["iops"] * small["group_commit"]["records_per_flush"]
large_ceiling_mib = fl["write"]["bw_bytes"] / 2**20
large_fresh_mib = job(fio_large_fresh)["write"]["bw_bytes"] / 2**20
rec = large["recovery"]
results.append({
  "small": {
    "ops_per_sec": small["ops_per_sec"], "p50_us": small["latency_us"]["p50"],
    "p99_us": small["latency_us"]["p99"], "p999_us": small["latency_us"]["p999"],
    "flushes_per_sec": small["group_commit"]["flushes_per_sec"],
    "records_per_flush": small["group_commit"]["records_per_flush"],
    "wal_bytes_per_flush": small["group_commit"]["wal_bytes_per_flush"],
    "fio_bs": int(small_bs), "fio_syncs_per_sec": fs["write"]["iops"],
    "fio_sync_p99_us": sync_p99_us(fs),
    "ceiling_ops_per_sec": small_ceiling,
    "ratio": small["ops_per_sec"] / small_ceiling if small_ceiling else None,
    "flushes_beside": small["group_commit"].get("flushes_beside"),
    "fio_writes_per_sec_two_in_flight": fs2["write"]["iops"],
    "ceiling_two_in_flight_ops_per_sec": small_ceiling_qd2,
    "ratio_two_in_flight": small["ops_per_sec"] / small_ceiling_qd2 if small_ceiling_qd2 else None,
    "fio_bs_all_in_one_group": int(small_all_bs),
    "fio_syncs_per_sec_all_in_one_group": fsa["write"]["iops"],
    "ceiling_all_in_one_group_ops_per_sec": small_ceiling_all,
    "ratio_all_in_one_group": small["ops_per_sec"] / small_ceiling_all if small_ceiling_all else None,
  },
  "large": {
    "value_mib_per_sec": large["mib_per_sec"], "wal_mib_per_sec": large["wal_mib_per_sec"],
    "ops_per_sec": large["ops_per_sec"], "p99_us": large["latency_us"]["p99"],
    "flushes_per_sec": large["group_commit"]["flushes_per_sec"],
    "wal_bytes_per_flush": large["group_commit"]["wal_bytes_per_flush"],
    "fio_bs": int(large_bs), "fio_mib_per_sec": large_ceiling_mib,
    "fio_syncs_per_sec": fl["write"]["iops"],
    "ratio": large["wal_mib_per_sec"] / large_ceiling_mib if large_ceiling_mib else None,
    "fio_bs_all_in_one_group": int(large_all_bs),
    "fio_mib_per_sec_all_in_one_group": large_ceiling_all_mib,
    "ratio_all_in_one_group": large["wal_mib_per_sec"] / large_ceiling_all_mib if large_ceiling_all_mib else None,
    "fio_mib_per_sec_fresh_fallocated": large_fresh_mib,
    "ratio_fresh_fallocated": large["wal_mib_per_sec"] / large_fresh_mib if large_fresh_mib else None,
  },
  "sustained": {
    "secs": sustained["elapsed_secs"], "wal_mib_per_sec": sustained["wal_mib_per_sec"],
    "p99_us": sustained["latency_us"]["p99"],
    "snapshots": sustained["group_commit"]["snapshots"],
    "segments_reused": sustained["group_commit"]["segments_reused"],
    "wal_bytes_per_flush": sustained["group_commit"]["wal_bytes_per_flush"],
    "fio_bs": int(sustained_bs), "fio_mib_per_sec": sustained_fio_mib,
    "ratio": sustained["wal_mib_per_sec"] / sustained_fio_mib if sustained_fio_mib else None,
  },
  "recovery": {
    "open_secs": rec["open_secs"], "wal_file_bytes": rec["wal_file_bytes"],
    "wal_segments": rec["wal_segments"], "mib_per_sec": rec["wal_file_mib_per_sec"],
    "keys": rec["keys"],
    "fio_read_1m_qd32_mib_per_sec": job(read32)["read"]["bw_bytes"] / 2**20,
    "fio_read_1m_qd1_mib_per_sec": job(read1)["read"]["bw_bytes"] / 2**20,
    "ratio_qd32": rec["wal_file_mib_per_sec"] / (job(read32)["read"]["bw_bytes"] / 2**20),
    "ratio_qd1": rec["wal_file_mib_per_sec"] / (job(read1)["read"]["bw_bytes"] / 2**20),
  },
})
print(json.dumps(results))
PY
)
done

memory=null
if [ "$memory_keys" -gt 0 ]; then
  echo "memory: $memory_keys keys" >&2
  memory=$("$bin" bench -q --json --shards 1 --memory-keys "$memory_keys" --value-bytes 8 \
           --dir "$data/memory" | python3 -c 'import json,sys; print(json.dumps(json.load(sys.stdin)["memory"]))')
  rm -rf "$data/memory"
fi

python3 - "$results" "$memory" "$runs" "$secs" <<'PY'
import json, statistics, sys
results, memory, runs, secs = json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3], sys.argv[4]
median = {}
for part in ("small", "large", "sustained", "recovery"):
    median[part] = {k: statistics.median(r[part][k] for r in results)
                    for k in results[0][part] if results[0][part][k] is not None}
print(json.dumps({"runs": int(runs), "secs_per_run": float(secs), "median": median,
                  "memory": memory, "each_run": results}, indent=1))
PY
