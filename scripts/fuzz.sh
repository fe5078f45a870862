#!/usr/bin/env bash
# Runs the fuzz targets of shared/ (cargo fuzz, libFuzzer) for a fixed number of runs each.
# Usage: scripts/fuzz.sh [RUNS]. The toolchain is stable, so no sanitizer (Rust's own checks
# and the targets' assertions still catch panics and wrong results).
set -euo pipefail
cd "$(dirname "$0")/../shared"
RUNS=${1:-200000}
step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

if ! cargo fuzz --version >/dev/null 2>&1; then
  step "Installing cargo-fuzz (once)"
  cargo install --locked --quiet cargo-fuzz
fi
for target in key_template encoder redact; do
  step "Fuzzing $target for $RUNS runs"
  cargo fuzz run --sanitizer none "$target" -- -runs="$RUNS" -max_len=512 2>&1 | tail -3
done
