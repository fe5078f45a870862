#!/usr/bin/env bash
# make chaos: a ten-minute chaos run (PG_REDIS_CHAOS_SECONDS to change), then the fuzz targets
# of the key templates and the encoder for a fixed number of runs each.
set -euo pipefail
cd "$(dirname "$0")/.."
step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

step "Chaos: writers, readers and faults for ${PG_REDIS_CHAOS_SECONDS:-600} s"
target/release/pg_redis_chaos "${PG_REDIS_CHAOS_SECONDS:-600}"

scripts/fuzz.sh "${PG_REDIS_FUZZ_RUNS:-2000000}"
