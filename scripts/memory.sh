#!/usr/bin/env bash
# Memory and disk per stored key. Starts a fresh 3-node `dynakv dev` cluster on loopback (N=3, so
# every node stores every key) with the storage page cache bounded by `cache_mb`, writes KEYS keys
# of VALUE bytes once (`dynakv bench --load`), lets the nodes settle (anti-entropy builds its
# trees), then prints per node: RSS before and after, RSS growth per key, data directory size
# per key, and that size against the logical data (key + value bytes).
#
#   scripts/memory.sh [KEYS] [VALUE_BYTES] [CACHE_MB]      # defaults: 1000000 100 64
#
# Needs a release build (`cargo build --release -p dynakv-node`); BIN=path overrides it.
set -euo pipefail
KEYS=${1:-1000000}; VALUE=${2:-100}; CACHE=${3:-64}; PORT=${BASE_PORT:-17500}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${BIN:-$ROOT/target/release/dynakv}
[ -x "$BIN" ] || { echo "no $BIN: run cargo build --release -p dynakv-node" >&2; exit 2; }
d=$(mktemp -d /tmp/dynakv-mem.XXXXXX)
dev=
cleanup() {
  if [ -n "$dev" ]; then kill -INT "$dev" 2>/dev/null || true; wait "$dev" 2>/dev/null || true; fi
  rm -rf "$d"
}
trap cleanup EXIT
echo "cache_mb = $CACHE" >"$d/node.toml"
"$BIN" dev --dir "$d/dk" --base-port "$PORT" --config "$d/node.toml" >"$d/dev.log" 2>&1 &
dev=$!
for _ in $(seq 1 150); do grep -q '^export ' "$d/dev.log" 2>/dev/null && break; sleep 0.2; done
eval "$(grep -m1 '^export ' "$d/dev.log")"
sleep 2
pids() { for i in 1 2 3; do pgrep -f -- "--dir $d/dk/node-$i( |$)" | head -1; done; }
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
mapfile -t P < <(pids)
[ "${#P[@]}" = 3 ] || { echo "could not find the three node processes" >&2; exit 1; }
before=(); for p in "${P[@]}"; do before+=("$(rss_kb "$p")"); done
start=$(date +%s)
"$BIN" bench --load --keys "$KEYS" --value-size "$VALUE" --read-ratio 1 --duration 1 \
  --concurrency 64 --json >"$d/load.json" 2>/dev/null
loaded=$(($(date +%s) - start))
# Let anti-entropy build its trees and sled flush, so the figures are the steady state.
sleep 30
keylen=$(python3 -c "n=$KEYS; print(sum(len('bench-%d' % k) for k in range(n)) / n)")
echo "dynakv $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?'); $(nproc) cores; $KEYS keys x $VALUE B values; cache_mb = $CACHE; load took ${loaded} s"
echo "| node | RSS before | RSS after | RSS growth per key | data dir | data dir per key | data dir / logical |"
echo "|---|---|---|---|---|---|---|"
for i in 0 1 2; do
  after=$(rss_kb "${P[$i]}")
  disk=$(du -sb "$d/dk/node-$((i + 1))/data" | cut -f1)
  python3 - "$((i + 1))" "${before[$i]}" "$after" "$disk" "$KEYS" "$VALUE" "$keylen" <<'EOF'
import sys
node, before, after, disk, keys, value, keylen = sys.argv[1:]
before, after, disk, keys, value, keylen = int(before), int(after), int(disk), int(keys), int(value), float(keylen)
logical = keys * (value + keylen)
print(f"| {node} | {before/1024:.0f} MiB | {after/1024:.0f} MiB | {(after-before)*1024/keys:.0f} B "
      f"| {disk/2**20:.0f} MiB | {disk/keys:.0f} B | {disk/logical:.2f}x |")
EOF
done
