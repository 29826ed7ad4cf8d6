#!/usr/bin/env bash
# One command, three systems, the same load: a 3-member etcd (Raft, gRPC), a 3-node dynakv
# (`dynakv dev`, N=3 R=2 W=2) and a single redis (no persistence), each alone on this machine,
# each on loopback. Installs etcd, redis and protoc from the distribution's packages if missing,
# builds dynakv and the etcd load generator (scripts/etcd-load), then prints a table with ratios.
#
#   scripts/compare.sh                  # 10 s per measurement
#   DURATION=30 scripts/compare.sh      # longer runs
#   BASE_PORT=27300 CLIENTS=64 KEYS=10000 VALUE=1024 scripts/compare.sh
#
# Load (the issue's): 64 closed-loop clients, 1 KiB values, 10k keys. Writes: dynakv W=2, etcd
# puts (each a Raft commit with fsync), redis SET. Reads after a load phase: dynakv R=2, etcd
# serializable gets (any member answers from its own copy), redis GET. etcd gets 8 gRPC
# connections; dynakv one QUIC connection per node; redis-benchmark one connection per client.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10}
CLIENTS=${CLIENTS:-64}
KEYS=${KEYS:-10000}
VALUE=${VALUE:-1024}
BASE_PORT=${BASE_PORT:-27300}

need=()
command -v etcd >/dev/null || need+=(etcd-server)
command -v redis-server >/dev/null || need+=(redis-server)
command -v redis-benchmark >/dev/null || need+=(redis-tools)
command -v protoc >/dev/null || need+=(protobuf-compiler)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo=sudo
  echo "installing ${need[*]}" >&2
  $sudo apt-get install -y -q "${need[@]}" >/dev/null
fi
echo "building dynakv and etcd-load" >&2
cargo build -q --release -p dynakv-node
cargo build -q --release --manifest-path scripts/etcd-load/Cargo.toml
DYNAKV=$PWD/target/release/dynakv
ETCD_LOAD=$PWD/scripts/etcd-load/target/release/etcd-load

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
stop_all() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  pids=()
}
field() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }

# --- etcd: three members ---
cluster=""
for i in 1 2 3; do
  cluster+="m$i=http://127.0.0.1:$((BASE_PORT + 10 + i)),"
done
cluster=${cluster%,}
endpoints=""
for i in 1 2 3; do
  c=$((BASE_PORT + i)); p=$((BASE_PORT + 10 + i))
  etcd --name "m$i" --data-dir "$work/etcd-$i" \
    --listen-client-urls "http://127.0.0.1:$c" --advertise-client-urls "http://127.0.0.1:$c" \
    --listen-peer-urls "http://127.0.0.1:$p" --initial-advertise-peer-urls "http://127.0.0.1:$p" \
    --initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token compare \
    >"$work/etcd-$i.log" 2>&1 &
  pids+=($!)
  endpoints+="http://127.0.0.1:$c,"
done
endpoints=${endpoints%,}
for _ in $(seq 1 100); do
  ETCDCTL_API=3 etcdctl --endpoints "$endpoints" endpoint health >/dev/null 2>&1 && break
  sleep 0.2
done
echo "etcd: writes, then serializable reads" >&2
ew=$("$ETCD_LOAD" --endpoints "$endpoints" --connections 8 --concurrency "$CLIENTS" \
  --duration "$DURATION" --keys "$KEYS" --value-size "$VALUE" --read-ratio 0)
er=$("$ETCD_LOAD" --endpoints "$endpoints" --connections 8 --concurrency "$CLIENTS" \
  --duration "$DURATION" --keys "$KEYS" --value-size "$VALUE" --read-ratio 1 --serializable --load)
stop_all

# --- dynakv: three nodes ---
"$DYNAKV" dev --dir "$work/dynakv" --base-port $((BASE_PORT + 100)) >"$work/dynakv.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do grep -q '^export ' "$work/dynakv.log" 2>/dev/null && break; sleep 0.2; done
eval "$(grep -m1 '^export ' "$work/dynakv.log")"
echo "dynakv: writes, then reads" >&2
dw=$("$DYNAKV" bench --json --concurrency "$CLIENTS" --duration "$DURATION" --keys "$KEYS" \
  --value-size "$VALUE" --read-ratio 0 --w 2 2>/dev/null)
dr=$("$DYNAKV" bench --json --concurrency "$CLIENTS" --duration "$DURATION" --keys "$KEYS" \
  --value-size "$VALUE" --read-ratio 1 --r 2 --load 2>/dev/null)
stop_all

# --- redis: one node, no persistence ---
rp=$((BASE_PORT + 200))
redis-server --port "$rp" --bind 127.0.0.1 --save '' --appendonly no >"$work/redis.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 50); do redis-cli -p "$rp" ping >/dev/null 2>&1 && break; sleep 0.1; done
echo "redis: SET, then GET" >&2
requests=$((DURATION * 50000))
rb=$(redis-benchmark -h 127.0.0.1 -p "$rp" -c "$CLIENTS" -d "$VALUE" -r "$KEYS" -n "$requests" \
  -t set,get --csv)
stop_all
rcol() { echo "$rb" | python3 -c "
import csv,sys
rows={r[0]:r for r in csv.reader(sys.stdin)}
print(rows['$1'][$2])"; }

ew_ops=$(echo "$ew" | field "round(d['ops_per_sec'])"); ew_p99=$(echo "$ew" | field "d['latency']['all']['p99_ms']")
er_ops=$(echo "$er" | field "round(d['ops_per_sec'])"); er_p99=$(echo "$er" | field "d['latency']['all']['p99_ms']")
dw_ops=$(echo "$dw" | field "round(d['ops_per_sec'])"); dw_p99=$(echo "$dw" | field "d['latency']['all']['p99_ms']")
dr_ops=$(echo "$dr" | field "round(d['ops_per_sec'])"); dr_p99=$(echo "$dr" | field "d['latency']['all']['p99_ms']")
rs_ops=$(rcol SET 1 | cut -d. -f1); rs_p99=$(rcol SET 6); rg_ops=$(rcol GET 1 | cut -d. -f1); rg_p99=$(rcol GET 6)
ratio() { python3 -c "print(f'{$1/$2:.2f}x')"; }

echo
echo "$(date -u +%Y-%m-%d) $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "load: $CLIENTS closed-loop clients, $VALUE B values, $KEYS keys, $DURATION s per run"
echo "$(etcd --version | head -1); $(redis-server --version | cut -d' ' -f1-3); dynakv $(git rev-parse --short HEAD)"
echo
echo "| system | writes/s | write p99 ms | reads/s | read p99 ms |"
echo "|---|---|---|---|---|"
echo "| dynakv, 3 nodes, N=3 W=2 / R=2 | $dw_ops | $dw_p99 | $dr_ops | $dr_p99 |"
echo "| etcd, 3 members (reads serializable) | $ew_ops | $ew_p99 | $er_ops | $er_p99 |"
echo "| redis, 1 node, no persistence | $rs_ops | $rs_p99 | $rg_ops | $rg_p99 |"
echo
echo "dynakv / etcd: writes $(ratio "$dw_ops" "$ew_ops"), reads $(ratio "$dr_ops" "$er_ops")"
echo "dynakv / redis: writes $(ratio "$dw_ops" "$rs_ops"), reads $(ratio "$dr_ops" "$rg_ops")"
