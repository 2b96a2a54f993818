#!/usr/bin/env bash
# The fault harness's long run, the one docs/reliability.md records:
#   bash scripts/chaos.sh [SEED]
# Every scenario on 3 nodes (20 rounds) and on 5 nodes (10 rounds), the
# connection-level ones over peer TLS (3 nodes, 10 rounds), with
# the debug build (its state-write failpoint drives the slow-fsync
# scenario; disk-full and disk-ro need root). Writes chaos/results/*.json
# and prints the table. Exits non-zero if a fault within the model broke a
# check.
set -euo pipefail
cd "$(dirname "$0")/.."
seed="${1:-2026}"
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"

[ -e /usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1 ] || {
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq faketime
}
cargo build --locked --bin leasehold --bin leasehold-chaos
status=0
./target/debug/leasehold-chaos --nodes 3 --rounds 20 --seed "$seed" --json > chaos/results/nodes3.json || status=1
./target/debug/leasehold-chaos --nodes 5 --rounds 10 --seed "$seed" --json > chaos/results/nodes5.json || status=1
# Over peer TLS the links cannot parse messages: the faults that act on
# whole connections.
./target/debug/leasehold-chaos --peer-tls --scenario kill,pause,partition,asymmetric,bridge,network,rolling-restart \
  --nodes 3 --rounds 10 --seed "$seed" --json > chaos/results/nodes3-tls.json || status=1
python3 scripts/chaos_table.py chaos/results/nodes3.json chaos/results/nodes5.json | tee chaos/results/table.md
python3 scripts/chaos_table.py chaos/results/nodes3-tls.json | tee chaos/results/table-tls.md
exit "$status"
