#!/usr/bin/env bash
# Runs leasehold-bench and draws its failover plot:
#   bash scripts/bench.sh            the full round (20 trials a figure, about 8 minutes)
#   bash scripts/bench.sh --quick    a reduced round (under 3 minutes)
# Installs what it needs when missing (Debian's etcd-server and wrk,
# protobuf-compiler to build the etcd client; matplotlib from PyPI in a venv
# under ~/.cache/leasehold-tools). Writes bench/results/bench.json and
# bench/results/failover.png; the table goes to stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"

apt_packages=()
command -v etcd >/dev/null 2>&1 || apt_packages+=(etcd-server)
command -v wrk >/dev/null 2>&1 || apt_packages+=(wrk)
command -v protoc >/dev/null 2>&1 || apt_packages+=(protobuf-compiler)
if [ "${#apt_packages[@]}" -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${apt_packages[@]}"
fi

cache="${LEASEHOLD_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/leasehold-tools}"
if [ ! -x "$cache/plot-venv/bin/python3" ] || ! "$cache/plot-venv/bin/python3" -c 'import matplotlib' 2>/dev/null; then
  python3 -m venv "$cache/plot-venv"
  "$cache/plot-venv/bin/pip" install --quiet --disable-pip-version-check matplotlib
fi

cargo build --release --locked --features etcd --bin leasehold --bin leasehold-bench
mkdir -p bench/results
./target/release/leasehold-bench --json --out bench/results "$@"
"$cache/plot-venv/bin/python3" scripts/plot-bench.py bench/results/bench.json bench/results/failover.png
echo "wrote bench/results/bench.json and bench/results/failover.png"
