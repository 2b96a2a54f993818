#!/usr/bin/env bash
# Measures a three-node group of release builds on loopback:
#   failover after kill -9 of the leader (20 trials), hand-over on SIGTERM
#   (20 trials), idle RSS, and GET /v1/leader throughput and latency (wrk).
# Usage: bash scripts/measure-sidecar.sh [lease_ttl, default 1s]
# Every process it starts is ended by its pid; it talks to loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
TTL="${1:-1s}"
TRIALS=20
cargo build --release -q
BIN=$PWD/target/release/leasehold
DIR=$(mktemp -d)
declare -a PIDS API ARGS
cleanup() { for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill -9 "$p" 2>/dev/null || true; done; rm -rf "$DIR"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PEERS="n1=127.0.0.1:$(port),n2=127.0.0.1:$(port),n3=127.0.0.1:$(port)"
for i in 0 1 2; do
  API[$i]="127.0.0.1:$(port)"
  ARGS[$i]="--node-id n$((i+1)) --peers $PEERS --listen-api ${API[$i]} --listen-metrics 127.0.0.1:$(port) --data-dir $DIR/n$((i+1)) --lease-ttl $TTL"
done
start() { $BIN ${ARGS[$1]} 2>/dev/null & PIDS[$1]=$!; }
for i in 0 1 2; do start $i; done
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
leader() {  # index of the node answering 200, skipping $1; empty if none
  for i in 0 1 2; do
    [ "$i" = "${1:-x}" ] && continue
    [ "$(curl -s -o /dev/null -m 0.2 -w '%{http_code}' "http://${API[$i]}/v1/leader")" = 200 ] && { echo "$i"; return; }
  done
}
wait_leader() {  # waits up to 10s for a leader other than $1
  local end=$(( $(now_ms) + 10000 )) l
  while [ "$(now_ms)" -lt "$end" ]; do l=$(leader "${1:-x}"); [ -n "$l" ] && { echo "$l"; return; }; done
  echo "no leader within 10s" >&2; exit 1
}
rejoined() { local end=$(( $(now_ms) + 10000 ));
  while [ "$(now_ms)" -lt "$end" ]; do
    local ok=0; for i in 0 1 2; do curl -s -m 0.2 "http://${API[$i]}/v1/leader" | grep -q '"leader_id":"n' && ok=$((ok+1)); done
    [ "$ok" = 3 ] && return; sleep 0.02; done; }
stats() { sort -n | awk '{a[NR]=$1} END {printf "median %d ms, p90 %d ms, max %d ms (n=%d)\n", a[int((NR+1)/2)], a[int(NR*0.9+0.5)], a[NR], NR}'; }

L=$(wait_leader); rejoined
: > "$DIR/failover"
for t in $(seq $TRIALS); do
  t0=$(now_ms); kill -9 "${PIDS[$L]}"; wait "${PIDS[$L]}" 2>/dev/null || true
  N=$(wait_leader "$L"); echo $(( $(now_ms) - t0 )) >> "$DIR/failover"
  start "$L"; rejoined; L=$N
done
echo "failover after kill -9 (lease_ttl $TTL): $(stats < "$DIR/failover")"

: > "$DIR/handover"
for t in $(seq $TRIALS); do
  t0=$(now_ms); kill -TERM "${PIDS[$L]}"
  N=$(wait_leader "$L"); echo $(( $(now_ms) - t0 )) >> "$DIR/handover"
  wait "${PIDS[$L]}" 2>/dev/null || true; start "$L"; rejoined; L=$N
  # As in a rolling restart: a restarted node may take over only once its
  # restart promise (one lease) is over.
  sleep "$TTL"; sleep 0.2
done
echo "hand-over on SIGTERM: $(stats < "$DIR/handover")   (includes one curl poll, ~5 ms)"

sleep 3
F=$(( (L + 1) % 3 ))
echo "idle RSS: leader $(awk '/VmRSS/ {print $2, $3}' /proc/${PIDS[$L]}/status), follower $(awk '/VmRSS/ {print $2, $3}' /proc/${PIDS[$F]}/status)"
echo "binary size: $(stat -c %s "$BIN") bytes"
if command -v wrk >/dev/null; then
  echo "wrk -t1 -c10 -d10s --latency http://${API[$L]}/v1/leader (leader):"
  wrk -t1 -c10 -d10s --latency "http://${API[$L]}/v1/leader" | grep -E 'Requests/sec|50%|90%|99%|Latency '
fi
