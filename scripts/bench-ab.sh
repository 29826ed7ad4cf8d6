#!/usr/bin/env bash
# A/B comparison of two dynakv builds on this machine: each build gets its own fresh 3-node
# `dynakv dev` cluster (loopback), the builds alternate ROUNDS times (default 2) so drifting
# machine load hits both, and each run measures 64-client writes (W=2), 64-client reads (R=2)
# and single-client writes, printing ops/s, p50 and p99 per run.
#
#   cp target/release/dynakv /tmp/dynakv-old   # before the change
#   cargo build --release -p dynakv-node       # after it
#   scripts/bench-ab.sh /tmp/dynakv-old target/release/dynakv [ROUNDS]
set -euo pipefail
A=$1; B=$2; ROUNDS=${3:-2}; PORT=${BASE_PORT:-17400}
run() {
  local bin=$1 label=$2 port=$3 d dev w r s
  d=$(mktemp -d)
  "$bin" dev --dir "$d/dk" --base-port "$port" >"$d/dev.log" 2>&1 &
  dev=$!
  for _ in $(seq 1 100); do grep -q '^export ' "$d/dev.log" 2>/dev/null && break; sleep 0.2; done
  eval "$(grep -m1 '^export ' "$d/dev.log")"
  sleep 1
  w=$("$bin" bench --json --concurrency 64 --duration 8 --keys 10000 --value-size 1024 --read-ratio 0 --w 2 2>/dev/null)
  r=$("$bin" bench --json --concurrency 64 --duration 8 --keys 10000 --value-size 1024 --read-ratio 1 --r 2 2>/dev/null)
  s=$("$bin" bench --json --concurrency 1 --duration 5 --keys 10000 --value-size 1024 --read-ratio 0 --w 2 2>/dev/null)
  kill -INT "$dev"; wait "$dev" 2>/dev/null || true
  rm -rf "$d"
  fmt() { python3 -c "import json,sys; d=json.loads(sys.argv[1]); a=d['latency']['all']; print('%7.0f ops/s p50 %.2f p99 %.2f' % (d['ops_per_sec'], a['p50_ms'], a['p99_ms']))" "$1"; }
  echo "$label  writes(64): $(fmt "$w") | reads(64): $(fmt "$r") | put(1): $(fmt "$s")"
}
for _ in $(seq 1 "$ROUNDS"); do
  run "$A" A "$PORT"
  run "$B" B $((PORT + 100))
done
