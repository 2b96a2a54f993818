#!/usr/bin/env bash
# Measures the etcd backend: three release sidecars on one election of a
# one-member etcd (Debian's etcd-server) on loopback; failover after kill -9
# of the leader and hand-over on SIGTERM, 10 trials each.
# Usage: bash scripts/measure-etcd.sh [lease_ttl, default 1s]
# etcd runs with a 200ms election timeout, so that it accepts 1s leases.
# Every process it starts is ended by its pid; it talks to loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
TTL="${1:-1s}"
TRIALS=10
cargo build --release -q --features etcd
BIN=$PWD/target/release/leasehold
DIR=$(mktemp -d)
declare -a PIDS API ARGS
ETCD_PID=""
cleanup() {
  for p in "${PIDS[@]:-}" "$ETCD_PID"; do [ -n "$p" ] && kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$DIR"
}
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
CLIENT="127.0.0.1:$(port)"; PEER="127.0.0.1:$(port)"
etcd --name e0 --data-dir "$DIR/etcd" --listen-client-urls "http://$CLIENT" --advertise-client-urls "http://$CLIENT" \
  --listen-peer-urls "http://$PEER" --initial-advertise-peer-urls "http://$PEER" --initial-cluster "e0=http://$PEER" \
  --heartbeat-interval 20 --election-timeout 200 2>"$DIR/etcd.log" &
ETCD_PID=$!
for _ in $(seq 100); do curl -s -m 0.2 "http://$CLIENT/health" | grep -q true && break; sleep 0.05; done
for i in 0 1 2; do
  API[$i]="127.0.0.1:$(port)"
  ARGS[$i]="--backend etcd --etcd-endpoints http://$CLIENT --election measure --node-id n$((i+1)) --listen-api ${API[$i]} --listen-metrics 127.0.0.1:$(port) --data-dir $DIR/n$((i+1)) --lease-ttl $TTL"
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
  sleep 0.5  # the restarted node's campaign is under way
done
echo "etcd backend, failover after kill -9 (lease_ttl $TTL): $(stats < "$DIR/failover")"

: > "$DIR/handover"
for t in $(seq $TRIALS); do
  t0=$(now_ms); kill -TERM "${PIDS[$L]}"
  N=$(wait_leader "$L"); echo $(( $(now_ms) - t0 )) >> "$DIR/handover"
  wait "${PIDS[$L]}" 2>/dev/null || true; start "$L"; rejoined; L=$N
  sleep 0.5
done
echo "etcd backend, hand-over on SIGTERM: $(stats < "$DIR/handover")   (includes one curl poll, ~5 ms)"
echo "etcd: $(etcd --version | head -1)"
