#!/usr/bin/env bash
# make lint (after make setup, which names the toolchain and the PostgreSQL versions for pgrx):
# formatting and clippy with every warning denied, over all crates and targets.
# pg_ext is linted once per PostgreSQL version it is tested with (its code differs by feature).
set -euo pipefail
cd "$(dirname "$0")/.."
step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all --check
(cd shared/fuzz && cargo fmt --check)

step "cargo clippy (shared, redis_mod, tests; pg_ext on PostgreSQL 15)"
cargo clippy --workspace --all-targets --release --quiet -- -D warnings

step "cargo clippy (pg_ext on PostgreSQL 18)"
cargo clippy --package pg_redis --all-targets --release --quiet --no-default-features --features pg18 -- -D warnings
