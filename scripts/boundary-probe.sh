#!/usr/bin/env bash
# Shows that the clippy boundary of src/core and src/sim bites: compiles the
# probe modules (src/core/boundary_probe.rs, src/sim/boundary_probe.rs), each
# line of which uses a clock, a file, a process or a task, and expects clippy
# to refuse every one of those lines. Only the leasehold crate is rechecked.
set -uo pipefail
cd "$(dirname "$0")/.."
out=$(cargo clippy --locked --lib --features etcd --message-format short -- --cfg boundary_probe 2>&1)
status=$?
fail=0
if [ "$status" -eq 0 ]; then
  echo "boundary probe: clippy accepted the probe modules" >&2
  fail=1
fi
for dir in core sim; do
  file="src/$dir/boundary_probe.rs"
  # Every line of the probe function body must be refused.
  for line in $(grep -n '^    let _ = ' "$file" | cut -d: -f1); do
    if ! grep -Eq "^$file:$line:[0-9]+: error: use of a disallowed (type|method)" <<<"$out"; then
      echo "boundary probe: $file:$line was not refused: $(sed -n "${line}p" "$file")" >&2
      fail=1
    fi
  done
done
if [ "$fail" -ne 0 ]; then
  echo "$out" | grep -E "boundary_probe|^error" | head -40 >&2
  exit 1
fi
echo "boundary probe: clippy refused all $(grep -c '^    let _ = ' src/core/boundary_probe.rs) probe lines in src/core and in src/sim"
