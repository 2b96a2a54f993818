#!/usr/bin/env bash
# Runs the fuzz targets (fuzz/, docs/testing.md "Fuzzing") for a bounded
# time each, from a temporary copy of the committed seed corpus, so that a
# run never grows fuzz/corpus. Installs the nightly toolchain and cargo-fuzz
# when they are missing.
#   bash scripts/fuzz.sh                            # every target, 30s each
#   FUZZ_SECONDS=3600 bash scripts/fuzz.sh frame    # one target, an hour
# Targets: frame state_file config api_query. Exits non-zero if any target
# fails (a panic, a broken property, an input over 10s or 1 GiB), and prints
# the input that failed (under fuzz/artifacts/<target>/) with the command
# that replays it.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
seconds="${FUZZ_SECONDS:-30}"
all_targets=(frame state_file config api_query)
targets=("$@")
[ "${#targets[@]}" -eq 0 ] && targets=("${all_targets[@]}")

step() { printf '\n== %s\n' "$*"; }

for t in "${targets[@]}"; do
  if [ ! -f "fuzz/fuzz_targets/$t.rs" ]; then
    echo "no fuzz target $t (targets: ${all_targets[*]})" >&2
    exit 2
  fi
done

# --- what fuzzing needs ----------------------------------------------------
# libfuzzer-sys compiles libFuzzer's C++ sources.
if ! command -v c++ >/dev/null 2>&1; then
  step "installing g++ (Debian package)"
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends g++
fi
# cargo-fuzz builds with nightly-only flags (sanitizers, coverage counters).
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  step "installing the nightly toolchain"
  rustup toolchain install nightly --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  step "installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

# --- build, then run each target -------------------------------------------
step "cargo +nightly fuzz build (into fuzz/target)"
started=$SECONDS
cargo +nightly fuzz build
echo "built in $((SECONDS - started))s"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
failed=()
for t in "${targets[@]}"; do
  step "fuzz $t for ${seconds}s from fuzz/corpus/$t ($(find "fuzz/corpus/$t" -type f | wc -l) inputs)"
  cp -R "fuzz/corpus/$t" "$work/$t"
  log="$work/$t.log"
  started=$SECONDS
  if cargo +nightly fuzz run "$t" "$work/$t" -- \
    -max_total_time="$seconds" -rss_limit_mb=1024 -timeout=10 >"$log" 2>&1; then
    # libFuzzer's last status line: runs, coverage, corpus size, exec/s.
    grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -n 1 || true
    echo "$t: clean after $((SECONDS - started))s; corpus grew to $(find "$work/$t" -type f | wc -l) inputs (not kept)"
  else
    failed+=("$t")
    # What went wrong: a panic and its message, or libFuzzer's own verdict
    # (timeout, out of memory); the whole log is kept next to the input.
    verdict='panicked at|ERROR: (libFuzzer|AddressSanitizer)'
    if grep -q -E "$verdict" "$log"; then
      grep -E -A4 "$verdict" "$log" | head -n 30 || true
    else
      tail -n 30 "$log"
    fi
    mkdir -p "fuzz/artifacts/$t"
    cp "$log" "fuzz/artifacts/$t/last-failure.log"
    # libFuzzer names the failing input: "Test unit written to <path>".
    input="$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n 1)"
    echo
    echo "$t FAILED after $((SECONDS - started))s"
    if [ -n "$input" ]; then
      echo "  failing input: $input"
      echo "  replay:        cargo +nightly fuzz run $t $input"
      echo "  show it:       cargo +nightly fuzz fmt $t $input"
    fi
    echo "  whole log:     fuzz/artifacts/$t/last-failure.log"
  fi
done

if [ "${#failed[@]}" -gt 0 ]; then
  echo
  echo "fuzzing failed: ${failed[*]}"
  exit 1
fi
echo
echo "fuzzing clean: ${targets[*]} (${seconds}s each)"
